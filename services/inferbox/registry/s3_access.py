"""Each running part's own object-store credentials, and the bucket's encryption at rest.

MinIO's root user can do anything, MinIO's own administration included. The running parts need
far less, and the worker, which runs uploaded models, least of all. ``inferbox s3 setup`` (run
by compose's ``setup`` with the root credentials) gives each part a MinIO user whose policy
(``policy``) allows what that part's code does and nothing else:

- ``api``: reads, writes and deletes model files (``models/``) and job data (``jobs/``): it
  stores uploads and job inputs, and serves job results;
- ``worker``: reads model files and job data, writes and deletes job data (results, and the
  reconciler's expiry), and cannot write or delete a model file;
- ``grpc``: only sees that the bucket exists (the gRPC server serves from the catalog; it
  never touches a file).

Policies are AWS IAM policy documents, the language MinIO's policy-based access control uses;
users and policies are made through MinIO's admin API (``minio.MinioAdmin``, what ``mc admin``
calls): ``add-canned-policy``, ``add-user`` and ``set-user-or-group-policy``, each of which
replaces what was there, so the step is safe at every start.

Encryption at rest: ``encrypt_bucket`` sets the bucket's default encryption to SSE-S3, so MinIO
encrypts every object written from then on with a key derived from its KMS key
(``MINIO_KMS_SECRET_KEY``, generated into ``.env``). Objects written before stay as they were.
"""

from __future__ import annotations

import re

from minio import Minio
from minio.credentials import StaticProvider
from minio.minioadmin import MinioAdmin
from minio.sseconfig import Rule, SSEConfig

COMPONENTS = ("api", "worker", "grpc")

ACCESS_KEY = re.compile(r"^[A-Za-z0-9_.@-]{3,128}$")


def policy(component: str, bucket: str) -> dict:
    """The IAM policy document of ``component``'s user on ``bucket``."""
    arn = f"arn:aws:s3:::{bucket}"
    models, jobs = f"{arn}/models/*", f"{arn}/jobs/*"
    # bucket_exists (HEAD bucket) and listings need ListBucket on the bucket itself.
    statements = [_allow(["s3:ListBucket", "s3:GetBucketLocation"], [arn])]
    if component == "api":
        statements.append(
            _allow(
                [
                    "s3:GetObject",
                    "s3:PutObject",
                    "s3:DeleteObject",
                    "s3:AbortMultipartUpload",
                    "s3:ListMultipartUploadParts",
                ],
                [models, jobs],
            )
        )
    elif component == "worker":
        statements.append(_allow(["s3:GetObject"], [models, jobs]))
        statements.append(
            _allow(
                [
                    "s3:PutObject",
                    "s3:DeleteObject",
                    "s3:AbortMultipartUpload",
                    "s3:ListMultipartUploadParts",
                ],
                [jobs],
            )
        )
    elif component != "grpc":
        raise ValueError(f"{component!r} is not one of {COMPONENTS}")
    return {"Version": "2012-10-17", "Statement": statements}


def _allow(actions: list[str], resources: list[str]) -> dict:
    return {"Effect": "Allow", "Action": actions, "Resource": resources}


def policy_name(component: str) -> str:
    """The name of ``component``'s canned policy in MinIO."""
    return f"inferbox-{component}"


def apply_users(admin: MinioAdmin, bucket: str, users: list[tuple[str, str, str]]) -> list[str]:
    """Make or update one MinIO user per ``(component, access key, secret key)`` with its
    component's policy on ``bucket``; returns the access keys."""
    made = []
    for component, access_key, secret_key in users:
        if not ACCESS_KEY.fullmatch(access_key):
            raise ValueError(f"{access_key!r} is not a plain access key")
        if len(secret_key) < 8:
            raise ValueError(f"the secret key of {access_key} is shorter than 8 characters")
        name = policy_name(component)
        admin.policy_add(name, policy=policy(component, bucket))
        admin.user_add(access_key, secret_key)
        admin.policy_set(name, user=access_key)
        made.append(access_key)
    return made


def admin_client(
    endpoint: str, access_key: str, secret_key: str, *, secure: bool, region: str | None
) -> MinioAdmin:
    """MinIO's admin API with the root credentials."""
    return MinioAdmin(
        endpoint=endpoint,
        credentials=StaticProvider(access_key, secret_key),
        region=region or "",
        secure=secure,
    )


def encrypt_bucket(client: Minio, bucket: str) -> None:
    """Make SSE-S3 the bucket's default encryption (idempotent): MinIO encrypts every object
    written from now on with its KMS key."""
    client.set_bucket_encryption(bucket, SSEConfig(Rule.new_sse_s3_rule()))
