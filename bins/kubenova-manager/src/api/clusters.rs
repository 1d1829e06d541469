//! Clusters: registration (kubeconfig validated, stored envelope-encrypted, never
//! returned), reads, deletion, observed capabilities, and bootstrap/refresh requests.
//!
//! Also holds the small helpers the resource modules of this group share: path id
//! parsing (`parse_id`), query parsing with KN errors (`query`) and the kubeconfig
//! checks (`check_kubeconfig`).

use super::AppState;
use super::authz::Access;
use super::error::{ApiError, ApiResult};
use super::extract::{
    Audited, Ctx, KnJson, ListQuery, bytes_response, check_if_match, json_response,
};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use kubenova_api::ErrorBody;
use kubenova_api::ids::ClusterId;
use kubenova_api::model::{
    COMPONENTS, Capabilities, Cluster, ClusterSpec, ClusterStatus, ComponentPhase, ComponentState,
    Condition, ConditionStatus, ProxyEndpoint,
};
use kubenova_api::validate::{Validate, ValidationError, Validator};
use kubenova_store::{ListParams, WriteOptions};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

// ---------------------------------------------------------------------------------
// Shared helpers of the clusters/tenants/catalog/usage/audit modules
// ---------------------------------------------------------------------------------

/// Parses a path id; anything that is not a UUID is KN-400.
pub(crate) fn parse_id<T: std::str::FromStr>(kind: &str, raw: &str) -> ApiResult<T> {
    raw.parse::<T>()
        .map_err(|_| ApiError::bad_request(format!("{kind} id {raw:?} is not a UUID")))
}

/// Parses the query string into `T`; a bad parameter is KN-400 naming it.
pub(crate) fn query<T: DeserializeOwned>(uri: &Uri) -> ApiResult<T> {
    axum::extract::Query::<T>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::bad_request(format!("bad query parameter: {}", e.body_text())))
}

/// `?limit=&cursor=` with the limit checked (KN-422 when out of range).
pub(crate) fn list_params(uri: &Uri) -> ApiResult<ListParams> {
    let q: ListQuery = query(uri)?;
    let p: ListParams = q.into();
    p.page_size()?;
    Ok(p)
}

/// An RFC 3339 timestamp from a query parameter (KN-400 otherwise).
pub(crate) fn parse_time(field: &str, raw: &str) -> ApiResult<OffsetDateTime> {
    OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339).map_err(|_| {
        ApiError::bad_request(format!(
            "query parameter {field}={raw:?} is not an RFC 3339 timestamp such as 2026-01-01T00:00:00Z"
        ))
    })
}

/// An empty 204 response marked as audited (the audit event went in with the change).
pub(crate) fn no_content_audited() -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.extensions_mut().insert(Audited);
    resp
}

/// Serializes a response body (cannot fail for our types; falls back to KN-500).
pub(crate) fn to_bytes<T: Serialize>(body: &T) -> ApiResult<Vec<u8>> {
    serde_json::to_vec(body).map_err(|e| {
        tracing::error!(error = %e, "response serialization failed");
        ApiError::new(
            kubenova_api::ErrorCode::Internal,
            "the response could not be serialized; see the server log",
        )
    })
}

/// `?cascade=true|false`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CascadeQuery {
    /// Also delete everything inside (tenants, projects, apps). Default `false`: refuse with KN-409 while children exist.
    #[serde(default)]
    pub cascade: Option<bool>,
}

// ---------------------------------------------------------------------------------
// Wire types
// ---------------------------------------------------------------------------------

/// A page of clusters.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterList {
    /// Clusters in registration order.
    pub items: Vec<Cluster>,
    /// Cursor of the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// What the operator observed in a cluster. All flags stay `false` until an operator reports.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"certManager": false, "capsule": false, "capsuleProxy": false, "kubeVela": false,
    "reported": false, "components": [], "status": "pending_bootstrap"}))]
pub struct ClusterCapabilities {
    /// cert-manager served and available.
    pub cert_manager: bool,
    /// Capsule served and available.
    pub capsule: bool,
    /// Capsule Proxy deployed and its endpoint reported.
    pub capsule_proxy: bool,
    /// KubeVela served and available.
    pub kube_vela: bool,
    /// True once the cluster's operator has reported at least once.
    pub reported: bool,
    /// When the operator last reported.
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_heartbeat_at: Option<OffsetDateTime>,
    /// Operator version, if reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator_version: Option<String>,
    /// Install state of each component, as reported (or requested).
    pub components: Vec<ComponentState>,
    /// Cluster lifecycle status.
    pub status: ClusterStatus,
}

