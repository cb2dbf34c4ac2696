"""The plain server a user might write instead of inferbox: FastAPI + ONNX Runtime, one process.

One POST route, ``/v2/models/{name}/infer``, parses the KServe V2 JSON body (and Triton's binary
tensor extension in its simplest form), runs ``session.run`` inline per request (no queue, no
batching) and answers a V2 JSON body, or binary outputs when asked. Models come from a
Triton-layout folder in ``PLAIN_MODEL_REPOSITORY`` (``<name>/<version>/model.onnx``).

    PLAIN_MODEL_REPOSITORY=/tmp/repo uvicorn --app-dir benchmarks plain_server:app \
        --loop uvloop --http httptools --no-access-log

JSON goes through msgspec (the orjson-class parser already in inferbox's venv). Sessions use
the providers in ``PLAIN_PROVIDERS`` (comma-separated, default the CPU provider).
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException, Request, Response

DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64}
V2_TYPES = {np.dtype(t): name for name, t in DTYPES.items()}

app = FastAPI()
PROVIDERS = os.environ.get("PLAIN_PROVIDERS", "CPUExecutionProvider").split(",")
if "CUDAExecutionProvider" in PROVIDERS:
    ort.preload_dlls()
sessions: dict[str, ort.InferenceSession] = {}
for model_file in sorted(Path(os.environ["PLAIN_MODEL_REPOSITORY"]).glob("*/*/model.onnx")):
    sessions[model_file.parent.parent.name] = ort.InferenceSession(
        str(model_file), providers=PROVIDERS
    )


@app.post("/v2/models/{name}/infer")
async def infer(name: str, request: Request) -> Response:
    session = sessions.get(name)
    if session is None:
        raise HTTPException(404, f"unknown model {name}")
    body = await request.body()
    header_length = request.headers.get("inference-header-content-length")
    split = int(header_length) if header_length is not None else len(body)
    header = msgspec.json.decode(body[:split])
    offset = split
    feeds = {}
    for tensor in header["inputs"]:
        dtype = DTYPES[tensor["datatype"]]
        size = tensor.get("parameters", {}).get("binary_data_size")
        if size is None:
            array = np.asarray(tensor["data"], dtype=dtype)
        else:
            array = np.frombuffer(body[offset : offset + size], dtype=dtype)
            offset += size
        feeds[tensor["name"]] = array.reshape(tensor["shape"])

    wanted = {o["name"]: o for o in header.get("outputs") or []}
    names = list(wanted) or [o.name for o in session.get_outputs()]
    results = session.run(names, feeds)

    outputs, blobs = [], []
    for out_name, array in zip(names, results, strict=True):
        entry = {"name": out_name, "datatype": V2_TYPES[array.dtype], "shape": list(array.shape)}
        if wanted.get(out_name, {}).get("parameters", {}).get("binary_data"):
            blob = np.ascontiguousarray(array).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.ravel().tolist()
        outputs.append(entry)
    reply = msgspec.json.encode({"model_name": name, "id": header.get("id"), "outputs": outputs})
    if not blobs:
        return Response(reply, media_type="application/json")
    return Response(
        b"".join([reply, *blobs]),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(reply))},
    )
