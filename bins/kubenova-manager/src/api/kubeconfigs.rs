//! Kubeconfig issuance: scoped, expiring, revocable kubeconfigs through the cluster's
//! Capsule Proxy, signed by the manager (see `docs/src/kubeconfigs.md`).
//!
//! - **Issuance** ([`issue`]): the tenant and project kubeconfig routes (GET with query
//!   parameters, POST with a JSON body; in `tenants.rs` and `projects.rs`) and the exec
//!   refresh `POST /api/v1/tenants/{tenantID}/token` that `kubenova auth token` calls.
//!   Every issuance is authorized ([`authorize`]), refused for revoked subjects, recorded
//!   (credential metadata, never the token) with its audit event in one transaction.
//! - **Revocation**: list a tenant's issued credentials, revoke one (`jti`), a subject's
//!   or all of a tenant's; list and lift subject revocations.
//! - **Discovery**: `/.well-known/openid-configuration` and the JWKS it names, public, so
//!   a cluster's API server can trust the manager as a JWT issuer.
//! - **Signing keys**: an ES256 [`KeySet`] stored envelope-encrypted in the store
//!   ([`load_or_create_signing_keys`]), rotated with overlap ([`rotate_signing_keys`]).
//!
//! Tokens never reach a log, the store or an idempotency record.

use super::AppState;
use super::authz::{Principal, Role};
use super::clusters::{list_params, parse_id, query};
use super::error::{ApiError, ApiResult};
use super::extract::{Audited, Ctx, KnJson, bytes_response, json_response, no_store};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use kubenova_api::ErrorBody;
use kubenova_api::error::{ErrorCode, KnError};
use kubenova_api::ids::{ClusterId, ProjectId, TenantId};
use kubenova_api::model::{AccessRole, AuditEvent, AuditOutcome, Cluster, Project, Tenant};
use kubenova_api::validate::Validator;
use kubenova_kubeconfig::{
    Claims, Credential, ExecCredential, KeySet, KubeconfigExt as _, KubeconfigRequest, ProxyCa,
    TokenSpec,
};
use kubenova_store::{
    CredentialMode, CredentialOutcome, CredentialQuery, IssuedCredential, LiftOutcome, Store,
    StoreError, SubjectRevocation, WriteOptions,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use time::OffsetDateTime;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

/// Owner id of the stored signing key set (not a record: the manager itself).
pub const SIGNING_KEYS_OWNER: Uuid = Uuid::nil();
/// Purpose of the stored signing key set (`Store::put_secret`).
pub const SIGNING_KEYS_PURPOSE: &str = "kubeconfig-signing-keys";
/// Response header carrying the `jti` of an issued token.
pub const CREDENTIAL_ID_HEADER: &str = "x-kubenova-credential-id";
/// Response header carrying the expiry (RFC 3339) of an issued token.
pub const EXPIRES_AT_HEADER: &str = "x-kubenova-expires-at";

/// The `aud` of tokens for a cluster: `kubenova:cluster:<clusterId>`.
///
/// ```
/// use kubenova_api::ids::ClusterId;
/// let id: ClusterId = "3f1c2a9e-7d4b-4c1e-9a0f-2b8d6e5c4a10".parse().unwrap();
/// assert_eq!(
///     kubenova_manager::api::kubeconfigs::cluster_audience(id),
///     "kubenova:cluster:3f1c2a9e-7d4b-4c1e-9a0f-2b8d6e5c4a10"
/// );
/// ```
pub fn cluster_audience(cluster: ClusterId) -> String {
    format!("kubenova:cluster:{cluster}")
}

// ---------------------------------------------------------------------------------
// Signing keys
// ---------------------------------------------------------------------------------

/// Loading, creating or rotating the signing keys failed.
#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored keys could not be parsed, or a key could not be generated.
    #[error("kubeconfig signing keys: {0}")]
    Key(#[from] kubenova_kubeconfig::Error),
    /// Concurrent rotations changed the stored keys at every attempt of this one.
    #[error(
        "the kubeconfig signing keys were changed by concurrent rotations {attempts} times while this rotation ran; nothing was changed by it, retry"
    )]
    Contended {
        /// Attempts made.
        attempts: usize,
    },
}

impl From<SigningKeyError> for ApiError {
    fn from(e: SigningKeyError) -> Self {
        match e {
            SigningKeyError::Store(s) => s.into(),
            SigningKeyError::Key(k) => {
                tracing::error!(error = %k, "kubeconfig signing keys are unusable");
                ApiError::from(KnError::internal(
                    "the kubeconfig signing keys are unusable; see the manager log",
                ))
            }
            e @ SigningKeyError::Contended { .. } => KnError::conflict(e.to_string()).into(),
        }
    }
}

/// The stored signing key set, generated and stored on first use. Concurrent first
/// starts agree on one key set (insert-if-absent, then read back).
pub async fn load_or_create_signing_keys(store: &dyn Store) -> Result<KeySet, SigningKeyError> {
    Ok(load_or_create_versioned(store).await?.0)
}

