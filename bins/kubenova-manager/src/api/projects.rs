//! Projects of a tenant: CRUD, the access list, the project kubeconfig routes (issuance
//! itself is in [`super::kubeconfigs`]) and hourly usage.
//!
//! Every route walks the path chain cluster → tenant → project: a tenant of another
//! cluster, or a project of another tenant, is KN-404 exactly like a missing one. A caller
//! outside the scope gets the same KN-404 (see [`super::authz`]). The chain helpers here
//! (`resolve_project`, `parse_id`) are shared with [`super::apps`].

use super::AppState;
use super::authz::{Access, Principal};
use super::error::{ApiError, ApiResult};
use super::extract::{
    Ctx, KnJson, LabeledListQuery, bytes_response, check_if_match, json_response,
};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kubenova_api::ErrorBody;
use kubenova_api::error::KnError;
use kubenova_api::ids::{ClusterId, ProjectId, TenantId};
use kubenova_api::model::{
    ObjectStatus, Project, ProjectSpec, Tenant, UsageRecord, project_namespace,
};
use kubenova_api::quantity::Quantity;
use kubenova_api::validate::Validate;
use kubenova_store::{StoreError, UsageQuery, UsageSums, WriteOptions};
use serde::{Deserialize, Serialize};
use std::str::FromStr;
use time::OffsetDateTime;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

// ---------------------------------------------------------------------------------
// Path parameters and shared chain helpers
// ---------------------------------------------------------------------------------

/// `{clusterID}/{tenantID}` of the tenant-level project routes.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TenantPath {
    /// Cluster id (UUID).
    #[serde(rename = "clusterID")]
    #[param(value_type = String, format = Uuid, example = "11111111-1111-1111-1111-111111111111")]
    pub cluster_id: String,
    /// Tenant id (UUID).
    #[serde(rename = "tenantID")]
    #[param(value_type = String, format = Uuid, example = "22222222-2222-2222-2222-222222222222")]
    pub tenant_id: String,
}

/// `{clusterID}/{tenantID}/{projectID}` of the project routes.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ProjectPath {
    /// Cluster id (UUID).
    #[serde(rename = "clusterID")]
    #[param(value_type = String, format = Uuid, example = "11111111-1111-1111-1111-111111111111")]
    pub cluster_id: String,
    /// Tenant id (UUID).
    #[serde(rename = "tenantID")]
    #[param(value_type = String, format = Uuid, example = "22222222-2222-2222-2222-222222222222")]
    pub tenant_id: String,
    /// Project id (UUID).
    #[serde(rename = "projectID")]
    #[param(value_type = String, format = Uuid, example = "33333333-3333-3333-3333-333333333333")]
    pub project_id: String,
}

/// `{projectID}` of `/api/v1/projects/{projectID}/usage`.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ProjectIdPath {
    /// Project id (UUID).
    #[serde(rename = "projectID")]
    #[param(value_type = String, format = Uuid, example = "33333333-3333-3333-3333-333333333333")]
    pub project_id: String,
}

/// Parses a path id; anything but a UUID is KN-400 naming the parameter.
pub(crate) fn parse_id<T: FromStr>(param: &str, value: &str) -> ApiResult<T> {
    value.parse::<T>().map_err(|_| {
        let shown: String = value.chars().take(64).collect();
        ApiError::bad_request(format!(
            "path parameter {param} must be a UUID, got {shown:?}"
        ))
    })
}

/// Unwraps a path extraction (KN-400 when it failed).
pub(crate) fn path<T>(p: Result<Path<T>, PathRejection>) -> ApiResult<T> {
    p.map(|Path(v)| v)
        .map_err(|e| ApiError::bad_request(format!("invalid path: {}", e.body_text())))
}

/// Unwraps a query extraction (KN-400 when it failed).
pub(crate) fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::bad_request(format!("invalid query parameters: {}", e.body_text())))
}

/// Parsed ids of a project path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProjectIds {
    pub cluster: ClusterId,
    pub tenant: TenantId,
    pub project: ProjectId,
}

impl ProjectPath {
    /// Parses the three ids (KN-400 on the first that is not a UUID).
    pub(crate) fn ids(&self) -> ApiResult<ProjectIds> {
        Ok(ProjectIds {
            cluster: parse_id("clusterID", &self.cluster_id)?,
            tenant: parse_id("tenantID", &self.tenant_id)?,
            project: parse_id("projectID", &self.project_id)?,
        })
    }
}

fn is_not_found(e: &StoreError) -> bool {
    matches!(e, StoreError::NotFound { .. })
}

/// Loads a tenant and checks it lives in `cluster` (KN-404 otherwise). No scope check.
pub(crate) async fn load_tenant(
    st: &AppState,
    cluster: ClusterId,
    tenant: TenantId,
) -> ApiResult<Tenant> {
    match st.store.get_tenant(tenant).await {
        Ok(t) if t.cluster_id == cluster => Ok(t),
        Ok(_) => Err(ApiError::not_found("tenant", tenant)),
        Err(e) if is_not_found(&e) => Err(ApiError::not_found("tenant", tenant)),
        Err(e) => Err(e.into()),
    }
}

/// Loads the project of a path, checking the whole chain (project of that tenant, tenant
/// of that cluster) and that the caller may see the project. Every failure is KN-404; a
/// caller without tenant-level scope is always told "project not found", so the chain
/// never reveals whether a tenant it cannot see exists.
pub(crate) async fn resolve_project(
    st: &AppState,
    who: &Principal,
    ids: ProjectIds,
) -> ApiResult<(Tenant, Project)> {
    let hidden = || ApiError::not_found("project", ids.project);
    let tenant_missing = || {
        if who.sees_tenant(ids.tenant) {
            ApiError::not_found("tenant", ids.tenant)
        } else {
            hidden()
        }
    };
    let tenant = match st.store.get_tenant(ids.tenant).await {
        Ok(t) if t.cluster_id == ids.cluster => t,
        Ok(_) => return Err(tenant_missing()),
        Err(e) if is_not_found(&e) => return Err(tenant_missing()),
        Err(e) => return Err(e.into()),
    };
    let project = match st.store.get_project(ids.project).await {
        Ok(p) if p.tenant_id == tenant.id && p.cluster_id == tenant.cluster_id => p,
        Ok(_) => return Err(hidden()),
        Err(e) if is_not_found(&e) => return Err(hidden()),
        Err(e) => return Err(e.into()),
    };
    if !who.sees_project(&project) {
        return Err(hidden());
    }
    Ok((tenant, project))
}

/// `/api/v1/clusters/{c}/tenants/{t}/projects/{p}`.
pub(crate) fn project_location(p: &Project) -> String {
    format!(
        "/api/v1/clusters/{}/tenants/{}/projects/{}",
        p.cluster_id, p.tenant_id, p.id
    )
}

