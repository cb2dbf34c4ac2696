"""Write access to Redis cannot make a worker run code: an RQ job names the function the worker
imports and calls, so the job lane runs only the deliveries ``JobTransport`` makes."""

from __future__ import annotations

import uuid

import pytest
import redis
from rq import Callback, Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from inferbox.jobs.lane import _ThreadWorker
from inferbox.jobs.transport import FUNCTION
from tests.support.redis import REDIS_URL

pytestmark = pytest.mark.integration

CALLED: list[tuple] = []


def record(*args, **kwargs):
    """What a planted job or callback would make the worker call."""
    CALLED.append(args)


@pytest.fixture
def queue():
    client = redis.Redis.from_url(REDIS_URL)
    name = f"ibtest-{uuid.uuid4().hex[:8]}.jobs"
    yield Queue(name, connection=client, serializer=JSONSerializer)
    for key in client.scan_iter(f"*{name}*"):
        client.delete(key)
    client.close()


def _work(queue: Queue) -> None:
    worker = _ThreadWorker(
        [queue],
        connection=queue.connection,
        serializer=JSONSerializer,
        name=f"test-{uuid.uuid4().hex[:6]}",
    )
    worker.work(burst=True, logging_level="WARNING")


@pytest.mark.parametrize(
    "planted",
    [
        {"f": f"{__name__}.record", "args": ("planted",)},
        {"f": "builtins.print", "args": ("planted",)},
        {"f": FUNCTION, "args": ("not-a-job", "extra")},
        {"f": FUNCTION, "args": ("x",), "on_failure": Callback(f"{__name__}.record")},
        {"f": FUNCTION, "args": ("x",), "on_success": Callback(f"{__name__}.record")},
    ],
    ids=["other function", "builtin", "other arguments", "failure callback", "success callback"],
)
def test_a_planted_job_fails_unrun(queue, planted):
    CALLED.clear()
    options = {k: v for k, v in planted.items() if k.startswith("on_")}
    job = queue.enqueue_call(planted["f"], args=planted["args"], **options)
    _work(queue)
    assert CALLED == []
    job = Job.fetch(job.id, connection=queue.connection, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FAILED
    assert "refused" in (job.latest_result().exc_string or "")
