//! Applications of a project: CRUD with revisions, the deploy/suspend/resume/rollback/
//! delete actions, status, revision history and structured diffs, logs and events (read
//! through the cluster's operator, see [`super::agent`]), traits, policies and
//! workflow runs.
//!
//! Every spec change appends a revision (`n+1`); an unchanged spec appends none. Actions
//! record what the client asked for (`deployedRevision`, `suspended`, a workflow run in
//! state `requested`); the cluster's operator moves them on and reports status, which is
//! returned as stored — `pending` until it does.
//!
//! The 0.1.3 contract spells actions `…/apps/{appID}:deploy`. axum cannot route a
//! parameter with a suffix, so the middleware rewrites them to
//! `…/apps/{appID}/actions/deploy` before routing; the published OpenAPI keeps the colon
//! paths (see [`routes()`]).

use super::AppState;
use super::agent::{self, Relay};
use super::authz::{Access, Principal};
use super::error::{ApiError, ApiResult};
use super::extract::{
    Audited, Ctx, KnJson, ListQuery, NamedListQuery, bytes_response, check_if_match, json_response,
    parse_json,
};
use super::projects::{ProjectIds, body_bytes, parse_id, path, query, resolve_project};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use kubenova_api::ErrorBody;
use kubenova_api::agent::{
    AgentAnswer, AgentRequestKind, DEFAULT_TAIL_LINES, FOLLOW_SECONDS, FollowEnd, LogQuery,
    MAX_SINCE_SECONDS, MAX_TAIL_LINES,
};
use kubenova_api::apprules::AppRules;
use kubenova_api::error::{ErrorCode, KnError};
use kubenova_api::ids::{AppId, RunId};
use kubenova_api::model::{
    App, AppEvents, AppLogs, AppPolicy, AppRevision, AppSpec, AppTrait, Condition, ObjectStatus,
    Phase, Project, RunStatus, Tenant, WorkflowRun,
};
use kubenova_api::validate::Validate;
use kubenova_store::{ListParams, StoreError, WriteOptions};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::ops::ControlFlow;
use time::OffsetDateTime;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

/// Path template of one app.
const APP_PATH: &str =
    "/api/v1/clusters/{clusterID}/tenants/{tenantID}/projects/{projectID}/apps/{appID}";

// ---------------------------------------------------------------------------------
// Path parameters and chain helpers
// ---------------------------------------------------------------------------------

/// `{clusterID}/{tenantID}/{projectID}/{appID}`.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct AppPath {
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
    /// App id (UUID).
    #[serde(rename = "appID")]
    #[param(value_type = String, format = Uuid, example = "44444444-4444-4444-4444-444444444444")]
    pub app_id: String,
}

impl AppPath {
    fn ids(&self) -> ApiResult<(ProjectIds, AppId)> {
        Ok((
            ProjectIds {
                cluster: parse_id("clusterID", &self.cluster_id)?,
                tenant: parse_id("tenantID", &self.tenant_id)?,
                project: parse_id("projectID", &self.project_id)?,
            },
            parse_id("appID", &self.app_id)?,
        ))
    }
}

/// `…/diff/{revA}/{revB}`.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DiffPath {
    /// Cluster id (UUID).
    #[serde(rename = "clusterID")]
    #[param(value_type = String, format = Uuid)]
    pub cluster_id: String,
    /// Tenant id (UUID).
    #[serde(rename = "tenantID")]
    #[param(value_type = String, format = Uuid)]
    pub tenant_id: String,
    /// Project id (UUID).
    #[serde(rename = "projectID")]
    #[param(value_type = String, format = Uuid)]
    pub project_id: String,
    /// App id (UUID).
    #[serde(rename = "appID")]
    #[param(value_type = String, format = Uuid)]
    pub app_id: String,
    /// The older revision number.
    #[serde(rename = "revA")]
    #[param(value_type = String, example = "1")]
    pub rev_a: String,
    /// The newer revision number.
    #[serde(rename = "revB")]
    #[param(value_type = String, example = "2")]
    pub rev_b: String,
}

/// `…/logs/{component}`.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct LogsPath {
    /// Cluster id (UUID).
    #[serde(rename = "clusterID")]
    #[param(value_type = String, format = Uuid)]
    pub cluster_id: String,
    /// Tenant id (UUID).
    #[serde(rename = "tenantID")]
    #[param(value_type = String, format = Uuid)]
    pub tenant_id: String,
    /// Project id (UUID).
    #[serde(rename = "projectID")]
    #[param(value_type = String, format = Uuid)]
    pub project_id: String,
    /// App id (UUID).
    #[serde(rename = "appID")]
    #[param(value_type = String, format = Uuid)]
    pub app_id: String,
    /// Component name.
    #[param(example = "web")]
    pub component: String,
}

/// `/api/v1/apps/runs/{runID}`.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RunPath {
    /// Workflow run id (UUID).
    #[serde(rename = "runID")]
    #[param(value_type = String, format = Uuid, example = "55555555-5555-5555-5555-555555555555")]
    pub run_id: String,
}

fn app_path(cluster: &str, tenant: &str, project: &str, app: &str) -> AppPath {
    AppPath {
        cluster_id: cluster.to_string(),
        tenant_id: tenant.to_string(),
        project_id: project.to_string(),
        app_id: app.to_string(),
    }
}

/// Loads the app of a path after the project chain; another project's app is KN-404.
async fn resolve_app(
    st: &AppState,
    who: &Principal,
    p: &AppPath,
) -> ApiResult<(Tenant, Project, App)> {
    let (ids, app_id) = p.ids()?;
    let (tenant, project) = resolve_project(st, who, ids).await?;
    match st.store.get_app(app_id).await {
        Ok(a) if a.project_id == project.id => Ok((tenant, project, a)),
        Ok(_) | Err(StoreError::NotFound { .. }) => Err(ApiError::not_found("app", app_id)),
        Err(e) => Err(e.into()),
    }
}

/// Resolves the app and checks the caller may read (or change) apps of its project.
async fn authorize(st: &AppState, ctx: &Ctx, p: &AppPath, access: Access) -> ApiResult<App> {
    Ok(authorize_in_tenant(st, ctx, p, access).await?.1)
}

/// [`authorize`], also returning the app's tenant (whose plan says what apps may use).
async fn authorize_in_tenant(
    st: &AppState,
    ctx: &Ctx,
    p: &AppPath,
    access: Access,
) -> ApiResult<(Tenant, App)> {
    let (tenant, project, app) = resolve_app(st, &ctx.principal, p).await?;
    ctx.principal.check_apps(&project, access)?;
    Ok((tenant, app))
}

/// Checks an app spec before it is stored or deployed: its own validation (shapes,
/// bounds, no property that targets another namespace or cluster), then its tenant's
/// plan (definition types, image registries). KN-422 naming each field.
fn check_spec(st: &AppState, tenant: &Tenant, spec: &AppSpec) -> ApiResult<()> {
    spec.validate()?;
    let rules = AppRules::resolve(&st.catalog, &tenant.plan, &tenant.network_policies)
        .map_err(|why| {
            ApiError::from(KnError::new(
                ErrorCode::Conflict,
                format!(
                    "tenant {} cannot run apps under its current plan settings: {why}; an admin must fix the tenant's plan or policysets",
                    tenant.id
                ),
            ))
        })?;
    rules.check(spec)?;
    Ok(())
}

/// The authorization of a POST on an app (an action, a workflow run): the caller must be
/// allowed to change the apps of the path's project. Then a stored response of the
/// request's `Idempotency-Key` is answered (`Break`) before the app is looked up, so a
/// retried action, even a delete, gets its stored response; otherwise the app
/// (`Continue`).
async fn authorize_post(
    st: &AppState,
    ctx: &Ctx,
    p: &AppPath,
) -> ApiResult<ControlFlow<Response, App>> {
    Ok(match authorize_post_in_tenant(st, ctx, p).await? {
        ControlFlow::Continue((_, app)) => ControlFlow::Continue(app),
        ControlFlow::Break(replay) => ControlFlow::Break(replay),
    })
}

/// [`authorize_post`], also returning the app's tenant (whose plan says what apps may use).
async fn authorize_post_in_tenant(
    st: &AppState,
    ctx: &Ctx,
    p: &AppPath,
) -> ApiResult<ControlFlow<Response, (Tenant, App)>> {
    let (ids, app_id) = p.ids()?;
    let (tenant, project) = resolve_project(st, &ctx.principal, ids).await?;
    ctx.principal.check_apps(&project, Access::Write)?;
    if let Some(replay) = ctx.replay() {
        return Ok(ControlFlow::Break(replay));
    }
    match st.store.get_app(app_id).await {
        Ok(a) if a.project_id == project.id => Ok(ControlFlow::Continue((tenant, a))),
        Ok(_) | Err(StoreError::NotFound { .. }) => Err(ApiError::not_found("app", app_id)),
        Err(e) => Err(e.into()),
    }
}

fn app_location(a: &App) -> String {
    format!(
        "/api/v1/clusters/{}/tenants/{}/projects/{}/apps/{}",
        a.cluster_id, a.tenant_id, a.project_id, a.id
    )
}

fn run_location(id: RunId) -> String {
    format!("/api/v1/apps/runs/{id}")
}

// ---------------------------------------------------------------------------------
// Pure logic: revisions and diffs
// ---------------------------------------------------------------------------------

/// Replaces the app's spec; returns the new revision when the spec really changed.
pub(crate) fn apply_spec(
    app: &mut App,
    spec: AppSpec,
    who: &str,
    now: OffsetDateTime,
) -> Option<AppRevision> {
    if spec == app.spec {
        return None;
    }
    app.revision += 1;
    app.spec = spec.clone();
    Some(AppRevision {
        number: app.revision,
        spec,
        created_by: who.to_string(),
        created_at: now,
    })
}

/// What happened at one JSON pointer between two documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum ChangeOp {
    /// Present only in the newer document.
    Added,
    /// Present only in the older document.
    Removed,
    /// Present in both with different values.
    Changed,
}

/// One difference between two specs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"path": "/image", "op": "changed", "from": "nginx:1.26", "to": "nginx:1.27"}))]
pub struct SpecChange {
    /// JSON pointer (RFC 6901) of the changed value.
    pub path: String,
    /// Kind of change.
    pub op: ChangeOp,
    /// The older value (absent for `added`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Value>,
    /// The newer value (absent for `removed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Value>,
}

fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Structured diff of two JSON documents: objects are compared key by key (sorted), arrays
/// index by index, anything else by value. The result lists the smallest differing
/// sub-values as JSON pointers.
pub fn diff_json(a: &Value, b: &Value) -> Vec<SpecChange> {
    let mut out = Vec::new();
    walk("", a, b, &mut out);
    out
}

fn walk(path: &str, a: &Value, b: &Value, out: &mut Vec<SpecChange>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let child = format!("{path}/{}", escape_pointer(k));
                pair(child, x.get(k.as_str()), y.get(k.as_str()), out);
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                pair(format!("{path}/{i}"), x.get(i), y.get(i), out);
            }
        }
        _ if a == b => {}
        _ => out.push(SpecChange {
            path: path.to_string(),
            op: ChangeOp::Changed,
            from: Some(a.clone()),
            to: Some(b.clone()),
        }),
    }
}

fn pair(path: String, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<SpecChange>) {
    match (a, b) {
        (Some(va), Some(vb)) => walk(&path, va, vb, out),
        (Some(va), None) => out.push(SpecChange {
            path,
            op: ChangeOp::Removed,
            from: Some(va.clone()),
            to: None,
        }),
        (None, Some(vb)) => out.push(SpecChange {
            path,
            op: ChangeOp::Added,
            from: None,
            to: Some(vb.clone()),
        }),
        (None, None) => {}
    }
}

// ---------------------------------------------------------------------------------
// Request and response types
// ---------------------------------------------------------------------------------