fn to_bytes<T: Serialize>(v: &T) -> ApiResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| {
        tracing::error!(error = %e, "serializing a response failed");
        ApiError::from(KnError::internal("the response could not be encoded"))
    })
}

/// Serializes a response body once (it is also the idempotent response).
pub(crate) fn body_bytes<T: Serialize>(v: &T) -> ApiResult<Vec<u8>> {
    to_bytes(v)
}

// ---------------------------------------------------------------------------------
// Request and response types
// ---------------------------------------------------------------------------------

/// A page of projects.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectList {
    /// The projects, oldest first.
    pub items: Vec<Project>,
    /// Cursor of the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// `PUT …/projects/{projectID}/access`: the complete new access list.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"access": ["alice@example.com", "viewer:group:auditors"]}))]
pub struct AccessRequest {
    /// Access entries (`[owner:|developer:|viewer:]subject`), replacing the old list.
    pub access: Vec<String>,
}

impl super::extract::ListBody for AccessRequest {
    const FIELD: &'static str = "access";
}

/// Body of `PUT …/access`: the complete new access list, as an array or `{"access": [...]}`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum AccessBody {
    /// An array of access entries.
    List(Vec<String>),
    /// An object with `access`.
    Object(AccessRequest),
}

/// `?cascade=` of project deletion.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteProjectQuery {
    /// Also delete the project's apps (otherwise deletion is refused while apps exist).
    #[serde(default)]
    pub cascade: bool,
}

/// `?from=&to=&format=` of the usage report.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// First hour (RFC 3339, inclusive). Default: 24 hours before `to`.
    pub from: Option<String>,
    /// End (RFC 3339, exclusive). Default: now.
    pub to: Option<String>,
    /// `json` (default) or `csv` (one row per hour).
    pub format: Option<String>,
    /// `hour`, `day` or `month` (UTC, calendar months): adds `series`, one entry per
    /// period with a report, priced at the tenant's plan in force at each hour.
    pub granularity: Option<String>,
}

/// Sums over the hours of the range (resource-hours).
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageTotals {
    /// Hours with a report in the range.
    pub hours: i64,
    /// CPU requests × hours, in millicore-hours.
    pub cpu_millicore_hours: i64,
    /// Memory requests × hours, in byte-hours.
    pub memory_byte_hours: i64,
    /// PVC capacity × hours, in byte-hours.
    pub storage_byte_hours: i64,
    /// LoadBalancer services × hours.
    pub load_balancer_hours: i64,
    /// Pods × hours.
    pub pod_hours: i64,
}

/// Usage of a project: the latest reported hour in the 0.1.3 fields, the hourly series
/// and totals over the range. All zeros with no `lastReportedAt` until the cluster's
/// operator reports usage.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "projectId": "33333333-3333-3333-3333-333333333333", "tenantId": "22222222-2222-2222-2222-222222222222",
    "from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z",
    "cpuRequests": "1500m", "memoryRequests": "2Gi", "pvcStorage": "10Gi", "loadBalancers": 0,
    "pods": 3, "namespaces": 1, "apps": 1, "lastReportedAt": "2026-01-01T23:00:00Z",
    "totals": {"hours": 1, "cpuMillicoreHours": 1500, "memoryByteHours": 2147483648_i64, "storageByteHours": 10737418240_i64, "loadBalancerHours": 0, "podHours": 3},
    "records": [{"clusterId": "11111111-1111-1111-1111-111111111111", "tenantId": "22222222-2222-2222-2222-222222222222", "projectId": "33333333-3333-3333-3333-333333333333", "hour": "2026-01-01T23:00:00Z", "cpuMillicores": 1500, "memoryBytes": 2147483648_i64, "storageBytes": 10737418240_i64, "loadBalancers": 0, "namespaces": 1, "pods": 3, "apps": 1}]
}))]
pub struct ProjectUsageReport {
    /// Project.
    #[schema(value_type = String, format = Uuid)]
    pub project_id: ProjectId,
    /// Tenant.
    #[schema(value_type = String, format = Uuid)]
    pub tenant_id: TenantId,
    /// Range start (inclusive).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub from: OffsetDateTime,
    /// Range end (exclusive).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub to: OffsetDateTime,
    /// CPU requests in the latest reported hour (quantity).
    pub cpu_requests: String,
    /// Memory requests in the latest reported hour (quantity).
    pub memory_requests: String,
    /// PVC capacity in the latest reported hour (quantity).
    pub pvc_storage: String,
    /// LoadBalancer services in the latest reported hour.
    pub load_balancers: i64,
    /// Pods in the latest reported hour.
    pub pods: i64,
    /// Namespaces in the latest reported hour.
    pub namespaces: i64,
    /// KubeVela apps in the latest reported hour.
    pub apps: i64,
    /// Hour of the latest report; absent when nothing was reported in the range.
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_reported_at: Option<OffsetDateTime>,
    /// Sums over the range.
    pub totals: UsageTotals,
    /// Quota use against the hard limits from the latest report that carries it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<super::tenants::QuotaReport>,
    /// Entries of `quota` over their hard limit (absent without a quota report).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_violations: Option<i64>,
    /// Per period when `granularity` was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<Vec<super::usage::UsageBucket>>,
    /// The hourly records, oldest first; empty with `granularity=day` or `month` (the
    /// periods are summed by the database).
    pub records: Vec<UsageRecord>,
}

fn usage_example() -> serde_json::Value {
    serde_json::json!({
        "projectId": "33333333-3333-3333-3333-333333333333", "tenantId": "22222222-2222-2222-2222-222222222222",
        "from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z",
        "cpuRequests": "1500m", "memoryRequests": "2Gi", "pvcStorage": "10Gi", "loadBalancers": 0,
        "pods": 3, "namespaces": 1, "apps": 1, "lastReportedAt": "2026-01-01T23:00:00Z",
        "totals": {"hours": 1, "cpuMillicoreHours": 1500, "memoryByteHours": 2147483648_i64, "storageByteHours": 10737418240_i64, "loadBalancerHours": 0, "podHours": 3},
        "records": [{"clusterId": "11111111-1111-1111-1111-111111111111", "tenantId": "22222222-2222-2222-2222-222222222222", "projectId": "33333333-3333-3333-3333-333333333333", "hour": "2026-01-01T23:00:00Z", "cpuMillicores": 1500, "memoryBytes": 2147483648_i64, "storageBytes": 10737418240_i64, "loadBalancers": 0, "namespaces": 1, "pods": 3, "apps": 1}]
    })
}

/// CPU millicores as a Kubernetes quantity (`1500m`, `2`).
pub(crate) fn cpu_quantity(millicores: i64) -> String {
    Quantity::from_nanos(i128::from(millicores) * 1_000_000).to_string()
}

