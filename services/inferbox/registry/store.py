"""Models, versions, aliases and traffic splits in PostgreSQL (``RegistryStore``).

The store holds rows only; the model files live in the object store under
``objects.object_key(sha256)``. Every method is one short transaction on a connection borrowed
from a ``psycopg_pool.AsyncConnectionPool``::

    async with create_pool(conninfo) as pool:
        store = RegistryStore(pool)
        version = await store.create_version("resnet", sha256=..., size=..., inputs=..., ...)

Version numbers are assigned by the database (``models.last_version``, incremented in the same
statement that creates the model row), so concurrent uploads never get the same number, and a
number is never reused: deleting a version only marks its row ``deleted``.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import msgspec
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from inferbox.errors import BadRequest
from inferbox.models.spec import GRAPH_OPTIMIZATION_LEVELS, ModelConfig, TensorSpec
from inferbox.registry.errors import (
    AliasInUse,
    AliasNotFound,
    Conflict,
    ModelNotFound,
    VersionNotFound,
)

MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
ALIAS_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
PRODUCTION = "production"

PENDING, READY, FAILED, DELETED = "pending", "ready", "failed", "deleted"
STATES = (PENDING, READY, FAILED, DELETED)


class ModelVersion(msgspec.Struct, frozen=True, kw_only=True):
    """One version of a model as the registry holds it."""

    model: str
    version: int
    sha256: str
    size: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    config: ModelConfig
    state: str
    """``pending``, ``ready``, ``failed`` (see ``reason``) or ``deleted``."""
    reason: str | None = None
    loaded: bool = True
    """Desired residency: workers keep versions with ``loaded`` true, unload the others."""
    capacity: dict[str, Any] | None = None
    """The capacity card measured after loading (free-form JSON), if any."""
    created_at: datetime
    created_by: str | None = None


class Alias(msgspec.Struct, frozen=True):
    """A name (``production``, ``canary``, ...) pointing at one version."""

    name: str
    version: int
    updated_at: datetime


class TrafficShare(msgspec.Struct, frozen=True):
    """One version's relative weight in a model's traffic split."""

    version: int
    weight: int


class Model(msgspec.Struct, frozen=True, kw_only=True):
    """A model with its versions (oldest first), aliases and traffic split."""

    name: str
    created_at: datetime
    versions: list[ModelVersion]
    aliases: list[Alias]
    traffic: list[TrafficShare]
    """Empty: no split; else unversioned calls are shared between these versions by weight."""

    def version(self, number: int) -> ModelVersion | None:
        """The version numbered ``number``, if listed."""
        return next((v for v in self.versions if v.version == number), None)


class ModelSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the model list."""

    name: str
    created_at: datetime
    versions: int
    """Versions not deleted."""
    latest_ready: int | None
    aliases: dict[str, int]


def check_name(name: str) -> str:
    """``name`` if it is a valid model name, else ``BadRequest``."""
    if not MODEL_NAME.match(name):
        raise BadRequest(f"invalid model name {name!r}: use [a-z0-9][a-z0-9_.-]{{0,63}}")
    return name


def check_alias(alias: str) -> str:
    """``alias`` if it is a valid alias name (starts with a letter), else ``BadRequest``."""
    if not ALIAS_NAME.match(alias):
        raise BadRequest(f"invalid alias {alias!r}: use [a-z][a-z0-9_.-]{{0,63}}")
    return alias


