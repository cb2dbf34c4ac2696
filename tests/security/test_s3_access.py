"""Each part's object-store user can do what its code does and nothing more, checked by an S3
server that enforces the policies (``tests/security/s3_iam.py``); the MinIO admin calls that
make the users, and the bucket's default encryption."""

from __future__ import annotations

import io
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import urllib3
from minio.crypto import decrypt
from minio.error import S3Error
from moto.server import ThreadedMotoServer

from inferbox.registry import s3_access
from inferbox.registry.objects import ObjectStore
from tests.security.s3_iam import s3_with_policies

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def users():
    with s3_with_policies(f"ibtest-{uuid.uuid4().hex[:8]}") as users:
        yield users


def _store(users, who: str) -> ObjectStore:
    access, secret = users.keys[who]
    return ObjectStore(
        users.endpoint, access, secret, users.bucket, secure=False, region="us-east-1"
    )


def _denied(call) -> bool:
    try:
        call()
    except S3Error as exc:
        return exc.code == "AccessDenied"
    return False


def test_the_api_stores_models_and_job_data(users, tmp_path):
    api = _store(users, "api")
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model bytes")
    sha = "ab" * 32
    api.ensure_bucket()
    api.put_file(model, sha, model.stat().st_size)
    api.client.put_object(users.bucket, "jobs/inputs/a.npy", io.BytesIO(b"in"), 2)
    assert api.size(f"models/sha256/{sha}") == model.stat().st_size
    assert api.client.get_object(users.bucket, "jobs/inputs/a.npy").read() == b"in"
    assert _denied(lambda: api.client.put_object(users.bucket, "elsewhere", io.BytesIO(b""), 0))


def test_the_worker_reads_models_and_writes_job_results_only(users, tmp_path):
    api, worker = _store(users, "api"), _store(users, "worker")
    sha = "cd" * 32
    source = tmp_path / "m.onnx"
    source.write_bytes(b"a model")
    api.put_file(source, sha, source.stat().st_size)
    worker.ensure_bucket()  # the bucket exists: no permission to create one needed
    fetched = tmp_path / "fetched.onnx"
    worker.client.fget_object(users.bucket, f"models/sha256/{sha}", str(fetched))
    assert fetched.read_bytes() == b"a model"
    worker.client.put_object(users.bucket, "jobs/j1/result.1", io.BytesIO(b"out"), 3)
    worker.client.remove_object(users.bucket, "jobs/j1/result.1")
    # A worker runs uploaded models: it must not be able to replace or delete one.
    assert _denied(
        lambda: worker.client.put_object(
            users.bucket, f"models/sha256/{sha}", io.BytesIO(b"evil"), 4
        )
    )
    assert _denied(lambda: worker.client.remove_object(users.bucket, f"models/sha256/{sha}"))
    assert _denied(lambda: worker.client.make_bucket(f"ibtest-{uuid.uuid4().hex[:8]}"))


def test_the_grpc_server_sees_the_bucket_and_no_file(users):
    grpc = _store(users, "grpc")
    grpc.ensure_bucket()
    assert _denied(lambda: grpc.client.get_object(users.bucket, "jobs/inputs/a.npy"))
    assert _denied(lambda: grpc.client.put_object(users.bucket, "jobs/x", io.BytesIO(b""), 0))


class _Admin(BaseHTTPRequestHandler):
    """Records MinIO admin API calls (method, path, query, body) and answers 200."""

    seen: list[tuple[str, str, dict, bytes]] = []

    def do_PUT(self):
        length = int(self.headers.get("Content-Length") or 0)
        url = urlsplit(self.path)
        self.seen.append((self.command, url.path, parse_qs(url.query), self.rfile.read(length)))
        assert self.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=root/")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_users_are_made_with_minios_admin_api(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Admin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Admin.seen = []
    try:
        admin = s3_access.admin_client(
            f"127.0.0.1:{server.server_address[1]}",
            "root",
            "rootsecret",
            secure=False,
            region="us-east-1",
        )
        made = s3_access.apply_users(
            admin, "inferbox", [("worker", "inferbox-worker", "workersecret1")]
        )
    finally:
        server.shutdown()
        server.server_close()
    assert made == ["inferbox-worker"]
    paths = [(method, path) for method, path, _, _ in _Admin.seen]
    assert paths == [
        ("PUT", "/minio/admin/v3/add-canned-policy"),
        ("PUT", "/minio/admin/v3/add-user"),
        ("PUT", "/minio/admin/v3/set-user-or-group-policy"),
    ]
    (_, _, policy_query, policy_body), (_, _, user_query, user_body), (_, _, set_query, _) = (
        _Admin.seen
    )
    assert policy_query == {"name": ["inferbox-worker"]}
    assert json.loads(policy_body) == s3_access.policy("worker", "inferbox")
    assert user_query == {"accessKey": ["inferbox-worker"]}
    # MinIO's admin API encrypts the new user's secret with the caller's secret key.
    sealed = urllib3.HTTPResponse(body=io.BytesIO(user_body), preload_content=False)
    assert json.loads(decrypt(sealed, "rootsecret")) == {
        "status": "enabled",
        "secretKey": "workersecret1",
    }
    assert set_query == {
        "policyName": ["inferbox-worker"],
        "userOrGroup": ["inferbox-worker"],
        "isGroup": ["false"],
    }


def test_the_bucket_encrypts_new_objects_by_default():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        bucket = f"ibtest-{uuid.uuid4().hex[:8]}"
        store = ObjectStore(
            f"{host}:{port}", "root", "root", bucket, secure=False, region="us-east-1"
        )
        store.ensure_bucket()
        s3_access.encrypt_bucket(store.client, bucket)
        s3_access.encrypt_bucket(store.client, bucket)  # idempotent
        assert store.client.get_bucket_encryption(bucket).rule.sse_algorithm == "AES256"
        store.client.put_object(bucket, "jobs/x", io.BytesIO(b"data"), 4)
        stat = store.client.stat_object(bucket, "jobs/x")
        assert stat.metadata.get("x-amz-server-side-encryption") == "AES256"
    finally:
        server.stop()
