"""Completion webhooks: a signed POST to the URL a job named, retried with backoff.

The body is JSON (``job_id``, ``state``, ``model``, ``version``, ``error``, ``finished_at``).
With ``Settings.jobs_webhook_secret`` set, ``X-Inferbox-Signature`` is ``sha256=<hex>``, the
HMAC-SHA256 of ``<X-Inferbox-Timestamp>.<body>`` under that secret: a receiver recomputes it,
compares in constant time, and rejects old timestamps to stop replays.

Unless ``Settings.jobs_webhook_allow_private`` is set, a URL whose host resolves to a private,
loopback or link-local address is refused, so a job cannot make the appliance call its own
internal services (``is_public`` says which addresses pass, IPv6 forms that carry an IPv4 address
included). The request then goes to the address that was checked (the URL's host stays in
``Host`` and in TLS's SNI and certificate check): a name that resolves to another address a
moment later (DNS rebinding) cannot slip past the check.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import time

import httpx
import msgspec

from inferbox.jobs.store import Job

EVENT = "job.finished"
_MAX_BACKOFF_S = 600.0


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``timestamp.body`` under ``secret``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def payload(job: Job) -> bytes:
    """The JSON body announcing a finished job."""
    return msgspec.json.encode(
        {
            "event": EVENT,
            "job_id": str(job.id),
            "state": job.state,
            "model": job.model,
            "version": job.version,
            "error": job.error,
            "finished_at": job.finished_at,
        }
    )


def backoff_s(attempts: int) -> float:
    """Wait before the next try after ``attempts`` failed ones: 1 s, 2 s, 4 s ... up to 10 min."""
    return min(_MAX_BACKOFF_S, 2.0 ** max(attempts - 1, 0))


class Refused(Exception):
    """The webhook URL may not be called; the message says why."""


_EMBEDDED_IPV4_NETWORKS = (
    ipaddress.IPv6Network("::ffff:0:0/96"),  # IPv4-mapped: the socket speaks IPv4 to it
    ipaddress.IPv6Network("64:ff9b::/96"),  # NAT64's well-known prefix (RFC 6052)
    ipaddress.IPv6Network("2002::/16"),  # 6to4 (RFC 3056): bits 16-47
)
"""IPv6 ranges whose addresses carry an IPv4 address at a known place: what they reach is that
IPv4 address (a NAT64 gateway turns ``64:ff9b::a00:5`` into 10.0.0.5)."""

_REFUSED_V6 = (
    # Local-use NAT64 (RFC 8215): where the IPv4 address sits depends on the prefix length the
    # network chose, so it cannot be checked.
    ipaddress.IPv6Network("64:ff9b:1::/48"),
    ipaddress.IPv6Network("2001::/32"),  # Teredo: the client's IPv4 address is obfuscated
    ipaddress.IPv6Network("::/96"),  # IPv4-compatible (deprecated), unspecified, loopback
    ipaddress.IPv6Network("fec0::/10"),  # site-local (deprecated)
)
"""IPv6 ranges refused outright, whatever CPython's ``is_global`` says of them."""


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether a webhook may be sent to ``address``: a global unicast address, neither private,
    loopback, link-local nor reserved.

    An IPv6 address that embeds an IPv4 one at a known place (IPv4-mapped ``::ffff:0:0/96``,
    NAT64's well-known ``64:ff9b::/96``, 6to4 ``2002::/16``) passes only when that IPv4
    address itself passes: ``64:ff9b::808:808`` (8.8.8.8 through NAT64) does, ``64:ff9b::a00:5``
    (10.0.0.5) does not, although CPython counts both as global. The forms whose IPv4 address
    cannot be checked are refused outright: local-use NAT64 (``64:ff9b:1::/48``), Teredo
    (``2001::/32``), IPv4-compatible (``::/96``) and site-local (``fec0::/10``) addresses."""
    if isinstance(address, ipaddress.IPv6Address):
        if any(address in network for network in _REFUSED_V6):
            return False
        for network in _EMBEDDED_IPV4_NETWORKS:
            if address in network:
                embedded = address.sixtofour or ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
                return is_public(embedded)
    return address.is_global and not address.is_multicast


async def public_address(url: str) -> str:
    """The address to call for ``url``'s host, once every address it resolves to is public;
    raises ``Refused`` for a private, loopback, link-local or otherwise internal one."""
    host = httpx.URL(url).host
    # The messages reach the job's owner: they say what is wrong, never what an internal name
    # resolves to (that would make webhooks a probe of the backend's names).
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None)
    except OSError:
        raise Refused(f"{host!r} does not resolve to a public address") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    for address in addresses:
        if not is_public(address):
            raise Refused(f"{host!r} does not resolve to a public address")
    return str(addresses[0])


async def refusal(url: str) -> str | None:
    """Why ``url`` may not be called, or None."""
    try:
        await public_address(url)
    except Refused as exc:
        return str(exc)
    return None


def pinned_request(url: str, address: str) -> tuple[httpx.URL, dict[str, str], dict]:
    """``url`` aimed at ``address``: the URL to connect to, the ``Host`` header, and the
    request extensions that keep TLS's SNI and certificate check on the original host."""
    original = httpx.URL(url)
    headers = {"Host": original.netloc.decode("ascii")}
    extensions = {"sni_hostname": original.host} if original.scheme == "https" else {}
    return original.copy_with(host=address), headers, extensions


DELIVERY_DEADLINE_S = 30.0
"""Longest one delivery may take, all of it (httpx's timeouts are per read: a receiver that
drips a byte at a time would otherwise hold it for ever)."""


async def deliver(
    client: httpx.AsyncClient,
    job: Job,
    secret: str,
    *,
    allow_private: bool = False,
    deadline_s: float = DELIVERY_DEADLINE_S,
) -> str | None:
    """POST the job's completion to its webhook; None on a 2xx answer, else why it failed.

    Only the status line and headers of the answer are read, never its body, within
    ``deadline_s`` in all."""
    target, extra, extensions = httpx.URL(job.webhook_url), {}, {}
    if not allow_private:
        try:
            address = await public_address(job.webhook_url)
        except Refused as exc:
            return str(exc)
        target, extra, extensions = pinned_request(job.webhook_url, address)
    body = payload(job)
    timestamp = str(int(time.time()))
    headers = {
        **extra,
        "Content-Type": "application/json",
        "User-Agent": "inferbox-webhook",
        "X-Inferbox-Event": EVENT,
        "X-Inferbox-Job-Id": str(job.id),
        "X-Inferbox-Timestamp": timestamp,
    }
    if secret:
        headers["X-Inferbox-Signature"] = signature(secret, timestamp, body)
    request = client.build_request(
        "POST", target, content=body, headers=headers, extensions=extensions
    )
    try:
        async with asyncio.timeout(deadline_s):
            response = await client.send(request, stream=True)
            await response.aclose()  # the body is never read
    except TimeoutError:
        return f"no answer within {deadline_s:g} s"
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"[:500]
    if 200 <= response.status_code < 300:
        return None
    return f"answered {response.status_code}"
