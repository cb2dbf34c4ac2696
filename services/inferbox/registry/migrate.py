"""Apply the numbered SQL files in ``migrations/`` to a database, once each, in order.

Each file runs in its own transaction together with its row in ``schema_migrations``; the whole
run holds a session-level advisory lock, so processes starting together (API replicas, the
``inferbox`` command, ``scripts/stack up``) apply every file exactly once. Files are never
edited after release: a schema change is a new file with the next number.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg

MIGRATIONS = Path(__file__).with_name("migrations")
LOCK_ID = 0x1B0E_5EC0_0001
"""The advisory lock key (any bigint that nothing else on the server uses)."""


def migration_files() -> list[Path]:
    """The SQL files, in the order they apply (by their zero-padded number)."""
    return sorted(MIGRATIONS.glob("[0-9][0-9][0-9][0-9]_*.sql"))


async def migrate(conninfo: str) -> list[str]:
    """Apply the files not applied yet; return their names (empty when up to date)."""
    applied: list[str] = []
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_ID,))
        try:
            # Created only when missing: a role without CREATE (the application's, see
            # registry/roles.py) can then run this and find nothing to do.
            cursor = await conn.execute("SELECT to_regclass('public.schema_migrations')")
            if (await cursor.fetchone())[0] is None:
                await conn.execute(
                    "CREATE TABLE schema_migrations ("
                    " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
            cursor = await conn.execute("SELECT name FROM schema_migrations")
            done = {row[0] for row in await cursor.fetchall()}
            for path in migration_files():
                if path.name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text())  # no parameters: many statements
                    await conn.execute(
                        "INSERT INTO schema_migrations (name) VALUES (%s)", (path.name,)
                    )
                applied.append(path.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_ID,))
    return applied


def migrate_sync(conninfo: str) -> list[str]:
    """``migrate`` for callers without an event loop (the CLI, scripts)."""
    return asyncio.run(migrate(conninfo))
