"""Fixtures of the registry tests: a fresh PostgreSQL database and an S3 server on 127.0.0.1.

The database (``ibtest_<random>``) is created for the session and dropped at its end; the S3
server is moto's, in a thread. moto does not check request signatures: no test may rely on it
rejecting bad credentials.
"""

from __future__ import annotations

import uuid

import pytest

from inferbox.registry.migrate import migrate_sync
from inferbox.registry.objects import ObjectStore
from inferbox.registry.store import RegistryStore, create_pool
from tests.support.s3 import new_bucket


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
def objects(s3_endpoint) -> ObjectStore:
    store = new_bucket(s3_endpoint)
    store.ensure_bucket()  # idempotent
    return store


@pytest.fixture
def model_name() -> str:
    """A model name no other test uses."""
    return f"m-{uuid.uuid4().hex[:10]}"
