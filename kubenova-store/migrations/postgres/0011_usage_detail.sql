-- Usage measured by the operator: CPU and memory limits next to the requests, and the
-- detail of an hour (PVC capacity by storage class, quota use against hard limits from the
-- ResourceQuotas' status) as one JSON document. Rows written before this migration read
-- as limits 0 and no detail. The hour index serves the cross-tenant export (GET /usage).
ALTER TABLE usage_hours ADD COLUMN cpu_limit_millicores BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_hours ADD COLUMN memory_limit_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_hours ADD COLUMN detail JSONB;
CREATE INDEX usage_hour ON usage_hours (hour);

-- The plan each tenant was on, from when: written with the tenant (create, and every
-- update that changes the plan) so that past hours are priced at the plan then in force.
-- Billing history like usage_hours: no foreign key, it outlives deleted tenants.
CREATE TABLE tenant_plans (
    tenant_id  UUID NOT NULL,
    since      BIGINT NOT NULL,
    plan       TEXT NOT NULL,
    PRIMARY KEY (tenant_id, since)
);
