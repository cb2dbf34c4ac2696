"""``scripts/bench --ray``: inferbox throughput with the local worker, then 1 and 2 Ray actors.

The same API, Redis and registry as ``benchmarks/run.py`` (whose servers, wrk driver and checks
it reuses); only the process serving the queues changes: ``inferbox worker``, then
``inferbox ray-worker`` on a local Ray cluster (CPU actors, one CPU each) with exactly 1 and then
2 actors. Every answer is checked against ONNX Runtime before it is measured. The Markdown table
goes to ``benchmarks/results/ray-latest.md`` and between the ray markers of
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # benchmarks/run.py, beside this file

BEGIN, END = "<!-- bench-ray:begin -->", "<!-- bench-ray:end -->"
RESULTS = bench.ROOT / "benchmarks" / "results" / "ray-latest.md"


def actor_compute(path: Path, model: bench.Model, actors: int, seconds: float, cache: Path):
    """Rows/s of ``actors`` CPU actors kept busy with batches of 64 rows (two in flight each):
    the compute the Ray worker can draw on, without the HTTP API, Redis or wrk."""
    import ray

    from inferbox.models.spec import spec_from_onnx
    from inferbox.scaleout.actor import actor_class

    spec = spec_from_onnx(model.name, 1, path)
    blob = ray.put(path.read_bytes())
    hosts = [actor_class(0, 1).remote(str(cache), 0, 1) for _ in range(actors)]
    try:
        ray.get([h.load.remote(spec, blob) for h in hosts])
        feeds = {
            model.input: np.random.default_rng(2)
            .standard_normal((64, *model.row))
            .astype(np.float32)
        }
        feeds_ref = ray.put(feeds)
        pending = {h.run.remote(model.name, 1, feeds_ref, None): h for h in hosts for _ in range(2)}
        rows, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            done, _ = ray.wait(list(pending), num_returns=1)
            host = pending.pop(done[0])
            answer = ray.get(done[0])
            if answer[0] != "ok":
                raise bench.BenchError(f"actor run failed: {answer}")
            rows += 64
            pending[host.run.remote(model.name, 1, feeds_ref, None)] = host
        ray.get(list(pending))
        return rows / elapsed
    finally:
        for host in hosts:
            ray.kill(host)


class RayInferboxServer(bench.InferboxServer):
    """inferbox with ``inferbox ray-worker`` holding exactly ``actors`` CPU actors."""

    worker_command = ("ray-worker",)

    def __init__(self, *args, actors: int, address: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.actors, self.address = actors, address
        self.name = f"ray-{actors}"

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "INFERBOX_RAY_ADDRESS": self.address,
            "INFERBOX_RAY_ACTOR_GPUS": "0",
            "INFERBOX_RAY_ACTOR_CPUS": "1",
            "INFERBOX_RAY_MIN_ACTORS": str(self.actors),
            "INFERBOX_RAY_MAX_ACTORS": str(self.actors),
            "INFERBOX_JOBS_ENABLED": "false",
        }

    def start(self) -> None:
        super().start()

        # Ready means one actor holds each model; wait for the copy on every actor.
        def replicated() -> bool:
            text = (
                bench.urllib.request.urlopen(
                    f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
                )
                .read()
                .decode()
            )
            held = [
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("inferbox_ray_replicas{")
            ]
            return len(held) == len(bench.MODELS) and all(h == self.actors for h in held)

        bench.wait_until(f"{self.name} copies", replicated, self.procs, 120)

    def cpu(self) -> dict[str, float]:
        # The actors are Ray's processes, not children of ours: only the shared parts count.
        return {"api": bench.cpu_seconds(bench.process_tree(self.api.pid))}


class LocalInferboxServer(bench.InferboxServer):
    """The local worker, measured in the same run as the baseline."""

    name = "local"

    def env(self) -> dict[str, str]:
        return {**super().env(), "INFERBOX_JOBS_ENABLED": "false"}

    def cpu(self) -> dict[str, float]:
        return {"api": bench.cpu_seconds(bench.process_tree(self.api.pid))}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench --ray", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per point")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warmup per point")
    parser.add_argument("--concurrency", default="8,64", help="comma-separated connection counts")
    parser.add_argument("--docs", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--redis-url", default=os.environ.get("INFERBOX_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    args = parser.parse_args(argv)
    args.argv = argv
    concurrency = sorted({int(c) for c in args.concurrency.split(",")})
    bench.ENCODINGS = ("binary",)  # the JSON codec costs the same in every variant
    started = datetime.now(UTC)
    wrk = bench.ensure_wrk()
    client = redis.Redis.from_url(args.redis_url)
    client.ping()

    import ray

    about = [*bench.machine(client, wrk), f"- ray {ray.__version__}"]
    ray.init(
        address="local",
        num_cpus=os.cpu_count(),
        num_gpus=0,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _node_ip_address="127.0.0.1",
    )
    address = ray.get_runtime_context().gcs_address
    bench.log(f"local ray cluster at {address}: {ray.cluster_resources()}")
    points: list[bench.Point] = []
    retries: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="inferbox-bench-ray-") as tmp:
            folder = Path(tmp)
            repo = folder / "repo"
            rng = np.random.default_rng(0)
            bodies, expected = {}, {}
            for model in bench.MODELS:
                path = model.build(repo / model.name / "1" / "model.onnx")
                row = rng.standard_normal((1, *model.row)).astype(np.float32)
                session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                expected[model.name] = session.run([model.output], {model.input: row})[0]
                bodies[model.name, "binary"] = bench.build_body(model, "binary", row, folder)
            servers = [
                LocalInferboxServer(repo, client, args.redis_url, folder / "cache-local"),
                *(
                    RayInferboxServer(
                        repo,
                        client,
                        args.redis_url,
                        folder / f"cache-ray-{n}",
                        actors=n,
                        address=address,
                    )
                    for n in (1, 2)
                ),
            ]
            for server in servers:
                points += bench.measure_server(
                    retries, server, wrk, bodies, expected, concurrency, args
                )
            compute = {}
            for model in bench.MODELS:
                path = repo / model.name / "1" / "model.onnx"
                for n in (1, 2):
                    compute[model.name, n] = actor_compute(
                        path, model, n, args.duration, folder / "actor-cache"
                    )
                    bench.log(f"actors={n} {model.name}: {compute[model.name, n]:.0f} rows/s")
    finally:
        ray.shutdown()

    table = report(points, compute, concurrency, args, about, started)
    if retries:
        table += "\nPoints measured again after wrk socket errors: " + ", ".join(retries) + "\n"
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(f"# Latest Ray benchmark results\n\n{table}")
    bench.log(f"wrote {RESULTS}")
    if args.docs:
        update_doc(table)
        bench.log(f"updated {bench.DOC}")
    return 0


def report(points, compute, concurrency, args, about, started) -> str:
    by_key = {(p.server, p.model, p.conns): p for p in points}
    out = [
        f"Measured {started:%Y-%m-%d %H:%M} UTC by `{' '.join(['scripts/bench --ray', *args.argv])}`: "
        f"{args.duration:g} s per point after {args.warmup:g} s of warmup, wrk `-t1 -c<concurrency>`, "
        "one row per request, binary tensors.",
        "",
        *about,
        "",
        "| model | conc. | local worker req/s | p50 / p99 ms | Ray, 1 actor req/s | p50 / p99 ms "
        "| Ray, 2 actors req/s | p50 / p99 ms | 2 actors / 1 actor |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for model in bench.MODELS:
        for c in concurrency:
            local, one, two = (by_key[s, model.name, c] for s in ("local", "ray-1", "ray-2"))
            cells = [
                f"{p.wrk.rps:.0f} | {p.wrk.p50_ms:.1f} / {p.wrk.p99_ms:.1f}"
                for p in (local, one, two)
            ]
            out.append(
                f"| {model.name} ({model.kind}) | {c} | {' | '.join(cells)} "
                f"| {two.wrk.rps / one.wrk.rps:.2f}x |"
            )
    out += [
        "",
        "Actors alone (no API, Redis or wrk): batches of 64 rows, two in flight per actor, "
        "from the benchmark process:",
        "",
        "| model | 1 actor rows/s | 2 actors rows/s | 2 actors / 1 actor |",
        "|---|--:|--:|--:|",
        *(
            f"| {m.name} ({m.kind}) | {compute[m.name, 1]:.0f} | {compute[m.name, 2]:.0f} "
            f"| {compute[m.name, 2] / compute[m.name, 1]:.2f}x |"
            for m in bench.MODELS
        ),
    ]
    out += [
        "",
        "Mean rows per batch (the serving process's `inferbox_batch_size`): "
        + "; ".join(
            f"{p.server} {p.model} c={p.conns} {p.batch['mean']:.1f}" for p in points if p.batch
        ),
    ]
    return "\n".join(out) + "\n"


def update_doc(table: str) -> None:
    text = bench.DOC.read_text()
    if BEGIN not in text or END not in text:
        text = text.rstrip() + f"\n\n## Scale-out on Ray\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    bench.DOC.write_text(f"{head}{BEGIN}\n{table}{END}{tail}")


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except bench.BenchError as exc:
        print(f"scripts/bench --ray: FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
