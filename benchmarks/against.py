"""``scripts/bench --against REV``: this tree's inferbox against revision REV's, in one run.

A change that reshapes code on the hot path must show that it costs nothing: this measures
both, on the same machine and the same load, alternating (``--rounds``, this tree first, then
REV, then this tree ...) so that a burst of someone else's load falls on both. REV's code runs
from a git worktree made for the run (its ``services/`` first on ``PYTHONPATH``, with this
tree's virtual environment); everything else is ``benchmarks/run.py``'s: the tiny (mlp) and the
compute-heavy (conv) model, JSON and binary tensors, wrk, answers checked against ONNX Runtime
before each measurement. The report (median req/s of the rounds, and their ratio) goes to
``benchmarks/results/against-<REV>.md``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run

RESULTS = run.ROOT / "benchmarks" / "results"


class RevisionServer(run.InferboxServer):
    """inferbox as revision ``label`` has it: its package (in ``tree``) first on the path."""

    def __init__(self, tree: Path, label: str, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tree = tree
        self.name = f"inferbox@{label}"

    def env(self) -> dict[str, str]:
        return {**super().env(), "PYTHONPATH": str(self.tree / "services")}


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(run.ROOT), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench --against", description=__doc__)
    parser.add_argument("revision", help="the git revision to compare with (e.g. a commit)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per point")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warmup per point")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of both [2]")
    parser.add_argument("--concurrency", default="1,64", help="connection counts [1,64]")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    args.argv = argv
    args.limited_key = False
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    concurrency = sorted({int(c) for c in args.concurrency.split(",")})
    base = _git("rev-parse", "--short", args.revision)
    head = _git("rev-parse", "--short", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    here = f"{head}{'+' if dirty else ''}"
    started = datetime.now(UTC)
    wrk = run.ensure_wrk()
    client = redis.Redis.from_url(args.redis_url)
    client.ping()
    with tempfile.TemporaryDirectory(prefix="inferbox-against-") as tmp:
        folder = Path(tmp)
        tree = folder / "tree"
        _git("worktree", "add", "--detach", str(tree), base)
        try:
            bodies, expected = run.model_inputs(folder / "repo", folder)
            points: list[run.Point] = []
            retries: list[str] = []
            for number in range(args.rounds):
                for server in (
                    run.InferboxServer(
                        folder / "repo", client, args.redis_url, folder / f"cache-{number}"
                    ),
                    RevisionServer(
                        tree,
                        base,
                        folder / "repo",
                        client,
                        args.redis_url,
                        folder / f"cache-rev-{number}",
                    ),
                ):
                    if server.name == "inferbox":
                        server.name = f"inferbox@{here}"
                    points += run.measure_server(
                        retries, server, wrk, bodies, expected, concurrency, args
                    )
        finally:
            _git("worktree", "remove", "--force", str(tree))
    table = report(points, here, base, concurrency, args, run.machine(client, wrk), started)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"against-{base}.md"
    out.write_text(f"# inferbox {here} against {base}\n\n{table}")
    run.log(f"wrote {out}")
    return 0


def report(points, here: str, base: str, concurrency, args, about, started) -> str:
    """Median req/s and p99 of the rounds, this tree beside REV, and the ratio."""

    def median(server: str, model: str, encoding: str, conns: int, what: str) -> float:
        values = [
            getattr(p.wrk, what)
            for p in points
            if (p.server, p.model, p.encoding, p.conns) == (server, model, encoding, conns)
        ]
        return statistics.median(values)

    ours, theirs = f"inferbox@{here}", f"inferbox@{base}"
    out = [
        f"Measured {started:%Y-%m-%d %H:%M} UTC by "
        f"`scripts/bench --against {' '.join(args.argv)}`: {args.rounds} rounds of both, "
        f"alternating; {args.duration:g} s per point after {args.warmup:g} s of warmup; the "
        "median of the rounds.",
        "",
        *about,
        "",
        f"| model | tensors | conc. | {here} req/s | {base} req/s | {here} / {base} "
        f"| {here} p99 ms | {base} p99 ms |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for model in run.MODELS:
        for encoding in run.ENCODINGS:
            for c in concurrency:
                new = median(ours, model.name, encoding, c, "rps")
                old = median(theirs, model.name, encoding, c, "rps")
                out.append(
                    f"| {model.name} | {encoding} | {c} | {new:.0f} | {old:.0f} "
                    f"| {new / old:.2f}x | {median(ours, model.name, encoding, c, 'p99_ms'):.2f} "
                    f"| {median(theirs, model.name, encoding, c, 'p99_ms'):.2f} |"
                )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except run.BenchError as exc:
        print(f"scripts/bench --against: FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
