"""``LocalHost``: versions served by ONNX Runtime sessions in this process, within its memory
budget (``residency``), each with its ``ModelServer`` batch loops."""

from __future__ import annotations

import msgspec
import structlog

from inferbox.config import Settings
from inferbox.models.catalog import FAILED, LOADING, READY
from inferbox.models.spec import ModelSpec
from inferbox.observability import worker_metrics as metrics
from inferbox.redaction import redact
from inferbox.worker import memory
from inferbox.worker.capacity import sweep
from inferbox.worker.follower import Key, VersionBook
from inferbox.worker.model_cache import Fetcher, ModelCache, UntrustedModelFile
from inferbox.worker.residency import NoRoom, Residency
from inferbox.worker.runtime import LoadedModel, WarmupTooLarge, load_model, probe_device
from inferbox.worker.serving import ModelServer

log = structlog.get_logger(__name__)


class LocalHost:
    """Sessions in this process. Versions load at start as far as the budget allows; a version
    a call waits for is loaded on demand, evicting the least-recently-used idle, unpinned
    versions to make room."""

    def __init__(self, settings: Settings, book: VersionBook, objects: Fetcher | None = None):
        self.settings = settings
        self.book = book
        self.servers: dict[Key, ModelServer] = {}
        self.device = probe_device(settings.worker_providers, settings.worker_require_cuda)
        self.cache = ModelCache(
            settings.worker_cache_dir, objects, local_paths=settings.worker_local_model_paths
        )
        self.residency = Residency(settings.worker_memory_budget_bytes)
        self.baseline = memory.usage(self.device)

    def prepare(self) -> None:
        """Nothing to do before a sync."""

    def settle(self) -> None:
        """Nothing to do after a sync."""

    def place(self, key: Key, spec: ModelSpec) -> None:
        """Load the version if it fits; for a wanted one, evict idle versions to make room."""
        book = self.book
        if key in self.servers:
            return
        on_demand = key in book.wanted
        # The size measured at an earlier load, else the file size as a first guess.
        estimate = book.measured.get(key, spec.size)
        try:
            victims = self.residency.plan(estimate, busy=book.busy)
        except NoRoom as exc:
            if on_demand:
                log.warning(
                    "no room to load a wanted model", model=key[0], version=key[1], error=str(exc)
                )
            return
        if victims and not on_demand:
            return  # at start, load what fits; evict only for a call that waits
        for victim in victims:
            metrics.EVICTIONS.inc()
            self.release(victim, reason="evicted to make room")
            if book.busy(victim):
                book.wanted.add(victim)  # a call slipped in meanwhile: bring it back
        self._load(key, spec)
        book.wanted.discard(key)
        self._enforce_budget(keep=key)

    def release(self, key: Key, reason: str = "unloaded") -> None:
        """Stop the version's batch loops and close its session."""
        server = self.servers.pop(key, None)
        if server:
            server.stop()
        self.residency.remove(key)
        metrics.RESIDENT_BYTES.set(self.residency.used)
        metrics.MODELS_RESIDENT.set(len(self.servers))
        self.book.forget(key, reason)

    def outgrown(self) -> bool:
        """The process holds much more memory than its models: restart to return it."""
        if self.device == "cuda":
            # A CUDA session's arena grows to the activations of the largest batch it ran
            # (10.8 GB beside 1.5 GB of ResNet-50 and BERT weights at batch 128 on an H200):
            # that is working memory, not the CPU allocator's creep this check is for.
            return False
        used = memory.usage(self.device)
        if not memory.should_recycle(
            used, self.baseline, self.residency.used, self.settings.worker_recycle_factor
        ):
            return False
        log.warning(
            "memory outgrew the resident models",
            used_bytes=used,
            baseline_bytes=self.baseline,
            models_bytes=self.residency.used,
        )
        return True

    def close(self) -> None:
        """Stop every version; every server stops reading at once, so leaving takes one read
        timeout, not one each."""
        for server in self.servers.values():
            server.stopping.set()
        for key in list(self.servers):
            self.release(key)

    def _enforce_budget(self, keep: Key) -> None:
        """After a load measured larger than its estimate, evict idle versions until it fits."""
        if not self.residency.budget or self.residency.used <= self.residency.budget:
            return
        for victim in self.residency.resident():
            if self.residency.used <= self.residency.budget:
                break
            pinned = self.book.specs[victim].config.pinned
            if victim == keep or self.book.busy(victim) or pinned:
                continue
            metrics.EVICTIONS.inc()
            self.release(victim, reason="evicted to stay within the memory budget")

    def _load(self, key: Key, spec: ModelSpec) -> None:
        book = self.book
        book.specs[key] = spec
        book.set_state(key, LOADING)
        before = memory.usage(self.device)
        try:
            model = self._create_session(spec)
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else repr(exc)
            log.error("model failed to load", model=spec.name, version=spec.version, error=reason)
            book.failed[key] = spec
            # Published to callers (readiness, the repository index): without the cache's
            # paths and the like, which the log above keeps.
            book.set_state(key, FAILED, redact(reason))
            return
        book.failed.pop(key, None)
        size = max(memory.usage(self.device) - before, spec.size)
        book.measured[key] = size
        self.residency.add(key, size, pinned=spec.config.pinned)
        metrics.LOAD_SECONDS.labels(spec.name, str(spec.version)).observe(model.load_seconds)
        server = ModelServer(
            model,
            book.client,
            book.keys,
            book.worker_id,
            block_ms=self.settings.worker_block_ms,
            claim_idle_ms=self.settings.worker_claim_idle_ms,
            device=self.device,
            on_batch=lambda: self.residency.touch(key),
            tensor_dir=self.settings.tensor_dir or None,
        )
        server.start()
        self.servers[key] = server
        metrics.MODELS_RESIDENT.set(len(self.servers))
        metrics.RESIDENT_BYTES.set(self.residency.used)
        book.set_state(key, READY, providers=model.providers)
        log.info("model resident", model=spec.name, version=spec.version, size_bytes=size)
        self._measure_capacity(key, model, size)

    def _create_session(self, spec: ModelSpec) -> LoadedModel:
        """Load from the local copy; a copy that fails to load is fetched again, once."""
        path = self.cache.path_for(spec)
        bound = self.settings.worker_warmup_max_bytes
        try:
            return load_model(spec, path=path, warmup_max_bytes=bound)
        except (WarmupTooLarge, UntrustedModelFile):
            raise  # fetching the file again changes nothing
        except Exception:
            if spec.object_key is None:
                raise
            log.warning("cached model file failed to load; fetching it again", model=spec.name)
            self.cache.discard(spec)
            return load_model(spec, path=self.cache.path_for(spec), warmup_max_bytes=bound)

    def _measure_capacity(self, key: Key, model: LoadedModel, size: int) -> None:
        seconds = self.settings.worker_capacity_sweep_s
        field = f"{key[0]}/{key[1]}"
        client, keys = self.book.client, self.book.keys
        if seconds <= 0 or client.hexists(keys.capacity, field):
            return
        try:
            card = sweep(
                model.run,
                model.spec.inputs,
                model.spec.config.max_batch_size,
                device=self.device,
                memory_bytes=size,
                seconds_per_size=seconds,
                max_input_bytes=self.settings.worker_warmup_max_bytes,
            )
        except Exception as exc:
            log.warning("capacity sweep failed", model=key[0], version=key[1], error=str(exc))
            return
        client.hset(keys.capacity, field, msgspec.json.encode(card))