/// [`load_or_create_signing_keys`] with the stored version, for a conditional write.
async fn load_or_create_versioned(store: &dyn Store) -> Result<(KeySet, i64), SigningKeyError> {
    match store
        .get_secret_versioned(SIGNING_KEYS_OWNER, SIGNING_KEYS_PURPOSE)
        .await
    {
        Ok((bytes, version)) => return Ok((KeySet::from_bytes(&bytes)?, version)),
        Err(StoreError::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let fresh = KeySet::generate(OffsetDateTime::now_utc())?;
    if store
        .put_secret_if_absent(SIGNING_KEYS_OWNER, SIGNING_KEYS_PURPOSE, &fresh.to_bytes()?)
        .await?
    {
        tracing::info!(kid = %fresh.active().kid(), "generated the kubeconfig signing key");
    }
    let (bytes, version) = store
        .get_secret_versioned(SIGNING_KEYS_OWNER, SIGNING_KEYS_PURPOSE)
        .await?;
    Ok((KeySet::from_bytes(&bytes)?, version))
}

/// Attempts of a rotation whose conditional write finds the keys changed by another one.
const ROTATION_ATTEMPTS: usize = 32;

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SigningKeyRotation {
    /// `kid` of the new active key.
    pub active_kid: String,
    /// `kid`s still published and verifying (the previous keys within their overlap).
    pub verifying_kids: Vec<String>,
    /// `kid`s removed because every token they signed has expired.
    pub retired_kids: Vec<String>,
}

/// Rotates the signing keys with overlap: a new active key signs from now on, the old
/// one stays in the JWKS until `overlap` (the maximum kubeconfig TTL plus clock skew)
/// after its deactivation, and keys past that are retired.
///
/// The write is conditional on the version of the keys that were read: a rotation that
/// races another one (two replicas, or the API and the `rotate-signing-keys` command)
/// re-reads the keys the other one stored and rotates those, so no key is lost and the
/// rotations apply one after the other. After 32 lost races in a row it gives
/// up with [`SigningKeyError::Contended`] (KN-409), having changed nothing.
pub async fn rotate_signing_keys(
    store: &dyn Store,
    overlap: time::Duration,
) -> Result<SigningKeyRotation, SigningKeyError> {
    for attempt in 1..=ROTATION_ATTEMPTS {
        let (mut keys, version) = load_or_create_versioned(store).await?;
        let now = OffsetDateTime::now_utc();
        keys.rotate(now)?;
        let retired = keys.retire_expired(now, overlap);
        match store
            .replace_secret(
                SIGNING_KEYS_OWNER,
                SIGNING_KEYS_PURPOSE,
                &keys.to_bytes()?,
                version,
            )
            .await
        {
            Ok(_) => {
                tracing::info!(active_kid = %keys.active().kid(), retired = ?retired, attempt, "rotated the kubeconfig signing keys");
                return Ok(SigningKeyRotation {
                    active_kid: keys.active().kid().to_string(),
                    verifying_kids: keys
                        .previous()
                        .iter()
                        .map(|k| k.kid().to_string())
                        .collect(),
                    retired_kids: retired,
                });
            }
            Err(StoreError::PreconditionFailed { .. }) => {
                tracing::info!(
                    attempt,
                    "the kubeconfig signing keys changed during this rotation; rotating the new keys"
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(SigningKeyError::Contended {
        attempts: ROTATION_ATTEMPTS,
    })
}

/// The signing keys of the state: from memory while fresh, else re-read from the store.
pub async fn signing_keys(st: &AppState) -> ApiResult<Arc<KeySet>> {
    let cache = st.auth.kubeconfig_keys();
    if let Some(k) = cache.fresh() {
        return Ok(k);
    }
    let keys = Arc::new(load_or_create_signing_keys(st.store.as_ref()).await?);
    cache.set(Arc::clone(&keys));
    Ok(keys)
}

/// The overlap a rotated-out key keeps verifying: maximum kubeconfig TTL + clock skew.
pub fn rotation_overlap(cfg: &super::config::ServerConfig) -> time::Duration {
    time::Duration::try_from(cfg.max_kubeconfig_ttl + cfg.clock_skew)
        .unwrap_or(time::Duration::days(1))
}

// ---------------------------------------------------------------------------------
// Request parameters
// ---------------------------------------------------------------------------------

/// A TTL: seconds as a number, or a duration text (`90s`, `30m`, `1h`, `1d`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TtlInput {
    /// Seconds.
    Seconds(i64),
    /// Duration text.
    Text(String),
}

/// `GET …/kubeconfig` query parameters.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct KubeconfigQuery {
    /// `owner`, `developer` or `viewer` (default `viewer`).
    pub role: Option<String>,
    /// Token lifetime: seconds or `30m`, `1h`, `1d` (default 1h; at most the configured maximum).
    pub ttl: Option<String>,
    /// `token` (embedded token, default) or `exec` (the `kubenova auth token` plugin).
    pub mode: Option<String>,
}

/// `POST …/kubeconfig` body.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"role": "developer", "ttl": "1h", "mode": "token"}))]
pub struct KubeconfigBody {
    /// `owner`, `developer` or `viewer` (default `viewer`).
    #[serde(default)]
    pub role: Option<String>,
    /// Token lifetime: seconds (number) or `30m`, `1h`, `1d` (default 1h; at most the
    /// configured maximum).
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "1h")]
    pub ttl: Option<TtlInput>,
    /// `token` (embedded token, default) or `exec` (the `kubenova auth token` plugin).
    #[serde(default)]
    pub mode: Option<String>,
}

/// `POST /api/v1/tenants/{tenantID}/token` body: what `kubenova auth token` asks for.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schema(example = json!({"role": "viewer"}))]
pub struct TokenBody {
    /// `owner`, `developer` or `viewer`.
    pub role: Option<String>,
    /// Project id (UUID) for a project-scoped token.
    #[serde(default)]
    pub project: Option<String>,
    /// Cluster id (UUID); must be the tenant's cluster when given.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Lifetime (default `--exec-token-ttl`): seconds or `10m`, `1h`.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "10m")]
    pub ttl: Option<TtlInput>,
}

/// What to issue, validated.
#[derive(Debug, Clone, Copy)]
pub struct IssueParams {
    /// Role.
    pub role: AccessRole,
    /// Lifetime.
    pub ttl: time::Duration,
    /// Token or exec kubeconfig.
    pub mode: CredentialMode,
}

fn parse_role(v: &mut Validator, raw: Option<&str>) -> AccessRole {
    match raw.map(str::trim) {
        None | Some("") => AccessRole::Viewer,
        Some("owner") => AccessRole::Owner,
        Some("developer") => AccessRole::Developer,
        Some("viewer") => AccessRole::Viewer,
        Some(other) => {
            v.push(
                "role",
                format!("unknown role {other:?}: use owner, developer or viewer"),
            );
            AccessRole::Viewer
        }
    }
}

fn parse_ttl(
    v: &mut Validator,
    raw: Option<&TtlInput>,
    default: time::Duration,
    max: time::Duration,
) -> time::Duration {
    let max_s = max.whole_seconds();
    let bounds = |got: String| {
        format!("must be greater than 0s and at most {max_s}s (--max-kubeconfig-ttl); got {got}")
    };
    let ttl = match raw {
        None => return default,
        Some(TtlInput::Seconds(n)) => {
            if *n <= 0 || *n > max_s {
                v.push("ttl", bounds(format!("{n}s")));
                return default;
            }
            time::Duration::seconds(*n)
        }
        Some(TtlInput::Text(t)) => {
            let t = t.trim();
            if let Some(rest) = t.strip_prefix('-') {
                v.push("ttl", bounds(format!("-{rest}")));
                return default;
            }
            match super::config::parse_duration(t) {
                Ok(d) => time::Duration::try_from(d).unwrap_or(time::Duration::MAX),
                Err(e) => {
                    v.push("ttl", e);
                    return default;
                }
            }
        }
    };
    if ttl <= time::Duration::ZERO || ttl > max {
        v.push("ttl", bounds(format!("{}s", ttl.whole_seconds())));
        return default;
    }
    ttl
}

fn parse_mode(v: &mut Validator, raw: Option<&str>) -> CredentialMode {
    match raw.map(str::trim) {
        None | Some("") | Some("token") => CredentialMode::Token,
        Some("exec") => CredentialMode::Exec,
        Some(other) => {
            v.push("mode", format!("unknown mode {other:?}: use token or exec"));
            CredentialMode::Token
        }
    }
}

fn max_ttl(st: &AppState) -> time::Duration {
    time::Duration::try_from(st.config.max_kubeconfig_ttl).unwrap_or(time::Duration::days(1))
}

/// Validates role, TTL and mode together (every problem reported at once, KN-422).
pub fn issue_params(
    st: &AppState,
    role: Option<&str>,
    ttl: Option<&TtlInput>,
    mode: Option<&str>,
) -> ApiResult<IssueParams> {
    let mut v = Validator::new();
    let role = parse_role(&mut v, role);
    let ttl = parse_ttl(&mut v, ttl, kubenova_kubeconfig::DEFAULT_TTL, max_ttl(st));
    let mode = parse_mode(&mut v, mode);
    v.finish()?;
    Ok(IssueParams { role, ttl, mode })
}

impl KubeconfigQuery {
    /// The validated parameters.
    pub fn params(&self, st: &AppState) -> ApiResult<IssueParams> {
        let ttl = self.ttl.clone().map(TtlInput::Text);
        issue_params(st, self.role.as_deref(), ttl.as_ref(), self.mode.as_deref())
    }
}

impl KubeconfigBody {
    /// The validated parameters.
    pub fn params(&self, st: &AppState) -> ApiResult<IssueParams> {
        issue_params(
            st,
            self.role.as_deref(),
            self.ttl.as_ref(),
            self.mode.as_deref(),
        )
    }
}

// ---------------------------------------------------------------------------------
// Authorization
// ---------------------------------------------------------------------------------

/// What an issuance was allowed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// A role of the caller's token (admin, ops, a `tenantOwner` or `projectDev` scoped to
    /// the target, readOnly): the model's owners and access entries do not revoke it.
    Role,
    /// Rights derived from the model: the tenant's `owners` or the project's `access`
    /// name the caller (or one of their groups), or the caller's grants say so otherwise
    /// (e.g. an API key's). A credential issued to a person on this basis records the
    /// membership keys it relies on and is revoked when they stop entitling it.
    Grant,
}

/// Whether an access entry of role `entry` lets its holder obtain a `asked` credential:
/// `owner:` any, `developer:` developer or viewer, `viewer:` viewer.
fn entry_allows(entry: AccessRole, asked: AccessRole) -> bool {
    match entry {
        AccessRole::Owner => true,
        AccessRole::Developer => asked != AccessRole::Owner,
        AccessRole::Viewer => asked == AccessRole::Viewer,
    }
}

/// What an access entry of role `entry` may obtain, for messages.
fn entry_may_obtain(entry: AccessRole) -> &'static str {
    match entry {
        AccessRole::Owner => "owner, developer or viewer",
        AccessRole::Developer => "developer or viewer",
        AccessRole::Viewer => "only viewer",
    }
}

/// May the caller obtain a `role` credential for this tenant (or project), and on what?
///
/// On a token role: admin and ops any; tenantOwner of the tenant any role, tenant or
/// project; projectDev of the project `developer` or `viewer` of that project; readOnly
/// within its scope `viewer` only. On rights derived from the model (any caller carrying
/// grants: people signed in with an identity provider, API keys): owner of the tenant (its
/// `owners` name the caller or one of their groups) any role, tenant or project, exactly
/// like a tenantOwner; a project's `owner:` entry any role of that project, `developer:`
/// developer or viewer, `viewer:` viewer. A token role is preferred when both allow it.
/// Outside the caller's scope: KN-404 (as if the object did not exist); inside it but not
/// allowed: KN-403, saying what the caller is and what they asked for.
pub fn authorize(
    p: &Principal,
    tenant: &Tenant,
    project: Option<&Project>,
    role: AccessRole,
) -> ApiResult<Basis> {
    if p.is_platform() || (p.has(Role::TenantOwner) && p.tenants.contains(&tenant.id)) {
        return Ok(Basis::Role);
    }
    let in_project_scope = project.is_some_and(|pr| p.projects.contains(&pr.id));
    if in_project_scope && p.has(Role::ProjectDev) && role != AccessRole::Owner {
        return Ok(Basis::Role);
    }
    // The token's own scope (its tenants and projects claims; none: unscoped).
    let unscoped = p.tenants.is_empty() && p.projects.is_empty();
    let in_token_scope = p.tenants.contains(&tenant.id) || in_project_scope;
    if p.has(Role::ReadOnly) && (unscoped || in_token_scope) && role == AccessRole::Viewer {
        return Ok(Basis::Role);
    }
    if p.grants.owns(tenant.id) {
        return Ok(Basis::Grant);
    }
    let entry = project.and_then(|pr| p.grants.project_role(pr.id));
    if entry.is_some_and(|e| entry_allows(e, role)) {
        return Ok(Basis::Grant);
    }
    let visible = match project {
        Some(pr) => p.sees_project(pr),
        None => p.sees_tenant(tenant.id),
    };
    if !visible {
        return Err(match project {
            Some(pr) => ApiError::not_found("project", pr.id),
            None => ApiError::not_found("tenant", tenant.id),
        });
    }
    Err(ApiError::forbidden(match (entry, project) {
        (Some(e), Some(pr)) => format!(
            "you are {} {} of project {:?} (by its access entries); a {} may obtain {} kubeconfigs, not {}",
            if e == AccessRole::Owner { "an" } else { "a" },
            e.as_str(),
            pr.name,
            e.as_str(),
            entry_may_obtain(e),
            role.as_str()
        ),
        _ if p.has(Role::ProjectDev) && in_project_scope => format!(
            "a projectDev may obtain only developer or viewer kubeconfigs of their projects, not {}",
            role.as_str()
        ),
        _ if p.has(Role::ReadOnly) => format!(
            "readOnly may obtain only viewer kubeconfigs, not {}",
            role.as_str()
        ),
        _ => format!(
            "issuing {} kubeconfigs needs admin, ops, the tenant's owner, a developer of the project or readOnly (viewer only)",
            role.as_str()
        ),
    }))
}

