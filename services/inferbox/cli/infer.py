"""``inferbox infer``: run a model once through a running appliance."""

from __future__ import annotations

import json
import sys

import click
import numpy as np

from inferbox.cli.parsing import load_inputs
from inferbox.cli.remote import with_client
from inferbox.client import InferboxClient


@click.command("infer")
@click.argument("name")
@click.option(
    "--input",
    "inputs",
    multiple=True,
    required=True,
    help="NAME=file.npy, or a .npz/.json file holding every input by name",
)
@click.option("--version", default=None, help="version number or alias")
@with_client
def infer(client: InferboxClient, name: str, inputs: tuple[str, ...], version: str | None):
    """Run model NAME once and print its outputs as JSON."""
    feeds: dict[str, np.ndarray] = {}
    for item in inputs:
        feeds.update(load_inputs(item))
    outputs = client.infer(name, feeds, version=version)
    json.dump(
        {k: {"shape": list(v.shape), "data": v.tolist()} for k, v in outputs.items()},
        sys.stdout,
        default=lambda x: x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x),
    )
    click.echo()
