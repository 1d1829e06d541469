-- Per-cluster paged listing (`WHERE cluster_id = $1 AND id > $cursor ORDER BY id`) of
-- tenants, projects and apps: the batched reads of a desired-state snapshot
-- (Store::list_tenants(Some(cluster)), list_cluster_projects, list_cluster_apps).
-- (cluster_id, id) serves both the filter and the order without a sort; it supersedes
-- the single-column cluster indexes of 0001.
CREATE INDEX tenants_cluster_id ON tenants (cluster_id, id);
CREATE INDEX projects_cluster_id ON projects (cluster_id, id);
CREATE INDEX apps_cluster_id ON apps (cluster_id, id);
DROP INDEX projects_cluster;
DROP INDEX apps_cluster;
