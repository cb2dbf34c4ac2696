"""The stream entry and reply layouts round-trip."""

from __future__ import annotations

import pytest

from inferbox.lanes.wire import (
    CallHeader,
    ReplyHeader,
    TensorMeta,
    bundle_replies,
    decode_call,
    decode_reply,
    encode_call,
    encode_reply,
    unbundle_replies,
)

pytestmark = pytest.mark.unit


def test_call_round_trip():
    header = CallHeader(
        channel="c",
        token="7",
        deadline=12.5,
        inputs=[TensorMeta("a", "FP32", [1, 2]), TensorMeta("b", "BYTES", [1])],
        outputs=["y"],
        request_id="r",
    )
    fields = encode_call(header, [b"\x00" * 8, b"\x01\x00\x00\x00z"])
    decoded, raws = decode_call(fields)
    assert decoded == header
    assert raws == [b"\x00" * 8, b"\x01\x00\x00\x00z"]


def test_bundled_replies_round_trip_without_copies():
    ok = encode_reply(
        ReplyHeader(token="1", outputs=[TensorMeta("y", "UINT8", [3])], sizes=[3]), [b"abc"]
    )
    failed = encode_reply(ReplyHeader(token="2", error="boom", status=400))
    replies = [decode_reply(r) for r in unbundle_replies(bundle_replies([ok, failed]))]
    (h1, raws1), (h2, raws2) = replies
    assert h1.token == "1" and bytes(raws1[0]) == b"abc" and isinstance(raws1[0], memoryview)
    assert h2.error == "boom" and h2.status == 400 and raws2 == []
