//! API keys: machine identities of a tenant or of one of its projects, with a name, a
//! description, a role, an expiry and a last-use time; listed and revoked under the tenant
//! (`/api/v1/tenants/{tenantID}/api-keys`, see `docs/src/identity.md`).
//!
//! **The key** is `knk_<key id, 32 hex digits>_<43 base64url characters>` (256 random
//! bits), returned once by the create call (`Cache-Control: no-store`, never kept as an
//! idempotency record, never logged). The store keeps only its SHA-256 ([`key_hash`]).
//!
//! **Verification** ([`authenticate`]): a bearer token starting with `knk_` is an API key
//! (the middleware sends it here before any JWT parsing). Its id is parsed out of it, the
//! key is read by primary key from the database on **every** request (no cache: a
//! revocation through any replica applies to the next request on every replica), its hash
//! compared in constant time, then its revocation and expiry checked. A key goes with its
//! tenant or project (the store deletes it with them). Every failure is KN-401 with a
//! reason that never contains the key; an unknown key and a wrong secret get the same one.
//!
//! **Rights** are [`Grants`], so the routes' existing checks apply unchanged: a tenant key
//! (always `owner`) owns its tenant like a person named in the tenant's `owners`; a project
//! key has its role (`owner`, `developer`, `viewer`) in its project like a person named in
//! the project's `access`. A key has no platform role and no token scope, and its subject
//! is `apikey:<tenant id>/<key name>`. Like people whose rights come from the model, keys
//! obtain kubeconfigs and exec tokens within their rights, and a tenant key revokes and
//! lifts the tenant's kubeconfig credentials (see [`super::kubeconfigs::authorize`]);
//! what a key obtains is not tied to the tenant's owners or access entries.
//!
//! **Managing keys**: admin, ops and the tenant's owner (a `tenantOwner` token of the
//! tenant, or named in its `owners`) create, list and revoke any key of the tenant; a
//! project's owner (an `owner:` access entry) those of the project; read-only callers of
//! the tenant list and read them. Nobody creates a key with more rights than their own,
//! and **an API key never creates API keys** (a leaked key cannot mint itself successors);
//! a key may list and revoke what its rights cover, itself included.
//!
//! **Last use** is recorded at most once per [`LAST_USED_EVERY`] per key and replica,
//! best effort: a failed write is logged and never fails the request.

use super::AppState;
use super::authz::Principal;
use super::clusters::{parse_id, query};
use super::error::{ApiError, ApiResult};
use super::extract::{Ctx, KnJson, json_response, no_store};
use super::kubeconfigs::tenant_by_id;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use base64::Engine as _;
use kubenova_api::ErrorBody;
use kubenova_api::identity::Grants;
use kubenova_api::ids::{ClusterId, ProjectId, TenantId};
use kubenova_api::model::{AccessRole, Tenant};
use kubenova_api::validate::Validator;
use kubenova_store::{ApiKey, ApiKeyQuery, ListParams, StoreError, WriteOptions};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;
use zeroize::Zeroizing;

/// Prefix of every API key.
pub const KEY_PREFIX: &str = "knk_";
/// Prefix of an API key's subject (`apikey:<tenant id>/<key name>`).
pub const SUBJECT_PREFIX: &str = "apikey:";
/// Lifetime of a key when the request gives none.
pub const DEFAULT_EXPIRY_DAYS: u32 = 90;
/// Longest lifetime of a key.
pub const MAX_EXPIRY_DAYS: u32 = 365;
/// Longest description.
pub const MAX_DESCRIPTION_LEN: usize = 1024;
/// How often a replica records a key's last use at most.
pub const LAST_USED_EVERY: Duration = Duration::from_secs(60);
/// Most keys whose last recorded use a replica remembers (beyond, it forgets them all and
/// records the next use of each again).
pub const LAST_USED_MAX: usize = 65_536;
/// Characters of the secret part of a key (32 bytes, base64url without padding).
const SECRET_LEN: usize = 43;

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_api_keys, create_api_key))
        .routes(routes!(get_api_key, revoke_api_key))
}

