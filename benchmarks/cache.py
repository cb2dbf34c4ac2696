"""``scripts/bench --cache``: the response cache at hit rates of 0, 50 and 100 % against none.

One inferbox (worker and gunicorn API, started as in ``benchmarks/run.py``) with a cache Redis
of its own (``redis-server`` on a free port, ``allkeys-lru``, no persistence) serves the tiny
(mlp) and the compute-heavy (conv) model three times each, from the same file: without the
cache (``mlp``, ``conv``: the cache turned off), with ``response_cache`` (``mlp-cached``,
``conv-cached``: every call looked up, every answer stored) and with ``response_cache_admit:
repeated`` as well (``mlp-repeated``, ``conv-repeated``: only inputs an API process has seen
before). With binary tensors, one row per request, at c=64, ``wrk``
with ``benchmarks/cache_requests.lua`` sends a fixed body for the hit share of the requests and
bodies never seen before for the rest (0 %: every call a miss, stored; 100 %: every call after
the first a hit); the cache turned off gets the same stream as 0 %. The points of one round run back to back, and rounds are
repeated so that a burst of someone else's load on the shared machine falls on all of them.

Answers are checked against ONNX Runtime's, cached and uncached, bit for bit against each other.
The hit rate reported is the API's own count (``inferbox_cache_lookups_total``) over each run.
The report goes to ``benchmarks/results/cache.md`` and between ``<!-- bench-cache:begin -->`` and
``<!-- bench-cache:end -->`` in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
import redis
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run

ROOT = run.ROOT
DOC = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "benchmarks" / "results" / "cache.md"
BEGIN, END = "<!-- bench-cache:begin -->", "<!-- bench-cache:end -->"
LUA = ROOT / "benchmarks" / "cache_requests.lua"
HIT_RATES = (0, 50, 100)
ADMISSIONS = {"cached": "always", "repeated": "repeated"}
"""Model name suffix -> ``response_cache_admit``."""
TARGETS = {"mlp": 1.3, "conv": 3.0}
"""Throughput at a 100 % hit rate over the cache turned off, per model (issue 18)."""
MAX_ZERO_HIT_COST = 0.05


class CacheRedis:
    """``redis-server`` for the cache: a free port, its own memory budget, evicting."""

    def __init__(self, folder: Path, maxmemory: str = "512mb") -> None:
        self.port = run.free_port()
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [
                *(binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(folder)),
                *("--save", "", "--appendonly", "no", "--maxmemory", maxmemory),
                *("--maxmemory-policy", "allkeys-lru"),
            ],
            stdout=(folder / "cache-redis.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis(port=self.port)
        run.wait_until("the cache Redis", self.client.ping, [self.proc], 20)

    def stop(self) -> None:
        run.stop(self.proc)


class CachedInferbox(run.InferboxServer):
    """inferbox with ``INFERBOX_CACHE_URL`` set; the cache Redis's CPU counted apart."""

    def __init__(self, *args, cache_redis: CacheRedis, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cache_redis = cache_redis

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "INFERBOX_CACHE_URL": self.cache_redis.url,
            # Three sessions of each model grow ONNX Runtime's arenas past the worker's
            # recycling threshold (3x its baseline plus the model files); a recycle in the
            # middle of a point would measure the restart, not the cache.
            "INFERBOX_WORKER_RECYCLE_FACTOR": "0",
        }

    def cpu(self) -> dict[str, float]:
        return {**super().cpu(), "cache": run.redis_cpu(self.cache_redis.client)}


@dataclass
class Point:
    model: str
    admit: str | None
    """``response_cache_admit``; None: the cache turned off (the model without it)."""
    hit_rate: int
    round: int
    wrk: run.WrkResult
    measured_hits: float | None
    cpu_us: dict[str, float] = field(default_factory=dict)


