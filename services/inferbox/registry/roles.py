"""The database roles the running parts use: not the owner, not a superuser, one per part.

``inferbox migrate`` runs as the owner of the schema (in compose, PostgreSQL's superuser). The
running appliance needs far less: this module makes (or updates) a role per component, each with
the grants that component's code needs and nothing more (``COMPONENTS``):

- ``api``: reads and writes the registry, keys and jobs tables, but may only *add* to the audit
  log: no UPDATE, DELETE or TRUNCATE there, and, not owning the table, no way to disable or drop
  its append-only triggers;
- ``grpc`` (the Open Inference Protocol over gRPC): reads the registry and the keys, marks keys
  used, adds auth failures to the audit log;
- ``worker`` (model serving and the job lane): reads and updates jobs, reads and deletes expired
  job inputs, and nothing else: no keys, no registry, no audit log;
- ``webhooks`` (``inferbox webhooks``, the one part that reaches outside): reads jobs and
  writes only their webhook columns (when the next try is due, its outcome), nothing else.

None of them can ``COPY ... PROGRAM`` (superuser only) or change the schema. Run ``inferbox db
app-role`` as the owner after every migration (grants cover the tables that exist then); point
each component at its role's URL.
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

_REGISTRY = ("models", "model_versions", "model_aliases", "model_traffic")

COMPONENTS: dict[str, dict[str, tuple[str, ...]] | None] = {
    "api": None,
    "grpc": {
        **{table: ("SELECT",) for table in _REGISTRY},
        # Keys are read to authenticate calls; only their last use is written.
        "api_keys": ("SELECT", "UPDATE (last_used_at)"),
        "audit_log": ("SELECT", "INSERT"),
        "instance_secrets": ("SELECT", "INSERT"),
    },
    "worker": {
        "jobs": ("SELECT", "UPDATE"),
        "job_inputs": ("SELECT", "DELETE"),
    },
    "webhooks": {
        # Reads a finished job to announce it; claims and records deliveries, nothing else.
        "jobs": (
            "SELECT",
            "UPDATE (webhook_state, webhook_attempts, webhook_error, webhook_next_at)",
        ),
    },
}
"""Grants of each component's role, table by table (a table not named: no access). ``None``:
every table, by the rules above (``APPEND_ONLY``, ``READ_INSERT``, ``READ_ONLY``, else read and
write)."""


def apply_app_role(
    conninfo: str, role: str, password: str | None, component: str = "api"
) -> list[str]:
    """Create or update ``role`` (LOGIN with ``password`` when given) with ``component``'s
    grants on the current tables (``COMPONENTS``); returns the tables granted."""
    if not ROLE_NAME.fullmatch(role):
        raise ValueError(f"{role!r} is not a plain role name")
    if component not in COMPONENTS:
        raise ValueError(f"{component!r} is not one of {sorted(COMPONENTS)}")
    only = COMPONENTS[component]
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
        existing = [
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
            )
        ]
        granted = []
        for table in existing:
            target = sql.Identifier(table)
            conn.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(target, ident))
            privileges = _privileges(table, only)
            if not privileges:
                continue
            conn.execute(
                sql.SQL("GRANT {} ON {} TO {}").format(
                    sql.SQL(", ").join(sql.SQL(p) for p in privileges), target, ident
                )
            )
            granted.append(table)
        sequences = sql.SQL("ALL SEQUENCES IN SCHEMA public")
        conn.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(sequences, ident))
        if only is None or any("INSERT" in p for p in only.values()):
            # nextval of the tables' serial ids (an id alone grants nothing else).
            conn.execute(sql.SQL("GRANT USAGE, SELECT ON {} TO {}").format(sequences, ident))
    return granted


def _privileges(table: str, only: dict[str, tuple[str, ...]] | None) -> tuple[str, ...]:
    if only is not None:
        return only.get(table, ())
    if table in SKIPPED:
        return ()
    privileges = APPEND_ONLY.get(table) or READ_INSERT.get(table) or READ_ONLY.get(table)
    return privileges or ("SELECT", "INSERT", "UPDATE", "DELETE")
