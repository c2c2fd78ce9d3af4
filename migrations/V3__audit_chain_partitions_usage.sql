-- Tamper-evident, partitioned audit trail; per-day usage statistics; the application
-- role; compliance frameworks on tools.

ALTER TABLE tools ADD COLUMN compliance_frameworks TEXT[] NOT NULL DEFAULT '{}';

-- Events recorded before hash chaining existed stay, unchanged, in their own table.
ALTER TABLE audit_events RENAME TO audit_events_unchained;
ALTER INDEX audit_events_agent RENAME TO audit_events_unchained_agent;
ALTER INDEX audit_events_tool RENAME TO audit_events_unchained_tool;
ALTER INDEX audit_events_invocation RENAME TO audit_events_unchained_invocation;
ALTER TABLE audit_events_unchained RENAME CONSTRAINT audit_events_pkey TO audit_events_unchained_pkey;
ALTER TABLE audit_events_unchained RENAME CONSTRAINT audit_events_event_id_key TO audit_events_unchained_event_id_key;

-- Partitioned by month of occurrence. Every record is chained within its writer's
-- chain: hash = SHA-256(prev_hash || '\n' || canonical record), computed by the
-- control plane (crates/core/src/audit.rs) under a per-chain advisory lock.
CREATE TABLE audit_events (
    seq                   BIGSERIAL,
    event_id              UUID NOT NULL,
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
    permission_id         UUID,
    chain                 TEXT NOT NULL,
    chain_seq             BIGINT NOT NULL,
    prev_hash             TEXT NOT NULL,
    hash                  TEXT NOT NULL,
    PRIMARY KEY (seq, occurred_at),
    UNIQUE (event_id, occurred_at)
) PARTITION BY RANGE (occurred_at);

CREATE TABLE audit_events_default PARTITION OF audit_events DEFAULT;

CREATE INDEX audit_events_agent ON audit_events (agent_id, occurred_at);
CREATE INDEX audit_events_tool ON audit_events (tool_id, occurred_at);
CREATE INDEX audit_events_invocation ON audit_events (invocation_id);
CREATE INDEX audit_events_task ON audit_events (task_id) WHERE task_id <> '';
CREATE INDEX audit_events_chain ON audit_events (chain, chain_seq);
CREATE INDEX audit_events_time ON audit_events (occurred_at);

CREATE TRIGGER audit_events_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();

-- The last record of each chain (where the next append continues, and how a walk
-- notices records deleted from a chain's end).
CREATE TABLE audit_chain_heads (
    chain     TEXT PRIMARY KEY,
    chain_seq BIGINT NOT NULL,
    hash      TEXT NOT NULL
);

-- The last record of each chain in partitions the retention job dropped: verification
-- of the oldest retained record continues from here.
CREATE TABLE audit_chain_anchors (
    chain     TEXT PRIMARY KEY,
    chain_seq BIGINT NOT NULL,
    hash      TEXT NOT NULL
);

-- Monthly partitions for this month and the next `months_ahead` (idempotent; runs at
-- start-up and daily). SECURITY DEFINER: the application role may call it without
-- owning the table.
CREATE FUNCTION toolplane_audit_ensure_partitions(months_ahead INT DEFAULT 2) RETURNS VOID
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
    m DATE;
    part TEXT;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('toolplane-audit-partitions'));
    FOR i IN 0..months_ahead LOOP
        m := (date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => i))::date;
        part := format('audit_events_y%sm%s', to_char(m, 'YYYY'), to_char(m, 'MM'));
        IF to_regclass(part) IS NULL THEN
            BEGIN
                EXECUTE format(
                    'CREATE TABLE %I PARTITION OF audit_events FOR VALUES FROM (%L) TO (%L)',
                    part, m::timestamp AT TIME ZONE 'UTC', (m + interval '1 month')::timestamp AT TIME ZONE 'UTC');
            EXCEPTION WHEN others THEN
                -- E.g. the default partition already holds rows of that month.
                RAISE WARNING 'cannot create audit partition %: %', part, SQLERRM;
            END;
        END IF;
    END LOOP;
END;
$$;

SELECT toolplane_audit_ensure_partitions(2);

-- Retention: drops monthly partitions that ended more than `keep_months` months
-- before this month, keeping each chain's last dropped hash as an anchor. Run by an
-- operator or a CronJob as the owning role (not granted to the application role).
CREATE FUNCTION toolplane_audit_retention(keep_months INT) RETURNS SETOF TEXT
LANGUAGE plpgsql AS $$
DECLARE
    p RECORD;
    cutoff DATE := (date_trunc('month', now() AT TIME ZONE 'UTC') - make_interval(months => keep_months))::date;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('toolplane-audit-partitions'));
    FOR p IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'audit_events'::regclass AND c.relname ~ '^audit_events_y[0-9]{4}m[0-9]{2}$'
        ORDER BY c.relname
    LOOP
        IF (to_date(substr(p.relname, 15, 4) || substr(p.relname, 20, 2), 'YYYYMM') + interval '1 month')::date <= cutoff THEN
            EXECUTE format(
                'INSERT INTO audit_chain_anchors (chain, chain_seq, hash) '
                'SELECT DISTINCT ON (chain) chain, chain_seq, hash FROM %I ORDER BY chain, chain_seq DESC '
                'ON CONFLICT (chain) DO UPDATE SET chain_seq = EXCLUDED.chain_seq, hash = EXCLUDED.hash '
                'WHERE audit_chain_anchors.chain_seq < EXCLUDED.chain_seq', p.relname);
            EXECUTE format('DROP TABLE %I', p.relname);
            RETURN NEXT p.relname;
        END IF;
    END LOOP;
END;
$$;

-- Per tool, agent and UTC day, maintained as invocation records arrive.
CREATE TABLE usage_daily (
    tool_id           UUID NOT NULL,
    agent_id          UUID NOT NULL,
    day               DATE NOT NULL,
    invocations       BIGINT NOT NULL DEFAULT 0,
    successes         BIGINT NOT NULL DEFAULT 0,
    failures          BIGINT NOT NULL DEFAULT 0,
    cache_hits        BIGINT NOT NULL DEFAULT 0,
    total_duration_ms BIGINT NOT NULL DEFAULT 0,
    total_cost        NUMERIC NOT NULL DEFAULT 0,
    PRIMARY KEY (tool_id, agent_id, day)
);
CREATE INDEX usage_daily_agent ON usage_daily (agent_id, day);

-- The role the control plane runs as in production: it may append to the audit trail
-- and read it, never change or remove it.
DO $$
BEGIN
    CREATE ROLE toolplane_app NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END;
$$;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO toolplane_app;
REVOKE UPDATE, DELETE, TRUNCATE ON audit_events, audit_events_unchained, audit_chain_anchors FROM toolplane_app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO toolplane_app;
GRANT EXECUTE ON FUNCTION toolplane_audit_ensure_partitions(INT) TO toolplane_app;
REVOKE EXECUTE ON FUNCTION toolplane_audit_retention(INT) FROM PUBLIC;