// ---------------------------------------------------------------------------------
// The key
// ---------------------------------------------------------------------------------

/// Mints a key for `id`: `knk_<id (simple)>_<43 base64url chars>` from 32 bytes of OS
/// randomness. Returns the key (a secret) and its SHA-256 ([`key_hash`]).
///
/// ```
/// use kubenova_manager::api::apikeys::{key_hash, key_id, mint_key};
/// let id = uuid::Uuid::now_v7();
/// let (key, hash) = mint_key(id);
/// assert!(key.starts_with("knk_"));
/// assert_eq!(key_id(&key), Some(id));
/// assert_eq!(key_hash(&key), hash);
/// ```
pub fn mint_key(id: Uuid) -> (Zeroizing<String>, [u8; 32]) {
    use rand::RngCore as _;
    let mut secret = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(secret.as_mut());
    let key = Zeroizing::new(format!(
        "{KEY_PREFIX}{}_{}",
        id.simple(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret.as_ref())
    ));
    let hash = key_hash(&key);
    (key, hash)
}

/// SHA-256 of a whole key (prefix, id and secret): what the store keeps.
pub fn key_hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The key id of a well-formed key (`None` for anything else).
///
/// ```
/// use kubenova_manager::api::apikeys::key_id;
/// assert_eq!(key_id("knk_0123"), None);
/// assert_eq!(key_id("eyJhbGciOiJIUzI1NiJ9.e30.x"), None);
/// ```
pub fn key_id(key: &str) -> Option<Uuid> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    if id.len() != 32
        || !id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        || secret.len() != SECRET_LEN
        || !secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    Uuid::try_parse(id).ok()
}

/// The API key of an `Authorization` header value: a Bearer token starting with `knk_`
/// (`None`: not an API key; the JWT verifier handles it).
pub fn presented(authorization: Option<&str>) -> Option<&str> {
    let (scheme, rest) = authorization?.trim().split_once(' ')?;
    let token = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && token.starts_with(KEY_PREFIX)).then_some(token)
}

/// The subject of a key's principal: `apikey:<tenant id>/<key name>`.
pub fn subject_of(tenant: TenantId, name: &str) -> String {
    format!("{SUBJECT_PREFIX}{tenant}/{name}")
}

/// What a key may do, as grants: a tenant key owns its tenant; a project key has its role
/// in its project.
pub fn grants_of(key: &ApiKey) -> Grants {
    let mut g = Grants::default();
    match key.project_id {
        None if key.role == AccessRole::Owner => {
            g.tenants.insert(key.tenant_id, key.cluster_id);
        }
        // Not created by the API (a tenant key is an owner key): grants nothing.
        None => {}
        Some(p) => {
            g.projects
                .insert(p, (key.cluster_id, key.tenant_id, key.role));
        }
    }
    g
}

const INVALID_KEY: &str = "the API key is not valid (unknown, or its tenant or project was deleted); \
     create a new one with POST /api/v1/tenants/{tenantID}/api-keys";

