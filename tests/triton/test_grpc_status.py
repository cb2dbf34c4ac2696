"""HTTP statuses of inferbox's errors and the gRPC codes they become."""

from __future__ import annotations

import grpc
import pytest

from inferbox.errors import (
    BadRequest,
    DeadlineExceeded,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from inferbox.grpc.server import grpc_status

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (BadRequest, grpc.StatusCode.INVALID_ARGUMENT),
        (Unauthorized, grpc.StatusCode.UNAUTHENTICATED),
        (Forbidden, grpc.StatusCode.PERMISSION_DENIED),
        (NotFound, grpc.StatusCode.NOT_FOUND),
        (PayloadTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (TooManyRequests, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (Unavailable, grpc.StatusCode.UNAVAILABLE),
        (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    ],
)
def test_each_http_status_has_its_grpc_code(error, code):
    assert grpc_status(error.status) == code
