-- What selection learned, shared by every replica: one row per cell (tool × task
-- category × agent; '' and the nil UUID stand for "any"), folded in the same
-- transaction that stores the invocation (or the quality report) it learns from, so a
-- resent batch changes nothing. `version` comes from the single counter row, taken
-- under its row lock, so versions commit in order and a replica reading "changed
-- since v" misses nothing.
CREATE TABLE learning_cells (
    tool_id          UUID NOT NULL,
    category         TEXT NOT NULL,
    agent_id         UUID NOT NULL,
    invocations      BIGINT NOT NULL DEFAULT 0,
    weight           DOUBLE PRECISION NOT NULL DEFAULT 0,
    successes        DOUBLE PRECISION NOT NULL DEFAULT 0,
    total_successes  BIGINT NOT NULL DEFAULT 0,
    ewma_duration_ms DOUBLE PRECISION NOT NULL DEFAULT 0,
    ewma_cost        DOUBLE PRECISION NOT NULL DEFAULT 0,
    quality_sum      DOUBLE PRECISION NOT NULL DEFAULT 0,
    quality_n        BIGINT NOT NULL DEFAULT 0,
    last_used        TIMESTAMPTZ,
    -- The last outcomes, oldest first (the trend's recent window).
    recent           BOOLEAN[] NOT NULL DEFAULT '{}',
    version          BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tool_id, category, agent_id)
);
CREATE INDEX learning_cells_version ON learning_cells (version);
-- The categories already learned per agent (the caps on categories).
CREATE INDEX learning_cells_agent ON learning_cells (agent_id, category);

CREATE TABLE learning_version (
    id      BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    version BIGINT NOT NULL
);
INSERT INTO learning_version (id, version) VALUES (TRUE, 0);

GRANT SELECT, INSERT, UPDATE ON learning_cells TO toolplane_app;
GRANT SELECT, UPDATE ON learning_version TO toolplane_app;
