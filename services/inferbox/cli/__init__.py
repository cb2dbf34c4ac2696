"""The ``inferbox`` command: run the API or a worker, and manage the model catalog.

Each noun has its own module (``models.py``: ``inferbox models ...``, local and remote
commands together); this module only makes the root group and adds them to it.
"""

from __future__ import annotations

import click

from inferbox.cli.alias import alias
from inferbox.cli.backup import backup, restore
from inferbox.cli.database import db, migrate
from inferbox.cli.infer import infer
from inferbox.cli.jobs import jobs
from inferbox.cli.keys import keys
from inferbox.cli.models import models
from inferbox.cli.serve import api, grpc_server, ray_worker, webhooks, worker
from inferbox.cli.storage import s3
from inferbox.config import Settings

__all__ = ["main"]


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """inferbox: ONNX models over the KServe V2 protocol, batched on resident workers."""
    ctx.obj = Settings()


main.add_command(api)
main.add_command(grpc_server)
main.add_command(worker)
main.add_command(ray_worker)
main.add_command(webhooks)
main.add_command(migrate)
main.add_command(db)
main.add_command(s3)
main.add_command(models)
main.add_command(alias)
main.add_command(infer)
main.add_command(keys)
main.add_command(jobs)
main.add_command(backup)
main.add_command(restore)
