"""The database role the API and workers should use: not the owner, not a superuser.

``inferbox migrate`` runs as the owner of the schema (in compose, PostgreSQL's superuser). The
running appliance needs far less: this module makes (or updates) an application role that may
read and write the registry, keys and jobs tables, but may only *add* to the audit log: no
UPDATE, DELETE or TRUNCATE there, and, not owning the table, no way to disable or drop its
append-only triggers. Nor can it ``COPY ... PROGRAM`` (superuser only) or change the schema.

Run ``inferbox db app-role`` as the owner after every migration (grants cover the tables that
exist then); point the API and workers at the role's URL.
"""

from __future__ import annotations

import re

import psycopg
from psycopg import sql

ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

APPEND_ONLY = {"audit_log": ("SELECT", "INSERT")}
"""Tables the application may read and add rows to, nothing else."""

READ_INSERT = {"instance_secrets": ("SELECT", "INSERT")}
"""Tables the application reads and fills once (its secrets), never changes."""

READ_ONLY = {"schema_migrations": ("SELECT",)}
"""Tables the application only reads (``inferbox migrate`` as the application finds nothing to
do, or fails on a pending migration)."""

SKIPPED: set[str] = set()
"""Tables only the owner touches."""


def apply_app_role(conninfo: str, role: str, password: str | None) -> list[str]:
    """Create or update ``role`` (LOGIN with ``password`` when given) with the application's
    grants on the current tables; returns the tables granted."""
    if not ROLE_NAME.fullmatch(role):
        raise ValueError(f"{role!r} is not a plain role name")
    ident = sql.Identifier(role)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        if exists is None:
            conn.execute(
                sql.SQL("CREATE ROLE {} NOSUPERUSER NOCREATEDB NOCREATEROLE").format(ident)
            )
        conn.execute(
            sql.SQL("ALTER ROLE {} NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS").format(ident)
        )
        if password is not None:
            conn.execute(
                sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(ident, sql.Literal(password))
            )
        database = conn.execute("SELECT current_database()").fetchone()[0]
        conn.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), ident)
        )
        conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA public FROM {}").format(ident))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(ident))
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
            )
            if row[0] not in SKIPPED
        ]
        for table in tables:
            target = sql.Identifier(table)
            conn.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(target, ident))
            privileges = APPEND_ONLY.get(table) or READ_INSERT.get(table) or READ_ONLY.get(table)
            if privileges is None:
                privileges = ("SELECT", "INSERT", "UPDATE", "DELETE")
            conn.execute(
                sql.SQL("GRANT {} ON {} TO {}").format(
                    sql.SQL(", ").join(sql.SQL(p) for p in privileges), target, ident
                )
            )
        conn.execute(
            sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(ident)
        )
    return tables