/// Verifies an API key (see the module documentation) and returns its principal. KN-401
/// on any failure; a store that cannot answer is its KN error (e.g. KN-503).
pub async fn authenticate(st: &AppState, key: &str) -> ApiResult<Principal> {
    let Some(id) = key_id(key) else {
        return Err(ApiError::unauthenticated(
            "the API key is malformed: expected knk_<32 hex digits>_<43 base64url characters>",
        ));
    };
    let stored = match st.store.get_api_key(id).await {
        Ok(k) => k,
        Err(StoreError::NotFound { .. }) => return Err(ApiError::unauthenticated(INVALID_KEY)),
        Err(e) => return Err(e.into()),
    };
    if !super::agent::constant_time_eq(&key_hash(key), &stored.secret_hash) {
        return Err(ApiError::unauthenticated(INVALID_KEY));
    }
    if let Some(at) = stored.revoked_at {
        return Err(ApiError::unauthenticated(format!(
            "the API key {:?} ({id}) was revoked at {}",
            stored.name,
            super::auth::rfc3339(at)
        )));
    }
    let now = OffsetDateTime::now_utc();
    if stored.expires_at <= now {
        return Err(ApiError::unauthenticated(format!(
            "the API key {:?} ({id}) expired at {}; create a new one",
            stored.name,
            super::auth::rfc3339(stored.expires_at)
        )));
    }
    if st.runtime.api_key_uses.due(id)
        && let Err(e) = st.store.touch_api_key(id, now).await
    {
        tracing::warn!(api_key = %id, error = %e, "could not record the last use of an API key");
    }
    Ok(Principal {
        subject: subject_of(stored.tenant_id, &stored.name),
        grants: grants_of(&stored),
        api_key: Some(id),
        ..Principal::default()
    })
}

/// When this replica last recorded each key's use (see [`LAST_USED_EVERY`]).
#[derive(Debug, Default)]
pub struct LastUsed {
    recorded: std::sync::Mutex<HashMap<Uuid, Instant>>,
}

impl LastUsed {
    /// Whether the use of `key` now is to be recorded (and, if so, notes it as recorded).
    pub fn due(&self, key: Uuid) -> bool {
        let now = Instant::now();
        let mut map = match self.recorded.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if map
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < LAST_USED_EVERY)
        {
            return false;
        }
        if map.len() >= LAST_USED_MAX {
            map.retain(|_, at| now.duration_since(*at) < LAST_USED_EVERY);
            if map.len() >= LAST_USED_MAX {
                map.clear();
            }
        }
        map.insert(key, now);
        true
    }
}

// ---------------------------------------------------------------------------------
// Who may
// ---------------------------------------------------------------------------------

/// The caller's rights over a tenant's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TenantLevel {
    /// Admin, ops, the tenant's owner: every key.
    Manage,
    /// Read-only callers of the tenant: read every key.
    Read,
    /// Nothing at tenant level (maybe some projects' keys, see [`owned_projects`]).
    None,
}

fn tenant_level(p: &Principal, tenant: &Tenant) -> TenantLevel {
    if p.is_platform() || p.owns_tenant(tenant.id) {
        TenantLevel::Manage
    } else if p.sees_tenant(tenant.id) {
        TenantLevel::Read
    } else {
        TenantLevel::None
    }
}

/// The projects of the tenant whose `access` names the caller as `owner:`.
fn owned_projects(p: &Principal, tenant: TenantId) -> Vec<ProjectId> {
    p.grants
        .projects
        .iter()
        .filter(|(_, (_, t, role))| *t == tenant && *role == AccessRole::Owner)
        .map(|(id, _)| *id)
        .collect()
}

/// May the caller see this key? (`false` → KN-404.)
fn sees_key(p: &Principal, tenant: &Tenant, key: &ApiKey) -> bool {
    tenant_level(p, tenant) != TenantLevel::None
        || key
            .project_id
            .is_some_and(|id| owned_projects(p, tenant.id).contains(&id))
}

/// May the caller revoke (or create) this key? Only after [`sees_key`].
fn manages_key(p: &Principal, tenant: &Tenant, project: Option<ProjectId>) -> bool {
    tenant_level(p, tenant) == TenantLevel::Manage
        || project.is_some_and(|id| owned_projects(p, tenant.id).contains(&id))
}

