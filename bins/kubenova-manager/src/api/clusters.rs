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
    Audited, Ctx, JsonOrYaml, LabeledListQuery, ListQuery, bytes_response, check_if_match,
    if_match, json_response, parse_json,
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

/// Whether kubeconfigs can be issued for a cluster now, and if not, exactly why.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"ready": false, "code": "KN-409",
    "reason": "the cluster's reported Capsule Proxy endpoint has no usable CA: no CA certificate for proxy_ca: refusing to build a kubeconfig without one; the operator reports: Secret capsule-system/capsule-proxy, mounted by Deployment capsule-system/capsule-proxy for its serving certificate, does not exist (yet): …",
    "proxyUrl": "https://capsule-proxy.capsule-system.svc:9001"}))]
pub struct KubeconfigReadiness {
    /// True when a kubeconfig issuance for a tenant or project of this cluster passes every
    /// check that does not depend on the caller: the same checks, so this and
    /// `GET /tenants/{id}/kubeconfig` never disagree.
    pub ready: bool,
    /// Why not: the KN error message an issuance answers now (absent when ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The KN code an issuance answers now (absent when ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<kubenova_api::ErrorCode>,
    /// The Capsule Proxy URL issued kubeconfigs point at (when one is known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<String>,
    /// The operator's last word on how it found the endpoint and its CA, or why not (the
    /// `CapsuleProxyDiscovered` condition), e.g. that an in-cluster address works only
    /// from inside the cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery: Option<String>,
}

/// What the operator observed in a cluster. All flags stay `false` until an operator reports.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"certManager": false, "capsule": false, "capsuleProxy": false, "kubeVela": false,
    "kubeconfigs": {"ready": false, "code": "KN-409",
        "reason": "the Capsule Proxy endpoint of the cluster is not reported yet: kubeconfigs go through Capsule Proxy; retry once the operator reports it"},
    "reported": false, "components": [], "status": "pending_bootstrap"}))]
pub struct ClusterCapabilities {
    /// cert-manager served and available.
    pub cert_manager: bool,
    /// Capsule served and available.
    pub capsule: bool,
    /// Capsule Proxy deployed and its endpoint reported (not necessarily with its CA: see
    /// `kubeconfigs`).
    pub capsule_proxy: bool,
    /// KubeVela served and available.
    pub kube_vela: bool,
    /// Whether kubeconfigs can be issued now, and if not, why.
    pub kubeconfigs: KubeconfigReadiness,
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
    /// `applied` (operator bootstrap applied) or `accepted` (a component request recorded
    /// for the operator). A failed operator bootstrap is a KN error (see the operation).
    pub status: String,
    /// The cluster's lifecycle status after the call.
    pub cluster_status: ClusterStatus,
    /// `operator` only: the URL written into the agent Secret, at which the operator calls
    /// this manager (`--agent-manager-url`, else `--external-url`, else the loopback
    /// `--listen` address; `message` says which).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_manager_url: Option<String>,
    /// Components whose (re)install was requested.
    pub requested: Vec<String>,
    /// What happens next, honestly.
    pub message: String,
    /// The cluster record with the recorded request.
    pub cluster: Cluster,
}

/// Query parameters of a raw kubeconfig upload (`POST /clusters` with
/// `Content-Type: application/yaml`): what the JSON body would carry besides the kubeconfig.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ClusterUploadQuery {
    /// Raw kubeconfig uploads only (required there): the cluster name (DNS-1123 label).
    pub name: Option<String>,
    /// Raw kubeconfig uploads only: datacenter/region name.
    pub datacenter: Option<String>,
    /// Raw kubeconfig uploads only: labels as `key=value[,key=value…]`, e.g. `env=prod,team=core`.
    pub labels: Option<String>,
    /// Raw kubeconfig uploads only: the Capsule Proxy base URL, if known before the operator reports it.
    pub capsule_proxy_endpoint: Option<String>,
}

/// `PUT /clusters/{id}/kubeconfig` with JSON: the new kubeconfig.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"kubeconfig": KUBECONFIG_B64_EXAMPLE}))]
pub struct KubeconfigReplacement {
    /// The cluster's new kubeconfig, base64 or raw YAML, checked like at registration.
    pub kubeconfig: String,
}

/// No query parameters at all.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoQuery {}

const DELIVERED_BY_AGENT: &str = "the request is recorded on the cluster (component phase `requested`); the cluster's operator \
     receives it with its next desired-state poll (a waiting poll returns at once), marks it `installing`, and reports the \
     outcome in its heartbeats (see GET /clusters/{id}/capabilities)";

// ---------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_clusters, create_cluster))
        .routes(routes!(get_cluster, delete_cluster))
        .routes(routes!(replace_kubeconfig))
        .routes(routes!(get_capabilities))
        .routes(routes!(bootstrap_component))
        .routes(routes!(refresh_cluster))
}

