-- Tenants of an API token (issue 13): {"account": [...], "org_id": [...], "domain": [...],
-- "domain_id": [...]}, any of them; empty: the token is not bound and sees every trace. A bound
-- token sees only the traces carrying one of these values (tracker/tenants.py). An admin token
-- is never bound: the rollups and dead letters it reads are platform-wide.
ALTER TABLE api_tokens ADD COLUMN tenants jsonb NOT NULL DEFAULT '{}'
    CHECK (jsonb_typeof(tenants) = 'object');
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_admin_unbound CHECK (NOT ('admin' = ANY(scopes) AND tenants <> '{}'));