/// The caller sees nothing of the tenant's keys: KN-404 for the tenant.
fn check_any(p: &Principal, tenant: &Tenant) -> ApiResult<()> {
    if tenant_level(p, tenant) == TenantLevel::None && owned_projects(p, tenant.id).is_empty() {
        return Err(ApiError::not_found("tenant", tenant.id));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Wire types
// ---------------------------------------------------------------------------------

/// An API key to create.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeyRequest {
    /// Name: a DNS label (1 to 63 of `a-z`, `0-9`, `-`), unique in the tenant among the
    /// keys not revoked.
    pub name: String,
    /// Free text (at most 1024 characters, no control characters but newlines and tabs).
    #[serde(default)]
    pub description: String,
    /// For a project key: the project (of this tenant). Without it, a tenant key.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub project: Option<ProjectId>,
    /// `owner`, `developer` or `viewer` in the project; a tenant key is always `owner`.
    pub role: AccessRole,
    /// Lifetime in days (default 90, at most 365).
    #[serde(default)]
    pub expires_in_days: Option<u32>,
}

impl ApiKeyRequest {
    fn validate(&self) -> Result<u32, kubenova_api::validate::ValidationError> {
        let mut v = Validator::new();
        v.dns_label("name", &self.name);
        if self.description.chars().count() > MAX_DESCRIPTION_LEN {
            v.push(
                "description",
                format!("must be at most {MAX_DESCRIPTION_LEN} characters"),
            );
        } else if self
            .description
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            v.push(
                "description",
                "must not contain control characters (newlines and tabs are fine)",
            );
        }
        if self.project.is_none() && self.role != AccessRole::Owner {
            v.push(
                "role",
                "a tenant key is an owner key: give a developer or viewer key a project",
            );
        }
        let days = self.expires_in_days.unwrap_or(DEFAULT_EXPIRY_DAYS);
        if days == 0 {
            v.push("expiresInDays", "must be at least 1");
        } else if days > MAX_EXPIRY_DAYS {
            v.push(
                "expiresInDays",
                format!("must be at most {MAX_EXPIRY_DAYS}"),
            );
        }
        v.finish()?;
        Ok(days)
    }
}

/// An API key as listed (never the key itself).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyView {
    /// Key id (also the first part of the key).
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    /// The tenant.
    #[schema(value_type = String, format = Uuid)]
    pub tenant_id: TenantId,
    /// The tenant's cluster.
    #[schema(value_type = String, format = Uuid)]
    pub cluster_id: ClusterId,
    /// The project, for a project key.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub project_id: Option<ProjectId>,
    /// Name (unique in the tenant among the keys not revoked).
    pub name: String,
    /// Free text.
    pub description: String,
    /// Role in the tenant (tenant keys: `owner`) or the project.
    pub role: AccessRole,
    /// The subject requests made with the key have (audit actor, rate limits).
    pub subject: String,
    /// Who created it.
    pub created_by: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// When it stops working.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
    /// When it was last used (recorded at most about once a minute per manager replica).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<OffsetDateTime>,
    /// When it was revoked.
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<OffsetDateTime>,
    /// Who revoked it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_by: Option<String>,
    /// `active`, `expired` or `revoked`.
    pub state: String,
}

impl From<ApiKey> for ApiKeyView {
    fn from(k: ApiKey) -> Self {
        let state = if k.revoked_at.is_some() {
            "revoked"
        } else if k.expires_at <= OffsetDateTime::now_utc() {
            "expired"
        } else {
            "active"
        };
        Self {
            subject: subject_of(k.tenant_id, &k.name),
            id: k.id,
            tenant_id: k.tenant_id,
            cluster_id: k.cluster_id,
            project_id: k.project_id,
            name: k.name,
            description: k.description,
            role: k.role,
            created_by: k.created_by,
            created_at: k.created_at,
            expires_at: k.expires_at,
            last_used_at: k.last_used_at,
            revoked_at: k.revoked_at,
            revoked_by: k.revoked_by,
            state: state.to_string(),
        }
    }
}

/// A created API key: its record and the key, shown this once.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedApiKey {
    /// The key's record.
    pub api_key: ApiKeyView,
    /// The key: send it as `Authorization: Bearer knk_…`. Shown once; store it safely.
    pub key: String,
}

