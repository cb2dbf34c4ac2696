"""RQ as the job lane's transport: it carries a job's id to a worker, nothing more.

The job's truth is its PostgreSQL row (``inferbox.jobs.store``). An RQ job is one delivery of
that id; its id is ``<job id>_<random>`` so that a re-delivery (after Redis lost the queue, or a
worker was lost) never collides with the RQ bookkeeping of an earlier one. Payloads use RQ's
JSON serializer: never pickle.
"""

from __future__ import annotations

import uuid

import redis
from rq import Queue
from rq.serializers import JSONSerializer

from inferbox.keys import Keys

FUNCTION = "inferbox.jobs.execution.run"
"""What the worker calls with the job id (resolved by RQ from this dotted path)."""

# RQ's own bookkeeping for a finished delivery is useless to us: the ledger has the outcome.
_KEEP_FAILED_S = 24 * 3600


def queue_name(keys: Keys) -> str:
    """The RQ queue of this appliance (under its key prefix, so test runs never share one)."""
    return f"{keys.prefix}.jobs"


class JobTransport:
    """Puts job ids on the RQ queue and tells whether a delivery is still pending."""

    def __init__(self, client: redis.Redis, keys: Keys):
        self.client = client
        self.queue = Queue(queue_name(keys), connection=client, serializer=JSONSerializer)

    def enqueue(self, job_id: uuid.UUID) -> str:
        """Deliver ``job_id`` to a worker; returns the RQ job id of this delivery."""
        transport_id = f"{job_id}_{uuid.uuid4().hex[:8]}"
        self.queue.enqueue_call(
            FUNCTION,
            args=(str(job_id),),
            job_id=transport_id,
            timeout=-1,  # jobs are bounded by their chunks' deadlines, not by RQ
            result_ttl=0,
            failure_ttl=_KEEP_FAILED_S,
            description=f"inferbox job {job_id}",
        )
        return transport_id

    def pending(self, transport_id: str | None) -> bool:
        """Whether that delivery still waits on the queue (False: lost, or taken by a worker
        that has not claimed the job, i.e. it died in between).

        The queue's list is what counts: a worker that pops an id and dies before RQ marks
        it started leaves the RQ job ``queued`` with nobody to run it.
        """
        if transport_id is None:
            return False
        return self.client.lpos(self.queue.key, transport_id) is not None

    def withdraw(self, transport_id: str | None) -> None:
        """Take a delivery off the queue (a cancelled job); harmless if already taken."""
        if transport_id is not None:
            self.queue.remove(transport_id)