/// The membership keys an issuance on derived rights relies on: those of the caller's
/// identity (`user:<sub>`, `group:<g>`) whose memberships entitle `role` at the scope, read
/// now; `None` for an issuance on a token role, or for a caller whose grants do not come
/// from memberships (an API key's). An empty list (the memberships went away since the
/// request's rights were read) is refused when the credential is recorded.
async fn derived_from(
    st: &AppState,
    p: &Principal,
    basis: Basis,
    tenant: &Tenant,
    project: Option<&Project>,
    role: AccessRole,
) -> ApiResult<Option<Vec<String>>> {
    let (Basis::Grant, Some(identity)) = (basis, p.identity()) else {
        return Ok(None);
    };
    let rows = st.store.memberships_of(&identity.keys()).await?;
    let mut keys: Vec<String> = Vec::new();
    for m in rows {
        if m.entitles(tenant.id, project.map(|pr| pr.id), role) && !keys.contains(&m.key) {
            keys.push(m.key);
        }
    }
    Ok(Some(keys))
}

// ---------------------------------------------------------------------------------
// Issuance
// ---------------------------------------------------------------------------------

/// A kubeconfig as the JSON response (`Accept: application/yaml` returns only the YAML).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuedKubeconfig {
    /// Entry name `<cluster>-<tenant>[-<project>]-<role>`.
    pub name: String,
    /// Tenant.
    pub tenant_id: TenantId,
    /// Project, for project kubeconfigs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_id: Option<ProjectId>,
    /// Cluster.
    pub cluster_id: ClusterId,
    /// Role.
    pub role: AccessRole,
    /// `token` or `exec`.
    pub mode: String,
    /// Context namespace.
    pub namespace: String,
    /// Capsule Proxy URL (the cluster entry's server).
    pub server: String,
    /// `jti` of the embedded token (token mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Expiry of the embedded token (token mode).
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
    /// The kubeconfig (YAML text; save it and use it with `kubectl --kubeconfig`).
    pub kubeconfig: String,
}

/// True when the client asked for YAML (`Accept: application/yaml`, `text/yaml`,
/// `application/x-yaml`) before JSON.
pub fn wants_yaml(headers: &HeaderMap) -> bool {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",")
        .to_ascii_lowercase();
    let yaml = ["application/yaml", "text/yaml", "application/x-yaml"]
        .iter()
        .filter_map(|m| accept.find(m))
        .min();
    let json = accept.find("application/json");
    match (yaml, json) {
        (Some(y), Some(j)) => y < j,
        (Some(_), None) => true,
        _ => false,
    }
}

/// The condition in which the cluster's operator says how it found the Capsule Proxy
/// endpoint and its CA, or why not.
pub(crate) const PROXY_CONDITION: &str = "CapsuleProxyDiscovered";

/// `; the operator reports: …` when the operator said why the endpoint or its CA is missing.
fn operator_report(cluster: &Cluster) -> String {
    cluster
        .conditions
        .iter()
        .find(|c| {
            c.type_ == PROXY_CONDITION && c.status != kubenova_api::model::ConditionStatus::True
        })
        .map(|c| format!("; the operator reports: {}", c.message))
        .unwrap_or_default()
}

fn proxy_not_reported(cluster: &Cluster) -> ApiError {
    let report = operator_report(cluster);
    let message = if report.is_empty() {
        "the Capsule Proxy endpoint of the cluster is not reported yet: kubeconfigs go through Capsule Proxy; retry once the operator reports it"
            .to_string()
    } else {
        format!(
            "the cluster has no Capsule Proxy endpoint: kubeconfigs go through Capsule Proxy{report}"
        )
    };
    KnError::conflict(message)
        .with_details(json!({"clusterId": cluster.id, "clusterStatus": cluster.status}))
        .into()
}

fn kubeconfig_error(e: kubenova_kubeconfig::Error, cluster: &Cluster) -> ApiError {
    use kubenova_kubeconfig::Error as E;
    match &e {
        E::ProxyNotReported => proxy_not_reported(cluster),
        E::TtlOutOfRange { .. } => ApiError::invalid("ttl", e.to_string()),
        E::InvalidSubject(_) => ApiError::invalid(
            "subject",
            format!("{e}; kubeconfigs are issued to the caller's token subject"),
        ),
        E::InsecureUrl { field, .. } if *field == "proxy_url" => KnError::conflict(format!(
            "the cluster's reported Capsule Proxy endpoint is not usable: {e}; serve Capsule Proxy with TLS (--enable-ssl)"
        ))
        .with_details(json!({"clusterId": cluster.id}))
        .into(),
        E::MissingCa(_) | E::InvalidCa { .. } => KnError::conflict(match operator_report(cluster) {
            report if report.is_empty() => format!(
                "the cluster's reported Capsule Proxy endpoint has no usable CA: {e}; the operator reports the CA of the proxy's serving certificate"
            ),
            report => format!(
                "the cluster's reported Capsule Proxy endpoint has no usable CA: {e}{report}"
            ),
        })
        .with_details(json!({"clusterId": cluster.id}))
        .into(),
        E::InsecureUrl { .. } => KnError::new(
            ErrorCode::Unavailable,
            format!("the manager's external URL is not usable as a token issuer: {e}; set --external-url to the manager's https:// URL"),
        )
        .into(),
        _ => match e.code() {
            ErrorCode::Validation => ApiError::new(ErrorCode::Validation, e.to_string()),
            ErrorCode::Conflict => KnError::conflict(e.to_string()).into(),
            code => {
                tracing::error!(error = %e, "kubeconfig issuance failed");
                ApiError::new(code, format!("kubeconfig issuance failed: {e}"))
            }
        },
    }
}

/// Validated Capsule Proxy CAs per cluster. A cluster's reported CA changes rarely, so
/// issuances check and base64-encode it once per change ([`ProxyCa`]) instead of once per
/// kubeconfig. An entry answers only while the cluster still reports the very same
/// `caData`; a changed CA is validated again.
#[derive(Debug, Default)]
pub struct ProxyCaCache(std::sync::Mutex<std::collections::HashMap<ClusterId, (String, ProxyCa)>>);

/// Entries kept before the cache starts over (one per cluster issued for).
const MAX_CACHED_PROXY_CAS: usize = 4096;

impl ProxyCaCache {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<ClusterId, (String, ProxyCa)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cluster's CA from its reported `caData` (base64 of the PEM, or the PEM).
    pub fn get(&self, cluster: ClusterId, ca_data: &str) -> kubenova_kubeconfig::Result<ProxyCa> {
        if let Some((raw, ca)) = self.lock().get(&cluster)
            && raw == ca_data
        {
            return Ok(ca.clone());
        }
        let ca = ProxyCa::from_ca_data(ca_data)?;
        let mut cached = self.lock();
        if cached.len() >= MAX_CACHED_PROXY_CAS {
            cached.clear();
        }
        cached.insert(cluster, (ca_data.to_owned(), ca.clone()));
        Ok(ca)
    }
}

fn issuer(st: &AppState) -> ApiResult<String> {
    st.config.issuer_url().ok_or_else(|| {
        KnError::unavailable(
            "external-url",
            "the manager has no external URL to put in tokens and exec kubeconfigs: set --external-url / KUBENOVA_EXTERNAL_URL",
        )
        .into()
    })
}

fn check_subject(subject: &str) -> ApiResult<()> {
    if subject.trim().is_empty() || subject.starts_with("system:") {
        return Err(ApiError::invalid(
            "subject",
            format!(
                "kubeconfigs are issued to the caller's token subject, and {subject:?} is empty or a reserved system: name"
            ),
        ));
    }
    Ok(())
}

/// The audit event of an issuance attempt.
fn issuance_audit(
    ctx: &Ctx,
    action: &str,
    kind: &str,
    id: String,
    status: u16,
    details: serde_json::Value,
) -> AuditEvent {
    let mut ev = ctx.audit(action, kind, id, status);
    ev.details = Some(details);
    ev
}

/// Refuses (KN-403, audited as denied) when the caller is a revoked subject of the tenant
/// (read now; the token paths check at commit instead, see [`commit_issuance`]).
async fn refuse_revoked(
    st: &AppState,
    ctx: &Ctx,
    tenant: &Tenant,
    action: &str,
) -> ApiResult<Option<Response>> {
    match st
        .store
        .subject_revocation(tenant.id, &ctx.principal.subject)
        .await?
    {
        Some(rev) => Ok(Some(
            revoked_response(st, ctx, tenant.id, action, &rev).await,
        )),
        None => Ok(None),
    }
}

/// The KN-403 answer to a revoked subject, after writing its denied audit event.
async fn revoked_response(
    st: &AppState,
    ctx: &Ctx,
    tenant: TenantId,
    action: &str,
    rev: &SubjectRevocation,
) -> Response {
    let mut ev = issuance_audit(
        ctx,
        action,
        "tenant",
        tenant.to_string(),
        403,
        json!({"subject": ctx.principal.subject, "tenantId": tenant, "reason": "subject revoked",
               "revokedAt": rev.revoked_at.unix_timestamp(), "revokedBy": rev.revoked_by}),
    );
    ev.outcome = AuditOutcome::Denied;
    if let Err(e) = st.store.append_audit(&ev).await {
        tracing::error!(error = %e, "could not write the audit event of a refused issuance");
    }
    let err: ApiError = KnError::new(
        ErrorCode::Forbidden,
        format!(
            "the credentials of {:?} for tenant {} were revoked (by {:?}); no new kubeconfig or token is issued until a tenant owner or admin lifts it (POST /api/v1/tenants/{}/revoked-subjects:lift)",
            ctx.principal.subject, tenant, rev.revoked_by, tenant
        ),
    )
    .with_details(json!({"subject": ctx.principal.subject, "tenantId": tenant,
                         "revokedAt": rev.revoked_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()}))
    .into();
    let mut resp = err.into_response();
    resp.extensions_mut().insert(Audited);
    resp
}

