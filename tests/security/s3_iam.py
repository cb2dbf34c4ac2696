"""An S3 server that enforces IAM policies (moto's, with authentication on), holding a user per
component with the policy ``inferbox.registry.s3_access`` gives it, plus an all-powerful one
standing in for MinIO's root user.

moto evaluates IAM policy documents with AWS's semantics, which MinIO's policy-based access
control follows; MinIO's server itself cannot be installed here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx

from inferbox.registry.s3_access import COMPONENTS, policy
from tests.support.processes import free_port
from tests.support.waiting import wait_for

MOTO = Path(sys.executable).parent / "moto_server"


@dataclass
class S3Users:
    endpoint: str
    bucket: str
    keys: dict[str, tuple[str, str]]
    """Access and secret key per component, and ``root``."""

    def env(self, who: str) -> dict[str, str]:
        """The ``INFERBOX_S3_*`` settings of one part."""
        access, secret = self.keys[who]
        return {"INFERBOX_S3_ACCESS_KEY": access, "INFERBOX_S3_SECRET_KEY": secret}


@contextmanager
def s3_with_policies(bucket: str) -> Iterator[S3Users]:
    port = free_port()
    server = subprocess.Popen(
        [str(MOTO), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(url), 30, "moto's server")
        iam = boto3.client(
            "iam",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        )
        keys = {}
        documents = {c: _as_moto_checks(policy(c, bucket)) for c in COMPONENTS}
        documents["root"] = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        for who, document in documents.items():
            iam.create_user(UserName=f"inferbox-{who}")
            iam.put_user_policy(
                UserName=f"inferbox-{who}",
                PolicyName=f"inferbox-{who}",
                PolicyDocument=json.dumps(document),
            )
            created = iam.create_access_key(UserName=f"inferbox-{who}")["AccessKey"]
            keys[who] = (created["AccessKeyId"], created["SecretAccessKey"])
        boto3.client(
            "s3",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        ).create_bucket(Bucket=bucket)
        # From now on every request is authenticated and checked against its user's policy.
        httpx.post(f"{url}/moto-api/reset-auth", content=b"0").raise_for_status()
        yield S3Users(f"127.0.0.1:{port}", bucket, keys)
    finally:
        server.terminate()
        server.wait(10)


def _as_moto_checks(document: dict) -> dict:
    """The policy as moto needs it: moto checks HEAD bucket as ``s3:HeadBucket``, an action
    AWS and MinIO do not have (both authorize it as ``s3:ListBucket``, MinIO's
    HeadBucketHandler with ListBucketAction), so it is granted wherever ListBucket is."""
    extra = [
        {"Effect": "Allow", "Action": ["s3:HeadBucket"], "Resource": statement["Resource"]}
        for statement in document["Statement"]
        if "s3:ListBucket" in statement["Action"]
    ]
    return {**document, "Statement": [*document["Statement"], *extra]}


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/moto-api/").status_code < 500
    except httpx.HTTPError:
        return False
