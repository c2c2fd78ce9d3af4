-- Task memory: the task descriptions of past successful calls, per tool, for the
-- similarity signal of selection; and what links a call to the selection it followed.

ALTER TABLE invocations ADD COLUMN selection_id UUID;
ALTER TABLE agents ADD COLUMN task_memory_opt_out BOOLEAN NOT NULL DEFAULT FALSE;

CREATE TABLE task_memory (
    tool_id    UUID NOT NULL REFERENCES tools (id) ON DELETE CASCADE,
    -- SHA-256 of the normalized (lowercase, single-spaced) redacted text: the dedup key.
    task_hash  TEXT NOT NULL,
    -- Redacted like audit parameters.
    task_text  TEXT NOT NULL,
    -- How the task was learned: execute_task, select_invoke or outcome.
    source     TEXT NOT NULL,
    uses       BIGINT NOT NULL DEFAULT 1,
    first_seen TIMESTAMPTZ NOT NULL,
    last_seen  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tool_id, task_hash)
);
CREATE INDEX task_memory_recency ON task_memory (tool_id, last_seen DESC);
CREATE INDEX task_memory_last_seen ON task_memory (last_seen);

GRANT SELECT, INSERT, UPDATE, DELETE ON task_memory TO toolplane_app;