/// Records an issuance (credential row + audit event, group commit) and checks, in the
/// same transaction, that the tenant and project still exist and the subject is not
/// revoked. `Ok(None)`: recorded, the token may be signed and handed out; `Ok(Some)`: the
/// refusal to send instead (nothing was recorded, no token is signed).
async fn commit_issuance(
    st: &AppState,
    ctx: &Ctx,
    action: &str,
    record: IssuedCredential,
    ev: AuditEvent,
) -> ApiResult<Option<Response>> {
    let (tenant, project) = (record.tenant_id, record.project_id);
    let outcome = st
        .runtime
        .credential_writer
        .record(Arc::clone(&st.store), record, ev)
        .await?;
    match outcome {
        CredentialOutcome::Recorded => Ok(None),
        CredentialOutcome::SubjectRevoked(rev) => {
            Ok(Some(revoked_response(st, ctx, tenant, action, &rev).await))
        }
        CredentialOutcome::TenantGone => Err(ApiError::not_found("tenant", tenant)),
        CredentialOutcome::ProjectGone => match project {
            Some(p) => Err(ApiError::not_found("project", p)),
            None => Err(ApiError::not_found("tenant", tenant)),
        },
        CredentialOutcome::NotEntitled => Err(ApiError::forbidden(
            "the owners or access entries that entitled this credential no longer name you or your groups with this role (they changed while it was issued); nothing was issued",
        )),
    }
}

/// The claims of a token about to be issued (nothing is signed yet): the caller's subject,
/// the scope group, then the caller's identity-provider groups that a token may carry
/// ([`kubenova_kubeconfig::carried_groups`]: never `system:` or `kubenova:`, bounded).
fn claims_for(
    st: &AppState,
    ctx: &Ctx,
    cluster: &Cluster,
    tenant: &Tenant,
    project: Option<&Project>,
    role: AccessRole,
    ttl: time::Duration,
) -> ApiResult<Claims> {
    let carried = kubenova_kubeconfig::carried_groups(&ctx.principal.groups);
    if carried.dropped > 0 {
        tracing::info!(subject = %ctx.principal.subject, carried = carried.groups.len(), left_out = carried.dropped,
            "groups of the caller left out of an issued token (reserved system:/kubenova: names, or beyond the bounds)");
    }
    let spec = TokenSpec {
        issuer: issuer(st)?,
        audience: cluster_audience(cluster.id),
        subject: ctx.principal.subject.clone(),
        tenant: tenant.name.clone(),
        project: project.map(|p| p.name.clone()),
        role,
        ttl,
        extra_groups: carried.groups,
    };
    Claims::new(&spec, OffsetDateTime::now_utc(), max_ttl(st))
        .map_err(|e| kubeconfig_error(e, cluster))
}

/// Signs recorded claims with the active key (the token is never logged).
async fn sign(st: &AppState, claims: &Claims, cluster: &Cluster) -> ApiResult<String> {
    let keys = signing_keys(st).await?;
    keys.issue(claims).map_err(|e| kubeconfig_error(e, cluster))
}

#[allow(clippy::too_many_arguments)]
fn credential_record(
    ctx: &Ctx,
    claims: &Claims,
    cluster: &Cluster,
    tenant: &Tenant,
    project: Option<&Project>,
    role: AccessRole,
    mode: CredentialMode,
    derived_from: Option<Vec<String>>,
) -> ApiResult<IssuedCredential> {
    let jti = Uuid::parse_str(&claims.jti)
        .map_err(|_| ApiError::from(KnError::internal("minted a token without a UUID jti")))?;
    Ok(IssuedCredential {
        jti,
        tenant_id: tenant.id,
        project_id: project.map(|p| p.id),
        cluster_id: cluster.id,
        subject: claims.sub.clone(),
        role,
        mode,
        issued_by: ctx.principal.subject.clone(),
        issued_at: OffsetDateTime::from_unix_timestamp(claims.iat)
            .unwrap_or_else(|_| OffsetDateTime::now_utc()),
        expires_at: claims.expires_at(),
        revoked_at: None,
        revoked_by: None,
        revoked_reason: None,
        derived_from,
    })
}

fn scope_details(
    ctx: &Ctx,
    cluster: &Cluster,
    tenant: &Tenant,
    project: Option<&Project>,
    role: AccessRole,
    mode: CredentialMode,
    ttl: time::Duration,
) -> serde_json::Value {
    json!({
        "issuedBy": ctx.principal.subject,
        "subject": ctx.principal.subject,
        "clusterId": cluster.id,
        "cluster": cluster.name,
        "tenantId": tenant.id,
        "tenant": tenant.name,
        "projectId": project.map(|p| p.id),
        "project": project.map(|p| p.name.clone()),
        "role": role.as_str(),
        "mode": mode.as_str(),
        "ttlSeconds": ttl.whole_seconds(),
    })
}

/// Adds to an issuance's audit details what it relied on: `derivedFrom` (the membership
/// keys of an issuance on derived rights) and the caller's groups the token carries
/// (`groupsCarried`, `groupsLeftOut`: counts; the names are the identity provider's).
fn basis_details(details: &mut serde_json::Value, ctx: &Ctx, derived: Option<&Vec<String>>) {
    if let Some(keys) = derived {
        details["derivedFrom"] = json!(keys);
    }
    if !ctx.principal.groups.is_empty() {
        let carried = kubenova_kubeconfig::carried_groups(&ctx.principal.groups);
        details["groupsCarried"] = json!(carried.groups.len());
        details["groupsLeftOut"] = json!(carried.dropped);
    }
}

/// The cluster's Capsule Proxy endpoint and CA as every issuance checks them; `Err` is the
/// KN error an issuance answers now.
fn proxy_for_issuance(
    st: &AppState,
    cluster: &Cluster,
) -> ApiResult<(kubenova_api::model::ProxyEndpoint, ProxyCa)> {
    // No endpoint, or an empty URL: not reported yet (before the CA is looked at).
    let Some(proxy) = cluster.proxy.clone().filter(|p| !p.url.trim().is_empty()) else {
        return Err(proxy_not_reported(cluster));
    };
    let proxy_ca = st
        .runtime
        .proxy_cas
        .get(cluster.id, proxy.ca_data.as_deref().unwrap_or_default())
        .map_err(|e| kubeconfig_error(e, cluster))?;
    Ok((proxy, proxy_ca))
}

/// Whether a kubeconfig for the cluster can be issued now: exactly the checks of an
/// issuance that do not depend on the caller or the tenant (the Capsule Proxy endpoint and
/// its CA, the issuer URL, the cluster entry of the kubeconfig). `Ok` is the proxy URL
/// issued kubeconfigs point at; `Err` is the KN error an issuance answers now.
pub(crate) fn issuance_readiness(st: &AppState, cluster: &Cluster) -> ApiResult<String> {
    let (proxy, proxy_ca) = proxy_for_issuance(st, cluster)?;
    let manager_url = issuer(st)?;
    // Placeholder scope (names that always pass): only the cluster's part is checked.
    let scope = "readiness".to_string();
    KubeconfigRequest {
        cluster_name: cluster.name.clone(),
        tenant: scope.clone(),
        project: None,
        role: AccessRole::Viewer,
        proxy_url: proxy.url.clone(),
        proxy_ca,
        namespace: scope.clone(),
        credential: Credential::Exec {
            manager_url,
            tenant: scope,
            project: None,
            role: AccessRole::Viewer,
        },
    }
    .build()
    .map_err(|e| kubeconfig_error(e, cluster))?;
    Ok(proxy.url)
}

