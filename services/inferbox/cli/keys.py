"""``inferbox keys ...``: bootstrap the first admin key and find out-of-scope changes straight
from the database; create, list and revoke keys through a running appliance."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click

from inferbox.cli.output import table
from inferbox.cli.parsing import parse_duration
from inferbox.cli.remote import with_client
from inferbox.client import InferboxClient
from inferbox.config import Settings


@click.group("keys")
def keys() -> None:
    """API keys: bootstrap the first admin key; create, list and revoke keys."""


@keys.command("bootstrap")
@click.option(
    "--file",
    "path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="where the admin key is kept (written with mode 0600)",
)
@click.pass_obj
def bootstrap(settings: Settings, path: Path) -> None:
    """Make sure FILE holds a usable admin key, creating one if needed (idempotent).

    Talks to the database directly: run it after ``inferbox migrate``, before the API.
    """
    from inferbox.registry.store import create_pool
    from inferbox.security.keystore import KeyStore, bootstrap_admin

    async def run() -> str:
        async with create_pool(settings.database_url, max_size=1) as pool:
            return await bootstrap_admin(KeyStore(pool), path)

    click.echo(asyncio.run(run()))


@keys.command("out-of-scope")
@click.option("--json", "as_json", is_flag=True, help="one JSON object a line")
@click.pass_obj
def out_of_scope(settings: Settings, as_json: bool) -> None:
    """List key changes, model changes (unloads, aliases...) and jobs made by keys that lacked
    the scope or model they needed; exit status 1 when there is any.

    Talks to the database directly. Run it once on an appliance upgraded from a version whose
    gate could be bypassed with non-canonical paths (docs/security.md).
    """
    from inferbox.registry.store import create_pool
    from inferbox.security.audit import out_of_scope as find_out_of_scope

    async def run() -> list[dict]:
        async with create_pool(settings.database_url, max_size=1) as pool:
            return await find_out_of_scope(pool)

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


@keys.command("create")
@click.option("--name", required=True, help="who or what the key is for")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(["infer", "jobs", "models:write", "admin"]),
    help="repeat for several",
)
@click.option("--model", "models_", multiple=True, help="allowed model (repeat; none: all)")
@click.option("--expires-in", default=None, help="e.g. 30d, 12h (default: never)")
@click.option("--rate", type=float, default=None, help="requests per second (token bucket)")
@click.option("--burst", type=int, default=None, help="bucket size (default: the rate)")
@click.option("--concurrency", type=int, default=None, help="requests in flight at most")
@click.option(
    "--unlimited",
    is_flag=True,
    help="no rate or concurrency limit (default: the appliance's INFERBOX_KEY_DEFAULT_*)",
)
@click.option(
    "--priority",
    type=int,
    default=0,
    show_default=True,
    help="most urgent priority its calls may claim (>= 2: low lane only)",
)
@with_client
def create(client: InferboxClient, name, scopes, models_, expires_in, **limits) -> None:
    """Create an API key and print it (the only time it is shown)."""
    created = client.create_key(
        name,
        list(scopes),
        allowed_models=list(models_) or None,
        expires_in_s=parse_duration(expires_in) if expires_in else None,
        rate_per_s=limits["rate"],
        burst=limits["burst"],
        max_concurrency=limits["concurrency"],
        priority=limits["priority"],
        unlimited=limits["unlimited"],
    )
    click.echo(f"created {created['id']} ({created['name']}); the key, shown only now:", err=True)
    click.echo(created["key"])


@keys.command("ls")
@with_client
def list_keys(client: InferboxClient) -> None:
    """List API keys (never their secrets)."""
    rows = []
    for key in client.list_keys():
        state = "revoked" if key["revoked_at"] else "active"
        limits = ",".join(
            f"{label}={key[field]}"
            for label, field in (
                ("rate", "rate_per_s"),
                ("burst", "burst"),
                ("concurrency", "max_concurrency"),
                ("priority", "priority"),
            )
            if key[field]
        )
        rows.append(
            [
                key["id"],
                key["name"],
                ",".join(key["scopes"]),
                ",".join(key["allowed_models"] or ["*"]),
                limits or "-",
                (key["expires_at"] or "never")[:19],
                state,
            ]
        )
    click.echo(table(rows, ["ID", "NAME", "SCOPES", "MODELS", "LIMITS", "EXPIRES", "STATE"]))


@keys.command("revoke")
@click.argument("key_id", metavar="ID")
@with_client
def revoke(client: InferboxClient, key_id: str) -> None:
    """Revoke key ID (refused everywhere within a second)."""
    client.revoke_key(key_id)
    click.echo(f"revoked {key_id}")
