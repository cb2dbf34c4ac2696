"""``inferbox backup`` and ``inferbox restore``: the appliance's state in one dated archive."""

from __future__ import annotations

import time
from pathlib import Path

import click

from inferbox.config import Settings


def register(main: click.Group) -> None:
    """Attach the commands to the ``inferbox`` command."""

    @main.command()
    @click.argument("archive", required=False, type=click.Path(dir_okay=False, path_type=Path))
    @click.option(
        "--secret",
        "secrets",
        multiple=True,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="a secret file to include (the admin key, .env); repeatable",
    )
    @click.pass_obj
    def backup(settings: Settings, archive: Path | None, secrets: tuple[Path, ...]) -> None:
        """Write PostgreSQL's rows, the model files and secrets to ARCHIVE (a .tar.gz).

        Default: backups/inferbox-<UTC date and time>.tar.gz.
        """
        from inferbox.registry.backup import backup as run_backup
        from inferbox.registry.wiring import object_store

        archive = archive or Path("backups") / time.strftime(
            "inferbox-%Y%m%d-%H%M%S.tar.gz", time.gmtime()
        )
        manifest = run_backup(settings.database_url, object_store(settings), archive, list(secrets))
        rows = sum(manifest["tables"].values())
        click.echo(
            f"wrote {archive}: {rows} rows in {len(manifest['tables'])} tables, "
            f"{len(manifest['objects'])} objects, {len(secrets)} secret file(s)"
        )

    @main.command()
    @click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option(
        "--secrets-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="where to write the archive's secret files",
    )
    @click.pass_obj
    def restore(settings: Settings, archive: Path, secrets_dir: Path | None) -> None:
        """Load ARCHIVE into an empty appliance, then rebuild the serving catalog."""
        import asyncio

        from inferbox.cli import _with_registry
        from inferbox.registry.backup import restore as run_restore
        from inferbox.registry.wiring import create_database, object_store

        create_database(settings.database_url)
        manifest = run_restore(settings.database_url, object_store(settings), archive, secrets_dir)
        count = asyncio.run(_with_registry(settings, lambda r: r.publish_all()))
        click.echo(
            f"restored {sum(manifest['tables'].values())} rows, {len(manifest['objects'])} "
            f"objects; {count} model(s) serving"
        )
