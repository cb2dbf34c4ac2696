"""Model files in an S3 bucket, addressed by their sha256 (``ObjectStore``).

Written for MinIO through the ``minio`` SDK but S3-generic: endpoint, keys, TLS flag, region
and bucket are all there is to configure. A file's key is ``models/sha256/<hex digest>``, so
two versions with the same bytes share one object, and a fetched file is checked against the
digest it is named after.

The SDK is synchronous (blocking HTTP): async callers run these methods in a thread, e.g.
``await asyncio.to_thread(objects.put_file, path, sha256, size)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from pathlib import Path

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import S3Error

from inferbox.registry.errors import ChecksumMismatch

PREFIX = "models/sha256/"
_MISSING = ("NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound")
# Multipart parts are held in memory while they upload (two at a time): this bounds what an
# upload costs the API, whatever the model's size (a 2 GB model is 128 parts).
_PART_SIZE = 16 << 20
_CHUNK = 1 << 20


def object_key(sha256: str) -> str:
    """The key of the file whose sha256 hex digest is ``sha256``."""
    return PREFIX + sha256


class ObjectStore:
    """One bucket of model files on an S3-compatible server."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        secure: bool = True,
        region: str | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        """``endpoint`` is ``host:port`` without a scheme; ``secure`` picks https.

        ``timeout_s`` bounds connecting and each wait for data. The SDK's own default (five
        minutes, retried five times) would hold a call for half an hour on a store that
        accepts connections but does not answer.
        """
        self.bucket = bucket
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout_s, 5.0), read=timeout_s),
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            # Refused connections and 5xx answers are retried; a read that timed out is not
            # (the store is not answering: waiting again only delays the error).
            retries=urllib3.Retry(
                total=3,
                connect=2,
                read=0,
                backoff_factor=0.2,
                status_forcelist=[500, 502, 503, 504],
            ),
        )
        self.client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=http,
        )
        self._region = region

    def object_keys(self) -> list[str]:
        """Every object key in the bucket."""
        return [o.object_name for o in self.client.list_objects(self.bucket, recursive=True)]

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist yet (safe to call at every start)."""
        if self.client.bucket_exists(self.bucket):
            return
        try:
            self.client.make_bucket(self.bucket, location=self._region)
        except S3Error as exc:  # another process created it in between
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def size(self, key: str) -> int | None:
        """The stored object's size, or None when there is no such object."""
        try:
            return self.client.stat_object(self.bucket, key).size
        except S3Error as exc:
            if exc.code in _MISSING:
                return None
            raise

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        return self.size(key) is not None

    def put_file(self, path: Path, sha256: str, size: int) -> str:
        """Store a local file under its content address and return the key.

        ``sha256`` and ``size`` are what the caller measured while receiving the file (see
        ``upload.spool``). An object already stored under that key with that size is kept: the
        upload is skipped.
        """
        key = object_key(sha256)
        if self.size(key) == size:
            return key
        self.client.fput_object(
            self.bucket,
            key,
            str(path),
            content_type="application/octet-stream",
            metadata={"sha256": sha256},
            part_size=_PART_SIZE,
            num_parallel_uploads=2,
        )
        return key

    def fetch(self, key: str, dest: Path, expected_sha256: str) -> Path:
        """Download ``key`` to ``dest`` atomically, verified against ``expected_sha256``.

        The bytes go to a temporary file in ``dest``'s folder, which is renamed onto ``dest``
        only when its sha256 matches; otherwise it is removed and ``ChecksumMismatch`` raised.
        ``dest`` never holds a partial or wrong file.
        """
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                response = self.client.get_object(self.bucket, key)
                try:
                    for chunk in response.stream(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                finally:
                    response.close()
                    response.release_conn()
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != expected_sha256:
                raise ChecksumMismatch(
                    f"object {key!r} has sha256 {digest.hexdigest()}, expected {expected_sha256}"
                )
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return dest

    def delete(self, key: str) -> None:
        """Remove an object (no error if it is already gone)."""
        self.client.remove_object(self.bucket, key)

    # -- job data (inputs and results under ``jobs/``; not content-addressed) -----------------

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key`` (a job's request body or result)."""
        self.client.put_object(
            self.bucket, key, io.BytesIO(data), len(data), content_type=content_type
        )

    def put_path(self, key: str, path: Path, content_type: str) -> None:
        """Store a local file under ``key`` (multipart, bounded memory, like ``put_file``)."""
        self.client.fput_object(
            self.bucket,
            key,
            str(path),
            content_type=content_type,
            part_size=_PART_SIZE,
            num_parallel_uploads=2,
        )

    def get_bytes(self, key: str) -> bytes:
        """The whole object (for small ones: a job's request body)."""
        response = self.client.get_object(self.bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def download(self, key: str, dest: Path) -> Path:
        """Copy the object to ``dest`` (job inputs; unverified: not content-addressed)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.client.fget_object(self.bucket, key, str(dest))
        return dest

    def open_stream(self, key: str, chunk_size: int = _CHUNK):
        """An iterator over the object's bytes in chunks (results streamed to a client); the
        connection is released when the iterator is exhausted or closed."""
        response = self.client.get_object(self.bucket, key)

        def chunks():
            try:
                yield from response.stream(chunk_size)
            finally:
                response.close()
                response.release_conn()

        return chunks()

    def keys_under(self, prefix: str) -> list[str]:
        """Keys of every object whose key starts with ``prefix``."""
        objects = self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
        return [o.object_name for o in objects]

    def delete_many(self, keys: list[str]) -> list[str]:
        """Remove several objects; returns the keys that could not be removed."""
        errors = self.client.remove_objects(self.bucket, [DeleteObject(key) for key in keys])
        return [error.name for error in errors]
