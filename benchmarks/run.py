"""``scripts/bench``: raw ONNX Runtime vs a plain FastAPI server vs inferbox, on one machine.

For a tiny model (mlp) and a compute-heavy one (conv net), with JSON and with binary tensors, at
several concurrencies (one row per request), it measures:

1. raw ONNX Runtime in-process (the ceiling): rows/s at batch 1 and 64, p50 at batch 1;
2. ``benchmarks/plain_server.py`` (FastAPI + uvicorn, one process, ``session.run`` inline);
3. inferbox through its API (a worker and the gunicorn API, started here under a unique prefix).

Load comes from ``wrk`` with ``benchmarks/requests.lua``. Every server's answer is checked
against ONNX Runtime's before it is measured, and any non-2xx answer or socket error fails the
run. The inferbox worker's ``inferbox_batch_size`` histogram is scraped around each run. The
Markdown report goes to ``benchmarks/results/latest.md`` and between the markers of
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
import redis
from prometheus_client.parser import text_string_to_metric_families

from inferbox.testing.onnx_models import conv_net, mlp

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LUA = ROOT / "benchmarks" / "requests.lua"
DOC = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "benchmarks" / "results" / "latest.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
INFERBOX = (sys.executable, "-m", "inferbox")
"""The inferbox command line (``python -m``: no console script needed where wheels were unpacked)."""
POSTGRES_URL = os.environ.get("INFERBOX_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
"""The PostgreSQL server in which each inferbox run creates (and drops) its own database."""
WRK_THREADS = int(os.environ.get("INFERBOX_BENCH_WRK_THREADS", "1"))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    """A check failed: the run stops and says why."""


class SocketErrors(BenchError):
    """wrk saw socket errors (no non-2xx): the point is retried once, then the run stops."""


# --- models and request bodies --------------------------------------------------------------


@dataclass(frozen=True)
class Model:
    name: str
    kind: str
    input: str
    output: str
    row: tuple[int, ...]
    build: Callable[[Path], Path]
    datatype: str = "FP32"
    """The input's V2 datatype (the output is FP32)."""


MODELS = (
    Model("mlp", "tiny", "x", "y", (64,), mlp),
    Model("conv", "compute-heavy", "image", "logits", (3, 64, 64), conv_net),
)
ENCODINGS = ("json", "binary")


@dataclass(frozen=True)
class Body:
    path: Path
    content_type: str
    header_length: int | None


def build_body(model: Model, encoding: str, row: np.ndarray, folder: Path) -> Body:
    """One request of one row, as a V2 JSON body or a Triton binary-extension body."""
    tensor = {"name": model.input, "shape": list(row.shape), "datatype": model.datatype}
    path = folder / f"{model.name}-{encoding}.body"
    if encoding == "json":
        tensor["data"] = row.ravel().tolist()
        path.write_bytes(json.dumps({"inputs": [tensor]}).encode())
        return Body(path, "application/json", None)
    raw = row.tobytes()
    tensor["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps(
        {
            "inputs": [tensor],
            "outputs": [{"name": model.output, "parameters": {"binary_data": True}}],
        }
    ).encode()
    path.write_bytes(header + raw)
    return Body(path, "application/octet-stream", len(header))


