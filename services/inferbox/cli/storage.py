"""The object store: ``inferbox s3 setup``."""

from __future__ import annotations

import os

import click

from inferbox.config import Settings


@click.group("s3")
def s3() -> None:
    """The object store: the bucket, its encryption, and each part's own user."""


@s3.command("setup")
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
def setup(settings: Settings, encrypt: bool, users: tuple[str, ...]) -> None:
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
