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


def usage(device: str) -> int:
    """The figure residency counts on this worker's device."""
    if device == "cuda":
        used = device_used()
        if used is not None:
            return used
    return process_rss()


def should_recycle(rss: int, baseline: int, models: int, factor: float) -> bool:
    """True when memory outgrew what the resident models explain (arenas never shrink)."""
    return factor > 0 and rss > factor * (baseline + models)
