"""gRPC through nginx: TLS and HTTP/2 on the same port as HTTPS, one certificate."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway(triton_gateway):
    return triton_gateway


@pytest.fixture(scope="module")
def auth(triton_appliance):
    return {"authorization": f"Bearer {triton_appliance.appliance.api_key}"}


def _client(gateway, cls=grpcclient):
    return cls.InferenceServerClient(
        f"127.0.0.1:{gateway.https_port}",
        ssl=True,
        root_certificates=str(gateway.ca),
    )


def test_grpc_and_https_share_the_port(gateway, auth):
    with _client(gateway) as client:
        assert client.is_server_live(headers=auth)
        assert client.is_model_ready("batched", headers=auth)
        x = np.ones((2, 16), np.float32)
        item = grpcclient.InferInput("x", [2, 16], "FP32")
        item.set_data_from_numpy(x)
        assert client.infer("batched", [item], headers=auth).as_numpy("y").shape == (2, 4)
        with pytest.raises(InferenceServerException) as refused:
            client.infer("batched", [item])
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
    with gateway.client() as https:
        assert https.get("/v2/health/live").status_code == 200
    access = [line for line in gateway.access_lines() if "GRPCInferenceService" in line["path"]]
    assert access and access[-1]["status"] == 200


def test_concurrent_calls_through_the_gateway(gateway, auth):
    rng = np.random.default_rng(5)
    rows = [rng.standard_normal((1, 16)).astype(np.float32) for _ in range(32)]

    def one(x):
        with _client(gateway) as client:
            item = grpcclient.InferInput("x", [1, 16], "FP32")
            item.set_data_from_numpy(x)
            return client.infer("batched", [item], headers=auth).as_numpy("y")

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, rows))
    assert all(a.shape == (1, 4) for a in answers)

    async def run():
        async with _client(gateway, grpcaio) as aio:

            async def call(x):
                item = grpcaio.InferInput("x", [1, 16], "FP32")
                item.set_data_from_numpy(x)
                return (await aio.infer("batched", [item], headers=auth)).as_numpy("y")

            return await asyncio.gather(*(call(x) for x in rows))

    for sync_answer, aio_answer in zip(answers, asyncio.run(run()), strict=True):
        np.testing.assert_allclose(sync_answer, aio_answer, rtol=1e-6)


def test_a_large_tensor_through_the_gateway(gateway, auth):
    x = np.random.default_rng(6).standard_normal((65_536, 16)).astype(np.float32)
    with _client(gateway) as client:
        item = grpcclient.InferInput("x", list(x.shape), "FP32")
        item.set_data_from_numpy(x)
        assert client.infer("rows", [item], headers=auth).as_numpy("y").shape == (65_536, 4)