/// A page of apps.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppList {
    /// The apps, oldest first.
    pub items: Vec<App>,
    /// Cursor of the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// A page of app revisions.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppRevisionList {
    /// Revisions, oldest first.
    pub items: Vec<AppRevision>,
    /// Cursor of the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// A page of workflow runs.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowRunList {
    /// Runs, oldest first.
    pub items: Vec<WorkflowRun>,
    /// Cursor of the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// The structured difference between two revisions' specs.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"from": 1, "to": 2, "summary": "1 change from revision 1 to 2", "changes": [{"path": "/image", "op": "changed", "from": "nginx:1.26", "to": "nginx:1.27"}]}))]
pub struct RevisionDiff {
    /// The older revision.
    pub from: i64,
    /// The newer revision.
    pub to: i64,
    /// One line for humans.
    pub summary: String,
    /// Every difference, as JSON pointers into the spec.
    pub changes: Vec<SpecChange>,
}

/// Observed status of an app, as the operator last reported it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"appId": "44444444-4444-4444-4444-444444444444", "status": "pending", "phase": "pending", "conditions": [], "revision": 2, "deployedRevision": 2, "suspended": false}))]
pub struct AppStatusView {
    /// App.
    #[schema(value_type = String, format = Uuid)]
    pub app_id: AppId,
    /// The phase as a string (the 0.1.3 `status` field).
    pub status: String,
    /// Phase: `pending` until the operator reports.
    pub phase: Phase,
    /// Conditions as reported.
    pub conditions: Vec<Condition>,
    /// KubeVela application phase as reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vela_phase: Option<String>,
    /// The desired-state revision the operator last applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_revision: Option<i64>,
    /// Operator's summary.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Latest revision.
    pub revision: i64,
    /// Revision asked to run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployed_revision: Option<i64>,
    /// Suspended.
    pub suspended: bool,
}

fn status_view(a: &App) -> AppStatusView {
    let ObjectStatus {
        phase,
        conditions,
        observed_revision,
        message,
    } = a.status.clone();
    let status = serde_json::to_value(phase)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    AppStatusView {
        app_id: a.id,
        status,
        phase,
        conditions,
        vela_phase: a.vela_phase.clone(),
        observed_revision,
        message,
        revision: a.revision,
        deployed_revision: a.deployed_revision,
        suspended: a.suspended,
    }
}

/// `{"traits": [...]}` form of the traits body.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TraitsRequest {
    /// The app's complete new trait list.
    pub traits: Vec<AppTrait>,
}

/// Body of `PUT …/traits`: the 0.1.3 array of traits, or `{"traits": [...]}`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum TraitsBody {
    /// An array of traits (0.1.3).
    List(Vec<AppTrait>),
    /// An object with `traits`.
    Object(TraitsRequest),
}

/// `{"policies": [...]}` form of the policies body.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoliciesRequest {
    /// The app's complete new policy list.
    pub policies: Vec<AppPolicy>,
}

/// Body of `PUT …/policies`: an array of policies, or `{"policies": [...]}`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum PoliciesBody {
    /// An array of policies.
    List(Vec<AppPolicy>),
    /// An object with `policies`.
    Object(PoliciesRequest),
}

/// Body of `POST …/workflow/run`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"inputs": {"image": "ghcr.io/acme/web:1.0.1"}}))]
pub struct WorkflowRequest {
    /// Inputs handed to the workflow (a JSON object).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub inputs: Option<Value>,
}

/// Optional body of the rollback action.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"revision": 1}))]
pub struct RollbackRequest {
    /// The revision whose spec to restore; default: the one before the deployed (or latest) revision.
    #[serde(default)]
    pub revision: Option<i64>,
}

/// Response of the delete action.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"id": "44444444-4444-4444-4444-444444444444", "status": "deleting"}))]
pub struct DeleteAccepted {
    /// The deleted app.
    #[schema(value_type = String, format = Uuid)]
    pub id: AppId,
    /// Always `deleting`: the record is gone, the operator removes the app from the cluster.
    pub status: String,
}

// ---------------------------------------------------------------------------------
// Writes
// ---------------------------------------------------------------------------------

/// A workflow run a change requests (deploy, rollback): its id and inputs.
struct RunRequest {
    id: RunId,
    inputs: Value,
}

/// Stores an updated app (bumping version and time) with its audit event and optional
/// new revision, idempotency record and requested workflow run, all in one transaction;
/// returns the response.
async fn commit(
    st: &AppState,
    ctx: &Ctx,
    mut app: App,
    revision: Option<AppRevision>,
    run: Option<RunRequest>,
    action: &str,
    status: StatusCode,
) -> ApiResult<(App, Response)> {
    let expected = app.version;
    app.version = expected + 1;
    app.updated_at = OffsetDateTime::now_utc();
    let bytes = body_bytes(&app)?;
    let audit = ctx.audit(action, "app", app.id, status.as_u16());
    let idem = ctx.idempotency_record(status.as_u16(), &bytes);
    let opts = WriteOptions {
        audit: Some(&audit),
        idempotency: idem.as_ref(),
    };
    let location = match run {
        Some(RunRequest { id, inputs }) => {
            let run = WorkflowRun {
                id,
                app_id: app.id,
                status: RunStatus::Requested,
                inputs,
                result: None,
                started_at: app.updated_at,
                ended_at: None,
            };
            st.store
                .update_app_with_run(&app, expected, revision.as_ref(), &run, &opts)
                .await?;
            Some(run_location(id))
        }
        None => {
            st.store
                .update_app(&app, expected, revision.as_ref(), &opts)
                .await?;
            None
        }
    };
    let version = app.version;
    Ok((
        app,
        bytes_response(status, bytes, Some(version), location, true),
    ))
}

/// Parses a PUT app body: the name may be omitted (it cannot change).
fn parse_put_spec(body: Value, current: &App) -> ApiResult<AppSpec> {
    let mut body = body;
    let Some(obj) = body.as_object_mut() else {
        return Err(ApiError::invalid(
            "body",
            "must be a JSON object (an app spec)",
        ));
    };
    obj.entry("name")
        .or_insert_with(|| Value::String(current.name.clone()));
    let bytes = serde_json::to_vec(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let spec: AppSpec = parse_json(&bytes)?;
    if spec.name != current.name {
        return Err(ApiError::invalid(
            "name",
            format!("an app cannot be renamed (it is {:?})", current.name),
        ));
    }
    Ok(spec)
}

/// Parses `[item…]` or `{"<key>": [item…]}`: the rule of every list-replacing PUT
/// ([`super::extract::KnList`]).
fn parse_list_or_object<T, W: super::extract::ListBody>(
    body: &Value,
    unwrap: impl FnOnce(W) -> Vec<T>,
) -> ApiResult<Vec<T>> {
    super::extract::list_body::<W>(body.clone()).map(unwrap)
}

impl super::extract::ListBody for TraitsRequest {
    const FIELD: &'static str = "traits";
}

impl super::extract::ListBody for PoliciesRequest {
    const FIELD: &'static str = "policies";
}

// ---------------------------------------------------------------------------------
// Handlers: CRUD
// ---------------------------------------------------------------------------------

/// List the apps of a project.
///
/// `name` narrows the list to the app of that name (apps have no labels).
#[utoipa::path(
    get,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/projects/{projectID}/apps",
    tag = "apps",
    operation_id = "listApps",
    params(super::projects::ProjectPath, NamedListQuery),
    responses(
        (status = 200, description = "A page of apps", body = AppList, example = json!({"items": [{"id": "44444444-4444-4444-4444-444444444444", "clusterId": "11111111-1111-1111-1111-111111111111", "tenantId": "22222222-2222-2222-2222-222222222222", "projectId": "33333333-3333-3333-3333-333333333333", "name": "web", "spec": {"name": "web", "description": "", "image": "nginx:1.27", "components": [], "traits": [], "policies": []}, "revision": 1, "suspended": false, "status": {"phase": "pending", "conditions": []}, "version": 1, "createdAt": "2026-01-01T00:15:00Z", "updatedAt": "2026-01-01T00:15:00Z"}], "nextCursor": null})),
        (status = 400, description = "KN-400: an id is not a UUID or a bad query parameter", body = ErrorBody, example = json!({"code": "KN-400", "message": "path parameter projectID must be a UUID, got \"payments\""})),
        (status = 401, description = "KN-401: no valid bearer token", body = ErrorBody, example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 404, description = "KN-404: no such project, or outside the caller's scope", body = ErrorBody, example = json!({"code": "KN-404", "message": "project \"33333333-3333-3333-3333-333333333333\" not found"})),
        (status = 422, description = "KN-422: limit out of range, a foreign cursor or a name that is not a DNS-1123 label", body = ErrorBody, example = json!({"code": "KN-422", "message": "validation failed: name: \"Web\" is not a DNS-1123 label: use lower-case letters, digits and '-', starting and ending with a letter or digit"})),
    ),
    security(("bearerAuth" = []))
)]
pub async fn list_apps(
    State(st): State<AppState>,
    ctx: Ctx,
    p: Result<Path<super::projects::ProjectPath>, PathRejection>,
    q: Result<Query<NamedListQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let ids = path(p)?.ids()?;
    let (params, filter) = query(q)?.split()?;
    let (_, project) = resolve_project(&st, &ctx.principal, ids).await?;
    ctx.principal.check_apps(&project, Access::Read)?;
    let page = st
        .store
        .list_apps_matching(project.id, &filter, &params)
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &AppList {
            items: page.items,
            next_cursor: page.next_cursor,
        },
        None,
        None,
        false,
    ))
}

