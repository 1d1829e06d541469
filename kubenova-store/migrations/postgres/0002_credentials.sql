-- Issued kubeconfig credentials (metadata only: the token itself is never stored) and
-- subject revocations ("subject X may no longer obtain credentials of tenant T").
-- No foreign keys: like usage and audit, this is history that outlives deleted tenants.

CREATE TABLE issued_credentials (
    jti         UUID PRIMARY KEY,
    tenant_id   UUID NOT NULL,
    project_id  UUID,
    cluster_id  UUID NOT NULL,
    subject     TEXT NOT NULL,
    role        TEXT NOT NULL,
    mode        TEXT NOT NULL,
    issued_by   TEXT NOT NULL,
    issued_at   BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT,
    revoked_by  TEXT
);
CREATE INDEX issued_credentials_tenant ON issued_credentials (tenant_id, jti);
CREATE INDEX issued_credentials_subject ON issued_credentials (tenant_id, subject, jti);

CREATE TABLE revoked_subjects (
    tenant_id   UUID NOT NULL,
    subject     TEXT NOT NULL,
    revoked_at  BIGINT NOT NULL,
    revoked_by  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, subject)
);