/// A page of API keys.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyList {
    /// Keys in creation order (revoked and expired ones included).
    pub items: Vec<ApiKeyView>,
    /// Cursor of the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// `?project=&limit=&cursor=` of the key list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyListQuery {
    /// Only this project's keys (UUID).
    pub project: Option<String>,
    /// Page size (default 100, max 500).
    pub limit: Option<u32>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

const API_KEY_EXAMPLE: &str = r#"{"id": "01936f4e-8a2b-7c3d-9e4f-5a6b7c8d9e0f", "tenantId": "22222222-2222-2222-2222-222222222222",
 "clusterId": "11111111-1111-1111-1111-111111111111", "projectId": "33333333-3333-3333-3333-333333333333", "name": "ci-deploy",
 "description": "deploys web from CI", "role": "developer",
 "subject": "apikey:22222222-2222-2222-2222-222222222222/ci-deploy", "createdBy": "alice@example.com",
 "createdAt": "2026-01-01T10:00:00Z", "expiresAt": "2026-04-01T10:00:00Z", "lastUsedAt": "2026-01-02T08:30:00Z", "state": "active"}"#;

fn api_key_example() -> serde_json::Value {
    serde_json::from_str(API_KEY_EXAMPLE).unwrap_or_default()
}

fn created_example() -> serde_json::Value {
    let mut k = api_key_example();
    k["lastUsedAt"] = serde_json::Value::Null;
    json!({"apiKey": k, "key": "knk_01936f4e8a2b7c3d9e4f5a6b7c8d9e0f_q3Jt…"})
}

/// The tenant's key `raw`, if the caller may see it (otherwise KN-404, as if it did not
/// exist).
async fn visible_key(
    st: &AppState,
    p: &Principal,
    tenant: &Tenant,
    raw: &str,
) -> ApiResult<ApiKey> {
    let id: Uuid = parse_id("API key", raw)?;
    match st.store.get_api_key(id).await {
        Ok(k) if k.tenant_id == tenant.id && sees_key(p, tenant, &k) => Ok(k),
        Ok(_) | Err(StoreError::NotFound { .. }) => Err(ApiError::not_found("apiKey", id)),
        Err(e) => Err(e.into()),
    }
}

// ---------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------