/// Lists registered clusters.
///
/// `name` and `labelSelector` narrow the list (e.g. `?labelSelector=env%3Dprod`).
#[utoipa::path(
    get,
    path = "/api/v1/clusters",
    tag = "clusters",
    operation_id = "listClusters",
    params(LabeledListQuery),
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
        (status = 422, description = "Bad limit, cursor, name or labelSelector", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: labelSelector: requirement 1: missing ')' to close the values of 'in'",
                "details": {"violations": [{"field": "labelSelector", "reason": "requirement 1: missing ')' to close the values of 'in'"}]}})),
    ),
    security(("bearerAuth" = []))
)]
async fn list_clusters(State(st): State<AppState>, ctx: Ctx, uri: Uri) -> ApiResult<Response> {
    ctx.principal.check_clusters(Access::Read)?;
    let (params, filter) = query::<LabeledListQuery>(&uri)?.split()?;
    let page = st.store.list_clusters_matching(&filter, &params).await?;
    let interval = st.config.agent_heartbeat_interval;
    Ok(json_response(
        StatusCode::OK,
        &ClusterList {
            items: page
                .items
                .into_iter()
                .map(|c| super::agent::present(c, interval))
                .collect(),
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
    params(ClusterUploadQuery),
    request_body(description = "Either JSON (`application/json`): name, datacenter, labels and the cluster's kubeconfig (base64 or raw YAML) in the body, no query parameters; \
        or the raw kubeconfig itself (`application/yaml` or `application/x-yaml`, e.g. `kubectl config view --raw --minify | curl --data-binary @- …`) \
        with `name` (required), `datacenter`, `labels` (`key=value,…`) and `capsuleProxyEndpoint` as query parameters. \
        The kubeconfig must name a current context whose cluster has an https server and whose user has a token or client certificate; \
        `insecure-skip-tls-verify: true`, exec plugins and file references are refused.",
        content(
            (ClusterSpec = "application/json", example = json!({"name": "prod-eu-1", "datacenter": "eu-west", "labels": {"env": "prod"},
                "kubeconfig": KUBECONFIG_B64_EXAMPLE})),
            (String = "application/yaml", example = json!(KUBECONFIG_EXAMPLE)),
            (String = "application/x-yaml", example = json!(KUBECONFIG_EXAMPLE)),
        )),
    responses(
        (status = 201, description = "Registered; status `pending_bootstrap`. `Location` names the cluster, `ETag` its version.", body = Cluster,
            headers(("Location" = String, description = "URL of the cluster"), ("ETag" = String, description = "Record version")),
            example = json!({"id": "11111111-1111-1111-1111-111111111111", "name": "prod-eu-1", "datacenter": "eu-west",
                "labels": {"env": "prod"}, "status": "pending_bootstrap",
                "capabilities": {"certManager": false, "capsule": false, "capsuleProxy": false, "kubeVela": false},
                "components": [], "conditions": [], "version": 1,
                "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z"})),
        (status = 400, description = "Malformed JSON, an unknown query parameter, or query parameters with a JSON body", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "malformed JSON: EOF while parsing an object at line 1 column 9"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "Only admin and ops register clusters", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "this operation needs one of the roles admin, ops"})),
        (status = 409, description = "A cluster with this name exists", body = ErrorBody,
            example = json!({"code": "KN-409", "message": "a cluster named \"prod-eu-1\" already exists"})),
        (status = 413, description = "The body exceeds the body limit", body = ErrorBody,
            example = json!({"code": "KN-413", "message": "the request body exceeds the size limit"})),
        (status = 415, description = "Body is neither JSON nor a raw kubeconfig (application/yaml, application/x-yaml)", body = ErrorBody,
            example = json!({"code": "KN-415", "message": "expected Content-Type: application/json, or application/yaml (application/x-yaml) with the raw kubeconfig, got \"text/plain\""})),
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
    uri: Uri,
    body: Result<JsonOrYaml, ApiError>,
) -> ApiResult<Response> {
    ctx.principal.check_clusters(Access::Write)?;
    if let Some(replay) = ctx.replay() {
        return Ok(replay);
    }
    let q: ClusterUploadQuery = query(&uri)?;
    let spec = match body? {
        JsonOrYaml::Json(bytes) => {
            let given: Vec<&str> = [
                ("name", q.name.is_some()),
                ("datacenter", q.datacenter.is_some()),
                ("labels", q.labels.is_some()),
                ("capsuleProxyEndpoint", q.capsule_proxy_endpoint.is_some()),
            ]
            .into_iter()
            .filter_map(|(n, set)| set.then_some(n))
            .collect();
            if !given.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "query parameters ({}) are read only with a raw kubeconfig upload (Content-Type: application/yaml); \
                     with a JSON body, send them in the body",
                    given.join(", ")
                )));
            }
            parse_json::<ClusterSpec>(&bytes)?
        }
        JsonOrYaml::Yaml(bytes) => upload_spec(q, &bytes)?,
    };
    spec.validate()?;
    let kubeconfig = zeroize::Zeroizing::new(check_kubeconfig(&spec.kubeconfig)?);
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
    let c = super::agent::present(
        st.store.get_cluster(id).await?,
        st.config.agent_heartbeat_interval,
    );
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
        (status = 200, description = "Observed capabilities and component states, and whether kubeconfigs can be issued now (`kubeconfigs`: \
            the same checks as an issuance, with the KN error it would answer and the operator's account of the Capsule Proxy discovery)", body = ClusterCapabilities),
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
    let c = super::agent::present(
        st.store.get_cluster(id).await?,
        st.config.agent_heartbeat_interval,
    );
    let discovery = c
        .conditions
        .iter()
        .find(|x| x.type_ == super::kubeconfigs::PROXY_CONDITION)
        .map(|x| x.message.clone());
    let kubeconfigs = match super::kubeconfigs::issuance_readiness(&st, &c) {
        Ok(url) => KubeconfigReadiness {
            ready: true,
            reason: None,
            code: None,
            proxy_url: Some(url),
            discovery,
        },
        Err(e) => KubeconfigReadiness {
            ready: false,
            reason: Some(e.error.message),
            code: Some(e.error.code),
            proxy_url: c
                .proxy
                .as_ref()
                .map(|p| p.url.clone())
                .filter(|u| !u.trim().is_empty()),
            discovery,
        },
    };
    let body = ClusterCapabilities {
        cert_manager: c.capabilities.cert_manager,
        capsule: c.capabilities.capsule,
        capsule_proxy: c.capabilities.capsule_proxy,
        kube_vela: c.capabilities.kube_vela,
        kubeconfigs,
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

pub(crate) fn upsert_condition(conds: &mut Vec<Condition>, cond: Condition) {
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
            message: format!("(re)install requested by {who}; waiting for the operator"),
            // A new id per request: the operator acknowledges it by id.
            request_id: Some(uuid::Uuid::new_v4()),
        };
        if let Some(existing) = c.components.iter_mut().find(|s| s.name == *name) {
            existing.phase = ComponentPhase::Requested;
            existing.message = state.message;
            existing.request_id = state.request_id;
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
    if let Some(replay) = ctx.replay() {
        return Ok(replay);
    }
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
    let client_pinned = headers.contains_key(axum::http::header::IF_MATCH);
    // Without If-Match the client asked for "the current cluster": a heartbeat that races
    // us is not the client's conflict, so the helper re-reads and applies the request again.
    let (c, bytes) =
        super::agent::write_cluster_for_request(st.store.as_ref(), id, client_pinned, |c, read| {
            check_if_match(headers, "cluster", id, read)?;
            let now = c.updated_at;
            // The operator itself is (re)installed by `bootstrap/operator` (with the
            // kubeconfig); a refresh asks the operator for the other components.
            let requested: Vec<&str> = match &component {
                Some(comp) => vec![comp.as_str()],
                None => COMPONENTS
                    .iter()
                    .copied()
                    .filter(|c| *c != "operator")
                    .collect(),
            };
            request_components(c, &requested, &ctx.principal.subject);
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
                        "requested: {}; delivered to the operator over the agent channel",
                        requested.join(", ")
                    ),
                    last_transition_time: now,
                    observed_generation: Some(c.version),
                },
            );
            let action = match &component {
                Some(_) => "cluster.bootstrap",
                None => "cluster.refresh",
            };
            let status_code = 202;
            let body = BootstrapAccepted {
                cluster_id: id,
                component: component.clone(),
                status: "accepted".into(),
                cluster_status: c.status,
                agent_manager_url: None,
                requested: requested.iter().map(|s| s.to_string()).collect(),
                message: DELIVERED_BY_AGENT.into(),
                cluster: c.clone(),
            };
            let bytes = to_bytes(&body)?;
            let mut audit = ctx.audit(action, "cluster", id, status_code);
            audit.details = Some(json!({"components": requested}));
            let idempotency = ctx.idempotency_record(status_code, &bytes);
            Ok(super::agent::ClusterWrite {
                result: bytes,
                audit,
                idempotency,
            })
        })
        .await?;
    // Wake the cluster's waiting long-poll on this replica (others: NOTIFY on Postgres).
    st.changes.notify(id);
    Ok(bytes_response(
        StatusCode::ACCEPTED,
        bytes,
        Some(c.version),
        None,
        true,
    ))
}

