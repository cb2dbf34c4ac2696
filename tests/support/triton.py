"""The Triton suite's appliance: which models it serves, and the handle on it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.support.appliance import Appliance

SERVED = ("rows", "batched", "dynamic", "reshaped", "declared", "alltypes", "typed")


@dataclass
class TritonAppliance:
    """The appliance with the Triton repository imported, and its gRPC server beside it."""

    appliance: Appliance
    grpc_url: str
    import_report: str
    repo: Path
    grpc_metrics_url: str
