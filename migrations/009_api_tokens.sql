-- API tokens (issue 13): bearer tokens for the REST API, issued and revoked by
-- `tracker tokens`. Only a SHA-256 digest of each token is stored: the token is
-- 256 random bits, so a fast digest is as good as a slow one against guessing, and
-- a request is checked by looking its digest up (no comparison of secrets in Python).
CREATE TABLE api_tokens (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text NOT NULL,
    digest       bytea NOT NULL UNIQUE,
    prefix       text NOT NULL,          -- the token's first characters, to recognise it in a list
    scopes       text[] NOT NULL CHECK (scopes <@ ARRAY['read', 'write', 'admin'] AND cardinality(scopes) > 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz
);