/// Issues a tenant kubeconfig (`project` = `None`) or a project kubeconfig for the caller.
///
/// Authorizes, needs the cluster's reported Capsule Proxy endpoint and CA, records the
/// credential and the audit event (group commit, with the revocation and existence checks
/// in the same transaction), and only then signs the token (token mode); answers YAML or
/// JSON by `Accept`. A revoked subject gets KN-403 and no token is signed.
pub async fn issue(
    st: &AppState,
    ctx: &Ctx,
    headers: &HeaderMap,
    tenant: Tenant,
    project: Option<Project>,
    params: IssueParams,
) -> ApiResult<Response> {
    let project = project.as_ref();
    let basis = authorize(&ctx.principal, &tenant, project, params.role)?;
    check_subject(&ctx.principal.subject)?;
    let cluster = st.store.get_cluster(tenant.cluster_id).await?;
    let (proxy, proxy_ca) = proxy_for_issuance(st, &cluster)?;
    let manager_url = issuer(st)?;
    let namespace = match project {
        Some(p) => p.namespace.clone(),
        None => tenant.apps_namespace.clone(),
    };
    let request = KubeconfigRequest {
        cluster_name: cluster.name.clone(),
        tenant: tenant.name.clone(),
        project: project.map(|p| p.name.clone()),
        role: params.role,
        proxy_url: proxy.url.clone(),
        proxy_ca,
        namespace: namespace.clone(),
        credential: Credential::Exec {
            manager_url: manager_url.clone(),
            tenant: tenant.name.clone(),
            project: project.map(|p| p.name.clone()),
            role: params.role,
        },
    };
    // Validate the cluster entry before recording anything.
    let mut kubeconfig = request.build().map_err(|e| kubeconfig_error(e, &cluster))?;
    let mut details = scope_details(
        ctx,
        &cluster,
        &tenant,
        project,
        params.role,
        params.mode,
        params.ttl,
    );
    let status = 200;
    let claims = match params.mode {
        CredentialMode::Token => {
            let claims = claims_for(st, ctx, &cluster, &tenant, project, params.role, params.ttl)?;
            let derived =
                derived_from(st, &ctx.principal, basis, &tenant, project, params.role).await?;
            basis_details(&mut details, ctx, derived.as_ref());
            let record = credential_record(
                ctx,
                &claims,
                &cluster,
                &tenant,
                project,
                params.role,
                CredentialMode::Token,
                derived,
            )?;
            details["jti"] = json!(claims.jti);
            details["expiresAt"] = json!(claims.exp);
            let ev = issuance_audit(
                ctx,
                "kubeconfig.issue",
                "credential",
                claims.jti.clone(),
                status,
                details,
            );
            // Group commit: batched with concurrent issuances into one transaction; the
            // token is signed only once that transaction has recorded it.
            if let Some(refused) = commit_issuance(st, ctx, "kubeconfig.issue", record, ev).await? {
                return Ok(refused);
            }
            let token = sign(st, &claims, &cluster).await?;
            kubeconfig
                .set_token(&token)
                .map_err(|e| kubeconfig_error(e, &cluster))?;
            Some(claims)
        }
        CredentialMode::Exec => {
            // No token in the file: refuse a revoked subject now (each refresh is checked
            // again when the plugin asks for a token).
            if let Some(resp) = refuse_revoked(st, ctx, &tenant, "kubeconfig.issue").await? {
                return Ok(resp);
            }
            // The plugin asks the manager by id (stable, unambiguous); names stay in the entries.
            let exec = kubenova_kubeconfig::exec_config_for_cluster(
                &manager_url,
                &tenant.id.to_string(),
                project.map(|p| p.id.to_string()).as_deref(),
                params.role,
                Some(&cluster.id.to_string()),
            );
            for a in &mut kubeconfig.auth_infos {
                if let Some(info) = a.auth_info.as_mut() {
                    info.exec = Some(exec.clone());
                }
            }
            details["ttlSeconds"] = json!(null);
            basis_details(&mut details, ctx, None);
            let id = project
                .map(|p| p.id.to_string())
                .unwrap_or_else(|| tenant.id.to_string());
            let ev = issuance_audit(
                ctx,
                "kubeconfig.issue",
                if project.is_some() {
                    "project"
                } else {
                    "tenant"
                },
                id,
                status,
                details,
            );
            st.store.append_audit(&ev).await?;
            None
        }
    };
    let yaml = kubeconfig
        .to_yaml()
        .map_err(|e| kubeconfig_error(e, &cluster))?;
    let name = request.name();
    let mut resp = if wants_yaml(headers) {
        let mut r = (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/yaml")],
            yaml,
        )
            .into_response();
        if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}.yaml\"")) {
            r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
        }
        r
    } else {
        let body = IssuedKubeconfig {
            name,
            tenant_id: tenant.id,
            project_id: project.map(|p| p.id),
            cluster_id: cluster.id,
            role: params.role,
            mode: params.mode.as_str().to_string(),
            namespace,
            server: proxy.url.clone(),
            jti: claims.as_ref().map(|c| c.jti.clone()),
            expires_at: claims.as_ref().map(|c| c.expires_at()),
            kubeconfig: yaml,
        };
        // Sized for the embedded YAML (JSON escaping adds a little), so no regrowth.
        let mut bytes = Vec::with_capacity(body.kubeconfig.len() + 1024);
        match serde_json::to_writer(&mut bytes, &body) {
            Ok(()) => bytes_response(StatusCode::OK, bytes, None, None, false),
            Err(e) => {
                return Err(ApiError::new(
                    ErrorCode::Internal,
                    format!("kubeconfig issuance failed: {e}"),
                ));
            }
        }
    };
    if let Some(c) = &claims {
        if let Ok(v) = HeaderValue::from_str(&c.jti) {
            resp.headers_mut().insert(CREDENTIAL_ID_HEADER, v);
        }
        let exp = c
            .expires_at()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        if let Ok(v) = HeaderValue::from_str(&exp) {
            resp.headers_mut().insert(EXPIRES_AT_HEADER, v);
        }
    }
    no_store(&mut resp);
    resp.extensions_mut().insert(Audited);
    Ok(resp)
}

/// Loads a tenant by its raw path id (KN-400 / KN-404); no scope check (see [`authorize`]).
pub async fn tenant_by_id(st: &AppState, raw: &str) -> ApiResult<Tenant> {
    let id: TenantId = parse_id("tenant", raw)?;
    match st.store.get_tenant(id).await {
        Ok(t) => Ok(t),
        Err(StoreError::NotFound { .. }) => Err(ApiError::not_found("tenant", id)),
        Err(e) => Err(e.into()),
    }
}

// ---------------------------------------------------------------------------------
// Group commit of issuance records
// ---------------------------------------------------------------------------------

/// Most issuances written in one transaction.
pub const MAX_COMMIT_BATCH: usize = 64;

/// Most group-commit transactions in flight at once. One writer serializes the commits
/// (each waits for its fsync); a few in parallel overlap those waits.
pub const MAX_COMMIT_WRITERS: usize = 4;

/// Issuances waiting before a second (third, ...) writer starts. Below it, the running
/// writer takes them with its next batch: most of a commit's database work is per batch
/// (statement start, `BEGIN`/`COMMIT`, the WAL flush), so under load fewer, larger
/// batches cost the database less per issuance than many small ones in parallel.
pub const EXTRA_WRITER_BACKLOG: usize = 16;

struct CommitJob {
    store: Arc<dyn Store>,
    item: (IssuedCredential, AuditEvent),
    done: tokio::sync::oneshot::Sender<Result<CredentialOutcome, StoreError>>,
}

#[derive(Default)]
struct CommitQueue {
    jobs: std::collections::VecDeque<CommitJob>,
    /// Writer tasks draining the queue (at most [`MAX_COMMIT_WRITERS`]).
    running: usize,
}

/// Group commit of issued credentials and their audit events.
///
/// Each issuance queues its credential row and audit event and waits for the commit of
/// the transaction that carries them: nothing is acknowledged before it is durable. Up to
/// [`MAX_COMMIT_WRITERS`] writer tasks drain the queue (one, plus another whenever
/// [`EXTRA_WRITER_BACKLOG`] issuances are waiting): each takes what is queued (up to
/// [`MAX_COMMIT_BATCH`]), writes it with [`Store::record_credentials`] in one
/// transaction, answers every waiter, and repeats while issuances queued up during that
/// commit. There is no timer: a lone issuance is committed at once, and under load a
/// batch is whatever arrived while the other commits ran. If a batch fails, its items
/// are retried one by one, so each waiter gets the outcome of its own row (one bad row
/// cannot fail the others).
#[derive(Default)]
pub struct CredentialWriter {
    queue: std::sync::Mutex<CommitQueue>,
}

impl std::fmt::Debug for CredentialWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialWriter").finish_non_exhaustive()
    }
}

