-- Durable async jobs: PostgreSQL is the ledger, Redis (RQ) only carries job ids to workers.
-- A job is accepted (202) only once its row is committed; every state change is a conditional
-- UPDATE, so two workers that both ran a job cannot both record a result.

-- Bulk input files uploaded through POST /v1/jobs/inputs (stored in S3 under object_key).
CREATE TABLE job_inputs (
    id          text PRIMARY KEY CHECK (id ~ '^in_[0-9a-f]{24}$'),
    api_key_id  text,
    format      text NOT NULL CHECK (format IN ('npy', 'npz', 'jsonl')),
    object_key  text NOT NULL,
    size        bigint NOT NULL CHECK (size >= 0),
    sha256      text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    rows        bigint NOT NULL CHECK (rows >= 0),
    -- name -> {"datatype": V2 type or null (JSON values), "shape": per-row shape}
    arrays      jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);

CREATE INDEX job_inputs_expiry ON job_inputs (expires_at);

CREATE TABLE jobs (
    id              uuid PRIMARY KEY,
    model           text NOT NULL,
    version         integer NOT NULL,
    state           text NOT NULL
                    CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled',
                                     'expired')),
    -- 'request': a V2 inference request body; 'bulk': a job input file processed in chunks.
    kind            text NOT NULL CHECK (kind IN ('request', 'bulk')),
    input_key       text NOT NULL,
    input_id        text,
    header_length   integer CHECK (header_length >= 0),
    -- Outputs asked for and how (the V2 request's "outputs", binary flags), for bulk jobs.
    options         jsonb NOT NULL DEFAULT '{}',
    priority        integer NOT NULL DEFAULT 0 CHECK (priority >= 0),
    progress        real NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 1),
    rows_total      bigint,
    rows_done       bigint NOT NULL DEFAULT 0,
    attempts        integer NOT NULL DEFAULT 0,
    max_attempts    integer NOT NULL CHECK (max_attempts >= 1),
    -- The worker running the job and until when its claim holds without renewal.
    lease_owner     text,
    lease_expires_at timestamptz,
    -- The RQ job currently carrying this job, and when it was put on the queue.
    transport_id    text,
    enqueued_at     timestamptz,
    error           text,
    result_key      text,
    result_content_type text,
    result_header_length integer,
    result_size     bigint,
    idempotency_key text CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    api_key_id      text,
    request_id      text,
    webhook_url     text,
    webhook_state   text CHECK (webhook_state IN ('pending', 'delivered', 'failed')),
    webhook_attempts integer NOT NULL DEFAULT 0,
    webhook_next_at timestamptz,
    webhook_error   text,
    retention_s     integer NOT NULL CHECK (retention_s > 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    -- When the job's data (input, result) is removed; set when it reaches a terminal state.
    expires_at      timestamptz
);

-- One job per (key, Idempotency-Key); jobs submitted without a key share the '' owner.
CREATE UNIQUE INDEX jobs_idempotency ON jobs (coalesce(api_key_id, ''), idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_listing ON jobs (created_at DESC, id DESC);
CREATE INDEX jobs_owner ON jobs (api_key_id, created_at DESC);
CREATE INDEX jobs_open ON jobs (state, enqueued_at) WHERE state IN ('queued', 'running');
CREATE INDEX jobs_expiry ON jobs (expires_at) WHERE expires_at IS NOT NULL AND state <> 'expired';
CREATE INDEX jobs_webhooks ON jobs (webhook_next_at) WHERE webhook_state = 'pending';
