-- Secrets an appliance makes for itself at first start and keeps in PostgreSQL, out of Redis's
-- reach: 'key_cache_mac' authenticates the API key records cached in Redis (a record whose MAC
-- does not match is not believed), so write access to Redis cannot plant or change a key.

CREATE TABLE instance_secrets (
    name        text PRIMARY KEY,
    value       bytea NOT NULL CHECK (length(value) >= 32),
    created_at  timestamptz NOT NULL DEFAULT now()
);
