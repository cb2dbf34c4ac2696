"""What the commands print: aligned tables and indented JSON."""

from __future__ import annotations

import json
import sys

import click


def table(rows: list[list[str]], headers: list[str]) -> str:
    """``rows`` under ``headers`` in columns two spaces apart, each as wide as its widest cell."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def echo_json(payload) -> None:
    """Print ``payload`` as indented JSON (anything JSON lacks as its ``str``)."""
    json.dump(payload, sys.stdout, indent=2, default=str)
    click.echo()
