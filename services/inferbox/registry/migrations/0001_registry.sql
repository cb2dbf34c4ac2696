-- The model registry: models, their numbered versions, aliases and canary traffic splits.
-- Versions are never reused: models.last_version only grows, and a deleted version keeps its
-- row (state 'deleted') for the record.

CREATE TABLE models (
    name         text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
    last_version integer NOT NULL DEFAULT 0 CHECK (last_version >= 0),
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE model_versions (
    model      text NOT NULL REFERENCES models (name) ON DELETE CASCADE,
    version    integer NOT NULL CHECK (version >= 1),
    sha256     text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size       bigint NOT NULL CHECK (size >= 0),
    inputs     jsonb NOT NULL DEFAULT '[]',
    outputs    jsonb NOT NULL DEFAULT '[]',
    config     jsonb NOT NULL DEFAULT '{}',
    -- pending: registered, not yet servable; ready: servable; failed: see reason;
    -- deleted: kept for the record, never served again.
    state      text NOT NULL DEFAULT 'ready'
               CHECK (state IN ('pending', 'ready', 'failed', 'deleted')),
    reason     text,
    -- Desired residency: workers load versions with loaded = true, unload the others.
    loaded     boolean NOT NULL DEFAULT true,
    capacity   jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text,
    deleted_at timestamptz,
    PRIMARY KEY (model, version)
);

CREATE INDEX model_versions_sha256 ON model_versions (sha256);

-- Alias names start with a letter, so /versions/{alias-or-number} is never ambiguous.
CREATE TABLE model_aliases (
    model      text NOT NULL,
    alias      text NOT NULL CHECK (alias ~ '^[a-z][a-z0-9_.-]{0,63}$'),
    version    integer NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, alias),
    FOREIGN KEY (model, version) REFERENCES model_versions (model, version) ON DELETE CASCADE
);

CREATE INDEX model_aliases_version ON model_aliases (model, version);

-- A weighted split of unversioned traffic between versions (a canary); no rows: no split.
CREATE TABLE model_traffic (
    model   text NOT NULL,
    version integer NOT NULL,
    weight  integer NOT NULL CHECK (weight BETWEEN 1 AND 1000000),
    PRIMARY KEY (model, version),
    FOREIGN KEY (model, version) REFERENCES model_versions (model, version) ON DELETE CASCADE
);
