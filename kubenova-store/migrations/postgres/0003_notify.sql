-- Wake-ups across manager replicas: every desired-state change, and every change of a
-- cluster's component requests, is announced on the channel `kubenova_changes` with the
-- cluster id as payload. Managers LISTEN on it (kubenova_store::notify::ChangeListener)
-- and wake the agents long-polling that cluster. NOTIFY is delivered at commit and is
-- only a hint: listeners keep a bounded fallback poll, so a lost notification delays and
-- never loses a change.

CREATE FUNCTION kubenova_notify_desired_change() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('kubenova_changes', NEW.cluster_id::text);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER desired_changes_notify
    AFTER INSERT ON desired_changes
    FOR EACH ROW EXECUTE FUNCTION kubenova_notify_desired_change();

CREATE FUNCTION kubenova_notify_cluster_components() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('kubenova_changes', NEW.id::text);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER clusters_components_notify
    AFTER UPDATE ON clusters
    FOR EACH ROW
    WHEN (OLD.doc -> 'components' IS DISTINCT FROM NEW.doc -> 'components')
    EXECUTE FUNCTION kubenova_notify_cluster_components();
