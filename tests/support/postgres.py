"""PostgreSQL for the tests: the machine's (a database per use) and clusters of their own made
by ``initdb`` on free ports, to stop and restart at will."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

from tests.support.processes import free_port

POSTGRES = os.environ.get("INFERBOX_TEST_POSTGRES", "host=127.0.0.1 port=5432 user=postgres")
"""libpq connection string of the machine's PostgreSQL, without a database name."""


def admin(statement: str) -> None:
    """Run one statement on the machine's PostgreSQL, outside a transaction."""
    with psycopg.connect(f"{POSTGRES} dbname=postgres", autocommit=True) as conn:
        conn.execute(statement)


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("PostgreSQL server binaries are not installed (apt-get install postgresql)")
    return Path(found[-1]).parent


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