/// Bootstraps the operator (`operator`: applied to the cluster now with the stored
/// kubeconfig) or requests the (re)install of a component (delivered to the operator).
#[utoipa::path(
    post,
    path = "/api/v1/clusters/{clusterID}/bootstrap/{component}",
    tag = "clusters",
    operation_id = "bootstrapClusterComponent",
    params(("clusterID" = String, Path, description = "Cluster id (UUID)"),
        ("component" = String, Path, description = "operator (applied now), or cert-manager, capsule, capsule-proxy, kubevela (delivered to the operator)"),
        ("If-Match" = Option<String>, Header, description = "ETag the client read; KN-412 when stale")),
    responses(
        (status = 202, description = "`operator`: namespace kubenova-system, the Nova CRDs, the operator RBAC, the agent Secret (a freshly minted credential; \
            the previous one keeps working until the operator first uses the new one, then stops; `agentManagerUrl` is the URL it tells the operator) and the Deployment \
            were applied with server-side apply; status `bootstrapping` until the operator's first heartbeat \
            makes it `connected`. Other components: the request is recorded (phase `requested`) and delivered to the operator.", body = BootstrapAccepted,
            example = json!({"clusterId": "11111111-1111-1111-1111-111111111111", "component": "operator", "status": "applied",
                "clusterStatus": "bootstrapping", "agentManagerUrl": "https://kubenova.example.com", "requested": ["operator"],
                "message": "applied Namespace/kubenova-system, 3 CRDs, the operator RBAC, Secret/kubenova-system/kubenova-agent and Deployment/kubenova-system/kubenova-operator; waiting for the operator's first heartbeat at https://kubenova.example.com (--agent-manager-url)",
                "cluster": {"id": "11111111-1111-1111-1111-111111111111", "name": "prod-eu-1", "datacenter": "eu-west", "labels": {},
                    "status": "bootstrapping", "capabilities": {"certManager": false, "capsule": false, "capsuleProxy": false, "kubeVela": false},
                    "components": [{"name": "operator", "version": "ghcr.io/kubenova/kubenova-operator:0.1.0", "phase": "installing", "message": "Deployment applied; waiting for the operator's first heartbeat"}],
                    "conditions": [{"type": "Bootstrapped", "status": "True", "reason": "Applied", "message": "operator manifests applied", "lastTransitionTime": "2026-01-01T00:01:00Z", "observedGeneration": 2}],
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
        (status = 409, description = "`operator`: either nothing was applied because a precondition of this manager does not hold (`details.precondition`): \
            it has no URL its operators can use (it listens on a non-loopback address or port 0 without --agent-manager-url or --external-url, \
            or that URL is plain http:// to a non-loopback host), or the --agent-manager-ca-file cannot be used; `details.option` names what to set. \
            Or the apply failed in the cluster (`details.reason`: `Unauthorized`, `Forbidden` or `InvalidKubeconfig`: replace the kubeconfig \
            with PUT /clusters/{id}/kubeconfig; `Unreachable`; `Rejected`: an object was refused); the cluster is then `error` with a \
            `Bootstrapped=False` condition, and `details.retryable` says whether the same call may succeed later unchanged.", body = ErrorBody,
            examples(
                ("precondition" = (summary = "No URL agents can use", value = json!({"code": "KN-409",
                    "message": "this manager listens on 0.0.0.0:8080 and was started without --agent-manager-url or --external-url, so it cannot tell which URL the cluster's operator reaches it at: start it with --agent-manager-url https://<host the operator reaches>[:port] (operators accept plain http:// only for loopback addresses)",
                    "details": {"precondition": "manager-configuration", "option": "--agent-manager-url", "listen": "0.0.0.0:8080"}}))),
                ("refused" = (summary = "The cluster refused the kubeconfig's identity", value = json!({"code": "KN-409",
                    "message": "the kubeconfig's identity may not apply ClusterRole/kubenova-operator (403 Forbidden: …); bootstrap needs cluster-admin rights once; replace the cluster's kubeconfig with PUT /api/v1/clusters/11111111-1111-1111-1111-111111111111/kubeconfig and bootstrap again",
                    "details": {"clusterId": "11111111-1111-1111-1111-111111111111", "component": "operator", "reason": "Forbidden", "retryable": false, "clusterStatus": "error"}}))),
                ("unreachable" = (summary = "The cluster's API server cannot be reached", value = json!({"code": "KN-409",
                    "message": "the cluster's API server is unreachable: error trying to connect: tcp connect error: Connection refused (os error 111); check the server URL and that the manager can reach it; retry once the API server is reachable from the manager, or replace the cluster's kubeconfig with PUT /api/v1/clusters/11111111-1111-1111-1111-111111111111/kubeconfig if its server URL or CA is wrong",
                    "details": {"clusterId": "11111111-1111-1111-1111-111111111111", "component": "operator", "reason": "Unreachable", "retryable": true, "clusterStatus": "error"}}))),
            )),
        (status = 500, description = "`operator`: a bundled manifest is invalid (a build defect)", body = ErrorBody,
            example = json!({"code": "KN-500", "message": "a bundled manifest is invalid: …"})),
    ),
    security(("bearerAuth" = []))
)]
async fn bootstrap_component(
    State(st): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Path((id, component)): Path<(String, String)>,
) -> ApiResult<Response> {
    if component == "operator" {
        return bootstrap_operator(&st, &ctx, &headers, &id).await;
    }
    record_request(&st, &ctx, &headers, &id, Some(component)).await
}

/// KN-409: the manager's configuration does not allow the operation; `option` names what
/// to set.
fn precondition(option: &str, message: impl Into<String>, extra: Value) -> ApiError {
    let mut details = json!({"precondition": "manager-configuration", "option": option});
    if let (Some(d), Value::Object(more)) = (details.as_object_mut(), extra) {
        d.extend(more);
    }
    kubenova_api::error::KnError::conflict(message)
        .with_details(details)
        .into()
}

/// The URL written into the agent Secret, and how it was chosen.
struct AgentUrl {
    url: String,
    /// Why this URL, for the answer's message.
    source: String,
}

/// The URL operators are told to call: `--agent-manager-url`, else `--external-url`, else
/// (loopback only) `http://<--listen>`. Refuses, with KN-409 naming the option to set,
/// what the operator could not use: no URL at all (a non-loopback or port-0 listen
/// address), or a URL the operator's client refuses (plain `http://` to a non-loopback
/// host).
fn agent_url(cfg: &super::config::ServerConfig) -> ApiResult<AgentUrl> {
    let (url, option, source) = match (&cfg.agent_manager_url, &cfg.external_url) {
        (Some(u), _) => (
            u.trim_end_matches('/').to_string(),
            "--agent-manager-url",
            "--agent-manager-url".to_string(),
        ),
        (None, Some(u)) => (
            u.trim_end_matches('/').to_string(),
            "--external-url",
            "--external-url; set --agent-manager-url if operators reach this manager elsewhere"
                .to_string(),
        ),
        (None, None) => {
            let listen = cfg.listen;
            if !listen.ip().is_loopback() {
                return Err(precondition(
                    "--agent-manager-url",
                    format!(
                        "this manager listens on {listen} and was started without --agent-manager-url or --external-url, so it cannot tell which URL \
                         the cluster's operator reaches it at: start it with --agent-manager-url https://<host the operator reaches>[:port] \
                         (operators accept plain http:// only for loopback addresses)"
                    ),
                    json!({"listen": listen.to_string()}),
                ));
            }
            if listen.port() == 0 {
                return Err(precondition(
                    "--agent-manager-url",
                    format!(
                        "this manager listens on {listen} (a port picked at start) and was started without --agent-manager-url or --external-url: \
                         start it with --listen on a fixed port, or with --agent-manager-url <URL the operator reaches>"
                    ),
                    json!({"listen": listen.to_string()}),
                ));
            }
            (
                format!("http://{listen}"),
                "--listen",
                "this manager's loopback --listen address, as neither --agent-manager-url nor --external-url is set: only an operator on \
                 this host reaches it; for an operator in a cluster's pods, start the manager with --agent-manager-url https://<address they reach>"
                    .to_string(),
            )
        }
    };
    // The operator's own check of the URL: what it would refuse at start is refused now.
    if let Err(e) = kubenova_reconcile::agent::AgentClient::new(&url, "kna_check", None) {
        return Err(precondition(
            option,
            format!(
                "the cluster's operator could not use {url:?} (from {option}): {e}; start the manager with --agent-manager-url https://<host the operator reaches>[:port]"
            ),
            json!({"url": url}),
        ));
    }
    Ok(AgentUrl { url, source })
}

/// How a failed apply is answered: KN-409 with the cause in `details.reason`, whatever
/// the cluster did (refused the kubeconfig's identity or an object, or could not be
/// reached): the manager is fine, the cluster is not in a state the bootstrap can work
/// with (a 5xx would count as the manager's own failure). `details.retryable` is true when
/// the same call may succeed later unchanged (unreachable, or the API server failed);
/// otherwise the kubeconfig or the cluster must be fixed first. KN-500 only for a bundled
/// manifest that is invalid (a build defect).
fn bootstrap_failure(id: ClusterId, e: &kubenova_reconcile::bootstrap::BootstrapError) -> ApiError {
    use kubenova_reconcile::bootstrap::BootstrapError as E;
    let retryable = match e {
        E::Unreachable(_) => true,
        E::Rejected { code, .. } => *code >= 500,
        _ => false,
    };
    let details = json!({"clusterId": id, "component": "operator", "reason": e.reason(),
        "retryable": retryable, "clusterStatus": ClusterStatus::Error});
    let err = match e {
        E::InvalidKubeconfig(_) | E::Unauthorized { .. } | E::Forbidden { .. } => {
            kubenova_api::error::KnError::conflict(format!(
                "{e}; replace the cluster's kubeconfig with PUT /api/v1/clusters/{id}/kubeconfig and bootstrap again"
            ))
        }
        E::Unreachable(_) => kubenova_api::error::KnError::conflict(format!(
            "{e}; retry once the API server is reachable from the manager, or replace the cluster's kubeconfig with \
             PUT /api/v1/clusters/{id}/kubeconfig if its server URL or CA is wrong"
        )),
        E::Rejected { .. } if retryable => kubenova_api::error::KnError::conflict(format!(
            "{e}; the cluster's API server failed: retry later"
        )),
        E::Rejected { .. } => kubenova_api::error::KnError::conflict(format!(
            "{e}; fix what the cluster refuses and bootstrap again"
        )),
        _ => kubenova_api::error::KnError::internal(e.to_string()),
    };
    err.with_details(details).into()
}

/// The outcome of the detached apply: the answer, or the (audited) failure.
enum BootstrapOutcome {
    Applied(Response),
    Failed(ApiError),
}

/// Applies the operator to the cluster with the stored kubeconfig and records the outcome.
async fn bootstrap_operator(
    st: &AppState,
    ctx: &Ctx,
    headers: &HeaderMap,
    raw_id: &str,
) -> ApiResult<Response> {
    use kubenova_reconcile::bootstrap::{BootstrapParams, bootstrap, client_from_kubeconfig};
    ctx.principal.check_clusters(Access::Write)?;
    // A retried bootstrap answers the stored outcome: it neither applies again nor mints
    // another credential.
    if let Some(replay) = ctx.replay() {
        return Ok(replay);
    }
    let id: ClusterId = parse_id("cluster", raw_id)?;
    let c = st.store.get_cluster(id).await?;
    check_if_match(headers, "cluster", id, c.version)?;
    let agent = agent_url(&st.config)?;
    let manager_ca = match &st.config.agent_manager_ca_file {
        Some(path) => {
            let pem = std::fs::read_to_string(path).map_err(|e| {
                precondition(
                    "--agent-manager-ca-file",
                    format!(
                        "the manager CA file {} (--agent-manager-ca-file) cannot be read: {e}; fix the path or the file's permissions",
                        path.display()
                    ),
                    json!({}),
                )
            })?;
            if let Err(e) =
                kubenova_reconcile::agent::AgentClient::new(&agent.url, "kna_check", Some(&pem))
            {
                return Err(precondition(
                    "--agent-manager-ca-file",
                    format!(
                        "the cluster's operator could not use the manager CA file {} (--agent-manager-ca-file): {e}",
                        path.display()
                    ),
                    json!({}),
                ));
            }
            Some(pem)
        }
        None => None,
    };
    tracing::info!(cluster_id = %id, agent_manager_url = %agent.url, source = %agent.source, "bootstrapping the operator: agents call this manager at this URL");
    let manager_url = agent.url.clone();
    let st2 = st.clone();
    let ctx2 = ctx.clone();
    // Detached from the request: a client that disconnects does not abort a half-done
    // apply, and the outcome is always recorded.
    let task = tokio::spawn(async move {
        let st = st2;
        let ctx = ctx2;
        let kubeconfig = st.store.cluster_kubeconfig(id).await?;
        // Staged before the apply: the Secret never carries a credential the manager does
        // not know, and the running operator's credential stays valid until the new one
        // is used (an apply that fails locks nobody out).
        let token = super::agent::stage_credential(st.store.as_ref(), id).await?;
        let mut params = BootstrapParams::new(&st.config.operator_image, &manager_url, &token);
        params.manager_ca = manager_ca;
        params.helm_installer = st.config.operator_helm_installer;
        let budget = st
            .config
            .request_timeout
            .saturating_sub(std::time::Duration::from_secs(3))
            .max(std::time::Duration::from_secs(2));
        params.request_timeout = budget;
        params.connect_timeout = params.connect_timeout.min(budget);
        let outcome = tokio::time::timeout(budget, async {
            let client = client_from_kubeconfig(&kubeconfig, &params).await?;
            bootstrap(&client, &params).await
        })
        .await
        .unwrap_or_else(|_| {
            Err(kubenova_reconcile::bootstrap::BootstrapError::Unreachable(
                format!("no answer within {} s", budget.as_secs()),
            ))
        });
        drop(params);
        drop(token);
        drop(kubeconfig);
        record_bootstrap(&st, &ctx, id, &agent, outcome).await
    });
    match task.await {
        Ok(Ok(BootstrapOutcome::Applied(resp))) => Ok(resp),
        // Audited with the recorded failure: the middleware must not audit it again.
        Ok(Ok(BootstrapOutcome::Failed(e))) => {
            let mut resp = e.into_response();
            resp.extensions_mut().insert(Audited);
            Ok(resp)
        }
        Ok(Err(e)) => Err(e),
        Err(e) => {
            tracing::error!(cluster_id = %id, error = %e, "bootstrap task failed");
            Err(ApiError::new(
                kubenova_api::ErrorCode::Internal,
                "the bootstrap task failed; see the server log",
            ))
        }
    }
}

/// Records the outcome on the cluster with its audit event (in one transaction): applied
/// (202, audited as a success, kept for `Idempotency-Key` replay) or failed (the KN error
/// of [`bootstrap_failure`], audited as a failure with its code, not kept for replay, so
/// a retry with the same key tries again).
async fn record_bootstrap(
    st: &AppState,
    ctx: &Ctx,
    id: ClusterId,
    agent: &AgentUrl,
    outcome: Result<
        kubenova_reconcile::bootstrap::BootstrapReport,
        kubenova_reconcile::bootstrap::BootstrapError,
    >,
) -> ApiResult<BootstrapOutcome> {
    let image = st.config.operator_image.clone();
    let (status_code, status, message, cond, state) = match &outcome {
        Ok(report) => {
            let crds = report
                .applied
                .iter()
                .filter(|a| a.starts_with("CustomResourceDefinition/"))
                .count();
            tracing::info!(cluster_id = %id, objects = report.applied.len(), "operator bootstrap applied");
            (
                StatusCode::ACCEPTED,
                "applied",
                format!(
                    "applied Namespace/kubenova-system, {crds} CRDs, the operator RBAC, Secret/kubenova-system/kubenova-agent and \
                     Deployment/kubenova-system/kubenova-operator ({} objects); waiting for the operator's first heartbeat at {} ({})",
                    report.applied.len(),
                    agent.url,
                    agent.source
                ),
                (
                    ConditionStatus::True,
                    "Applied".to_string(),
                    format!(
                        "operator manifests applied ({} objects) with a new agent credential",
                        report.applied.len()
                    ),
                ),
                ComponentState {
                    name: "operator".into(),
                    version: Some(image.clone()),
                    phase: ComponentPhase::Installing,
                    message: "Deployment applied; waiting for the operator's first heartbeat"
                        .into(),
                    request_id: None,
                },
            )
        }
        Err(e) => {
            tracing::warn!(cluster_id = %id, reason = e.reason(), error = %e, "operator bootstrap failed");
            (
                StatusCode::from_u16(bootstrap_failure(id, e).error.code.http_status())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "failed",
                e.to_string(),
                (
                    ConditionStatus::False,
                    e.reason().to_string(),
                    e.to_string(),
                ),
                ComponentState {
                    name: "operator".into(),
                    version: Some(image.clone()),
                    phase: ComponentPhase::Failed,
                    message: format!("bootstrap failed: {}", e.reason()),
                    request_id: None,
                },
            )
        }
    };
    let failure = outcome.as_ref().err().map(|e| bootstrap_failure(id, e));
    let mut audit = ctx.audit("cluster.bootstrap", "cluster", id, status_code.as_u16());
    audit.details = Some(
        json!({"components": ["operator"], "outcome": status, "reason": cond.1,
        "agentManagerUrl": agent.url}),
    );
    if let (Some(f), Some(d)) = (&failure, audit.details.as_mut()) {
        audit.outcome = kubenova_api::model::AuditOutcome::Failed;
        d["code"] = json!(f.error.code);
        d["message"] = json!(f.error.message);
    }
    // A heartbeat that races us makes the helper re-read and record the outcome on the
    // new version.
    let (cluster, bytes) =
        super::agent::write_cluster_for_request(st.store.as_ref(), id, false, |c, _read| {
            c.status = if outcome.is_ok() {
                ClusterStatus::Bootstrapping
            } else {
                ClusterStatus::Error
            };
            match c.components.iter_mut().find(|s| s.name == "operator") {
                Some(s) => *s = state.clone(),
                None => c.components.push(state.clone()),
            }
            c.components.sort_by_key(|s| {
                COMPONENTS
                    .iter()
                    .position(|n| *n == s.name)
                    .unwrap_or(usize::MAX)
            });
            upsert_condition(
                &mut c.conditions,
                Condition {
                    type_: "Bootstrapped".into(),
                    status: cond.0,
                    reason: cond.1.clone(),
                    message: cond.2.clone(),
                    last_transition_time: c.updated_at,
                    observed_generation: Some(c.version),
                },
            );
            let body = BootstrapAccepted {
                cluster_id: id,
                component: Some("operator".into()),
                status: status.into(),
                cluster_status: c.status,
                agent_manager_url: Some(agent.url.clone()),
                requested: vec!["operator".into()],
                message: message.clone(),
                cluster: c.clone(),
            };
            let bytes = to_bytes(&body)?;
            // A failure is not kept for replay: a retry with the same key tries again.
            let idempotency = if failure.is_none() {
                ctx.idempotency_record(status_code.as_u16(), &bytes)
            } else {
                None
            };
            Ok(super::agent::ClusterWrite {
                result: bytes,
                audit: audit.clone(),
                idempotency,
            })
        })
        .await?;
    if let Some(f) = failure {
        return Ok(BootstrapOutcome::Failed(f));
    }
    Ok(BootstrapOutcome::Applied(bytes_response(
        status_code,
        bytes,
        Some(cluster.version),
        None,
        true,
    )))
}

/// Requests the reinstall of every component the operator manages (cert-manager, Capsule, Capsule Proxy, KubeVela), delivered over the agent channel.
#[utoipa::path(
    post,
    path = "/api/v1/clusters/{clusterID}/refresh",
    tag = "clusters",
    operation_id = "refreshCluster",
    params(("clusterID" = String, Path, description = "Cluster id (UUID)"),
        ("If-Match" = Option<String>, Header, description = "ETag the client read; KN-412 when stale")),
    responses(
        (status = 202, description = "Request recorded (cert-manager, capsule, capsule-proxy and kubevela `requested`, condition `RefreshRequested`) and delivered to the operator with its next desired-state poll; the cluster status is unchanged", body = BootstrapAccepted,
            example = json!({"clusterId": "11111111-1111-1111-1111-111111111111", "status": "accepted", "clusterStatus": "connected",
                "requested": ["cert-manager", "capsule", "capsule-proxy", "kubevela"],
                "message": "the request is recorded on the cluster (component phase `requested`); the cluster's operator receives it with its next desired-state poll (a waiting poll returns at once), marks it `installing`, and reports the outcome in its heartbeats (see GET /clusters/{id}/capabilities)",
                "cluster": {"id": "11111111-1111-1111-1111-111111111111", "name": "prod-eu-1", "datacenter": "eu-west", "labels": {},
                    "status": "connected", "capabilities": {"certManager": false, "capsule": false, "capsuleProxy": false, "kubeVela": false},
                    "components": [{"name": "cert-manager", "phase": "requested", "message": "(re)install requested by admin; waiting for the operator"}],
                    "conditions": [], "version": 2, "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:01:00Z"}})),
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
// Kubeconfig uploads and checks
// ---------------------------------------------------------------------------------

/// The base64 kubeconfig of the OpenAPI examples of JSON bodies.
const KUBECONFIG_B64_EXAMPLE: &str = "YXBpVmVyc2lvbjogdjEKa2luZDogQ29uZmlnCmNsdXN0ZXJzOgotIG5hbWU6IHByb2QKICBjbHVzdGVyOgogICAgc2VydmVyOiBodHRwczovLzEwLjAuMC4xOjY0NDMKICAgIGNlcnRpZmljYXRlLWF1dGhvcml0eS1kYXRhOiBMUzB0TFMxQ1JVZEpUZz09CmNvbnRleHRzOgotIG5hbWU6IHByb2QKICBjb250ZXh0OgogICAgY2x1c3RlcjogcHJvZAogICAgdXNlcjogYWRtaW4KY3VycmVudC1jb250ZXh0OiBwcm9kCnVzZXJzOgotIG5hbWU6IGFkbWluCiAgdXNlcjoKICAgIHRva2VuOiBleGFtcGxlCg==";

/// A kubeconfig shown in the OpenAPI examples of raw uploads.
const KUBECONFIG_EXAMPLE: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: prod\n  cluster:\n    server: https://10.0.0.1:6443\n    certificate-authority-data: LS0tLS1CRUdJTi...\ncontexts:\n- name: prod\n  context:\n    cluster: prod\n    user: admin\ncurrent-context: prod\nusers:\n- name: admin\n  user:\n    token: example\n";

/// The kubeconfig text of a raw upload (KN-422 when it is not UTF-8).
fn upload_text(bytes: &[u8]) -> Result<String, ValidationError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        ValidationError::single(
            "kubeconfig",
            "the uploaded kubeconfig is not UTF-8 text; upload the kubeconfig file itself",
        )
    })
}