/// Bytes as a Kubernetes quantity, binary suffix when exact (`2Gi`, `1500`).
pub(crate) fn bytes_quantity(bytes: i64) -> String {
    if bytes > 0
        && bytes % 1024 == 0
        && let Ok(q) = Quantity::parse(&format!("{}Ki", bytes / 1024))
    {
        return q.to_string();
    }
    Quantity::from_nanos(i128::from(bytes) * 1_000_000_000).to_string()
}

/// Builds the report from the records of a range (pure).
pub(crate) fn usage_report(
    project: ProjectId,
    tenant: TenantId,
    from: OffsetDateTime,
    to: OffsetDateTime,
    mut records: Vec<UsageRecord>,
    sums: &UsageSums,
    recent: Option<&[UsageRecord]>,
) -> ProjectUsageReport {
    records.sort_by_key(|r| r.hour);
    let totals = UsageTotals {
        hours: sums.records,
        cpu_millicore_hours: sums.cpu_millicore_hours,
        memory_byte_hours: sums.memory_byte_hours,
        storage_byte_hours: sums.storage_byte_hours,
        load_balancer_hours: sums.load_balancer_hours,
        pod_hours: sums.pod_hours,
    };
    // The latest record and quota use: from `recent` (newest first) when the hours are
    // not read, else from the hours.
    let (last, quota) = match recent {
        Some(r) => (r.first(), r.iter().find_map(super::tenants::quota_report)),
        None => (
            records.last(),
            records.iter().rev().find_map(super::tenants::quota_report),
        ),
    };
    ProjectUsageReport {
        project_id: project,
        tenant_id: tenant,
        from,
        to,
        cpu_requests: cpu_quantity(last.map_or(0, |r| r.cpu_millicores)),
        memory_requests: bytes_quantity(last.map_or(0, |r| r.memory_bytes)),
        pvc_storage: bytes_quantity(last.map_or(0, |r| r.storage_bytes)),
        load_balancers: last.map_or(0, |r| r.load_balancers),
        pods: last.map_or(0, |r| r.pods),
        namespaces: last.map_or(0, |r| r.namespaces),
        apps: last.map_or(0, |r| r.apps),
        last_reported_at: last.map(|r| r.hour),
        totals,
        quota_violations: quota.as_ref().map(|q| q.violations),
        quota,
        series: None,
        records,
    }
}

/// Longest range a usage query may span.
const USAGE_MAX_RANGE: time::Duration = time::Duration::days(366);

fn parse_time(field: &str, v: &str) -> ApiResult<OffsetDateTime> {
    super::tenants::usage_time(field, v)
}

/// Resolves `from`/`to` (defaults: the last 24 hours) and checks the range.
pub(crate) fn usage_range(
    p: &UsageParams,
    now: OffsetDateTime,
) -> ApiResult<(OffsetDateTime, OffsetDateTime)> {
    let to = match &p.to {
        Some(v) => parse_time("to", v)?,
        None => now,
    };
    let from = match &p.from {
        Some(v) => parse_time("from", v)?,
        None => to - time::Duration::hours(24),
    };
    if from >= to {
        return Err(ApiError::invalid("from", "must be before to"));
    }
    if to - from > USAGE_MAX_RANGE {
        return Err(ApiError::invalid(
            "from",
            "the range may span at most 366 days",
        ));
    }
    Ok((from, to))
}

// ---------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------

