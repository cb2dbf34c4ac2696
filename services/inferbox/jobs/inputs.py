"""Bulk job input files: ``.npy``, ``.npz`` and JSON lines, checked on upload, read in chunks.

Rows are along dimension 0. A ``.npy`` file holds one array (for a model with one input); an
``.npz`` one array per input, named after it (or one array for a one-input model); a JSON-lines
file one object per line, ``{"<input name>": <value of one row>, ...}``. Arrays are read with
``allow_pickle=False`` (an object array is refused, never unpickled) and memory-mapped, so a
file larger than memory is processed chunk by chunk.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np

from inferbox.errors import BadRequest
from inferbox.models.spec import ModelSpec
from inferbox.protocol.datatypes import V2_TO_NUMPY, numpy_to_v2

FORMATS = ("npy", "npz", "jsonl")
_MAX_JSONL_LINE = 16 << 20


def guess_format(filename: str | None, content_type: str | None) -> str | None:
    """The format named by a file's extension or its media type, if any."""
    if filename:
        suffix = Path(filename).suffix.lower().lstrip(".")
        if suffix in ("jsonl", "ndjson"):
            return "jsonl"
        if suffix in FORMATS:
            return suffix
    if content_type in ("application/x-ndjson", "application/jsonl", "application/x-jsonlines"):
        return "jsonl"
    return None


def _npy_header(handle) -> tuple[tuple[int, ...], np.dtype]:
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
    except (ValueError, OSError) as exc:
        raise BadRequest(f"not a .npy array: {exc}") from None
    if dtype.hasobject:
        raise BadRequest("object arrays are not accepted (they would need pickle)")
    return shape, dtype


def _array_info(shape: tuple[int, ...], dtype: np.dtype, name: str) -> tuple[int, dict]:
    if len(shape) == 0:
        raise BadRequest(f"array {name!r} is a scalar; rows go along dimension 0")
    if dtype.kind in ("U", "S"):
        datatype = "BYTES"
    else:
        try:
            datatype = numpy_to_v2(dtype)
        except Exception:
            raise BadRequest(f"array {name!r} has an unsupported dtype {dtype}") from None
    return shape[0], {"datatype": datatype, "shape": list(shape[1:])}


def inspect(
    path: Path, fmt: str, max_unpacked_bytes: int = 2 * 1024**3
) -> tuple[int, dict[str, dict]]:
    """``(rows, arrays)`` of an input file, ``arrays`` mapping each name to its V2 datatype
    (None for JSON values, typed by the model later) and per-row shape. Raises ``BadRequest``
    for anything that is not a well-formed file of that format, and for a ``.npz`` archive
    whose members would unpack to more than ``max_unpacked_bytes``."""
    if fmt == "npy":
        with path.open("rb") as handle:
            rows, info = _array_info(*_npy_header(handle), "arr_0")
        return rows, {"arr_0": info}
    if fmt == "npz":
        return _inspect_npz(path, max_unpacked_bytes)
    if fmt == "jsonl":
        return _inspect_jsonl(path)
    raise BadRequest(f"unknown input format {fmt!r}; use one of {', '.join(FORMATS)}")


