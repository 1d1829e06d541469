-- Invalidation of the managers' record caches (kubenova_store::cache::RowCache): every
-- UPDATE and DELETE of a cluster, tenant or project row is announced at commit on the
-- channel `kubenova_rows` with the payload '<table>:<id>'. A manager answers point reads
-- of these records from memory only while its listener is connected, and drops the
-- entry when the notification arrives. Inserts need no notification (a cache never holds
-- a record it has not read).

CREATE FUNCTION kubenova_notify_row_change() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('kubenova_rows', TG_TABLE_NAME || ':' || OLD.id::text);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER clusters_row_notify
    AFTER UPDATE OR DELETE ON clusters
    FOR EACH ROW EXECUTE FUNCTION kubenova_notify_row_change();

CREATE TRIGGER tenants_row_notify
    AFTER UPDATE OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION kubenova_notify_row_change();

CREATE TRIGGER projects_row_notify
    AFTER UPDATE OR DELETE ON projects
    FOR EACH ROW EXECUTE FUNCTION kubenova_notify_row_change();
