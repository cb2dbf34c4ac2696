"""Backup archives sealed with a passphrase: AES-256-GCM in 1 MiB chunks, key from scrypt.

File layout: ``MAGIC``, a 16-byte salt, an 8-byte nonce prefix, then chunks, each a 4-byte
big-endian length and its ciphertext (with the GCM tag). Chunk ``i``'s nonce is the prefix and
``i``; its associated data is the header, ``i`` and whether it is the last chunk, so chunks
cannot be reordered, dropped, or the file cut short without opening failing.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

MAGIC = b"IBXSEAL1"
CHUNK = 1 << 20


class SealError(ValueError):
    """A sealed archive that cannot be opened: wrong passphrase, damaged or cut short."""


def is_sealed(path: Path) -> bool:
    """Whether ``path`` is a sealed archive."""
    with path.open("rb") as handle:
        return handle.read(len(MAGIC)) == MAGIC


def _key(passphrase: str, salt: bytes) -> bytes:
    if not passphrase:
        raise ValueError("the backup passphrase is empty")
    return Scrypt(salt=salt, length=32, n=2**15, r=8, p=1).derive(passphrase.encode())


def _aad(header: bytes, index: int, last: bool) -> bytes:
    return header + struct.pack(">IB", index, last)


def seal(source: Path, target: Path, passphrase: str) -> None:
    """Write ``source`` sealed to ``target`` (mode 0600)."""
    salt, prefix = os.urandom(16), os.urandom(8)
    header = MAGIC + salt + prefix
    aead = AESGCM(_key(passphrase, salt))
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with source.open("rb") as plain, os.fdopen(fd, "wb") as out:
        out.write(header)
        index = 0
        chunk = plain.read(CHUNK)
        while True:
            following = plain.read(CHUNK)
            last = not following
            nonce = prefix + struct.pack(">I", index)
            sealed = aead.encrypt(nonce, chunk, _aad(header, index, last))
            out.write(struct.pack(">I", len(sealed)) + sealed)
            if last:
                break
            chunk, index = following, index + 1


def unseal(source: Path, target: Path, passphrase: str) -> None:
    """Write the opened contents of ``source`` to ``target`` (mode 0600), or ``SealError``."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with source.open("rb") as sealed, os.fdopen(fd, "wb") as out:
        header = sealed.read(len(MAGIC) + 24)
        if len(header) != len(MAGIC) + 24 or not header.startswith(MAGIC):
            raise SealError("not a sealed inferbox archive")
        salt, prefix = header[len(MAGIC) : len(MAGIC) + 16], header[len(MAGIC) + 16 :]
        aead = AESGCM(_key(passphrase, salt))
        index = 0
        while True:
            size = sealed.read(4)
            if len(size) != 4:
                raise SealError("the sealed archive is cut short")
            data = sealed.read(struct.unpack(">I", size)[0])
            nonce = prefix + struct.pack(">I", index)
            last = not sealed.peek(1) if hasattr(sealed, "peek") else False
            try:
                out.write(aead.decrypt(nonce, data, _aad(header, index, last)))
            except InvalidTag:
                raise SealError(
                    "the sealed archive does not open: wrong passphrase, or damaged"
                ) from None
            if last:
                return
            index += 1
