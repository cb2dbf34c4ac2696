"""Webhook signatures, the refusal of internal addresses (IPv4 ones inside IPv6 too), calls pinned
to the checked address, and the sender's bounded pool of concurrent deliveries."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import http.server
import ipaddress
import ssl
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from inferbox.jobs.sender import WebhookSender
from inferbox.jobs.store import Job
from inferbox.jobs.webhooks import (
    backoff_s,
    deliver,
    is_public,
    pinned_request,
    refusal,
    signature,
)

pytestmark = pytest.mark.unit


def test_signature_is_hmac_sha256_of_timestamp_and_body():
    expected = hmac.new(b"s3cret", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert signature("s3cret", "1700000000", b"{}") == "sha256=" + expected


def test_backoff_doubles_up_to_ten_minutes():
    assert [backoff_s(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert backoff_s(30) == 600


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:6379/",
        "http://localhost/hook",
        "http://10.1.2.3/",
        "http://192.168.0.10/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://0.0.0.0/",
    ],
)
async def test_internal_addresses_are_refused(url):
    # The reason names no address: it reaches the job's owner (no probing of internal names).
    reason = await refusal(url)
    assert "does not resolve to a public address" in reason
    assert httpx.URL(url).host in reason and reason.count(".") <= httpx.URL(url).host.count(".")


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::a00:5",  # NAT64 (well-known prefix) to 10.0.0.5
        "64:ff9b::7f00:1",  # ... to 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # ... to 169.254.169.254
        "64:ff9b:1::808:808",  # local-use NAT64: where the IPv4 address sits is unknown
        "2002:a00:5::1",  # 6to4 of 10.0.0.5
        "2002:c0a8:1::",  # 6to4 of 192.168.0.1
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
        "::ffff:10.0.0.5",  # IPv4-mapped
        "::ffff:127.0.0.1",
        "::a00:5",  # IPv4-compatible (deprecated)
        "::808:808",
        "fec0::1",  # site-local (deprecated)
        "fe80::1",
        "fd00::1",
        "ff02::1",
        "10.0.0.5",
        "100.64.0.1",
        "224.0.0.1",
    ],
)
def test_ipv4_addresses_inside_ipv6_are_judged_by_the_ipv4_address(address):
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    ["64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8", "2606:4700:4700::1111", "8.8.8.8"],
)
def test_public_addresses_pass_in_every_form(address):
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url", ["http://[64:ff9b::a00:5]/hook", "https://[2002:a00:5::1]/", "http://[::ffff:a00:5]/"]
)
async def test_nat64_and_other_ipv4_embeddings_of_internal_addresses_are_refused(url):
    # CPython (3.11) counts 64:ff9b::a00:5 as global; on a NAT64 network it reaches 10.0.0.5.
    assert ipaddress.ip_address("64:ff9b::a00:5").is_global
    assert "does not resolve to a public address" in await refusal(url)


async def test_public_addresses_pass_and_unresolvable_names_are_refused():
    assert await refusal("https://8.8.8.8/hook") is None
    assert await refusal("https://[64:ff9b::808:808]/hook") is None  # 8.8.8.8 through NAT64
    assert "does not resolve" in await refusal("https://no-such-host.invalid/hook")


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A certificate for ``name`` only (no IP address in it), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "hook.crt", folder / "hook.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture
def https_receiver(tmp_path):
    """An HTTPS server on 127.0.0.1 for ``hooks.example.test`` that records each request's
    Host header; yields (port, CA file, seen hosts)."""
    cert_file, key_file = _self_signed(tmp_path, "hooks.example.test")
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.headers["Host"])
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], cert_file, seen
    finally:
        server.shutdown()
        server.server_close()


def test_pinned_request_goes_to_the_checked_address_with_the_hosts_name_and_certificate(
    https_receiver,
):
    port, ca_file, seen = https_receiver
    # The name does not resolve at all: only the pinned address can reach the server.
    url = f"https://hooks.example.test:{port}/hook"
    target, headers, extensions = pinned_request(url, "127.0.0.1")
    assert target.host == "127.0.0.1" and headers == {"Host": f"hooks.example.test:{port}"}
    verify = ssl.create_default_context(cafile=str(ca_file))
    with httpx.Client(verify=verify) as client:
        response = client.post(target, content=b"{}", headers=headers, extensions=extensions)
        assert response.status_code == 204
        assert seen == [f"hooks.example.test:{port}"]
        # Without the SNI extension the certificate is checked against the address: refused.
        with pytest.raises(httpx.ConnectError):
            client.post(target, content=b"{}", headers=headers)


def test_pinned_request_keeps_plain_http_ports_and_brackets_ipv6():
    target, headers, extensions = pinned_request("http://example.com:8080/x?y=1", "2001:db8::1")
    assert str(target) == "http://[2001:db8::1]:8080/x?y=1"
    assert headers == {"Host": "example.com:8080"} and extensions == {}


@pytest.fixture
def tarpit():
    """A receiver that answers 200 with a 'huge' body dripped a byte every 0.2 s."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", str(4 << 30))
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()  # waits for the handler, which stops once the client is gone