/// Creates an API key of the tenant, or of one of its projects. The key is returned once
/// and never stored (only its SHA-256); a retry with the same `Idempotency-Key` is not
/// replayed (the name is then taken: KN-409).
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenantID}/api-keys",
    tag = "auth",
    operation_id = "createApiKey",
    params(("tenantID" = String, Path, description = "Tenant id (UUID)")),
    request_body(content = ApiKeyRequest,
        example = json!({"name": "ci-deploy", "description": "deploys web from CI",
            "project": "33333333-3333-3333-3333-333333333333", "role": "developer", "expiresInDays": 90})),
    responses(
        (status = 201, description = "Created; the key is shown this once", body = CreatedApiKey,
            headers(("Location" = String, description = "URL of the key's record"),
                ("Cache-Control" = String, description = "no-store")),
            example = json!(created_example())),
        (status = 400, description = "Malformed JSON or a non-UUID id", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "tenant id \"abc\" is not a UUID"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "Not the tenant's or the project's owner, or an API key", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "API keys cannot create API keys; a person or a token creates them"})),
        (status = 404, description = "No such tenant or project, or outside the caller's scope", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "tenant \"22222222-2222-2222-2222-222222222222\" not found"})),
        (status = 409, description = "The tenant has a key of that name that is not revoked", body = ErrorBody,
            example = json!({"code": "KN-409", "message": "tenant 22222222-2222-2222-2222-222222222222 already has an API key named \"ci-deploy\" (revoke it first, or choose another name)"})),
        (status = 415, description = "Not JSON", body = ErrorBody,
            example = json!({"code": "KN-415", "message": "expected Content-Type: application/json, got \"none\""})),
        (status = 422, description = "Invalid name, description, role or lifetime", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: expiresInDays: must be at most 365",
                "details": {"violations": [{"field": "expiresInDays", "reason": "must be at most 365"}]}})),
    ),
    security(("bearerAuth" = []))
)]
async fn create_api_key(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(t): Path<String>,
    KnJson(req): KnJson<ApiKeyRequest>,
) -> ApiResult<Response> {
    let tenant = tenant_by_id(&st, &t).await?;
    let p = &ctx.principal;
    // What the caller sees: the project for a project key (a developer of it is told
    // KN-403, not KN-404), else the tenant's keys.
    if let Some(pid) = req.project {
        let project = match st.store.get_project(pid).await {
            Ok(project) if project.tenant_id == tenant.id => project,
            Ok(_) | Err(StoreError::NotFound { .. }) => {
                return Err(ApiError::not_found("project", pid));
            }
            Err(e) => return Err(e.into()),
        };
        if tenant_level(p, &tenant) == TenantLevel::None && !p.sees_project(&project) {
            return Err(ApiError::not_found("project", pid));
        }
    } else {
        check_any(p, &tenant)?;
    }
    if p.api_key.is_some() {
        return Err(ApiError::forbidden(
            "API keys cannot create API keys; a person or a token creates them",
        ));
    }
    if !manages_key(p, &tenant, req.project) {
        return Err(ApiError::forbidden(if req.project.is_some() {
            "creating a project's API key needs admin, ops, the tenant's owner or an owner: entry in the project's access"
        } else {
            "creating a tenant API key needs admin, ops or the tenant's owner"
        }));
    }
    let days = req.validate()?;
    let now = OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    let id = Uuid::now_v7();
    let (key, hash) = mint_key(id);
    let record = ApiKey {
        id,
        tenant_id: tenant.id,
        cluster_id: tenant.cluster_id,
        project_id: req.project,
        name: req.name,
        description: req.description,
        role: req.role,
        secret_hash: hash,
        created_by: p.subject.clone(),
        created_at: now,
        expires_at: now + time::Duration::days(i64::from(days)),
        last_used_at: None,
        revoked_at: None,
        revoked_by: None,
    };
    let status = StatusCode::CREATED;
    let mut audit = ctx.audit("apikey.create", "apiKey", id, status.as_u16());
    audit.details = Some(json!({
        "tenantId": tenant.id, "projectId": record.project_id, "name": record.name,
        "role": record.role, "subject": subject_of(tenant.id, &record.name),
        "expiresAt": super::auth::rfc3339(record.expires_at),
    }));
    // Never an idempotency record: the response holds the key.
    st.store
        .create_api_key(
            &record,
            &WriteOptions {
                audit: Some(&audit),
                idempotency: None,
            },
        )
        .await?;
    tracing::info!(api_key = %id, tenant_id = %tenant.id, name = %record.name, "API key created");
    let location = format!("/api/v1/tenants/{}/api-keys/{id}", tenant.id);
    let mut resp = json_response(
        status,
        &CreatedApiKey {
            api_key: record.into(),
            key: key.to_string(),
        },
        None,
        Some(location),
        true,
    );
    no_store(&mut resp);
    Ok(resp)
}

