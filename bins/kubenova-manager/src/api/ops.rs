//! System endpoints: liveness, readiness, version, features, and operator telemetry.

use super::AppState;
use super::authz::Role;
use super::error::{ApiError, ApiResult};
use super::extract::{Ctx, KnJson, bytes_response};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kubenova_api::error::{ErrorBody, KnError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The API versions this manager serves.
pub const API_VERSIONS: &[&str] = &["v1"];
/// The KubeNova contract version whose operations are all served.
pub const CONTRACT_VERSION: &str = "0.1.3";
/// How long readiness waits for the store.
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(version))
        .routes(routes!(features))
        .routes(routes!(telemetry_event))
}

/// Liveness.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"status": "ok"}))]
pub struct Health {
    /// Always `ok` while the process serves requests.
    pub status: String,
}

/// State of one dependency.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DependencyStatus {
    /// `ok` or `unavailable`.
    pub status: String,
    /// Store backend (`postgres`, `sqlite`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Every embedded migration is applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrations_current: Option<bool>,
    /// Newest applied migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_migration: Option<i64>,
    /// Newest migration in this build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_migration: Option<i64>,
    /// Time the check took.
    pub latency_ms: f64,
}

/// Readiness and each dependency.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"status": "ready", "dependencies": {"store": {"status": "ok", "backend": "postgres",
    "migrationsCurrent": true, "appliedMigration": 3, "expectedMigration": 3, "latencyMs": 0.8},
    "signingKeys": {"status": "ok", "latencyMs": 0.3}, "changeListener": {"status": "ok", "latencyMs": 0.0}}}))]
pub struct Ready {
    /// `ready`.
    pub status: String,
    /// Each dependency by name.
    pub dependencies: BTreeMap<String, DependencyStatus>,
}

/// Build and API versions.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"version": "0.1.0", "gitCommit": "a3aae67", "apiVersions": ["v1"], "contract": "0.1.3"}))]
pub struct VersionInfo {
    /// Version of this manager build.
    pub version: String,
    /// Git commit of the build, when it was set at build time (`KUBENOVA_GIT_COMMIT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    /// API versions served.
    pub api_versions: Vec<String>,
    /// KubeNova API contract version whose operations are all served.
    pub contract: String,
}

/// A rate limit.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitInfo {
    /// Sustained requests per second (0: unlimited).
    pub per_second: u32,
    /// Burst.
    pub burst: u32,
}

/// What this manager has switched on.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"auth": true, "authMode": "hs256", "oidc": false, "tokenMinting": true, "store": "postgres",
    "components": ["cert-manager", "capsule", "capsule-proxy", "kubevela", "operator"],
    "defaultPlan": "baseline", "idempotency": true,
    "rateLimits": {"perSubject": {"perSecond": 50, "burst": 100}, "perIp": {"perSecond": 100, "burst": 200}},
    "maxTokenTtlMinutes": 1440, "bodyLimitBytes": 1048576, "apiVersions": ["v1"]}))]
pub struct Features {
    /// Authentication is on (false only with `--insecure-dev-no-auth`).
    pub auth: bool,
    /// `hs256`, `es256` or `disabled`.
    pub auth_mode: String,
    /// Tokens of an external OIDC issuer are accepted.
    pub oidc: bool,
    /// `POST /tokens` can sign tokens.
    pub token_minting: bool,
    /// Store backend.
    pub store: String,
    /// Components KubeNova installs into clusters.
    pub components: Vec<String>,
    /// Plan applied to tenants created without one.
    pub default_plan: String,
    /// `Idempotency-Key` is honoured on POST.
    pub idempotency: bool,
    /// Rate limits.
    pub rate_limits: BTreeMap<String, RateLimitInfo>,
    /// Longest TTL of a minted token.
    pub max_token_ttl_minutes: u64,
    /// Largest accepted request body.
    pub body_limit_bytes: usize,
    /// API versions served.
    pub api_versions: Vec<String>,
}

/// An operator's report about a component install or reconcile (0.1.3 contract).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"stream": "component_install", "component": "cert-manager", "status": "error",
    "error": "exit status 1", "clusterId": "7ae0a156-92cd-40fe-ba4a-fbab55ee9d22"}))]
