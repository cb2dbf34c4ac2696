"""The API's request and response bodies, as msgspec structs: Litestar decodes and validates
the requests, encodes the answers and documents both in the OpenAPI description
(``/docs/openapi.json``). The V2 protocol documents whose shape follows the model (metadata,
Triton config, repository index) are built in ``inferbox.frontend.documents`` instead."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from inferbox.jobs.store import Job, JobInput
from inferbox.models.spec import ModelConfig, TensorSpec
from inferbox.registry.store import ModelVersion
from inferbox.security.audit import AuditEntry
from inferbox.security.keystore import KeyRecord


class AliasTarget(msgspec.Struct):
    """Body of ``PUT /v1/models/{name}/aliases/{alias}``."""

    version: int


class TrafficSplit(msgspec.Struct):
    """Body of ``PUT /v1/models/{name}/traffic``: version -> weight (empty clears the split)."""

    weights: dict[int, int]


class VersionView(msgspec.Struct, kw_only=True):
    """One version: the registry's record, its state on each worker, its capacity card."""

    name: str
    version: int
    sha256: str
    size: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    config: ModelConfig
    state: str
    """``pending``, ``ready``, ``failed`` (see ``reason``) or ``deleted``."""
    reason: str | None
    loaded: bool
    """Desired residency: workers keep versions with ``loaded`` true."""
    capacity: dict[str, Any] | None
    created_at: datetime
    created_by: str | None
    """The id of the key that uploaded it (``system``: the setup); null for a caller that may
    not change the model (only ``admin`` and ``models:write`` keys allowed it see who)."""
    workers: dict[str, dict[str, Any]] | None
    """Each worker's report for this version (``state``, ...), by worker id (its host and
    process); null for a caller that may not change the model, as for ``created_by``."""

    @classmethod
    def of(
        cls,
        version: ModelVersion,
        workers: dict[int, dict],
        capacity: dict | None,
        *,
        operator: bool,
    ) -> VersionView:
        """The view of ``version`` with the worker reports of its model (by version); key and
        worker ids only for an ``operator`` (a caller that may change the model)."""
        fields = msgspec.structs.asdict(version)
        fields["name"] = fields.pop("model")
        fields.update(workers=workers.get(version.version, {}), capacity=capacity)
        if not operator:
            fields.update(created_by=None, workers=None)
        return cls(**fields)


class ModelView(msgspec.Struct, kw_only=True):
    """A model with every version, aliases and traffic split."""

    name: str
    created_at: str
    aliases: dict[str, int]
    traffic: dict[int, int]
    """Version -> weight; empty: no split."""
    versions: list[VersionView]


class ModelEntry(msgspec.Struct, kw_only=True):
    """One line of the model list."""

    name: str
    versions: list[int]
    latest_ready: int | None
    aliases: dict[str, int]
    created_at: str


class ModelList(msgspec.Struct):
    """``GET /v1/models``."""

    models: list[ModelEntry]


class CapacityView(msgspec.Struct, kw_only=True):
    """A version's capacity card and, for a latency target, the batching knobs proposed."""

    card: dict[str, Any] | None
    proposal: dict[str, Any] | None


class AliasView(msgspec.Struct, kw_only=True):
    """An alias and the version it points at."""

    name: str
    alias: str
    version: int


class TrafficView(msgspec.Struct, kw_only=True):
    """A model's traffic split: version -> weight."""

    name: str
    weights: dict[int, int]


# -- /v1/keys and /v1/audit -----------------------------------------------------------------


