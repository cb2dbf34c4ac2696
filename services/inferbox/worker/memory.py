"""How much memory a loaded model takes: device memory on a GPU, resident memory on a CPU."""

from __future__ import annotations

import os

_PAGE = os.sysconf("SC_PAGE_SIZE")


def process_rss() -> int:
    """Resident set size of this process, in bytes."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * _PAGE


def device_used(index: int = 0) -> int | None:
    """Bytes in use on a GPU through NVML, or None without one."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    except Exception:
        return None


def process_device_used(index: int = 0, pid: int | None = None) -> int | None:
    """Bytes this process holds on a GPU (its CUDA context, arenas and weights) through NVML,
    or None without one; other processes on the same device are not counted."""
    pid = os.getpid() if pid is None else pid
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        processes = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except Exception:
        return None
    return sum(p.usedGpuMemory or 0 for p in processes if p.pid == pid)


def usage(device: str) -> int:
    """The figure residency counts on this worker's device."""
    if device == "cuda":
        used = process_device_used()
        if used is not None:
            return used
    return process_rss()


def should_recycle(rss: int, baseline: int, models: int, factor: float) -> bool:
    """True when memory outgrew what the resident models explain (arenas never shrink)."""
    return factor > 0 and rss > factor * (baseline + models)
