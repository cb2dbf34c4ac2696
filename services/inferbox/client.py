"""A small HTTP client for the control plane (``/v1``) and inference (``/v2``), used by the CLI."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np

CHUNK = 1 << 20


class ApiError(Exception):
    """An error answer of the API, with its status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("error") or body.get("title") or body)
    return str(body)


class InferboxClient:
    """Calls one inferbox API (directly or through nginx) with an optional API key."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        ca_cert: str | None = None,
        timeout: float = 120.0,
    ):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            headers=headers,
            verify=ssl.create_default_context(cafile=ca_cert) if ca_cert else True,
            timeout=timeout,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def __enter__(self) -> InferboxClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise ApiError(response.status_code, _message(response))
        return response

    # -- models ---------------------------------------------------------------------------------

    def push(
        self,
        path: Path,
        name: str,
        alias: str | None = None,
        progress: Callable[[int], None] | None = None,
        triton_config: str | None = None,
    ) -> dict:
        """Upload a model file as a new version (streamed, never read whole into memory),
        with the text of its Triton ``config.pbtxt`` when given."""

        def chunks() -> Iterator[bytes]:
            with path.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    if progress:
                        progress(len(chunk))
                    yield chunk

        params = {"alias": alias} if alias else {}
        if triton_config is not None:
            params["triton_config"] = triton_config
        return self._request(
            "POST",
            f"/v1/models/{name}/versions",
            content=chunks(),
            params=params,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(path.stat().st_size),
            },
        ).json()

    def models(self) -> list[dict]:
        """Every model with its versions and aliases."""
        return self._request("GET", "/v1/models").json()["models"]

    def model(self, name: str) -> dict:
        """One model with each version's details and state per worker."""
        return self._request("GET", f"/v1/models/{name}").json()

    def version(self, name: str, version: int) -> dict:
        """One version, with its capacity card when measured."""
        return self._request("GET", f"/v1/models/{name}/versions/{version}").json()

    def delete_version(self, name: str, version: int, force: bool = False) -> None:
        """Delete a version (refused while an alias points at it unless ``force``)."""
        self._request(
            "DELETE", f"/v1/models/{name}/versions/{version}", params={"force": str(force).lower()}
        )

    def set_alias(self, name: str, alias: str, version: int) -> dict:
        """Point ``alias`` at ``version`` (creating or moving it)."""
        return self._request(
            "PUT", f"/v1/models/{name}/aliases/{alias}", json={"version": version}
        ).json()

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove an alias."""
        self._request("DELETE", f"/v1/models/{name}/aliases/{alias}")

    # -- keys and audit -------------------------------------------------------------------------

    def create_key(self, name: str, scopes: list[str], **options) -> dict:
        """Create an API key (admin); the answer's ``key`` is the secret, shown only now.

        ``options``: ``allowed_models``, ``priority``, ``rate_per_s``, ``burst``,
        ``max_concurrency``, ``expires_in_s``; a limit left out gets the appliance's default,
        and ``unlimited=True`` asks for no rate or concurrency limit at all.
        """
        unlimited = options.pop("unlimited", False)
        body = {"name": name, "scopes": scopes}
        body.update({k: v for k, v in options.items() if v is not None})
        if unlimited:
            body.update(rate_per_s=None, burst=None, max_concurrency=None)
        return self._request("POST", "/v1/keys", json=body).json()

    def list_keys(self) -> list[dict]:
        """Every API key, without secrets (admin)."""
        return self._request("GET", "/v1/keys").json()["keys"]

    def revoke_key(self, key_id: str) -> dict:
        """Revoke an API key (admin); refused everywhere within a second."""
        return self._request("DELETE", f"/v1/keys/{key_id}").json()

    def audit(self, **filters) -> dict:
        """A page of the audit log, newest first (admin): ``actor``, ``action``, ``since``,
        ``before`` (the previous page's ``next``), ``limit``."""
        params = {k: v for k, v in filters.items() if v is not None}
        return self._request("GET", "/v1/audit", params=params).json()

    # -- inference -------------------------------------------------------------------------------

    def infer(self, name: str, inputs: dict[str, np.ndarray], version: str | None = None) -> dict:
        """Run a model with binary tensors; returns output name -> array."""
        body, headers = binary_request(inputs)
        response = self._request(
            "POST", _model_path(name, version, "infer"), content=body, headers=headers
        )
        return decode_outputs(response)

    # -- jobs ------------------------------------------------------------------------------------

    def upload_job_input(self, path: Path, fmt: str | None = None) -> dict:
        """Upload a ``.npy``/``.npz``/JSON-lines file for jobs; its description (``input_id``)."""
        params = {"filename": path.name}
        if fmt:
            params["format"] = fmt

        def chunks() -> Iterator[bytes]:
            with path.open("rb") as handle:
                while block := handle.read(CHUNK):
                    yield block

        return self._request("POST", "/v1/jobs/inputs", content=chunks(), params=params).json()

    def submit_job(
        self,
        name: str,
        *,
        inputs: dict[str, np.ndarray] | None = None,
        input_id: str | None = None,
        version: str | None = None,
        idempotency_key: str | None = None,
        webhook_url: str | None = None,
        retention_s: int | None = None,
    ) -> dict:
        """Queue a job over ``inputs`` (arrays) or an uploaded ``input_id``; the 202 answer."""
        parameters = {
            k: v
            for k, v in (("webhook_url", webhook_url), ("retention_s", retention_s))
            if v is not None
        }
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        path = _model_path(name, version, "jobs")
        if input_id is not None:
            body = {"input_id": input_id, "parameters": parameters}
            return self._request("POST", path, json=body, headers=headers).json()
        if inputs is None:
            raise ValueError("give inputs or an input_id")
        body, binary_headers = binary_request(inputs, parameters)
        headers.update(binary_headers)
        return self._request("POST", path, content=body, headers=headers).json()

    def job(self, job_id: str) -> dict:
        """A job's state, progress, attempts and error."""
        return self._request("GET", f"/v1/jobs/{job_id}").json()

    def jobs(self, **filters) -> dict:
        """A page of jobs (``state``, ``model``, ``limit``, ``cursor``)."""
        params = {k: v for k, v in filters.items() if v is not None}
        return self._request("GET", "/v1/jobs", params=params).json()

    def cancel_job(self, job_id: str) -> dict:
        """Cancel a queued or running job."""
        return self._request("DELETE", f"/v1/jobs/{job_id}").json()

    def job_result(self, job_id: str) -> dict[str, np.ndarray]:
        """A finished job's outputs, name -> array."""
        return decode_outputs(self._request("GET", f"/v1/jobs/{job_id}/result"))

    def wait_job(
        self,
        job_id: str,
        on_progress: Callable[[dict], None] | None = None,
        poll_s: float = 0.5,
        timeout_s: float | None = None,
    ) -> dict:
        """Poll until the job ends (succeeded, failed, cancelled, expired); its last state."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if on_progress is not None:
                on_progress(job)
            if job["state"] in FINISHED:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job['state']}")
            time.sleep(poll_s)


FINISHED = ("succeeded", "failed", "cancelled", "expired")


def _model_path(name: str, version: str | None, action: str) -> str:
    return f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + f"/{action}"


def binary_request(
    inputs: dict[str, np.ndarray], parameters: dict | None = None
) -> tuple[bytes, dict[str, str]]:
    """A V2 request body with binary tensors (outputs asked binary too) and its headers."""
    from inferbox.protocol.datatypes import numpy_to_v2, serialize_bytes_tensor

    header = {"inputs": [], "outputs": []}
    raws = []
    for input_name, array in inputs.items():
        datatype = numpy_to_v2(array.dtype)
        if datatype == "BYTES":
            raw = serialize_bytes_tensor(array)
        else:
            array = np.ascontiguousarray(array)
            raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header["inputs"].append(
            {
                "name": input_name,
                "datatype": datatype,
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        raws.append(raw)
    header["parameters"] = {"binary_data_output": True, **(parameters or {})}
    head = json.dumps(header).encode()
    return head + b"".join(raws), {"Inference-Header-Content-Length": str(len(head))}


def decode_outputs(response: httpx.Response) -> dict[str, np.ndarray]:
    """Output arrays of a V2 response, JSON or binary."""
    from inferbox.protocol.datatypes import V2_TO_NUMPY, deserialize_bytes_tensor

    length = response.headers.get("inference-header-content-length")
    body = response.content
    header = json.loads(body[: int(length)] if length else body)
    offset = int(length) if length else 0
    outputs = {}
    for output in header["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is None:
            dtype = V2_TO_NUMPY[output["datatype"]]
            outputs[output["name"]] = np.array(output["data"], dtype=dtype).reshape(output["shape"])
            continue
        raw = body[offset : offset + size]
        offset += size
        if output["datatype"] == "BYTES":
            outputs[output["name"]] = np.array(deserialize_bytes_tensor(raw), dtype=object).reshape(
                output["shape"]
            )
        else:
            dtype = V2_TO_NUMPY[output["datatype"]]
            outputs[output["name"]] = np.frombuffer(raw, dtype=dtype).reshape(output["shape"])
    return outputs
