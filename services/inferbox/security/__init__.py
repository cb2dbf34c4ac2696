"""API keys, per-key limits, the authorization decision and the audit log.

- ``keys``: the key format (``ibk_<id>.<secret>``), hashing and constant-time checks.
- ``keystore``: keys in PostgreSQL, and the cached lookup the request path uses.
- ``limits``: per-key token bucket and concurrency limit in one atomic Redis script.
- ``auth``: which scope and model a request needs, and the verdict on a presented key.
- ``audit``: the append-only audit table, mirrored as ``audit`` log events.
"""
