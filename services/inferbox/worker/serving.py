"""The batch loop of one model version: read queued calls, run them in batches, reply."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import deque

import redis
import structlog
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from inferbox.cache.key import version_tag
from inferbox.keys import Keys
from inferbox.lanes.consumer import Call, LaneConsumer
from inferbox.lanes.wire import ReplyHeader, encode_reply
from inferbox.observability import worker_metrics as metrics
from inferbox.redaction import redact
from inferbox.worker.batcher import Batch, assemble, split
from inferbox.worker.runtime import LoadedModel
from inferbox.worker.statistics import VersionStatistics

log = structlog.get_logger(__name__)


def _halving_budget(calls: int) -> int:
    """How often a failed batch of ``calls`` may be halved: enough to isolate two bad calls."""
    return 2 * max(1, math.ceil(math.log2(calls))) + 1


class ModelServer:
    """Serves one loaded model version with ``instance_count`` batch-loop threads."""

    def __init__(
        self,
        model: LoadedModel,
        client: redis.Redis,
        keys: Keys,
        consumer_name: str,
        *,
        block_ms: int,
        claim_idle_ms: int,
        device: str = "cpu",
        on_batch=None,
        tensor_dir: str | None = None,
    ):
        self.model = model
        self.spec = model.spec
        self.client = client
        self.keys = keys
        self.consumer_name = consumer_name
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.device = device
        self.on_batch = on_batch or (lambda: None)
        self.tensor_dir = tensor_dir
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.labels = (self.spec.name, str(self.spec.version))
        self.spec_tag = version_tag(self.spec)
        self.datatypes = {t.name: t.datatype for t in self.spec.outputs}
        metrics.init_model(*self.labels)
        self.statistics = VersionStatistics()
        """Triton's inference statistics of this version in this worker."""

    def start(self) -> None:
        """Create the consumer group and start the loop threads."""
        LaneConsumer(
            self.client, self.keys, self.spec.name, self.spec.version, self.consumer_name
        ).ensure_groups()
        for index in range(self.spec.config.instances(self.device)):
            thread = threading.Thread(
                target=self._loop,
                name=f"serve-{self.spec.name}-{self.spec.version}-{index}",
                daemon=True,
            )
            thread.start()
            self.threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch in hand, then stop reading."""
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout)

    # -- the loop ---------------------------------------------------------------------------

    def _loop(self) -> None:
        consumer = LaneConsumer(
            self.client,
            self.keys,
            self.spec.name,
            self.spec.version,
            self.consumer_name,
            self.tensor_dir,
        )
        backlog: deque[Call] = deque()
        next_claim = 0.0
        while not self.stopping.is_set():
            try:
                calls = self._gather(consumer, backlog)
                if time.monotonic() >= next_claim:
                    calls.extend(consumer.claim(self.claim_idle_ms, 64))
                    next_claim = time.monotonic() + self.claim_idle_ms / 2000
                if calls:
                    self._process(consumer, calls)
            except redis.ConnectionError as exc:
                log.warning("redis unreachable; retrying", error=str(exc), model=self.spec.name)
                time.sleep(0.5)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    log.warning("redis refused a read; retrying", error=str(exc))
                    time.sleep(0.5)
                    continue
                # Redis came back without its data: the streams and the group are gone.
                log.warning("consumer group missing; creating it again", model=self.spec.name)
                with contextlib.suppress(redis.RedisError):
                    consumer.ensure_groups()
                time.sleep(0.1)
            except Exception:
                log.exception("batch loop error", model=self.spec.name)
                time.sleep(0.1)
        # Calls still in the backlog stay pending in Redis: another worker claims them.
        with contextlib.suppress(redis.RedisError):
            consumer.flush()
        consumer.close()

    def _gather(self, consumer: LaneConsumer, backlog: deque[Call]) -> list[Call]:
        """High-priority calls first, then the low lane's backlog, waiting per the config."""
        config = self.spec.config
        limit = max(1, config.max_batch_size)
        high, low = consumer.read(limit, None if backlog else self.block_ms)
        backlog.extend(low)
        calls = high
        while len(calls) < limit and backlog:
            calls.append(backlog.popleft())
        delay = config.max_queue_delay_microseconds / 1e6
        if not calls or delay <= 0:
            return calls
        # Dynamic batching: wait (from the first call's arrival here) for a fuller batch.
        deadline = time.monotonic() + delay
        preferred = set(config.preferred_batch_size)
        while len(calls) < limit and len(calls) not in preferred:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.stopping.is_set():
                break
            high, low = consumer.read(limit - len(calls), max(1, math.ceil(remaining * 1000)))
            backlog.extend(low)
            calls.extend(high)
            while len(calls) < limit and backlog:
                calls.append(backlog.popleft())
        return calls

    def _process(self, consumer: LaneConsumer, calls: list[Call]) -> None:
        now = time.time()
        live, expired = [], []
        for call in calls:
            (live if call.header.deadline > now else expired).append(call)
        if expired:
            # Nobody waits for these any more (the API answered 504): drop before running.
            consumer.done([(c.stream, c.entry_id) for c in expired])
            metrics.CALLS.labels(*self.labels, "expired").inc(len(expired))
            for call in expired:
                log.warning(
                    "call expired before running",
                    request_id=call.header.request_id,
                    model=self.spec.name,
                    version=self.spec.version,
                )
        for call in live:
            lane = call.stream.rsplit(":", 1)[-1]
            metrics.QUEUE_WAIT_SECONDS.labels(*self.labels, lane).observe(
                max(0.0, now - call.enqueued)
            )
        try:
            batches = assemble(live, self.spec)
        except Exception:
            # One malformed call must not sink the others: run them one by one.
            batches = []
            for call in live:
                try:
                    batches.extend(assemble([call], self.spec))
                except Exception as exc:
                    self._reply_error(consumer, [call], "invalid input", 400, exc)
        for batch in batches:
            self._run(consumer, batch)

    # Every batch of inference calls runs this: written flat on purpose, as helpers would add calls.
    def _run(self, consumer: LaneConsumer, batch: Batch, halvings: list[int] | None = None) -> None:  # noqa: C901
        """Run one batch and answer its calls. A failed batch is halved to find the calls at
        fault (about 2·log2(n) runs per bad call), at most ``halvings[0]`` times in all for the
        batch it came from; past that budget its calls get 503 (retry) and not a re-run each."""
        # Answers of an earlier batch go out before this one computes.
        consumer.flush()
        wanted = self._outputs_for(batch.calls)
        began = time.time()
        started = time.perf_counter()
        try:
            names, results = self.model.run(batch.feeds, wanted)
            computed = time.perf_counter()
            replies = split(batch, names, results, self.datatypes)
        except Exception as exc:
            if len(batch.calls) > 1:
                if _out_of_memory(exc):
                    # Device memory ran out: halve the batch and try again before failing.
                    metrics.OOM_SPLITS.labels(*self.labels).inc()
                    half = len(batch.calls) // 2
                    for part in (batch.calls[:half], batch.calls[half:]):
                        for smaller in assemble(part, self.spec):
                            self._run(consumer, smaller, halvings)
                    return
                # Find the calls at fault instead of failing every request of the batch: by
                # halving, within a budget, so a trickle of poison calls cannot turn every
                # batch into one run per call.
                if halvings is None:
                    halvings = [_halving_budget(len(batch.calls))]
                if halvings[0] > 0:
                    halvings[0] -= 1
                    metrics.BATCH_RETRIES.labels(*self.labels).inc()
                    half = len(batch.calls) // 2
                    for part in (batch.calls[:half], batch.calls[half:]):
                        for smaller in assemble(part, self.spec):
                            self._run(consumer, smaller, halvings)
                    return
                self._reply_error(
                    consumer,
                    batch.calls,
                    "inference failed for a call batched with this one; retry",
                    503,
                    exc,
                    shown=False,  # another call's input failed: its text is not this caller's
                )
                return
            status = 400 if isinstance(exc, InvalidArgument) else 500
            self._reply_error(consumer, batch.calls, "inference failed", status, exc)
            return
        elapsed = time.perf_counter() - started
        self.on_batch()
        metrics.COMPUTE_SECONDS.labels(*self.labels).observe(elapsed)
        metrics.BATCH_SIZE.labels(*self.labels).observe(max(1, sum(batch.rows)))
        metrics.CALLS.labels(*self.labels, "ok").inc(len(batch.calls))
        finished = time.time()
        for call in batch.calls:
            if call.header.deadline < finished:
                # Its caller already had a 504: the compute was wasted (the model is too slow).
                log.warning(
                    "call answered after its deadline",
                    request_id=call.header.request_id,
                    model=self.spec.name,
                    version=self.spec.version,
                    duration_ms=round((finished - call.enqueued) * 1000, 3),
                    compute_ms=round(elapsed * 1000, 3),
                )
        messages = []
        for call, (metas, raws) in zip(batch.calls, replies, strict=True):
            header = ReplyHeader(
                token=call.header.token,
                outputs=metas,
                sizes=[len(r) for r in raws],
                spec_tag=self.spec_tag,
            )
            messages.append((call.header.channel, encode_reply(header, raws)))
        consumer.finish(messages, [(c.stream, c.entry_id) for c in batch.calls])
        self.statistics.batch(
            max(1, sum(batch.rows)),
            [int(max(0.0, began - c.enqueued) * 1e9) for c in batch.calls],
            [int(max(0.0, finished - c.enqueued) * 1e9) for c in batch.calls],
            int((computed - started) * 1e9),
            int((time.perf_counter() - computed) * 1e9),
        )

    def _outputs_for(self, calls: list[Call]) -> list[str] | None:
        wanted: set[str] = set()
        for call in calls:
            if call.header.outputs is None:
                return None
            wanted.update(call.header.outputs)
        return [name for name in self.model.output_names if name in wanted]

    def _reply_error(
        self,
        consumer: LaneConsumer,
        calls: list[Call],
        message: str,
        status: int,
        cause: Exception | None = None,
        *,
        shown: bool = True,
    ):
        """Answer ``calls`` with ``status`` and ``message``; with a ``cause``, the callers get
        ``"{message}: {its text}"`` without what describes the server (``redact``) when
        ``shown``, and the log has the whole text for the operator."""
        metrics.CALLS.labels(*self.labels, "error").inc(len(calls))
        error_class = "invalid_input" if status == 400 else "inference_failed"
        metrics.ERRORS.labels(*self.labels, error_class).inc(len(calls))
        logged = message
        if cause is not None:
            logged = f"{message}: {cause}"
            if shown:
                message = f"{message}: {redact(str(cause))}"
        for call in calls:
            log.warning(
                "call failed",
                request_id=call.header.request_id,
                model=self.spec.name,
                version=self.spec.version,
                status=status,
                error=logged,
            )
        consumer.finish(
            [
                (
                    c.header.channel,
                    encode_reply(ReplyHeader(token=c.header.token, error=message, status=status)),
                )
                for c in calls
            ],
            [(c.stream, c.entry_id) for c in calls],
        )
        now = time.time()
        self.statistics.failed([int(max(0.0, now - c.enqueued) * 1e9) for c in calls])


def _out_of_memory(exc: Exception) -> bool:
    """ONNX Runtime's allocation failures (CUDA or CPU arena) as they read in its messages."""
    text = str(exc).lower()
    return "out of memory" in text or "failed to allocate" in text