/// Lists a tenant's API keys (never a key itself): every key for admin, ops, the tenant's
/// owner and read-only callers of the tenant; a project owner's projects' keys otherwise.
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenantID}/api-keys",
    tag = "auth",
    operation_id = "listApiKeys",
    params(("tenantID" = String, Path, description = "Tenant id (UUID)"), ApiKeyListQuery),
    responses(
        (status = 200, description = "A page of keys in creation order", body = ApiKeyList,
            example = json!({"items": [api_key_example()], "nextCursor": null})),
        (status = 400, description = "An id is not a UUID, or an unknown parameter", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "tenant id \"abc\" is not a UUID"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 404, description = "No such tenant or project, or outside the caller's scope", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "tenant \"22222222-2222-2222-2222-222222222222\" not found"})),
        (status = 422, description = "Bad limit or cursor", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: limit: must be at most 500 (got 501)"})),
    ),
    security(("bearerAuth" = []))
)]
async fn list_api_keys(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(t): Path<String>,
    uri: Uri,
) -> ApiResult<Response> {
    let tenant = tenant_by_id(&st, &t).await?;
    let p = &ctx.principal;
    check_any(p, &tenant)?;
    let f: ApiKeyListQuery = query(&uri)?;
    let project: Option<ProjectId> = f
        .project
        .as_deref()
        .map(|raw| parse_id("project", raw))
        .transpose()?;
    let page = ListParams {
        limit: f.limit,
        cursor: f.cursor,
    };
    page.page_size()?;
    let projects = if tenant_level(p, &tenant) != TenantLevel::None {
        project.map(|id| vec![id])
    } else {
        let owned = owned_projects(p, tenant.id);
        match project {
            Some(id) if owned.contains(&id) => Some(vec![id]),
            Some(id) => return Err(ApiError::not_found("project", id)),
            None => Some(owned),
        }
    };
    let found = st
        .store
        .list_api_keys(tenant.id, &ApiKeyQuery { projects, page })
        .await?;
    let list = ApiKeyList {
        items: found.items.into_iter().map(Into::into).collect(),
        next_cursor: found.next_cursor,
    };
    Ok(json_response(StatusCode::OK, &list, None, None, false))
}

/// Reads one API key's record (never the key itself).
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenantID}/api-keys/{keyID}",
    tag = "auth",
    operation_id = "getApiKey",
    params(("tenantID" = String, Path, description = "Tenant id (UUID)"),
        ("keyID" = String, Path, description = "API key id (UUID)")),
    responses(
        (status = 200, description = "The key's record", body = ApiKeyView, example = json!(api_key_example())),
        (status = 400, description = "An id is not a UUID", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "API key id \"abc\" is not a UUID"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 404, description = "No such tenant or key, or outside the caller's scope", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "apiKey \"01936f4e-8a2b-7c3d-9e4f-5a6b7c8d9e0f\" not found"})),
    ),
    security(("bearerAuth" = []))
)]
async fn get_api_key(
    State(st): State<AppState>,
    ctx: Ctx,
    Path((t, k)): Path<(String, String)>,
) -> ApiResult<Response> {
    let tenant = tenant_by_id(&st, &t).await?;
    let p = &ctx.principal;
    check_any(p, &tenant)?;
    let key = visible_key(&st, p, &tenant, &k).await?;
    Ok(json_response(
        StatusCode::OK,
        &ApiKeyView::from(key),
        None,
        None,
        false,
    ))
}