/// Create an app (revision 1). It is not deployed until `:deploy`.
#[utoipa::path(
    post,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/projects/{projectID}/apps",
    tag = "apps",
    operation_id = "createApp",
    params(super::projects::ProjectPath),
    request_body(content = AppSpec, description = "The app: `components`, or the 0.1.3 shorthand `component`/`image`/`spec`", example = json!({"name": "web", "component": "webservice", "image": "ghcr.io/acme/web:1.0.0", "spec": {"port": 8080}, "traits": [{"type": "scaler", "properties": {"replicas": 2}}]})),
    responses(
        (status = 201, description = "Created; `Location` names the app", body = App,
            headers(("Location" = String, description = "URL of the new app"), ("ETag" = String, description = "Version of the record")),
            example = json!({"id": "44444444-4444-4444-4444-444444444444", "clusterId": "11111111-1111-1111-1111-111111111111", "tenantId": "22222222-2222-2222-2222-222222222222", "projectId": "33333333-3333-3333-3333-333333333333", "name": "web", "spec": {"name": "web", "description": "", "component": "webservice", "image": "ghcr.io/acme/web:1.0.0", "spec": {"port": 8080}, "components": [], "traits": [{"type": "scaler", "properties": {"replicas": 2}}], "policies": []}, "revision": 1, "suspended": false, "status": {"phase": "pending", "conditions": []}, "version": 1, "createdAt": "2026-01-01T00:15:00Z", "updatedAt": "2026-01-01T00:15:00Z"})),
        (status = 400, description = "KN-400: an id is not a UUID, or malformed JSON", body = ErrorBody, example = json!({"code": "KN-400", "message": "malformed JSON: EOF while parsing an object at line 1 column 9"})),
        (status = 401, description = "KN-401: no valid bearer token", body = ErrorBody, example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "KN-403: the caller may read but not change apps of this project", body = ErrorBody, example = json!({"code": "KN-403", "message": "changing apps needs admin, ops, the tenant's owner or a developer of the project"})),
        (status = 404, description = "KN-404: no such project, or outside the caller's scope", body = ErrorBody, example = json!({"code": "KN-404", "message": "project \"33333333-3333-3333-3333-333333333333\" not found"})),
        (status = 409, description = "KN-409: an app with this name already exists in the project", body = ErrorBody, example = json!({"code": "KN-409", "message": "an app named \"web\" already exists in project 33333333-3333-3333-3333-333333333333"})),
        (status = 415, description = "KN-415: the body is not JSON", body = ErrorBody, example = json!({"code": "KN-415", "message": "expected Content-Type: application/json, got \"none\""})),
        (status = 422, description = "KN-422: invalid or unknown fields, or an Idempotency-Key reused with another body", body = ErrorBody, example = json!({"code": "KN-422", "message": "validation failed: components: an app needs at least one component (or component/image/spec)", "details": {"violations": [{"field": "components", "reason": "an app needs at least one component (or component/image/spec)"}]}})),
    ),
    security(("bearerAuth" = []))
)]
pub async fn create_app(
    State(st): State<AppState>,
    ctx: Ctx,
    p: Result<Path<super::projects::ProjectPath>, PathRejection>,
    body: Result<KnJson<AppSpec>, ApiError>,
) -> ApiResult<Response> {
    let ids = path(p)?.ids()?;
    let (tenant, project) = resolve_project(&st, &ctx.principal, ids).await?;
    ctx.principal.check_apps(&project, Access::Write)?;
    if let Some(replay) = ctx.replay() {
        return Ok(replay);
    }
    let KnJson(spec) = body?;
    check_spec(&st, &tenant, &spec)?;
    let now = OffsetDateTime::now_utc();
    let app = App {
        id: AppId::new(),
        cluster_id: project.cluster_id,
        tenant_id: project.tenant_id,
        project_id: project.id,
        name: spec.name.clone(),
        spec: spec.clone(),
        revision: 1,
        deployed_revision: None,
        suspended: false,
        status: ObjectStatus::default(),
        vela_phase: None,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    let first = AppRevision {
        number: 1,
        spec,
        created_by: ctx.principal.subject.clone(),
        created_at: now,
    };
    let bytes = body_bytes(&app)?;
    let audit = ctx.audit("app.create", "app", app.id, 201);
    let idem = ctx.idempotency_record(201, &bytes);
    st.store
        .create_app(
            &app,
            &first,
            &WriteOptions {
                audit: Some(&audit),
                idempotency: idem.as_ref(),
            },
        )
        .await?;
    Ok(bytes_response(
        StatusCode::CREATED,
        bytes,
        Some(app.version),
        Some(app_location(&app)),
        true,
    ))
}

/// Get an app.
#[utoipa::path(
    get,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/projects/{projectID}/apps/{appID}",
    tag = "apps",
    operation_id = "getApp",
    params(AppPath),
    responses(
        (status = 200, description = "The app; `ETag` is its version", body = App,
            headers(("ETag" = String, description = "Version of the record, for If-Match")),
            example = json!({"id": "44444444-4444-4444-4444-444444444444", "clusterId": "11111111-1111-1111-1111-111111111111", "tenantId": "22222222-2222-2222-2222-222222222222", "projectId": "33333333-3333-3333-3333-333333333333", "name": "web", "spec": {"name": "web", "description": "", "image": "nginx:1.27", "components": [], "traits": [], "policies": []}, "revision": 2, "deployedRevision": 2, "suspended": false, "status": {"phase": "ready", "conditions": []}, "velaPhase": "running", "version": 4, "createdAt": "2026-01-01T00:15:00Z", "updatedAt": "2026-01-01T00:20:00Z"})),
        (status = 400, description = "KN-400: an id is not a UUID", body = ErrorBody, example = json!({"code": "KN-400", "message": "path parameter appID must be a UUID, got \"web\""})),
        (status = 401, description = "KN-401: no valid bearer token", body = ErrorBody, example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 404, description = "KN-404: no such app in this project, or outside the caller's scope", body = ErrorBody, example = json!({"code": "KN-404", "message": "app \"44444444-4444-4444-4444-444444444444\" not found"})),
    ),
    security(("bearerAuth" = []))
)]
pub async fn get_app(
    State(st): State<AppState>,
    ctx: Ctx,
    p: Result<Path<AppPath>, PathRejection>,
) -> ApiResult<Response> {
    let app = authorize(&st, &ctx, &path(p)?, Access::Read).await?;
    Ok(json_response(
        StatusCode::OK,
        &app,
        Some(app.version),
        None,
        false,
    ))
}

/// Update an app's spec. A changed spec appends revision n+1; an unchanged one appends
/// none. `name` may be omitted and cannot change. Deploy to run the new revision.
#[utoipa::path(
    put,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/projects/{projectID}/apps/{appID}",
    tag = "apps",
    operation_id = "updateApp",
    params(AppPath, ("If-Match" = Option<String>, Header, description = "ETag from a previous read; stale → KN-412")),
    request_body(content = AppSpec, description = "The app's complete new spec (`name` optional, unchangeable)", example = json!({"description": "API service v2", "image": "ghcr.io/acme/web:1.1.0", "spec": {"port": 8080}})),
    responses(
        (status = 200, description = "The updated app", body = App,
            headers(("ETag" = String, description = "New version")),
            example = json!({"id": "44444444-4444-4444-4444-444444444444", "clusterId": "11111111-1111-1111-1111-111111111111", "tenantId": "22222222-2222-2222-2222-222222222222", "projectId": "33333333-3333-3333-3333-333333333333", "name": "web", "spec": {"name": "web", "description": "API service v2", "image": "ghcr.io/acme/web:1.1.0", "spec": {"port": 8080}, "components": [], "traits": [], "policies": []}, "revision": 2, "deployedRevision": 1, "suspended": false, "status": {"phase": "ready", "conditions": []}, "version": 3, "createdAt": "2026-01-01T00:15:00Z", "updatedAt": "2026-01-01T00:25:00Z"})),
        (status = 400, description = "KN-400: an id is not a UUID, malformed JSON or a bad If-Match", body = ErrorBody, example = json!({"code": "KN-400", "message": "path parameter appID must be a UUID, got \"web\""})),
        (status = 401, description = "KN-401: no valid bearer token", body = ErrorBody, example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "KN-403: the caller may read but not change apps of this project", body = ErrorBody, example = json!({"code": "KN-403", "message": "changing apps needs admin, ops, the tenant's owner or a developer of the project"})),
        (status = 404, description = "KN-404: no such app, or outside the caller's scope", body = ErrorBody, example = json!({"code": "KN-404", "message": "app \"44444444-4444-4444-4444-444444444444\" not found"})),
        (status = 412, description = "KN-412: the app changed since it was read", body = ErrorBody, example = json!({"code": "KN-412", "message": "app \"44444444-4444-4444-4444-444444444444\" is at version 4, not 3: it changed since you read it; re-read and retry", "details": {"expectedVersion": 3, "currentVersion": 4}})),
        (status = 415, description = "KN-415: the body is not JSON", body = ErrorBody, example = json!({"code": "KN-415", "message": "expected Content-Type: application/json, got \"none\""})),
        (status = 422, description = "KN-422: invalid or unknown fields, or a rename", body = ErrorBody, example = json!({"code": "KN-422", "message": "validation failed: name: an app cannot be renamed (it is \"web\")", "details": {"violations": [{"field": "name", "reason": "an app cannot be renamed (it is \"web\")"}]}})),
    ),
    security(("bearerAuth" = []))
)]
pub async fn update_app(
    State(st): State<AppState>,
    ctx: Ctx,
    p: Result<Path<AppPath>, PathRejection>,
    headers: HeaderMap,
    body: Result<KnJson<Value>, ApiError>,
) -> ApiResult<Response> {
    let (tenant, mut app) = authorize_in_tenant(&st, &ctx, &path(p)?, Access::Write).await?;
    let KnJson(body) = body?;
    let spec = parse_put_spec(body, &app)?;
    check_spec(&st, &tenant, &spec)?;
    check_if_match(&headers, "app", app.id, app.version)?;
    let rev = apply_spec(
        &mut app,
        spec,
        &ctx.principal.subject,
        OffsetDateTime::now_utc(),
    );
    Ok(
        commit(&st, &ctx, app, rev, None, "app.update", StatusCode::OK)
            .await?
            .1,
    )
}

async fn delete_common(
    st: &AppState,
    ctx: &Ctx,
    p: &AppPath,
    headers: &HeaderMap,
    action: &str,
    status: StatusCode,
) -> ApiResult<ControlFlow<Response, App>> {
    let app = match authorize_post(st, ctx, p).await? {
        ControlFlow::Continue(app) => app,
        replay @ ControlFlow::Break(_) => return Ok(replay),
    };
    check_if_match(headers, "app", app.id, app.version)?;
    let audit = ctx.audit(action, "app", app.id, status.as_u16());
    let body = if status == StatusCode::NO_CONTENT {
        None
    } else {
        Some(body_bytes(&DeleteAccepted {
            id: app.id,
            status: "deleting".into(),
        })?)
    };
    let idem = body
        .as_ref()
        .and_then(|b| ctx.idempotency_record(status.as_u16(), b));
    st.store
        .delete_app(
            app.id,
            &WriteOptions {
                audit: Some(&audit),
                idempotency: idem.as_ref(),
            },
        )
        .await?;
    Ok(ControlFlow::Continue(app))
}

/// Delete an app with its revisions and runs; the operator removes it from the cluster.
#[utoipa::path(
    delete,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/projects/{projectID}/apps/{appID}",
    tag = "apps",
    operation_id = "deleteApp",
    params(AppPath, ("If-Match" = Option<String>, Header, description = "ETag from a previous read; stale → KN-412")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "KN-400: an id is not a UUID", body = ErrorBody, example = json!({"code": "KN-400", "message": "path parameter appID must be a UUID, got \"web\""})),
        (status = 401, description = "KN-401: no valid bearer token", body = ErrorBody, example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "KN-403: the caller may read but not change apps of this project", body = ErrorBody, example = json!({"code": "KN-403", "message": "changing apps needs admin, ops, the tenant's owner or a developer of the project"})),
        (status = 404, description = "KN-404: no such app, or outside the caller's scope", body = ErrorBody, example = json!({"code": "KN-404", "message": "app \"44444444-4444-4444-4444-444444444444\" not found"})),
        (status = 412, description = "KN-412: the app changed since it was read", body = ErrorBody, example = json!({"code": "KN-412", "message": "app \"44444444-4444-4444-4444-444444444444\" is at version 4, not 3: it changed since you read it; re-read and retry"})),
    ),
    security(("bearerAuth" = []))
)]
pub async fn delete_app(
    State(st): State<AppState>,
    ctx: Ctx,
    p: Result<Path<AppPath>, PathRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if let ControlFlow::Break(replay) = delete_common(
        &st,
        &ctx,
        &path(p)?,
        &headers,
        "app.delete",
        StatusCode::NO_CONTENT,
    )
    .await?
    {
        return Ok(replay);
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.extensions_mut().insert(Audited);
    Ok(resp)
}

// ---------------------------------------------------------------------------------
// Handlers: actions (published as `…/apps/{appID}:<action>`)
// ---------------------------------------------------------------------------------

async fn deploy(st: &AppState, ctx: &Ctx, p: &AppPath, headers: &HeaderMap) -> ApiResult<Response> {
    let (tenant, mut app) = match authorize_post_in_tenant(st, ctx, p).await? {
        ControlFlow::Continue(found) => found,
        ControlFlow::Break(replay) => return Ok(replay),
    };
    check_if_match(headers, "app", app.id, app.version)?;
    // The plan may have changed since the revision was written.
    check_spec(st, &tenant, &app.spec)?;
    app.deployed_revision = Some(app.revision);
    let run = RunRequest {
        id: RunId::new(),
        inputs: json!({"action": "deploy", "revision": app.revision}),
    };
    let (_, resp) = commit(
        st,
        ctx,
        app,
        None,
        Some(run),
        "app.deploy",
        StatusCode::ACCEPTED,
    )
    .await?;
    Ok(resp)
}

async fn set_suspended(
    st: &AppState,
    ctx: &Ctx,
    p: &AppPath,
    headers: &HeaderMap,
    suspended: bool,
) -> ApiResult<Response> {
    let mut app = match authorize_post(st, ctx, p).await? {
        ControlFlow::Continue(app) => app,
        ControlFlow::Break(replay) => return Ok(replay),
    };
    check_if_match(headers, "app", app.id, app.version)?;
    app.suspended = suspended;
    let action = if suspended {
        "app.suspend"
    } else {
        "app.resume"
    };
    Ok(
        commit(st, ctx, app, None, None, action, StatusCode::ACCEPTED)
            .await?
            .1,
    )
}

/// The revision a rollback restores: the requested one, or the one before the deployed
/// (else latest) revision.
pub(crate) fn rollback_target(app: &App, requested: Option<i64>) -> Result<i64, ApiError> {
    match requested {
        Some(n) if n < 1 || n > app.revision => Err(ApiError::invalid(
            "revision",
            format!(
                "app {} has revisions 1 to {}; there is no revision {n}",
                app.id, app.revision
            ),
        )),
        Some(n) => Ok(n),
        None => {
            let base = app.deployed_revision.unwrap_or(app.revision);
            if base <= 1 {
                Err(ApiError::invalid(
                    "revision",
                    "there is no revision before revision 1 to roll back to",
                ))
            } else {
                Ok(base - 1)
            }
        }
    }
}

fn is_json_content(headers: &HeaderMap) -> bool {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mime = ct.split(';').next().unwrap_or("").trim().to_string();
    mime == "application/json" || mime.ends_with("+json")
}

/// Parses an optional JSON body (empty → default).
fn optional_body<T: serde::de::DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<T> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                "the request body exceeds the size limit",
            )
        } else {
            ApiError::bad_request(format!("could not read the request body: {e}"))
        }
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    if !is_json_content(headers) {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "a request body must be sent with Content-Type: application/json",
        ));
    }
    parse_json(&bytes)
}

