-- API keys and the audit log.
-- A key is shown once as 'ibk_<8 chars>.<secret>'; the id is the public part used for lookup,
-- the secret (32 random bytes) is stored only as its sha256.

CREATE TABLE api_keys (
    id              text PRIMARY KEY CHECK (id ~ '^ibk_[A-Za-z0-9]{8}$'),
    secret_hash     text NOT NULL CHECK (secret_hash ~ '^[0-9a-f]{64}$'),
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    scopes          text[] NOT NULL
                    CHECK (scopes <@ ARRAY['infer', 'jobs', 'models:write', 'admin']::text[]),
    -- NULL: every model.
    allowed_models  text[],
    -- Default priority of the key's calls (Triton's: 0 default, 1 highest, >= 2 low lane).
    priority        integer NOT NULL DEFAULT 0 CHECK (priority >= 0),
    -- Token bucket: rate_per_s tokens a second up to burst; NULL: unlimited.
    rate_per_s      real CHECK (rate_per_s > 0),
    burst           integer CHECK (burst >= 1),
    max_concurrency integer CHECK (max_concurrency >= 1),
    expires_at      timestamptz,
    revoked_at      timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    created_by      text,
    last_used_at    timestamptz
);

CREATE INDEX api_keys_admin ON api_keys (created_at) WHERE 'admin' = ANY (scopes);

-- Append-only: who did what, to what, when, from where, and how it ended.
CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,          -- a key id, 'anonymous' or 'system'
    action      text NOT NULL,          -- e.g. key.create, model.upload, auth.failure
    target      text,
    outcome     text NOT NULL,          -- ok, failed, denied
    remote_addr text,
    request_id  text,
    details     jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX audit_log_actor ON audit_log (actor, id);
CREATE INDEX audit_log_action ON audit_log (action, id);
CREATE INDEX audit_log_at ON audit_log (at);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only' USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_log_no_update_or_delete
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
