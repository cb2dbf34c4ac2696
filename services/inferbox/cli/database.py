"""The database: ``inferbox migrate`` and ``inferbox db app-role``."""

from __future__ import annotations

import os

import click

from inferbox.config import Settings


@click.command("migrate")
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


@click.group("db")
def db() -> None:
    """Database roles."""


@db.command("app-role")
@click.option("--role", default="inferbox_app", show_default=True, help="the role to make")
@click.option(
    "--component",
    type=click.Choice(["api", "grpc", "worker", "webhooks"]),
    default="api",
    show_default=True,
    help="whose grants it gets: the API's (everything the app needs), the gRPC server's, a "
    "worker's (jobs only) or the webhook sender's (jobs' webhook columns only)",
)
@click.option(
    "--password-env",
    default=None,
    help="environment variable holding the role's password (LOGIN); without it NOLOGIN",
)
@click.pass_obj
def app_role(settings: Settings, role: str, component: str, password_env: str | None) -> None:
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
