"""MinIO's stand-in: moto's S3 server on :9000 whose objects outlive a restart.

moto keeps objects in memory; this writes every bucket and object (with its content type and
user metadata) under /data when the container is stopped (SIGTERM) and loads them back at start,
then marks itself ready for the healthcheck (`mc ready local`). Signatures are not checked.
MinIO's admin API calls that setup makes (the components' users and policies, `inferbox s3
setup`) are answered 200 and otherwise ignored: moto accepts any credentials.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

import boto3
from moto.moto_server.threaded_moto_server import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    ThreadedMotoServer,
    create_backend_app,
    make_server,
)

DATA = Path(sys.argv[2] if len(sys.argv) > 2 else "/data")
READY = Path("/tmp/s3-ready")
STATE = DATA / "s3-standin"


class AdminStandIn:
    """MinIO's admin API (/minio/admin/v3/...): every call answered 200, the rest to moto."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO", "").startswith("/minio/admin/"):
            environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            start_response("200 OK", [("Content-Length", "0")])
            return [b""]
        return self.app(environ, start_response)


class Server(ThreadedMotoServer):
    def _server_entry(self) -> None:
        app = AdminStandIn(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(
            self._ip_address, self._port, app, True, request_handler=MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()


def client():
    return boto3.client(
        "s3",
        endpoint_url="http://127.0.0.1:9000",
        aws_access_key_id=os.environ.get("MINIO_ROOT_USER", "standin"),
        aws_secret_access_key=os.environ.get("MINIO_ROOT_PASSWORD", "standin"),
        region_name="us-east-1",
    )


def load(s3) -> int:
    count = 0
    if not STATE.is_dir():
        return count
    for bucket_dir in sorted(p for p in STATE.iterdir() if p.is_dir()):
        s3.create_bucket(Bucket=bucket_dir.name)
        meta = json.loads((bucket_dir / "index.json").read_text())
        for key, info in meta.items():
            with (bucket_dir / info["file"]).open("rb") as body:
                s3.put_object(
                    Bucket=bucket_dir.name,
                    Key=key,
                    Body=body,
                    ContentType=info["content_type"],
                    Metadata=info["metadata"],
                )
            count += 1
    return count


def save(s3) -> int:
    count = 0
    new = DATA / "s3-standin.new"
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    for bucket in s3.list_buckets()["Buckets"]:
        name = bucket["Name"]
        (new / name).mkdir()
        index = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            for item in page.get("Contents", []):
                key = item["Key"]
                head = s3.head_object(Bucket=name, Key=key)
                filename = f"{len(index):08d}"
                s3.download_file(name, key, str(new / name / filename))
                index[key] = {
                    "file": filename,
                    "content_type": head.get("ContentType", "binary/octet-stream"),
                    "metadata": head.get("Metadata", {}),
                }
                count += 1
        (new / name / "index.json").write_text(json.dumps(index))
    shutil.rmtree(STATE, ignore_errors=True)
    new.rename(STATE)
    return count


def main() -> None:
    server = Server(ip_address="0.0.0.0", port=9000)
    server.start()
    s3 = client()
    print(f"s3 stand-in: loaded {load(s3)} object(s) from {STATE}", flush=True)
    READY.touch()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    READY.unlink(missing_ok=True)
    print(f"s3 stand-in: saved {save(s3)} object(s) to {STATE}", flush=True)
    server.stop()


if __name__ == "__main__":
    main()
