-- HTTP tools beyond POST: method, path template and where each parameter goes
-- (`toolplane_core::http_binding::HttpBinding` as JSON); NULL posts the parameters as
-- JSON to the endpoint, as before.
ALTER TABLE tools ADD COLUMN http JSONB;
