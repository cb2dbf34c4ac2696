"""The ``inferbox`` command: run the API or a worker, and manage the model catalog."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import click

from inferbox.cli_backup import register as register_backup
from inferbox.cli_jobs import register as register_jobs
from inferbox.cli_remote import register as register_remote
from inferbox.config import Settings
from inferbox.logs import configure_logging
from inferbox.scaleout.cli import register as register_ray


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """inferbox: ONNX models over the KServe V2 protocol, batched on resident workers."""
    ctx.obj = Settings()


@main.command()
@click.pass_obj
def api(settings: Settings) -> None:
    """Serve the HTTP API (gunicorn with uvicorn workers) on INFERBOX_API_BIND."""
    from inferbox.api.server import ApiServer

    configure_logging("api", settings.log_level, settings.log_format)
    ApiServer(settings).run()


@main.command("grpc")
@click.pass_obj
def grpc_server(settings: Settings) -> None:
    """Serve the Open Inference Protocol over gRPC on INFERBOX_GRPC_BIND."""
    from inferbox.grpc.processes import run

    configure_logging("grpc", settings.log_level, settings.log_format)
    run(settings)


@main.command()
@click.pass_obj
def worker(settings: Settings) -> None:
    """Run a worker: load the catalog's models and serve their queues."""
    from inferbox.worker.main import Worker

    configure_logging("worker", settings.log_level, settings.log_format)
    # A worker is one process: its metrics live in memory even if the API's multiprocess
    # directory is set in a shared environment.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    from inferbox.registry.wiring import object_store
    from inferbox.worker.runtime import CudaUnavailable

    try:
        worker = Worker(settings, objects=object_store(settings))
    except CudaUnavailable as exc:
        # Before the metrics port opens: the container exits and its healthcheck never passes.
        raise click.ClickException(str(exc)) from None
    if settings.worker_metrics_port:
        from prometheus_client import REGISTRY, start_http_server

        from inferbox.observability.collectors import WorkerCollector
        from inferbox.observability.gpu import gpu_collector

        REGISTRY.register(WorkerCollector(worker))
        gpu = gpu_collector()
        if gpu is not None:
            REGISTRY.register(gpu)
        if settings.cache_url:
            from inferbox.observability.cache_metrics import CacheServerCollector

            REGISTRY.register(CacheServerCollector(settings.cache_url))
        start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host)
    worker.run()


@main.command()
@click.pass_obj
def migrate(settings: Settings) -> None:
    """Create the database if missing and apply pending schema migrations (idempotent)."""
    from inferbox.registry.migrate import migrate_sync
    from inferbox.registry.wiring import create_database

    if create_database(settings.database_url):
        click.echo("created the database")
    applied = migrate_sync(settings.database_url)
    click.echo(
        f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else "")
    )


@main.group("db")
def db_group() -> None:
    """Database roles."""


@db_group.command("app-role")
@click.option("--role", default="inferbox_app", show_default=True, help="the role to make")
@click.option(
    "--component",
    type=click.Choice(["api", "grpc", "worker"]),
    default="api",
    show_default=True,
    help="whose grants it gets: the API's (everything the app needs), the gRPC server's or a "
    "worker's (jobs only)",
)
@click.option(
    "--password-env",
    default=None,
    help="environment variable holding the role's password (LOGIN); without it NOLOGIN",
)
@click.pass_obj
def db_app_role(settings: Settings, role: str, component: str, password_env: str | None) -> None:
    """Make or update a component's role: no superuser, not the owner, the audit log
    append-only, and only the tables that component uses. Run as the owner
    (INFERBOX_DATABASE_URL) after ``inferbox migrate``."""
    from inferbox.registry.roles import apply_app_role

    password = None
    if password_env is not None:
        password = os.environ.get(password_env)
        if not password:
            raise click.UsageError(f"{password_env} is not set")
    tables = apply_app_role(settings.database_url, role, password, component)
    click.echo(f"role {role} ({component}): grants on {len(tables)} tables")


@main.group("s3")
def s3_group() -> None:
    """The object store: the bucket, its encryption, and each part's own user."""


