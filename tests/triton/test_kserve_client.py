"""KServe's gRPC client (``kserve.InferenceGRPCClient``) against inferbox through nginx.

kserve 0.21 pins protobuf below 7, so it runs in a virtual environment of its own
(``.venv-kserve``, made once and kept; ``INFERBOX_KSERVE_VENV`` names another) from
``kserve/client.py``; its answers are compared with ``tritonclient.grpc``'s through the same
gateway.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

KSERVE = "kserve==0.21.0"
ROOT = Path(__file__).resolve().parents[2]
CLIENT = Path(__file__).with_name("kserve") / "client.py"


def _kserve_python() -> Path:
    """The interpreter of a virtual environment holding ``KSERVE`` (made when missing)."""
    venv = Path(os.environ.get("INFERBOX_KSERVE_VENV", ROOT / ".venv-kserve"))
    python = venv / "bin" / "python"
    stamp = venv / ".inferbox-kserve"
    if not python.exists() or not stamp.exists() or stamp.read_text() != KSERVE:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", KSERVE],
            check=True,
            timeout=540,
        )
        stamp.write_text(KSERVE)
    return python


@pytest.fixture(scope="module")
def gateway(triton_gateway):
    return triton_gateway


def test_kserve_grpc_client_through_nginx(gateway, triton_appliance):
    python = _kserve_python()
    key = triton_appliance.appliance.api_key
    target = f"127.0.0.1:{gateway.https_port}"
    done = subprocess.run(
        [str(python), str(CLIENT), target, str(gateway.ca), key],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["live"] is True and report["ready"] is True and report["model_ready"] is True
    assert report["no_key"] == "UNAUTHENTICATED"
    assert report["unknown_model"][0] == "NOT_FOUND" and "absent" in report["unknown_model"][1]

    x = np.arange(32, dtype=np.float32).reshape(2, 16)
    item = grpcclient.InferInput("x", list(x.shape), "FP32")
    item.set_data_from_numpy(x)
    with grpcclient.InferenceServerClient(
        target, ssl=True, root_certificates=str(gateway.ca)
    ) as triton:
        expected = triton.infer(
            "batched", [item], headers={"authorization": f"Bearer {key}"}
        ).as_numpy("y")
    answer = report["infer"]
    assert answer["id"] == "k1" and answer["model"] == "batched"
    np.testing.assert_array_equal(np.asarray(answer["outputs"]["y"], np.float32), expected)
