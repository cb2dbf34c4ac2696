"""What of an error's text may reach a caller (``redact``).

A call that fails in ONNX Runtime gets its message: about its own input (shapes, types, ranks,
the node that refused it) it tells the caller what to fix. The same text can also describe the
server: a model file's path in the worker's cache, ONNX Runtime's source locations, the
worker's host name (CUDA's errors carry ``hostname=``), the address of a Ray node or of Redis.
Those parts are replaced by a placeholder in what the caller gets; the worker logs the whole
message for the operator.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from functools import cache

MAX_CHARS = 2000
"""The longest message a caller gets (ONNX Runtime's messages are a few hundred characters)."""

_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
# ONNX Runtime's source location and the C++ function that raised: "/onnxruntime_src/.../x.h:91
# onnxruntime::Helper::Helper(const Shape&, bool) ". Nothing of it concerns the caller.
_SOURCE_LOCATION = re.compile(
    r"(?:[\w.+-]*/)*[\w.+-]+\.(?:h|hh|hpp|c|cc|cpp|cxx|cu|cuh):\d+"
    r"(?:\s+[\w:~<>,*& ]*?\([^()]*\)(?:\s*const)?)?[ \t]*"
)
# An absolute path of two segments or more. A node's name in "Name:'/encoder/Conv'" is the
# model's, not the server's, and stays.
_PATH = re.compile(r"(?<![\w.:/<])(?<!Name:')(?:/[\w.+@~-]+){2,}/?")
_HOST_FIELD = re.compile(r"\b(host(?:name)?=)[^\s;,]+", re.IGNORECASE)
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?(?![\w.])")
_IPV6 = re.compile(
    r"(?<![\w:.\[])\[?(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?:\](?::\d{1,5})?)?(?![\w:])"
)
# "redis:6379", "gcs.internal:6380": a host name with a port.
_HOST_PORT = re.compile(r"(?<![\w.<-])[A-Za-z][\w-]*(?:\.[\w-]+)*:\d{2,5}(?!\w)(?!\.\d)")
_POINTER = re.compile(r"\b0x[0-9A-Fa-f]{8,}\b")


@cache
def _own_host() -> re.Pattern | None:
    """This machine's host name as a word (a container's is its id), if it has a usable one."""
    name = socket.gethostname()
    if len(name) < 3:
        return None
    return re.compile(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", re.IGNORECASE)


def _address(match: re.Match) -> str:
    text = match.group(0)
    host = text
    if text.startswith("["):
        host = text[1:].partition("]")[0]
    elif text.count(":") == 1 and "." in text:  # IPv4 with a port
        host = text.partition(":")[0]
    if not any(c in "0123456789abcdefABCDEF" for c in host.replace(":", "").replace(".", "")):
        return text  # "::" alone, in prose
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return text  # a time, a ratio: not an address
    return "<address>"


def redact(text: str) -> str:
    """``text`` without what describes the server: URLs, ONNX Runtime's source locations,
    file-system paths, host names and addresses (IPv4, IPv6, host:port) and memory addresses,
    each replaced by a placeholder (``<path>``, ``<address>``, ...); at most ``MAX_CHARS``."""
    text = text[:MAX_CHARS]  # first: every pattern below then runs over a bounded text
    text = _URL.sub("<url>", text)
    text = _SOURCE_LOCATION.sub("", text)
    text = _PATH.sub("<path>", text)
    text = _HOST_FIELD.sub(r"\1<host>", text)
    own = _own_host()
    if own is not None:
        text = own.sub("<host>", text)
    text = _IPV4.sub(_address, text)
    text = _IPV6.sub(_address, text)
    text = _HOST_PORT.sub("<address>", text)
    text = _POINTER.sub("<pointer>", text)
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 1] + "…"