async fn rollback(
    st: &AppState,
    ctx: &Ctx,
    p: &AppPath,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let (tenant, mut app) = match authorize_post_in_tenant(st, ctx, p).await? {
        ControlFlow::Continue(found) => found,
        ControlFlow::Break(replay) => return Ok(replay),
    };
    let req: RollbackRequest =
        optional_body::<Option<RollbackRequest>>(headers, body)?.unwrap_or_default();
    check_if_match(headers, "app", app.id, app.version)?;
    let target = rollback_target(&app, req.revision)?;
    let old = match st.store.get_app_revision(app.id, target).await {
        Ok(r) => r,
        Err(StoreError::NotFound { .. }) => {
            return Err(ApiError::invalid(
                "revision",
                format!("app {} has no revision {target}", app.id),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    // An old revision is held to the plan as it is now.
    check_spec(st, &tenant, &old.spec)?;
    let now = OffsetDateTime::now_utc();
    let rev = apply_spec(&mut app, old.spec, &ctx.principal.subject, now);
    app.deployed_revision = Some(app.revision);
    let run = RunRequest {
        id: RunId::new(),
        inputs: json!({"action": "rollback", "revision": app.revision, "restoredRevision": target}),
    };
    let (_, resp) = commit(st, ctx, app, rev, Some(run), "app.rollback", StatusCode::OK).await?;
    Ok(resp)
}

const APP_EXAMPLE_DEPLOYED: &str = r#"{"id": "44444444-4444-4444-4444-444444444444", "clusterId": "11111111-1111-1111-1111-111111111111", "tenantId": "22222222-2222-2222-2222-222222222222", "projectId": "33333333-3333-3333-3333-333333333333", "name": "web", "spec": {"name": "web", "description": "", "image": "nginx:1.27", "components": [], "traits": [], "policies": []}, "revision": 2, "deployedRevision": 2, "suspended": false, "status": {"phase": "pending", "conditions": []}, "version": 5, "createdAt": "2026-01-01T00:15:00Z", "updatedAt": "2026-01-01T00:30:00Z"}"#;

fn deployed_example() -> Value {
    serde_json::from_str(APP_EXAMPLE_DEPLOYED).unwrap_or_default()
}

/// Deploy the latest revision: sets `deployedRevision` and records a workflow run
/// (`requested`, named by `Location`) that the operator picks up.
#[utoipa::path(
    post,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/projects/{projectID}/apps/{appID}:deploy",
    tag = "apps",
    operation_id = "deployApp",
    params(AppPath, ("If-Match" = Option<String>, Header, description = "ETag from a previous read; stale → KN-412")),
    responses(
        (status = 202, description = "Deployment requested; the body is the app, `Location` the workflow run", body = App,
            headers(("Location" = String, description = "URL of the requested workflow run")),
            example = json!(deployed_example())),
        (status = 400, description = "KN-400: an id is not a UUID", body = ErrorBody, example = json!({"code": "KN-400", "message": "path parameter appID must be a UUID, got \"web\""})),
        (status = 401, description = "KN-401: no valid bearer token", body = ErrorBody, example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "KN-403: the caller may read but not change apps of this project", body = ErrorBody, example = json!({"code": "KN-403", "message": "changing apps needs admin, ops, the tenant's owner or a developer of the project"})),
        (status = 404, description = "KN-404: no such app, or outside the caller's scope", body = ErrorBody, example = json!({"code": "KN-404", "message": "app \"44444444-4444-4444-4444-444444444444\" not found"})),
        (status = 412, description = "KN-412: the app changed since it was read", body = ErrorBody, example = json!({"code": "KN-412", "message": "app \"44444444-4444-4444-4444-444444444444\" is at version 4, not 3: it changed since you read it; re-read and retry"})),
        (status = 422, description = "KN-422: an Idempotency-Key reused with another request", body = ErrorBody, example = json!({"code": "KN-422", "message": "this Idempotency-Key was used with a different request"})),
    ),
    security(("bearerAuth" = []))
)]
pub async fn deploy_app(
    State(st): State<AppState>,
    ctx: Ctx,
    p: Result<Path<AppPath>, PathRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    deploy(&st, &ctx, &path(p)?, &headers).await
}

/// Suspend an app: its spec is kept, its workflow is paused.
#[utoipa::path(
    post,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/projects/{projectID}/apps/{appID}:suspend",
    tag = "apps",
    operation_id = "suspendApp",
    params(AppPath, ("If-Match" = Option<String>, Header, description = "ETag from a previous read; stale → KN-412")),
    responses(
        (status = 202, description = "Suspension requested; the body is the app (`suspended: true`)", body = App,
            example = json!({"id": "44444444-4444-4444-4444-444444444444", "clusterId": "11111111-1111-1111-1111-111111111111", "tenantId": "22222222-2222-2222-2222-222222222222", "projectId": "33333333-3333-3333-3333-333333333333", "name": "web", "spec": {"name": "web", "description": "", "image": "nginx:1.27", "components": [], "traits": [], "policies": []}, "revision": 2, "deployedRevision": 2, "suspended": true, "status": {"phase": "ready", "conditions": []}, "version": 6, "createdAt": "2026-01-01T00:15:00Z", "updatedAt": "2026-01-01T00:40:00Z"})),
        (status = 400, description = "KN-400: an id is not a UUID", body = ErrorBody, example = json!({"code": "KN-400", "message": "path parameter appID must be a UUID, got \"web\""})),
        (status = 401, description = "KN-401: no valid bearer token", body = ErrorBody, example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "KN-403: the caller may read but not change apps of this project", body = ErrorBody, example = json!({"code": "KN-403", "message": "changing apps needs admin, ops, the tenant's owner or a developer of the project"})),
        (status = 404, description = "KN-404: no such app, or outside the caller's scope", body = ErrorBody, example = json!({"code": "KN-404", "message": "app \"44444444-4444-4444-4444-444444444444\" not found"})),
        (status = 412, description = "KN-412: the app changed since it was read", body = ErrorBody, example = json!({"code": "KN-412", "message": "app \"44444444-4444-4444-4444-444444444444\" is at version 4, not 3: it changed since you read it; re-read and retry"})),
    ),
    security(("bearerAuth" = []))
)]
pub async fn suspend_app(
    State(st): State<AppState>,
    ctx: Ctx,
    p: Result<Path<AppPath>, PathRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    set_suspended(&st, &ctx, &path(p)?, &headers, true).await
}

/// Resume a suspended app.
#[utoipa::path(
    post,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/projects/{projectID}/apps/{appID}:resume",
    tag = "apps",
    operation_id = "resumeApp",
    params(AppPath, ("If-Match" = Option<String>, Header, description = "ETag from a previous read; stale → KN-412")),
    responses(
        (status = 202, description = "Resumption requested; the body is the app (`suspended: false`)", body = App,
            example = json!(deployed_example())),
        (status = 400, description = "KN-400: an id is not a UUID", body = ErrorBody, example = json!({"code": "KN-400", "message": "path parameter appID must be a UUID, got \"web\""})),
        (status = 401, description = "KN-401: no valid bearer token", body = ErrorBody, example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "KN-403: the caller may read but not change apps of this project", body = ErrorBody, example = json!({"code": "KN-403", "message": "changing apps needs admin, ops, the tenant's owner or a developer of the project"})),
        (status = 404, description = "KN-404: no such app, or outside the caller's scope", body = ErrorBody, example = json!({"code": "KN-404", "message": "app \"44444444-4444-4444-4444-444444444444\" not found"})),
        (status = 412, description = "KN-412: the app changed since it was read", body = ErrorBody, example = json!({"code": "KN-412", "message": "app \"44444444-4444-4444-4444-444444444444\" is at version 4, not 3: it changed since you read it; re-read and retry"})),
    ),
    security(("bearerAuth" = []))
)]
pub async fn resume_app(
    State(st): State<AppState>,
    ctx: Ctx,
    p: Result<Path<AppPath>, PathRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    set_suspended(&st, &ctx, &path(p)?, &headers, false).await
}

/// Roll back: restores the spec of `revision` (default: the one before the deployed
/// revision) as a new revision and deploys it. Without a body the previous revision is used.
#[utoipa::path(
    post,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/projects/{projectID}/apps/{appID}:rollback",
    tag = "apps",
    operation_id = "rollbackApp",
    params(AppPath, ("If-Match" = Option<String>, Header, description = "ETag from a previous read; stale → KN-412")),
    request_body(content = Option<RollbackRequest>, description = "Optional: the revision to restore", example = json!({"revision": 1})),
    responses(
        (status = 200, description = "Rolled back: a new revision with the old spec, deployed; `Location` names the workflow run", body = App,
            headers(("Location" = String, description = "URL of the requested workflow run")),
            example = json!({"id": "44444444-4444-4444-4444-444444444444", "clusterId": "11111111-1111-1111-1111-111111111111", "tenantId": "22222222-2222-2222-2222-222222222222", "projectId": "33333333-3333-3333-3333-333333333333", "name": "web", "spec": {"name": "web", "description": "", "image": "nginx:1.26", "components": [], "traits": [], "policies": []}, "revision": 3, "deployedRevision": 3, "suspended": false, "status": {"phase": "ready", "conditions": []}, "version": 7, "createdAt": "2026-01-01T00:15:00Z", "updatedAt": "2026-01-01T00:50:00Z"})),
        (status = 400, description = "KN-400: an id is not a UUID, or malformed JSON", body = ErrorBody, example = json!({"code": "KN-400", "message": "path parameter appID must be a UUID, got \"web\""})),
        (status = 401, description = "KN-401: no valid bearer token", body = ErrorBody, example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "KN-403: the caller may read but not change apps of this project", body = ErrorBody, example = json!({"code": "KN-403", "message": "changing apps needs admin, ops, the tenant's owner or a developer of the project"})),
        (status = 404, description = "KN-404: no such app, or outside the caller's scope", body = ErrorBody, example = json!({"code": "KN-404", "message": "app \"44444444-4444-4444-4444-444444444444\" not found"})),
        (status = 412, description = "KN-412: the app changed since it was read", body = ErrorBody, example = json!({"code": "KN-412", "message": "app \"44444444-4444-4444-4444-444444444444\" is at version 4, not 3: it changed since you read it; re-read and retry"})),
        (status = 415, description = "KN-415: a body that is not JSON", body = ErrorBody, example = json!({"code": "KN-415", "message": "a request body must be sent with Content-Type: application/json"})),
        (status = 422, description = "KN-422: no such revision, or nothing before revision 1", body = ErrorBody, example = json!({"code": "KN-422", "message": "validation failed: revision: app 44444444-4444-4444-4444-444444444444 has revisions 1 to 2; there is no revision 7", "details": {"violations": [{"field": "revision", "reason": "app 44444444-4444-4444-4444-444444444444 has revisions 1 to 2; there is no revision 7"}]}})),
    ),
    security(("bearerAuth" = []))
)]
pub async fn rollback_app(
    State(st): State<AppState>,
    ctx: Ctx,
    p: Result<Path<AppPath>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    rollback(&st, &ctx, &path(p)?, &headers, body).await
}