/// List the projects of a tenant.
///
/// Platform staff, the tenant's owners and unscoped readOnly callers see every project;
/// a project-scoped caller (projectDev) sees only its own projects in the tenant.
/// `name` and `labelSelector` narrow the list to matching projects among those.
#[utoipa::path(
    get,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/projects",
    tag = "projects",
    operation_id = "listProjects",
    params(TenantPath, LabeledListQuery),
    responses(
        (status = 200, description = "A page of projects", body = ProjectList, example = json!({"items": [{
            "id": "33333333-3333-3333-3333-333333333333", "clusterId": "11111111-1111-1111-1111-111111111111",
            "tenantId": "22222222-2222-2222-2222-222222222222", "name": "payments", "description": "Payment services",
            "labels": {"env": "dev"}, "access": ["alice@example.com"], "namespace": "acme-payments-1a2b3c4d",
            "status": {"phase": "pending", "conditions": []}, "version": 1,
            "createdAt": "2026-01-01T00:10:00Z", "updatedAt": "2026-01-01T00:10:00Z"}], "nextCursor": null})),
        (status = 400, description = "KN-400: an id is not a UUID, or a bad limit/cursor", body = ErrorBody, example = json!({"code": "KN-400", "message": "path parameter tenantID must be a UUID, got \"acme\""})),
        (status = 401, description = "KN-401: no valid bearer token", body = ErrorBody, example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 404, description = "KN-404: the tenant does not exist in this cluster or is outside the caller's scope", body = ErrorBody, example = json!({"code": "KN-404", "message": "tenant \"22222222-2222-2222-2222-222222222222\" not found"})),
        (status = 422, description = "KN-422: limit out of range, a cursor not from this list, a name that is not a DNS-1123 label or a bad labelSelector", body = ErrorBody, example = json!({"code": "KN-422", "message": "validation failed: labelSelector: requirement 2: found \"b\" at character 12 in the values of 'in', expected a value, ',' or ')'"})),
    ),
    security(("bearerAuth" = []))
)]
pub async fn list_projects(
    State(st): State<AppState>,
    ctx: Ctx,
    p: Result<Path<TenantPath>, PathRejection>,
    q: Result<Query<LabeledListQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let p = path(p)?;
    let cluster: ClusterId = parse_id("clusterID", &p.cluster_id)?;
    let tenant_id: TenantId = parse_id("tenantID", &p.tenant_id)?;
    let (params, filter) = query(q)?.split()?;
    let tenant = load_tenant(&st, cluster, tenant_id).await?;
    ctx.principal.check_tenant_projects(&tenant, Access::Read)?;
    if ctx.principal.sees_tenant(tenant.id) {
        let page = st
            .store
            .list_projects_matching(tenant.id, &filter, &params)
            .await?;
        return Ok(json_response(
            StatusCode::OK,
            &ProjectList {
                items: page.items,
                next_cursor: page.next_cursor,
            },
            None,
            None,
            false,
        ));
    }
    // Project-scoped caller: exactly its own projects of this tenant (one short page).
    let mut items = Vec::new();
    for id in &ctx.principal.scoped_projects() {
        match st.store.get_project(*id).await {
            Ok(pr) if pr.tenant_id == tenant.id && pr.cluster_id == cluster => items.push(pr),
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if items.is_empty() {
        return Err(ApiError::not_found("tenant", tenant.id));
    }
    items.retain(|p| filter.matches(&p.name, &p.labels));
    items.sort_by_key(|p| p.id);
    Ok(json_response(
        StatusCode::OK,
        &ProjectList {
            items,
            next_cursor: None,
        },
        None,
        None,
        false,
    ))
}

/// Create a project in a tenant.
///
/// The project's namespace is derived from the tenant and project names. Needs admin, ops
/// or the tenant's owner.
#[utoipa::path(
    post,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/projects",
    tag = "projects",
    operation_id = "createProject",
    params(TenantPath),
    request_body(content = ProjectSpec, description = "The new project", example = json!({"name": "payments", "description": "Payment services", "access": ["alice@example.com", "viewer:group:auditors"]})),
    responses(
        (status = 201, description = "Created; `Location` names the project", body = Project,
            headers(("Location" = String, description = "URL of the new project"), ("ETag" = String, description = "Version of the record")),
            example = json!({
            "id": "33333333-3333-3333-3333-333333333333", "clusterId": "11111111-1111-1111-1111-111111111111",
            "tenantId": "22222222-2222-2222-2222-222222222222", "name": "payments", "description": "Payment services",
            "labels": {}, "access": ["alice@example.com", "viewer:group:auditors"], "namespace": "acme-payments-1a2b3c4d",
            "status": {"phase": "pending", "conditions": []}, "version": 1,
            "createdAt": "2026-01-01T00:10:00Z", "updatedAt": "2026-01-01T00:10:00Z"})),
        (status = 400, description = "KN-400: an id is not a UUID, or malformed JSON", body = ErrorBody, example = json!({"code": "KN-400", "message": "malformed JSON: EOF while parsing an object at line 1 column 9"})),
        (status = 401, description = "KN-401: no valid bearer token", body = ErrorBody, example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "KN-403: the caller may read but not create projects here", body = ErrorBody, example = json!({"code": "KN-403", "message": "this operation needs one of the roles tenantOwner"})),
        (status = 404, description = "KN-404: the tenant does not exist in this cluster or is outside the caller's scope", body = ErrorBody, example = json!({"code": "KN-404", "message": "tenant \"22222222-2222-2222-2222-222222222222\" not found"})),
        (status = 409, description = "KN-409: a project with this name already exists in the tenant", body = ErrorBody, example = json!({"code": "KN-409", "message": "a project named \"payments\" already exists in tenant 22222222-2222-2222-2222-222222222222"})),
        (status = 415, description = "KN-415: the body is not JSON", body = ErrorBody, example = json!({"code": "KN-415", "message": "expected Content-Type: application/json, got \"text/plain\""})),
        (status = 422, description = "KN-422: invalid fields, unknown fields, or an Idempotency-Key reused with another body", body = ErrorBody, example = json!({"code": "KN-422", "message": "validation failed: name: must be a DNS-1123 label", "details": {"violations": [{"field": "name", "reason": "must be a DNS-1123 label"}]}})),
    ),
    security(("bearerAuth" = []))
)]
pub async fn create_project(
    State(st): State<AppState>,
    ctx: Ctx,
    p: Result<Path<TenantPath>, PathRejection>,
    body: Result<KnJson<ProjectSpec>, ApiError>,
) -> ApiResult<Response> {
    let p = path(p)?;
    let cluster: ClusterId = parse_id("clusterID", &p.cluster_id)?;
    let tenant_id: TenantId = parse_id("tenantID", &p.tenant_id)?;
    let tenant = load_tenant(&st, cluster, tenant_id).await?;
    ctx.principal
        .check_tenant_projects(&tenant, Access::Write)?;
    if let Some(replay) = ctx.replay() {
        return Ok(replay);
    }
    let KnJson(spec) = body?;
    spec.validate()?;
    let now = OffsetDateTime::now_utc();
    let project = Project {
        id: ProjectId::new(),
        cluster_id: tenant.cluster_id,
        tenant_id: tenant.id,
        namespace: project_namespace(&tenant.name, &spec.name),
        name: spec.name,
        description: spec.description,
        labels: spec.labels,
        access: spec.access,
        status: ObjectStatus::default(),
        version: 1,
        created_at: now,
        updated_at: now,
    };
    let bytes = body_bytes(&project)?;
    let audit = ctx.audit("project.create", "project", project.id, 201);
    let idem = ctx.idempotency_record(201, &bytes);
    st.store
        .create_project(
            &project,
            &WriteOptions {
                audit: Some(&audit),
                idempotency: idem.as_ref(),
            },
        )
        .await?;
    Ok(bytes_response(
        StatusCode::CREATED,
        bytes,
        Some(project.version),
        Some(project_location(&project)),
        true,
    ))
}

/// Get a project.
#[utoipa::path(
    get,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/projects/{projectID}",
    tag = "projects",
    operation_id = "getProject",
    params(ProjectPath),
    responses(
        (status = 200, description = "The project; `ETag` is its version", body = Project,
            headers(("ETag" = String, description = "Version of the record, for If-Match")),
            example = json!({
            "id": "33333333-3333-3333-3333-333333333333", "clusterId": "11111111-1111-1111-1111-111111111111",
            "tenantId": "22222222-2222-2222-2222-222222222222", "name": "payments", "description": "Payment services",
            "labels": {}, "access": ["alice@example.com"], "namespace": "acme-payments-1a2b3c4d",
            "status": {"phase": "ready", "conditions": []}, "version": 2,
            "createdAt": "2026-01-01T00:10:00Z", "updatedAt": "2026-01-01T00:12:00Z"})),
        (status = 400, description = "KN-400: an id is not a UUID", body = ErrorBody, example = json!({"code": "KN-400", "message": "path parameter projectID must be a UUID, got \"payments\""})),
        (status = 401, description = "KN-401: no valid bearer token", body = ErrorBody, example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 404, description = "KN-404: no such project in this tenant and cluster, or outside the caller's scope", body = ErrorBody, example = json!({"code": "KN-404", "message": "project \"33333333-3333-3333-3333-333333333333\" not found"})),
    ),
    security(("bearerAuth" = []))
)]
pub async fn get_project(
    State(st): State<AppState>,
    ctx: Ctx,
    p: Result<Path<ProjectPath>, PathRejection>,
) -> ApiResult<Response> {
    let ids = path(p)?.ids()?;
    let (_, project) = resolve_project(&st, &ctx.principal, ids).await?;
    ctx.principal.check_project(&project, Access::Read)?;
    Ok(json_response(
        StatusCode::OK,
        &project,
        Some(project.version),
        None,
        false,
    ))
}

