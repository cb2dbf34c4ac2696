"""A failed call's message tells the caller about its input (shapes, types, the node that
refused it) and nothing about the server (paths, source locations, hosts, addresses); the
worker's log keeps the whole message."""

from __future__ import annotations

import re

import numpy as np
import onnxruntime as ort
import pytest

from inferbox import redaction
from inferbox.redaction import redact
from tests.support.onnx_sessions import reshaping_session

pytestmark = pytest.mark.unit

_SOURCE_PATH = re.compile(r"/[\w./-]+\.(?:h|cc|cpp|cu):\d+")


def _error_of(call) -> str:
    with pytest.raises(Exception) as raised:  # ONNX Runtime's pybind exception classes
        call()
    return str(raised.value)


def test_onnx_runtimes_messages_about_the_input_pass_unchanged():
    session = reshaping_session()
    for feed in (np.zeros((1, 4), np.float32), np.zeros((1, 3)), np.zeros(3, np.float32)):
        message = _error_of(lambda feed=feed: session.run(None, {"x": feed}))
        assert "INVALID_ARGUMENT" in message
        assert redact(message) == message


def test_a_runtime_failure_keeps_the_shapes_and_the_node_and_loses_the_source_location():
    session = reshaping_session()
    message = _error_of(lambda: session.run(None, {"x": np.zeros((1, 3), np.float32)}))
    assert _SOURCE_PATH.search(message), message  # what ONNX Runtime says, server side
    shown = redact(message)
    assert not _SOURCE_PATH.search(shown) and "onnxruntime::" not in shown
    assert "Name:'/encoder/Reshape'" in shown
    assert "The input tensor cannot be reshaped to the requested shape." in shown
    assert "Input shape:{1,3}, requested shape:{2,2}" in shown


def test_a_load_failure_loses_the_model_files_path(tmp_path):
    missing = tmp_path / "cache" / "models" / "ab12.onnx"
    message = _error_of(lambda: ort.InferenceSession(str(missing)))
    assert str(missing) in message
    shown = redact(message)
    assert str(tmp_path) not in shown and "NO_SUCHFILE" in shown and "<path>" in shown


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "CUDA failure 2: out of memory ; GPU=0 ; hostname=0f3c2a1b9d7e ;"
            " file=/onnxruntime_src/onnxruntime/core/providers/cuda/cuda_allocator.cc ; line=47",
            "CUDA failure 2: out of memory ; GPU=0 ; hostname=<host> ; file=<path> ; line=47",
        ),
        ("Error 111 connecting to redis:6379. Connection refused.", "Error 111 connecting to"),
        ("node 10.0.0.5:6380 died", "node <address> died"),
        ("peers fe80::1ff:fe23:4567:890a and [::1]:8265", "peers <address> and <address>"),
        ("see https://minio.internal:9000/models/x", "see <url>"),
        ("<Session object at 0x7f3a2b1c4d50>", "<Session object at <pointer>>"),
        ("No such file or directory: '/var/cache/inferbox/m.onnx'", "directory: '<path>'"),
    ],
)
def test_what_describes_the_server_is_replaced(text, shown):
    assert shown in redact(text)


@pytest.mark.parametrize(
    "text",
    [
        "Got invalid dimensions for input: x for the following indices\n index: 1 Got: 4",
        "Unexpected input data type. Actual: (tensor(double)) , expected: (tensor(float))",
        "std::bad_alloc at 12:30:45, ratio 3:2, opset 1.31.1",
    ],
)
def test_ordinary_text_is_left_alone(text):
    assert redact(text) == text


def test_the_workers_own_host_name_is_replaced(monkeypatch):
    monkeypatch.setattr(redaction.socket, "gethostname", lambda: "gpu-node-17")
    redaction._own_host.cache_clear()
    try:
        assert redact("allocation failed on gpu-node-17 (pid 12)") == (
            "allocation failed on <host> (pid 12)"
        )
    finally:
        redaction._own_host.cache_clear()


def test_a_long_message_is_cut():
    assert len(redact("shape " * 5000)) == redaction.MAX_CHARS
