"""``inferbox alias ...``: point a model's aliases at versions, through a running appliance."""

from __future__ import annotations

import click

from inferbox.cli.remote import with_client
from inferbox.client import InferboxClient


@click.group("alias")
def alias() -> None:
    """Aliases (production, canary, any name) pointing at versions."""


@alias.command("set")
@click.argument("name")
@click.argument("alias_name", metavar="ALIAS")
@click.argument("version", type=int)
@with_client
def set_alias(client: InferboxClient, name: str, alias_name: str, version: int) -> None:
    """Point ALIAS of model NAME at VERSION."""
    client.set_alias(name, alias_name, version)
    click.echo(f"{name}: {alias_name} -> {version}")


@alias.command("rm")
@click.argument("name")
@click.argument("alias_name", metavar="ALIAS")
@with_client
def remove_alias(client: InferboxClient, name: str, alias_name: str) -> None:
    """Remove ALIAS of model NAME."""
    client.delete_alias(name, alias_name)
    click.echo(f"{name}: {alias_name} removed")
