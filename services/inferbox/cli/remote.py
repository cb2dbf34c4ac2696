"""The connection to a running appliance that the remote commands share.

They read ``INFERBOX_URL``, ``INFERBOX_API_KEY`` and ``INFERBOX_CA_CERT`` (as written to
``.stack/env``), or take ``--url``/``--api-key``/``--ca-cert``.
"""

from __future__ import annotations

import functools

import click

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
