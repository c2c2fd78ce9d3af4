-- The complete admin API: agents can be changed and deleted (history kept, name free
-- again), carry their own rate limit and daily spend budget, and every list pages on an
-- index in the order it returns.
ALTER TABLE agents ADD COLUMN deleted_at TIMESTAMPTZ;
ALTER TABLE agents ADD COLUMN calls_per_minute BIGINT NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN daily_spend_budget NUMERIC;
ALTER TABLE agents DROP CONSTRAINT agents_name_key;
CREATE UNIQUE INDEX agents_name_live ON agents (name) WHERE deleted_at IS NULL;
CREATE INDEX agents_team_live ON agents (team, name) WHERE deleted_at IS NULL;

CREATE INDEX permissions_live ON permissions (id) WHERE revoked_at IS NULL;
CREATE INDEX permissions_agent_live ON permissions (agent_id, id) WHERE revoked_at IS NULL;
CREATE INDEX permissions_tool_live ON permissions (tool_id, id) WHERE revoked_at IS NULL;

CREATE INDEX access_requests_agent_id ON access_requests (agent_id, id);
CREATE INDEX access_requests_status_id ON access_requests (status, id);

CREATE INDEX tokens_agent ON tokens (agent_id, id);
