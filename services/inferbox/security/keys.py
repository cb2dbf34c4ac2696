"""The API key format: ``ibk_<8 chars>.<secret>``, shown once, stored as a hash.

The id (``ibk_`` and eight letters or digits) is public: it names the key in listings, logs
and the audit log, and finds its row. The secret is 32 random bytes (URL-safe base64); only its
sha256 is stored. A plain hash is enough because the secret is random and long (nothing to
guess from a dictionary); it is compared with ``hmac.compare_digest``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string

ID_PREFIX = "ibk_"
ID_PATTERN = re.compile(r"ibk_[A-Za-z0-9]{8}")
SECRET_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")
_ALPHABET = string.ascii_letters + string.digits

SCOPES = ("infer", "jobs", "models:write", "admin")
"""What a key may do; ``admin`` implies every other scope."""


def new_key() -> tuple[str, str, str]:
    """A fresh key: ``(id, secret, full key to hand out once)``."""
    key_id = ID_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(8))
    secret = secrets.token_urlsafe(32)
    return key_id, secret, f"{key_id}.{secret}"


def hash_secret(secret: str) -> str:
    """What is stored of a secret: its sha256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    """Constant-time comparison of a presented secret with a stored hash."""
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def split_key(key: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed key, else None (nothing of it is trusted yet)."""
    key_id, dot, secret = key.partition(".")
    if not dot or not ID_PATTERN.fullmatch(key_id) or not SECRET_PATTERN.fullmatch(secret):
        return None
    return key_id, secret


def bearer_token(authorization: bytes | str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else None."""
    if not authorization:
        return None
    if isinstance(authorization, bytes):
        authorization = authorization.decode("latin-1")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def key_id_of(key: str) -> str | None:
    """The public id of a presented key, for logs (never the secret), if it looks like one."""
    key_id = key.partition(".")[0]
    return key_id if ID_PATTERN.fullmatch(key_id) else None
