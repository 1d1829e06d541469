-- Idempotency records are keyed by the caller's subject, its roles and tenant/project
-- scope (`scope`: a digest the manager computes) and the client's key: a token with other
-- roles or another scope under the same subject never gets another token's stored
-- response. The table is recreated: records stored before this migration named the
-- subject only and are dropped (they are retry caches of at most --idempotency-ttl; a
-- retry of such a request within that window runs again).
DROP TABLE idempotency_keys;
CREATE TABLE idempotency_keys (
    subject       TEXT NOT NULL,
    scope         TEXT NOT NULL,
    key           TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    status        INTEGER NOT NULL,
    body          BYTEA NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    PRIMARY KEY (subject, scope, key)
);
CREATE INDEX idempotency_expiry ON idempotency_keys (expires_at);
