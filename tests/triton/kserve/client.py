"""Calls inferbox through nginx with KServe's own gRPC client (``kserve.InferenceGRPCClient``).

Run by ``tests/triton/test_kserve_client.py`` in a virtual environment of its own: kserve
0.21 pins protobuf below 7, which inferbox's environment does not have. Prints one JSON object
with what each call answered.

    python client.py HOST:PORT CA_FILE API_KEY
"""

import asyncio
import json
import sys

import grpc
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest


async def main(url: str, ca_file: str, api_key: str) -> dict:
    auth = [("authorization", f"Bearer {api_key}")]
    client = InferenceGRPCClient(url, use_ssl=True, root_certificates=ca_file, retries=0)
    report = {}
    try:
        report["live"] = await client.is_server_live(headers=auth)
        report["ready"] = await client.is_server_ready(headers=auth)
        report["model_ready"] = await client.is_model_ready("batched", headers=auth)
        x = np.arange(32, dtype=np.float32).reshape(2, 16)
        item = InferInput("x", list(x.shape), "FP32")
        item.set_data_from_numpy(x, binary_data=True)
        answer = await client.infer(
            InferRequest(model_name="batched", infer_inputs=[item], request_id="k1"),
            headers=auth,
        )
        report["infer"] = {
            "id": answer.id,
            "model": answer.model_name,
            "outputs": {o.name: o.as_numpy().tolist() for o in answer.outputs},
        }
        try:
            await client.infer(InferRequest(model_name="batched", infer_inputs=[item]))
        except grpc.aio.AioRpcError as exc:
            report["no_key"] = exc.code().name
        try:
            await client.infer(InferRequest(model_name="absent", infer_inputs=[item]), headers=auth)
        except grpc.aio.AioRpcError as exc:
            report["unknown_model"] = [exc.code().name, exc.details()]
    finally:
        await client.close()
    return report


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:4]))))
