"""The bytes of an uploaded model file, streamed from a raw or a multipart request body."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator

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
    part = _FilePart()
    try:
        with multipart.PushMultipartParser(boundary, max_segment_count=16) as parser:
            async for chunk in request.stream():
                for data in part.data(parser.parse(chunk)):
                    yield data
    except multipart.MultipartError as exc:
        raise BadRequest(f"malformed multipart body: {exc}") from None
    if not part.found:
        raise BadRequest(f"multipart upload without a {FILE_FIELD!r} part")


class _FilePart:
    """Follows the parser's events across network chunks: which part the body is in, and
    whether a ``file`` part was seen."""

    def __init__(self) -> None:
        self.found = False
        self.current: str | None = None

    def data(self, events: Iterable) -> Iterator[bytes]:
        """The bytes among ``events`` that belong to the ``file`` part, as they come."""
        for event in events:
            if isinstance(event, multipart.MultipartSegment):
                self.current = event.name
                self.found = self.found or self.current == FILE_FIELD
            elif event is None:
                self.current = None
            elif self.current == FILE_FIELD:
                yield bytes(event)
