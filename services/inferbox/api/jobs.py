"""The jobs routes: ``POST /v2/models/{name}[/versions/{version}]/jobs`` and ``/v1/jobs``.

A submission takes the same body as ``/infer`` (JSON, or binary with
``Inference-Header-Content-Length``), or ``{"input_id": ...}`` naming an uploaded input file,
and answers ``202`` with the job's id, its status URL and a ``Location`` header. ``/infer``
itself stays synchronous.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import Stream

from inferbox.api.schemas import InputView, JobAccepted, JobList, JobView
from inferbox.api.uploads import upload_chunks
from inferbox.errors import BadRequest, Unavailable
from inferbox.inference.directory import ModelDirectory
from inferbox.jobs.inputs import FORMATS, guess_format
from inferbox.jobs.service import JobService
from inferbox.jobs.store import Job
from inferbox.observability import api_metrics
from inferbox.security.access import needs

_JOBS = needs("jobs")


def _key(request: Request):
    return request.scope.get("inferbox.api_key")


def _accepted(job: Job, created: bool) -> Response[JobAccepted]:
    status_url = f"/v1/jobs/{job.id}"
    headers = {"Location": status_url}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    accepted = JobAccepted(
        job_id=str(job.id),
        state=job.state,
        status_url=status_url,
        result_url=f"{status_url}/result",
    )
    return Response(accepted, status_code=202, headers=headers)


async def _submit(
    request: Request,
    directory: ModelDirectory,
    jobs: JobService,
    name: str,
    version: str | None,
) -> Response[JobAccepted]:
    spec = await directory.resolve(name, version)
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
    job, created = await jobs.submit(
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
    async def submit(
        self,
        request: Request,
        directory: NamedDependency[ModelDirectory],
        jobs: NamedDependency[JobService],
        name: FromPath[str],
    ) -> Response[JobAccepted]:
        """Queue a job for the model's default version; 202 once it is recorded."""
        return await _submit(request, directory, jobs, name, None)

    @post(
        "/{name:str}/versions/{version:str}/jobs",
        status_code=202,
        opt=needs("jobs", model="name"),
    )
    async def submit_version(
        self,
        request: Request,
        directory: NamedDependency[ModelDirectory],
        jobs: NamedDependency[JobService],
        name: FromPath[str],
        version: FromPath[str],
    ) -> Response[JobAccepted]:
        """Queue a job for a version (number or alias); 202 once it is recorded."""
        return await _submit(request, directory, jobs, name, version)


class JobsController(Controller):
    """``/v1/jobs``: status, results, cancellation, listing, and input files."""

    path = "/v1/jobs"
    tags = ["jobs"]

    @get("", opt=_JOBS)
    async def list_jobs(
        self,
        request: Request,
        jobs: NamedDependency[JobService],
        job_state: Annotated[str | None, QueryParameter(name="state")] = None,
        model: FromQuery[str | None] = None,
        limit: FromQuery[int] = 50,
        cursor: FromQuery[str | None] = None,
    ) -> JobList:
        """Jobs newest first; ``next`` is the cursor of the following page (null at the end)."""
        page, after = await jobs.list(
            _key(request), state=job_state, model=model, limit=limit, cursor=cursor
        )
        return JobList(jobs=[JobView.of(job) for job in page], next=after)

    # No body limit here: the file is streamed to disk and spool() enforces its own limit.
    @post("/inputs", status_code=201, request_max_body_size=None, opt=_JOBS)
    async def upload_input(
        self,
        request: Request,
        jobs: NamedDependency[JobService],
        input_format: Annotated[str | None, QueryParameter(name="format")] = None,
        filename: FromQuery[str | None] = None,
    ) -> InputView:
        """Upload a job input file (``.npy``, ``.npz``, JSON lines; raw body or multipart)."""
        fmt = input_format or guess_format(filename, request.headers.get("content-type"))
        if fmt not in FORMATS:
            raise BadRequest(f"say the input's format: ?format= one of {', '.join(FORMATS)}")
        row = await jobs.add_input(upload_chunks(request), fmt, _key(request))
        return InputView.of(row)

    @get("/inputs/{input_id:str}", opt=_JOBS)
    async def show_input(
        self, request: Request, jobs: NamedDependency[JobService], input_id: FromPath[str]
    ) -> InputView:
        """An uploaded input file's description."""
        return InputView.of(await jobs.get_input(input_id, _key(request)))

    @get("/{job_id:str}", opt=_JOBS)
    async def show(
        self, request: Request, jobs: NamedDependency[JobService], job_id: FromPath[str]
    ) -> JobView:
        """A job's state, progress, attempts, timestamps and error."""
        return JobView.of(await jobs.get(job_id, _key(request)))

    @delete("/{job_id:str}", status_code=200, opt=_JOBS)
    async def cancel(
        self, request: Request, jobs: NamedDependency[JobService], job_id: FromPath[str]
    ) -> JobView:
        """Cancel a queued or running job (409 when it has already finished)."""
        return JobView.of(await jobs.cancel(job_id, _key(request)))

    @get("/{job_id:str}/result", opt=_JOBS)
    async def result(
        self, request: Request, jobs: NamedDependency[JobService], job_id: FromPath[str]
    ) -> Stream:
        """The V2 inference response, streamed from the object store (binary when asked)."""
        job = await jobs.result(job_id, _key(request))
        headers = {"Content-Length": str(job.result_size)}
        if job.result_header_length is not None:
            headers["Inference-Header-Content-Length"] = str(job.result_header_length)
        chunks = await jobs.open_result(job)
        return Stream(chunks, media_type=job.result_content_type, headers=headers)
