-- Logs and events of apps travel through the agent channel as requests the manager records
-- for a cluster's operator and answers the operator posts back (kubenova_store::Store,
-- "agent requests"). Both are short-lived: a request expires after its `expires_at`
-- (seconds to minutes), its answers go with it (ON DELETE CASCADE), and so do both when
-- the app or the cluster is deleted. `next_seq` and `bytes` count the answer chunks and
-- their bytes accepted so far (the bound of a followed log), `done` marks the last one.
-- SQLite serves one process: its waiters are woken in-process (no triggers).
CREATE TABLE agent_requests (
    id          BLOB PRIMARY KEY,
    cluster_id  BLOB NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    app_id      BLOB NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    kind        TEXT NOT NULL,
    doc         TEXT NOT NULL,
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
    request_id  BLOB NOT NULL REFERENCES agent_requests(id) ON DELETE CASCADE,
    seq         BIGINT NOT NULL,
    body        BLOB NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (request_id, seq)
);
