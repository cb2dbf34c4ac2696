"""``inferbox backup`` and ``inferbox restore``: the appliance's state in one dated archive."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import click

from inferbox.config import Settings

_PASSPHRASE = click.option(
    "--passphrase-env",
    default=None,
    metavar="VAR",
    help="environment variable holding the passphrase that seals (or opens) the archive",
)


def _passphrase(var: str | None) -> str | None:
    if var is None:
        return None
    value = os.environ.get(var)
    if not value:
        raise click.UsageError(f"{var} is not set")
    return value


@click.command("backup")
@click.argument("archive", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--secret",
    "secrets",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="a secret file to include (the admin key, .env); repeatable",
)
@_PASSPHRASE
@click.pass_obj
def backup(
    settings: Settings,
    archive: Path | None,
    secrets: tuple[Path, ...],
    passphrase_env: str | None,
) -> None:
    """Write PostgreSQL's rows, the model files and secrets to ARCHIVE (a .tar.gz, sealed
    with AES-256-GCM when a passphrase is given: it holds every secret and all data).

    Default: backups/inferbox-<UTC date and time>.tar.gz[.sealed].
    """
    from inferbox.registry.backup import backup as run_backup
    from inferbox.registry.sealing import seal
    from inferbox.registry.wiring import object_store

    passphrase = _passphrase(passphrase_env)
    suffix = ".tar.gz.sealed" if passphrase else ".tar.gz"
    archive = archive or Path("backups") / time.strftime(
        f"inferbox-%Y%m%d-%H%M%S{suffix}", time.gmtime()
    )
    if passphrase is None:
        manifest = run_backup(settings.database_url, object_store(settings), archive, list(secrets))
    else:
        archive.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=archive.parent) as work:
            plain = Path(work) / "plain.tar.gz"
            manifest = run_backup(
                settings.database_url, object_store(settings), plain, list(secrets)
            )
            seal(plain, archive, passphrase)
    rows = sum(manifest["tables"].values())
    click.echo(
        f"wrote {archive}: {rows} rows in {len(manifest['tables'])} tables, "
        f"{len(manifest['objects'])} objects, {len(secrets)} secret file(s)"
    )


@click.command("restore")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--secrets-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="where to write the archive's secret files",
)
@_PASSPHRASE
@click.pass_obj
def restore(
    settings: Settings, archive: Path, secrets_dir: Path | None, passphrase_env: str | None
) -> None:
    """Load ARCHIVE into an empty appliance, then rebuild the serving catalog."""
    import asyncio

    from inferbox.registry.backup import restore as run_restore
    from inferbox.registry.sealing import SealError, is_sealed, unseal
    from inferbox.registry.wiring import create_database, object_store, with_registry

    with tempfile.TemporaryDirectory() as work:
        if is_sealed(archive):
            passphrase = _passphrase(passphrase_env)
            if passphrase is None:
                raise click.UsageError("the archive is sealed: give --passphrase-env")
            opened = Path(work) / "opened.tar.gz"
            try:
                unseal(archive, opened, passphrase)
            except SealError as exc:
                raise click.ClickException(str(exc)) from None
            archive = opened
        create_database(settings.database_url)
        manifest = run_restore(settings.database_url, object_store(settings), archive, secrets_dir)
    count = asyncio.run(with_registry(settings, lambda r: r.publish_all()))
    click.echo(
        f"restored {sum(manifest['tables'].values())} rows, {len(manifest['objects'])} "
        f"objects; {count} model(s) serving"
    )
