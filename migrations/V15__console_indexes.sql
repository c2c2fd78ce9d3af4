-- The admin console's searches and filters, each on an index at 100 000 tools and
-- millions of audit rows: substring search of tool names and descriptions (ListTools'
-- text filter, ILIKE) and the audit trail by action in cursor order (the call that
-- followed a selection is indexed since V11). pg_trgm is a trusted extension: the database owner may create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX tools_name_trgm ON tools USING GIN (name gin_trgm_ops) WHERE deleted_at IS NULL;
CREATE INDEX tools_description_trgm ON tools USING GIN (description gin_trgm_ops) WHERE deleted_at IS NULL;
CREATE INDEX audit_events_action ON audit_events (action, seq);
