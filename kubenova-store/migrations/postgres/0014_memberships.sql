-- The membership index: one row per subject key (kind and name, see kubenova_api::identity)
-- named as a tenant's owner (project_id NULL, role 'owner') or in a project's access
-- entries (role 'owner', 'developer' or 'viewer'), so that what a person or their groups
-- are named in is one indexed query instead of a scan of every tenant. Derived from the
-- tenant and project documents: a tenant's or project's rows are rewritten in the
-- transaction of each of its writes, and go with it (ON DELETE CASCADE).
CREATE TABLE memberships (
    key         TEXT NOT NULL,
    cluster_id  UUID NOT NULL,
    tenant_id   UUID NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    project_id  UUID REFERENCES projects(id) ON DELETE CASCADE,
    role        TEXT NOT NULL
);
CREATE INDEX memberships_key ON memberships (key);
CREATE INDEX memberships_tenant ON memberships (tenant_id);
CREATE INDEX memberships_project ON memberships (project_id);

-- One-time data steps of the store, by name, recorded when done (in their transaction):
-- 'memberships-backfill' fills the index above from the tenants and projects stored
-- before this migration, by the first manager that connects after it.
CREATE TABLE store_markers (
    name  TEXT PRIMARY KEY,
    at    BIGINT NOT NULL
);