async fn write_project(
    st: &AppState,
    ctx: &Ctx,
    mut project: Project,
    action: &str,
) -> ApiResult<Response> {
    let expected = project.version;
    project.version += 1;
    project.updated_at = OffsetDateTime::now_utc();
    let bytes = body_bytes(&project)?;
    let audit = ctx.audit(action, "project", project.id, 200);
    st.store
        .update_project(
            &project,
            expected,
            &WriteOptions {
                audit: Some(&audit),
                idempotency: None,
            },
        )
        .await?;
    Ok(bytes_response(
        StatusCode::OK,
        bytes,
        Some(project.version),
        None,
        true,
    ))
}

/// Update a project's description, labels and access list.
///
/// The name cannot change (it names the namespace): a different `name` is KN-422.
/// Send `If-Match` with the ETag you read to avoid overwriting a concurrent change.
#[utoipa::path(
    put,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/projects/{projectID}",
    tag = "projects",
    operation_id = "updateProject",
    params(ProjectPath, ("If-Match" = Option<String>, Header, description = "ETag from a previous read; stale → KN-412")),
    request_body(content = ProjectSpec, description = "The project's complete new spec (same name)", example = json!({"name": "payments", "description": "Payments and refunds", "labels": {"env": "prod"}, "access": ["alice@example.com"]})),
    responses(
        (status = 200, description = "The updated project", body = Project,
            headers(("ETag" = String, description = "New version")),
            example = json!({
            "id": "33333333-3333-3333-3333-333333333333", "clusterId": "11111111-1111-1111-1111-111111111111",
            "tenantId": "22222222-2222-2222-2222-222222222222", "name": "payments", "description": "Payments and refunds",
            "labels": {"env": "prod"}, "access": ["alice@example.com"], "namespace": "acme-payments-1a2b3c4d",
            "status": {"phase": "ready", "conditions": []}, "version": 3,
            "createdAt": "2026-01-01T00:10:00Z", "updatedAt": "2026-01-01T00:20:00Z"})),
        (status = 400, description = "KN-400: an id is not a UUID, malformed JSON or a bad If-Match", body = ErrorBody, example = json!({"code": "KN-400", "message": "path parameter projectID must be a UUID, got \"payments\""})),
        (status = 401, description = "KN-401: no valid bearer token", body = ErrorBody, example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "KN-403: the caller may read but not change the project", body = ErrorBody, example = json!({"code": "KN-403", "message": "changing a project needs admin, ops or its tenant's owner"})),
        (status = 404, description = "KN-404: no such project, or outside the caller's scope", body = ErrorBody, example = json!({"code": "KN-404", "message": "project \"33333333-3333-3333-3333-333333333333\" not found"})),
        (status = 412, description = "KN-412: the project changed since it was read", body = ErrorBody, example = json!({"code": "KN-412", "message": "project \"33333333-3333-3333-3333-333333333333\" is at version 3, not 2: it changed since you read it; re-read and retry", "details": {"expectedVersion": 2, "currentVersion": 3}})),
        (status = 415, description = "KN-415: the body is not JSON", body = ErrorBody, example = json!({"code": "KN-415", "message": "expected Content-Type: application/json, got \"none\""})),
        (status = 422, description = "KN-422: invalid fields, or a rename", body = ErrorBody, example = json!({"code": "KN-422", "message": "validation failed: name: a project cannot be renamed (it is \"payments\")", "details": {"violations": [{"field": "name", "reason": "a project cannot be renamed (it is \"payments\")"}]}})),
    ),
    security(("bearerAuth" = []))
)]
pub async fn update_project(
    State(st): State<AppState>,
    ctx: Ctx,
    p: Result<Path<ProjectPath>, PathRejection>,
    headers: HeaderMap,
    body: Result<KnJson<ProjectSpec>, ApiError>,
) -> ApiResult<Response> {
    let ids = path(p)?.ids()?;
    let (_, mut project) = resolve_project(&st, &ctx.principal, ids).await?;
    ctx.principal.check_project(&project, Access::Write)?;
    let KnJson(spec) = body?;
    if spec.name != project.name {
        return Err(ApiError::invalid(
            "name",
            format!("a project cannot be renamed (it is {:?})", project.name),
        ));
    }
    spec.validate()?;
    check_if_match(&headers, "project", project.id, project.version)?;
    project.description = spec.description;
    project.labels = spec.labels;
    project.access = spec.access;
    write_project(&st, &ctx, project, "project.update").await
}

/// Delete a project.
///
/// Refused with KN-409 while the project has apps, unless `?cascade=true`, which deletes
/// them too. The operator removes the namespace from the cluster.
#[utoipa::path(
    delete,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/projects/{projectID}",
    tag = "projects",
    operation_id = "deleteProject",
    params(ProjectPath, DeleteProjectQuery, ("If-Match" = Option<String>, Header, description = "ETag from a previous read; stale → KN-412")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "KN-400: an id is not a UUID or a bad query parameter", body = ErrorBody, example = json!({"code": "KN-400", "message": "path parameter projectID must be a UUID, got \"payments\""})),
        (status = 401, description = "KN-401: no valid bearer token", body = ErrorBody, example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "KN-403: the caller may read but not delete the project", body = ErrorBody, example = json!({"code": "KN-403", "message": "changing a project needs admin, ops or its tenant's owner"})),
        (status = 404, description = "KN-404: no such project, or outside the caller's scope", body = ErrorBody, example = json!({"code": "KN-404", "message": "project \"33333333-3333-3333-3333-333333333333\" not found"})),
        (status = 409, description = "KN-409: the project still has apps (use cascade=true)", body = ErrorBody, example = json!({"code": "KN-409", "message": "project 33333333-3333-3333-3333-333333333333 still has 2 app(s); delete them first or delete with cascade=true"})),
        (status = 412, description = "KN-412: the project changed since it was read", body = ErrorBody, example = json!({"code": "KN-412", "message": "project \"33333333-3333-3333-3333-333333333333\" is at version 3, not 2: it changed since you read it; re-read and retry"})),
    ),
    security(("bearerAuth" = []))
)]
pub async fn delete_project(
    State(st): State<AppState>,
    ctx: Ctx,
    p: Result<Path<ProjectPath>, PathRejection>,
    q: Result<Query<DeleteProjectQuery>, QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let ids = path(p)?.ids()?;
    let q = query(q)?;
    let (_, project) = resolve_project(&st, &ctx.principal, ids).await?;
    ctx.principal.check_project(&project, Access::Write)?;
    check_if_match(&headers, "project", project.id, project.version)?;
    let audit = ctx.audit(
        if q.cascade {
            "project.delete.cascade"
        } else {
            "project.delete"
        },
        "project",
        project.id,
        204,
    );
    st.store
        .delete_project(
            project.id,
            q.cascade,
            &WriteOptions {
                audit: Some(&audit),
                idempotency: None,
            },
        )
        .await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.extensions_mut().insert(super::extract::Audited);
    Ok(resp)
}