def _job(url: str) -> Job:
    return Job(
        id=uuid.uuid4(),
        model="m",
        version=1,
        kind="request",
        input_key="k",
        max_attempts=1,
        retention_s=60,
        webhook_url=url,
        state="succeeded",
        created_at=datetime.datetime.now(datetime.UTC),
    )


async def test_a_delivery_reads_no_body_and_a_slow_receiver_cannot_hold_it(tarpit):
    url = f"http://127.0.0.1:{tarpit}/hook"
    async with httpx.AsyncClient(timeout=10) as client:
        started = time.perf_counter()
        assert await deliver(client, _job(url), "s", allow_private=True) is None
        assert time.perf_counter() - started < 2  # the 4 GiB body was never read

        class Slow(httpx.AsyncBaseTransport):
            """The real receiver, reached after a wait that httpx's per-read timeouts allow."""

            def __init__(self):
                self.inner = httpx.AsyncHTTPTransport()

            async def handle_async_request(self, request):
                await asyncio.sleep(5)
                return await self.inner.handle_async_request(request)

        async with httpx.AsyncClient(transport=Slow()) as slow:
            started = time.perf_counter()
            reason = await deliver(slow, _job(url), "s", allow_private=True, deadline_s=0.5)
            assert reason == "no answer within 0.5 s"
            assert time.perf_counter() - started < 2


@pytest.fixture
def receivers():
    """Two receivers on 127.0.0.1, ``fast`` (answers at once) and ``slow`` (after 3 s); yields
    their ports and each request's (path, monotonic time answered), and the most requests
    either had in hand at once."""
    answered: list[tuple[str, float]] = []
    in_hand = {"now": 0, "most": 0}
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        delay = 0.0

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                in_hand["now"] += 1
                in_hand["most"] = max(in_hand["most"], in_hand["now"])
            time.sleep(self.delay)
            with lock:
                in_hand["now"] -= 1
                answered.append((self.path, time.monotonic()))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    servers = {}
    for name, delay in (("fast", 0.0), ("slow", 3.0)):
        handler = type(f"{name.title()}Handler", (Handler,), {"delay": delay})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers[name] = server
    try:
        yield {n: s.server_address[1] for n, s in servers.items()}, answered, in_hand
    finally:
        for server in servers.values():
            server.shutdown()
            server.server_close()


async def test_a_slow_receiver_does_not_hold_up_the_others(receivers):
    ports, answered, in_hand = receivers
    due = [_job(f"http://127.0.0.1:{ports['slow']}/slow{i}") for i in range(2)]
    due += [_job(f"http://127.0.0.1:{ports['fast']}/fast{i}") for i in range(6)]
    outcomes: dict[uuid.UUID, str | None] = {}
    all_done = asyncio.Event()
    asked: list[int] = []

    async def claim(limit: int) -> list[Job]:
        asked.append(limit)
        taken, due[:limit] = due[:limit], []
        return taken

    async with httpx.AsyncClient(timeout=10) as client:

        async def send(job: Job) -> None:
            outcomes[job.id] = await deliver(client, job, "s", allow_private=True)
            if len(outcomes) == 8:
                all_done.set()

        sender = WebhookSender(claim, send, size=3, poll_s=0.1)
        stopping = asyncio.Event()
        started = time.monotonic()
        running = asyncio.create_task(sender.run(stopping))
        await asyncio.wait_for(all_done.wait(), timeout=10)
        stopping.set()
        await running
    assert len(outcomes) == 8 and set(outcomes.values()) == {None}
    # The two slow deliveries took two of the three slots; the six fast ones went through the
    # third, one after another, long before the slow receiver answered.
    fast = [at - started for path, at in answered if path.startswith("/fast")]
    slow = [at - started for path, at in answered if path.startswith("/slow")]
    assert len(fast) == 6 and max(fast) < 2.0 and min(slow) > 2.9, (fast, slow)
    # Never more in flight than the pool's size, and never more claimed than free slots.
    assert in_hand["most"] <= 3 and max(asked) <= 3
    assert asked[0] == 3


async def test_a_stopping_sender_lets_deliveries_finish_then_ends(receivers):
    ports, answered, _ = receivers
    due = [_job(f"http://127.0.0.1:{ports['slow']}/slow")]
    done: list[str | None] = []

    async def claim(limit: int) -> list[Job]:
        taken, due[:limit] = due[:limit], []
        return taken

    async with httpx.AsyncClient(timeout=10) as client:

        async def send(job: Job) -> None:
            done.append(await deliver(client, job, "s", allow_private=True))

        stopping = asyncio.Event()
        running = asyncio.create_task(WebhookSender(claim, send, size=2, poll_s=0.1).run(stopping))
        await asyncio.sleep(0.5)  # the delivery is in flight
        stopping.set()
        await asyncio.wait_for(running, timeout=10)
    assert done == [None] and len(answered) == 1
