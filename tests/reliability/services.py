"""Dependencies the fault tests own: Redis, PostgreSQL and an S3 server on spare ports.

The machine's shared Redis (6379) and PostgreSQL (5432) are never touched here: each server
below is a process started from its binary into a temporary folder, stopped, restarted or
frozen by its own pid, and removed at the end.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from tests.conftest import free_port, stop_process, wait_for

MOTO = str(Path(sys.executable).with_name("moto_server"))


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("PostgreSQL server binaries are not installed (apt-get install postgresql)")
    return Path(found[-1]).parent


class RedisServer:
    """``redis-server`` on a free port with its data folder, AOF on (fsync every write)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """``redis://`` URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A new client of this server."""
        return redis.Redis(port=self.port, socket_timeout=5)

    def start(self) -> None:
        """Start (or restart) on the same port and folder; returns once it answers PING."""
        log = (self.folder / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [
                shutil.which("redis-server") or "/usr/bin/redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.folder),
                "--appendonly",
                "yes",
                # Every write reaches the AOF before Redis answers: a restart loses nothing.
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

        def answers():
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited; see {self.folder}/redis.log")
            try:
                return self.client().ping()
            except redis.RedisError:
                return False

        wait_for(answers, 20, "redis-server to answer", interval=0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown save, the AOF is what survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def wipe(self) -> None:
        """Remove every data file (call while stopped): the next start is empty."""
        for path in self.folder.iterdir():
            if path.name != "redis.log":
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    def stop(self) -> None:
        """Stop for good."""
        if self.proc is not None:
            stop_process(self.proc, 10)


class PostgresServer:
    """A PostgreSQL cluster made by ``initdb`` in a temporary folder, on a free port.

    PostgreSQL refuses to run as root: as root, its commands run as the ``postgres`` user
    (``runuser``) and the folder belongs to that user.
    """

    def __init__(self) -> None:
        self.bin = _postgres_bin()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="inferbox-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{tool}: {done.stdout}{done.stderr}"

    def conninfo(self, dbname: str = "postgres") -> str:
        """libpq connection string of a database of this cluster."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname} connect_timeout=3"

    def start(self) -> None:
        """Start (or restart) the cluster; returns once it accepts connections."""
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c max_connections=100"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self) -> None:
        """Fast shutdown: sessions are cut, new connections are refused."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def create_database(self, name: str) -> str:
        """Create a database; its conninfo."""
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.conninfo(name)

    def remove(self) -> None:
        """Stop if running and delete the cluster's folder."""
        command = [str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


class S3Server:
    """moto's S3 server as its own process, so it can be made unreachable and brought back.

    ``freeze`` stops the process (SIGSTOP): connections are accepted by the kernel but never
    answered, the harshest kind of unreachable (clients must time out on their own); ``thaw``
    continues it with every object intact.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.frozen = False

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

    def freeze(self) -> None:
        """Make the server unreachable (it stops answering)."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """Bring it back."""
        os.kill(self.proc.pid, signal.SIGCONT)
        self.frozen = False

    def stop(self) -> None:
        """Stop for good."""
        if self.proc is not None:
            if self.frozen:
                self.thaw()
            stop_process(self.proc, 10)
