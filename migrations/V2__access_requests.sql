-- Agents asking for tools, and the admins' answers.
CREATE TABLE access_requests (
    id            uuid PRIMARY KEY,
    agent_id      uuid NOT NULL REFERENCES agents (id),
    tool_id       uuid NOT NULL REFERENCES tools (id),
    justification text NOT NULL,
    status        text NOT NULL CHECK (status IN ('pending', 'approved', 'denied')),
    requested_at  timestamptz NOT NULL,
    reviewed_at   timestamptz,
    reviewed_by   text NOT NULL DEFAULT '',
    review_reason text NOT NULL DEFAULT '',
    permission_id uuid REFERENCES permissions (id)
);

CREATE INDEX access_requests_pending ON access_requests (requested_at) WHERE status = 'pending';
CREATE INDEX access_requests_agent ON access_requests (agent_id, requested_at);
