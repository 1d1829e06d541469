-- KubeNova store schema (SQLite). Timestamps are unix microseconds (BIGINT) in both
-- backends so that ordering and range queries behave identically; records are kept as
-- TEXT documents next to the key columns that constraints and queries need.

CREATE TABLE clusters (
    id          BLOB PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    doc         TEXT NOT NULL,
    version     BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE cluster_revisions (
    cluster_id  BLOB PRIMARY KEY REFERENCES clusters(id) ON DELETE CASCADE,
    revision    BIGINT NOT NULL,
    compacted   BIGINT NOT NULL
);

CREATE TABLE desired_changes (
    cluster_id  BLOB NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    revision    BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    object_id   BLOB NOT NULL,
    deleted     BOOLEAN NOT NULL,
    PRIMARY KEY (cluster_id, revision)
);

CREATE TABLE tenants (
    id          BLOB PRIMARY KEY,
    cluster_id  BLOB NOT NULL REFERENCES clusters(id) ON DELETE RESTRICT,
    name        TEXT NOT NULL,
    doc         TEXT NOT NULL,
    version     BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    UNIQUE (cluster_id, name)
);

CREATE TABLE projects (
    id          BLOB PRIMARY KEY,
    cluster_id  BLOB NOT NULL,
    tenant_id   BLOB NOT NULL REFERENCES tenants(id) ON DELETE RESTRICT,
    name        TEXT NOT NULL,
    doc         TEXT NOT NULL,
    version     BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);
CREATE INDEX projects_cluster ON projects (cluster_id);

CREATE TABLE apps (
    id          BLOB PRIMARY KEY,
    cluster_id  BLOB NOT NULL,
    tenant_id   BLOB NOT NULL,
    project_id  BLOB NOT NULL REFERENCES projects(id) ON DELETE RESTRICT,
    name        TEXT NOT NULL,
    doc         TEXT NOT NULL,
    version     BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    UNIQUE (project_id, name)
);
CREATE INDEX apps_cluster ON apps (cluster_id);
CREATE INDEX apps_tenant ON apps (tenant_id);

CREATE TABLE app_revisions (
    app_id      BLOB NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    number      BIGINT NOT NULL,
    doc         TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (app_id, number)
);

CREATE TABLE workflow_runs (
    id          BLOB PRIMARY KEY,
    app_id      BLOB NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    doc         TEXT NOT NULL,
    version     BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX workflow_runs_app ON workflow_runs (app_id, id);

CREATE TABLE secrets (
    id           TEXT PRIMARY KEY,
    owner_id     BLOB NOT NULL,
    kek_id       TEXT NOT NULL,
    wrapped_dek  BLOB NOT NULL,
    ciphertext   BLOB NOT NULL,
    version      BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX secrets_owner ON secrets (owner_id);
CREATE INDEX secrets_kek ON secrets (kek_id);

-- Usage is billing history: no foreign keys, it outlives deleted tenants.
CREATE TABLE usage_hours (
    cluster_id      BLOB NOT NULL,
    tenant_id       BLOB NOT NULL,
    project_key     BLOB NOT NULL,
    hour            BIGINT NOT NULL,
    cpu_millicores  BIGINT NOT NULL,
    memory_bytes    BIGINT NOT NULL,
    storage_bytes   BIGINT NOT NULL,
    load_balancers  BIGINT NOT NULL,
    namespaces      BIGINT NOT NULL,
    pods            BIGINT NOT NULL,
    apps            BIGINT NOT NULL,
    reported_at     BIGINT NOT NULL,
    PRIMARY KEY (cluster_id, tenant_id, project_key, hour)
);
CREATE INDEX usage_tenant_hour ON usage_hours (tenant_id, hour);

CREATE TABLE audit_events (
    id             BLOB PRIMARY KEY,
    at             BIGINT NOT NULL,
    actor          TEXT NOT NULL,
    action         TEXT NOT NULL,
    resource_kind  TEXT NOT NULL,
    resource_id    TEXT NOT NULL,
    outcome        TEXT NOT NULL,
    doc            TEXT NOT NULL
);
CREATE INDEX audit_at ON audit_events (at);
CREATE INDEX audit_actor ON audit_events (actor, at);
CREATE INDEX audit_resource ON audit_events (resource_kind, resource_id, at);

CREATE TABLE idempotency_keys (
    subject       TEXT NOT NULL,
    key           TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    status        INTEGER NOT NULL,
    body          BLOB NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    PRIMARY KEY (subject, key)
);
CREATE INDEX idempotency_expiry ON idempotency_keys (expires_at);