@s3_group.command("setup")
@click.option("--encrypt", is_flag=True, help="make SSE-S3 the bucket's default encryption")
@click.option(
    "--user",
    "users",
    multiple=True,
    metavar="COMPONENT:ACCESS_KEY:SECRET_ENV",
    help="a user for api, worker or grpc with that component's policy; its secret key is read "
    "from the environment variable SECRET_ENV (repeat)",
)
@click.pass_obj
def s3_setup(settings: Settings, encrypt: bool, users: tuple[str, ...]) -> None:
    """Create the bucket if missing, set its encryption and make the components' users
    (idempotent). Run with the root credentials (INFERBOX_S3_ACCESS_KEY/_SECRET_KEY)."""
    from inferbox.registry import s3_access
    from inferbox.registry.wiring import object_store

    parsed = []
    for spec in users:
        component, _, rest = spec.partition(":")
        access_key, _, secret_env = rest.partition(":")
        if component not in s3_access.COMPONENTS or not access_key or not secret_env:
            raise click.UsageError(f"--user {spec!r}: give COMPONENT:ACCESS_KEY:SECRET_ENV")
        secret = os.environ.get(secret_env)
        if not secret:
            raise click.UsageError(f"{secret_env} is not set")
        parsed.append((component, access_key, secret))
    objects = object_store(settings)
    objects.ensure_bucket()
    if encrypt:
        s3_access.encrypt_bucket(objects.client, settings.s3_bucket)
        click.echo(f"bucket {settings.s3_bucket}: SSE-S3 by default")
    if parsed:
        admin = s3_access.admin_client(
            settings.s3_endpoint,
            settings.s3_access_key,
            settings.s3_secret_key,
            secure=settings.s3_secure,
            region=settings.s3_region,
        )
        made = s3_access.apply_users(admin, settings.s3_bucket, parsed)
        click.echo(f"users {', '.join(made)}: each with its component's policy")


@main.group()
def models() -> None:
    """Models: push, list, show, remove, import a folder."""


@models.command("import")
@click.argument(
    "root", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.pass_obj
def import_models(settings: Settings, root: Path | None) -> None:
    """Import a Triton-layout folder into the registry (default: INFERBOX_MODEL_REPOSITORY).

    Files already present (same sha256) are skipped, so this is safe at every start.
    """
    root = root or settings.model_repository
    if root is None:
        raise click.UsageError("give a folder or set INFERBOX_MODEL_REPOSITORY")
    from inferbox.registry.wiring import with_registry

    configure_logging("cli", settings.log_level, "console")
    for line in asyncio.run(with_registry(settings, lambda r: r.import_repository(root))):
        click.echo(line)


@models.command("publish")
@click.pass_obj
def publish_models(settings: Settings) -> None:
    """Rebuild the Redis catalog from PostgreSQL (after Redis lost its data)."""
    from inferbox.registry.wiring import with_registry

    count = asyncio.run(with_registry(settings, lambda r: r.publish_all()))
    click.echo(f"published {count} model(s)")


@main.group("keys")
def keys_group() -> None:
    """API keys: bootstrap the first admin key; create, list and revoke keys."""


@keys_group.command("bootstrap")
@click.option(
    "--file",
    "path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="where the admin key is kept (written with mode 0600)",
)
@click.pass_obj
def keys_bootstrap(settings: Settings, path: Path) -> None:
    """Make sure FILE holds a usable admin key, creating one if needed (idempotent).

    Talks to the database directly: run it after ``inferbox migrate``, before the API.
    """
    from inferbox.registry.store import create_pool
    from inferbox.security.keystore import KeyStore, bootstrap_admin

    async def run() -> str:
        async with create_pool(settings.database_url, max_size=1) as pool:
            return await bootstrap_admin(KeyStore(pool), path)

    click.echo(asyncio.run(run()))


@keys_group.command("out-of-scope")
@click.option("--json", "as_json", is_flag=True, help="one JSON object a line")
@click.pass_obj
def keys_out_of_scope(settings: Settings, as_json: bool) -> None:
    """List key changes, model changes (unloads, aliases...) and jobs made by keys that lacked
    the scope or model they needed; exit status 1 when there is any.

    Talks to the database directly. Run it once on an appliance upgraded from a version whose
    gate could be bypassed with non-canonical paths (docs/security.md).
    """
    import json

    from inferbox.registry.store import create_pool
    from inferbox.security.audit import out_of_scope

    async def run() -> list[dict]:
        async with create_pool(settings.database_url, max_size=1) as pool:
            return await out_of_scope(pool)

    rows = asyncio.run(run())
    for row in rows:
        if as_json:
            click.echo(json.dumps(row, default=str))
        else:
            click.echo(
                f"{row['at'].isoformat()}\t{row['source']}:{row['id']}\t{row['actor']}"
                f"\t{row['action']}\t{row['target']}\t{row['outcome']}"
                f"\tscopes={','.join(row['scopes'])}"
                f"\tmodels={','.join(row['allowed_models'] or ['*'])}"
            )
    if rows:
        raise SystemExit(1)
    click.echo("no out-of-scope changes or jobs found", err=True)


register_remote(main, models, keys_group)
register_backup(main)
register_jobs(main)
register_ray(main)


if __name__ == "__main__":
    main()