/// Revokes an API key: it is refused (KN-401) from the next request on, on every manager
/// replica. Revoking a revoked key changes nothing and answers its record.
#[utoipa::path(
    delete,
    path = "/api/v1/tenants/{tenantID}/api-keys/{keyID}",
    tag = "auth",
    operation_id = "revokeApiKey",
    params(("tenantID" = String, Path, description = "Tenant id (UUID)"),
        ("keyID" = String, Path, description = "API key id (UUID)")),
    responses(
        (status = 200, description = "The revoked key's record", body = ApiKeyView,
            example = json!({"id": "01936f4e-8a2b-7c3d-9e4f-5a6b7c8d9e0f", "tenantId": "22222222-2222-2222-2222-222222222222",
                "clusterId": "11111111-1111-1111-1111-111111111111", "name": "ci", "description": "", "role": "owner",
                "subject": "apikey:22222222-2222-2222-2222-222222222222/ci", "createdBy": "alice@example.com",
                "createdAt": "2026-01-01T10:00:00Z", "expiresAt": "2026-04-01T10:00:00Z", "lastUsedAt": null,
                "revokedAt": "2026-01-03T09:00:00Z", "revokedBy": "alice@example.com", "state": "revoked"})),
        (status = 400, description = "An id is not a UUID", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "API key id \"abc\" is not a UUID"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "send a bearer token: Authorization: Bearer <jwt>"})),
        (status = 403, description = "Not the tenant's or the key's project's owner", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "revoking an API key needs admin, ops, the tenant's owner or an owner: entry in the key's project's access"})),
        (status = 404, description = "No such tenant or key, or outside the caller's scope", body = ErrorBody,
            example = json!({"code": "KN-404", "message": "apiKey \"01936f4e-8a2b-7c3d-9e4f-5a6b7c8d9e0f\" not found"})),
    ),
    security(("bearerAuth" = []))
)]
async fn revoke_api_key(
    State(st): State<AppState>,
    ctx: Ctx,
    Path((t, k)): Path<(String, String)>,
) -> ApiResult<Response> {
    let tenant = tenant_by_id(&st, &t).await?;
    let p = &ctx.principal;
    check_any(p, &tenant)?;
    let key = visible_key(&st, p, &tenant, &k).await?;
    if !manages_key(p, &tenant, key.project_id) {
        return Err(ApiError::forbidden(
            "revoking an API key needs admin, ops, the tenant's owner or an owner: entry in the key's project's access",
        ));
    }
    let now = OffsetDateTime::now_utc();
    let mut audit = ctx.audit("apikey.revoke", "apiKey", key.id, 200);
    audit.details = Some(json!({
        "tenantId": tenant.id, "projectId": key.project_id, "name": key.name,
        "subject": subject_of(tenant.id, &key.name),
    }));
    let changed = st
        .store
        .revoke_api_key(
            key.id,
            &p.subject,
            now,
            &WriteOptions {
                audit: Some(&audit),
                idempotency: None,
            },
        )
        .await?;
    if changed {
        tracing::info!(api_key = %key.id, tenant_id = %tenant.id, "API key revoked");
    } else {
        // Already revoked: nothing changed; the call is still audited.
        audit.details = Some(json!({
            "tenantId": tenant.id, "projectId": key.project_id, "name": key.name,
            "alreadyRevoked": true,
        }));
        st.store.append_audit(&audit).await?;
    }
    let current = match st.store.get_api_key(key.id).await {
        Ok(k) => k,
        Err(StoreError::NotFound { .. }) => return Err(ApiError::not_found("apiKey", key.id)),
        Err(e) => return Err(e.into()),
    };
    Ok(json_response(
        StatusCode::OK,
        &ApiKeyView::from(current),
        None,
        None,
        true,
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_parse_strictly() {
        let id = Uuid::now_v7();
        let (key, _) = mint_key(id);
        assert_eq!(key.len(), 4 + 32 + 1 + SECRET_LEN);
        assert_eq!(key_id(&key), Some(id));
        // Upper-case hex, a short or long secret, other characters: not a key.
        let upper = key.replacen(
            &id.simple().to_string(),
            &id.simple().to_string().to_uppercase(),
            1,
        );
        assert_eq!(key_id(&upper), None);
        assert_eq!(key_id(&key[..key.len() - 1]), None);
        assert_eq!(key_id(&format!("{}A", &*key)), None);
        assert_eq!(key_id(&format!("{}.", &key[..key.len() - 1])), None);
        assert_eq!(key_id(&key.replacen("knk_", "kna_", 1)), None);
        // Two keys of one id differ and hash differently.
        let (other, _) = mint_key(id);
        assert_ne!(*key, *other);
        assert_ne!(key_hash(&key), key_hash(&other));
    }

    #[test]
    fn only_bearer_keys_are_presented() {
        assert_eq!(presented(Some("Bearer knk_x")), Some("knk_x"));
        assert_eq!(presented(Some("bearer   knk_x ")), Some("knk_x"));
        assert_eq!(presented(Some("Bearer eyJ.x.y")), None);
        assert_eq!(presented(Some("Basic knk_x")), None);
        assert_eq!(presented(None), None);
    }

    #[test]
    fn uses_are_recorded_once_a_minute() {
        let seen = LastUsed::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert!(seen.due(a));
        assert!(!seen.due(a));
        assert!(seen.due(b));
    }
}