class NewKey(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /v1/keys``."""

    name: str
    scopes: list[str]
    allowed_models: list[str] | None = None
    """Models the key may use (None: all)."""
    priority: int = 0
    """The most urgent priority its calls may claim, and their default: 0 (none set) and 1 high
    lane, >= 2 low lane. A request may ask for a lower priority (a larger number), never for a
    higher one."""
    rate_per_s: float | msgspec.UnsetType | None = msgspec.UNSET
    """Requests per second; left out: ``INFERBOX_KEY_DEFAULT_RATE_PER_S``; null: no limit."""
    burst: int | None = None
    max_concurrency: int | msgspec.UnsetType | None = msgspec.UNSET
    """Calls in flight at most; left out: ``INFERBOX_KEY_DEFAULT_MAX_CONCURRENCY``; null: no
    limit."""
    expires_in_s: float | None = None
    """Seconds until the key expires (None: never)."""


def _public(record: KeyRecord) -> dict[str, Any]:
    # What the API shows of a key: every field but the secret's hash.
    fields = msgspec.structs.asdict(record)
    del fields["secret_hash"]
    return fields


class KeyView(msgspec.Struct, kw_only=True):
    """An API key as the API shows it: its record without the secret's hash."""

    id: str
    name: str
    scopes: list[str]
    allowed_models: list[str] | None
    """Models the key may use (None: all)."""
    priority: int
    rate_per_s: float | None
    burst: int | None
    max_concurrency: int | None
    expires_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime
    created_by: str | None
    last_used_at: datetime | None

    @classmethod
    def of(cls, record: KeyRecord) -> KeyView:
        """The view of ``record``."""
        return cls(**_public(record))


class CreatedKey(KeyView, kw_only=True):
    """``POST /v1/keys``: the new key, with its secret (the only time it is shown)."""

    key: str

    @classmethod
    def with_secret(cls, record: KeyRecord, key: str) -> CreatedKey:
        """The view of the new ``record`` with its full ``key``."""
        return cls(key=key, **_public(record))


class KeyList(msgspec.Struct):
    """``GET /v1/keys``."""

    keys: list[KeyView]


class AuditPage(msgspec.Struct, kw_only=True):
    """A page of the audit log, newest first."""

    entries: list[AuditEntry]
    next: int | None
    """The ``before`` cursor of the following page (null at the end)."""


# -- jobs -----------------------------------------------------------------------------------


class JobAccepted(msgspec.Struct, kw_only=True):
    """``POST .../jobs`` (202): the job recorded, and where to follow it."""

    job_id: str
    state: str
    status_url: str
    result_url: str


class WebhookView(msgspec.Struct, kw_only=True):
    """Delivery of a job's webhook (its URL is not shown)."""

    state: str | None
    attempts: int
    error: str | None


class JobView(msgspec.Struct, kw_only=True):
    """A job: its state, progress, attempts, timestamps and error (no storage keys)."""

    id: str
    model: str
    version: int
    state: str
    kind: str
    """``request`` (a V2 request body) or ``bulk`` (a job input file)."""
    progress: float
    rows_total: int | None
    rows_done: int
    attempts: int
    max_attempts: int
    error: str | None
    input_id: str | None
    result_size: int | None
    idempotency_key: str | None
    api_key_id: str | None
    request_id: str | None
    webhook: WebhookView | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime | None

    @classmethod
    def of(cls, job: Job) -> JobView:
        """The view of ``job`` (``Job.view()``, typed)."""
        return msgspec.convert(job.view(), cls)


class JobList(msgspec.Struct, kw_only=True):
    """``GET /v1/jobs``: a page of jobs, newest first."""

    jobs: list[JobView]
    next: str | None
    """The cursor of the following page (null at the end)."""


class InputView(msgspec.Struct, kw_only=True):
    """An uploaded job input file."""

    input_id: str
    format: str
    size: int
    sha256: str
    rows: int
    arrays: dict[str, Any]
    created_at: datetime
    expires_at: datetime

    @classmethod
    def of(cls, row: JobInput) -> InputView:
        """The view of ``row`` (``JobInput.view()``, typed)."""
        return msgspec.convert(row.view(), cls)


# -- /v2 ------------------------------------------------------------------------------------


class ServerMetadata(msgspec.Struct, kw_only=True):
    """``GET /v2``: server name, version and the protocol extensions implemented."""

    name: str
    version: str
    extensions: list[str]


class Liveness(msgspec.Struct):
    """``GET /v2/health/live``."""

    live: bool


class Readiness(msgspec.Struct, kw_only=True):
    """``GET /v2/health/ready``: 200 when ready, else 503 with the reason."""

    ready: bool
    error: str | msgspec.UnsetType = msgspec.UNSET
    """Why the server is not ready (left out when it is)."""


class ModelReadiness(msgspec.Struct, kw_only=True):
    """``GET /v2/models/{name}[/versions/{version}]/ready``: 200 when a worker serves the
    version, else 503 with the reason."""

    name: str
    version: str
    ready: bool
    error: str | msgspec.UnsetType | None = msgspec.UNSET
    """Why the version is not served (left out when it is)."""


class Empty(msgspec.Struct):
    """An empty JSON object: the answer to a repository load or unload."""
