"""Command-line text into values: durations (``30d``) and tensor inputs (``NAME=file.npy``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import numpy as np

DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in ``30d``, ``12h``, ``15m``, ``90s`` or ``90``."""
    match = DURATION.fullmatch(text.strip())
    if match is None or float(match[1]) <= 0:
        raise click.BadParameter(f"{text!r}: give a duration like 30d, 12h, 15m or 90s")
    return float(match[1]) * _UNIT_S[match[2]]


def load_inputs(item: str) -> dict[str, np.ndarray]:
    """The tensors one ``--input`` names: ``NAME=file.npy``, or a .npz/.json file holding
    every input by name (JSON numbers with a fraction become float32)."""
    if "=" in item:
        input_name, path = item.split("=", 1)
        return {input_name: np.load(path, allow_pickle=False)}
    path = Path(item)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        return {
            k: np.asarray(v, dtype=np.float32 if _is_float(v) else None) for k, v in data.items()
        }
    raise click.BadParameter(f"{item}: give NAME=file.npy, a .npz or a .json file")


def _is_float(value) -> bool:
    array = np.asarray(value)
    return array.dtype.kind == "f"