/// Answer to a bootstrap or refresh request.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapAccepted {
    /// Cluster.
    pub cluster_id: ClusterId,
    /// Component requested (bootstrap) — absent for refresh, which requests all of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// Always `accepted`: the request is recorded, not yet carried out.
    pub status: String,
    /// The cluster's lifecycle status, unchanged by the request.
    pub cluster_status: ClusterStatus,
    /// Components whose (re)install was requested.
    pub requested: Vec<String>,
    /// What happens next, honestly.
    pub message: String,
    /// The cluster record with the recorded request.
    pub cluster: Cluster,
}

const NOT_APPLIED_YET: &str = "the request is recorded on the cluster (component phase `requested`); this manager \
     version does not yet apply bootstrap manifests to clusters — the manager-side bootstrap and the operator's \
     install loop arrive in a later release, and the cluster's status changes only when they really run";

// ---------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_clusters, create_cluster))
        .routes(routes!(get_cluster, delete_cluster))
        .routes(routes!(get_capabilities))
        .routes(routes!(bootstrap_component))
        .routes(routes!(refresh_cluster))
}

/// Lists registered clusters.
#[utoipa::path(
    get,
    path = "/api/v1/clusters",
    tag = "clusters",
    operation_id = "listClusters",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of clusters (the kubeconfig is never returned)", body = ClusterList,
            example = json!({"items": [{"id": "11111111-1111-1111-1111-111111111111", "name": "prod-eu-1", "datacenter": "eu-west",
                "labels": {"env": "prod"}, "status": "pending_bootstrap",
                "capabilities": {"certManager": false, "capsule": false, "capsuleProxy": false, "kubeVela": false},
                "components": [], "conditions": [], "version": 1,
                "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z"}], "nextCursor": null})),
        (status = 400, description = "A malformed query parameter (e.g. a limit that is not a number)", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "bad query parameter: Failed to deserialize query string: limit: invalid digit found in string"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "The role may not read clusters", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "reading clusters needs admin, ops or unscoped readOnly"})),
        (status = 422, description = "Bad limit or cursor", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: limit: must be at most 500 (got 1000)",
                "details": {"violations": [{"field": "limit", "reason": "must be at most 500 (got 1000)"}]}})),
    ),
    security(("bearerAuth" = []))
)]
async fn list_clusters(State(st): State<AppState>, ctx: Ctx, uri: Uri) -> ApiResult<Response> {
    ctx.principal.check_clusters(Access::Read)?;
    let params = list_params(&uri)?;
    let page = st.store.list_clusters(&params).await?;
    Ok(json_response(
        StatusCode::OK,
        &ClusterList {
            items: page.items,
            next_cursor: page.next_cursor,
        },
        None,
        None,
        false,
    ))
}

