"""A local Ray cluster on 127.0.0.1 (CPU only), and workers started as the appliance starts them.

One Ray cluster serves the whole folder (it takes seconds to start). Each test starts its own
``inferbox ray-worker`` (and, to compare with, ``inferbox worker``) under a fresh Redis key
prefix, and talks to them over the interactive lane exactly as the API does: a stream entry per
call, replies on the caller's pub/sub channel.
"""

from __future__ import annotations

import msgspec
import pytest
import ray

from inferbox.models.spec import ModelSpec, spec_from_onnx
from inferbox.testing import onnx_models
from tests.support.scaleout import NAMESPACE, running_worker

# Ray and its dependencies warn about their own deprecations on import; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="session")
def ray_cluster() -> str:
    """A Ray cluster of this machine alone, on 127.0.0.1, with 4 logical CPUs; its GCS address."""
    ray.init(
        address="local",
        num_cpus=4,
        num_gpus=0,
        include_dashboard=False,
        namespace=NAMESPACE,
        log_to_driver=False,
        configure_logging=False,
        _node_ip_address="127.0.0.1",
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def scaleout_models(tmp_path_factory) -> dict[str, ModelSpec]:
    """Every model of ``inferbox.testing.onnx_models`` as a catalog spec (files on local disk)."""
    root = tmp_path_factory.mktemp("scaleout-models")
    built = {
        "mlp": onnx_models.mlp(root / "mlp.onnx"),
        "conv": onnx_models.conv_net(root / "conv.onnx"),
        "identity": onnx_models.identity_all_types(root / "identity.onnx"),
        "add_sub": onnx_models.add_sub(root / "add_sub.onnx"),
        "fixed": onnx_models.fixed_shape(root / "fixed.onnx"),
        "slow": onnx_models.slow(root / "slow.onnx", size=256, repeats=40),
    }
    specs = {name: spec_from_onnx(name, 1, path) for name, path in built.items()}
    # Small batches of the slow model keep several batches queued under load.
    specs["slow"] = msgspec.structs.replace(
        specs["slow"], config=msgspec.structs.replace(specs["slow"].config, max_batch_size=2)
    )
    return specs


@pytest.fixture
def ray_worker(tmp_path_factory, redis_client, ray_cluster):
    """A factory: ``with ray_worker(specs, **env) as running`` starts ``inferbox ray-worker``."""

    def start(specs: list[ModelSpec], **env: str):
        return running_worker(
            tmp_path_factory,
            redis_client,
            specs,
            "ray-worker",
            INFERBOX_RAY_ADDRESS=ray_cluster,
            **env,
        )

    return start
