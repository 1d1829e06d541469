-- Tenants by name across clusters (`GET /api/v1/tenants?name=`, Store::list_tenants_matching
-- with no cluster): the unique (cluster_id, name) index of 0001 serves the name filter
-- only within one cluster. Clusters (unique name), projects (unique per tenant) and apps
-- (unique per project) are already indexed for their name filters.
CREATE INDEX tenants_name ON tenants (name);
