"""Redis for the tests: the machine's (a key prefix per run) and ``redis-server`` processes of
their own on free ports, to restart, freeze or kill at will."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import redis

from tests.support.processes import Freezable
from tests.support.waiting import wait_for

REDIS_URL = os.environ.get("INFERBOX_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
"""The machine's Redis, shared by every run (each under its own key prefix)."""


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    """Remove every key of one test run."""
    keys = list(client.scan_iter(f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


class RedisProcess(Freezable):
    """A ``redis-server`` of the tests' own on a free port, with its data folder.

    ``kill`` (SIGKILL) and ``start`` again on the same port, ``freeze`` (SIGSTOP: connections
    are accepted, never answered) and ``thaw``. Subclasses give the server's options.
    """

    log_name = "redis.log"
    """File in ``folder`` the server writes its output to."""
    what = "redis-server"
    """What a timeout waiting for it says."""

    @property
    def url(self) -> str:
        """``redis://`` URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A new client of this server."""
        return redis.Redis(port=self.port, socket_timeout=5)

    def options(self) -> list[str]:
        """Persistence and memory options of this kind of server."""
        raise NotImplementedError

    def start(self) -> None:
        """Start (or restart) on the same port and folder; returns once it answers PING."""
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        with (self.folder / self.log_name).open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *(binary, "--bind", "127.0.0.1", "--port", str(self.port)),
                    *("--dir", str(self.folder), *self.options()),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def answers():
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited; see {self.folder}/{self.log_name}")
            try:
                with self.client() as client:
                    return client.ping()
            except redis.RedisError:
                return False

        wait_for(answers, 20, f"{self.what} to answer", interval=0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown save, only what is on disk survives."""
        if self.proc is not None and self.proc.poll() is None:
            if self.frozen:
                self.thaw()
            self.proc.kill()
            self.proc.wait()


class RedisServer(RedisProcess):
    """A queue Redis as the appliance runs one: AOF on, fsync on every write."""

    def options(self) -> list[str]:
        # Every write reaches the AOF before Redis answers: a restart loses nothing.
        return ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]

    def wipe(self) -> None:
        """Remove every data file (call while stopped): the next start is empty."""
        for path in self.folder.iterdir():
            if path.name != self.log_name:
                shutil.rmtree(path) if path.is_dir() else path.unlink()


class CacheRedis(RedisProcess):
    """A cache Redis as the appliance runs one: its own memory budget and an evicting policy,
    no persistence (a restart is empty): the faults the response cache must survive."""

    log_name = "cache-redis.log"
    what = "the cache redis-server"

    def __init__(self, folder: Path, maxmemory: str = "64mb", policy: str = "allkeys-lru"):
        super().__init__(folder)
        self.maxmemory = maxmemory
        self.policy = policy

    def options(self) -> list[str]:
        return [
            *("--save", "", "--appendonly", "no"),
            *("--maxmemory", self.maxmemory, "--maxmemory-policy", self.policy),
        ]
