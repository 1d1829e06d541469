-- (SQLite) API keys: machine identities of a tenant (or of one of its projects), with a name, a
-- role and an expiry, revocable. Only the SHA-256 of the key is stored, never the key.
-- A key goes with its tenant or project (ON DELETE CASCADE): a deleted tenant's or
-- project's keys stop working with the delete; their history stays in the audit log.
-- A name is unique per tenant among the keys not revoked (a revoked key frees it).
CREATE TABLE api_keys (
    id            BLOB PRIMARY KEY,
    tenant_id     BLOB NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    project_id    BLOB REFERENCES projects(id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    description   TEXT NOT NULL,
    role          TEXT NOT NULL,
    secret_hash   BLOB NOT NULL,
    created_by    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    last_used_at  BIGINT,
    revoked_at    BIGINT,
    revoked_by    TEXT
);
CREATE UNIQUE INDEX api_keys_live_name ON api_keys (tenant_id, name) WHERE revoked_at IS NULL;
CREATE INDEX api_keys_tenant ON api_keys (tenant_id, id);
CREATE INDEX api_keys_project ON api_keys (project_id);
