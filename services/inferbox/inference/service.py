"""The one inference path: a decoded request, checked against its model, answered from the
response cache or queued on the model's lane, and its outputs.

HTTP ``/infer`` (``inferbox.api.infer``) and gRPC ``ModelInfer`` (``inferbox.grpc``) call
``InferenceService.infer``; the job runner calls ``InferenceService.compute`` for each chunk. None
of it knows which front end a call came through: a caller that can leave early passes a
``departure`` awaitable instead of a connection.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from inferbox.cache.client import HIT, MISS, ResponseCache
from inferbox.inference.directory import ModelDirectory
from inferbox.inference.validation import check_request
from inferbox.keys import Keys
from inferbox.lanes.lane import Lane
from inferbox.lanes.wire import CallHeader, TensorMeta
from inferbox.models.spec import ModelSpec
from inferbox.protocol.codec import InferRequest, OutputTensor
from inferbox.security.keystore import KeyRecord

HIGH_PRIORITY_MAX = 1
"""Triton's priority: 0 means "the default", 1 is the highest; up to this one is the high lane."""

Departure = Callable[[], Awaitable[object]]
"""Awaited (once the call has waited a while) for the caller leaving; its return means gone."""


class Answer(NamedTuple):
    """The outputs of a call, and what the response cache did for it: ``hit``, ``miss``, or
    None when the model does not use the cache (HTTP's ``X-Inferbox-Cache`` header)."""

    outputs: list[OutputTensor]
    cache: str | None = None


def output_tensors(metas: list[TensorMeta], raws) -> list[OutputTensor]:
    """A reply's outputs as ``OutputTensor``s, in the reply's order."""
    return [
        OutputTensor(meta.name, meta.datatype, tuple(meta.shape), raw)
        for meta, raw in zip(metas, raws, strict=True)
    ]


class InferenceService:
    """Runs requests on the models' lanes, through the response cache where a model uses it.

    ``default_timeout_ms`` applies to calls without their own timeout and whose model sets
    none; no call waits longer than ``max_timeout_s``.
    """

    def __init__(
        self,
        lane: Lane,
        directory: ModelDirectory,
        keys: Keys,
        cache: ResponseCache | None = None,
        *,
        default_timeout_ms: float,
        max_timeout_s: float,
    ) -> None:
        self.lane = lane
        self.directory = directory
        self.keys = keys
        self.cache = cache
        self.default_timeout_ms = default_timeout_ms
        self.max_timeout_s = max_timeout_s

    @classmethod
    def from_settings(
        cls,
        settings,
        lane: Lane,
        directory: ModelDirectory,
        keys: Keys,
        cache: ResponseCache | None,
    ) -> InferenceService:
        """The service with the timeouts a ``Settings`` object sets."""
        return cls(
            lane,
            directory,
            keys,
            cache,
            default_timeout_ms=settings.default_timeout_ms,
            max_timeout_s=settings.max_request_timeout_s,
        )

    async def infer(
        self,
        spec: ModelSpec,
        decoded: InferRequest,
        request_id: str,
        key: KeyRecord | None = None,
        departure: Departure | None = None,
        checked: tuple | None = None,
    ) -> Answer:
        """Check a decoded request against its model, answer it from the response cache or
        queue it on the model's lane and wait for its outputs.

        A request without its own ``priority`` (or with 0, Triton's "default") takes its
        key's, else the model's ``default_priority_level``; none is more urgent than its key's.
        ``checked`` is ``check_request``'s answer when the caller already has it (a large body
        checked in a thread). Raises ``ClientGone`` when ``departure`` returns first.
        """
        metas, raws, outputs = checked or check_request(decoded, spec)
        if decoded.timeout_us:
            timeout_s = decoded.timeout_us / 1e6
        else:
            timeout_s = (spec.config.timeout_ms or self.default_timeout_ms) / 1000
        floor = key.priority if key is not None else 0
        priority = decoded.priority or floor or spec.config.default_priority_level
        if floor and priority < floor:  # a key's priority is the most urgent its calls may claim
            priority = floor
        out_metas, out_raws, cached = await self.compute(
            spec,
            metas,
            raws,
            outputs,
            request_id=request_id,
            lane="hi" if priority <= HIGH_PRIORITY_MAX else "lo",
            timeout_s=min(timeout_s, self.max_timeout_s),
            namespace=key.id if key is not None else None,
            departure=departure,
        )
        return Answer(output_tensors(out_metas, out_raws), cached)

    async def compute(
        self,
        spec: ModelSpec,
        metas: list[TensorMeta],
        raws: list,
        outputs: list | None,
        *,
        request_id: str,
        lane: str,
        timeout_s: float,
        namespace: str | None = None,
        departure: Departure | None = None,
    ) -> tuple[list[TensorMeta], list, str | None]:
        """Checked tensors on ``lane`` (``hi`` or ``lo``) of the model's version, within
        ``timeout_s``: the outputs' metadata and bytes, and ``hit``/``miss``/None for the cache.

        A model with ``response_cache`` is looked up first (bounded by the cache's timeout;
        ``namespace``: the key, where entries are per key); only a successful answer from the
        queue is stored.
        """
        cache = self.cache if spec.config.response_cache else None
        probe = None
        if cache is not None:
            probe = await cache.lookup(spec, metas, raws, outputs, namespace)
            if probe.outputs is not None:
                return *probe.outputs, HIT
        call = CallHeader(
            channel="",
            token="",
            deadline=time.time() + timeout_s,
            inputs=metas,
            outputs=outputs,
            request_id=request_id,
        )
        reply, out_raws = await self.lane.call(
            self.keys.stream(spec.name, spec.version, lane),
            call,
            raws,
            max_queue=spec.config.max_queue_size,
            timeout_s=timeout_s,
            receive=departure,
        )
        if probe is None:
            return reply.outputs, out_raws, None
        cache.store(probe, reply.outputs, out_raws, reply.spec_tag)
        return reply.outputs, out_raws, MISS