/// Registers a cluster: validates its kubeconfig and stores it envelope-encrypted.
#[utoipa::path(
    post,
    path = "/api/v1/clusters",
    tag = "clusters",
    operation_id = "createCluster",
    request_body(content = ClusterSpec, description = "Name, datacenter, labels and the cluster's kubeconfig (base64 or raw YAML). \
        The kubeconfig must name a current context whose cluster has an https server and whose user has a token or client certificate; \
        `insecure-skip-tls-verify: true`, exec plugins and file references are refused.",
        example = json!({"name": "prod-eu-1", "datacenter": "eu-west", "labels": {"env": "prod"},
            "kubeconfig": "YXBpVmVyc2lvbjogdjEKa2luZDogQ29uZmlnCmNsdXN0ZXJzOgotIG5hbWU6IHByb2QKICBjbHVzdGVyOgogICAgc2VydmVyOiBodHRwczovLzEwLjAuMC4xOjY0NDMKICAgIGNlcnRpZmljYXRlLWF1dGhvcml0eS1kYXRhOiBMUzB0TFMxQ1JVZEpUZz09CmNvbnRleHRzOgotIG5hbWU6IHByb2QKICBjb250ZXh0OgogICAgY2x1c3RlcjogcHJvZAogICAgdXNlcjogYWRtaW4KY3VycmVudC1jb250ZXh0OiBwcm9kCnVzZXJzOgotIG5hbWU6IGFkbWluCiAgdXNlcjoKICAgIHRva2VuOiBleGFtcGxlCg=="})),
    responses(
        (status = 201, description = "Registered; status `pending_bootstrap`. `Location` names the cluster, `ETag` its version.", body = Cluster,
            headers(("Location" = String, description = "URL of the cluster"), ("ETag" = String, description = "Record version")),
            example = json!({"id": "11111111-1111-1111-1111-111111111111", "name": "prod-eu-1", "datacenter": "eu-west",
                "labels": {"env": "prod"}, "status": "pending_bootstrap",
                "capabilities": {"certManager": false, "capsule": false, "capsuleProxy": false, "kubeVela": false},
                "components": [], "conditions": [], "version": 1,
                "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z"})),
        (status = 400, description = "Malformed JSON", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "malformed JSON: EOF while parsing an object at line 1 column 9"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "Only admin and ops register clusters", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "this operation needs one of the roles admin, ops"})),
        (status = 409, description = "A cluster with this name exists", body = ErrorBody,
            example = json!({"code": "KN-409", "message": "a cluster named \"prod-eu-1\" already exists"})),
        (status = 415, description = "Body is not JSON", body = ErrorBody,
            example = json!({"code": "KN-415", "message": "expected Content-Type: application/json, got \"text/plain\""})),
        (status = 422, description = "Invalid name, labels or kubeconfig (e.g. insecure-skip-tls-verify)", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: kubeconfig.clusters[0].cluster.insecure-skip-tls-verify: must not be true",
                "details": {"violations": [{"field": "kubeconfig.clusters[0].cluster.insecure-skip-tls-verify",
                    "reason": "must not be true: the manager verifies the cluster's certificate; embed its CA in certificate-authority-data"}]}})),
    ),
    security(("bearerAuth" = []))
)]
async fn create_cluster(
    State(st): State<AppState>,
    ctx: Ctx,
    KnJson(spec): KnJson<ClusterSpec>,
) -> ApiResult<Response> {
    ctx.principal.check_clusters(Access::Write)?;
    spec.validate()?;
    let kubeconfig = check_kubeconfig(&spec.kubeconfig)?;
    let now = OffsetDateTime::now_utc();
    let cluster = Cluster {
        id: ClusterId::new(),
        name: spec.name,
        datacenter: spec.datacenter,
        labels: spec.labels,
        status: ClusterStatus::PendingBootstrap,
        capabilities: Capabilities::default(),
        components: Vec::new(),
        proxy: spec
            .capsule_proxy_endpoint
            .map(|url| ProxyEndpoint { url, ca_data: None }),
        conditions: Vec::new(),
        last_heartbeat_at: None,
        operator_version: None,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    let bytes = to_bytes(&cluster)?;
    let audit = ctx.audit("cluster.create", "cluster", cluster.id, 201);
    let idem = ctx.idempotency_record(201, &bytes);
    st.store
        .create_cluster(
            &cluster,
            &kubeconfig,
            &WriteOptions {
                audit: Some(&audit),
                idempotency: idem.as_ref(),
            },
        )
        .await?;
    tracing::info!(cluster_id = %cluster.id, name = %cluster.name, "cluster registered");
    Ok(bytes_response(
        StatusCode::CREATED,
        bytes,
        Some(cluster.version),
        Some(format!("/api/v1/clusters/{}", cluster.id)),
        true,
    ))
}

/// Reads one cluster.
#[utoipa::path(
    get,
    path = "/api/v1/clusters/{clusterID}",
    tag = "clusters",
    operation_id = "getCluster",
    params(("clusterID" = String, Path, description = "Cluster id (UUID)")),
    responses(
        (status = 200, description = "The cluster; `ETag` is its version", body = Cluster,
            headers(("ETag" = String, description = "Record version"))),
        (status = 400, description = "The id is not a UUID", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "cluster id \"abc\" is not a UUID"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "The role may not read clusters", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "reading clusters needs admin, ops or unscoped readOnly"})),
        (status = 404, description = "No such cluster", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "cluster \"11111111-1111-1111-1111-111111111111\" not found"})),
    ),
    security(("bearerAuth" = []))
)]
async fn get_cluster(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    ctx.principal.check_clusters(Access::Read)?;
    let id: ClusterId = parse_id("cluster", &id)?;
    let c = st.store.get_cluster(id).await?;
    Ok(json_response(
        StatusCode::OK,
        &c,
        Some(c.version),
        None,
        false,
    ))
}

