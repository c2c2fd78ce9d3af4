-- HTTP tools beyond POST: method, path template and where each parameter goes
-- (`toolplane_core::http_binding::HttpBinding` as JSON); NULL posts the parameters as
-- JSON to the endpoint, as before.
ALTER TABLE tools ADD COLUMN http JSONB;

-- A credential's non-secret settings (`CredentialSettings` as JSON: an API key's query
-- parameter, HTTP basic's user name) and when it stops being used.
ALTER TABLE credentials ADD COLUMN settings JSONB NOT NULL DEFAULT '{}';
ALTER TABLE credentials ADD COLUMN expires_at TIMESTAMPTZ;