/// Replace a project's access list.
#[utoipa::path(
    put,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/projects/{projectID}/access",
    tag = "projects",
    operation_id = "updateProjectAccess",
    params(ProjectPath, ("If-Match" = Option<String>, Header, description = "ETag from a previous read; stale → KN-412")),
    request_body(content = AccessBody, description = "The complete new access list: an array or `{\"access\": [...]}`", example = json!({"access": ["alice@example.com", "bob@example.com", "viewer:group:auditors"]})),
    responses(
        (status = 200, description = "The updated project", body = Project,
            headers(("ETag" = String, description = "New version")),
            example = json!({
            "id": "33333333-3333-3333-3333-333333333333", "clusterId": "11111111-1111-1111-1111-111111111111",
            "tenantId": "22222222-2222-2222-2222-222222222222", "name": "payments", "description": "Payment services",
            "labels": {}, "access": ["alice@example.com", "bob@example.com", "viewer:group:auditors"], "namespace": "acme-payments-1a2b3c4d",
            "status": {"phase": "ready", "conditions": []}, "version": 4,
            "createdAt": "2026-01-01T00:10:00Z", "updatedAt": "2026-01-01T00:30:00Z"})),
        (status = 400, description = "KN-400: an id is not a UUID or malformed JSON", body = ErrorBody, example = json!({"code": "KN-400", "message": "path parameter projectID must be a UUID, got \"payments\""})),
        (status = 401, description = "KN-401: no valid bearer token", body = ErrorBody, example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "KN-403: the caller may read but not change the project", body = ErrorBody, example = json!({"code": "KN-403", "message": "changing a project needs admin, ops or its tenant's owner"})),
        (status = 404, description = "KN-404: no such project, or outside the caller's scope", body = ErrorBody, example = json!({"code": "KN-404", "message": "project \"33333333-3333-3333-3333-333333333333\" not found"})),
        (status = 412, description = "KN-412: the project changed since it was read", body = ErrorBody, example = json!({"code": "KN-412", "message": "project \"33333333-3333-3333-3333-333333333333\" is at version 3, not 2: it changed since you read it; re-read and retry"})),
        (status = 415, description = "KN-415: the body is not JSON", body = ErrorBody, example = json!({"code": "KN-415", "message": "expected Content-Type: application/json, got \"none\""})),
        (status = 422, description = "KN-422: an invalid or duplicate entry", body = ErrorBody, example = json!({"code": "KN-422", "message": "validation failed: access[1]: subject of \"viewer:alice@example.com\" is listed twice", "details": {"violations": [{"field": "access[1]", "reason": "subject of \"viewer:alice@example.com\" is listed twice"}]}})),
    ),
    security(("bearerAuth" = []))
)]
pub async fn update_project_access(
    State(st): State<AppState>,
    ctx: Ctx,
    p: Result<Path<ProjectPath>, PathRejection>,
    headers: HeaderMap,
    body: Result<super::extract::KnList<AccessRequest>, ApiError>,
) -> ApiResult<Response> {
    let ids = path(p)?.ids()?;
    let (_, mut project) = resolve_project(&st, &ctx.principal, ids).await?;
    ctx.principal.check_project(&project, Access::Write)?;
    let super::extract::KnList(req) = body?;
    ProjectSpec {
        name: project.name.clone(),
        description: project.description.clone(),
        labels: project.labels.clone(),
        access: req.access.clone(),
    }
    .validate()?;
    check_if_match(&headers, "project", project.id, project.version)?;
    project.access = req.access;
    write_project(&st, &ctx, project, "project.access").await
}

/// Issues a project-scoped kubeconfig for the caller (query parameters `role`, `ttl`, `mode`).
///
/// Context namespace = the project's namespace; groups `kubenova:project:<t>:<p>:<role>`.
/// tenantOwner: any role; projectDev of the project: developer or viewer; readOnly:
/// viewer; admin, ops: any. `Accept: application/yaml` returns the kubeconfig itself.
#[utoipa::path(
    get,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/projects/{projectID}/kubeconfig",
    tag = "projects",
    operation_id = "getProjectKubeconfig",
    params(ProjectPath, super::kubeconfigs::KubeconfigQuery),
    responses(
        (status = 200, description = "The kubeconfig (JSON with metadata, or YAML with Accept: application/yaml; Cache-Control: no-store)",
            content(
                (super::kubeconfigs::IssuedKubeconfig = "application/json", example = json!(super::tenants::kubeconfig_response_example())),
                (String = "application/yaml", example = json!("apiVersion: v1\nkind: Config\n..."))
            )),
        (status = 400, description = "KN-400: an id is not a UUID", body = ErrorBody, example = json!({"code": "KN-400", "message": "path parameter projectID must be a UUID, got \"payments\""})),
        (status = 401, description = "KN-401: no valid bearer token", body = ErrorBody, example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "KN-403: the role is not allowed for the caller, or the subject is revoked", body = ErrorBody, example = json!({"code": "KN-403", "message": "a projectDev may obtain only developer or viewer kubeconfigs of their projects, not owner"})),
        (status = 404, description = "KN-404: no such project, or outside the caller's scope", body = ErrorBody, example = json!({"code": "KN-404", "message": "project \"33333333-3333-3333-3333-333333333333\" not found"})),
        (status = 409, description = "KN-409: the cluster has not reported a Capsule Proxy endpoint (or its CA) yet", body = ErrorBody, example = json!({"code": "KN-409", "message": "the Capsule Proxy endpoint of the cluster is not reported yet: kubeconfigs go through Capsule Proxy; retry once the operator reports it", "details": {"clusterId": "11111111-1111-1111-1111-111111111111"}})),
        (status = 422, description = "KN-422: unknown role or mode, TTL not positive or over the maximum", body = ErrorBody, example = json!({"code": "KN-422", "message": "validation failed: role: unknown role \"admin\": use owner, developer or viewer"})),
        (status = 503, description = "KN-503: no external URL configured for the token issuer", body = ErrorBody, example = json!({"code": "KN-503", "message": "the manager has no external URL to put in tokens and exec kubeconfigs: set --external-url / KUBENOVA_EXTERNAL_URL"})),
    ),
    security(("bearerAuth" = []))
)]
pub async fn get_project_kubeconfig(
    State(st): State<AppState>,
    ctx: Ctx,
    p: Result<Path<ProjectPath>, PathRejection>,
    q: Result<Query<super::kubeconfigs::KubeconfigQuery>, QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let ids = path(p)?.ids()?;
    let params = query(q)?.params(&st)?;
    let (tenant, project) = resolve_project(&st, &ctx.principal, ids).await?;
    super::kubeconfigs::issue(&st, &ctx, &headers, tenant, Some(project), params).await
}

