"""An S3 server of the tests' own: moto's, as its own process on a free port."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from inferbox.registry.objects import ObjectStore
from tests.support.processes import Freezable
from tests.support.waiting import wait_for

MOTO = str(Path(sys.executable).with_name("moto_server"))


class S3Server(Freezable):
    """moto's S3 server as its own process, so it can be made unreachable and brought back.

    ``freeze`` stops the process (SIGSTOP): connections are accepted by the kernel but never
    answered, the harshest kind of unreachable (clients must time out on their own); ``thaw``
    continues it with every object intact.
    """

    @property
    def endpoint(self) -> str:
        """``host:port`` of the S3 API."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server and wait until it answers."""
        log = (self.folder / "s3.log").open("ab")
        self.proc = subprocess.Popen(
            [MOTO, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

        def answers():
            try:
                return httpx.get(f"http://{self.endpoint}/", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answers, 30, "the S3 server to answer", interval=0.1)


def new_bucket(endpoint: str) -> ObjectStore:
    """An ``ObjectStore`` on a bucket of its own (created) at the tests' S3 ``endpoint``."""
    store = ObjectStore(
        endpoint,
        "test-access",
        "test-secret",
        f"ibtest-{uuid.uuid4().hex[:8]}",
        secure=False,
        region="us-east-1",
    )
    store.ensure_bucket()
    return store
