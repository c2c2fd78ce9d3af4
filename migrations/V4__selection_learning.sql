-- What selection learns from: the task category of each invocation and the quality
-- agents report; and the log of selection decisions.

ALTER TABLE invocations ADD COLUMN task_category TEXT NOT NULL DEFAULT '';
ALTER TABLE invocations ADD COLUMN quality DOUBLE PRECISION;
ALTER TABLE invocations ADD COLUMN task_succeeded BOOLEAN;
CREATE INDEX invocations_completed ON invocations (completed_at);

CREATE TABLE tool_selection_log (
    selection_id     UUID PRIMARY KEY,
    agent_id         UUID,
    task_category    TEXT NOT NULL DEFAULT '',
    -- Redacted like audit parameters.
    task_description TEXT NOT NULL,
    primary_tool_id  UUID NOT NULL,
    alternatives     UUID[] NOT NULL DEFAULT '{}',
    combined_score   DOUBLE PRECISION NOT NULL,
    confidence       DOUBLE PRECISION NOT NULL,
    reasoning        TEXT NOT NULL,
    selected_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX tool_selection_log_agent ON tool_selection_log (agent_id, selected_at);

GRANT SELECT, INSERT, UPDATE ON invocations, tool_selection_log TO toolplane_app;
