"""One archive holding everything an appliance cannot regenerate: its database, its files,
its secrets.

``backup`` writes a gzipped tar: ``manifest.json``, one CSV per table (``COPY ... TO STDOUT``,
so no ``pg_dump`` is needed in the image), every object of the bucket, and the secret files
named. ``restore`` puts them into an empty appliance: schema migrations first, then the rows
(foreign keys and triggers paused for the load), sequences moved past the restored ids, the
objects, and finally the Redis catalog rebuilt from the restored database.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

from inferbox.registry.migrate import migrate_sync
from inferbox.registry.objects import ObjectStore

FORMAT = 1
SKIPPED_TABLES = {"schema_migrations", "instance_secrets"}
"""Not carried over: migrations recreate the first; the restored appliance keeps its own
secrets (the key-cache MAC secret guards only copies in that appliance's Redis)."""


def _tables(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name"
    ).fetchall()
    return [r[0] for r in rows if r[0] not in SKIPPED_TABLES]


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o600
    archive.addfile(info, io.BytesIO(data))


def backup(database_url: str, objects: ObjectStore, path: Path, secrets: list[Path] = ()) -> dict:
    """Write the archive to ``path`` (mode 0600); returns its manifest."""
    manifest: dict = {"format": FORMAT, "created_at": time.time(), "tables": {}, "objects": []}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        path.chmod(0o600)
        with psycopg.connect(database_url) as conn:
            for table in _tables(conn):
                buffer = io.BytesIO()
                query = sql.SQL("COPY (SELECT * FROM {}) TO STDOUT WITH (FORMAT csv, HEADER)")
                with conn.cursor().copy(query.format(sql.Identifier(table))) as copy:
                    for chunk in copy:
                        buffer.write(chunk)
                data = buffer.getvalue()
                _add(archive, f"db/{table}.csv", data)
                count = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
                manifest["tables"][table] = conn.execute(count).fetchone()[0]
        for key in objects.object_keys():
            with tempfile.NamedTemporaryFile() as tmp:
                objects.client.fget_object(objects.bucket, key, tmp.name)
                archive.add(tmp.name, arcname=f"objects/{key}")
            manifest["objects"].append(key)
        for secret in secrets:
            _add(archive, f"secrets/{secret.name}", secret.read_bytes())
        manifest["secrets"] = [s.name for s in secrets]
        _add(archive, "manifest.json", json.dumps(manifest, indent=2).encode())
    return manifest


def restore(
    database_url: str, objects: ObjectStore, path: Path, secrets_dir: Path | None = None
) -> dict:
    """Load an archive into an empty appliance; refuses a database that already holds models."""
    with tarfile.open(path, "r:gz") as archive:
        manifest = json.loads(archive.extractfile("manifest.json").read())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"unknown backup format {manifest.get('format')}")
        _check_names(manifest)
        migrate_sync(database_url)
        with psycopg.connect(database_url) as conn:
            if conn.execute("SELECT count(*) FROM models").fetchone()[0]:
                raise ValueError("the database already holds models: restore needs an empty one")
            unknown = sorted(set(manifest["tables"]) - set(_tables(conn)))
            if unknown:
                raise ValueError(f"the archive names tables this appliance lacks: {unknown}")
            # Rows go in table by table; constraints and triggers wait until all are there.
            conn.execute("SET session_replication_role = replica")
            for table in manifest["tables"]:
                data = archive.extractfile(f"db/{table}.csv").read()
                if table == "audit_log":
                    _make_room_for_history(conn, data)
                query = sql.SQL("COPY {} FROM STDIN WITH (FORMAT csv, HEADER)")
                with conn.cursor().copy(query.format(sql.Identifier(table))) as copy:
                    copy.write(data)
            conn.execute("SET session_replication_role = DEFAULT")
            _advance_sequences(conn)
        objects.ensure_bucket()
        for key in manifest["objects"]:
            member = archive.extractfile(f"objects/{key}")
            size = archive.getmember(f"objects/{key}").size
            objects.client.put_object(objects.bucket, key, member, size)
        if secrets_dir is not None:
            secrets_dir.mkdir(parents=True, exist_ok=True)
            for name in manifest.get("secrets", []):
                target = secrets_dir / name
                target.write_bytes(archive.extractfile(f"secrets/{name}").read())
                target.chmod(0o600)
    return manifest


def _make_room_for_history(conn: psycopg.Connection, data: bytes) -> None:
    """Move the empty appliance's own audit rows (its setup's: the bootstrap admin key's
    creation) after the archive's, so that the restored history keeps its ids and the log its
    order (ids are the order it is read and paged in). The append-only trigger is off for this
    session (``session_replication_role = replica``), as for the COPY itself."""
    ids = [int(row["id"]) for row in csv.DictReader(io.StringIO(data.decode()))]
    if not ids:
        return
    existing = conn.execute("SELECT coalesce(max(id), 0) FROM audit_log").fetchone()[0]
    # Past every id on either side: no row moves onto another's id on the way.
    conn.execute("UPDATE audit_log SET id = id + %s", (max(max(ids), existing),))


def _check_names(manifest: dict) -> None:
    """Refuse an archive whose manifest names a secret file outside the secrets folder (a
    path, ``..``) or an object key that is not a plain relative key; before anything is
    written."""
    for name in manifest.get("secrets", []):
        if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
            raise ValueError(f"the archive names a secret file outside its folder: {name!r}")
    for key in manifest.get("objects", []):
        parts = key.split("/") if isinstance(key, str) else [""]
        if key.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"the archive names an object key that is not plain: {key!r}")
    if not isinstance(manifest.get("tables"), dict):
        raise ValueError("the archive's manifest has no table list")


def _advance_sequences(conn: psycopg.Connection) -> None:
    rows = conn.execute(
        "SELECT c.relname, a.attname, pg_get_serial_sequence(c.relname, a.attname) "
        "FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0 "
        "AND pg_get_serial_sequence(c.relname, a.attname) IS NOT NULL"
    ).fetchall()
    for table, column, sequence in rows:
        conn.execute(
            sql.SQL("SELECT setval({}, COALESCE((SELECT max({}) FROM {}), 0) + 1, false)").format(
                sql.Literal(sequence), sql.Identifier(column), sql.Identifier(table)
            )
        )
