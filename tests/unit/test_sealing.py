"""Sealed backup archives: they open with the passphrase only, whole and unchanged."""

from __future__ import annotations

import os
import struct

import pytest

from inferbox.registry.sealing import CHUNK, MAGIC, SealError, is_sealed, seal, unseal

pytestmark = pytest.mark.unit


@pytest.fixture
def sealed(tmp_path):
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(3 * CHUNK + 1234))
    target = tmp_path / "sealed"
    seal(plain, target, "pass phrase")
    return plain, target


def test_a_sealed_archive_opens_with_its_passphrase(sealed, tmp_path):
    plain, target = sealed
    assert is_sealed(target) and not is_sealed(plain)
    assert target.stat().st_mode & 0o077 == 0
    assert plain.read_bytes()[:4096] not in target.read_bytes()
    opened = tmp_path / "opened"
    unseal(target, opened, "pass phrase")
    assert opened.read_bytes() == plain.read_bytes()


def test_a_wrong_passphrase_a_cut_or_a_reordered_archive_does_not_open(sealed, tmp_path):
    _, target = sealed
    with pytest.raises(SealError, match="wrong passphrase"):
        unseal(target, tmp_path / "x", "guess")
    data = target.read_bytes()
    header = len(MAGIC) + 24
    first = struct.unpack(">I", data[header : header + 4])[0] + 4
    cut = tmp_path / "cut"
    cut.write_bytes(data[: header + first])  # only the first chunk
    with pytest.raises(SealError):
        unseal(cut, tmp_path / "x", "pass phrase")
    swapped = tmp_path / "swapped"
    second = data[header + first : header + 2 * first]
    swapped.write_bytes(
        data[:header] + second + data[header : header + first] + data[header + 2 * first :]
    )
    with pytest.raises(SealError):
        unseal(swapped, tmp_path / "x", "pass phrase")
