-- Kubeconfigs follow identity. A credential issued on rights derived from the model (a
-- tenant's owners, a project's access entries) records the membership keys it relied on
-- (`derived_from`, a JSON array of keys such as "user:alice@example.com" or
-- "group:acme-admins"; NULL for a credential issued on a token role: admin, ops, a
-- minted tenantOwner...). The writes that change owners or access entries, and the
-- deletes of tenants and projects, revoke in their transaction each active derived
-- credential that no membership of one of its keys entitles any more, and say why
-- (`revoked_reason`; NULL for a revocation through the API).
ALTER TABLE issued_credentials ADD COLUMN derived_from TEXT;
ALTER TABLE issued_credentials ADD COLUMN revoked_reason TEXT;
-- The active derived credentials of a tenant, for that re-evaluation.
CREATE INDEX issued_credentials_derived ON issued_credentials (tenant_id, expires_at)
    WHERE derived_from IS NOT NULL AND revoked_at IS NULL;