impl CredentialWriter {
    fn lock(&self) -> std::sync::MutexGuard<'_, CommitQueue> {
        match self.queue.lock() {
            Ok(q) => q,
            Err(p) => p.into_inner(),
        }
    }

    /// Records `credential` with its audit event; returns once the transaction holding
    /// them has committed, with what it did ([`CredentialOutcome`]: recorded, or refused
    /// by the checks made in that transaction), or with the error that prevented it.
    pub async fn record(
        self: &Arc<Self>,
        store: Arc<dyn Store>,
        credential: IssuedCredential,
        audit: AuditEvent,
    ) -> Result<CredentialOutcome, StoreError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        let start = {
            let mut q = self.lock();
            q.jobs.push_back(CommitJob {
                store,
                item: (credential, audit),
                done,
            });
            let start = q.running == 0
                || (q.running < MAX_COMMIT_WRITERS && q.jobs.len() >= EXTRA_WRITER_BACKLOG);
            if start {
                q.running += 1;
            }
            start
        };
        if start {
            // A task of its own: a client that goes away cannot cancel a commit that
            // other requests wait for.
            tokio::spawn(Arc::clone(self).drain());
        }
        wait.await.unwrap_or_else(|_| {
            Err(StoreError::Internal(
                "the credential writer stopped before confirming the write".into(),
            ))
        })
    }

    async fn drain(self: Arc<Self>) {
        // If this task ends early (runtime shutdown, panic), let the next issuance start a
        // new writer; when it was the last writer, queued waiters see their sender
        // dropped and get an error.
        struct Guard(Arc<CredentialWriter>, bool);
        impl Drop for Guard {
            fn drop(&mut self) {
                if !self.1 {
                    let mut q = self.0.lock();
                    q.running = q.running.saturating_sub(1);
                    if q.running == 0 {
                        q.jobs.clear();
                    }
                }
            }
        }
        let mut guard = Guard(Arc::clone(&self), false);
        loop {
            let batch: Vec<CommitJob> = {
                let mut q = self.lock();
                let Some(first) = q.jobs.pop_front() else {
                    q.running = q.running.saturating_sub(1);
                    guard.1 = true;
                    return;
                };
                let mut batch = vec![first];
                // One batch = one store (states built over different stores may share
                // nothing but this queue in tests).
                while batch.len() < MAX_COMMIT_BATCH
                    && q.jobs
                        .front()
                        .is_some_and(|j| Arc::ptr_eq(&j.store, &batch[0].store))
                {
                    if let Some(j) = q.jobs.pop_front() {
                        batch.push(j);
                    }
                }
                batch
            };
            let store = Arc::clone(&batch[0].store);
            let (items, dones): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|j| (j.item, j.done)).unzip();
            match store.record_credentials(&items).await {
                Ok(outcomes) if outcomes.len() == dones.len() => {
                    for (d, o) in dones.into_iter().zip(outcomes) {
                        let _ = d.send(Ok(o));
                    }
                }
                Ok(outcomes) => {
                    tracing::error!(
                        batch = items.len(),
                        answers = outcomes.len(),
                        "the store answered a group commit with the wrong number of outcomes"
                    );
                    for d in dones {
                        let _ = d.send(Err(StoreError::Internal(
                            "the store answered a group commit with the wrong number of outcomes"
                                .into(),
                        )));
                    }
                }
                Err(e) if items.len() == 1 => {
                    if let Some(d) = dones.into_iter().next() {
                        let _ = d.send(Err(e));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, batch = items.len(), "a group commit of issued credentials failed; retrying its items one by one");
                    for (item, d) in items.into_iter().zip(dones) {
                        let res = store
                            .record_credentials(std::slice::from_ref(&item))
                            .await
                            .and_then(|mut o| {
                                o.pop().ok_or_else(|| {
                                    StoreError::Internal(
                                        "the store answered a commit without an outcome".into(),
                                    )
                                })
                            });
                        let _ = d.send(res);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------

/// Routes of this module (the kubeconfig routes themselves live with tenants and projects).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(exec_token))
        .routes(routes!(list_credentials, revoke_credentials))
        .routes(routes!(list_revoked_subjects))
        .routes(routes!(lift_revoked_subject))
        .routes(routes!(rotate_keys))
        .routes(routes!(openid_configuration))
        .routes(routes!(jwks))
}

const EXEC_CREDENTIAL_EXAMPLE: &str = r#"{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
 "status": {"token": "eyJhbGciOiJFUzI1NiIsImtpZCI6Ii4uLiIsInR5cCI6IkpXVCJ9...", "expirationTimestamp": "2026-11-26T10:15:00Z"}}"#;

/// A fresh short-lived token for the `kubenova auth token` exec plugin.
///
/// Authenticated by the user's manager token; the same rules as kubeconfig issuance
/// apply (role per scope, revoked subjects refused, deleted tenants KN-404). Each call
/// records a credential (`mode: exec`) and an audit event.
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenantID}/token",
    tag = "kubeconfigs",
    operation_id = "issueExecToken",
    params(("tenantID" = String, Path, description = "Tenant id (UUID)")),
    request_body(content = TokenBody, example = json!({"role": "viewer"})),
    responses(
        (status = 200, description = "A client.authentication.k8s.io/v1 ExecCredential (Cache-Control: no-store)", body = Object,
            example = json!(serde_json::from_str::<serde_json::Value>(EXEC_CREDENTIAL_EXAMPLE).unwrap_or_default())),
        (status = 400, description = "An id is not a UUID", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "tenant id \"abc\" is not a UUID"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "Role not allowed for the caller, or the subject is revoked", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "readOnly may obtain only viewer kubeconfigs, not owner"})),
        (status = 404, description = "No such tenant or project, or outside the caller's scope", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "tenant \"22222222-2222-2222-2222-222222222222\" not found"})),
        (status = 415, description = "The body is not sent as application/json", body = ErrorBody,
            example = json!({"code": "KN-415", "message": "expected Content-Type: application/json, got \"none\""})),
        (status = 422, description = "Unknown role, TTL out of range", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: role: unknown role \"admin\": use owner, developer or viewer"})),
    ),
    security(("bearerAuth" = []))
)]
async fn exec_token(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(t): Path<String>,
    KnJson(body): KnJson<TokenBody>,
) -> ApiResult<Response> {
    let tenant = tenant_by_id(&st, &t).await?;
    let mut v = Validator::new();
    let role = parse_role(&mut v, body.role.as_deref());
    let default =
        time::Duration::try_from(st.config.exec_token_ttl).unwrap_or(time::Duration::minutes(15));
    let ttl = parse_ttl(&mut v, body.ttl.as_ref(), default, max_ttl(&st));
    let project_id: Option<ProjectId> = match body.project.as_deref() {
        Some(raw) => match raw.parse() {
            Ok(id) => Some(id),
            Err(_) => {
                v.push("project", format!("{raw:?} is not a project id (UUID)"));
                None
            }
        },
        None => None,
    };
    let cluster_id: Option<ClusterId> = match body.cluster.as_deref() {
        Some(raw) => match raw.parse() {
            Ok(id) => Some(id),
            Err(_) => {
                v.push("cluster", format!("{raw:?} is not a cluster id (UUID)"));
                None
            }
        },
        None => None,
    };
    v.finish()?;
    if cluster_id.is_some_and(|c| c != tenant.cluster_id) {
        return Err(ApiError::not_found("tenant", tenant.id));
    }
    let project = match project_id {
        Some(pid) => match st.store.get_project(pid).await {
            Ok(p) if p.tenant_id == tenant.id => Some(p),
            Ok(_) | Err(StoreError::NotFound { .. }) => {
                return Err(ApiError::not_found("project", pid));
            }
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    let basis = authorize(&ctx.principal, &tenant, project.as_ref(), role)?;
    check_subject(&ctx.principal.subject)?;
    let cluster = st.store.get_cluster(tenant.cluster_id).await?;
    let claims = claims_for(&st, &ctx, &cluster, &tenant, project.as_ref(), role, ttl)?;
    let derived = derived_from(&st, &ctx.principal, basis, &tenant, project.as_ref(), role).await?;
    let mut details = scope_details(
        &ctx,
        &cluster,
        &tenant,
        project.as_ref(),
        role,
        CredentialMode::Exec,
        ttl,
    );
    basis_details(&mut details, &ctx, derived.as_ref());
    let record = credential_record(
        &ctx,
        &claims,
        &cluster,
        &tenant,
        project.as_ref(),
        role,
        CredentialMode::Exec,
        derived,
    )?;
    details["jti"] = json!(claims.jti);
    details["expiresAt"] = json!(claims.exp);
    let ev = issuance_audit(
        &ctx,
        "kubeconfig.token.issue",
        "credential",
        claims.jti.clone(),
        200,
        details,
    );
    // Recorded (and the revocation checked) before anything is signed.
    if let Some(refused) = commit_issuance(&st, &ctx, "kubeconfig.token.issue", record, ev).await? {
        return Ok(refused);
    }
    let token = sign(&st, &claims, &cluster).await?;
    let cred = ExecCredential::for_token(token, &claims);
    let mut resp = json_response(StatusCode::OK, &cred, None, None, true);
    no_store(&mut resp);
    Ok(resp)
}

/// An issued credential as listed (metadata only, never the token).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialView {
    /// `jti` of the token.
    pub jti: Uuid,
    /// Tenant.
    pub tenant_id: TenantId,
    /// Project, for project-scoped credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_id: Option<ProjectId>,
    /// Cluster (the token's audience).
    pub cluster_id: ClusterId,
    /// `sub` of the token.
    pub subject: String,
    /// Role.
    pub role: AccessRole,
    /// `token` (downloaded kubeconfig) or `exec` (refresh by `kubenova auth token`).
    pub mode: String,
    /// Who asked for it.
    pub issued_by: String,
    /// Issue time.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub issued_at: OffsetDateTime,
    /// Expiry.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
    /// Revocation time.
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<OffsetDateTime>,
    /// Who revoked it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_by: Option<String>,
    /// Why, when it was not revoked through the API: `membership removed` (the owners or
    /// access entries it was issued on no longer entitle it), `tenant deleted`,
    /// `project deleted`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_reason: Option<String>,
    /// Issued on rights derived from the model: the membership keys it relies on
    /// (`user:<subject>`, `group:<group>`); absent when issued on a token role.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub derived_from: Option<Vec<String>>,
    /// `active`, `expired` or `revoked`.
    pub state: String,
}

impl From<IssuedCredential> for CredentialView {
    fn from(c: IssuedCredential) -> Self {
        let state = if c.revoked_at.is_some() {
            "revoked"
        } else if c.expires_at <= OffsetDateTime::now_utc() {
            "expired"
        } else {
            "active"
        };
        Self {
            jti: c.jti,
            tenant_id: c.tenant_id,
            project_id: c.project_id,
            cluster_id: c.cluster_id,
            subject: c.subject,
            role: c.role,
            mode: c.mode.as_str().to_string(),
            issued_by: c.issued_by,
            issued_at: c.issued_at,
            expires_at: c.expires_at,
            revoked_at: c.revoked_at,
            revoked_by: c.revoked_by,
            revoked_reason: c.revoked_reason,
            derived_from: c.derived_from,
            state: state.to_string(),
        }
    }
}

/// A page of issued credentials.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialList {
    /// Credentials in issue order.
    pub items: Vec<CredentialView>,
    /// Cursor of the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// `?subject=&limit=&cursor=` of the credential list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CredentialListQuery {
    /// Only this subject's credentials.
    pub subject: Option<String>,
    /// Page size (default 100, max 500).
    pub limit: Option<u32>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

/// `?jti=` or `?subject=` of a revocation (neither: all of the tenant's).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeQuery {
    /// Only this credential.
    pub jti: Option<String>,
    /// All of this subject's credentials, and refuse it new ones.
    pub subject: Option<String>,
}

/// Reading a tenant's credentials: tenant-level read scope (as for the tenant itself).
fn check_read(p: &Principal, tenant: &Tenant) -> ApiResult<()> {
    p.check_tenant(tenant, super::authz::Access::Read)
}

/// Revoking and lifting: admin, ops, or the tenant's owner (a `tenantOwner` token scoped
/// to it, or named in its `owners`, directly or by a group); readOnly in scope KN-403;
/// others KN-404.
fn check_revoke(p: &Principal, tenant: &Tenant) -> ApiResult<()> {
    if p.is_platform() || p.owns_tenant(tenant.id) {
        return Ok(());
    }
    if p.sees_tenant(tenant.id) {
        return Err(ApiError::forbidden(
            "revoking credentials needs admin, ops or the tenant's owner",
        ));
    }
    Err(ApiError::not_found("tenant", tenant.id))
}

const CREDENTIAL_EXAMPLE: &str = r#"{"jti": "01936f4e-8a2b-7c3d-9e4f-5a6b7c8d9e0f", "tenantId": "22222222-2222-2222-2222-222222222222",
 "clusterId": "11111111-1111-1111-1111-111111111111", "subject": "alice@example.com", "role": "owner", "mode": "token",
 "issuedBy": "alice@example.com", "issuedAt": "2026-01-01T10:00:00Z", "expiresAt": "2026-01-01T11:00:00Z", "state": "active"}"#;