/// Deletes a cluster record (and its stored kubeconfig). Refuses while it has tenants unless `cascade=true`.
#[utoipa::path(
    delete,
    path = "/api/v1/clusters/{clusterID}",
    tag = "clusters",
    operation_id = "deleteCluster",
    params(("clusterID" = String, Path, description = "Cluster id (UUID)"), CascadeQuery,
        ("If-Match" = Option<String>, Header, description = "ETag the client read; KN-412 when stale")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "The id is not a UUID", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "cluster id \"abc\" is not a UUID"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "Only admin and ops delete clusters", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "this operation needs one of the roles admin, ops"})),
        (status = 404, description = "No such cluster", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "cluster \"11111111-1111-1111-1111-111111111111\" not found"})),
        (status = 409, description = "The cluster still has tenants", body = ErrorBody,
            example = json!({"code": "KN-409", "message": "cluster 11111111-1111-1111-1111-111111111111 still has 2 tenant(s); delete them first or delete with cascade=true"})),
        (status = 412, description = "If-Match is stale", body = ErrorBody,
            example = json!({"code": "KN-412", "message": "cluster \"11111111-1111-1111-1111-111111111111\" is at version 3, not 2: it changed since you read it; re-read and retry",
                "details": {"expectedVersion": 2, "currentVersion": 3}})),
    ),
    security(("bearerAuth" = []))
)]
async fn delete_cluster(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    ctx.principal.check_clusters(Access::Write)?;
    let id: ClusterId = parse_id("cluster", &id)?;
    let q: CascadeQuery = query(&uri)?;
    let c = st.store.get_cluster(id).await?;
    check_if_match(&headers, "cluster", id, c.version)?;
    let cascade = q.cascade.unwrap_or(false);
    let mut audit = ctx.audit("cluster.delete", "cluster", id, 204);
    audit.details = Some(json!({"cascade": cascade, "name": c.name}));
    st.store
        .delete_cluster(
            id,
            cascade,
            &WriteOptions {
                audit: Some(&audit),
                idempotency: None,
            },
        )
        .await?;
    Ok(no_content_audited())
}

/// What the cluster's operator observed to be installed (all `false` until it reports).
#[utoipa::path(
    get,
    path = "/api/v1/clusters/{clusterID}/capabilities",
    tag = "clusters",
    operation_id = "getClusterCapabilities",
    params(("clusterID" = String, Path, description = "Cluster id (UUID)")),
    responses(
        (status = 200, description = "Observed capabilities and component states", body = ClusterCapabilities),
        (status = 400, description = "The id is not a UUID", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "cluster id \"abc\" is not a UUID"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "The role may not read clusters", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "reading clusters needs admin, ops or unscoped readOnly"})),
        (status = 404, description = "No such cluster", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "cluster \"11111111-1111-1111-1111-111111111111\" not found"})),
    ),
    security(("bearerAuth" = []))
)]
async fn get_capabilities(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    ctx.principal.check_clusters(Access::Read)?;
    let id: ClusterId = parse_id("cluster", &id)?;
    let c = st.store.get_cluster(id).await?;
    let body = ClusterCapabilities {
        cert_manager: c.capabilities.cert_manager,
        capsule: c.capabilities.capsule,
        capsule_proxy: c.capabilities.capsule_proxy,
        kube_vela: c.capabilities.kube_vela,
        reported: c.last_heartbeat_at.is_some(),
        last_heartbeat_at: c.last_heartbeat_at,
        operator_version: c.operator_version.clone(),
        components: c.components.clone(),
        status: c.status,
    };
    Ok(json_response(
        StatusCode::OK,
        &body,
        Some(c.version),
        None,
        false,
    ))
}

fn upsert_condition(conds: &mut Vec<Condition>, cond: Condition) {
    if let Some(existing) = conds.iter_mut().find(|c| c.type_ == cond.type_) {
        *existing = cond;
    } else {
        conds.push(cond);
    }
}

fn request_components(c: &mut Cluster, names: &[&str], who: &str) {
    for name in names {
        let state = ComponentState {
            name: (*name).to_string(),
            version: None,
            phase: ComponentPhase::Requested,
            message: format!("(re)install requested by {who}; not applied yet"),
        };
        if let Some(existing) = c.components.iter_mut().find(|s| s.name == *name) {
            existing.phase = ComponentPhase::Requested;
            existing.message = state.message;
        } else {
            c.components.push(state);
        }
    }
    // Keep install order stable.
    c.components.sort_by_key(|s| {
        COMPONENTS
            .iter()
            .position(|n| *n == s.name)
            .unwrap_or(usize::MAX)
    });
}

