"""The README's CLI cheat-sheet names commands and options the ``inferbox`` command has."""

from __future__ import annotations

import re
from importlib.metadata import entry_points
from pathlib import Path

import click
import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def cheat_sheet(text: str) -> list[str]:
    """Each command of the cheat-sheet's first column (``inferbox models ls``, ...); a cell's
    later commands drop the leading ``inferbox`` (`` `inferbox api`, `grpc` ``)."""
    section = text.split("## CLI cheat-sheet", 1)[1].split("\n## ", 1)[0]
    commands = []
    for line in section.splitlines():
        if line.startswith("| `"):
            first = line.split(" | ", 1)[0].replace("\\|", "|")
            for span in re.findall(r"`([^`]+)`", first):
                commands.append(span if span.startswith("inferbox ") else f"inferbox {span}")
    return commands


def unknown(command: str, root: click.Group) -> list[str]:
    """The words of ``command`` that are neither a (sub)command nor an option of it."""
    words = command.split()[1:]
    current: click.Command = root
    bad = []
    while words and isinstance(current, click.Group):
        names = words.pop(0).split("|")
        found = [current.commands.get(name) for name in names]
        if not all(found):
            return [f"{command}: no command {' or '.join(names)}"]
        current = found[0]
    options = {opt for param in current.params for opt in getattr(param, "opts", [])}
    for word in words:
        option = word.strip("[]").split("=")[0]
        if option.startswith("--") and option not in options:
            bad.append(f"{command}: no option {option}")
    return bad


@pytest.fixture(scope="module")
def root() -> click.Group:
    (script,) = entry_points(group="console_scripts", name="inferbox")
    return script.load()


def test_every_command_of_the_cheat_sheet_exists(root):
    commands = cheat_sheet(README.read_text())
    assert len(commands) > 15
    assert [problem for command in commands for problem in unknown(command, root)] == []


def test_a_command_or_option_the_cli_lacks_is_caught(root):
    assert unknown("inferbox keys ls", root) == []
    assert unknown("inferbox models frob X", root) == ["inferbox models frob X: no command frob"]
    assert unknown("inferbox keys create --nmae N", root) == [
        "inferbox keys create --nmae N: no option --nmae"
    ]