def lookups(port: int) -> dict[str, float]:
    """The API's ``inferbox_cache_lookups_total`` by result (all models, all processes)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "inferbox_cache_lookups":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    result = sample.labels["result"]
                    found[result] = found.get(result, 0.0) + sample.value
    return found


def run_wrk(
    wrk: str, server: CachedInferbox, name: str, body: run.Body, hit_rate: int, seconds: float
) -> run.WrkResult:
    """``run.run_wrk`` at c=64 with the cache's Lua script: ``hit_rate`` % of the calls repeat
    the body, the others are new (a fresh seed per run: no miss repeats an earlier call)."""
    seed = int.from_bytes(os.urandom(2), "little")
    url = f"http://127.0.0.1:{server.port}/v2/models/{name}/infer"
    cmd = [wrk, "-t1", "-c64", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "30s"]
    cmd += ["-s", str(LUA), url, "--", str(body.path), body.content_type]
    cmd += [str(body.header_length), server.auth, str(hit_rate), str(seed)]
    before = run.resource.getrusage(run.resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    after = run.resource.getrusage(run.resource.RUSAGE_CHILDREN)
    line = run.re.search(r"^BENCH (.*)$", proc.stdout, run.re.MULTILINE)
    if proc.returncode != 0 or line is None:
        raise run.BenchError(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    fields = {k: float(v) for k, v in (kv.split("=") for kv in line.group(1).split())}
    errors = {k: int(fields[k]) for k in ("connect", "read", "write", "status", "timeout")}
    if "Non-2xx" in proc.stdout or any(errors.values()) or not fields["requests"]:
        raise run.BenchError(f"{url}: errors {errors}\n{proc.stdout}")
    requests = int(fields["requests"])
    elapsed = fields["duration_us"] / 1e6
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return run.WrkResult(
        requests=requests,
        seconds=elapsed,
        rps=requests / elapsed,
        p50_ms=fields["p50_us"] / 1000,
        p99_ms=fields["p99_us"] / 1000,
        cpu_s=cpu,
    )


def _named(model: run.Model, name: str) -> run.Model:
    return run.Model(name, model.kind, model.input, model.output, model.row, model.build)


def verify(server: CachedInferbox, model: run.Model, body: run.Body, expected) -> None:
    """Uncached and cached answers equal ONNX Runtime's, and each other bit for bit (a cached
    call soon becomes a hit)."""
    answers, states = [], []
    cached = f"{model.name}-cached"
    for name in (model.name, cached, cached, cached, cached):
        if states[2:] and states[-1] == "hit":
            break  # the insert is not waited for: a call right after may still miss
        status, headers, payload = run.post(server.port, _named(model, name), body, server.auth)
        if status != 200:
            raise run.BenchError(f"{name}: HTTP {status}: {payload[:300]!r}")
        answers.append(run.decode_output(model, headers, payload, True))
        states.append(headers.get("x-inferbox-cache"))
        if not np.allclose(answers[-1], expected, rtol=1e-4, atol=1e-5):
            raise run.BenchError(f"{name}: wrong answer {answers[-1]} != {expected}")
    if not all(a.tobytes() == answers[0].tobytes() for a in answers):
        raise run.BenchError(f"{model.name}: cached and uncached answers differ")
    if states[0] is not None or states[-1] != "hit":
        raise run.BenchError(f"{model.name}: X-Inferbox-Cache {states}, expected None, then a hit")


def measure(wrk, server, model, body, admit, hit_rate, round_, args) -> Point:
    suffix = {v: k for k, v in ADMISSIONS.items()}.get(admit)
    name = model.name if admit is None else f"{model.name}-{suffix}"
    if args.warmup > 0:
        run_wrk(wrk, server, name, body, hit_rate, args.warmup)
    before_lookups = lookups(server.port)
    cpu_before = server.cpu()
    result = run_wrk(wrk, server, name, body, hit_rate, args.duration)
    cpu_after = server.cpu()
    after_lookups = lookups(server.port)
    cpu_us = {k: (cpu_after[k] - cpu_before[k]) / result.requests * 1e6 for k in cpu_after}
    cpu_us["wrk"] = result.cpu_s / result.requests * 1e6
    measured = None
    if admit is not None:
        delta = {k: after_lookups.get(k, 0) - before_lookups.get(k, 0) for k in after_lookups}
        total = sum(delta.values())
        measured = delta.get("hit", 0) / total if total else 0.0
    label = "off" if admit is None else f"{admit} {hit_rate}%"
    run.log(
        f"round {round_} {model.name:4} cache {label:13} {result.rps:8.0f} req/s  "
        f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms"
        + ("" if measured is None else f"  hits {measured:.1%}")
    )
    return Point(model.name, admit, hit_rate, round_, result, measured, cpu_us)


POINTS = (
    (None, 0),
    ("repeated", 0),
    (None, 0),
    ("always", 0),
    (None, 0),
    *(("always", r) for r in HIT_RATES if r),
    *(("repeated", r) for r in HIT_RATES if r),
)
"""(admission, hit rate) of every point of a round. The cache turned off gets the stream of new
bodies that 0 % gets, and runs just before and just after each 0 % point: the cost of a 0 % hit
rate is read against its neighbours in time, which the load of others moves alike. Admit
``repeated`` goes first: run right after a point of admit ``always`` (tens of thousands of
inserts) it measured 4-10 % below the cache turned off, and alone between two runs without the
cache, level with them."""


def zero_hit_costs(points: list[Point], model: str, admit: str) -> list[float]:
    """Per round: what a 0 % hit rate costs against the two runs with the cache turned off
    just before and just after it (1 - rps / their mean rps)."""
    costs = []
    for round_ in sorted({p.round for p in points}):
        mine = [p for p in points if p.model == model and p.round == round_]
        (at,) = (i for i, p in enumerate(mine) if (p.admit, p.hit_rate) == (admit, 0))
        before = next(p for p in reversed(mine[:at]) if p.admit is None)
        after = next(p for p in mine[at + 1 :] if p.admit is None)
        costs.append(1 - mine[at].wrk.rps / statistics.mean((before.wrk.rps, after.wrk.rps)))
    return costs


def mean_rps(points: list[Point], model: str, admit: str | None, hit_rate: int = 0) -> float:
    return statistics.mean(
        p.wrk.rps for p in points if (p.model, p.admit, p.hit_rate) == (model, admit, hit_rate)
    )


def targets(points: list[Point]) -> list[str]:
    lines = []
    for model in run.MODELS:
        off = mean_rps(points, model.name, None)
        want = TARGETS[model.name]
        for admit in ("always", "repeated"):
            full = mean_rps(points, model.name, admit, 100)
            none = mean_rps(points, model.name, admit, 0)
            lines.append(
                f"- **{'PASS' if full / off >= want else 'FAIL'}** {model.kind} model "
                f"({model.name}), admit {admit}, 100 % hits: {full:.0f} req/s = "
                f"{full / off:.2f}x the cache turned off ({off:.0f}; target >= {want:g}x)"
            )
            costs = zero_hit_costs(points, model.name, admit)
            cost = statistics.median(costs)
            lines.append(
                f"- **{'PASS' if cost < MAX_ZERO_HIT_COST else 'FAIL'}** {model.kind} model "
                f"({model.name}), admit {admit}, 0 % hits: {none:.0f} req/s, costs {cost:.1%} "
                f"against the cache turned off (median over the rounds of the cost against the "
                f"runs without the cache just before and after it: "
                f"{', '.join(f'{c:.1%}' for c in costs)}; target < {MAX_ZERO_HIT_COST:.0%})"
            )
    return lines


def report(points: list[Point], args, started: datetime, about: list[str], load: str) -> str:
    out = [
        f"Measured {started:%Y-%m-%d %H:%M} UTC by `{' '.join(['scripts/bench', '--cache', *args.argv])}`"
        f": binary tensors, one row per request, c=64 (wrk `-t1 -c64`), {args.duration:g} s "
        f"per point after {args.warmup:g} s of warmup, {args.rounds} rounds (each: off, 0 % "
        "hits with admit repeated, off, 0 % with admit always, off, then 50 and 100 % with "
        "each); req/s is the mean over the rounds.",
        "",
        "### Machine",
        "",
        *about,
        f"- Load from others during the run: {load}",
        "",
        "### Targets",
        "",
        *targets(points),
        "",
        "### Throughput, latency and CPU per request",
        "",
        "Hits: the API's own share of hits among lookups over the measured run. CPU µs per "
        "request from `/proc` (api: gunicorn and its 2 workers; worker), `INFO cpu` (queue "
        "Redis, cache Redis) and wrk's rusage, mean over the rounds.",
        "",
        "| model | cache | req/s (per round) | vs off | p50 ms | p99 ms | hits | api | worker "
        "| redis | cache redis | wrk |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for model in run.MODELS:
        off = mean_rps(points, model.name, None)
        for admit, hit_rate in dict.fromkeys(POINTS):
            mine = [
                p for p in points if (p.model, p.admit, p.hit_rate) == (model.name, admit, hit_rate)
            ]
            rps = statistics.mean(p.wrk.rps for p in mine)
            rounds = " / ".join(f"{p.wrk.rps:.0f}" for p in mine)
            hits = "-" if admit is None else f"{statistics.mean(p.measured_hits for p in mine):.1%}"
            cpu = {k: statistics.mean(p.cpu_us[k] for p in mine) for k in mine[0].cpu_us}
            label = "off" if admit is None else f"{admit}, {hit_rate} %"
            out.append(
                f"| {model.name} | {label} | {rps:.0f} ({rounds}) | {rps / off:.2f}x "
                f"| {statistics.mean(p.wrk.p50_ms for p in mine):.2f} "
                f"| {statistics.mean(p.wrk.p99_ms for p in mine):.2f} | {hits} "
                f"| {cpu['api']:.0f} | {cpu['worker']:.0f} | {cpu['redis']:.0f} "
                f"| {cpu['cache']:.0f} | {cpu['wrk']:.0f} |"
            )
    return "\n".join(out) + "\n"


def loadavg() -> str:
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return f"{one}, {five}, {fifteen}"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench --cache", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--duration", type=float, default=6.0, help="seconds measured per point")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warmup per point")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the four points [3]")
    parser.add_argument("--no-doc", action="store_true", help="leave docs/benchmarks.md alone")
    parser.add_argument(
        "--redis-url", default=os.environ.get("INFERBOX_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    args = parser.parse_args(argv)
    args.argv = argv
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = datetime.now(UTC)
    wrk = run.ensure_wrk()
    client = redis.Redis.from_url(args.redis_url)
    client.ping()
    load_before = loadavg()
    folder = Path(tempfile.mkdtemp(prefix="inferbox-bench-cache-"))
    repo = folder / "repo"
    rng = np.random.default_rng(0)
    bodies, expected = {}, {}
    for model in run.MODELS:
        path = model.build(repo / model.name / "1" / "model.onnx")
        for suffix, admit in ADMISSIONS.items():
            cached = repo / f"{model.name}-{suffix}"
            (cached / "1").mkdir(parents=True)
            shutil.copy(path, cached / "1" / "model.onnx")
            config = {"response_cache": True, "response_cache_admit": admit}
            (cached / "inferbox.json").write_text(json.dumps(config))
        row = rng.standard_normal((1, *model.row)).astype(np.float32)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        expected[model.name] = session.run([model.output], {model.input: row})[0]
        bodies[model.name] = run.build_body(model, "binary", row, folder)
    cache_redis = CacheRedis(folder)
    models = tuple(
        _named(m, name)
        for m in run.MODELS
        for name in (m.name, *(f"{m.name}-{suffix}" for suffix in ADMISSIONS))
    )
    server = CachedInferbox(
        repo, client, args.redis_url, folder / "cache", models=models, cache_redis=cache_redis
    )
    points: list[Point] = []
    try:
        server.start()
        for model in run.MODELS:
            verify(server, model, bodies[model.name], expected[model.name])
        for round_ in range(1, args.rounds + 1):
            for model in run.MODELS:
                for admit, hit_rate in POINTS:
                    points.append(
                        measure(
                            wrk, server, model, bodies[model.name], admit, hit_rate, round_, args
                        )
                    )
        for model in run.MODELS:
            verify(server, model, bodies[model.name], expected[model.name])
    except BaseException:
        print(server.log_tail(), file=sys.stderr)
        raise
    finally:
        server.stop()
        cache_redis.stop()
        shutil.rmtree(folder, ignore_errors=True)
    load = (
        f"load average (1, 5, 15 min) {load_before} before the run, {loadavg()} after it "
        f"(this run's own processes included; {os.cpu_count()} cores)"
    )
    table = report(points, args, started, run.machine(client, wrk), load)
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(f"# Response cache benchmark\n\n{table}")
    run.log(f"wrote {RESULTS}")
    if not args.no_doc:
        text = DOC.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            DOC.write_text(head + BEGIN + "\n" + table + END + rest.split(END, 1)[1])
            run.log(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except run.BenchError as exc:
        print(f"scripts/bench --cache: FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