/// Issues a project-scoped kubeconfig for the caller (JSON body `role`, `ttl`, `mode`).
#[utoipa::path(
    post,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/projects/{projectID}/kubeconfig",
    tag = "projects",
    operation_id = "issueProjectKubeconfig",
    params(ProjectPath),
    request_body(content = super::kubeconfigs::KubeconfigBody, example = json!({"role": "developer", "ttl": "1h", "mode": "token"})),
    responses(
        (status = 200, description = "The kubeconfig (JSON with metadata, or YAML with Accept: application/yaml; Cache-Control: no-store)",
            content(
                (super::kubeconfigs::IssuedKubeconfig = "application/json", example = json!(super::tenants::kubeconfig_response_example())),
                (String = "application/yaml", example = json!("apiVersion: v1\nkind: Config\n..."))
            )),
        (status = 400, description = "KN-400: malformed JSON or an id is not a UUID", body = ErrorBody, example = json!({"code": "KN-400", "message": "path parameter projectID must be a UUID, got \"payments\""})),
        (status = 401, description = "KN-401: no valid bearer token", body = ErrorBody, example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "KN-403: the role is not allowed for the caller, or the subject is revoked", body = ErrorBody, example = json!({"code": "KN-403", "message": "a projectDev may obtain only developer or viewer kubeconfigs of their projects, not owner"})),
        (status = 404, description = "KN-404: no such project, or outside the caller's scope", body = ErrorBody, example = json!({"code": "KN-404", "message": "project \"33333333-3333-3333-3333-333333333333\" not found"})),
        (status = 409, description = "KN-409: the cluster has not reported a Capsule Proxy endpoint (or its CA) yet", body = ErrorBody, example = json!({"code": "KN-409", "message": "the Capsule Proxy endpoint of the cluster is not reported yet: kubeconfigs go through Capsule Proxy; retry once the operator reports it"})),
        (status = 415, description = "KN-415: body is not JSON", body = ErrorBody, example = json!({"code": "KN-415", "message": "expected Content-Type: application/json, got \"text/plain\""})),
        (status = 422, description = "KN-422: unknown role or mode, TTL not positive or over the maximum", body = ErrorBody, example = json!({"code": "KN-422", "message": "validation failed: ttl: must be greater than 0s and at most 86400s (--max-kubeconfig-ttl); got 0s"})),
        (status = 503, description = "KN-503: no external URL configured for the token issuer", body = ErrorBody, example = json!({"code": "KN-503", "message": "the manager has no external URL to put in tokens and exec kubeconfigs: set --external-url / KUBENOVA_EXTERNAL_URL"})),
    ),
    security(("bearerAuth" = []))
)]
pub async fn issue_project_kubeconfig(
    State(st): State<AppState>,
    ctx: Ctx,
    p: Result<Path<ProjectPath>, PathRejection>,
    headers: HeaderMap,
    KnJson(body): KnJson<super::kubeconfigs::KubeconfigBody>,
) -> ApiResult<Response> {
    let ids = path(p)?.ids()?;
    let params = body.params(&st)?;
    let (tenant, project) = resolve_project(&st, &ctx.principal, ids).await?;
    super::kubeconfigs::issue(&st, &ctx, &headers, tenant, Some(project), params).await
}

/// Hourly usage of a project.
///
/// Real records reported by the cluster's operator, for `from`..`to` (default: the last
/// 24 hours): the latest hour in the 0.1.3 fields, totals over the range and the series;
/// `format=csv` returns the series as CSV. Zeros (and no `lastReportedAt`) until the
/// operator has reported.
#[utoipa::path(
    get,
    path = "/api/v1/projects/{projectID}/usage",
    tag = "projects",
    operation_id = "getProjectUsage",
    params(ProjectIdPath, UsageParams),
    responses(
        (status = 200, description = "The usage report (JSON), or the hourly series as `text/csv` with format=csv", body = ProjectUsageReport,
            content(
                (ProjectUsageReport = "application/json", example = json!(usage_example())),
                (String = "text/csv", example = "hour,clusterId,tenantId,projectId,cpuMillicores,memoryBytes,storageBytes,loadBalancers,namespaces,pods,apps,cpuLimitMillicores,memoryLimitBytes\n2026-01-01T23:00:00Z,11111111-1111-1111-1111-111111111111,22222222-2222-2222-2222-222222222222,33333333-3333-3333-3333-333333333333,1500,2147483648,10737418240,0,1,3,1,3000,4294967296\n")
            )),
        (status = 400, description = "KN-400: the id is not a UUID, a timestamp is not RFC 3339, or an unknown format", body = ErrorBody, example = json!({"code": "KN-400", "message": "query parameter from must be an RFC 3339 timestamp, got \"yesterday\""})),
        (status = 401, description = "KN-401: no valid bearer token", body = ErrorBody, example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 404, description = "KN-404: no such project, or outside the caller's scope", body = ErrorBody, example = json!({"code": "KN-404", "message": "project \"33333333-3333-3333-3333-333333333333\" not found"})),
        (status = 422, description = "KN-422: a malformed timestamp, an unknown format or granularity, from is not before to, the range exceeds 366 days, or it holds more records than one answer carries (--usage-max-records)", body = ErrorBody, example = json!({"code": "KN-422", "message": "validation failed: from: must be before to", "details": {"violations": [{"field": "from", "reason": "must be before to"}]}})),
    ),
    security(("bearerAuth" = []))
)]
pub async fn get_project_usage(
    State(st): State<AppState>,
    ctx: Ctx,
    p: Result<Path<ProjectIdPath>, PathRejection>,
    q: Result<Query<UsageParams>, QueryRejection>,
) -> ApiResult<Response> {
    let p = path(p)?;
    let id: ProjectId = parse_id("projectID", &p.project_id)?;
    let q = query(q)?;
    let project = match st.store.get_project(id).await {
        Ok(pr) if ctx.principal.sees_project(&pr) => pr,
        Ok(_) => return Err(ApiError::not_found("project", id)),
        Err(e) if is_not_found(&e) => return Err(ApiError::not_found("project", id)),
        Err(e) => return Err(e.into()),
    };
    ctx.principal.check_project(&project, Access::Read)?;
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "format",
                format!("{other:?} is not a format: use json or csv"),
            ));
        }
    };
    let granularity = q
        .granularity
        .as_deref()
        .map(super::usage::Granularity::parse)
        .transpose()?;
    let (from, to) = usage_range(&q, OffsetDateTime::now_utc())?;
    let query = UsageQuery {
        tenant: project.tenant_id,
        cluster: Some(project.cluster_id),
        project: Some(project.id),
        all_projects: false,
        from,
        to,
        max_records: st.config.usage_max_records,
    };
    let by_days = !csv && granularity.is_some_and(super::usage::Granularity::summed_by_day);
    if by_days {
        // Summed by the database per day and pricing span; the hours are left out.
        let tenant = st.store.get_tenant(project.tenant_id).await?;
        let history = st.store.tenant_plan_history(tenant.id).await?;
        let versions = st.store.plan_price_history().await?;
        let super::usage::DayUsage { days, recent } =
            super::usage::day_usage(&st, &query, &history, &versions).await?;
        let sums = super::usage::sum_days(&days);
        let mut report = usage_report(
            project.id,
            project.tenant_id,
            from,
            to,
            Vec::new(),
            &sums,
            Some(&recent),
        );
        report.series = granularity.map(|g| {
            super::usage::series(
                &st.catalog,
                &history,
                &versions,
                &tenant.plan,
                &super::usage::priced_days(&days),
                g,
            )
        });
        return Ok(json_response(StatusCode::OK, &report, None, None, false));
    }
    // More records than a response carries is KN-422 (never a truncated list).
    let records = st.store.query_usage(&query).await?;
    let records: Vec<UsageRecord> = records
        .into_iter()
        .filter(|r| r.project_id == Some(project.id))
        .collect();
    if csv {
        let mut resp = (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            UsageRecord::to_csv(&records),
        )
            .into_response();
        if let Ok(v) = format!("attachment; filename=\"usage-{}.csv\"", project.id).parse() {
            resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
        }
        return Ok(resp);
    }
    // Summed by the database over every record of the range.
    let sums = st.store.usage_totals(&query).await?;
    let series = match granularity {
        Some(g) => {
            let tenant = st.store.get_tenant(project.tenant_id).await?;
            let history = st.store.tenant_plan_history(tenant.id).await?;
            let versions = st.store.plan_price_history().await?;
            Some(super::usage::series(
                &st.catalog,
                &history,
                &versions,
                &tenant.plan,
                &super::usage::priced_records(&records),
                g,
            ))
        }
        None => None,
    };
    let mut report = usage_report(
        project.id,
        project.tenant_id,
        from,
        to,
        records,
        &sums,
        None,
    );
    report.series = series;
    Ok(json_response(StatusCode::OK, &report, None, None, false))
}

