"""The ``/v1`` control plane's request and response bodies, as msgspec structs: Litestar
decodes and validates the requests, encodes the answers and documents both in the OpenAPI
description (``/docs/openapi.json``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from inferbox.models.spec import ModelConfig, TensorSpec
from inferbox.registry.store import ModelVersion


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
    workers: dict[str, dict[str, Any]]
    """Each worker's report for this version (``state``, ...), by worker id."""

    @classmethod
    def of(
        cls, version: ModelVersion, workers: dict[int, dict], capacity: dict | None
    ) -> VersionView:
        """The view of ``version`` with the worker reports of its model (by version)."""
        fields = msgspec.structs.asdict(version)
        fields["name"] = fields.pop("model")
        fields.update(workers=workers.get(version.version, {}), capacity=capacity)
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
