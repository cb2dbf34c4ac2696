"""The migration runner: in order, once, under an advisory lock."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from inferbox.registry.migrate import migrate, migration_files

pytestmark = pytest.mark.integration


async def test_concurrent_runs_apply_each_file_once(make_database) -> None:
    conninfo = make_database()
    first, second = await asyncio.gather(migrate(conninfo), migrate(conninfo))
    names = [path.name for path in migration_files()]
    assert names and names[0] == "0001_registry.sql"
    assert sorted(first + second) == names
    assert not (first and second)  # the lock made one runner wait for the other
    assert await migrate(conninfo) == []
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        cur = await conn.execute("SELECT name FROM schema_migrations ORDER BY name")
        assert [row[0] for row in await cur.fetchall()] == names
        cur = await conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ANY(%s)",
            (["models", "model_versions", "model_aliases", "model_traffic"],),
        )
        assert (await cur.fetchone())[0] == 4