/// The project routes with their OpenAPI operations.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_projects, create_project))
        .routes(routes!(get_project, update_project, delete_project))
        .routes(routes!(update_project_access))
        .routes(routes!(get_project_kubeconfig, issue_project_kubeconfig))
        .routes(routes!(get_project_usage))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kubenova_api::ids::ClusterId;

    fn rec(hour: OffsetDateTime, cpu: i64, mem: i64) -> UsageRecord {
        UsageRecord {
            cluster_id: ClusterId::new(),
            tenant_id: TenantId::new(),
            project_id: Some(ProjectId::new()),
            hour,
            cpu_millicores: cpu,
            memory_bytes: mem,
            storage_bytes: 0,
            load_balancers: 1,
            namespaces: 1,
            pods: 2,
            apps: 1,
            cpu_limit_millicores: 0,
            memory_limit_bytes: 0,
            storage_by_class: Default::default(),
            quotas: Vec::new(),
            cluster_capacity: None,
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(cpu_quantity(1500), "1500m");
        assert_eq!(cpu_quantity(2000), "2");
        assert_eq!(cpu_quantity(0), "0");
        assert_eq!(bytes_quantity(2 * 1024 * 1024 * 1024), "2Gi");
        assert_eq!(bytes_quantity(1500), "1500");
        assert_eq!(bytes_quantity(0), "0");
    }

    #[test]
    fn report_uses_latest_hour_and_the_given_sums() {
        let h1 = time::macros::datetime!(2026-01-01 10:00 UTC);
        let h2 = time::macros::datetime!(2026-01-01 11:00 UTC);
        let sums = UsageSums {
            records: 2,
            cpu_millicore_hours: 2500,
            pod_hours: 4,
            ..Default::default()
        };
        let r = usage_report(
            ProjectId::new(),
            TenantId::new(),
            h1,
            h2 + time::Duration::hours(1),
            vec![rec(h2, 2000, 1024), rec(h1, 500, 2048)],
            &sums,
            None,
        );
        assert_eq!(r.cpu_requests, "2");
        assert_eq!(r.memory_requests, "1Ki");
        assert_eq!(r.last_reported_at, Some(h2));
        assert_eq!(r.totals.hours, 2);
        assert_eq!(r.totals.cpu_millicore_hours, 2500);
        assert_eq!(r.totals.pod_hours, 4);
        assert_eq!(r.records[0].hour, h1);
        let empty = usage_report(
            ProjectId::new(),
            TenantId::new(),
            h1,
            h2,
            vec![],
            &UsageSums::default(),
            Some(&[]),
        );
        assert_eq!(empty.cpu_requests, "0");
        assert!(empty.last_reported_at.is_none());
        let v = serde_json::to_value(&empty).unwrap();
        assert!(v.get("lastReportedAt").is_none());
    }

    #[test]
    fn csv_has_a_row_per_hour() {
        let h1 = time::macros::datetime!(2026-01-01 10:00 UTC);
        let csv = UsageRecord::to_csv(&[rec(h1, 1, 2)]);
        let lines: Vec<_> = csv.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[1].starts_with("2026-01-01T10:00:00Z,"));
        assert!(lines[1].ends_with(",1,2,0,1,1,2,1,0,0"));
    }

    #[test]
    fn ranges() {
        let now = time::macros::datetime!(2026-01-02 00:00 UTC);
        let (f, t) = usage_range(&UsageParams::default(), now).unwrap();
        assert_eq!(t, now);
        assert_eq!(t - f, time::Duration::hours(24));
        let bad = UsageParams {
            from: Some("yesterday".into()),
            ..Default::default()
        };
        assert_eq!(
            usage_range(&bad, now).unwrap_err().error.code,
            kubenova_api::ErrorCode::Validation
        );
        let inverted = UsageParams {
            from: Some("2026-01-03T00:00:00Z".into()),
            ..Default::default()
        };
        assert_eq!(
            usage_range(&inverted, now).unwrap_err().error.code,
            kubenova_api::ErrorCode::Validation
        );
        let long = UsageParams {
            from: Some("2020-01-01T00:00:00Z".into()),
            ..Default::default()
        };
        assert!(usage_range(&long, now).is_err());
    }

    #[test]
    fn ids_must_be_uuids() {
        let p = ProjectPath {
            cluster_id: ClusterId::new().to_string(),
            tenant_id: "acme".into(),
            project_id: ProjectId::new().to_string(),
        };
        let e = p.ids().unwrap_err();
        assert_eq!(e.error.code, kubenova_api::ErrorCode::BadRequest);
        assert!(e.error.message.contains("tenantID"));
    }
}
