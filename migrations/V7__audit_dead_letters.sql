-- Events a sidecar sent that could not go into the audit trail: unparseable, refused
-- for their identity, or refused by the database. Kept whole (the protobuf bytes as
-- received) so nothing is lost silently; one row per sender and event id, so a resent
-- batch adds nothing.
CREATE TABLE audit_dead_letters (
    id          BIGSERIAL PRIMARY KEY,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    source      TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    kind        TEXT NOT NULL,
    error       TEXT NOT NULL,
    raw         BYTEA NOT NULL,
    UNIQUE (source, event_id)
);
-- Like the trail itself: the application role appends and reads, never changes.
GRANT SELECT, INSERT ON audit_dead_letters TO toolplane_app;
GRANT USAGE ON SEQUENCE audit_dead_letters_id_seq TO toolplane_app;