async fn record_request(
    st: &AppState,
    ctx: &Ctx,
    headers: &HeaderMap,
    raw_id: &str,
    component: Option<String>,
) -> ApiResult<Response> {
    ctx.principal.check_clusters(Access::Write)?;
    let id: ClusterId = parse_id("cluster", raw_id)?;
    if let Some(comp) = &component
        && !COMPONENTS.contains(&comp.as_str())
    {
        return Err(ValidationError::single(
            "component",
            format!(
                "unknown component {comp:?}: use one of {}",
                COMPONENTS.join(", ")
            ),
        )
        .into());
    }
    let mut c = st.store.get_cluster(id).await?;
    check_if_match(headers, "cluster", id, c.version)?;
    let expected = c.version;
    let now = OffsetDateTime::now_utc();
    let requested: Vec<&str> = match &component {
        Some(comp) => vec![comp.as_str()],
        None => COMPONENTS.to_vec(),
    };
    request_components(&mut c, &requested, &ctx.principal.subject);
    let (cond_type, reason) = match &component {
        Some(_) => ("BootstrapRequested", "Requested"),
        None => ("RefreshRequested", "Requested"),
    };
    upsert_condition(
        &mut c.conditions,
        Condition {
            type_: cond_type.to_string(),
            status: ConditionStatus::True,
            reason: reason.to_string(),
            message: format!(
                "requested: {}; not applied yet (manager-side bootstrap comes in a later release)",
                requested.join(", ")
            ),
            last_transition_time: now,
            observed_generation: Some(expected + 1),
        },
    );
    c.version = expected + 1;
    c.updated_at = now;
    let (action, status_code) = match &component {
        Some(_) => ("cluster.bootstrap", 202),
        None => ("cluster.refresh", 202),
    };
    let body = BootstrapAccepted {
        cluster_id: id,
        component: component.clone(),
        status: "accepted".into(),
        cluster_status: c.status,
        requested: requested.iter().map(|s| s.to_string()).collect(),
        message: NOT_APPLIED_YET.into(),
        cluster: c.clone(),
    };
    let bytes = to_bytes(&body)?;
    let mut audit = ctx.audit(action, "cluster", id, status_code);
    audit.details = Some(json!({"components": requested}));
    let idem = ctx.idempotency_record(status_code, &bytes);
    st.store
        .update_cluster(
            &c,
            expected,
            &WriteOptions {
                audit: Some(&audit),
                idempotency: idem.as_ref(),
            },
        )
        .await?;
    Ok(bytes_response(
        StatusCode::ACCEPTED,
        bytes,
        Some(c.version),
        None,
        true,
    ))
}

/// Requests the (re)install of one component. Recorded only: nothing is applied to the cluster yet.
#[utoipa::path(
    post,
    path = "/api/v1/clusters/{clusterID}/bootstrap/{component}",
    tag = "clusters",
    operation_id = "bootstrapClusterComponent",
    params(("clusterID" = String, Path, description = "Cluster id (UUID)"),
        ("component" = String, Path, description = "cert-manager, capsule, capsule-proxy, kubevela or operator"),
        ("If-Match" = Option<String>, Header, description = "ETag the client read; KN-412 when stale")),
    responses(
        (status = 202, description = "Request recorded (component phase `requested`, condition `BootstrapRequested`); the cluster status is unchanged", body = BootstrapAccepted,
            example = json!({"clusterId": "11111111-1111-1111-1111-111111111111", "component": "operator", "status": "accepted",
                "clusterStatus": "pending_bootstrap", "requested": ["operator"],
                "message": "the request is recorded on the cluster (component phase `requested`); this manager version does not yet apply bootstrap manifests to clusters",
                "cluster": {"id": "11111111-1111-1111-1111-111111111111", "name": "prod-eu-1", "datacenter": "eu-west", "labels": {},
                    "status": "pending_bootstrap", "capabilities": {"certManager": false, "capsule": false, "capsuleProxy": false, "kubeVela": false},
                    "components": [{"name": "operator", "phase": "requested", "message": "(re)install requested by admin; not applied yet"}],
                    "conditions": [{"type": "BootstrapRequested", "status": "True", "reason": "Requested", "message": "requested: operator; not applied yet", "lastTransitionTime": "2026-01-01T00:01:00Z", "observedGeneration": 2}],
                    "version": 2, "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:01:00Z"}})),
        (status = 400, description = "The id is not a UUID", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "cluster id \"abc\" is not a UUID"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "Only admin and ops bootstrap clusters", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "this operation needs one of the roles admin, ops"})),
        (status = 404, description = "No such cluster", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "cluster \"11111111-1111-1111-1111-111111111111\" not found"})),
        (status = 412, description = "If-Match is stale, or the cluster changed concurrently", body = ErrorBody,
            example = json!({"code": "KN-412", "message": "cluster \"11111111-1111-1111-1111-111111111111\" is at version 3, not 2: it changed since you read it; re-read and retry"})),
        (status = 422, description = "Unknown component", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: component: unknown component \"istio\"",
                "details": {"violations": [{"field": "component", "reason": "unknown component \"istio\": use one of cert-manager, capsule, capsule-proxy, kubevela, operator"}]}})),
    ),
    security(("bearerAuth" = []))
)]
async fn bootstrap_component(
    State(st): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path((id, component)): Path<(String, String)>,
) -> ApiResult<Response> {
    record_request(&st, &ctx, &headers, &id, Some(component)).await
}