/// `key=value[,key=value…]` of the `labels` query parameter.
fn parse_labels(raw: &str) -> Result<std::collections::BTreeMap<String, String>, ValidationError> {
    let mut v = Validator::new();
    let mut labels = std::collections::BTreeMap::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, val)) if !k.trim().is_empty() => {
                if labels
                    .insert(k.trim().to_string(), val.trim().to_string())
                    .is_some()
                {
                    v.push("labels", format!("label {:?} is given twice", k.trim()));
                }
            }
            _ => v.push(
                "labels",
                format!("{pair:?} is not key=value: write labels as key=value[,key=value…], e.g. env=prod,team=core"),
            ),
        }
    }
    v.finish()?;
    Ok(labels)
}

/// The registration of a raw kubeconfig upload: the body is the kubeconfig, the rest comes
/// from the query string.
fn upload_spec(q: ClusterUploadQuery, bytes: &[u8]) -> Result<ClusterSpec, ValidationError> {
    let Some(name) = q.name else {
        return Err(ValidationError::single(
            "name",
            "is required: a raw kubeconfig upload names the cluster with the query parameter ?name=<cluster name>",
        ));
    };
    Ok(ClusterSpec {
        name,
        datacenter: q.datacenter.unwrap_or_default(),
        labels: match &q.labels {
            Some(raw) => parse_labels(raw)?,
            None => Default::default(),
        },
        kubeconfig: upload_text(bytes)?,
        capsule_proxy_endpoint: q.capsule_proxy_endpoint,
    })
}

