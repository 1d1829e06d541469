-- Logs and events of apps travel through the agent channel as requests the manager records
-- for a cluster's operator and answers the operator posts back (kubenova_store::Store,
-- "agent requests"). Both are short-lived: a request expires after its `expires_at`
-- (seconds to minutes), its answers go with it (ON DELETE CASCADE), and so do both when
-- the app or the cluster is deleted. `next_seq` and `bytes` count the answer chunks and
-- their bytes accepted so far (the bound of a followed log), `done` marks the last one.
CREATE TABLE agent_requests (
    id          UUID PRIMARY KEY,
    cluster_id  UUID NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    app_id      UUID NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    kind        TEXT NOT NULL,
    doc         JSONB NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    delivered   BOOLEAN NOT NULL DEFAULT FALSE,
    next_seq    BIGINT NOT NULL DEFAULT 0,
    bytes       BIGINT NOT NULL DEFAULT 0,
    done        BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX agent_requests_cluster ON agent_requests (cluster_id, created_at);
CREATE INDEX agent_requests_expiry ON agent_requests (expires_at);
CREATE INDEX agent_requests_app ON agent_requests (app_id);

CREATE TABLE agent_answers (
    request_id  UUID NOT NULL REFERENCES agent_requests(id) ON DELETE CASCADE,
    seq         BIGINT NOT NULL,
    body        BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (request_id, seq)
);

-- Wake-ups across manager replicas, like 0003: a new request wakes the operator's
-- requests long-poll of its cluster (channel `kubenova_agent_requests`, payload the
-- cluster id), a new answer chunk wakes the user's call waiting for it, whichever replica
-- holds it (channel `kubenova_agent_answers`, payload the request id). Hints only: both
-- waits also re-read the store after a fallback interval.
CREATE FUNCTION kubenova_notify_agent_request() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('kubenova_agent_requests', NEW.cluster_id::text);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER agent_requests_notify
    AFTER INSERT ON agent_requests
    FOR EACH ROW EXECUTE FUNCTION kubenova_notify_agent_request();

CREATE FUNCTION kubenova_notify_agent_answer() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('kubenova_agent_answers', NEW.request_id::text);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER agent_answers_notify
    AFTER INSERT ON agent_answers
    FOR EACH ROW EXECUTE FUNCTION kubenova_notify_agent_answer();