/// Requests the reinstall of every component. Recorded only: nothing is applied to the cluster yet.
#[utoipa::path(
    post,
    path = "/api/v1/clusters/{clusterID}/refresh",
    tag = "clusters",
    operation_id = "refreshCluster",
    params(("clusterID" = String, Path, description = "Cluster id (UUID)"),
        ("If-Match" = Option<String>, Header, description = "ETag the client read; KN-412 when stale")),
    responses(
        (status = 202, description = "Request recorded (every component `requested`, condition `RefreshRequested`); the cluster status is unchanged", body = BootstrapAccepted,
            example = json!({"clusterId": "11111111-1111-1111-1111-111111111111", "status": "accepted", "clusterStatus": "pending_bootstrap",
                "requested": ["cert-manager", "capsule", "capsule-proxy", "kubevela", "operator"],
                "message": "the request is recorded on the cluster (component phase `requested`); this manager version does not yet apply bootstrap manifests to clusters",
                "cluster": {"id": "11111111-1111-1111-1111-111111111111", "name": "prod-eu-1", "datacenter": "eu-west", "labels": {},
                    "status": "pending_bootstrap", "capabilities": {"certManager": false, "capsule": false, "capsuleProxy": false, "kubeVela": false},
                    "components": [], "conditions": [], "version": 2, "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:01:00Z"}})),
        (status = 400, description = "The id is not a UUID", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "cluster id \"abc\" is not a UUID"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "Only admin and ops refresh clusters", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "this operation needs one of the roles admin, ops"})),
        (status = 404, description = "No such cluster", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "cluster \"11111111-1111-1111-1111-111111111111\" not found"})),
        (status = 412, description = "If-Match is stale, or the cluster changed concurrently", body = ErrorBody,
            example = json!({"code": "KN-412", "message": "cluster \"11111111-1111-1111-1111-111111111111\" is at version 3, not 2: it changed since you read it; re-read and retry"})),
    ),
    security(("bearerAuth" = []))
)]
async fn refresh_cluster(
    State(st): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    record_request(&st, &ctx, &headers, &id, None).await
}

// ---------------------------------------------------------------------------------
// Kubeconfig checks
// ---------------------------------------------------------------------------------

/// Decodes (base64 or raw YAML/JSON) and checks a cluster kubeconfig; returns the text
/// to store. Violations name fields only and never echo values (they may be secrets).
pub(crate) fn check_kubeconfig(input: &str) -> Result<Vec<u8>, ValidationError> {
    let f = "kubeconfig";
    let trimmed = input.trim();
    let text = if looks_like_base64(trimmed) {
        let compact: String = trimmed.chars().filter(|c| !c.is_whitespace()).collect();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(compact.as_bytes()))
            .map_err(|_| ValidationError::single(f, "looks like base64 but does not decode; send base64 of the kubeconfig or its YAML"))?;
        String::from_utf8(decoded).map_err(|_| {
            ValidationError::single(f, "decodes to something that is not UTF-8 text")
        })?
    } else {
        trimmed.to_string()
    };
    let doc: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(&text).map_err(|e| {
            ValidationError::single(
                f,
                format!(
                    "is not valid JSON (line {}, column {})",
                    e.line(),
                    e.column()
                ),
            )
        })?
    } else {
        // Errors name the position only, never content.
        serde_yaml::from_str::<Value>(&text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
                .unwrap_or_default();
            ValidationError::single(f, format!("is not valid YAML{at}"))
        })?
    };
    check_kubeconfig_doc(&doc)?;
    Ok(text.into_bytes())
}

