"""The model registry's storage layer: PostgreSQL rows, S3 objects, safe uploads.

- ``migrate``: applies the numbered SQL files in ``migrations/`` under an advisory lock.
- ``store``: ``RegistryStore``, models, versions, aliases and traffic splits in PostgreSQL.
- ``objects``: ``ObjectStore``, content-addressed model files in an S3 bucket (MinIO's SDK).
- ``upload``: ``spool``, an uploaded body streamed to a temporary file while hashing it.
- ``validate``: ``validate_model``, an uploaded ONNX file checked in a resource-limited process.
- ``errors``: the registry's own errors (409, 422, checksum mismatch).

This package imports nothing heavy itself: the validator's child process imports
``inferbox.registry._validate_child`` and must not pay for psycopg or minio.
"""