def check_config(
    config: ModelConfig, inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> ModelConfig:
    """``config`` if it can serve a model with these tensors, else ``BadRequest`` saying why."""
    problems = [
        *_batching_problems(config, inputs, outputs),
        *_session_problems(config),
        *_provider_option_problems(config.provider_options),
        *_cuda_graphs_problems(config, inputs, outputs),
    ]
    if config.graph_optimization_level not in GRAPH_OPTIMIZATION_LEVELS:
        problems.append(f"graph_optimization_level must be one of {GRAPH_OPTIMIZATION_LEVELS}")
    problems += _timeout_problems(config)
    if problems:
        raise BadRequest("invalid model config: " + "; ".join(problems))
    return config


def _batching_problems(
    config: ModelConfig, inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> list[str]:
    """What is wrong with the batch size, the batcher's delay, preferred sizes and queue."""
    problems = []
    if config.max_batch_size < 0:
        problems.append("max_batch_size must be >= 0")
    elif config.max_batch_size > 0:
        fixed = [t.name for t in [*inputs, *outputs] if not t.shape or t.shape[0] != -1]
        if fixed:
            problems.append(f"batching needs a dynamic dimension 0; fixed in {fixed}")
    if not 0 <= config.max_queue_delay_microseconds <= 10_000_000:
        problems.append("max_queue_delay_microseconds must be within 0..10000000")
    bad_sizes = [s for s in config.preferred_batch_size if not 1 <= s <= config.max_batch_size]
    if bad_sizes:
        problems.append(f"preferred_batch_size {bad_sizes} outside 1..max_batch_size")
    if config.max_queue_size < 1:
        problems.append("max_queue_size must be >= 1")
    return problems


def _session_problems(config: ModelConfig) -> list[str]:
    """What is wrong with the instance count, thread count and execution providers."""
    problems = []
    if not 0 <= config.instance_count <= 64:
        problems.append("instance_count must be within 0..64 (0: the worker's default)")
    if not 0 <= getattr(config, "intra_op_threads", 0) <= 256:
        problems.append("intra_op_threads must be within 0..256 (0: automatic)")
    providers = config.execution_providers
    if not providers or len(set(providers)) != len(providers):
        problems.append("execution_providers must be a non-empty list without repeats")
    elif not all(p.endswith("ExecutionProvider") for p in providers):
        problems.append("execution_providers must be ONNX Runtime provider names")
    return problems


def _cuda_graphs_problems(
    config: ModelConfig, inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> list[str]:
    """CUDA graphs replay fixed buffers: every tensor numeric, every dimension but the batch
    dimension fixed."""
    if not config.cuda_graphs:
        return []
    batched = config.max_batch_size > 0
    loose = [
        t.name
        for t in [*inputs, *outputs]
        if t.datatype == "BYTES"
        or any(d < 0 for d in (t.reshape or (t.shape[1:] if batched else t.shape)))
    ]
    if loose:
        return [
            "cuda_graphs needs numeric tensors of fixed shape but the batch dimension; "
            f"not so: {loose}"
        ]
    return []


def _timeout_problems(config: ModelConfig) -> list[str]:
    """What is wrong with the request timeout and the job retention."""
    problems = []
    if config.timeout_ms is not None and config.timeout_ms <= 0:
        problems.append("timeout_ms must be > 0")
    if config.job_retention_s is not None and config.job_retention_s <= 0:
        problems.append("job_retention_s must be > 0")
    return problems


PROVIDER_OPTIONS = {
    "CUDAExecutionProvider": {
        "cudnn_conv_algo_search": ("EXHAUSTIVE", "HEURISTIC", "DEFAULT"),
        "arena_extend_strategy": ("kNextPowerOfTwo", "kSameAsRequested"),
        "gpu_mem_limit": None,
        "cudnn_conv_use_max_workspace": ("0", "1"),
        "use_tf32": ("0", "1"),
        "prefer_nhwc": ("0", "1"),
        "do_copy_in_default_stream": ("0", "1"),
    },
}
"""The execution-provider options a model config may set, with their allowed values (None: a
positive integer). Others (device ids, streams, graphs) are the worker's to decide."""


def _provider_option_problems(options: dict[str, dict[str, str]]) -> list[str]:
    problems = []
    for provider, values in options.items():
        allowed = PROVIDER_OPTIONS.get(provider)
        if allowed is None:
            problems.append(f"provider_options: no settable options for {provider!r}")
            continue
        for name, value in values.items():
            if name not in allowed:
                problems.append(f"provider_options: {provider} has no option {name!r}")
            elif allowed[name] is None and not (
                value.isascii() and value.isdigit() and int(value) > 0
            ):
                problems.append(f"provider_options: {provider} {name} must be a positive integer")
            elif allowed[name] is not None and value not in allowed[name]:
                problems.append(
                    f"provider_options: {provider} {name} must be one of {allowed[name]}"
                )
    return problems


def merge_config(base: ModelConfig, overrides: dict[str, Any]) -> ModelConfig:
    """``base`` with some fields replaced (a PATCH body); wrong names or types: ``BadRequest``."""
    unknown = sorted(set(overrides) - set(ModelConfig.__struct_fields__))
    if unknown:
        raise BadRequest(
            f"invalid model config: unknown field(s) {unknown}; "
            f"known: {sorted(ModelConfig.__struct_fields__)}"
        )
    try:
        return msgspec.convert(
            {**msgspec.structs.asdict(base), **overrides}, ModelConfig, strict=True
        )
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid model config: {exc}") from None


RECONNECT_WINDOW_S = 3.0
"""How long a chain of retries of one failed connection lasts (attempts at 0, 1 and 3 s)."""


def create_pool(
    conninfo: str, *, min_size: int = 1, max_size: int = 10, timeout_s: float = 30.0
) -> AsyncConnectionPool:
    """An unopened pool; open it with ``async with`` (or ``await pool.open()``).

    A request waits at most ``timeout_s`` for a connection (``PoolTimeout``, an
    ``OperationalError``, after it). Connections are checked when handed out, so the first
    requests after a PostgreSQL restart do not fail on connections it closed.

    A failed connection attempt is retried with a doubling delay (1 s, 2 s, ...) for
    ``RECONNECT_WINDOW_S`` only, then the next request starts a fresh attempt: psycopg_pool's
    own window is 5 minutes, over which the delay grows to minutes, so a process whose pool
    was retrying through a 10 s outage went on answering 503 for up to 8 s after PostgreSQL
    was back (while its sibling processes already said ready).
    """
    return AsyncConnectionPool(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout_s,
        check=AsyncConnectionPool.check_connection,
        reconnect_timeout=RECONNECT_WINDOW_S,
        open=False,
    )


_encode = msgspec.json.encode


def _json(value: Any) -> Jsonb:
    return Jsonb(value, dumps=lambda v: _encode(v).decode())


_VERSION_COLUMNS = (
    "model, version, sha256, size, inputs, outputs, config, state, reason, loaded, capacity,"
    " created_at, created_by"
)


def _version(row: dict[str, Any]) -> ModelVersion:
    return msgspec.convert(row, ModelVersion)


class RegistryStore:
    """The registry's rows. Methods raise ``ModelNotFound``, ``VersionNotFound``,
    ``AliasNotFound``, ``AliasInUse``, ``Conflict`` or ``BadRequest`` (see ``errors``)."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    @property
    def pool(self) -> AsyncConnectionPool:
        """The connection pool (shared with the API keys and audit log tables)."""
        return self._pool

    async def create_version(
        self,
        model: str,
        *,
        sha256: str,
        size: int,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        config: ModelConfig,
        created_by: str | None = None,
        state: str = READY,
        loaded: bool = True,
    ) -> ModelVersion:
        """Add the next version of ``model`` (creating the model on its first version).

        Call it only after the file is validated and stored: the version is ``ready`` at once.
        """
        check_name(model)
        if not SHA256.match(sha256) or size < 0:
            raise BadRequest("sha256 must be 64 lowercase hex digits and size >= 0")
        check_config(config, inputs, outputs)
        if state not in (PENDING, READY):
            raise BadRequest(f"a new version is pending or ready, not {state!r}")
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "INSERT INTO models (name, last_version) VALUES (%s, 1)"
                " ON CONFLICT (name) DO UPDATE SET last_version = models.last_version + 1"
                " RETURNING last_version",
                (model,),
            )
            number = (await cur.fetchone())["last_version"]
            await cur.execute(
                "INSERT INTO model_versions"
                " (model, version, sha256, size, inputs, outputs, config, state, loaded,"
                " created_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                f" RETURNING {_VERSION_COLUMNS}",
                (
                    model,
                    number,
                    sha256,
                    size,
                    _json(inputs),
                    _json(outputs),
                    _json(config),
                    state,
                    loaded,
                    created_by,
                ),
            )
            return _version(await cur.fetchone())

    async def list_models(self) -> list[ModelSummary]:
        """Every model (by name), with its live version count, newest ready version, aliases."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT m.name, m.created_at,"
                " (SELECT count(*) FROM model_versions v"
                "   WHERE v.model = m.name AND v.state <> 'deleted') AS versions,"
                " (SELECT max(version) FROM model_versions v"
                "   WHERE v.model = m.name AND v.state = 'ready') AS latest_ready,"
                " (SELECT coalesce(jsonb_object_agg(a.alias, a.version), '{}')"
                "   FROM model_aliases a WHERE a.model = m.name) AS aliases"
                " FROM models m ORDER BY m.name"
            )
            return [msgspec.convert(row, ModelSummary) for row in await cur.fetchall()]

    async def get_model(self, model: str, *, include_deleted: bool = False) -> Model:
        """A model with its versions, aliases and traffic split; ``ModelNotFound`` if unknown."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("SELECT name, created_at FROM models WHERE name = %s", (model,))
            head = await cur.fetchone()
            if head is None:
                raise ModelNotFound(f"unknown model {model!r}")
            await cur.execute(
                f"SELECT {_VERSION_COLUMNS} FROM model_versions WHERE model = %s"
                " AND (%s OR state <> 'deleted') ORDER BY version",
                (model, include_deleted),
            )
            versions = [_version(row) for row in await cur.fetchall()]
            await cur.execute(
                "SELECT alias AS name, version, updated_at FROM model_aliases"
                " WHERE model = %s ORDER BY alias",
                (model,),
            )
            aliases = [msgspec.convert(row, Alias) for row in await cur.fetchall()]
            await cur.execute(
                "SELECT version, weight FROM model_traffic WHERE model = %s ORDER BY version",
                (model,),
            )
            traffic = [msgspec.convert(row, TrafficShare) for row in await cur.fetchall()]
        return Model(
            name=head["name"],
            created_at=head["created_at"],
            versions=versions,
            aliases=aliases,
            traffic=traffic,
        )

    async def get_version(
        self, model: str, version: int, *, include_deleted: bool = False
    ) -> ModelVersion:
        """One version; ``VersionNotFound`` if absent or deleted (unless ``include_deleted``)."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_VERSION_COLUMNS} FROM model_versions WHERE model = %s AND version = %s",
                (model, version),
            )
            row = await cur.fetchone()
        if row is None or (row["state"] == DELETED and not include_deleted):
            raise VersionNotFound(f"model {model!r} has no version {version}")
        return _version(row)

    async def resolve(self, model: str, ref: str | int | None = None) -> ModelVersion:
        """The version a request names: a number, an alias, or (``None``) the default one.

        The default is the ``production`` alias when set, else the newest ready version. A
        traffic split is not applied here: it is in ``get_model(...).traffic`` for the router.
        """
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            return await self.get_version(model, int(ref))
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            alias = PRODUCTION if ref is None else ref
            await cur.execute(
                f"SELECT {_VERSION_COLUMNS} FROM model_versions v JOIN model_aliases a"
                " USING (model, version) WHERE a.model = %s AND a.alias = %s",
                (model, alias),
            )
            row = await cur.fetchone()
            if row is None and ref is None:
                await cur.execute(
                    f"SELECT {_VERSION_COLUMNS} FROM model_versions WHERE model = %s"
                    " AND state = 'ready' ORDER BY version DESC LIMIT 1",
                    (model,),
                )
                row = await cur.fetchone()
        if row is None:
            if ref is None:
                raise VersionNotFound(f"model {model!r} has no ready version")
            raise AliasNotFound(f"model {model!r} has no alias {ref!r}")
        return _version(row)

    async def delete_version(
        self, model: str, version: int, *, force: bool = False
    ) -> ModelVersion:
        """Mark a version deleted (its number is never reused) and return it as it was.

        Refused with ``AliasInUse`` while aliases or the traffic split point at it, unless
        ``force``: then those aliases are removed, and so is the model's whole traffic split.
        The caller deletes the file when ``sha256_in_use`` says no other version needs it.
        """
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            row = await self._lock_version(cur, model, version, "UPDATE")
            await cur.execute(
                "SELECT alias FROM model_aliases WHERE model = %s AND version = %s ORDER BY alias",
                (model, version),
            )
            aliases = [r["alias"] for r in await cur.fetchall()]
            await cur.execute(
                "SELECT 1 FROM model_traffic WHERE model = %s AND version = %s", (model, version)
            )
            in_split = await cur.fetchone() is not None
            if (aliases or in_split) and not force:
                used_by = [f"alias {a!r}" for a in aliases] + ["the traffic split"] * in_split
                raise AliasInUse(
                    f"version {version} of {model!r} is used by {', '.join(used_by)};"
                    " move them first or force the deletion",
                    aliases=aliases,
                    in_traffic_split=in_split,
                )
            await cur.execute(
                "DELETE FROM model_aliases WHERE model = %s AND version = %s", (model, version)
            )
            if in_split:
                await cur.execute("DELETE FROM model_traffic WHERE model = %s", (model,))
            await cur.execute(
                "UPDATE model_versions SET state = 'deleted', loaded = false, deleted_at = now()"
                " WHERE model = %s AND version = %s",
                (model, version),
            )
            return row

    async def sha256_in_use(self, sha256: str) -> bool:
        """Whether any version not deleted (of any model) uses the file with this sha256."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT 1 FROM model_versions WHERE sha256 = %s AND state <> 'deleted' LIMIT 1",
                (sha256,),
            )
            return await cur.fetchone() is not None

    async def set_alias(self, model: str, alias: str, version: int) -> Alias:
        """Point ``alias`` at a ready ``version`` (creating or moving it)."""
        check_alias(alias)
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            row = await self._lock_version(cur, model, version, "SHARE")
            if row.state != READY:
                raise Conflict(f"version {version} of {model!r} is {row.state}, not ready")
            await cur.execute(
                "INSERT INTO model_aliases (model, alias, version) VALUES (%s, %s, %s)"
                " ON CONFLICT (model, alias) DO UPDATE"
                " SET version = excluded.version, updated_at = now()"
                " RETURNING alias AS name, version, updated_at",
                (model, alias, version),
            )
            return msgspec.convert(await cur.fetchone(), Alias)

    async def delete_alias(self, model: str, alias: str) -> None:
        """Remove an alias; ``AliasNotFound`` if the model has none of that name."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM model_aliases WHERE model = %s AND alias = %s", (model, alias)
            )
            if cur.rowcount == 0:
                raise AliasNotFound(f"model {model!r} has no alias {alias!r}")

    async def set_traffic(self, model: str, weights: dict[int, int]) -> list[TrafficShare]:
        """Replace the model's traffic split (``{version: weight}``, two or more ready
        versions, weights >= 1); an empty mapping removes the split."""
        if len(weights) == 1 or any(not 1 <= w <= 1_000_000 for w in weights.values()):
            raise BadRequest("a traffic split needs two or more versions with weights >= 1")
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            for version in sorted(weights):
                row = await self._lock_version(cur, model, version, "SHARE")
                if row.state != READY:
                    raise Conflict(f"version {version} of {model!r} is {row.state}, not ready")
            await cur.execute("DELETE FROM model_traffic WHERE model = %s", (model,))
            if weights:
                await cur.executemany(
                    "INSERT INTO model_traffic (model, version, weight) VALUES (%s, %s, %s)",
                    [(model, v, w) for v, w in sorted(weights.items())],
                )
        return [TrafficShare(version=v, weight=w) for v, w in sorted(weights.items())]

    async def update_config(self, model: str, version: int, config: ModelConfig) -> ModelVersion:
        """Replace a version's serving config after ``check_config``; ``BadRequest`` if invalid."""
        current = await self.get_version(model, version)
        check_config(config, current.inputs, current.outputs)
        return await self._update(model, version, "config = %s", (_json(config),))

    async def set_loaded(self, model: str, version: int, loaded: bool) -> ModelVersion:
        """Set the desired residency (``load`` / ``unload``) of a version."""
        return await self._update(model, version, "loaded = %s", (loaded,))

    async def set_capacity(self, model: str, version: int, capacity: Any) -> ModelVersion:
        """Store a version's capacity card (a msgspec struct or JSON-able value; None clears)."""
        value = None if capacity is None else _json(capacity)
        return await self._update(model, version, "capacity = %s", (value,))

    async def set_state(
        self, model: str, version: int, state: str, reason: str | None = None
    ) -> ModelVersion:
        """Mark a version ``pending``, ``ready`` or ``failed`` (with ``reason``)."""
        if state not in (PENDING, READY, FAILED):
            raise BadRequest(f"state must be pending, ready or failed, not {state!r}")
        return await self._update(model, version, "state = %s, reason = %s", (state, reason))

    async def _update(
        self, model: str, version: int, assignments: str, values: tuple
    ) -> ModelVersion:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"UPDATE model_versions SET {assignments}"
                " WHERE model = %s AND version = %s AND state <> 'deleted'"
                f" RETURNING {_VERSION_COLUMNS}",
                (*values, model, version),
            )
            row = await cur.fetchone()
        if row is None:
            raise VersionNotFound(f"model {model!r} has no version {version}")
        return _version(row)

    @staticmethod
    async def _lock_version(cur, model: str, version: int, mode: str) -> ModelVersion:
        await cur.execute(
            f"SELECT {_VERSION_COLUMNS} FROM model_versions"
            f" WHERE model = %s AND version = %s FOR {mode}",
            (model, version),
        )
        row = await cur.fetchone()
        if row is None or row["state"] == DELETED:
            raise VersionNotFound(f"model {model!r} has no version {version}")
        return _version(row)
