"""Per-GPU gauges through NVIDIA's NVML (``nvidia-ml-py``), only where NVML finds a device.

Without the NVML library or without a GPU, ``gpu_collector()`` returns None and no GPU series
exist at all: dashboards show "no data" rather than invented zeros.
"""

from __future__ import annotations

import structlog
from prometheus_client.core import GaugeMetricFamily

log = structlog.get_logger(__name__)


class NvmlCollector:
    """Utilization, memory used/total and temperature of every device NVML lists."""

    def __init__(self, nvml, count: int) -> None:
        self.nvml = nvml
        self.count = count

    def collect(self):
        nvml = self.nvml
        labels = ["gpu", "name"]
        util = GaugeMetricFamily(
            "inferbox_gpu_utilization_ratio",
            "Fraction of the last sample period a kernel ran on the GPU (0-1).",
            labels=labels,
        )
        used = GaugeMetricFamily(
            "inferbox_gpu_memory_used_bytes", "GPU memory in use.", labels=labels
        )
        total = GaugeMetricFamily("inferbox_gpu_memory_total_bytes", "GPU memory.", labels=labels)
        temp = GaugeMetricFamily(
            "inferbox_gpu_temperature_celsius", "GPU core temperature.", labels=labels
        )
        for index in range(self.count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = nvml.nvmlDeviceGetName(handle)
                name = name.decode() if isinstance(name, bytes) else name
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                celsius = nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
            except nvml.NVMLError as exc:
                log.warning("GPU metrics unreadable", gpu=index, error=str(exc))
                continue
            key = [str(index), name]
            util.add_metric(key, rates.gpu / 100)
            used.add_metric(key, memory.used)
            total.add_metric(key, memory.total)
            temp.add_metric(key, celsius)
        yield from (util, used, total, temp)


def gpu_collector(nvml=None) -> NvmlCollector | None:
    """A collector for this machine's GPUs, or None where NVML or a GPU is missing."""
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return None
    try:
        nvml.nvmlInit()
        count = nvml.nvmlDeviceGetCount()
    except nvml.NVMLError as exc:
        log.info("no NVML here; GPU metrics off", reason=str(exc))
        return None
    if count == 0:
        return None
    return NvmlCollector(nvml, count)
