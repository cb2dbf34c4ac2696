"""Durable async jobs: the API side (submit, list, results), the store in PostgreSQL, the RQ
transport, and the runner a worker runs them with (docs/architecture.md, "Jobs")."""