/// Delete an app (the 0.1.3 action form of `DELETE`).
#[utoipa::path(
    post,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/projects/{projectID}/apps/{appID}:delete",
    tag = "apps",
    operation_id = "deleteAppAction",
    params(AppPath, ("If-Match" = Option<String>, Header, description = "ETag from a previous read; stale → KN-412")),
    responses(
        (status = 202, description = "Deleted from KubeNova; the operator removes it from the cluster", body = DeleteAccepted, example = json!({"id": "44444444-4444-4444-4444-444444444444", "status": "deleting"})),
        (status = 400, description = "KN-400: an id is not a UUID", body = ErrorBody, example = json!({"code": "KN-400", "message": "path parameter appID must be a UUID, got \"web\""})),
        (status = 401, description = "KN-401: no valid bearer token", body = ErrorBody, example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "KN-403: the caller may read but not change apps of this project", body = ErrorBody, example = json!({"code": "KN-403", "message": "changing apps needs admin, ops, the tenant's owner or a developer of the project"})),
        (status = 404, description = "KN-404: no such app, or outside the caller's scope", body = ErrorBody, example = json!({"code": "KN-404", "message": "app \"44444444-4444-4444-4444-444444444444\" not found"})),
        (status = 412, description = "KN-412: the app changed since it was read", body = ErrorBody, example = json!({"code": "KN-412", "message": "app \"44444444-4444-4444-4444-444444444444\" is at version 4, not 3: it changed since you read it; re-read and retry"})),
    ),
    security(("bearerAuth" = []))
)]
pub async fn delete_app_action(
    State(st): State<AppState>,
    ctx: Ctx,
    p: Result<Path<AppPath>, PathRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let app = match delete_common(
        &st,
        &ctx,
        &path(p)?,
        &headers,
        "app.delete",
        StatusCode::ACCEPTED,
    )
    .await?
    {
        ControlFlow::Continue(app) => app,
        ControlFlow::Break(replay) => return Ok(replay),
    };
    Ok(json_response(
        StatusCode::ACCEPTED,
        &DeleteAccepted {
            id: app.id,
            status: "deleting".into(),
        },
        None,
        None,
        true,
    ))
}

// ---------------------------------------------------------------------------------
// Handlers: status, revisions, diff, logs
// ---------------------------------------------------------------------------------

/// The app's observed status, exactly as the operator last reported it (`pending` until then).
#[utoipa::path(
    get,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/projects/{projectID}/apps/{appID}/status",
    tag = "apps",
    operation_id = "getAppStatus",
    params(AppPath),
    responses(
        (status = 200, description = "Observed status", body = AppStatusView, example = json!({"appId": "44444444-4444-4444-4444-444444444444", "status": "ready", "phase": "ready", "conditions": [{"type": "Ready", "status": "True", "reason": "Running", "message": "", "lastTransitionTime": "2026-01-01T00:31:00Z"}], "velaPhase": "running", "observedRevision": 12, "revision": 2, "deployedRevision": 2, "suspended": false})),
        (status = 400, description = "KN-400: an id is not a UUID", body = ErrorBody, example = json!({"code": "KN-400", "message": "path parameter appID must be a UUID, got \"web\""})),
        (status = 401, description = "KN-401: no valid bearer token", body = ErrorBody, example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 404, description = "KN-404: no such app, or outside the caller's scope", body = ErrorBody, example = json!({"code": "KN-404", "message": "app \"44444444-4444-4444-4444-444444444444\" not found"})),
    ),
    security(("bearerAuth" = []))
)]
pub async fn get_app_status(
    State(st): State<AppState>,
    ctx: Ctx,
    p: Result<Path<AppPath>, PathRejection>,
) -> ApiResult<Response> {
    let app = authorize(&st, &ctx, &path(p)?, Access::Read).await?;
    Ok(json_response(
        StatusCode::OK,
        &status_view(&app),
        Some(app.version),
        None,
        false,
    ))
}

/// The app's revisions, oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/projects/{projectID}/apps/{appID}/revisions",
    tag = "apps",
    operation_id = "listAppRevisions",
    params(AppPath, ListQuery),
    responses(
        (status = 200, description = "A page of revisions", body = AppRevisionList, example = json!({"items": [
            {"number": 1, "spec": {"name": "web", "description": "", "image": "nginx:1.26", "components": [], "traits": [], "policies": []}, "createdBy": "alice@example.com", "createdAt": "2026-01-01T00:15:00Z"},
            {"number": 2, "spec": {"name": "web", "description": "", "image": "nginx:1.27", "components": [], "traits": [], "policies": []}, "createdBy": "alice@example.com", "createdAt": "2026-01-01T00:25:00Z"}], "nextCursor": null})),
        (status = 400, description = "KN-400: an id is not a UUID or a bad query parameter", body = ErrorBody, example = json!({"code": "KN-400", "message": "path parameter appID must be a UUID, got \"web\""})),
        (status = 401, description = "KN-401: no valid bearer token", body = ErrorBody, example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 404, description = "KN-404: no such app, or outside the caller's scope", body = ErrorBody, example = json!({"code": "KN-404", "message": "app \"44444444-4444-4444-4444-444444444444\" not found"})),
        (status = 422, description = "KN-422: limit out of range or a foreign cursor", body = ErrorBody, example = json!({"code": "KN-422", "message": "validation failed: limit: must be at least 1"})),
    ),
    security(("bearerAuth" = []))
)]
pub async fn list_app_revisions(
    State(st): State<AppState>,
    ctx: Ctx,
    p: Result<Path<AppPath>, PathRejection>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let p = path(p)?;
    let q = query(q)?;
    let app = authorize(&st, &ctx, &p, Access::Read).await?;
    let page = st
        .store
        .list_app_revisions(app.id, &ListParams::from(q))
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &AppRevisionList {
            items: page.items,
            next_cursor: page.next_cursor,
        },
        None,
        None,
        false,
    ))
}

fn parse_revision(param: &str, v: &str) -> ApiResult<i64> {
    match v.trim_start_matches(['v', 'r']).parse::<i64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => {
            let shown: String = v.chars().take(32).collect();
            Err(ApiError::bad_request(format!(
                "path parameter {param} must be a revision number (1, 2, ...), got {shown:?}"
            )))
        }
    }
}

/// Structured diff of two revisions' specs: every added, removed and changed value as a
/// JSON pointer with its old and new value.
#[utoipa::path(
    get,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/projects/{projectID}/apps/{appID}/diff/{revA}/{revB}",
    tag = "apps",
    operation_id = "diffAppRevisions",
    params(DiffPath),
    responses(
        (status = 200, description = "The differences from revA to revB", body = RevisionDiff, example = json!({"from": 1, "to": 2, "summary": "2 changes from revision 1 to 2", "changes": [
            {"path": "/image", "op": "changed", "from": "nginx:1.26", "to": "nginx:1.27"},
            {"path": "/traits/0", "op": "added", "to": {"type": "scaler", "properties": {"replicas": 2}}}]})),
        (status = 400, description = "KN-400: an id is not a UUID or a revision not a number", body = ErrorBody, example = json!({"code": "KN-400", "message": "path parameter revA must be a revision number (1, 2, ...), got \"first\""})),
        (status = 401, description = "KN-401: no valid bearer token", body = ErrorBody, example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 404, description = "KN-404: no such app or revision, or outside the caller's scope", body = ErrorBody, example = json!({"code": "KN-404", "message": "app revision \"44444444-4444-4444-4444-444444444444@9\" not found"})),
    ),
    security(("bearerAuth" = []))
)]
pub async fn diff_app_revisions(
    State(st): State<AppState>,
    ctx: Ctx,
    p: Result<Path<DiffPath>, PathRejection>,
) -> ApiResult<Response> {
    let d = path(p)?;
    let ap = app_path(&d.cluster_id, &d.tenant_id, &d.project_id, &d.app_id);
    ap.ids()?;
    let a = parse_revision("revA", &d.rev_a)?;
    let b = parse_revision("revB", &d.rev_b)?;
    let app = authorize(&st, &ctx, &ap, Access::Read).await?;
    let ra = st.store.get_app_revision(app.id, a).await?;
    let rb = st.store.get_app_revision(app.id, b).await?;
    let va = serde_json::to_value(&ra.spec).unwrap_or(Value::Null);
    let vb = serde_json::to_value(&rb.spec).unwrap_or(Value::Null);
    let changes = diff_json(&va, &vb);
    let summary = match changes.len() {
        0 => format!("no changes between revision {a} and {b}"),
        1 => format!("1 change from revision {a} to {b}"),
        n => format!("{n} changes from revision {a} to {b}"),
    };
    Ok(json_response(
        StatusCode::OK,
        &RevisionDiff {
            from: a,
            to: b,
            summary,
            changes,
        },
        None,
        None,
        false,
    ))
}

/// `?tailLines=&sinceSeconds=&container=&previous=&follow=` of the logs route.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Lines from the end of each pod's log, 1 to 5000 (default 100 when `sinceSeconds`
    /// is not given).
    #[param(example = 100)]
    pub tail_lines: Option<u32>,
    /// Only lines of the last this many seconds, 1 to 604800 (7 days).
    #[param(example = 600)]
    pub since_seconds: Option<u64>,
    /// The container (default: the pod's `kubectl.kubernetes.io/default-container`, else
    /// its first container).
    #[param(example = "web")]
    pub container: Option<String>,
    /// The previous (terminated) instance of the container, e.g. after a crash.
    pub previous: Option<bool>,
    /// Stream new lines as server-sent events (`text/event-stream`) for up to 300 s.
    pub follow: Option<bool>,
}

impl LogsQuery {
    /// The request for the operator, or KN-422 naming each parameter out of bounds.
    fn to_log_query(&self, component: &str) -> ApiResult<LogQuery> {
        let mut v = kubenova_api::validate::Validator::new();
        if let Some(n) = self.tail_lines
            && !(1..=MAX_TAIL_LINES).contains(&n)
        {
            v.push(
                "tailLines",
                format!("must be between 1 and {MAX_TAIL_LINES} (got {n})"),
            );
        }
        if let Some(n) = self.since_seconds
            && !(1..=MAX_SINCE_SECONDS).contains(&n)
        {
            v.push(
                "sinceSeconds",
                format!("must be between 1 and {MAX_SINCE_SECONDS} (7 days; got {n})"),
            );
        }
        if let Some(c) = &self.container {
            v.dns_label("container", c);
        }
        v.finish()?;
        let follow = self.follow.unwrap_or(false);
        Ok(LogQuery {
            component: component.to_string(),
            container: self.container.clone(),
            tail_lines: self.tail_lines.or(match self.since_seconds {
                None => Some(DEFAULT_TAIL_LINES),
                Some(_) => Some(MAX_TAIL_LINES),
            }),
            since_seconds: self.since_seconds,
            previous: self.previous.unwrap_or(false),
            follow,
            follow_seconds: if follow { FOLLOW_SECONDS } else { 0 },
        })
    }
}

/// Whether the caller prefers `text/plain` to JSON (`Accept`, by q-value; JSON when it
/// names neither).
fn wants_text(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mut best: Option<(f32, bool)> = None;
    for part in accept.split(',') {
        let mut it = part.split(';');
        let media = it.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = it
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let text = match media.as_str() {
            "text/plain" | "text/*" => true,
            "application/json" | "application/*" | "*/*" => false,
            _ => continue,
        };
        if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
            best = Some((q, text));
        }
    }
    best.is_some_and(|(_, text)| text)
}

