-- An admitted call runs to its end even when its caller goes away (cancels, or drops
-- the connection); the invocation row says so.
ALTER TABLE invocations ADD COLUMN caller_cancelled BOOLEAN NOT NULL DEFAULT FALSE;