fn credential_example() -> serde_json::Value {
    serde_json::from_str(CREDENTIAL_EXAMPLE).unwrap_or_default()
}

/// Lists a tenant's issued credentials (metadata only; never a token).
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenantID}/credentials",
    tag = "kubeconfigs",
    operation_id = "listCredentials",
    params(("tenantID" = String, Path, description = "Tenant id (UUID)"), CredentialListQuery),
    responses(
        (status = 200, description = "A page of credentials in issue order", body = CredentialList,
            example = json!({"items": [credential_example()], "nextCursor": null})),
        (status = 400, description = "The id is not a UUID", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "tenant id \"abc\" is not a UUID"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 404, description = "No such tenant, or outside the caller's scope", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "tenant \"22222222-2222-2222-2222-222222222222\" not found"})),
        (status = 422, description = "Bad limit or cursor", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: limit: must be at most 500 (got 501)"})),
    ),
    security(("bearerAuth" = []))
)]
async fn list_credentials(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(t): Path<String>,
    uri: Uri,
) -> ApiResult<Response> {
    let tenant = tenant_by_id(&st, &t).await?;
    check_read(&ctx.principal, &tenant)?;
    let f: CredentialListQuery = query(&uri)?;
    let params = kubenova_store::ListParams {
        limit: f.limit,
        cursor: f.cursor,
    };
    params.page_size()?;
    let page = st
        .store
        .list_credentials(
            tenant.id,
            &CredentialQuery {
                subject: f.subject,
                page: params,
            },
        )
        .await?;
    let list = CredentialList {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    };
    Ok(json_response(StatusCode::OK, &list, None, None, false))
}

/// Outcome of a revocation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevocationResult {
    /// `credential`, `subject` or `tenant`.
    pub scope: String,
    /// Credentials newly marked revoked.
    pub revoked: u64,
    /// The revoked credential.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<Uuid>,
    /// The revoked subject (also refused new credentials until lifted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// Revokes a tenant's credentials: one (`?jti=`), all of a subject's (`?subject=`, which
/// also refuses the subject new credentials until lifted), or, without a filter, all of
/// the tenant's.
///
/// Downloaded tokens are verified offline by the API server until their `exp`; revocation
/// stops exec refreshes and new issuance at once, so access ends within one TTL.
#[utoipa::path(
    delete,
    path = "/api/v1/tenants/{tenantID}/credentials",
    tag = "kubeconfigs",
    operation_id = "revokeCredentials",
    params(("tenantID" = String, Path, description = "Tenant id (UUID)"),
        ("jti" = Option<String>, Query, description = "Revoke only this credential"),
        ("subject" = Option<String>, Query, description = "Revoke all of this subject's credentials and refuse it new ones")),
    responses(
        (status = 200, description = "What was revoked", body = RevocationResult,
            example = json!({"scope": "subject", "revoked": 2, "subject": "alice@example.com"})),
        (status = 400, description = "An id is not a UUID", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "tenant id \"abc\" is not a UUID"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "Only admin, ops and the tenant's owner revoke", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "revoking credentials needs admin, ops or the tenant's owner"})),
        (status = 404, description = "No such tenant or credential, or outside the caller's scope", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "credential \"01936f4e-8a2b-7c3d-9e4f-5a6b7c8d9e0f\" not found"})),
        (status = 422, description = "Both jti and subject, or an empty subject", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: jti: name either jti or subject, not both"})),
    ),
    security(("bearerAuth" = []))
)]
async fn revoke_credentials(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(t): Path<String>,
    uri: Uri,
) -> ApiResult<Response> {
    let tenant = tenant_by_id(&st, &t).await?;
    check_revoke(&ctx.principal, &tenant)?;
    let f: RevokeQuery = query(&uri)?;
    let mut v = Validator::new();
    if f.jti.is_some() && f.subject.is_some() {
        v.push("jti", "name either jti or subject, not both");
    }
    if f.subject.as_deref().is_some_and(|s| s.trim().is_empty()) {
        v.push("subject", "must not be empty");
    }
    let jti = match f.jti.as_deref() {
        Some(raw) => match Uuid::parse_str(raw) {
            Ok(u) => Some(u),
            Err(_) => {
                v.push("jti", format!("{raw:?} is not a credential id (UUID)"));
                None
            }
        },
        None => None,
    };
    v.finish()?;
    let now = OffsetDateTime::now_utc();
    let by = ctx.principal.subject.clone();
    let (result, audit_id, kind) = if let Some(jti) = jti {
        let cred = match st.store.get_credential(jti).await {
            Ok(c) if c.tenant_id == tenant.id => c,
            Ok(_) | Err(StoreError::NotFound { .. }) => {
                return Err(ApiError::not_found("credential", jti));
            }
            Err(e) => return Err(e.into()),
        };
        let ev = issuance_audit(
            &ctx,
            "credential.revoke",
            "credential",
            jti.to_string(),
            200,
            json!({"tenantId": tenant.id, "subject": cred.subject, "jti": jti}),
        );
        let changed = st
            .store
            .revoke_credential(
                jti,
                &by,
                now,
                &WriteOptions {
                    audit: Some(&ev),
                    idempotency: None,
                },
            )
            .await?;
        (
            RevocationResult {
                scope: "credential".into(),
                revoked: u64::from(changed),
                jti: Some(jti),
                subject: None,
            },
            jti.to_string(),
            "credential",
        )
    } else if let Some(subject) = f.subject.clone() {
        let ev = issuance_audit(
            &ctx,
            "credential.revoke-subject",
            "tenant",
            tenant.id.to_string(),
            200,
            json!({"tenantId": tenant.id, "subject": subject}),
        );
        let n = st
            .store
            .revoke_subject(
                tenant.id,
                &subject,
                &by,
                ctx.principal.is_platform(),
                now,
                &WriteOptions {
                    audit: Some(&ev),
                    idempotency: None,
                },
            )
            .await?;
        (
            RevocationResult {
                scope: "subject".into(),
                revoked: n,
                jti: None,
                subject: Some(subject),
            },
            tenant.id.to_string(),
            "tenant",
        )
    } else {
        let ev = issuance_audit(
            &ctx,
            "credential.revoke-tenant",
            "tenant",
            tenant.id.to_string(),
            200,
            json!({"tenantId": tenant.id}),
        );
        let n = st
            .store
            .revoke_tenant_credentials(
                tenant.id,
                &by,
                now,
                &WriteOptions {
                    audit: Some(&ev),
                    idempotency: None,
                },
            )
            .await?;
        (
            RevocationResult {
                scope: "tenant".into(),
                revoked: n,
                jti: None,
                subject: None,
            },
            tenant.id.to_string(),
            "tenant",
        )
    };
    tracing::info!(scope = %result.scope, revoked = result.revoked, kind, id = %audit_id, "credentials revoked");
    Ok(json_response(StatusCode::OK, &result, None, None, true))
}

/// A subject revocation as listed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevokedSubject {
    /// The subject.
    pub subject: String,
    /// Since when.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub revoked_at: OffsetDateTime,
    /// Who revoked it.
    pub revoked_by: String,
    /// True when admin or ops revoked it: only admin or ops may lift it.
    pub revoked_by_platform: bool,
}

impl From<SubjectRevocation> for RevokedSubject {
    fn from(r: SubjectRevocation) -> Self {
        Self {
            subject: r.subject,
            revoked_at: r.revoked_at,
            revoked_by: r.revoked_by,
            revoked_by_platform: r.revoked_by_platform,
        }
    }
}

/// A page of revoked subjects.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevokedSubjectList {
    /// Revoked subjects by name.
    pub items: Vec<RevokedSubject>,
    /// Cursor of the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Lists the subjects refused new credentials of a tenant.
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenantID}/revoked-subjects",
    tag = "kubeconfigs",
    operation_id = "listRevokedSubjects",
    params(("tenantID" = String, Path, description = "Tenant id (UUID)"), super::extract::ListQuery),
    responses(
        (status = 200, description = "A page of revoked subjects", body = RevokedSubjectList,
            example = json!({"items": [{"subject": "mallory@example.com", "revokedAt": "2026-01-01T10:00:00Z", "revokedBy": "alice@example.com", "revokedByPlatform": false}], "nextCursor": null})),
        (status = 400, description = "The id is not a UUID", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "tenant id \"abc\" is not a UUID"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 404, description = "No such tenant, or outside the caller's scope", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "tenant \"22222222-2222-2222-2222-222222222222\" not found"})),
        (status = 422, description = "Bad limit or cursor", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: limit: must be at least 1"})),
    ),
    security(("bearerAuth" = []))
)]
async fn list_revoked_subjects(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(t): Path<String>,
    uri: Uri,
) -> ApiResult<Response> {
    let tenant = tenant_by_id(&st, &t).await?;
    check_read(&ctx.principal, &tenant)?;
    let params = list_params(&uri)?;
    let page = st
        .store
        .list_subject_revocations(tenant.id, &params)
        .await?;
    let list = RevokedSubjectList {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    };
    Ok(json_response(StatusCode::OK, &list, None, None, false))
}

/// `POST …/revoked-subjects:lift` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"subject": "mallory@example.com"}))]
pub struct LiftBody {
    /// The subject to allow again.
    pub subject: String,
}