pub struct TelemetryEvent {
    /// Event stream, e.g. `component_install`, `reconcile` (lowercase letters, digits, `_`, `-`, `.`).
    pub stream: String,
    /// Component the event is about, e.g. `cert-manager`.
    pub component: String,
    /// Status, e.g. `ok`, `error`, `progressing`.
    pub status: String,
    /// Error text, when the status is a failure (at most 4096 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Cluster the event comes from (must be registered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<uuid::Uuid>,
}

/// Telemetry accepted.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"status": "received"}))]
pub struct TelemetryAccepted {
    /// `received`.
    pub status: String,
}

/// Liveness: the process serves requests. No dependency is checked.
#[utoipa::path(
    get,
    path = "/api/v1/healthz",
    tag = "system",
    operation_id = "healthz",
    responses(
        (status = 200, description = "The process is alive", body = Health, example = json!({"status": "ok"})),
    )
)]
async fn healthz() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"ok"}"#,
    )
        .into_response()
}

/// Readiness: the store answers, every migration is applied, the kubeconfig signing keys
/// can be read and decrypted from the store, and (on Postgres) the change listener holds
/// its `LISTEN` connection (without it the record cache is off and agents are woken only
/// by polling). A 503 names the first failed check in `details.dependency` and every
/// failed one in `details.failed`.
#[utoipa::path(
    get,
    path = "/api/v1/readyz",
    tag = "system",
    operation_id = "readyz",
    responses(
        (status = 200, description = "Ready; each dependency with its state (`store`, `signingKeys`, and `changeListener` on Postgres)", body = Ready),
        (status = 503, description = "A dependency is down: `details.dependency` names the first failed check \
            (`store`, `migrations`, `signingKeys`, `changeListener`), `details.failed` all of them; `Retry-After` says when to retry",
            body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds")),
            example = json!({"code": "KN-503", "message": "store unavailable: the database did not answer the ping",
                "details": {"dependency": "store", "failed": ["store"]}, "requestId": "9b2f0c9e-3c1c-4d0e-a1f4-1a2b3c4d5e6f"})),
    )
)]
async fn readyz(State(st): State<AppState>) -> ApiResult<Response> {
    let started = Instant::now();
    let res = tokio::time::timeout(READY_TIMEOUT, st.store.ping()).await;
    if res.is_err() {
        // The timed-out call was dropped before the metered store could record it.
        st.runtime.observe_store("ping", started, false);
    }
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let unavailable = |failed: Vec<(&str, String)>| {
        let names: Vec<&str> = failed.iter().map(|(n, _)| *n).collect();
        let message = failed
            .iter()
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        ApiError {
            error: KnError::unavailable(names[0], message)
                .with_details(json!({"dependency": names[0], "failed": names})),
            retry_after: Some(5),
        }
    };
    let health = match res {
        Err(_) => {
            return Err(unavailable(vec![(
                "store",
                format!(
                    "store unavailable: no answer within {} s",
                    READY_TIMEOUT.as_secs()
                ),
            )]));
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: store ping failed");
            return Err(unavailable(vec![(
                "store",
                "store unavailable: the database did not answer the ping".into(),
            )]));
        }
        Ok(Ok(h)) => h,
    };
    let mut failed = Vec::new();
    if !health.migrations_current {
        failed.push((
            "migrations",
            format!(
                "store migrations pending: applied {} of {}; run `kubenova-manager migrate`",
                health.applied_migration, health.expected_migration
            ),
        ));
    }
    let keys_started = Instant::now();
    let keys = tokio::time::timeout(
        READY_TIMEOUT,
        super::slo::read_signing_keys(st.store.as_ref()),
    )
    .await
    .unwrap_or_else(|_| {
        Err(format!(
            "the kubeconfig signing keys could not be read within {} s",
            READY_TIMEOUT.as_secs()
        ))
    });
    let keys_ms = keys_started.elapsed().as_secs_f64() * 1000.0;
    if let Err(e) = &keys {
        tracing::warn!(error = %e, "readiness: signing keys");
        failed.push(("signingKeys", e.clone()));
    }
    let postgres = health.backend == "postgres";
    if postgres && !st.changes.is_listening() {
        failed.push((
            "changeListener",
            "the Postgres change listener has no LISTEN connection (reconnecting with backoff): the record cache is off and agents are woken by polling only; check the database's connection limit and the network".into(),
        ));
    }
    if let Some(oidc) = st.auth.identity_providers()
        && let Err(e) = oidc.readiness()
    {
        failed.push(("identityProviders", e));
    }
    if !failed.is_empty() {
        return Err(unavailable(failed));
    }
    let ok = |latency_ms| DependencyStatus {
        status: "ok".into(),
        backend: None,
        migrations_current: None,
        applied_migration: None,
        expected_migration: None,
        latency_ms,
    };
    let mut deps = BTreeMap::new();
    deps.insert(
        "store".to_string(),
        DependencyStatus {
            status: "ok".into(),
            backend: Some(health.backend.to_string()),
            migrations_current: Some(true),
            applied_migration: Some(health.applied_migration),
            expected_migration: Some(health.expected_migration),
            latency_ms,
        },
    );
    deps.insert("signingKeys".to_string(), ok(keys_ms));
    if postgres {
        deps.insert("changeListener".to_string(), ok(0.0));
    }
    Ok(axum::Json(Ready {
        status: "ready".into(),
        dependencies: deps,
    })
    .into_response())
}