/// The logs of one answer (the chunks of a request that is not followed).
fn logs_view(app: &App, component: &str, answers: Vec<AgentAnswer>) -> AppLogs {
    let mut view = AppLogs {
        app_id: app.id,
        component: component.to_string(),
        pods: Vec::new(),
        lines: Vec::new(),
        truncated: false,
        message: String::new(),
    };
    for a in answers {
        if let Some(pods) = a.pods {
            view.pods = pods;
        }
        view.lines.extend(a.lines);
        view.truncated |= a.truncated;
        if !a.message.is_empty() {
            if !view.message.is_empty() {
                view.message.push_str("; ");
            }
            view.message.push_str(&a.message);
        }
    }
    view
}

/// `text/plain` of logs: the lines, each prefixed with `[<pod>/<container>] ` when they
/// come from more than one pod; first, `# ` lines with the answer's remark and the pods
/// whose log could not be read.
fn logs_text(v: &AppLogs) -> String {
    let mut out = String::new();
    if !v.message.is_empty() {
        out.push_str(&format!("# {}\n", v.message));
    }
    for p in &v.pods {
        if let Some(e) = &p.error {
            out.push_str(&format!("# [{}/{}] {e}\n", p.pod, p.container));
        }
    }
    if v.truncated {
        out.push_str("# some lines were left out to keep the answer bounded\n");
    }
    let several = v.pods.len() > 1;
    for l in &v.lines {
        if several {
            out.push_str(&format!("[{}/{}] ", l.pod, l.container));
        }
        out.push_str(&l.text);
        out.push('\n');
    }
    out
}

fn sse_event(name: &str, data: &impl Serialize) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::to_string(data).unwrap_or_else(|_| "null".into()))
}

/// The server-sent events of one answer chunk of a followed log.
fn follow_events(a: AgentAnswer, out: &mut std::collections::VecDeque<Event>) {
    if let Some(pods) = &a.pods {
        out.push_back(sse_event(
            "pods",
            &json!({"pods": pods, "truncated": a.truncated, "message": a.message}),
        ));
    }
    for l in &a.lines {
        out.push_back(sse_event("line", l));
    }
    if a.done {
        let (reason, message) = match (&a.error, a.end) {
            (Some(e), _) => ("error", e.message.clone()),
            (None, Some(FollowEnd::Deadline)) => ("deadline", a.message.clone()),
            (None, Some(FollowEnd::Limit)) => ("limit", a.message.clone()),
            (None, Some(FollowEnd::Error)) => ("error", a.message.clone()),
            (None, Some(FollowEnd::Ended) | None) => ("ended", a.message.clone()),
        };
        out.push_back(sse_event(
            "end",
            &json!({"reason": reason, "message": message}),
        ));
    }
}

/// Streams a followed log as server-sent events (`pods`, then `line`s, then one `end`)
/// until the operator ends it, the follow's time passes, or the client leaves (which
/// drops the stream and with it the request).
fn follow_response(relay: Relay, first: Vec<AgentAnswer>, done: bool) -> Response {
    use std::collections::VecDeque;
    struct Follow {
        relay: Relay,
        queue: VecDeque<Event>,
        finished: bool,
        deadline: tokio::time::Instant,
    }
    let mut queue = VecDeque::new();
    for a in first {
        follow_events(a, &mut queue);
    }
    // The operator ends the follow after FOLLOW_SECONDS; this is the backstop.
    let deadline = tokio::time::Instant::now()
        + std::time::Duration::from_secs(u64::from(FOLLOW_SECONDS))
        + relay.answer_timeout();
    let state = Follow {
        relay,
        queue,
        finished: done,
        deadline,
    };
    let stream = futures::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(e) = s.queue.pop_front() {
                return Some((Ok::<Event, std::convert::Infallible>(e), s));
            }
            if s.finished {
                return None;
            }
            match s.relay.next(s.deadline).await {
                Ok(Some((answers, done))) => {
                    for a in answers {
                        follow_events(a, &mut s.queue);
                    }
                    s.finished = done;
                }
                Ok(None) => {
                    s.queue.push_back(sse_event(
                        "end",
                        &json!({"reason": "deadline", "message": format!("followed for {FOLLOW_SECONDS} s, the most one follow lasts; follow again to continue")}),
                    ));
                    s.finished = true;
                }
                Err(e) => {
                    s.queue.push_back(sse_event(
                        "end",
                        &json!({"reason": "error", "message": e.error.message}),
                    ));
                    s.finished = true;
                }
            }
        }
    });
    let mut resp = Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response();
    resp.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    resp
}

/// Logs of one component of the app, read through the cluster's operator: the pods
/// KubeVela labels with the app and the component, in the app's project namespace.
#[utoipa::path(
    get,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/projects/{projectID}/apps/{appID}/logs/{component}",
    tag = "apps",
    operation_id = "getAppLogs",
    params(LogsPath, LogsQuery, ("Accept" = Option<String>, Header, description = "`application/json` (default) or `text/plain`; ignored with `follow=true`")),
    responses(
        (status = 200, description = "The lines, oldest first: JSON (`AppLogs`), `text/plain` (by `Accept`: the lines, prefixed `[pod/container] ` when from several pods, after `# ` remarks), \
            or with `follow=true` server-sent events: `pods` once, then a `line` per line as it is written, and `end` when the containers stop, 300 s pass or the byte bound is reached",
            content(
                (AppLogs = "application/json", example = json!({"appId": "44444444-4444-4444-4444-444444444444", "component": "web",
                    "pods": [{"pod": "web-6d8f7c9b5-x2x7q", "container": "web", "lines": 2}],
                    "lines": [{"time": "2026-01-01T00:00:01.5Z", "pod": "web-6d8f7c9b5-x2x7q", "container": "web", "text": "starting"},
                              {"time": "2026-01-01T00:00:02Z", "pod": "web-6d8f7c9b5-x2x7q", "container": "web", "text": "listening on :8080"}],
                    "truncated": false})),
                (String = "text/plain", example = "starting\nlistening on :8080\n"),
                (String = "text/event-stream", example = "event: pods\ndata: {\"pods\":[{\"pod\":\"web-6d8f7c9b5-x2x7q\",\"container\":\"web\",\"lines\":1}],\"truncated\":false,\"message\":\"\"}\n\nevent: line\ndata: {\"time\":\"2026-01-01T00:00:02Z\",\"pod\":\"web-6d8f7c9b5-x2x7q\",\"container\":\"web\",\"text\":\"listening on :8080\"}\n\nevent: end\ndata: {\"reason\":\"deadline\",\"message\":\"\"}\n\n"),
            )),
        (status = 400, description = "KN-400: an id is not a UUID, or a query parameter is not a number or boolean", body = ErrorBody, example = json!({"code": "KN-400", "message": "invalid query parameters: Failed to deserialize query string: tailLines: invalid digit found in string"})),
        (status = 401, description = "KN-401: no valid bearer token", body = ErrorBody, example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 404, description = "KN-404: no such app or component, or outside the caller's scope", body = ErrorBody, example = json!({"code": "KN-404", "message": "component \"worker\" not found"})),
        (status = 422, description = "KN-422: a parameter out of bounds, or a container the component's pods do not have", body = ErrorBody, example = json!({"code": "KN-422", "message": "validation failed: tailLines: must be between 1 and 5000 (got 0)", "details": {"violations": [{"field": "tailLines", "reason": "must be between 1 and 5000 (got 0)"}]}})),
        (status = 503, description = "KN-503 with Retry-After: the cluster's operator is not connected, did not answer in time, could not read the cluster, or the cluster has too many requests in flight", body = ErrorBody, example = json!({"code": "KN-503", "message": "cluster prod-1 did not answer within 10000 ms: its operator may be busy, restarting or cut off from the manager; retry", "details": {"dependency": "cluster-agent"}})),
    ),
    security(("bearerAuth" = []))
)]
pub async fn get_app_logs(
    State(st): State<AppState>,
    ctx: Ctx,
    p: Result<Path<LogsPath>, PathRejection>,
    q: Result<Query<LogsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let l = path(p)?;
    let ap = app_path(&l.cluster_id, &l.tenant_id, &l.project_id, &l.app_id);
    let (_, project, app) = resolve_app(&st, &ctx.principal, &ap).await?;
    ctx.principal.check_apps(&project, Access::Read)?;
    if !app
        .spec
        .effective_components()
        .iter()
        .any(|c| c.name == l.component)
    {
        let shown: String = l.component.chars().take(64).collect();
        return Err(ApiError::not_found("component", shown));
    }
    let logs = query(q)?.to_log_query(&l.component)?;
    let follow = logs.follow;
    let cluster = agent::connected_cluster(&st, app.cluster_id).await?;
    let mut relay = Relay::open(
        &st,
        cluster,
        &app,
        &project,
        AgentRequestKind::Logs,
        Some(logs),
    )
    .await?;
    let answers = if follow {
        let (answers, done) = relay.first().await?;
        return Ok(follow_response(relay, answers, done));
    } else {
        relay.complete().await?
    };
    let view = logs_view(&app, &l.component, answers);
    if wants_text(&headers) {
        return Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            logs_text(&view),
        )
            .into_response());
    }
    Ok(json_response(StatusCode::OK, &view, None, None, false))
}

/// The Kubernetes Events of the app, read through the cluster's operator: those of its
/// pods, its workloads (and their ReplicaSets), its KubeVela Application and its NovaApp,
/// in the app's project namespace; the newest 500, oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/projects/{projectID}/apps/{appID}/events",
    tag = "apps",
    operation_id = "getAppEvents",
    params(AppPath),
    responses(
        (status = 200, description = "The events, oldest (by last time) first", body = AppEvents, example = json!({"appId": "44444444-4444-4444-4444-444444444444",
            "events": [{"type": "Warning", "reason": "FailedCreate", "message": "pods \"web-6d8f7c9b5-\" is forbidden: exceeded quota: compute, requested: limits.memory=512Mi, used: limits.memory=2Gi, limited: limits.memory=2Gi",
                "object": {"kind": "ReplicaSet", "name": "web-6d8f7c9b5"}, "count": 4, "firstTime": "2026-01-01T00:00:00Z", "lastTime": "2026-01-01T00:02:00Z", "source": "replicaset-controller"},
                {"type": "Warning", "reason": "BackOff", "message": "Back-off restarting failed container web in pod web-6d8f7c9b5-x2x7q",
                "object": {"kind": "Pod", "name": "web-6d8f7c9b5-x2x7q"}, "count": 7, "firstTime": "2026-01-01T00:01:00Z", "lastTime": "2026-01-01T00:03:00Z", "source": "kubelet"}],
            "truncated": false})),
        (status = 400, description = "KN-400: an id is not a UUID", body = ErrorBody, example = json!({"code": "KN-400", "message": "path parameter appID must be a UUID, got \"web\""})),
        (status = 401, description = "KN-401: no valid bearer token", body = ErrorBody, example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 404, description = "KN-404: no such app, or outside the caller's scope", body = ErrorBody, example = json!({"code": "KN-404", "message": "app \"44444444-4444-4444-4444-444444444444\" not found"})),
        (status = 503, description = "KN-503 with Retry-After: the cluster's operator is not connected, did not answer in time, could not read the cluster, or the cluster has too many requests in flight", body = ErrorBody, example = json!({"code": "KN-503", "message": "cluster prod-1 is stale (last heartbeat 2026-01-01T00:00:00Z): logs and events travel through its operator, which is not connected; retry once the cluster is connected", "details": {"dependency": "cluster-agent"}})),
    ),
    security(("bearerAuth" = []))
)]
pub async fn get_app_events(
    State(st): State<AppState>,
    ctx: Ctx,
    p: Result<Path<AppPath>, PathRejection>,
) -> ApiResult<Response> {
    let ap = path(p)?;
    let (_, project, app) = resolve_app(&st, &ctx.principal, &ap).await?;
    ctx.principal.check_apps(&project, Access::Read)?;
    let cluster = agent::connected_cluster(&st, app.cluster_id).await?;
    let mut relay =
        Relay::open(&st, cluster, &app, &project, AgentRequestKind::Events, None).await?;
    let answers = relay.complete().await?;
    let mut view = AppEvents {
        app_id: app.id,
        events: Vec::new(),
        truncated: false,
        message: String::new(),
    };
    for a in answers {
        view.events.extend(a.events.unwrap_or_default());
        view.truncated |= a.truncated;
        if !a.message.is_empty() {
            view.message = a.message;
        }
    }
    Ok(json_response(StatusCode::OK, &view, None, None, false))
}

