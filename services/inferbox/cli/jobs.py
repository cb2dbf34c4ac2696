"""``inferbox jobs ...``: submit async jobs, follow them, fetch results, cancel.

Like the other remote commands they read ``INFERBOX_URL``, ``INFERBOX_API_KEY`` and
``INFERBOX_CA_CERT`` (or take ``--url``/``--api-key``/``--ca-cert``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

from inferbox.cli.output import echo_json, table
from inferbox.cli.parsing import load_inputs, parse_duration
from inferbox.cli.remote import with_client
from inferbox.client import InferboxClient

_FILE_SUFFIXES = (".npy", ".npz", ".jsonl", ".ndjson")


def _follow(client: InferboxClient, job_id: str, timeout_s: float | None) -> dict:
    """Follow a job with a progress bar on stderr; its final state."""
    with click.progressbar(length=1000, label=f"job {job_id[:8]}", file=sys.stderr) as bar:
        shown = 0

        def advance(job: dict) -> None:
            nonlocal shown
            target = int(job["progress"] * 1000)
            if target > shown:
                bar.update(target - shown)
                shown = target

        job = client.wait_job(job_id, on_progress=advance, timeout_s=timeout_s)
    return job


def _finish(job: dict) -> None:
    echo_json(job)
    if job["state"] != "succeeded":
        raise click.ClickException(f"job {job['id']} {job['state']}: {job.get('error') or ''}")


@click.group("jobs")
def jobs() -> None:
    """Async jobs: submit, status, wait, result, cancel, ls."""


@jobs.command("submit")
@click.argument("name")
@click.option(
    "--input",
    "inputs",
    multiple=True,
    help="NAME=file.npy, or a .npz/.json file holding every input by name (one request)",
)
@click.option(
    "--file",
    "input_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="a .npy, .npz or JSON-lines file processed in chunks (uploaded first)",
)
@click.option("--version", default=None, help="version number or alias")
@click.option("--idempotency-key", default=None, help="submitting again returns the same job")
@click.option("--webhook", default=None, help="URL called (signed) when the job ends")
@click.option("--retention", default=None, help="how long to keep the result, e.g. 2d")
@click.option("--wait", "wait_", is_flag=True, help="follow the job until it ends")
@with_client
def submit(
    client: InferboxClient,
    name: str,
    inputs: tuple[str, ...],
    input_file: Path | None,
    version: str | None,
    idempotency_key: str | None,
    webhook: str | None,
    retention: str | None,
    wait_: bool,
) -> None:
    """Queue a job for model NAME; prints its id (and, with --wait, its end state)."""
    if bool(inputs) == bool(input_file):
        raise click.UsageError("give --input (one request) or --file (a bulk input file)")
    options = {
        "version": version,
        "idempotency_key": idempotency_key,
        "webhook_url": webhook,
        "retention_s": int(parse_duration(retention)) if retention else None,
    }
    if input_file is not None:
        if input_file.suffix.lower() not in _FILE_SUFFIXES:
            raise click.BadParameter(f"{input_file}: give a {', '.join(_FILE_SUFFIXES)} file")
        uploaded = client.upload_job_input(input_file)
        click.echo(f"uploaded {uploaded['rows']} rows as {uploaded['input_id']}", err=True)
        accepted = client.submit_job(name, input_id=uploaded["input_id"], **options)
    else:
        feeds: dict[str, np.ndarray] = {}
        for item in inputs:
            feeds.update(load_inputs(item))
        accepted = client.submit_job(name, inputs=feeds, **options)
    if not wait_:
        echo_json(accepted)
        return
    _finish(_follow(client, accepted["job_id"], None))


@jobs.command("status")
@click.argument("job_id")
@with_client
def status(client: InferboxClient, job_id: str) -> None:
    """Show a job's state, progress, attempts and error."""
    echo_json(client.job(job_id))


@jobs.command("wait")
@click.argument("job_id")
@click.option("--timeout", default=None, help="give up after this long, e.g. 10m")
@with_client
def wait(client: InferboxClient, job_id: str, timeout: str | None) -> None:
    """Follow a job with a progress bar until it ends; fails unless it succeeded."""
    _finish(_follow(client, job_id, parse_duration(timeout) if timeout else None))


@jobs.command("result")
@click.argument("job_id")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write the outputs to this .npz file instead of printing JSON",
)
@with_client
def result(client: InferboxClient, job_id: str, out: Path | None) -> None:
    """Fetch a finished job's outputs."""
    outputs = client.job_result(job_id)
    if out is not None:
        np.savez(out, **outputs)
        click.echo(f"wrote {', '.join(outputs)} to {out}", err=True)
        return
    echo_json({k: {"shape": list(v.shape), "data": v.tolist()} for k, v in outputs.items()})


@jobs.command("cancel")
@click.argument("job_id")
@with_client
def cancel(client: InferboxClient, job_id: str) -> None:
    """Cancel a queued or running job."""
    echo_json(client.cancel_job(job_id))


@jobs.command("ls")
@click.option("--state", default=None)
@click.option("--model", default=None)
@click.option("--limit", default=50, show_default=True)
@with_client
def list_jobs(client: InferboxClient, state: str | None, model: str | None, limit: int) -> None:
    """List jobs, newest first."""
    page = client.jobs(state=state, model=model, limit=limit)
    rows = [
        [
            j["id"],
            j["model"],
            j["version"],
            j["state"],
            f"{j['progress']:.0%}",
            j["attempts"],
            j["created_at"],
        ]
        for j in page["jobs"]
    ]
    click.echo(table(rows, ["ID", "MODEL", "VERSION", "STATE", "PROGRESS", "ATTEMPTS", "CREATED"]))
