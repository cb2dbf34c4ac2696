"""Fixtures of the registry tests: a fresh PostgreSQL database and an S3 server on 127.0.0.1.

The database (``ibtest_<random>``) is created for the session and dropped at its end; the S3
server is moto's, in a thread. moto does not check request signatures: no test may rely on it
rejecting bad credentials.
"""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest
from moto.server import ThreadedMotoServer

from inferbox.registry.migrate import migrate_sync
from inferbox.registry.objects import ObjectStore
from inferbox.registry.store import RegistryStore, create_pool

POSTGRES = os.environ.get("INFERBOX_TEST_POSTGRES", "host=127.0.0.1 port=5432 user=postgres")


def _admin(statement: str) -> None:
    with psycopg.connect(f"{POSTGRES} dbname=postgres", autocommit=True) as conn:
        conn.execute(statement)


@pytest.fixture(scope="session")
def make_database():
    """A factory of empty databases (conninfo strings), all dropped when the session ends."""
    created: list[str] = []

    def make() -> str:
        name = f"ibtest_{uuid.uuid4().hex[:12]}"
        _admin(f'CREATE DATABASE "{name}"')
        created.append(name)
        return f"{POSTGRES} dbname={name}"

    yield make
    for name in created:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def registry_db(make_database) -> str:
    """A migrated database shared by the store tests (each test uses its own model names)."""
    conninfo = make_database()
    migrate_sync(conninfo)
    return conninfo


@pytest.fixture
async def store(registry_db):
    async with create_pool(registry_db, max_size=8) as pool:
        yield RegistryStore(pool)


@pytest.fixture(scope="session")
def s3_endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def objects(s3_endpoint) -> ObjectStore:
    store = ObjectStore(
        s3_endpoint,
        "test-access",
        "test-secret",
        f"ibtest-{uuid.uuid4().hex[:8]}",
        secure=False,
        region="us-east-1",
    )
    store.ensure_bucket()
    store.ensure_bucket()  # idempotent
    return store


@pytest.fixture
def model_name() -> str:
    """A model name no other test uses."""
    return f"m-{uuid.uuid4().hex[:10]}"