// ---------------------------------------------------------------------------------
// Handlers: traits, policies, workflow
// ---------------------------------------------------------------------------------

/// Replace the app's traits (applied to every component); a change appends a revision.
#[utoipa::path(
    put,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/projects/{projectID}/apps/{appID}/traits",
    tag = "apps",
    operation_id = "updateAppTraits",
    params(AppPath, ("If-Match" = Option<String>, Header, description = "ETag from a previous read; stale → KN-412")),
    request_body(content = TraitsBody, description = "The complete new trait list: an array (0.1.3) or `{\"traits\": [...]}`", example = json!([{"type": "scaler", "properties": {"replicas": 3}}])),
    responses(
        (status = 200, description = "The updated app", body = App, example = json!({"id": "44444444-4444-4444-4444-444444444444", "clusterId": "11111111-1111-1111-1111-111111111111", "tenantId": "22222222-2222-2222-2222-222222222222", "projectId": "33333333-3333-3333-3333-333333333333", "name": "web", "spec": {"name": "web", "description": "", "image": "nginx:1.27", "components": [], "traits": [{"type": "scaler", "properties": {"replicas": 3}}], "policies": []}, "revision": 3, "deployedRevision": 2, "suspended": false, "status": {"phase": "ready", "conditions": []}, "version": 6, "createdAt": "2026-01-01T00:15:00Z", "updatedAt": "2026-01-01T00:45:00Z"})),
        (status = 400, description = "KN-400: an id is not a UUID or malformed JSON", body = ErrorBody, example = json!({"code": "KN-400", "message": "path parameter appID must be a UUID, got \"web\""})),
        (status = 401, description = "KN-401: no valid bearer token", body = ErrorBody, example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "KN-403: the caller may read but not change apps of this project", body = ErrorBody, example = json!({"code": "KN-403", "message": "changing apps needs admin, ops, the tenant's owner or a developer of the project"})),
        (status = 404, description = "KN-404: no such app, or outside the caller's scope", body = ErrorBody, example = json!({"code": "KN-404", "message": "app \"44444444-4444-4444-4444-444444444444\" not found"})),
        (status = 412, description = "KN-412: the app changed since it was read", body = ErrorBody, example = json!({"code": "KN-412", "message": "app \"44444444-4444-4444-4444-444444444444\" is at version 4, not 3: it changed since you read it; re-read and retry"})),
        (status = 415, description = "KN-415: the body is not JSON", body = ErrorBody, example = json!({"code": "KN-415", "message": "expected Content-Type: application/json, got \"none\""})),
        (status = 422, description = "KN-422: an invalid trait", body = ErrorBody, example = json!({"code": "KN-422", "message": "validation failed: traits[0].type: must be a DNS-1123 subdomain", "details": {"violations": [{"field": "traits[0].type", "reason": "must be a DNS-1123 subdomain"}]}})),
    ),
    security(("bearerAuth" = []))
)]
pub async fn update_app_traits(
    State(st): State<AppState>,
    ctx: Ctx,
    p: Result<Path<AppPath>, PathRejection>,
    headers: HeaderMap,
    body: Result<KnJson<Value>, ApiError>,
) -> ApiResult<Response> {
    let (tenant, mut app) = authorize_in_tenant(&st, &ctx, &path(p)?, Access::Write).await?;
    let KnJson(body) = body?;
    let traits = parse_list_or_object(&body, |w: TraitsRequest| w.traits)?;
    let mut spec = app.spec.clone();
    spec.traits = traits;
    check_spec(&st, &tenant, &spec)?;
    check_if_match(&headers, "app", app.id, app.version)?;
    let rev = apply_spec(
        &mut app,
        spec,
        &ctx.principal.subject,
        OffsetDateTime::now_utc(),
    );
    Ok(
        commit(&st, &ctx, app, rev, None, "app.traits", StatusCode::OK)
            .await?
            .1,
    )
}

/// Replace the app's policies; a change appends a revision.
#[utoipa::path(
    put,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/projects/{projectID}/apps/{appID}/policies",
    tag = "apps",
    operation_id = "updateAppPolicies",
    params(AppPath, ("If-Match" = Option<String>, Header, description = "ETag from a previous read; stale → KN-412")),
    request_body(content = PoliciesBody, description = "The complete new policy list: an array or `{\"policies\": [...]}`", example = json!([{"name": "gc", "type": "garbage-collect", "properties": {"keepLegacyResource": false}}])),
    responses(
        (status = 200, description = "The updated app", body = App, example = json!({"id": "44444444-4444-4444-4444-444444444444", "clusterId": "11111111-1111-1111-1111-111111111111", "tenantId": "22222222-2222-2222-2222-222222222222", "projectId": "33333333-3333-3333-3333-333333333333", "name": "web", "spec": {"name": "web", "description": "", "image": "nginx:1.27", "components": [], "traits": [], "policies": [{"name": "gc", "type": "garbage-collect", "properties": {"keepLegacyResource": false}}]}, "revision": 3, "deployedRevision": 2, "suspended": false, "status": {"phase": "ready", "conditions": []}, "version": 6, "createdAt": "2026-01-01T00:15:00Z", "updatedAt": "2026-01-01T00:45:00Z"})),
        (status = 400, description = "KN-400: an id is not a UUID or malformed JSON", body = ErrorBody, example = json!({"code": "KN-400", "message": "path parameter appID must be a UUID, got \"web\""})),
        (status = 401, description = "KN-401: no valid bearer token", body = ErrorBody, example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "KN-403: the caller may read but not change apps of this project", body = ErrorBody, example = json!({"code": "KN-403", "message": "changing apps needs admin, ops, the tenant's owner or a developer of the project"})),
        (status = 404, description = "KN-404: no such app, or outside the caller's scope", body = ErrorBody, example = json!({"code": "KN-404", "message": "app \"44444444-4444-4444-4444-444444444444\" not found"})),
        (status = 412, description = "KN-412: the app changed since it was read", body = ErrorBody, example = json!({"code": "KN-412", "message": "app \"44444444-4444-4444-4444-444444444444\" is at version 4, not 3: it changed since you read it; re-read and retry"})),
        (status = 415, description = "KN-415: the body is not JSON", body = ErrorBody, example = json!({"code": "KN-415", "message": "expected Content-Type: application/json, got \"none\""})),
        (status = 422, description = "KN-422: an invalid policy", body = ErrorBody, example = json!({"code": "KN-422", "message": "validation failed: policies[0].properties: must be a JSON object", "details": {"violations": [{"field": "policies[0].properties", "reason": "must be a JSON object"}]}})),
    ),
    security(("bearerAuth" = []))
)]
pub async fn update_app_policies(
    State(st): State<AppState>,
    ctx: Ctx,
    p: Result<Path<AppPath>, PathRejection>,
    headers: HeaderMap,
    body: Result<KnJson<Value>, ApiError>,
) -> ApiResult<Response> {
    let (tenant, mut app) = authorize_in_tenant(&st, &ctx, &path(p)?, Access::Write).await?;
    let KnJson(body) = body?;
    let policies = parse_list_or_object(&body, |w: PoliciesRequest| w.policies)?;
    let mut spec = app.spec.clone();
    spec.policies = policies;
    check_spec(&st, &tenant, &spec)?;
    check_if_match(&headers, "app", app.id, app.version)?;
    let rev = apply_spec(
        &mut app,
        spec,
        &ctx.principal.subject,
        OffsetDateTime::now_utc(),
    );
    Ok(
        commit(&st, &ctx, app, rev, None, "app.policies", StatusCode::OK)
            .await?
            .1,
    )
}

/// Request a workflow run with inputs; recorded as `requested` for the operator.
#[utoipa::path(
    post,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/projects/{projectID}/apps/{appID}/workflow/run",
    tag = "apps",
    operation_id = "runAppWorkflow",
    params(AppPath),
    request_body(content = WorkflowRequest, description = "Inputs of the run", example = json!({"inputs": {"image": "ghcr.io/acme/web:1.0.1"}})),
    responses(
        (status = 202, description = "Run requested; `Location` names it", body = WorkflowRun,
            headers(("Location" = String, description = "URL of the run")),
            example = json!({"id": "55555555-5555-5555-5555-555555555555", "appId": "44444444-4444-4444-4444-444444444444", "status": "requested", "inputs": {"image": "ghcr.io/acme/web:1.0.1"}, "startedAt": "2026-01-01T00:30:00Z"})),
        (status = 400, description = "KN-400: an id is not a UUID or malformed JSON", body = ErrorBody, example = json!({"code": "KN-400", "message": "path parameter appID must be a UUID, got \"web\""})),
        (status = 401, description = "KN-401: no valid bearer token", body = ErrorBody, example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "KN-403: the caller may read but not change apps of this project", body = ErrorBody, example = json!({"code": "KN-403", "message": "changing apps needs admin, ops, the tenant's owner or a developer of the project"})),
        (status = 404, description = "KN-404: no such app, or outside the caller's scope", body = ErrorBody, example = json!({"code": "KN-404", "message": "app \"44444444-4444-4444-4444-444444444444\" not found"})),
        (status = 415, description = "KN-415: the body is not JSON", body = ErrorBody, example = json!({"code": "KN-415", "message": "expected Content-Type: application/json, got \"none\""})),
        (status = 422, description = "KN-422: inputs not an object, unknown fields, or an Idempotency-Key reused with another body", body = ErrorBody, example = json!({"code": "KN-422", "message": "validation failed: inputs: must be a JSON object", "details": {"violations": [{"field": "inputs", "reason": "must be a JSON object"}]}})),
    ),
    security(("bearerAuth" = []))
)]
pub async fn run_app_workflow(
    State(st): State<AppState>,
    ctx: Ctx,
    p: Result<Path<AppPath>, PathRejection>,
    body: Result<KnJson<WorkflowRequest>, ApiError>,
) -> ApiResult<Response> {
    let app = match authorize_post(&st, &ctx, &path(p)?).await? {
        ControlFlow::Continue(app) => app,
        ControlFlow::Break(replay) => return Ok(replay),
    };
    let KnJson(req) = body?;
    let inputs = req.inputs.unwrap_or_else(|| json!({}));
    if !inputs.is_object() {
        return Err(ApiError::invalid("inputs", "must be a JSON object"));
    }
    if let Some(reason) = kubenova_api::validate::json_text_problem(&inputs) {
        return Err(ApiError::invalid("inputs", reason));
    }
    let run = WorkflowRun {
        id: RunId::new(),
        app_id: app.id,
        status: RunStatus::Requested,
        inputs,
        result: None,
        started_at: OffsetDateTime::now_utc(),
        ended_at: None,
    };
    let bytes = body_bytes(&run)?;
    let audit = ctx.audit("app.workflow.run", "app", app.id, 202);
    let idem = ctx.idempotency_record(202, &bytes);
    st.store
        .create_workflow_run(
            &run,
            &WriteOptions {
                audit: Some(&audit),
                idempotency: idem.as_ref(),
            },
        )
        .await?;
    Ok(bytes_response(
        StatusCode::ACCEPTED,
        bytes,
        None,
        Some(run_location(run.id)),
        true,
    ))
}