/// Lifts a subject revocation: the subject may obtain credentials of the tenant again
/// (revoked credentials stay revoked).
///
/// Admin, ops and the tenant's owner lift, with two exceptions (KN-403, audited as
/// denied): nobody lifts a revocation of their own subject, and a revocation made by admin
/// or ops is lifted only by admin or ops.
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenantID}/revoked-subjects:lift",
    tag = "kubeconfigs",
    operation_id = "liftSubjectRevocation",
    params(("tenantID" = String, Path, description = "Tenant id (UUID)")),
    request_body(content = LiftBody, example = json!({"subject": "mallory@example.com"})),
    responses(
        (status = 200, description = "Whether a revocation was lifted", body = Object,
            example = json!({"subject": "mallory@example.com", "lifted": true})),
        (status = 400, description = "The id is not a UUID", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "tenant id \"abc\" is not a UUID"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "Only admin, ops and the tenant's owner; nobody lifts their own subject's revocation; a revocation by admin or ops is lifted only by admin or ops", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "the revocation of \"mallory@example.com\" was made by admin or ops (\"ops@example.com\"); only admin or ops may lift it"})),
        (status = 404, description = "No such tenant, or outside the caller's scope", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "tenant \"22222222-2222-2222-2222-222222222222\" not found"})),
        (status = 415, description = "The body is not sent as application/json", body = ErrorBody,
            example = json!({"code": "KN-415", "message": "expected Content-Type: application/json, got \"none\""})),
        (status = 422, description = "The body does not name a subject", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: body: missing field `subject` at line 1 column 2"})),
    ),
    security(("bearerAuth" = []))
)]
async fn lift_revoked_subject(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(t): Path<String>,
    KnJson(body): KnJson<LiftBody>,
) -> ApiResult<Response> {
    let tenant = tenant_by_id(&st, &t).await?;
    check_revoke(&ctx.principal, &tenant)?;
    if body.subject.trim().is_empty() {
        return Err(ApiError::invalid("subject", "must not be empty"));
    }
    if body.subject == ctx.principal.subject {
        return Ok(refuse_lift(
            &st,
            &ctx,
            &tenant,
            &body.subject,
            "own subject",
            format!(
                "{:?} may not lift a revocation of its own subject: another tenant owner, admin or ops decides",
                body.subject
            ),
        )
        .await);
    }
    let ev = issuance_audit(
        &ctx,
        "credential.lift-subject",
        "tenant",
        tenant.id.to_string(),
        200,
        json!({"tenantId": tenant.id, "subject": body.subject}),
    );
    let outcome = st
        .store
        .lift_subject_revocation(
            tenant.id,
            &body.subject,
            ctx.principal.is_platform(),
            &WriteOptions {
                audit: Some(&ev),
                idempotency: None,
            },
        )
        .await?;
    let lifted = match outcome {
        LiftOutcome::Lifted => true,
        LiftOutcome::NotRevoked => false,
        LiftOutcome::PlatformRevocation(rev) => {
            return Ok(refuse_lift(
                &st,
                &ctx,
                &tenant,
                &body.subject,
                "revoked by admin or ops",
                format!(
                    "the revocation of {:?} was made by admin or ops ({:?}); only admin or ops may lift it",
                    body.subject, rev.revoked_by
                ),
            )
            .await);
        }
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({"subject": body.subject, "lifted": lifted}),
        None,
        None,
        lifted,
    ))
}

/// The KN-403 answer to a lift the rules forbid, after writing its denied audit event
/// (`reason` goes into the event's details).
async fn refuse_lift(
    st: &AppState,
    ctx: &Ctx,
    tenant: &Tenant,
    subject: &str,
    reason: &str,
    message: String,
) -> Response {
    let mut ev = issuance_audit(
        ctx,
        "credential.lift-subject",
        "tenant",
        tenant.id.to_string(),
        403,
        json!({"tenantId": tenant.id, "subject": subject, "reason": reason}),
    );
    ev.outcome = AuditOutcome::Denied;
    if let Err(e) = st.store.append_audit(&ev).await {
        st.runtime.audit_failures.inc();
        tracing::error!(error = %e, "could not write the audit event of a refused lift");
    }
    tracing::warn!(actor = %ctx.principal.subject, %subject, tenant_id = %tenant.id, reason, "lift of a subject revocation refused");
    let mut resp = ApiError::forbidden(message).into_response();
    resp.extensions_mut().insert(Audited);
    resp
}

/// Rotates the kubeconfig signing keys with overlap (admin only).
#[utoipa::path(
    post,
    path = "/api/v1/signing-keys:rotate",
    tag = "kubeconfigs",
    operation_id = "rotateSigningKeys",
    responses(
        (status = 200, description = "The new active key; previous keys keep verifying until their tokens expire", body = SigningKeyRotation,
            example = json!({"activeKid": "Xb2…", "verifyingKids": ["a9F…"], "retiredKids": []})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "Admin only", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "this operation needs one of the roles admin"})),
        (status = 409, description = "Concurrent rotations kept changing the keys; this one changed nothing: retry", body = ErrorBody,
            example = json!({"code": "KN-409", "message": "the kubeconfig signing keys were changed by concurrent rotations 32 times while this rotation ran; nothing was changed by it, retry"})),
    ),
    security(("bearerAuth" = []))
)]
async fn rotate_keys(State(st): State<AppState>, ctx: Ctx) -> ApiResult<Response> {
    ctx.principal.require_any(&[Role::Admin])?;
    let report = rotate_signing_keys(st.store.as_ref(), rotation_overlap(&st.config)).await?;
    st.auth.kubeconfig_keys().invalidate();
    let mut ev = ctx.audit("signing-keys.rotate", "signing-keys", "kubeconfig", 200);
    ev.details = Some(json!(report));
    st.store.append_audit(&ev).await?;
    Ok(json_response(StatusCode::OK, &report, None, None, true))
}

/// The OIDC discovery document: issuer = the manager's external URL.
#[utoipa::path(
    get,
    path = "/.well-known/openid-configuration",
    tag = "kubeconfigs",
    operation_id = "getOpenIdConfiguration",
    responses(
        (status = 200, description = "Discovery document (public, no token)", body = Object,
            example = json!({"issuer": "https://kubenova.example.com", "jwks_uri": "https://kubenova.example.com/.well-known/jwks.json",
                "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["ES256"], "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "groups"]})),
        (status = 503, description = "No external URL configured", body = ErrorBody,
            example = json!({"code": "KN-503", "message": "the manager has no external URL to put in tokens and exec kubeconfigs: set --external-url / KUBENOVA_EXTERNAL_URL"})),
    )
)]
async fn openid_configuration(State(st): State<AppState>) -> ApiResult<Response> {
    let doc = kubenova_kubeconfig::openid_configuration(&issuer(&st)?);
    let mut resp = json_response(StatusCode::OK, &doc, None, None, false);
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    Ok(resp)
}

/// The JWK Set verifying the manager's tokens (active key first, then keys still in
/// their rotation overlap).
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "kubeconfigs",
    operation_id = "getJwks",
    responses(
        (status = 200, description = "JWK Set (public, no token)", body = Object,
            example = json!({"keys": [{"kty": "EC", "crv": "P-256", "x": "…", "y": "…", "kid": "…", "use": "sig", "alg": "ES256"}]})),
        (status = 503, description = "The store is unavailable", body = ErrorBody,
            example = json!({"code": "KN-503", "message": "the database is unavailable"})),
    )
)]
async fn jwks(State(st): State<AppState>) -> ApiResult<Response> {
    let keys = signing_keys(&st).await?;
    let mut resp = json_response(StatusCode::OK, &keys.jwks(), None, None, false);
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn yaml_negotiation() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
            m
        };
        assert!(wants_yaml(&h("application/yaml")));
        assert!(wants_yaml(&h("text/yaml; charset=utf-8")));
        assert!(wants_yaml(&h("application/yaml, application/json")));
        assert!(!wants_yaml(&h("application/json, application/yaml")));
        assert!(!wants_yaml(&h("*/*")));
        assert!(!wants_yaml(&HeaderMap::new()));
    }

    #[test]
    fn ttl_parsing() {
        let max = time::Duration::hours(24);
        let d = time::Duration::hours(1);
        let ok = |t: TtlInput| {
            let mut v = Validator::new();
            let r = parse_ttl(&mut v, Some(&t), d, max);
            v.finish().map(|_| r)
        };
        assert_eq!(
            ok(TtlInput::Text("30m".into())).unwrap(),
            time::Duration::minutes(30)
        );
        assert_eq!(
            ok(TtlInput::Seconds(90)).unwrap(),
            time::Duration::seconds(90)
        );
        for bad in [
            TtlInput::Text("0".into()),
            TtlInput::Text("-5m".into()),
            TtlInput::Text("25h".into()),
            TtlInput::Text("1y".into()),
            TtlInput::Seconds(0),
            TtlInput::Seconds(-1),
            TtlInput::Seconds(86401),
        ] {
            let e = ok(bad).unwrap_err();
            assert_eq!(e.violations[0].field, "ttl");
        }
    }

    #[test]
    fn proxy_ca_cache_follows_the_reported_ca() {
        use base64::Engine as _;
        let pem = include_str!("../../../../kubenova-kubeconfig/tests/fixtures/proxy-ca.pem");
        let b64 = base64::engine::general_purpose::STANDARD.encode(pem);
        let cache = ProxyCaCache::default();
        let (a, b) = (ClusterId::new(), ClusterId::new());
        let ca = cache.get(a, &b64).unwrap();
        assert_eq!(ca.pem(), pem);
        assert_eq!(cache.get(a, &b64).unwrap(), ca);
        // Raw PEM for another cluster: the same CA.
        assert_eq!(cache.get(b, pem).unwrap(), ca);
        // The cluster reports a broken CA: refused, never answered from the old entry.
        assert!(matches!(
            cache.get(a, "bm90IGEgY2VydA=="),
            Err(kubenova_kubeconfig::Error::InvalidCa { .. })
        ));
        assert!(matches!(
            cache.get(a, ""),
            Err(kubenova_kubeconfig::Error::MissingCa(_))
        ));
        assert_eq!(cache.get(a, &b64).unwrap(), ca);
    }
}
