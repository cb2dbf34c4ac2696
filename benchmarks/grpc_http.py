"""``scripts/bench --grpc``: the tiny model over gRPC (raw contents) beside HTTP (binary tensors).

One inferbox (worker, gunicorn API and ``inferbox grpc``, started as in ``benchmarks/run.py``)
and the appliance's nginx in front of it (TLS, HTTP/2; ``ModelInfer`` relayed to the API's fast
path, ``inferbox.api.grpc_infer``) serve the tiny model (mlp, one row per request); in the same
run, at each concurrency, straight to the processes:

- HTTP with binary tensors, loaded by ``wrk`` (what ``scripts/bench`` measures);
- HTTP with binary tensors, loaded by ``h2load --h1`` (HTTP/1.1, one request per connection at
  a time), and the Open Inference Protocol over gRPC with ``raw_input_contents``, loaded by
  ``h2load`` (HTTP/2, c connections of one stream each, and one connection of c streams, the way
  one ``tritonclient.grpc`` channel carries concurrent calls) to ``inferbox grpc``: the same
  load generator for both;

and through nginx over TLS, as a client of the appliance reaches it: HTTP with binary tensors
over HTTP/1.1 (``h2load --h1``) and over HTTP/2, and gRPC with raw contents (c connections, and
one connection of c streams).

Both answers are checked against ONNX Runtime's first; after each gRPC run the gRPC server's
own request counter must show no failed call (h2load sees only the HTTP status, gRPC errors
travel in trailers). The report goes to ``benchmarks/results/grpc.md`` and between the markers
``<!-- bench-grpc:begin -->``/``<!-- bench-grpc:end -->`` of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import getpass
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import redis
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run

ROOT = run.ROOT
DOC = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "benchmarks" / "results" / "grpc.md"
BEGIN, END = "<!-- bench-grpc:begin -->", "<!-- bench-grpc:end -->"
MODEL = run.MODELS[0]  # the tiny one


@dataclass
class Result:
    label: str
    conns: int
    rps: float
    mean_ms: float
    p99_ms: float | None
    cpu_us: dict[str, float]


class GrpcServer(run.InferboxServer):
    """inferbox with its gRPC server beside the API."""

    grpc_processes = 2

    def start(self) -> None:
        super().start()
        self.grpc_port, self.grpc_metrics_port = run.free_port(), run.free_port()
        env = {
            **self.env(),
            "INFERBOX_GRPC_BIND": f"127.0.0.1:{self.grpc_port}",
            "INFERBOX_GRPC_METRICS_PORT": str(self.grpc_metrics_port),
            "INFERBOX_GRPC_PROCESSES": str(self.grpc_processes),
        }
        self.grpc = subprocess.Popen(
            [str(run.BIN / "inferbox"), "grpc"], env=env, cwd=ROOT, **self.log_to(self.cache.parent)
        )
        self.procs.append(self.grpc)

        def listening() -> bool:
            with run.socket.create_connection(("127.0.0.1", self.grpc_port), timeout=1):
                return True

        run.wait_until("the gRPC server", listening, self.procs, 60)
        run.log(f"grpc pid {self.grpc.pid} on :{self.grpc_port}")

    gateway: Gateway | None = None

    def cpu(self) -> dict[str, float]:
        nginx = self.gateway.cpu() if self.gateway is not None else 0.0
        grpc = run.cpu_seconds(run.process_tree(self.grpc.pid))
        return {**super().cpu(), "grpc": grpc, "nginx": nginx}

    def grpc_failures(self) -> dict[str, float]:
        """Failed calls so far, by process and counter line (status other than 200): the gRPC
        server's, and the API's (which answers gRPC calls relayed by nginx with HTTP 200 and
        the call's own status in the trailers, which h2load does not read)."""
        failures = {}
        for process, port in (("grpc", self.grpc_metrics_port), ("api", self.port)):
            text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            for line in text.splitlines():
                if line.startswith("inferbox_requests_total{") and 'status="200"' not in line:
                    failures[f"{process} {line.rsplit(' ', 1)[0]}"] = float(line.rsplit(" ", 1)[1])
        return failures


class Gateway:
    """The appliance's nginx (``scripts/nginx-config``, a certificate from ``scripts/certs``) in
    front of the server: TLS and HTTP/2 on one port, as in compose."""

    def __init__(self, server: GrpcServer, folder: Path) -> None:
        self.server = server
        self.folder = folder / "gateway"
        self.port = run.free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        certs, prefix = self.folder / "certs", self.folder / "nginx"
        subprocess.run(
            [str(ROOT / "scripts" / "certs"), str(certs)], check=True, capture_output=True
        )
        env = {
            **{k: v for k, v in run.os.environ.items() if not k.startswith("INFERBOX_NGINX_")},
            "INFERBOX_NGINX_UPSTREAM": f"127.0.0.1:{self.server.port}",
            "INFERBOX_NGINX_GRPC_UPSTREAM": f"127.0.0.1:{self.server.grpc_port}",
            "INFERBOX_NGINX_HTTPS_LISTEN": f"127.0.0.1:{self.port}",
            "INFERBOX_NGINX_HTTP_LISTEN": f"127.0.0.1:{run.free_port()}",
            "INFERBOX_NGINX_HTTPS_PORT": str(self.port),
            "INFERBOX_NGINX_CERT": str(certs / "tls.crt"),
            "INFERBOX_NGINX_KEY": str(certs / "tls.key"),
            "INFERBOX_NGINX_ACCESS_LOG": str(self.folder / "access.log"),
            "INFERBOX_NGINX_ERROR_LOG": str(self.folder / "error.log"),
            "INFERBOX_NGINX_PID": str(prefix / "nginx.pid"),
            "INFERBOX_NGINX_TEMP_DIR": str(prefix / "temp"),
            "INFERBOX_NGINX_USER": getpass.getuser(),
            "INFERBOX_NGINX_WORKER_PROCESSES": "1",
        }
        rendered = subprocess.run(
            [str(ROOT / "scripts" / "nginx-config"), str(prefix)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        conf = rendered.stdout.strip()
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen(
            [binary, "-p", f"{prefix}/", "-c", conf, "-e", "stderr", "-g", "daemon off;"],
            **self.server.log_to(self.folder),
        )
        self.server.procs.append(self.proc)

        def listening() -> bool:
            with run.socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        run.wait_until("nginx", listening, self.server.procs, 30)
        self.ca = certs / "ca.crt"

    def cpu(self) -> float:
        return run.cpu_seconds(run.process_tree(self.proc.pid))


def grpc_body(row: np.ndarray, folder: Path) -> Path:
    """One ModelInferRequest with raw contents, framed as a gRPC message (h2load's body)."""
    request = service_pb2.ModelInferRequest(model_name=MODEL.name)
    request.inputs.add(name=MODEL.input, datatype="FP32", shape=list(row.shape))
    request.outputs.add(name=MODEL.output)
    request.raw_input_contents.append(row.tobytes())
    payload = request.SerializeToString()
    path = folder / "mlp-grpc.body"
    path.write_bytes(b"\x00" + struct.pack(">I", len(payload)) + payload)
    return path


def h2load(args: list[str], seconds: float) -> tuple[float, float, int]:
    """req/s, mean request time (ms) and requests done; fails on any non-2xx or error."""
    proc = subprocess.run(
        ["h2load", *args], capture_output=True, text=True, timeout=seconds + 120, check=False
    )
    out = proc.stdout
    done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", out)
    rate = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    if proc.returncode != 0 or not (done and rate and mean):
        raise run.BenchError(f"h2load failed ({proc.returncode}):\n{out}\n{proc.stderr}")
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if (
        done.group(2) != done.group(3)
        or int(done.group(3)) == 0
        or codes is None
        # Every answer a 2xx; a call cut at the end of a timed run may be done with no status.
        or any(int(codes.group(i)) for i in (2, 3, 4))
        or int(done.group(2)) - int(codes.group(1)) > 1 + int(done.group(2)) // 10000
    ):
        raise run.BenchError(f"h2load: not every request succeeded:\n{out}")
    value = mean.group(1)
    mean_ms = float(value[:-2]) if value.endswith("ms") else float(value[:-2]) / 1000
    if value.endswith("s") and not value.endswith(("ms", "us")):
        mean_ms = float(value[:-1]) * 1000
    return float(rate.group(1)), mean_ms, int(done.group(3))


def measure(server: GrpcServer, label: str, conns: int, seconds: float, load) -> Result:
    server.before()
    failures = server.grpc_failures()
    before = server.cpu()
    rps, mean_ms, p99_ms, requests, client_cpu = load()
    after = server.cpu()
    after_failures = server.grpc_failures()
    # h2load stops with up to c calls in flight: those end as 499 (client gone), nothing else.
    cut = sum(v - failures.get(k, 0) for k, v in after_failures.items() if 'status="499"' in k)
    others = {k: v for k, v in after_failures.items() if 'status="499"' not in k}
    if cut > conns or others != {k: v for k, v in failures.items() if 'status="499"' not in k}:
        raise run.BenchError(
            f"{label} c={conns}: failed calls were answered: {after_failures} (before: {failures})"
        )
    cpu_us = {k: (after[k] - before[k]) / requests * 1e6 for k in after}
    cpu_us["client"] = client_cpu / requests * 1e6
    run.log(f"{label:40} c={conns:<3} {rps:8.0f} req/s  mean {mean_ms:6.2f} ms")
    return Result(label, conns, rps, mean_ms, p99_ms, cpu_us)


def children_cpu() -> float:
    usage = run.resource.getrusage(run.resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def verify(server: GrpcServer, row: np.ndarray, expected: np.ndarray, body: run.Body) -> None:
    status, _, _ = run.post(server.port, MODEL, body, server.auth)
    if status != 200:
        raise run.BenchError(f"HTTP binary call answered {status}")
    headers = {"authorization": server.auth}
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as client:
        item = grpcclient.InferInput(MODEL.input, [1, *row.shape], "FP32")
        item.set_data_from_numpy(row[None])
        got = client.infer(MODEL.name, [item], headers=headers).as_numpy(MODEL.output)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    gateway = server.gateway
    with grpcclient.InferenceServerClient(
        f"127.0.0.1:{gateway.port}", ssl=True, root_certificates=str(gateway.ca)
    ) as client:
        got = client.infer(MODEL.name, [item], headers=headers).as_numpy(MODEL.output)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def report(results: list[Result], seconds: float, started: str, processes: int) -> str:
    lines = [
        f"Run {started}, {seconds:g} s per point, tiny model (mlp), one row per request, "
        f"API with 2 gunicorn workers, {processes} gRPC server process(es), all on this "
        "machine.",
        "",
        "| load | c | req/s | mean ms | p99 ms | CPU µs/req nginx | api | grpc | worker | redis |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        p99 = f"{r.p99_ms:.2f}" if r.p99_ms is not None else "-"
        mean = "-" if r.mean_ms != r.mean_ms else f"{r.mean_ms:.2f}"  # NaN: wrk gives p50/p99
        lines.append(
            f"| {r.label} | {r.conns} | {r.rps:.0f} | {mean} | {p99} | "
            f"{r.cpu_us['nginx']:.0f} | {r.cpu_us['api']:.0f} | {r.cpu_us['grpc']:.0f} | {r.cpu_us['worker']:.0f} | "
            f"{r.cpu_us['redis']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per point")
    parser.add_argument("--concurrency", default="64", help="comma-separated [64]")
    parser.add_argument(
        "--grpc-processes", type=int, default=2, help="INFERBOX_GRPC_PROCESSES [2, as the API]"
    )
    parser.add_argument("--no-doc", action="store_true", help="leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    if shutil.which("h2load") is None:
        raise SystemExit("scripts/bench --grpc needs h2load (apt-get install nghttp2-client)")
    # wrk gives the number scripts/bench itself reports; h2load alone is enough for the
    # comparison (the same load generator on both sides), so a machine without wrk skips it.
    wrk = shutil.which("wrk")
    if wrk is None:
        run.log("no wrk on PATH: the wrk row is left out")
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    redis_url = run.os.environ.get("INFERBOX_REDIS_URL", "redis://127.0.0.1:6379/0")
    client = redis.Redis.from_url(redis_url)
    client.ping()
    folder = Path(tempfile.mkdtemp(prefix="inferbox-bench-grpc-"))
    repo = folder / "models"
    for model in run.MODELS:
        model.build(repo / model.name / "1" / "model.onnx")
    row = np.random.default_rng(0).standard_normal(MODEL.row).astype(np.float32)
    session = ort.InferenceSession(str(repo / MODEL.name / "1" / "model.onnx"))
    (expected,) = session.run(None, {MODEL.input: row[None]})
    http_body = run.build_body(MODEL, "binary", row[None], folder)
    body = grpc_body(row[None], folder)
    cache = folder / "cache"
    cache.mkdir()
    server = GrpcServer(repo, client, redis_url, cache)
    server.grpc_processes = args.grpc_processes
    results: list[Result] = []
    try:
        server.start()
        server.gateway = Gateway(server, folder)
        server.gateway.start()
        verify(server, row, expected, http_body)
        seconds = args.duration
        grpc_url = f"http://127.0.0.1:{server.grpc_port}/inference.GRPCInferenceService/ModelInfer"
        http_url = f"http://127.0.0.1:{server.port}/v2/models/{MODEL.name}/infer"
        edge = f"https://127.0.0.1:{server.gateway.port}"
        edge_grpc_url = f"{edge}/inference.GRPCInferenceService/ModelInfer"
        edge_http_url = f"{edge}/v2/models/{MODEL.name}/infer"
        grpc_headers = ["-H", "content-type: application/grpc", "-H", "te: trailers"]
        grpc_headers += ["-H", f"authorization: {server.auth}"]
        http_headers = ["-H", f"content-type: {http_body.content_type}"]
        http_headers += ["-H", f"inference-header-content-length: {http_body.header_length}"]
        http_headers += ["-H", f"authorization: {server.auth}"]
        for conns in sorted({int(c) for c in args.concurrency.split(",")}):
            warm = ["--warm-up-time", "2", "-D", f"{seconds:g}", "-t", "1"]

            def wrk_load(c=conns):
                cpu = children_cpu()
                w = run.run_wrk(wrk, server.port, MODEL, http_body, c, seconds, server.auth)
                return w.rps, float("nan"), w.p99_ms, w.requests, children_cpu() - cpu

            def h2_load(argv, c=conns):
                def load():
                    cpu = children_cpu()
                    rps, mean, requests = h2load(argv, seconds)
                    return rps, mean, None, requests, children_cpu() - cpu

                return load

            if wrk is not None:
                run.run_wrk(wrk, server.port, MODEL, http_body, conns, 2, server.auth)  # warm
                results.append(measure(server, "HTTP binary (wrk)", conns, seconds, wrk_load))
            h1 = [*warm, "--h1", "-c", str(conns), "-m", "1", "-d", str(http_body.path)]
            results.append(
                measure(
                    server,
                    "HTTP binary (h2load --h1)",
                    conns,
                    seconds,
                    h2_load([*h1, *http_headers, http_url]),
                )
            )
            h2 = [*warm, "-c", str(conns), "-m", "1", "-d", str(body)]
            h2_http = [*warm, "-c", str(conns), "-m", "1", "-d", str(http_body.path)]
            results.append(
                measure(
                    server,
                    f"gRPC raw ({conns} connections)",
                    conns,
                    seconds,
                    h2_load([*h2, *grpc_headers, grpc_url]),
                )
            )
            one = [*warm, "-c", "1", "-m", str(conns), "-d", str(body)]
            results.append(
                measure(
                    server,
                    f"gRPC raw (1 connection, {conns} streams)",
                    conns,
                    seconds,
                    h2_load([*one, *grpc_headers, grpc_url]),
                )
            )
            edge_runs = [
                ("nginx: HTTP binary (HTTP/1.1)", [*h1, *http_headers, edge_http_url]),
                ("nginx: HTTP binary (HTTP/2)", [*h2_http, *http_headers, edge_http_url]),
                (f"nginx: gRPC raw ({conns} connections)", [*h2, *grpc_headers, edge_grpc_url]),
                (
                    f"nginx: gRPC raw (1 connection, {conns} streams)",
                    [*one, *grpc_headers, edge_grpc_url],
                ),
            ]
            for label, argv in edge_runs:
                results.append(measure(server, label, conns, seconds, h2_load(argv)))
        verify(server, row, expected, http_body)
    except run.BenchError as exc:
        run.log(f"FAILED: {exc}")
        run.log(server.log_tail())
        return 1
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    table = report(results, args.duration, started, args.grpc_processes)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(table)
    print(table)
    if not args.no_doc:
        text = DOC.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            DOC.write_text(head + BEGIN + "\n" + table + END + rest.split(END, 1)[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
