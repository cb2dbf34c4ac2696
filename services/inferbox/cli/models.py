"""``inferbox models ...``: import a folder and rebuild the catalog straight from the
database; push, list, show and remove versions through a running appliance."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click

from inferbox.cli.output import table
from inferbox.cli.remote import with_client
from inferbox.client import InferboxClient
from inferbox.config import Settings
from inferbox.logs import configure_logging


@click.group("models")
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


@models.command("push")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="model name, e.g. resnet50")
@click.option("--alias", default=None, help="point this alias at the new version")
@click.option(
    "--triton-config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="the model's Triton config.pbtxt, applied to the new version",
)
@with_client
def push(
    client: InferboxClient,
    file: Path,
    name: str,
    alias: str | None,
    triton_config: Path | None,
) -> None:
    """Upload FILE as a new version of a model."""
    text = triton_config.read_text(encoding="utf-8") if triton_config else None
    with click.progressbar(length=file.stat().st_size, label=f"uploading {file.name}") as bar:
        version = client.push(file, name, alias=alias, progress=bar.update, triton_config=text)
    click.echo(
        f"{version['name']} version {version['version']} ({version['sha256'][:12]}) "
        f"{'-> ' + alias if alias else ''}".rstrip()
    )


@models.command("ls")
@with_client
def list_models(client: InferboxClient) -> None:
    """List models, their versions and aliases."""
    rows = [
        [
            m["name"],
            ",".join(str(v) for v in m["versions"]),
            ",".join(f"{a}={v}" for a, v in sorted(m["aliases"].items())),
        ]
        for m in client.models()
    ]
    click.echo(table(rows, ["MODEL", "VERSIONS", "ALIASES"]))


@models.command("show")
@click.argument("name")
@click.option("--version", type=int, default=None, help="one version, with its capacity card")
@with_client
def show(client: InferboxClient, name: str, version: int | None) -> None:
    """Show a model (or one version) as JSON."""
    data = client.version(name, version) if version else client.model(name)
    click.echo(json.dumps(data, indent=2))


@models.command("rm")
@click.argument("name")
@click.argument("version", type=int)
@click.option("--force", is_flag=True, help="also remove aliases pointing at it")
@with_client
def remove_version(client: InferboxClient, name: str, version: int, force: bool) -> None:
    """Delete one version of a model."""
    client.delete_version(name, version, force=force)
    click.echo(f"deleted {name} version {version}")
