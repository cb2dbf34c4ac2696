"""gRPC's framing, deadlines and status text, as the API's ``ModelInfer`` relay reads and writes
them."""

from __future__ import annotations

import struct
import urllib.parse

import grpc
import pytest

from inferbox.errors import BadRequest
from inferbox.protocol.grpc_messages import (
    STATUS_CODE,
    Compressed,
    frame,
    status_code,
    status_message,
    timeout_s,
    unframe,
)

pytestmark = pytest.mark.unit


def test_a_framed_message_unframes_to_itself():
    assert unframe(frame(b"message")) == b"message"
    assert frame(b"") == b"\x00\x00\x00\x00\x00"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "shorter than its 5-byte prefix"),
        (b"\x00\x00\x00", "shorter than its 5-byte prefix"),
        (b"\x00" + struct.pack(">I", 10) + b"short", "says 10 bytes but 5 arrived"),
        (b"\x00" + struct.pack(">I", 1) + b"two", "says 1 bytes but 3 arrived"),
        # two messages in one unary call's body
        (frame(b"a") + frame(b"b"), "says 1 bytes but 7 arrived"),
    ],
)
def test_a_body_that_is_not_one_message_is_refused(body, message):
    with pytest.raises(BadRequest, match=message):
        unframe(body)


def test_a_compressed_message_is_unimplemented():
    with pytest.raises(Compressed) as refused:
        unframe(b"\x01" + struct.pack(">I", 2) + b"gz")
    assert status_code(refused.value.status) == grpc.StatusCode.UNIMPLEMENTED.value[0]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (b"1S", 1.0),
        (b"250m", 0.25),
        (b"99999999u", 99.999999),
        (b"2M", 120.0),
        (b"1H", 3600.0),
        (b"5000000n", 0.005),
    ],
)
def test_grpc_timeouts(value, seconds):
    assert timeout_s(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", [b"", b"S", b"10", b"1s", b"123456789S", b"-1S", b"1.5S", b"\xb2S"]
)
def test_a_malformed_grpc_timeout_is_refused(value):
    with pytest.raises(BadRequest, match="is not a gRPC timeout"):
        timeout_s(value)


def test_status_codes_are_grpcs_own():
    codes = {code.value[0]: code for code in grpc.StatusCode}
    for http, code in STATUS_CODE.items():
        assert code in codes, http
    assert codes[status_code(400)] == grpc.StatusCode.INVALID_ARGUMENT
    assert codes[status_code(418)] == grpc.StatusCode.UNKNOWN


def test_status_messages_are_percent_encoded_as_grpc_says():
    text = "input 'x': dimension 1 must be 16, got 15 (100% wrong) — é\r\n"
    encoded = status_message(text)
    assert all(0x20 <= byte < 0x7F for byte in encoded)
    assert b"%25" in encoded and b"\r" not in encoded and b"\n" not in encoded
    assert b"input 'x': dimension 1 must be 16, got 15" in encoded  # readable as it is
    assert urllib.parse.unquote(encoded.decode()) == text