/// The build's version and the API versions served.
#[utoipa::path(
    get,
    path = "/api/v1/version",
    tag = "system",
    operation_id = "version",
    responses(
        (status = 200, description = "Versions", body = VersionInfo),
    )
)]
async fn version() -> axum::Json<VersionInfo> {
    axum::Json(version_info())
}

/// The version document.
pub fn version_info() -> VersionInfo {
    VersionInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        git_commit: option_env!("KUBENOVA_GIT_COMMIT").map(str::to_string),
        api_versions: API_VERSIONS.iter().map(|s| s.to_string()).collect(),
        contract: CONTRACT_VERSION.into(),
    }
}

/// What this manager has switched on (authentication, store backend, limits, ...).
#[utoipa::path(
    get,
    path = "/api/v1/features",
    tag = "system",
    operation_id = "features",
    responses(
        (status = 200, description = "Feature flags", body = Features),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "missing bearer token: send Authorization: Bearer <jwt>"})),
        (status = 503, description = "The store is down", body = ErrorBody,
            example = json!({"code": "KN-503", "message": "database unavailable", "details": {"dependency": "store"}})),
    ),
    security(("bearerAuth" = []))
)]
async fn features(State(st): State<AppState>, _ctx: Ctx) -> ApiResult<axum::Json<Features>> {
    let health = st.store.ping().await?;
    let cfg = &st.config;
    let mut limits = BTreeMap::new();
    limits.insert(
        "perSubject".to_string(),
        RateLimitInfo {
            per_second: cfg.rate_limit_subject_rps,
            burst: cfg.rate_limit_subject_burst,
        },
    );
    limits.insert(
        "perIp".to_string(),
        RateLimitInfo {
            per_second: cfg.rate_limit_ip_rps,
            burst: cfg.rate_limit_ip_burst,
        },
    );
    Ok(axum::Json(Features {
        auth: !st.auth.is_disabled(),
        auth_mode: st.auth.mode().as_str().into(),
        oidc: st.auth.oidc_enabled(),
        token_minting: st.auth.can_mint(),
        store: health.backend.into(),
        components: kubenova_api::model::COMPONENTS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        default_plan: cfg.default_plan.clone(),
        idempotency: true,
        rate_limits: limits,
        max_token_ttl_minutes: cfg.max_token_ttl.as_secs() / 60,
        body_limit_bytes: cfg.body_limit,
        api_versions: API_VERSIONS.iter().map(|s| s.to_string()).collect(),
    }))
}

fn check_token_field(
    v: &mut kubenova_api::validate::Validator,
    field: &str,
    value: &str,
    max: usize,
) {
    if value.is_empty() {
        v.push(field, "must not be empty");
    } else if value.len() > max {
        v.push(field, format!("must be at most {max} characters"));
    } else if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.'))
    {
        v.push(
            field,
            "may contain only lowercase letters, digits, '_', '-' and '.'",
        );
    }
}

