-- Signed checkpoints of the audit chains: the control plane's Ed25519 signature over a
-- chain's head (position and hash), made with a key that is not in this database
-- (crates/core/src/audit_checkpoint.rs). Verification compares the stored records
-- with them, so a chain rewritten consistently with SQL no longer matches.
CREATE TABLE audit_checkpoints (
    -- Byte order, as the control plane sorts (pages are resumed by position).
    chain      TEXT COLLATE "C" NOT NULL,
    chain_seq  BIGINT NOT NULL,
    head_hash  TEXT NOT NULL,
    signed_at  TIMESTAMPTZ NOT NULL,
    key_id     TEXT COLLATE "C" NOT NULL,
    signature  TEXT NOT NULL,
    version    INT NOT NULL,
    -- Replicas sharing a key may sign the same head; it is stored once.
    PRIMARY KEY (chain, chain_seq, key_id)
);

-- The latest checkpoint of each chain by each key.
CREATE INDEX audit_checkpoints_latest ON audit_checkpoints (chain, key_id, chain_seq DESC);

-- Append-only, like the trail it vouches for.
CREATE FUNCTION audit_checkpoints_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit_checkpoints is append-only (% refused)', TG_OP;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER audit_checkpoints_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_checkpoints_append_only();

GRANT SELECT, INSERT ON audit_checkpoints TO toolplane_app;