/// The checks of a kubeconfig sent on its own (the replacement): not empty, at most 512 KiB,
/// then [`check_kubeconfig`]. Returns the text to store.
fn check_replacement(kubeconfig: &str) -> Result<Vec<u8>, ValidationError> {
    if kubeconfig.trim().is_empty() {
        return Err(ValidationError::single(
            "kubeconfig",
            "must not be empty: send the cluster's kubeconfig (base64 or YAML)",
        ));
    }
    if kubeconfig.len() > 512 * 1024 {
        return Err(ValidationError::single(
            "kubeconfig",
            "must be at most 512 KiB",
        ));
    }
    check_kubeconfig(kubeconfig)
}

/// Replaces a registered cluster's kubeconfig (validated like at registration, stored envelope-encrypted, never returned); the next bootstrap uses it.
#[utoipa::path(
    put,
    path = "/api/v1/clusters/{clusterID}/kubeconfig",
    tag = "clusters",
    operation_id = "replaceClusterKubeconfig",
    params(("clusterID" = String, Path, description = "Cluster id (UUID)"),
        ("If-Match" = Option<String>, Header, description = "ETag the client read; KN-412 when stale")),
    request_body(description = "The cluster's new kubeconfig: JSON `{\"kubeconfig\": \"<base64 or YAML>\"}`, or the raw kubeconfig \
        (`application/yaml` or `application/x-yaml`). Checked exactly like at registration.",
        content(
            (KubeconfigReplacement = "application/json", example = json!({"kubeconfig": KUBECONFIG_B64_EXAMPLE})),
            (String = "application/yaml", example = json!(KUBECONFIG_EXAMPLE)),
            (String = "application/x-yaml", example = json!(KUBECONFIG_EXAMPLE)),
        )),
    responses(
        (status = 200, description = "Replaced: the cluster (never the kubeconfig) with the condition `KubeconfigReplaced`; `ETag` is its new version. \
            The next `bootstrap/operator` uses the new kubeconfig.", body = Cluster,
            headers(("ETag" = String, description = "New record version"))),
        (status = 400, description = "Malformed JSON, a non-UUID id, a query parameter, or an If-Match that is not an ETag", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "cluster id \"abc\" is not a UUID"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "Only admin and ops replace a cluster's kubeconfig", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "this operation needs one of the roles admin, ops"})),
        (status = 404, description = "No such cluster", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "cluster \"11111111-1111-1111-1111-111111111111\" not found"})),
        (status = 412, description = "If-Match is stale", body = ErrorBody,
            example = json!({"code": "KN-412", "message": "cluster \"11111111-1111-1111-1111-111111111111\" is at version 3, not 2: it changed since you read it; re-read and retry",
                "details": {"expectedVersion": 2, "currentVersion": 3}})),
        (status = 413, description = "The body exceeds the body limit", body = ErrorBody,
            example = json!({"code": "KN-413", "message": "the request body exceeds the size limit"})),
        (status = 415, description = "Body is neither JSON nor a raw kubeconfig", body = ErrorBody,
            example = json!({"code": "KN-415", "message": "expected Content-Type: application/json, or application/yaml (application/x-yaml) with the raw kubeconfig, got \"text/plain\""})),
        (status = 422, description = "The kubeconfig is invalid (the same checks as at registration), or an unknown field", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: kubeconfig.clusters[0].cluster.insecure-skip-tls-verify: must not be true",
                "details": {"violations": [{"field": "kubeconfig.clusters[0].cluster.insecure-skip-tls-verify",
                    "reason": "must not be true: the manager verifies the cluster's certificate; embed its CA in certificate-authority-data"}]}})),
    ),
    security(("bearerAuth" = []))
)]
async fn replace_kubeconfig(
    State(st): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
    body: Result<JsonOrYaml, ApiError>,
) -> ApiResult<Response> {
    ctx.principal.check_clusters(Access::Write)?;
    let id: ClusterId = parse_id("cluster", &id)?;
    let _: NoQuery = query(&uri)?;
    let pinned = if_match(&headers)?;
    let text = match body? {
        JsonOrYaml::Json(bytes) => parse_json::<KubeconfigReplacement>(&bytes)?.kubeconfig,
        JsonOrYaml::Yaml(bytes) => upload_text(&bytes)?,
    };
    let text = zeroize::Zeroizing::new(text);
    let kubeconfig = zeroize::Zeroizing::new(check_replacement(&text)?);
    // Without If-Match the caller replaces the kubeconfig of the cluster as it is now: a
    // heartbeat that changes the record meanwhile is not the caller's conflict, so re-read
    // and write again (a few times; then KN-412).
    let mut attempts = 0;
    let cluster = loop {
        attempts += 1;
        let mut c = st.store.get_cluster(id).await?;
        check_if_match(&headers, "cluster", id, c.version)?;
        let read = c.version;
        let now = OffsetDateTime::now_utc();
        c.version = read + 1;
        c.updated_at = now;
        upsert_condition(
            &mut c.conditions,
            Condition {
                type_: "KubeconfigReplaced".into(),
                status: ConditionStatus::True,
                reason: "Replaced".into(),
                message: format!(
                    "kubeconfig replaced by {}; the next bootstrap/operator uses it",
                    ctx.principal.subject
                ),
                last_transition_time: now,
                observed_generation: Some(c.version),
            },
        );
        let mut audit = ctx.audit("cluster.kubeconfig.replace", "cluster", id, 200);
        audit.details = Some(json!({"name": c.name}));
        match st
            .store
            .update_cluster_kubeconfig(
                &c,
                read,
                &kubeconfig,
                &WriteOptions {
                    audit: Some(&audit),
                    idempotency: None,
                },
            )
            .await
        {
            Ok(()) => break c,
            Err(kubenova_store::StoreError::PreconditionFailed { .. })
                if pinned.is_none() && attempts < 5 => {}
            Err(e) => return Err(e.into()),
        }
    };
    tracing::info!(cluster_id = %id, name = %cluster.name, by = %ctx.principal.subject, "cluster kubeconfig replaced");
    let c = super::agent::present(cluster, st.config.agent_heartbeat_interval);
    Ok(json_response(
        StatusCode::OK,
        &c,
        Some(c.version),
        None,
        true,
    ))
}

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
        serde_saphyr::from_str::<Value>(&text).map_err(|e| {
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
        let json = serde_json::to_string(&serde_saphyr::from_str::<Value>(KIND).unwrap()).unwrap();
        assert!(check_kubeconfig(&json).is_ok());
    }

    #[test]
    fn kubeconfig_alias_bomb_is_refused_as_invalid_yaml() {
        // Nine levels of ten aliases each would expand to 10^9 scalars: the parser's alias
        // budget refuses it at once instead of building it.
        let mut bomb = String::from("l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n");
        for n in 1..10 {
            let p = n - 1;
            bomb.push_str(&format!(
                "l{n}: &l{n} [{}]\n",
                vec![format!("*l{p}"); 10].join(", ")
            ));
        }
        let err = check_kubeconfig(&bomb).unwrap_err();
        assert!(err.to_string().contains("is not valid YAML"), "{err}");
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