def post(port: int, model: Model, body: Body, auth: str = "") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": body.content_type}
        if body.header_length is not None:
            headers["Inference-Header-Content-Length"] = str(body.header_length)
        if auth:
            headers["Authorization"] = auth
        conn.request("POST", f"/v2/models/{model.name}/infer", body.path.read_bytes(), headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def decode_output(
    model: Model, headers: dict[str, str], payload: bytes, binary: bool
) -> np.ndarray:
    length = headers.get("inference-header-content-length")
    if binary and length is None:
        raise BenchError("asked for a binary output, got no Inference-Header-Content-Length")
    split = int(length) if length is not None else len(payload)
    header = json.loads(payload[:split])
    offset = split
    for out in header["outputs"]:
        size = out.get("parameters", {}).get("binary_data_size")
        if out["name"] == model.output:
            if size is None:
                array = np.asarray(out["data"], dtype=np.float32)
            else:
                array = np.frombuffer(payload[offset : offset + size], dtype=np.float32)
            return array.reshape(out["shape"])
        offset += size or 0
    raise BenchError(f"no output {model.output!r} in {header}")


def verify(
    port: int,
    model: Model,
    encoding: str,
    body: Body,
    expected: np.ndarray,
    auth: str = "",
    tolerance: float = 1e-4,
) -> None:
    """Check one answer against ONNX Runtime in-process before measuring a server."""
    status, headers, payload = post(port, model, body, auth)
    if status != 200:
        raise BenchError(f"{model.name}/{encoding} on :{port}: HTTP {status}: {payload[:300]!r}")
    got = decode_output(model, headers, payload, encoding == "binary")
    if got.shape != expected.shape or not np.allclose(
        got, expected, rtol=tolerance, atol=tolerance / 10
    ):
        raise BenchError(f"{model.name}/{encoding} on :{port}: wrong answer {got} != {expected}")


# --- raw ONNX Runtime -----------------------------------------------------------------------


def raw_ort(path: Path, model: Model, seconds: float) -> dict[str, float]:
    """rows/s at batch 1 and 64 (session.run in a loop) and p50 latency at batch 1."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    result: dict[str, float] = {}
    for batch in (1, 64):
        feed = {model.input: rng.standard_normal((batch, *model.row)).astype(np.float32)}
        for _ in range(5):
            session.run(None, feed)
        times = []
        start = time.perf_counter()
        while (now := time.perf_counter()) - start < seconds:
            session.run(None, feed)
            times.append(time.perf_counter() - now)
        elapsed = time.perf_counter() - start
        result[f"b{batch}_rows_s"] = batch * len(times) / elapsed
        if batch == 1:
            result["b1_p50_ms"] = float(np.percentile(times, 50)) * 1000
    result["best_rows_s"] = max(result["b1_rows_s"], result["b64_rows_s"])
    return result


def measure_raw(
    path: Path, model: Model, args: argparse.Namespace, earlier: dict[str, float] | None
) -> dict[str, float]:
    r = raw_ort(path, model, max(1.0, min(args.duration / 2, 4.0)))
    log(
        f"raw ORT {model.name}: batch 1 {r['b1_rows_s']:.0f} rows/s "
        f"(p50 {r['b1_p50_ms']:.3f} ms), batch 64 {r['b64_rows_s']:.0f} rows/s"
    )
    if earlier is None:
        return r
    best = {k: max(r[k], earlier[k]) for k in r}
    best["b1_p50_ms"] = min(r["b1_p50_ms"], earlier["b1_p50_ms"])
    best["runs"] = [earlier["best_rows_s"], r["best_rows_s"]]
    return best


# --- wrk --------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    log("wrk is missing: apt-get install -y wrk")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env)
    found = shutil.which("wrk")
    if not found:
        raise BenchError("wrk did not install")
    return found


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_s: float


def run_wrk(
    wrk: str, port: int, model: Model, body: Body, conns: int, seconds: float, auth: str = ""
) -> WrkResult:
    url = f"http://127.0.0.1:{port}/v2/models/{model.name}/infer"
    cmd = [
        wrk,
        f"-t{min(WRK_THREADS, conns)}",
        f"-c{conns}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "30s",
    ]
    cmd += ["-s", str(LUA), url, "--", str(body.path), body.content_type]
    cmd += [str(body.header_length or ""), auth]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = proc.stdout
    line = re.search(r"^BENCH (.*)$", out, re.MULTILINE)
    if proc.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({proc.returncode}):\n{out}\n{proc.stderr}")
    fields = {k: float(v) for k, v in (kv.split("=") for kv in line.group(1).split())}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = {k: int(fields[k]) for k in ("connect", "read", "write", "status", "timeout")}
    if non2xx or errors["status"]:
        raise BenchError(f"{url} c={conns}: non-2xx answers: {non2xx and non2xx.group(1)}\n{out}")
    if any(errors.values()):
        raise SocketErrors(
            f"{url} c={conns}: errors {errors}, non-2xx {non2xx and non2xx.group(1)}\n{out}"
        )
    requests = int(fields["requests"])
    if requests == 0:
        raise BenchError(f"{url} c={conns}: no request finished\n{out}")
    elapsed = fields["duration_us"] / 1e6
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return WrkResult(
        requests=requests,
        seconds=elapsed,
        rps=requests / elapsed,
        p50_ms=fields["p50_us"] / 1000,
        p99_ms=fields["p99_us"] / 1000,
        cpu_s=cpu,
    )


# --- processes, CPU time, metrics -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (gunicorn's workers under the master)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(parts[11]) + int(parts[12])) / CLK_TCK  # utime, stime
    return total


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def drop_database(name: str) -> None:
    """Drop a run's database on ``POSTGRES_URL`` (nothing when the server is gone)."""
    import psycopg

    try:
        with psycopg.connect(
            f"{POSTGRES_URL}/postgres", autocommit=True, connect_timeout=5
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except psycopg.Error as exc:
        log(f"could not drop database {name}: {exc}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until(what: str, check: Callable[[], bool], procs: list[subprocess.Popen], timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise BenchError(f"{what}: {proc.args[:3]} exited with {proc.returncode}")
        try:
            if check():
                return
        except (OSError, http.client.HTTPException, BenchError):
            pass
        time.sleep(0.25)
    raise BenchError(f"{what}: not ready after {timeout:.0f} s")


def http_status(url: str, auth: str = "") -> int:
    request = urllib.request.Request(url, headers={"Authorization": auth} if auth else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def scrape_batches(port: int) -> dict[str, dict[str, float]]:
    """``inferbox_batch_size`` per model: cumulative bucket counts, sum and count."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "inferbox_batch_size":
            continue
        for sample in family.samples:
            entry = found.setdefault(sample.labels["model"], {})
            if sample.name.endswith("_bucket"):
                entry[f"le{float(sample.labels['le']):g}"] = sample.value
            elif sample.name.endswith("_sum"):
                entry["sum"] = sample.value
            elif sample.name.endswith("_count"):
                entry["count"] = sample.value
    return found


def batch_delta(before: dict, after: dict, model: str) -> dict:
    a, b = after.get(model, {}), before.get(model, {})
    delta = {k: a.get(k, 0.0) - b.get(k, 0.0) for k in a}
    count = delta.get("count", 0.0)
    per_bucket, previous = [], 0.0
    for le in BUCKETS:
        cumulative = delta.get(f"le{le:g}", 0.0)
        per_bucket.append(round(cumulative - previous))
        previous = cumulative
    return {
        "batches": int(count),
        "mean": delta.get("sum", 0.0) / count if count else 0.0,
        "buckets": per_bucket,
    }


# --- the servers ------------------------------------------------------------------------------


@dataclass
class Point:
    server: str
    model: str
    encoding: str
    conns: int
    wrk: WrkResult
    cpu_us: dict[str, float] = field(default_factory=dict)
    batch: dict | None = None


class Server:
    name = ""
    port = 0
    log_path: Path | None = None
    auth = ""
    """The Authorization header value the server wants ("" for none)."""

    def log_to(self, folder: Path) -> dict:
        """Send the server's output to a file, shown when the run fails."""
        self.log_path = folder / f"{self.name}.log"
        return {"stdout": self.log_path.open("ab"), "stderr": subprocess.STDOUT}

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- last lines of the {self.name} server's output ---\n" + "\n".join(tail)

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def cpu(self) -> dict[str, float]: ...
    def before(self) -> None: ...
    def batch(self, model: str) -> dict | None:
        return None


class PlainServer(Server):
    name = "plain"

    def __init__(self, repo: Path):
        self.repo = repo
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "benchmarks")]
        cmd += ["plain_server:app", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--loop", "uvloop", "--http", "httptools", "--no-access-log"]
        cmd += ["--log-level", "warning"]
        env = {**os.environ, "PLAIN_MODEL_REPOSITORY": str(self.repo)}
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, **self.log_to(self.repo.parent))
        log(f"plain server pid {self.proc.pid} on :{self.port}")

        def listening() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        wait_until("plain server", listening, [self.proc], 60)

    def stop(self) -> None:
        if self.proc:
            stop(self.proc)

    def cpu(self) -> dict[str, float]:
        return {"server": cpu_seconds([self.proc.pid])}


class InferboxServer(Server):
    name = "inferbox"
    worker_command: tuple[str, ...] = ("worker",)
    """The ``inferbox`` subcommand serving the queues (``benchmarks/ray_actors.py`` swaps it)."""
    limited_key = False
    """Call with a key made over the API, which gets the appliance's default per-key limits
    (a Redis script call per request), instead of the bootstrap admin key (no limits)."""

    def __init__(
        self,
        repo: Path,
        client: redis.Redis,
        redis_url: str,
        cache: Path,
        models: tuple[Model, ...] = MODELS,
    ):
        self.repo, self.client, self.cache, self.models = repo, client, cache, models
        self.prefix = f"bench-{uuid.uuid4().hex[:10]}"
        self.database = self.prefix.replace("-", "_")
        self.redis_url = redis_url
        self.procs: list[subprocess.Popen] = []
        self._before: dict = {}

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "INFERBOX_REDIS_URL": self.redis_url,
            "INFERBOX_KEY_PREFIX": self.prefix,
            "INFERBOX_LOG_LEVEL": "WARNING",
            "INFERBOX_API_BIND": f"127.0.0.1:{self.port}",
            "INFERBOX_WORKER_METRICS_PORT": str(self.metrics_port),
            "INFERBOX_WORKER_CACHE_DIR": str(self.cache),
            "INFERBOX_DATABASE_URL": f"{POSTGRES_URL}/{self.database}",
            "INFERBOX_S3_ENDPOINT": f"127.0.0.1:{self.s3_port}",
            "INFERBOX_S3_ACCESS_KEY": "bench",
            "INFERBOX_S3_SECRET_KEY": "bench-secret",
            "INFERBOX_S3_REGION": "us-east-1",
            "INFERBOX_S3_BUCKET": self.prefix,
            "INFERBOX_UPLOAD_DIR": str(self.cache.parent / "uploads"),
        }

    def start(self) -> None:
        self.port, self.metrics_port, self.s3_port = free_port(), free_port(), free_port()
        env = self.env()
        logs = self.log_to(self.cache.parent)
        # The registry's parts: an S3 server for the model files, a fresh database.
        self.s3 = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.s3_port)],
            **logs,
        )
        self.procs = [self.s3]
        wait_until(
            "the S3 server",
            lambda: http_status(f"http://127.0.0.1:{self.s3_port}/") == 200,
            self.procs,
            30,
        )
        subprocess.run([*INFERBOX, "migrate"], env=env, check=True, capture_output=True)
        subprocess.run([*INFERBOX, "models", "import", str(self.repo)], env=env, check=True)
        key_file = self.cache.parent / "admin-key"
        subprocess.run(
            [*INFERBOX, "keys", "bootstrap", "--file", str(key_file)],
            env=env,
            check=True,
            capture_output=True,
        )
        self.auth = f"Bearer {key_file.read_text().strip()}"
        self.worker = subprocess.Popen([*INFERBOX, *self.worker_command], env=env, cwd=ROOT, **logs)
        self.api = subprocess.Popen([*INFERBOX, "api"], env=env, cwd=ROOT, **logs)
        self.procs += [self.worker, self.api]
        log(
            f"inferbox prefix {self.prefix}: worker pid {self.worker.pid} "
            f"(metrics :{self.metrics_port}), api pid {self.api.pid} on :{self.port}"
        )
        for model in self.models:
            url = f"http://127.0.0.1:{self.port}/v2/models/{model.name}/ready"
            wait_until(
                f"inferbox {model.name}",
                lambda u=url: http_status(u, self.auth) == 200,
                self.procs,
                120,
            )
        if self.limited_key:
            request = urllib.request.Request(
                f"http://127.0.0.1:{self.port}/v1/keys",
                data=json.dumps({"name": "bench", "scopes": ["infer"]}).encode(),
                headers={"Authorization": self.auth, "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=30) as answer:
                created = json.load(answer)
            self.auth = f"Bearer {created['key']}"
            log(
                f"calls with key {created['id']}: rate {created['rate_per_s']}/s, "
                f"concurrency {created['max_concurrency']}"
            )

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)
        keys = list(self.client.scan_iter(match=f"{self.prefix}:*", count=1000))
        if keys:
            self.client.delete(*keys)
        log(f"deleted {len(keys)} Redis key(s) under {self.prefix}:")
        drop_database(self.database)

    def cpu(self) -> dict[str, float]:
        return {
            "api": cpu_seconds(process_tree(self.api.pid)),
            "worker": cpu_seconds([self.worker.pid]),
            "redis": redis_cpu(self.client),
        }

    def before(self) -> None:
        self._before = scrape_batches(self.metrics_port)

    def batch(self, model: str) -> dict | None:
        return batch_delta(self._before, scrape_batches(self.metrics_port), model)


def measure(
    retries: list[str],
    server: Server,
    wrk: str,
    bodies: dict[tuple[str, str], Body],
    expected: dict[str, np.ndarray],
    concurrency: list[int],
    args: argparse.Namespace,
) -> list[Point]:
    points = []
    for model in MODELS:
        for encoding in ENCODINGS:
            body = bodies[model.name, encoding]
            verify(server.port, model, encoding, body, expected[model.name], server.auth)
            for conns in concurrency:
                for attempt in (1, 2):
                    try:
                        if args.warmup > 0:
                            run_wrk(wrk, server.port, model, body, conns, args.warmup, server.auth)
                        server.before()
                        cpu_before = server.cpu()
                        result = run_wrk(
                            wrk, server.port, model, body, conns, args.duration, server.auth
                        )
                        cpu_after = server.cpu()
                        break
                    except SocketErrors as exc:
                        if attempt == 2:
                            raise
                        log(f"RETRYING after socket errors: {str(exc).splitlines()[0]}")
                        retries.append(f"{server.name} {model.name}/{encoding} c={conns}")
                cpu_us = {
                    k: (cpu_after[k] - cpu_before[k]) / result.requests * 1e6 for k in cpu_after
                }
                cpu_us["wrk"] = result.cpu_s / result.requests * 1e6
                point = Point(server.name, model.name, encoding, conns, result, cpu_us)
                point.batch = server.batch(model.name)
                points.append(point)
                mean = f", mean batch {point.batch['mean']:.1f}" if point.batch else ""
                log(
                    f"{server.name:8} {model.name:4} {encoding:6} c={conns:<3} "
                    f"{result.rps:8.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
                    f"p99 {result.p99_ms:7.2f} ms{mean}"
                )
    return points


def measure_server(
    retries: list[str],
    server: Server,
    wrk: str,
    bodies: dict[tuple[str, str], Body],
    expected: dict[str, np.ndarray],
    concurrency: list[int],
    args: argparse.Namespace,
) -> list[Point]:
    """Start ``server``, ``measure`` it, stop it (printing its log's tail if it failed)."""
    try:
        server.start()
        return measure(retries, server, wrk, bodies, expected, concurrency, args)
    except BaseException:
        print(server.log_tail(), file=sys.stderr)
        raise
    finally:
        server.stop()


def model_inputs(
    repo: Path, folder: Path, encodings: tuple[str, ...] = ENCODINGS
) -> tuple[dict[tuple[str, str], Body], dict[str, np.ndarray]]:
    """Each model built into ``repo``, a request body per encoding (files in ``folder``) and
    ONNX Runtime's answer to it."""
    rng = np.random.default_rng(0)
    bodies, expected = {}, {}
    for model in MODELS:
        path = model.build(repo / model.name / "1" / "model.onnx")
        row = rng.standard_normal((1, *model.row)).astype(np.float32)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        expected[model.name] = session.run([model.output], {model.input: row})[0]
        for encoding in encodings:
            bodies[model.name, encoding] = build_body(model, encoding, row, folder)
    return bodies, expected


# --- the report -------------------------------------------------------------------------------


def command_output(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (proc.stdout or proc.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def machine(client: redis.Redis, wrk: str) -> list[str]:
    from importlib.metadata import version

    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
    mem = re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.MULTILINE)
    versions = ", ".join(
        f"{pkg} {version(pkg)}"
        for pkg in ("onnxruntime", "numpy", "litestar", "fastapi", "uvicorn", "gunicorn", "msgspec")
    )
    commit = command_output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = command_output(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"]
    )
    return [
        f"- CPU: {model.group(1) if model else '?'}; `nproc` = {os.cpu_count()}; "
        f"memory {int(mem.group(1)) // 1024 // 1024 if mem else '?'} GiB",
        f"- OS: {platform.platform()}; Python {platform.python_version()}",
        f"- {versions}; ONNX Runtime providers {ort.get_available_providers()}",
        f"- Redis {client.info('server')['redis_version']}; {command_output([wrk, '--version'])}",
        f"- inferbox commit {commit}{' (with uncommitted changes)' if dirty not in ('', '?') else ''}",
    ]


def targets(
    points: list[Point], raw: dict[str, dict[str, float]], concurrency: list[int]
) -> list[str]:
    def get(server: str, model: str, encoding: str, conns: int) -> Point | None:
        for p in points:
            if (p.server, p.model, p.encoding, p.conns) == (server, model, encoding, conns):
                return p
        return None

    lines = []
    top = max(concurrency)
    ib, plain = get("inferbox", "mlp", "json", top), get("plain", "mlp", "json", top)
    if ib and plain and top == 64:
        ratio = ib.wrk.rps / plain.wrk.rps
        ok = ratio >= 1.5 and ib.wrk.p99_ms <= plain.wrk.p99_ms
        lines.append(
            f"- **{'PASS' if ok else 'FAIL'}** tiny model, JSON, c=64: inferbox "
            f"{ib.wrk.rps:.0f} req/s = {ratio:.2f}x plain ({plain.wrk.rps:.0f}; target >= 1.5x), "
            f"p99 {ib.wrk.p99_ms:.1f} ms vs plain {plain.wrk.p99_ms:.1f} ms (target: no worse)"
        )
    else:
        lines.append("- n/a tiny model, JSON, c=64 (not measured)")
    ib = get("inferbox", "conv", "binary", top)
    if ib and top == 64:
        best = raw["conv"]["best_rows_s"]
        share = ib.wrk.rps / best
        lines.append(
            f"- **{'PASS' if share >= 0.8 else 'FAIL'}** compute-heavy model, binary, c=64: "
            f"inferbox {ib.wrk.rps:.0f} rows/s = {share:.0%} of raw ONNX Runtime's best "
            f"{best:.0f} rows/s (target >= 80%)"
        )
    else:
        lines.append("- n/a compute-heavy model, binary, c=64 (not measured)")
    if 1 in concurrency:
        gaps = []
        for model in MODELS:
            for encoding in ENCODINGS:
                ib, plain = (get(s, model.name, encoding, 1) for s in ("inferbox", "plain"))
                gaps.append((ib.wrk.p50_ms - plain.wrk.p50_ms, f"{model.name}/{encoding}"))
        ok = all(gap <= 1.0 for gap, _ in gaps)
        detail = ", ".join(f"{name} {gap:+.2f} ms" for gap, name in gaps)
        lines.append(
            f"- **{'PASS' if ok else 'FAIL'}** c=1: inferbox p50 within 1 ms of plain's "
            f"(inferbox - plain: {detail})"
        )
    else:
        lines.append("- n/a c=1 (not measured)")
    low = min(concurrency)
    grows, detail = True, []
    for model in MODELS:
        for encoding in ENCODINGS:
            means = [get("inferbox", model.name, encoding, c).batch["mean"] for c in concurrency]
            grows &= len(means) > 1 and means[-1] > means[0] and means[-1] >= 2
            detail.append(f"{model.name}/{encoding} " + " -> ".join(f"{m:.1f}" for m in means))
    lines.append(
        f"- **{'PASS' if grows else 'FAIL'}** batch size grows with load "
        f"(mean rows per batch, c={low} -> c={top}: {'; '.join(detail)})"
    )
    return lines


def report(
    points: list[Point],
    raw: dict[str, dict[str, float]],
    concurrency: list[int],
    args: argparse.Namespace,
    about: list[str],
    started: datetime,
) -> str:
    out = [
        f"Measured {started:%Y-%m-%d %H:%M} UTC by `{' '.join(['scripts/bench', *args.argv])}`: "
        f"{args.duration:g} s per point after {args.warmup:g} s of warmup, "
        "wrk `-t1 -c<concurrency>`, one row per request.",
        "",
        "### Machine",
        "",
        *about,
        "",
        "### Targets",
        "",
        *targets(points, raw, concurrency),
        "",
        "### Raw ONNX Runtime in-process (the ceiling; nothing else of ours running)",
        "",
        "Measured before and after the servers; the better of the two runs is shown.",
        "",
        "| model | batch 1 rows/s | batch 1 p50 ms | batch 64 rows/s | best rows/s, run 1 / run 2 |",
        "|---|--:|--:|--:|--:|",
    ]
    for model in MODELS:
        r = raw[model.name]
        out.append(
            f"| {model.name} ({model.kind}) | {r['b1_rows_s']:.0f} | {r['b1_p50_ms']:.3f} "
            f"| {r['b64_rows_s']:.0f} | "
            + " / ".join(f"{x:.0f}" for x in r.get("runs", [r["best_rows_s"]]))
            + " |"
        )
    out += [
        "",
        "### Throughput and latency over HTTP",
        "",
        "req/s = rows/s (one row per request). p50/p99 from wrk's latency histogram.",
        "",
        "| model | tensors | conc. | plain req/s | plain p50 ms | plain p99 ms "
        "| inferbox req/s | inferbox p50 ms | inferbox p99 ms | inferbox / plain |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    by_key = {(p.server, p.model, p.encoding, p.conns): p for p in points}
    for model in MODELS:
        for encoding in ENCODINGS:
            for c in concurrency:
                pl, ib = (
                    by_key["plain", model.name, encoding, c],
                    by_key["inferbox", model.name, encoding, c],
                )
                out.append(
                    f"| {model.name} | {encoding} | {c} | {pl.wrk.rps:.0f} | {pl.wrk.p50_ms:.2f} "
                    f"| {pl.wrk.p99_ms:.2f} | {ib.wrk.rps:.0f} | {ib.wrk.p50_ms:.2f} "
                    f"| {ib.wrk.p99_ms:.2f} | {ib.wrk.rps / pl.wrk.rps:.2f}x |"
                )
    out += [
        "",
        "### inferbox batch sizes (worker's `inferbox_batch_size`, difference over each run)",
        "",
        "Batches per bucket: the bucket `<=N` counts batches of more than the previous bound "
        "and at most N rows.",
        "",
        "| model | tensors | conc. | batches | mean rows/batch | "
        + " | ".join(f"<={b}" for b in BUCKETS)
        + " |",
        "|---|---|--:|--:|--:|" + "--:|" * len(BUCKETS),
    ]
    for model in MODELS:
        for encoding in ENCODINGS:
            for c in concurrency:
                b = by_key["inferbox", model.name, encoding, c].batch
                out.append(
                    f"| {model.name} | {encoding} | {c} | {b['batches']} | {b['mean']:.2f} | "
                    + " | ".join(str(n) for n in b["buckets"])
                    + " |"
                )
    out += [
        "",
        "### CPU time per request (µs), by process",
        "",
        "From `/proc/<pid>/stat` (servers, including ONNX Runtime's threads), Redis `INFO cpu` "
        "and wrk's rusage, over each measured run. The machine has "
        f"{os.cpu_count()} cores: at saturation the columns of a row add up to about "
        f"{os.cpu_count()} x 1e6 / (req/s).",
        "",
        "| model | tensors | conc. | plain: server | plain: wrk | inferbox: api (2 procs) "
        "| inferbox: worker | inferbox: redis | inferbox: wrk |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for model in MODELS:
        for encoding in ENCODINGS:
            for c in concurrency:
                pl, ib = (
                    by_key["plain", model.name, encoding, c],
                    by_key["inferbox", model.name, encoding, c],
                )
                out.append(
                    f"| {model.name} | {encoding} | {c} | {pl.cpu_us['server']:.0f} "
                    f"| {pl.cpu_us['wrk']:.0f} | {ib.cpu_us['api']:.0f} "
                    f"| {ib.cpu_us['worker']:.0f} | {ib.cpu_us['redis']:.0f} "
                    f"| {ib.cpu_us['wrk']:.0f} |"
                )
    return "\n".join(out) + "\n"


def update_doc(table: str) -> None:
    text = DOC.read_text() if DOC.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip() + f"\n\n## Latest results\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    DOC.write_text(f"{head}{BEGIN}\n{table}{END}{tail}")


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per point")
    parser.add_argument("--warmup", type=float, default=None, help="seconds of warmup [2; 1 quick]")
    parser.add_argument(
        "--concurrency",
        default=None,
        help="comma-separated connection counts [1,8,32,64; 1,64 with --quick]",
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer points (c=1,64), shorter warmup, no doc update"
    )
    parser.add_argument(
        "--docs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"rewrite the tables in {DOC.relative_to(ROOT)} [on, off with --quick]",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="Markdown results file")
    parser.add_argument(
        "--limited-key",
        action="store_true",
        help="call inferbox with a key made over the API (the default per-key limits apply) "
        "instead of the bootstrap admin key",
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("INFERBOX_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    args = parser.parse_args(argv)
    args.argv = argv
    if args.warmup is None:
        args.warmup = 1.0 if args.quick else 2.0
    if args.concurrency is None:
        args.concurrency = "1,64" if args.quick else "1,8,32,64"
    if args.docs is None:
        args.docs = not args.quick
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    concurrency = sorted({int(c) for c in args.concurrency.split(",")})
    started = datetime.now(UTC)
    wrk = ensure_wrk()
    client = redis.Redis.from_url(args.redis_url)
    client.ping()

    with tempfile.TemporaryDirectory(prefix="inferbox-bench-") as tmp:
        folder = Path(tmp)
        repo = folder / "repo"
        bodies, expected = model_inputs(repo, folder)
        raw = {
            model.name: measure_raw(repo / model.name / "1" / "model.onnx", model, args, None)
            for model in MODELS
        }

        points: list[Point] = []
        retries: list[str] = []
        inferbox = InferboxServer(repo, client, args.redis_url, folder / "cache")
        inferbox.limited_key = args.limited_key
        servers: list[Server] = [PlainServer(repo), inferbox]
        for server in servers:
            points += measure_server(retries, server, wrk, bodies, expected, concurrency, args)

        # The ceiling is measured again at the end and the better run kept: on a shared machine a
        # burst of someone else's load during one of the two would otherwise set it too low.
        for model in MODELS:
            path = repo / model.name / "1" / "model.onnx"
            raw[model.name] = measure_raw(path, model, args, raw[model.name])

    table = report(points, raw, concurrency, args, machine(client, wrk), started)
    if retries:
        table += "\nPoints measured again after wrk socket errors: " + ", ".join(retries) + "\n"
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(f"# Latest benchmark results\n\n{table}")
    log(f"wrote {args.output}")
    if args.docs:
        update_doc(table)
        log(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"scripts/bench: FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