/// The app's workflow runs, oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/clusters/{clusterID}/tenants/{tenantID}/projects/{projectID}/apps/{appID}/workflow/runs",
    tag = "apps",
    operation_id = "listAppWorkflowRuns",
    params(AppPath, ListQuery),
    responses(
        (status = 200, description = "A page of runs", body = WorkflowRunList, example = json!({"items": [{"id": "55555555-5555-5555-5555-555555555555", "appId": "44444444-4444-4444-4444-444444444444", "status": "requested", "inputs": {"action": "deploy", "revision": 2}, "startedAt": "2026-01-01T00:30:00Z"}], "nextCursor": null})),
        (status = 400, description = "KN-400: an id is not a UUID or a bad query parameter", body = ErrorBody, example = json!({"code": "KN-400", "message": "path parameter appID must be a UUID, got \"web\""})),
        (status = 401, description = "KN-401: no valid bearer token", body = ErrorBody, example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 404, description = "KN-404: no such app, or outside the caller's scope", body = ErrorBody, example = json!({"code": "KN-404", "message": "app \"44444444-4444-4444-4444-444444444444\" not found"})),
        (status = 422, description = "KN-422: limit out of range or a foreign cursor", body = ErrorBody, example = json!({"code": "KN-422", "message": "validation failed: limit: must be at least 1"})),
    ),
    security(("bearerAuth" = []))
)]
pub async fn list_app_workflow_runs(
    State(st): State<AppState>,
    ctx: Ctx,
    p: Result<Path<AppPath>, PathRejection>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let p = path(p)?;
    let q = query(q)?;
    let app = authorize(&st, &ctx, &p, Access::Read).await?;
    let page = st
        .store
        .list_workflow_runs(app.id, &ListParams::from(q))
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &WorkflowRunList {
            items: page.items,
            next_cursor: page.next_cursor,
        },
        None,
        None,
        false,
    ))
}

/// One workflow run by id (visible to whoever may read its app).
#[utoipa::path(
    get,
    path = "/api/v1/apps/runs/{runID}",
    tag = "apps",
    operation_id = "getWorkflowRun",
    params(RunPath),
    responses(
        (status = 200, description = "The run", body = WorkflowRun, example = json!({"id": "55555555-5555-5555-5555-555555555555", "appId": "44444444-4444-4444-4444-444444444444", "status": "requested", "inputs": {"action": "smoke-test"}, "startedAt": "2026-01-01T00:30:00Z"})),
        (status = 400, description = "KN-400: the id is not a UUID", body = ErrorBody, example = json!({"code": "KN-400", "message": "path parameter runID must be a UUID, got \"latest\""})),
        (status = 401, description = "KN-401: no valid bearer token", body = ErrorBody, example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 404, description = "KN-404: no such run, or its app is outside the caller's scope", body = ErrorBody, example = json!({"code": "KN-404", "message": "workflow run \"55555555-5555-5555-5555-555555555555\" not found"})),
    ),
    security(("bearerAuth" = []))
)]
pub async fn get_workflow_run(
    State(st): State<AppState>,
    ctx: Ctx,
    p: Result<Path<RunPath>, PathRejection>,
) -> ApiResult<Response> {
    let p = path(p)?;
    let id: RunId = parse_id("runID", &p.run_id)?;
    let hidden = || ApiError::not_found("workflow run", id);
    let nf = |e: StoreError| match e {
        StoreError::NotFound { .. } => hidden(),
        e => e.into(),
    };
    let run = st.store.get_workflow_run(id).await.map_err(nf)?;
    let app = st.store.get_app(run.app_id).await.map_err(nf)?;
    let project = st.store.get_project(app.project_id).await.map_err(nf)?;
    if !ctx.principal.sees_project(&project) {
        return Err(hidden());
    }
    ctx.principal.check_apps(&project, Access::Read)?;
    Ok(json_response(StatusCode::OK, &run, None, None, false))
}

// ---------------------------------------------------------------------------------
// Router
// ---------------------------------------------------------------------------------

/// Adds the OpenAPI operation of a handler without routing its (colon) path: axum cannot
/// route `{appID}:deploy`, so the handler is routed under `/actions/<action>` instead.
fn publish(
    mut router: OpenApiRouter<AppState>,
    (schemas, paths, _): UtoipaMethodRouter<AppState>,
) -> OpenApiRouter<AppState> {
    let api = router.get_openapi_mut();
    for (p, item) in paths.paths {
        if let Some(existing) = api.paths.paths.get_mut(&p) {
            existing.merge_operations(item);
        } else {
            api.paths.paths.insert(p, item);
        }
    }
    api.components
        .get_or_insert_with(Default::default)
        .schemas
        .extend(schemas);
    router
}

/// The app routes with their OpenAPI operations. The actions are served at
/// `…/apps/{appID}/actions/{deploy|suspend|resume|rollback|delete}` (the middleware
/// rewrites the 0.1.3 colon form to it) and published with their colon paths.
pub fn routes() -> OpenApiRouter<AppState> {
    let r = OpenApiRouter::new()
        .routes(routes!(list_apps, create_app))
        .routes(routes!(get_app, update_app, delete_app))
        .routes(routes!(get_app_status))
        .routes(routes!(list_app_revisions))
        .routes(routes!(diff_app_revisions))
        .routes(routes!(get_app_logs))
        .routes(routes!(get_app_events))
        .routes(routes!(update_app_traits))
        .routes(routes!(update_app_policies))
        .routes(routes!(run_app_workflow))
        .routes(routes!(list_app_workflow_runs))
        .routes(routes!(get_workflow_run));
    let r = publish(r, routes!(deploy_app))
        .route(&format!("{APP_PATH}/actions/deploy"), post(deploy_app));
    let r = publish(r, routes!(suspend_app))
        .route(&format!("{APP_PATH}/actions/suspend"), post(suspend_app));
    let r = publish(r, routes!(resume_app))
        .route(&format!("{APP_PATH}/actions/resume"), post(resume_app));
    let r = publish(r, routes!(rollback_app))
        .route(&format!("{APP_PATH}/actions/rollback"), post(rollback_app));
    publish(r, routes!(delete_app_action)).route(
        &format!("{APP_PATH}/actions/delete"),
        post(delete_app_action),
    )
}

/// The colon paths of the 0.1.3 actions, as published.
pub fn action_paths() -> Vec<String> {
    ["deploy", "suspend", "resume", "rollback", "delete"]
        .iter()
        .map(|a| format!("{APP_PATH}:{a}"))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn diff_reports_added_removed_changed_with_pointers() {
        let a = json!({"name": "web", "image": "nginx:1.26", "traits": [{"type": "scaler", "properties": {"replicas": 1}}], "a/b": 1, "gone": true});
        let b = json!({"name": "web", "image": "nginx:1.27", "traits": [{"type": "scaler", "properties": {"replicas": 2}}, {"type": "expose"}], "a/b": 2, "new": {"x": 1}});
        let d = diff_json(&a, &b);
        let got: Vec<(String, ChangeOp)> = d.iter().map(|c| (c.path.clone(), c.op)).collect();
        assert_eq!(
            got,
            vec![
                ("/a~1b".to_string(), ChangeOp::Changed),
                ("/gone".to_string(), ChangeOp::Removed),
                ("/image".to_string(), ChangeOp::Changed),
                ("/new".to_string(), ChangeOp::Added),
                (
                    "/traits/0/properties/replicas".to_string(),
                    ChangeOp::Changed
                ),
                ("/traits/1".to_string(), ChangeOp::Added),
            ]
        );
        assert_eq!(d[2].from, Some(json!("nginx:1.26")));
        assert_eq!(d[2].to, Some(json!("nginx:1.27")));
        assert_eq!(d[1].to, None);
        assert_eq!(d[3].from, None);
        assert_eq!(d[3].to, Some(json!({"x": 1})));
    }

    #[test]
    fn diff_of_equal_documents_is_empty_and_type_changes_are_changes() {
        let v = json!({"a": [1, 2, {"b": null}]});
        assert!(diff_json(&v, &v).is_empty());
        let d = diff_json(&json!({"a": [1]}), &json!({"a": {"0": 1}}));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].path, "/a");
        assert_eq!(d[0].op, ChangeOp::Changed);
        let root = diff_json(&json!(1), &json!("1"));
        assert_eq!(root[0].path, "");
        let shrink = diff_json(&json!([1, 2, 3]), &json!([1]));
        assert_eq!(
            shrink.iter().map(|c| c.path.as_str()).collect::<Vec<_>>(),
            ["/1", "/2"]
        );
        assert!(shrink.iter().all(|c| c.op == ChangeOp::Removed));
        assert_eq!(escape_pointer("a~/b"), "a~0~1b");
    }

    fn app() -> App {
        let now = OffsetDateTime::now_utc();
        App {
            id: AppId::new(),
            cluster_id: kubenova_api::ids::ClusterId::new(),
            tenant_id: kubenova_api::ids::TenantId::new(),
            project_id: kubenova_api::ids::ProjectId::new(),
            name: "web".into(),
            spec: AppSpec {
                name: "web".into(),
                image: Some("nginx:1".into()),
                ..Default::default()
            },
            revision: 1,
            deployed_revision: None,
            suspended: false,
            status: ObjectStatus::default(),
            vela_phase: None,
            version: 1,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn unchanged_spec_appends_no_revision() {
        let mut a = app();
        let same = a.spec.clone();
        assert!(apply_spec(&mut a, same, "me", OffsetDateTime::now_utc()).is_none());
        assert_eq!(a.revision, 1);
        let mut changed = a.spec.clone();
        changed.image = Some("nginx:2".into());
        let r = apply_spec(&mut a, changed.clone(), "me", OffsetDateTime::now_utc()).unwrap();
        assert_eq!((r.number, a.revision), (2, 2));
        assert_eq!(a.spec, changed);
        assert_eq!(r.created_by, "me");
    }

    #[test]
    fn rollback_targets() {
        let mut a = app();
        assert!(rollback_target(&a, None).is_err());
        a.revision = 3;
        assert_eq!(rollback_target(&a, None).unwrap(), 2);
        a.deployed_revision = Some(2);
        assert_eq!(rollback_target(&a, None).unwrap(), 1);
        assert_eq!(rollback_target(&a, Some(3)).unwrap(), 3);
        assert_eq!(
            rollback_target(&a, Some(4)).unwrap_err().error.code,
            ErrorCode::Validation
        );
        assert!(rollback_target(&a, Some(0)).is_err());
    }

    #[test]
    fn put_body_may_omit_the_name_but_not_change_it() {
        let a = app();
        let s = parse_put_spec(json!({"image": "nginx:2"}), &a).unwrap();
        assert_eq!(s.name, "web");
        assert_eq!(
            parse_put_spec(json!({"name": "api", "image": "x"}), &a)
                .unwrap_err()
                .error
                .code,
            ErrorCode::Validation
        );
        assert_eq!(
            parse_put_spec(json!([1]), &a).unwrap_err().error.code,
            ErrorCode::Validation
        );
        let e = parse_put_spec(json!({"image": "x", "bogus": 1}), &a).unwrap_err();
        assert!(e.error.message.contains("bogus"), "{}", e.error.message);
    }

    #[test]
    fn traits_accept_array_or_object() {
        let arr = json!([{"type": "scaler", "properties": {"replicas": 2}}]);
        let t = parse_list_or_object(&arr, |w: TraitsRequest| w.traits).unwrap();
        assert_eq!(t[0].type_, "scaler");
        let obj = json!({"traits": [{"type": "expose"}]});
        assert_eq!(
            parse_list_or_object(&obj, |w: TraitsRequest| w.traits).unwrap()[0].type_,
            "expose"
        );
        assert!(parse_list_or_object(&json!({"trait": []}), |w: TraitsRequest| w.traits).is_err());
        assert!(parse_list_or_object(&json!(3), |w: TraitsRequest| w.traits).is_err());
    }

    #[test]
    fn revision_numbers() {
        assert_eq!(parse_revision("revA", "2").unwrap(), 2);
        assert_eq!(parse_revision("revA", "v3").unwrap(), 3);
        assert!(parse_revision("revA", "0").is_err());
        assert!(parse_revision("revA", "first").is_err());
    }

    #[test]
    fn openapi_publishes_colon_actions() {
        let api = routes().into_openapi();
        for p in action_paths() {
            assert!(api.paths.paths.contains_key(&p), "{p} missing");
            assert!(!api.paths.paths.contains_key(&p.replace(':', "/actions/")));
        }
    }
}
