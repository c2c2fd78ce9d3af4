-- Pinned tool definitions: a changed definition of an approved MCP tool waits here for
-- review; the tools table keeps serving the approved version until it is approved.
CREATE TABLE tool_changes (
    id             UUID PRIMARY KEY,
    tool_id        UUID NOT NULL REFERENCES tools (id),
    tool_name      TEXT NOT NULL,
    base_version   BIGINT NOT NULL,
    base_hash      TEXT NOT NULL,
    -- The proposed ToolSpec (serde JSON), the server's definition merged onto the
    -- approved tool.
    proposed       JSONB NOT NULL,
    proposed_hash  TEXT NOT NULL,
    source         TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected', 'superseded')),
    detected_at    TIMESTAMPTZ NOT NULL,
    reviewed_at    TIMESTAMPTZ,
    reviewed_by    TEXT NOT NULL DEFAULT '',
    review_reason  TEXT NOT NULL DEFAULT ''
);
-- At most one pending change per tool.
CREATE UNIQUE INDEX tool_changes_one_pending ON tool_changes (tool_id) WHERE status = 'pending';
CREATE INDEX tool_changes_by_tool ON tool_changes (tool_id, detected_at DESC);

CREATE TABLE tool_review_policies (
    provider      TEXT PRIMARY KEY,
    auto_approve  BOOLEAN NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);

GRANT SELECT, INSERT, UPDATE ON tool_changes, tool_review_policies TO toolplane_app;
