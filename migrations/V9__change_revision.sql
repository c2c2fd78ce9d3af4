-- The revision of the state sidecars are served from, bumped in the same transaction as
-- every administrative change. Replicas hear of changes through NOTIFY at once, and poll
-- this row too, so a lost notification (a dropped listener connection, a replica that
-- died between commit and NOTIFY) costs seconds, not forever.
CREATE TABLE toolplane_changes (
    id       BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    revision BIGINT NOT NULL
);
INSERT INTO toolplane_changes (id, revision) VALUES (TRUE, 0);
GRANT SELECT, UPDATE ON toolplane_changes TO toolplane_app;
