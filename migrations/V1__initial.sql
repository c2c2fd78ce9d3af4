-- toolplane initial schema. Applied by the control plane at start-up under an
-- advisory lock, so replicas can start together.

CREATE TABLE tools (
    id                 UUID PRIMARY KEY,
    name               TEXT NOT NULL,
    category           TEXT NOT NULL DEFAULT '',
    description        TEXT NOT NULL DEFAULT '',
    version            BIGINT NOT NULL,
    input_schema       JSONB NOT NULL,
    output_schema      JSONB NOT NULL DEFAULT 'null',
    examples           JSONB NOT NULL DEFAULT '[]',
    capabilities       TEXT[] NOT NULL DEFAULT '{}',
    auth_type          TEXT NOT NULL,
    rate_limit_rpm     BIGINT NOT NULL DEFAULT 0,
    timeout_ms         BIGINT NOT NULL DEFAULT 0,
    required_skills    TEXT[] NOT NULL DEFAULT '{}',
    data_sensitivity   TEXT NOT NULL,
    provider           TEXT NOT NULL DEFAULT '',
    endpoint           TEXT NOT NULL,
    protocol           TEXT NOT NULL,
    -- Learned from invocation outcomes (EWMA), never from callers.
    reliability_score  DOUBLE PRECISION NOT NULL DEFAULT 0,
    outcomes           BIGINT NOT NULL DEFAULT 0,
    average_latency_ms BIGINT NOT NULL DEFAULT 0,
    -- Unconstrained NUMERIC keeps the scale the admin wrote ("0.0020" stays "0.0020").
    cost_per_call      NUMERIC NOT NULL DEFAULT 0,
    enabled            BOOLEAN NOT NULL,
    side_effects       TEXT NOT NULL,
    idempotent         BOOLEAN NOT NULL,
    cacheable          BOOLEAN NOT NULL,
    cache_ttl_seconds  BIGINT NOT NULL DEFAULT 0,
    cache_normalize_keys BOOLEAN NOT NULL DEFAULT FALSE,
    cache_ignored_params TEXT[] NOT NULL DEFAULT '{}',
    remote_name        TEXT NOT NULL DEFAULT '',
    created_at         TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL,
    deleted_at         TIMESTAMPTZ
);

-- Names are unique among live tools; a deleted tool's name can be reused.
CREATE UNIQUE INDEX tools_name_live ON tools (name) WHERE deleted_at IS NULL;
CREATE INDEX tools_category ON tools (category, name) WHERE deleted_at IS NULL;
-- Containment queries (capabilities @> ARRAY[...]) need GIN, not the sketch's btree.
CREATE INDEX tools_capabilities ON tools USING GIN (capabilities);

-- Every version of every tool, immutable; `tools` holds the current one.
CREATE TABLE tool_versions (
    tool_id    UUID NOT NULL REFERENCES tools (id),
    version    BIGINT NOT NULL,
    spec       JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tool_id, version)
);

-- Tool credentials, AES-256-GCM sealed under the master key `key_id` names.
CREATE TABLE credentials (
    tool_id     UUID PRIMARY KEY REFERENCES tools (id),
    auth_type   TEXT NOT NULL,
    header_name TEXT NOT NULL DEFAULT '',
    key_id      TEXT NOT NULL,
    nonce       BYTEA NOT NULL,
    ciphertext  BYTEA NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);

-- Retry and fallback behaviour per tool.
CREATE TABLE fallback_strategies (
    tool_id    UUID PRIMARY KEY REFERENCES tools (id),
    strategy   JSONB NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE agents (
    id         UUID PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    skills     TEXT[] NOT NULL DEFAULT '{}',
    team       TEXT NOT NULL DEFAULT '',
    created_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE tokens (
    id          UUID PRIMARY KEY,
    sha256      TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL,
    agent_id    UUID REFERENCES agents (id),
    description TEXT NOT NULL DEFAULT '',
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    revoked_at  TIMESTAMPTZ
);

CREATE TABLE permissions (
    id                      UUID PRIMARY KEY,
    agent_id                UUID NOT NULL REFERENCES agents (id),
    tool_id                 UUID NOT NULL REFERENCES tools (id),
    kind                    TEXT NOT NULL,
    max_invocations_per_day BIGINT NOT NULL DEFAULT 0,
    allowed_hours           INTEGER[] NOT NULL DEFAULT '{}',
    time_zone               TEXT NOT NULL DEFAULT '',
    max_sensitivity         TEXT,
    granted_at              TIMESTAMPTZ NOT NULL,
    expires_at              TIMESTAMPTZ,
    granted_by              TEXT NOT NULL,
    revoked_at              TIMESTAMPTZ
);

CREATE INDEX permissions_agent_tool ON permissions (agent_id, tool_id) WHERE revoked_at IS NULL;
CREATE INDEX permissions_tool ON permissions (tool_id) WHERE revoked_at IS NULL;

-- Invocation results as reported by sidecars; stored once per invocation id.
CREATE TABLE invocations (
    invocation_id     UUID PRIMARY KEY,
    agent_id          UUID NOT NULL,
    task_id           TEXT NOT NULL DEFAULT '',
    requested_tool_id UUID NOT NULL,
    tool_id           UUID NOT NULL,
    tool_version      BIGINT NOT NULL,
    parameters        JSONB NOT NULL,
    invoked_at        TIMESTAMPTZ NOT NULL,
    status            TEXT NOT NULL,
    output            JSONB NOT NULL DEFAULT 'null',
    error             TEXT NOT NULL DEFAULT '',
    duration_ms       BIGINT NOT NULL,
    tokens_used       BIGINT NOT NULL DEFAULT 0,
    cost              NUMERIC NOT NULL DEFAULT 0,
    completed_at      TIMESTAMPTZ NOT NULL,
    cache_hit         BOOLEAN NOT NULL DEFAULT FALSE,
    attempts          BIGINT NOT NULL DEFAULT 1,
    sidecar_id        TEXT NOT NULL DEFAULT '',
    recorded_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX invocations_agent ON invocations (agent_id, invoked_at DESC);
CREATE INDEX invocations_tool ON invocations (tool_id, invoked_at DESC);

-- The audit trail. Append-only: a trigger refuses UPDATE and DELETE.
CREATE TABLE audit_events (
    seq                   BIGSERIAL PRIMARY KEY,
    event_id              UUID NOT NULL UNIQUE,
    action                TEXT NOT NULL,
    invocation_id         UUID,
    actor_id              TEXT NOT NULL,
    agent_id              UUID,
    tool_id               UUID,
    tool_version          BIGINT NOT NULL DEFAULT 0,
    task_id               TEXT NOT NULL DEFAULT '',
    occurred_at           TIMESTAMPTZ NOT NULL,
    recorded_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    sanitized_parameters  JSONB NOT NULL DEFAULT 'null',
    result_size_bytes     BIGINT,
    result_status         TEXT,
    result_digest         TEXT,
    success               BOOLEAN NOT NULL,
    detail                TEXT NOT NULL DEFAULT '',
    compliance_frameworks TEXT[] NOT NULL DEFAULT '{}',
    data_classification   TEXT,
    sidecar_id            TEXT NOT NULL DEFAULT '',
    permission_id         UUID
);

CREATE INDEX audit_events_agent ON audit_events (agent_id, occurred_at);
CREATE INDEX audit_events_tool ON audit_events (tool_id, occurred_at);
CREATE INDEX audit_events_invocation ON audit_events (invocation_id);

CREATE FUNCTION audit_events_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only (% refused)', TG_OP;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER audit_events_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
