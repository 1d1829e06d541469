//! Usage ingestion: hourly records, idempotent per (cluster, tenant, project, hour).
//!
//! `GET /api/v1/tenants/{id}/usage` lives in [`super::tenants`]; the project usage read in
//! the projects module.

use super::AppState;
use super::authz::Role;
use super::clusters::to_bytes;
use super::error::ApiResult;
use super::extract::{Ctx, KnJson, bytes_response};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use kubenova_api::ErrorBody;
use kubenova_api::ids::{ClusterId, ProjectId, TenantId};
use kubenova_api::model::UsageRecord;
use kubenova_api::validate::{Validate, ValidationError, Validator};
use kubenova_store::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Most records accepted in one batch.
pub const MAX_BATCH: usize = 5000;

/// A batch of hourly usage records.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"records": [{"clusterId": "11111111-1111-1111-1111-111111111111", "tenantId": "22222222-2222-2222-2222-222222222222",
    "hour": "2026-01-01T10:00:00Z", "cpuMillicores": 1500, "memoryBytes": 2147483648_i64, "storageBytes": 10737418240_i64,
    "loadBalancers": 1, "namespaces": 3, "pods": 12, "apps": 2}]}))]
pub struct UsageBatch {
    /// Records; a re-sent (cluster, tenant, project, hour) replaces the earlier one.
    pub records: Vec<UsageRecord>,
}

/// Result of an ingestion.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"accepted": 1}))]
pub struct UsageAccepted {
    /// Records stored (inserted or replaced).
    pub accepted: usize,
}

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(ingest_usage))
}

/// Checks every record and that its tenant (and project) exist in its cluster.
pub(crate) async fn check_batch(st: &AppState, records: &[UsageRecord]) -> ApiResult<()> {
    let mut v = Validator::new();
    if records.is_empty() {
        v.push("records", "must contain at least one record");
    }
    if records.len() > MAX_BATCH {
        v.push(
            "records",
            format!(
                "must contain at most {MAX_BATCH} records (got {})",
                records.len()
            ),
        );
        return Err(v
            .finish()
            .err()
            .unwrap_or_else(|| ValidationError::single("records", "too many"))
            .into());
    }
    let mut tenants: BTreeMap<TenantId, Option<ClusterId>> = BTreeMap::new();
    let mut projects: BTreeMap<ProjectId, Option<TenantId>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (i, r) in records.iter().enumerate() {
        if let Err(e) = r.validate() {
            for viol in e.violations {
                v.push(format!("records[{i}].{}", viol.field), viol.reason);
            }
        }
        if !seen.insert((r.cluster_id, r.tenant_id, r.project_id, r.hour)) {
            v.push(
                format!("records[{i}]"),
                "repeats the cluster, tenant, project and hour of an earlier record",
            );
        }
        let cluster = match tenants.get(&r.tenant_id) {
            Some(c) => *c,
            None => {
                let c = match st.store.get_tenant(r.tenant_id).await {
                    Ok(t) => Some(t.cluster_id),
                    Err(StoreError::NotFound { .. }) => None,
                    Err(e) => return Err(e.into()),
                };
                tenants.insert(r.tenant_id, c);
                c
            }
        };
        if cluster != Some(r.cluster_id) {
            v.push(
                format!("records[{i}].tenantId"),
                format!(
                    "tenant {} does not exist in cluster {}",
                    r.tenant_id, r.cluster_id
                ),
            );
            continue;
        }
        if let Some(p) = r.project_id {
            let owner = match projects.get(&p) {
                Some(o) => *o,
                None => {
                    let o = match st.store.get_project(p).await {
                        Ok(proj) => Some(proj.tenant_id),
                        Err(StoreError::NotFound { .. }) => None,
                        Err(e) => return Err(e.into()),
                    };
                    projects.insert(p, o);
                    o
                }
            };
            if owner != Some(r.tenant_id) {
                v.push(
                    format!("records[{i}].projectId"),
                    format!("project {p} does not exist in tenant {}", r.tenant_id),
                );
            }
        }
    }
    v.finish()?;
    Ok(())
}

/// Ingests hourly usage records as admin or ops (operators upload theirs through `POST /api/v1/agent/usage`).
#[utoipa::path(
    post,
    path = "/api/v1/usage",
    tag = "usage",
    operation_id = "ingestUsage",
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry return the first response")),
    request_body(content = UsageBatch, description = "Hourly records; idempotent per (cluster, tenant, project, hour)",
        example = json!({"records": [{"clusterId": "11111111-1111-1111-1111-111111111111", "tenantId": "22222222-2222-2222-2222-222222222222",
            "hour": "2026-01-01T10:00:00Z", "cpuMillicores": 1500, "memoryBytes": 2147483648_i64, "storageBytes": 10737418240_i64,
            "loadBalancers": 1, "namespaces": 3, "pods": 12, "apps": 2}]})),
    responses(
        (status = 202, description = "Stored (inserted or replaced)", body = UsageAccepted, example = json!({"accepted": 1})),
        (status = 400, description = "Malformed JSON", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "malformed JSON: EOF while parsing a list at line 1 column 12"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "Only admin and ops ingest usage", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "this operation needs one of the roles admin, ops"})),
        (status = 413, description = "Body over the size limit", body = ErrorBody,
            example = json!({"code": "KN-413", "message": "the request body exceeds the size limit"})),
        (status = 415, description = "Body is not JSON", body = ErrorBody,
            example = json!({"code": "KN-415", "message": "expected Content-Type: application/json, got \"text/plain\""})),
        (status = 422, description = "Invalid records, unknown tenant/project, hours not whole", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: records[0].hour: must be the start of an hour (minutes, seconds and fractions zero)",
                "details": {"violations": [{"field": "records[0].hour", "reason": "must be the start of an hour (minutes, seconds and fractions zero)"}]}})),
    ),
    security(("bearerAuth" = []))
)]
async fn ingest_usage(
    State(st): State<AppState>,
    ctx: Ctx,
    KnJson(batch): KnJson<UsageBatch>,
) -> ApiResult<Response> {
    ctx.principal.require_any(&[Role::Admin, Role::Ops])?;
    if let Some(replay) = ctx.replay() {
        return Ok(replay);
    }
    check_batch(&st, &batch.records).await?;
    st.store.upsert_usage(&batch.records).await?;
    let body = UsageAccepted {
        accepted: batch.records.len(),
    };
    let bytes = to_bytes(&body)?;
    let clusters: BTreeSet<ClusterId> = batch.records.iter().map(|r| r.cluster_id).collect();
    let mut audit = ctx.audit("usage.ingest", "usage", "batch", 202);
    audit.details = Some(json!({"records": batch.records.len(), "clusters": clusters}));
    st.store.append_audit(&audit).await?;
    if let Some(rec) = ctx.idempotency_record(202, &bytes) {
        match st.store.put_idempotency(&rec).await {
            Ok(()) | Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(bytes_response(
        StatusCode::ACCEPTED,
        bytes,
        None,
        None,
        true,
    ))
}
