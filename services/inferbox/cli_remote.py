"""CLI commands that talk to a running appliance over HTTP (``models``, ``alias``, ``infer``).

They read ``INFERBOX_URL``, ``INFERBOX_API_KEY`` and ``INFERBOX_CA_CERT`` (as written to
``.stack/env``), or take ``--url``/``--api-key``/``--ca-cert``.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from pathlib import Path

import click
import numpy as np

from inferbox.client import ApiError, InferboxClient

connection = [
    click.option(
        "--url", envvar="INFERBOX_URL", default="http://127.0.0.1:8000", show_default=True
    ),
    click.option("--api-key", envvar="INFERBOX_API_KEY", default=None),
    click.option("--ca-cert", envvar="INFERBOX_CA_CERT", default=None),
]


def with_client(func):
    """Give a command the connection options and an ``InferboxClient`` built from them."""

    @functools.wraps(func)
    def wrapper(url, api_key, ca_cert, **kwargs):
        client = InferboxClient(url, api_key=api_key, ca_cert=ca_cert)
        try:
            return func(client=client, **kwargs)
        except ApiError as exc:
            raise click.ClickException(f"{exc.status}: {exc.message}") from None
        finally:
            client.close()

    for option in reversed(connection):
        wrapper = option(wrapper)
    return wrapper


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in ``30d``, ``12h``, ``15m``, ``90s`` or ``90``."""
    match = DURATION.fullmatch(text.strip())
    if match is None or float(match[1]) <= 0:
        raise click.BadParameter(f"{text!r}: give a duration like 30d, 12h, 15m or 90s")
    return float(match[1]) * _UNIT_S[match[2]]


def register(main: click.Group, models: click.Group, keys: click.Group) -> None:
    """Attach the remote commands to the ``inferbox`` command and its groups."""

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
    def keys_create(client: InferboxClient, name, scopes, models_, expires_in, **limits) -> None:
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
        click.echo(
            f"created {created['id']} ({created['name']}); the key, shown only now:", err=True
        )
        click.echo(created["key"])

    @keys.command("ls")
    @with_client
    def keys_ls(client: InferboxClient) -> None:
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
        click.echo(_table(rows, ["ID", "NAME", "SCOPES", "MODELS", "LIMITS", "EXPIRES", "STATE"]))

    @keys.command("revoke")
    @click.argument("key_id", metavar="ID")
    @with_client
    def keys_revoke(client: InferboxClient, key_id: str) -> None:
        """Revoke key ID (refused everywhere within a second)."""
        client.revoke_key(key_id)
        click.echo(f"revoked {key_id}")

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
    def ls(client: InferboxClient) -> None:
        """List models, their versions and aliases."""
        rows = [
            [
                m["name"],
                ",".join(str(v) for v in m["versions"]),
                ",".join(f"{a}={v}" for a, v in sorted(m["aliases"].items())),
            ]
            for m in client.models()
        ]
        click.echo(_table(rows, ["MODEL", "VERSIONS", "ALIASES"]))

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
    def rm(client: InferboxClient, name: str, version: int, force: bool) -> None:
        """Delete one version of a model."""
        client.delete_version(name, version, force=force)
        click.echo(f"deleted {name} version {version}")

    @main.group()
    def alias() -> None:
        """Aliases (production, canary, any name) pointing at versions."""

    @alias.command("set")
    @click.argument("name")
    @click.argument("alias_name", metavar="ALIAS")
    @click.argument("version", type=int)
    @with_client
    def alias_set(client: InferboxClient, name: str, alias_name: str, version: int) -> None:
        """Point ALIAS of model NAME at VERSION."""
        client.set_alias(name, alias_name, version)
        click.echo(f"{name}: {alias_name} -> {version}")

    @alias.command("rm")
    @click.argument("name")
    @click.argument("alias_name", metavar="ALIAS")
    @with_client
    def alias_rm(client: InferboxClient, name: str, alias_name: str) -> None:
        """Remove ALIAS of model NAME."""
        client.delete_alias(name, alias_name)
        click.echo(f"{name}: {alias_name} removed")

    @main.command("infer")
    @click.argument("name")
    @click.option(
        "--input",
        "inputs",
        multiple=True,
        required=True,
        help="NAME=file.npy, or a .npz/.json file holding every input by name",
    )
    @click.option("--version", default=None, help="version number or alias")
    @with_client
    def infer(client: InferboxClient, name: str, inputs: tuple[str, ...], version: str | None):
        """Run model NAME once and print its outputs as JSON."""
        feeds: dict[str, np.ndarray] = {}
        for item in inputs:
            feeds.update(_load_inputs(item))
        outputs = client.infer(name, feeds, version=version)
        json.dump(
            {k: {"shape": list(v.shape), "data": v.tolist()} for k, v in outputs.items()},
            sys.stdout,
            default=lambda x: x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x),
        )
        click.echo()


def _load_inputs(item: str) -> dict[str, np.ndarray]:
    if "=" in item:
        input_name, path = item.split("=", 1)
        return {input_name: np.load(path, allow_pickle=False)}
    path = Path(item)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        return {
            k: np.asarray(v, dtype=np.float32 if _is_float(v) else None) for k, v in data.items()
        }
    raise click.BadParameter(f"{item}: give NAME=file.npy, a .npz or a .json file")


def _is_float(value) -> bool:
    array = np.asarray(value)
    return array.dtype.kind == "f"
