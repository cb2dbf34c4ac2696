"""The jobs routes: ``POST /v2/models/{name}[/versions/{version}]/jobs`` and ``/v1/jobs``.

A submission takes the same body as ``/infer`` (JSON, or binary with
``Inference-Header-Content-Length``), or ``{"input_id": ...}`` naming an uploaded input file,
and answers ``202`` with the job's id, its status URL and a ``Location`` header. ``/infer``
itself stays synchronous.
"""

from __future__ import annotations

import uuid

from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.params import QueryParameter
from litestar.response import Stream

from inferbox.api.responses import json_response as _json
from inferbox.api.uploads import upload_chunks
from inferbox.errors import BadRequest, Unavailable
from inferbox.jobs.inputs import FORMATS, guess_format
from inferbox.jobs.store import Job
from inferbox.observability import api_metrics
from inferbox.security.access import needs

_JOBS = needs("jobs")


def _key(request: Request):
    return request.scope.get("inferbox.api_key")


def _accepted(job: Job, created: bool) -> Response:
    status_url = f"/v1/jobs/{job.id}"
    headers = {"Location": status_url}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return _json(
        {
            "job_id": str(job.id),
            "state": job.state,
            "status_url": status_url,
            "result_url": f"{status_url}/result",
        },
        status=202,
        headers=headers,
    )


async def _submit(request: Request, state: State, name: str, version: str | None) -> Response:
    spec = await state.directory.resolve(name, version)
    if spec.error:
        raise Unavailable(f"model {spec.name!r} version {spec.version} is not usable: {spec.error}")
    header_length = request.headers.get("inference-header-content-length")
    if header_length is not None:
        # isascii: str.isdigit() is also true for '²' and other digits int() refuses.
        if not (header_length.isascii() and header_length.isdigit()):
            raise BadRequest("Inference-Header-Content-Length must be an integer")
        header_length = int(header_length)
    body = await request.body()
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    job, created = await state.jobs.submit(
        spec,
        body,
        header_length,
        key=_key(request),
        idempotency_key=request.headers.get("idempotency-key"),
        request_id=request_id,
    )
    if created:
        api_metrics.JOBS_SUBMITTED.labels(spec.name).inc()
    return _accepted(job, created)


class JobSubmitController(Controller):
    """``POST .../jobs``: an inference request served later, durably."""

    path = "/v2/models"
    tags = ["jobs"]

    @post("/{name:str}/jobs", status_code=202, opt=needs("jobs", model="name"))
    async def submit(self, request: Request, state: State, name: str) -> Response:
        """Queue a job for the model's default version; 202 once it is recorded."""
        return await _submit(request, state, name, None)

    @post(
        "/{name:str}/versions/{version:str}/jobs",
        status_code=202,
        opt=needs("jobs", model="name"),
    )
    async def submit_version(
        self, request: Request, state: State, name: str, version: str
    ) -> Response:
        """Queue a job for a version (number or alias); 202 once it is recorded."""
        return await _submit(request, state, name, version)


class JobsController(Controller):
    """``/v1/jobs``: status, results, cancellation, listing, and input files."""

    path = "/v1/jobs"
    tags = ["jobs"]

    @get("", opt=_JOBS)
    async def list_jobs(
        self,
        request: Request,
        state: State,
        job_state: str | None = QueryParameter(name="state", default=None),
        model: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Response:
        """Jobs newest first; ``next`` is the cursor of the following page (null at the end)."""
        jobs, after = await state.jobs.list(
            _key(request), state=job_state, model=model, limit=limit, cursor=cursor
        )
        return _json({"jobs": [job.view() for job in jobs], "next": after})

    # No body limit here: the file is streamed to disk and spool() enforces its own limit.
    @post("/inputs", status_code=201, request_max_body_size=None, opt=_JOBS)
    async def upload_input(
        self,
        request: Request,
        state: State,
        input_format: str | None = QueryParameter(name="format", default=None),
        filename: str | None = None,
    ) -> Response:
        """Upload a job input file (``.npy``, ``.npz``, JSON lines; raw body or multipart)."""
        fmt = input_format or guess_format(filename, request.headers.get("content-type"))
        if fmt not in FORMATS:
            raise BadRequest(f"say the input's format: ?format= one of {', '.join(FORMATS)}")
        row = await state.jobs.add_input(upload_chunks(request), fmt, _key(request))
        return _json(row.view(), status=201)

    @get("/inputs/{input_id:str}", opt=_JOBS)
    async def show_input(self, request: Request, state: State, input_id: str) -> Response:
        """An uploaded input file's description."""
        return _json((await state.jobs.get_input(input_id, _key(request))).view())

    @get("/{job_id:str}", opt=_JOBS)
    async def show(self, request: Request, state: State, job_id: str) -> Response:
        """A job's state, progress, attempts, timestamps and error."""
        return _json((await state.jobs.get(job_id, _key(request))).view())

    @delete("/{job_id:str}", status_code=200, opt=_JOBS)
    async def cancel(self, request: Request, state: State, job_id: str) -> Response:
        """Cancel a queued or running job (409 when it has already finished)."""
        return _json((await state.jobs.cancel(job_id, _key(request))).view())

    @get("/{job_id:str}/result", opt=_JOBS)
    async def result(self, request: Request, state: State, job_id: str) -> Stream:
        """The V2 inference response, streamed from the object store (binary when asked)."""
        job = await state.jobs.result(job_id, _key(request))
        headers = {"Content-Length": str(job.result_size)}
        if job.result_header_length is not None:
            headers["Inference-Header-Content-Length"] = str(job.result_header_length)
        chunks = await state.jobs.open_result(job)
        return Stream(chunks, media_type=job.result_content_type, headers=headers)
