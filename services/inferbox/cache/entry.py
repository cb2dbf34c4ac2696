"""How a stored answer is laid out in the cache Redis.

One string: a format byte, the 16-byte generation token of its version at the time it was
computed (``Keys.cache_generation``), a 4-byte little-endian header length, a JSON header (the
outputs' names, datatypes and shapes, and their byte sizes), then the outputs' raw bytes back
to back. An entry whose token is not the version's current one is never served.
"""

from __future__ import annotations

import struct

import msgspec

from inferbox.lanes.wire import TensorMeta

FORMAT = b"\x01"
GENERATION_BYTES = 16
_LENGTH = struct.Struct("<I")
_START = 1 + GENERATION_BYTES


class EntryHeader(msgspec.Struct, array_like=True):
    """The outputs of a stored answer (raw bytes excluded)."""

    outputs: list[TensorMeta]
    sizes: list[int]


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(EntryHeader).decode


def encode_entry(
    generation: bytes, metas: list[TensorMeta], raws: list[bytes | memoryview]
) -> bytes:
    """The value stored for an answer computed while ``generation`` was current."""
    if len(generation) != GENERATION_BYTES:
        raise ValueError(f"a generation token has {GENERATION_BYTES} bytes")
    # A tuple encodes as EntryHeader does (an array), without building the struct.
    head = _encode((metas, [len(raw) for raw in raws]))
    return b"".join([FORMAT, generation, _LENGTH.pack(len(head)), head, *raws])


def decode_entry(
    value: bytes, generation: bytes
) -> tuple[list[TensorMeta], list[memoryview]] | None:
    """The outputs (metadata, and views into ``value``) of an entry stored under
    ``generation``; None for an entry of another generation, another format, or a malformed one."""
    if value[:1] != FORMAT or value[1:_START] != generation:
        return None
    view = memoryview(value)
    try:
        (length,) = _LENGTH.unpack_from(view, _START)
        offset = _START + 4 + length
        header = _decode(view[_START + 4 : offset])
    except (struct.error, msgspec.DecodeError, msgspec.ValidationError):
        return None
    if len(header.sizes) != len(header.outputs) or offset + sum(header.sizes) != len(view):
        return None
    raws = []
    for size in header.sizes:
        raws.append(view[offset : offset + size])
        offset += size
    return header.outputs, raws
