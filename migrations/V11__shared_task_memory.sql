-- Task memory shared by every replica, read back by version like learning_cells: a
-- change (remembered, counted again, forgotten) takes its version from the
-- learning_version counter row under its row lock, so versions commit in order and a
-- replica reading "changed since v" misses nothing. A forgotten task stays as a
-- tombstone without its text until the replicas had time to read it.
ALTER TABLE task_memory
    ADD COLUMN version      BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN forgotten_at TIMESTAMPTZ;
CREATE INDEX task_memory_version ON task_memory (version);

-- Recommendation follow-ups are counted from the selection log and the calls that
-- name their selection, so every replica counts alike.
CREATE INDEX invocations_selection ON invocations (selection_id) WHERE selection_id IS NOT NULL;
CREATE INDEX tool_selection_log_category ON tool_selection_log (task_category, selected_at);
