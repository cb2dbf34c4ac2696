"""How a queued call and its reply are laid out in Redis.

A call is one stream entry: field ``h`` holds a small JSON header, fields ``0..n-1`` hold each
input's raw bytes (never pickle, never JSON lists). A reply is a 4-byte little-endian header
length, a JSON header, then each output's raw bytes back to back. A worker sends all the
replies of one batch bound for the same API process as one pub/sub message: each reply
preceded by its 4-byte length, so a batch costs one PUBLISH per API process, not per call.
"""

from __future__ import annotations

import struct

import msgspec

HEADER_FIELD = b"h"
_LENGTH = struct.Struct("<I")


class TensorMeta(msgspec.Struct, array_like=True):
    """Name, V2 datatype and shape of a tensor travelling as raw bytes."""

    name: str
    datatype: str
    shape: list[int]


class CallHeader(msgspec.Struct, omit_defaults=True):
    """Everything about a queued call except its tensor bytes."""

    channel: str
    """Reply channel of the API process waiting for the answer."""
    token: str
    """Correlates the reply with the waiting request inside that process."""
    deadline: float
    """Unix time (seconds) after which nobody waits for the answer: drop instead of running."""
    inputs: list[TensorMeta]
    outputs: list[str] | None = None
    request_id: str | None = None
    file: str | None = None
    """Name of the tensor file in the shared directory holding the inputs back to back
    (``tensor_files``); None: they are the entry's fields ``0..n-1``."""
    sizes: list[int] | None = None
    """Byte size of each input inside ``file``."""


class ReplyHeader(msgspec.Struct, omit_defaults=True):
    """The answer to one call: outputs (with byte sizes) or an error."""

    token: str
    outputs: list[TensorMeta] = msgspec.field(default_factory=list)
    sizes: list[int] = msgspec.field(default_factory=list)
    error: str | None = None
    status: int = 200
    spec_tag: str = ""
    """``cache.key.version_tag`` of the spec the worker ran (the response cache stores an
    answer only when it is the spec the call was resolved to)."""


_encode = msgspec.json.Encoder().encode
_decode_call = msgspec.json.Decoder(CallHeader).decode
_decode_reply = msgspec.json.Decoder(ReplyHeader).decode


def encode_call(header: CallHeader, raws: list[bytes]) -> dict[bytes, bytes]:
    """Stream entry fields for a call."""
    fields = {HEADER_FIELD: _encode(header)}
    for index, raw in enumerate(raws):
        fields[str(index).encode()] = raw
    return fields


def decode_call(fields: dict[bytes, bytes]) -> tuple[CallHeader, list[bytes]]:
    """Header and input bytes of a stream entry (raises on a malformed entry); no bytes for a
    call whose inputs are in a tensor file (``header.file``)."""
    header = _decode_call(fields[HEADER_FIELD])
    if header.file is not None:
        if header.sizes is None or len(header.sizes) != len(header.inputs):
            raise ValueError("a tensor file needs one size per input")
        return header, []
    raws = [fields[str(index).encode()] for index in range(len(header.inputs))]
    return header, raws


def encode_reply(header: ReplyHeader, raws: list[bytes] = ()) -> bytes:
    """One pub/sub message carrying a reply."""
    head = _encode(header)
    return b"".join([_LENGTH.pack(len(head)), head, *raws])


def decode_reply(message: bytes | memoryview) -> tuple[ReplyHeader, list[memoryview]]:
    """Header and output bytes (views into ``message``, no copies) of a reply."""
    view = memoryview(message)
    (length,) = _LENGTH.unpack_from(view)
    header = _decode_reply(view[4 : 4 + length])
    raws = []
    offset = 4 + length
    for size in header.sizes:
        raws.append(view[offset : offset + size])
        offset += size
    return header, raws


def bundle_replies(replies: list[bytes]) -> bytes:
    """One pub/sub message carrying several encoded replies."""
    parts = []
    for reply in replies:
        parts += (_LENGTH.pack(len(reply)), reply)
    return b"".join(parts)


def unbundle_replies(message: bytes) -> list[memoryview]:
    """The encoded replies inside one pub/sub message (views, no copies)."""
    view = memoryview(message)
    replies = []
    offset = 0
    while offset < len(view):
        (length,) = _LENGTH.unpack_from(view, offset)
        replies.append(view[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return replies