def _inspect_npz(path: Path, max_unpacked_bytes: int) -> tuple[int, dict[str, dict]]:
    """Each member's unpacked size is the one its archive entry declares (zipfile never
    inflates past it); that must be exactly what its array header needs, and all of them
    together at most ``max_unpacked_bytes``: checked before anything is unpacked past the
    headers, so a small archive cannot fill the disk (a zip bomb)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BadRequest(f"not a .npz archive: {exc}") from None
    arrays: dict[str, dict] = {}
    rows: int | None = None
    with archive:
        members = archive.infolist()
        unpacked = sum(member.file_size for member in members)
        if unpacked > max_unpacked_bytes:
            raise BadRequest(
                f"the .npz archive unpacks to {unpacked} bytes, at most {max_unpacked_bytes}"
            )
        for member in members:
            if not member.filename.endswith(".npy"):
                raise BadRequest(f".npz member {member.filename!r} is not a .npy array")
            name = member.filename[: -len(".npy")]
            with archive.open(member) as handle:
                shape, dtype = _npy_header(handle)
                needed = handle.tell() + math.prod(shape) * dtype.itemsize
                count, info = _array_info(shape, dtype, name)
            if member.file_size != needed:
                raise BadRequest(
                    f".npz member {member.filename!r} unpacks to {member.file_size} bytes, "
                    f"its array needs {needed}"
                )
            if rows is not None and count != rows:
                raise BadRequest(f"arrays disagree on the number of rows ({rows} and {count})")
            rows = count
            arrays[name] = info
    if not arrays:
        raise BadRequest("the .npz archive holds no arrays")
    return rows or 0, arrays


def _inspect_jsonl(path: Path) -> tuple[int, dict[str, dict]]:
    """``(rows, arrays)`` of a JSON-lines file: the first row names the inputs and gives their
    per-row shapes; every later row must name the same inputs. Blank lines are skipped."""
    rows = 0
    names: list[str] | None = None
    arrays: dict[str, dict] = {}
    decoder = msgspec.json.Decoder(dict)
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            row = _jsonl_row(decoder, line, number)
            if names is None:
                names = sorted(row)
                arrays = _jsonl_arrays(names, row, number)
            elif sorted(row) != names:
                raise BadRequest(f"line {number} has inputs {sorted(row)}, line 1 has {names}")
            rows += 1
    if rows == 0:
        raise BadRequest("the JSON-lines file holds no rows")
    return rows, arrays


def _jsonl_row(decoder: msgspec.json.Decoder, line: bytes, number: int) -> dict:
    """Line ``number`` decoded as one JSON object, else ``BadRequest`` saying why not."""
    if len(line) > _MAX_JSONL_LINE:
        raise BadRequest(f"line {number} is longer than {_MAX_JSONL_LINE} bytes")
    try:
        return decoder.decode(line)
    except msgspec.ValidationError:
        raise BadRequest(f"line {number} is not a JSON object") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"line {number} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(f"line {number} is nested too deeply") from None


def _jsonl_arrays(names: list[str], row: dict, number: int) -> dict[str, dict]:
    """Each input of the first row with its per-row shape (datatype None: the model types
    JSON values later)."""
    if not names:
        raise BadRequest(f"line {number} names no input")
    return {name: {"datatype": None, "shape": list(np.shape(row[name]))} for name in names}


def bind(spec: ModelSpec, arrays: dict[str, dict]) -> dict[str, str]:
    """Map each model input to the file's array feeding it; raise ``BadRequest`` if the file
    does not fit the model (names, datatypes, per-row shapes) or the model cannot batch."""
    if spec.config.max_batch_size < 1:
        raise BadRequest(
            f"model {spec.name!r} has no batch dimension (max_batch_size 0): "
            "send its inputs as one request instead of a file"
        )
    if len(spec.inputs) == 1 and len(arrays) == 1:
        mapping = {spec.inputs[0].name: next(iter(arrays))}
    else:
        missing = [t.name for t in spec.inputs if t.name not in arrays]
        if missing:
            raise BadRequest(f"the input file has no array named {missing[0]!r}")
        unknown = [name for name in arrays if name not in {t.name for t in spec.inputs}]
        if unknown:
            raise BadRequest(f"the input file's array {unknown[0]!r} is not a model input")
        mapping = {t.name: t.name for t in spec.inputs}
    for tensor in spec.inputs:
        info = arrays[mapping[tensor.name]]
        datatype = info["datatype"]
        if datatype is not None and datatype != tensor.datatype:
            raise BadRequest(
                f"array for input {tensor.name!r} has datatype {datatype}, "
                f"the model expects {tensor.datatype}"
            )
        want = tensor.shape[1:]
        shape = info["shape"]
        if len(shape) != len(want) or any(
            w >= 0 and d != w for d, w in zip(shape, want, strict=True)
        ):
            raise BadRequest(
                f"rows of input {tensor.name!r} have shape {shape}, the model expects {want}"
            )
    return mapping


class RowReader:
    """Reads rows of a local input file in order, as one array per model input."""

    def __init__(self, path: Path, fmt: str, spec: ModelSpec, mapping: dict[str, str], tmp: Path):
        self.fmt = fmt
        self.spec = spec
        self.mapping = mapping
        self._arrays: dict[str, np.ndarray] = {}
        self._lines: Iterator[bytes] | None = None
        if fmt == "npy":
            self._arrays = {
                name: np.load(path, mmap_mode="r", allow_pickle=False) for name in mapping
            }
        elif fmt == "npz":
            # Members are extracted so each can be memory-mapped (np.load on an archive
            # member reads it whole).
            with zipfile.ZipFile(path) as archive:
                for name, member in mapping.items():
                    target = archive.extract(f"{member}.npy", tmp)
                    self._arrays[name] = np.load(target, mmap_mode="r", allow_pickle=False)
        else:
            self._handle = path.open("rb")
            self._lines = (line for line in self._handle if line.strip())

    def close(self) -> None:
        """Release the file."""
        self._arrays.clear()
        if self._lines is not None:
            self._handle.close()

    def read(self, start: int, stop: int) -> list[np.ndarray]:
        """Rows ``start:stop`` of every model input, in the model's input order (calls must
        come in row order)."""
        if self._lines is None:
            return [np.asarray(self._arrays[t.name][start:stop]) for t in self.spec.inputs]
        columns: dict[str, list] = {t.name: [] for t in self.spec.inputs}
        for _ in range(stop - start):
            row = msgspec.json.decode(next(self._lines))
            for tensor in self.spec.inputs:
                columns[tensor.name].append(row[self.mapping[tensor.name]])
        arrays = []
        for tensor in self.spec.inputs:
            values = columns[tensor.name]
            try:
                if tensor.datatype == "BYTES":
                    array = np.array(values, dtype=object)
                else:
                    array = np.array(values, dtype=V2_TO_NUMPY[tensor.datatype])
            except (ValueError, TypeError, OverflowError) as exc:
                raise BadRequest(f"rows {start + 1}-{stop}, input {tensor.name!r}: {exc}") from None
            arrays.append(array)
        return arrays