impl TelemetryEvent {
    /// Validates the fields (KN-422 listing each violation).
    pub fn validate(&self) -> Result<(), kubenova_api::validate::ValidationError> {
        let mut v = kubenova_api::validate::Validator::new();
        check_token_field(&mut v, "stream", &self.stream, 63);
        check_token_field(&mut v, "component", &self.component, 63);
        check_token_field(&mut v, "status", &self.status, 32);
        if let Some(e) = &self.error
            && e.chars().count() > 4096
        {
            v.push("error", "must be at most 4096 characters");
        }
        v.finish()
    }
}

/// Accepts an operator's telemetry event: validated, logged as a structured event and
/// recorded as an audit event. Admin and ops only (the operator's own credential comes
/// with the agent endpoints).
#[utoipa::path(
    post,
    path = "/api/v1/telemetry/events",
    tag = "system",
    operation_id = "ingestTelemetryEvent",
    request_body(content = TelemetryEvent, example = json!({"stream": "component_install", "component": "cert-manager",
        "status": "error", "error": "exit status 1", "clusterId": "7ae0a156-92cd-40fe-ba4a-fbab55ee9d22"})),
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry return the stored response")),
    responses(
        (status = 202, description = "Accepted", body = TelemetryAccepted, example = json!({"status": "received"})),
        (status = 400, description = "Malformed JSON", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "malformed JSON: EOF while parsing an object at line 1 column 1"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "the bearer token has expired"})),
        (status = 403, description = "Only admin and ops", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "this operation needs one of the roles admin, ops"})),
        (status = 404, description = "Unknown cluster", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "cluster \"7ae0a156-92cd-40fe-ba4a-fbab55ee9d22\" not found"})),
        (status = 413, description = "Body over the limit", body = ErrorBody,
            example = json!({"code": "KN-413", "message": "the request body exceeds the size limit"})),
        (status = 415, description = "Not JSON", body = ErrorBody,
            example = json!({"code": "KN-415", "message": "expected Content-Type: application/json, got \"text/plain\""})),
        (status = 422, description = "Invalid fields, or an Idempotency-Key reused with a different body", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: stream: must not be empty",
                "details": {"violations": [{"field": "stream", "reason": "must not be empty"}]}})),
        (status = 429, description = "Rate limited", body = ErrorBody,
            example = json!({"code": "KN-429", "message": "rate limit per subject exceeded; retry in 1 s"})),
    ),
    security(("bearerAuth" = []))
)]
async fn telemetry_event(
    State(st): State<AppState>,
    ctx: Ctx,
    KnJson(ev): KnJson<TelemetryEvent>,
) -> ApiResult<Response> {
    ctx.principal.require_any(&[Role::Admin, Role::Ops])?;
    if let Some(replay) = ctx.replay() {
        return Ok(replay);
    }
    ev.validate()?;
    if let Some(c) = ev.cluster_id {
        st.store
            .get_cluster(kubenova_api::ids::ClusterId::from(c))
            .await?;
    }
    tracing::info!(
        target: "kubenova::telemetry",
        stream = %ev.stream,
        component = %ev.component,
        status = %ev.status,
        error = ev.error.as_deref().unwrap_or(""),
        cluster_id = ev.cluster_id.map(|c| c.to_string()).unwrap_or_default(),
        actor = %ctx.principal.subject,
        request_id = %ctx.request_id,
        "telemetry event"
    );
    let status = StatusCode::ACCEPTED;
    let body = serde_json::to_vec(&TelemetryAccepted {
        status: "received".into(),
    })
    .unwrap_or_default();
    let mut audit = ctx.audit(
        "telemetry.event",
        "cluster",
        ev.cluster_id.map(|c| c.to_string()).unwrap_or_default(),
        status.as_u16(),
    );
    audit.details = Some(json!({
        "stream": ev.stream, "component": ev.component, "status": ev.status, "error": ev.error,
    }));
    st.store.append_audit(&audit).await?;
    if let Some(rec) = ctx.idempotency_record(status.as_u16(), &body)
        && let Err(e) = st.store.put_idempotency(&rec).await
    {
        // The event is recorded; a lost idempotency record only means a retry is recorded twice.
        tracing::warn!(error = %e, "could not store the idempotency record of a telemetry event");
    }
    let mut resp = bytes_response(status, body, None, None, true);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