fn looks_like_base64(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '\n' | '\r' | ' ' | '\t')
        })
        && !s.contains(": ")
}

/// A named list entry of a kubeconfig: index, name and its inner mapping.
type Entry<'a> = (usize, String, Option<&'a serde_json::Map<String, Value>>);

fn named_entries<'a>(v: &mut Validator, doc: &'a Value, list: &str, inner: &str) -> Vec<Entry<'a>> {
    let mut out = Vec::new();
    match doc.get(list) {
        Some(Value::Array(items)) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                let name = item.get("name").and_then(Value::as_str).unwrap_or_default();
                if name.is_empty() {
                    v.push(
                        format!("kubeconfig.{list}[{i}].name"),
                        "must be a non-empty string",
                    );
                }
                let body = item.get(inner).and_then(Value::as_object);
                if body.is_none() {
                    v.push(
                        format!("kubeconfig.{list}[{i}].{inner}"),
                        "must be a mapping",
                    );
                }
                out.push((i, name.to_string(), body));
            }
        }
        _ => v.push(format!("kubeconfig.{list}"), "must be a non-empty list"),
    }
    out
}

fn is_true(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

fn non_empty_str(v: Option<&Value>) -> bool {
    v.and_then(Value::as_str)
        .is_some_and(|s| !s.trim().is_empty())
}

fn check_kubeconfig_doc(doc: &Value) -> Result<(), ValidationError> {
    let mut v = Validator::new();
    if !doc.is_object() {
        return Err(ValidationError::single(
            "kubeconfig",
            "must be a kubeconfig mapping (apiVersion: v1, kind: Config)",
        ));
    }
    if let Some(kind) = doc.get("kind")
        && kind.as_str() != Some("Config")
    {
        v.push("kubeconfig.kind", "must be Config");
    }
    let clusters = named_entries(&mut v, doc, "clusters", "cluster");
    let contexts = named_entries(&mut v, doc, "contexts", "context");
    let users = named_entries(&mut v, doc, "users", "user");
    for (i, _, body) in &clusters {
        if let Some(b) = body
            && is_true(b.get("insecure-skip-tls-verify"))
        {
            v.push(
                format!("kubeconfig.clusters[{i}].cluster.insecure-skip-tls-verify"),
                "must not be true: the manager verifies the cluster's certificate; embed its CA in certificate-authority-data",
            );
        }
    }
    let current = doc
        .get("current-context")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if current.is_empty() {
        v.push(
            "kubeconfig.current-context",
            "must name one of the contexts",
        );
        return v.finish();
    }
    let Some((ci, _, ctx)) = contexts.iter().find(|(_, n, _)| n == current) else {
        v.push(
            "kubeconfig.current-context",
            "names no context of the kubeconfig",
        );
        return v.finish();
    };
    let Some(ctx) = ctx else { return v.finish() };
    let cluster_name = ctx
        .get("cluster")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let user_name = ctx.get("user").and_then(Value::as_str).unwrap_or_default();
    match clusters.iter().find(|(_, n, _)| n == cluster_name) {
        None => v.push(
            format!("kubeconfig.contexts[{ci}].context.cluster"),
            "names no cluster of the kubeconfig",
        ),
        Some((i, _, Some(c))) => {
            let server = c.get("server").and_then(Value::as_str).unwrap_or_default();
            let host = server.strip_prefix("https://").unwrap_or_default();
            if !server.starts_with("https://") || host.is_empty() || host.starts_with('/') {
                v.push(
                    format!("kubeconfig.clusters[{i}].cluster.server"),
                    "must be an https:// URL of the cluster's API server",
                );
            }
            if c.contains_key("certificate-authority")
                && !c.contains_key("certificate-authority-data")
            {
                v.push(
                    format!("kubeconfig.clusters[{i}].cluster.certificate-authority"),
                    "is a file path the manager cannot read; embed the CA as certificate-authority-data",
                );
            }
            if let Some(ca) = c.get("certificate-authority-data") {
                let ok = ca.as_str().is_some_and(|s| {
                    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
                    !compact.is_empty()
                        && base64::engine::general_purpose::STANDARD
                            .decode(compact)
                            .is_ok()
                });
                if !ok {
                    v.push(
                        format!("kubeconfig.clusters[{i}].cluster.certificate-authority-data"),
                        "must be base64 PEM",
                    );
                }
            }
        }
        Some(_) => {}
    }
    match users.iter().find(|(_, n, _)| n == user_name) {
        None => v.push(
            format!("kubeconfig.contexts[{ci}].context.user"),
            "names no user of the kubeconfig",
        ),
        Some((i, _, Some(u))) => {
            let field = format!("kubeconfig.users[{i}].user");
            if u.contains_key("exec") {
                v.push(format!("{field}.exec"), "exec plugins would run a command on the manager host; use a token or a client certificate");
            } else if u.contains_key("auth-provider") {
                v.push(
                    format!("{field}.auth-provider"),
                    "auth providers are not supported; use a token or a client certificate",
                );
            } else if u.contains_key("tokenFile")
                || u.contains_key("client-certificate")
                || u.contains_key("client-key")
            {
                v.push(field, "file references (tokenFile, client-certificate, client-key) cannot be read by the manager; embed token or client-certificate-data and client-key-data");
            } else {
                let token = non_empty_str(u.get("token"));
                let cert = non_empty_str(u.get("client-certificate-data"))
                    && non_empty_str(u.get("client-key-data"));
                let basic = non_empty_str(u.get("username")) && non_empty_str(u.get("password"));
                if !(token || cert || basic) {
                    v.push(field, "has no credential: set token, or client-certificate-data and client-key-data");
                }
            }
        }
        Some(_) => {}
    }
    v.finish()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const KIND: &str = "apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: TFMwdExTMUNSVWRKVGc9PQ==
    server: https://127.0.0.1:6443
  name: kind-kind
contexts:
- context:
    cluster: kind-kind
    user: kind-kind
  name: kind-kind
current-context: kind-kind   # a comment
kind: Config
preferences: {}
users:
- name: kind-kind
  user:
    client-certificate-data: Y2VydA==
    client-key-data: a2V5
";

    #[test]
    fn kubeconfig_yaml_errors_name_position_not_content() {
        let err = check_kubeconfig("clusters: [unclosed\n  secret-token: abc").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("is not valid YAML"), "{msg}");
        assert!(!msg.contains("secret-token"), "{msg}");
    }

    #[test]
    fn kubeconfig_accepts_raw_and_base64() {
        assert!(check_kubeconfig(KIND).is_ok());
        let b64 = base64::engine::general_purpose::STANDARD.encode(KIND);
        assert_eq!(check_kubeconfig(&b64).unwrap(), KIND.as_bytes());
        let json = serde_json::to_string(&serde_yaml::from_str::<Value>(KIND).unwrap()).unwrap();
        assert!(check_kubeconfig(&json).is_ok());
    }

    fn fields(e: ValidationError) -> Vec<String> {
        e.violations.into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn kubeconfig_rejections() {
        let insecure = KIND.replace(
            "    server:",
            "    insecure-skip-tls-verify: true\n    server:",
        );
        assert_eq!(
            fields(check_kubeconfig(&insecure).unwrap_err()),
            ["kubeconfig.clusters[0].cluster.insecure-skip-tls-verify"]
        );
        let http = KIND.replace("https://", "http://");
        assert_eq!(
            fields(check_kubeconfig(&http).unwrap_err()),
            ["kubeconfig.clusters[0].cluster.server"]
        );
        let wrong_ctx = KIND.replace("current-context: kind-kind", "current-context: other");
        assert_eq!(
            fields(check_kubeconfig(&wrong_ctx).unwrap_err()),
            ["kubeconfig.current-context"]
        );
        let no_cred = KIND.replace(
            "    client-certificate-data: Y2VydA==\n    client-key-data: a2V5\n",
            "    username: x\n",
        );
        assert_eq!(
            fields(check_kubeconfig(&no_cred).unwrap_err()),
            ["kubeconfig.users[0].user"]
        );
        let exec = KIND.replace(
            "    client-certificate-data: Y2VydA==\n",
            "    exec:\n      command: rm\n",
        );
        assert_eq!(
            fields(check_kubeconfig(&exec).unwrap_err()),
            ["kubeconfig.users[0].user.exec"]
        );
        assert!(check_kubeconfig("bm90IGEga3ViZWNvbmZpZw==").is_err());
        assert!(check_kubeconfig("just: text").is_err());
        // Errors never echo the credential.
        let e = check_kubeconfig(&exec).unwrap_err().to_string();
        assert!(!e.contains("Y2VydA"), "{e}");
    }
}
