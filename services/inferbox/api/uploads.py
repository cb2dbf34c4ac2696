"""The bytes of an uploaded model file, streamed from a raw or a multipart request body."""

from __future__ import annotations

from collections.abc import AsyncIterator

import multipart
from litestar import Request

from inferbox.errors import BadRequest

FILE_FIELD = "file"


async def upload_chunks(request: Request) -> AsyncIterator[bytes]:
    """Chunks of the model file: the whole body, or the ``file`` part of multipart/form-data.

    Nothing is buffered beyond one network chunk, so a 2 GB model costs no memory here.
    """
    content_type, options = multipart.parse_options_header(
        request.headers.get("content-type", "application/octet-stream")
    )
    if content_type != "multipart/form-data":
        async for chunk in request.stream():
            if chunk:
                yield chunk
        return
    boundary = options.get("boundary")
    if not boundary:
        raise BadRequest("multipart/form-data without a boundary")
    found = False
    current = None
    try:
        with multipart.PushMultipartParser(boundary, max_segment_count=16) as parser:
            async for chunk in request.stream():
                for event in parser.parse(chunk):
                    if isinstance(event, multipart.MultipartSegment):
                        current = event.name
                        found = found or current == FILE_FIELD
                    elif event is None:
                        current = None
                    elif current == FILE_FIELD:
                        yield bytes(event)
    except multipart.MultipartError as exc:
        raise BadRequest(f"malformed multipart body: {exc}") from None
    if not found:
        raise BadRequest(f"multipart upload without a {FILE_FIELD!r} part")
