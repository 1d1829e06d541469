//! Tokens (`POST /api/v1/tokens`, admin only) and the current principal (`GET /api/v1/me`).
//!
//! A minted token is a credential: it is returned once and never stored or logged. The
//! audit event records its `jti`, subject, roles, scope and expiry. For the same reason a
//! token response is never kept as an idempotency record: retrying `POST /tokens` with the
//! same `Idempotency-Key` mints a new token.

use super::AppState;
use super::authz::Role;
use super::error::ApiResult;
use super::extract::{Ctx, KnJson, json_response};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use kubenova_api::error::ErrorBody;
use kubenova_api::ids::{ProjectId, TenantId};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::Duration;
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// TTL of a minted token when the request gives none (bounded by the max TTL).
pub const DEFAULT_TOKEN_TTL_MINUTES: u64 = 60;

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_token))
        .routes(routes!(me))
}

/// A token to mint.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"subject": "alice@example.com", "roles": ["tenantOwner"],
    "tenants": ["22222222-2222-2222-2222-222222222222"], "ttlMinutes": 60}))]
pub struct TokenRequest {
    /// Subject (`sub`): who the token is for (1 to 253 characters, no control characters).
    pub subject: String,
    /// Roles: `admin`, `ops`, `tenantOwner`, `projectDev`, `readOnly`.
    #[serde(default)]
    pub roles: Vec<Role>,
    /// Tenant scope.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>, format = Uuid)]
    pub tenants: Vec<TenantId>,
    /// Project scope.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>, format = Uuid)]
    pub projects: Vec<ProjectId>,
    /// Lifetime in minutes (default 60, at most the configured max TTL, 1440 by default).
    #[serde(default)]
    pub ttl_minutes: Option<u64>,
}

/// A minted token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9...", "expiresAt": "2026-01-01T01:00:00Z"}))]
pub struct TokenResponse {
    /// The bearer token (shown once; store it safely).
    pub token: String,
    /// Expiry.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
}

impl TokenRequest {
    fn validate(
        &self,
        max_ttl: Duration,
    ) -> Result<Duration, kubenova_api::validate::ValidationError> {
        let mut v = kubenova_api::validate::Validator::new();
        let s = self.subject.trim();
        if s.is_empty() {
            v.push("subject", "must not be empty");
        } else if self.subject.chars().count() > 253 {
            v.push("subject", "must be at most 253 characters");
        } else if self.subject.chars().any(char::is_control) || s != self.subject {
            v.push(
                "subject",
                "must not contain control characters or surrounding spaces",
            );
        }
        v.max_items("tenants", &self.tenants, 100);
        v.max_items("projects", &self.projects, 100);
        let max_min = max_ttl.as_secs() / 60;
        let ttl_min = self
            .ttl_minutes
            .unwrap_or(DEFAULT_TOKEN_TTL_MINUTES.min(max_min));
        if ttl_min == 0 {
            v.push("ttlMinutes", "must be at least 1");
        } else if ttl_min > max_min {
            v.push(
                "ttlMinutes",
                format!("must be at most {max_min} (the configured maximum token TTL)"),
            );
        }
        v.finish()?;
        Ok(Duration::from_secs(ttl_min * 60))
    }
}

/// Mints a bearer token (admin only). The token is returned once and never stored.
#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    tag = "auth",
    operation_id = "createToken",
    request_body(content = TokenRequest, example = json!({"subject": "admin@example.com", "roles": ["admin"], "ttlMinutes": 60})),
    responses(
        (status = 201, description = "Token issued", body = TokenResponse,
            example = json!({"token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9...", "expiresAt": "2026-01-01T01:00:00Z"})),
        (status = 400, description = "Malformed JSON", body = ErrorBody,
            example = json!({"code": "KN-400", "message": "malformed JSON: expected value at line 1 column 1"})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "missing bearer token: send Authorization: Bearer <jwt>"})),
        (status = 403, description = "Only admin mints tokens", body = ErrorBody,
            example = json!({"code": "KN-403", "message": "this operation needs one of the roles admin"})),
        (status = 409, description = "This manager has no signing key", body = ErrorBody,
            example = json!({"code": "KN-409", "message": "this manager has no signing key (configure --jwt-es256-private-key) and cannot mint tokens"})),
        (status = 415, description = "Not JSON", body = ErrorBody,
            example = json!({"code": "KN-415", "message": "expected Content-Type: application/json, got \"none\""})),
        (status = 422, description = "Invalid subject, unknown role, or TTL over the maximum", body = ErrorBody,
            example = json!({"code": "KN-422", "message": "validation failed: ttlMinutes: must be at most 1440 (the configured maximum token TTL)",
                "details": {"violations": [{"field": "ttlMinutes", "reason": "must be at most 1440 (the configured maximum token TTL)"}]}})),
        (status = 429, description = "Rate limited", body = ErrorBody,
            example = json!({"code": "KN-429", "message": "rate limit per subject exceeded; retry in 1 s"})),
    ),
    security(("bearerAuth" = []))
)]
async fn create_token(
    State(st): State<AppState>,
    ctx: Ctx,
    KnJson(req): KnJson<TokenRequest>,
) -> ApiResult<Response> {
    ctx.principal.require_any(&[Role::Admin])?;
    let ttl = req.validate(st.auth.max_ttl().min(st.config.max_token_ttl))?;
    let minted = st
        .auth
        .mint(&req.subject, &req.roles, &req.tenants, &req.projects, ttl)?;
    let status = StatusCode::CREATED;
    let mut audit = ctx.audit("token.create", "token", &minted.jti, status.as_u16());
    audit.details = Some(json!({
        "subject": req.subject,
        "roles": req.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        "tenants": req.tenants,
        "projects": req.projects,
        "jti": minted.jti,
        "expiresAt": minted.expires_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
    }));
    st.store.append_audit(&audit).await?;
    let mut resp = json_response(
        status,
        &TokenResponse {
            token: minted.token,
            expires_at: minted.expires_at,
        },
        None,
        None,
        true,
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// A named resource in a grant.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NamedRef {
    /// Its id.
    #[schema(value_type = String, format = Uuid)]
    pub id: uuid::Uuid,
    /// Its name.
    pub name: String,
}

/// One thing the caller may use: a tenant (as its owner or within a token's scope) or a
/// project (by an access entry or a token's scope), with the names and the API path.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveGrant {
    /// `tenantOwner` (owner of the tenant and its projects), `owner`, `developer` or
    /// `viewer` (a project's access entry), `projectDev` or `readOnly` (a token's scope).
    pub role: String,
    /// Where it comes from: `owners` (the tenant's owners name the caller or a group),
    /// `access` (the project's access entries do), or `token` (the token's scope).
    pub source: String,
    /// The cluster.
    pub cluster: NamedRef,
    /// The tenant.
    pub tenant: NamedRef,
    /// The project, for a project grant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<NamedRef>,
    /// The resource's path under `/api/v1`.
    pub path: String,
}

/// The caller and everything they may use.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Me {
    /// The subject.
    pub subject: String,
    /// Platform roles (and, for a minted token, its scoped roles).
    pub roles: Vec<Role>,
    /// A minted token's tenant scope.
    pub tenants: Vec<TenantId>,
    /// A minted token's project scope.
    pub projects: Vec<ProjectId>,
    /// Groups, when signed in with an identity provider.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The identity provider that signed the caller in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The tenants and projects the caller may use, with names and paths (platform roles
    /// reach everything and are not listed here).
    pub grants: Vec<EffectiveGrant>,
}

/// The authenticated caller: subject, roles, groups and every tenant and project they may
/// use, with names and API paths.
#[utoipa::path(
    get,
    path = "/api/v1/me",
    tag = "auth",
    operation_id = "me",
    responses(
        (status = 200, description = "The caller", body = Me,
            example = json!({"subject": "alice@example.com", "roles": [], "tenants": [], "projects": [],
                "groups": ["acme-admins"], "issuer": "https://idp.example.com",
                "grants": [{"role": "tenantOwner", "source": "owners",
                    "cluster": {"id": "11111111-1111-1111-1111-111111111111", "name": "prod"},
                    "tenant": {"id": "22222222-2222-2222-2222-222222222222", "name": "acme"},
                    "path": "/api/v1/clusters/11111111-1111-1111-1111-111111111111/tenants/22222222-2222-2222-2222-222222222222"}]})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "the bearer token has expired"})),
    ),
    security(("bearerAuth" = []))
)]
async fn me(State(st): State<AppState>, ctx: Ctx) -> ApiResult<axum::Json<Me>> {
    let p = ctx.principal;
    let mut grants = Vec::new();
    // Tenants: owned by the model, then a token's scope.
    let mut tenants: Vec<(TenantId, &str, &str)> = p
        .grants
        .tenants
        .keys()
        .map(|t| (*t, "tenantOwner", "owners"))
        .collect();
    let token_tenant_role = if p.has(Role::TenantOwner) {
        "tenantOwner"
    } else {
        "readOnly"
    };
    for t in &p.tenants {
        if !tenants.iter().any(|(x, _, _)| x == t) {
            tenants.push((*t, token_tenant_role, "token"));
        }
    }
    for (id, role, source) in tenants {
        let Some((cluster, tenant)) = tenant_and_cluster(&st, id).await? else {
            continue;
        };
        grants.push(EffectiveGrant {
            role: role.into(),
            source: source.into(),
            path: format!("/api/v1/clusters/{}/tenants/{}", cluster.id, tenant.id),
            cluster,
            tenant,
            project: None,
        });
    }
    let mut projects: Vec<(ProjectId, String, &str)> = p
        .grants
        .projects
        .iter()
        .map(|(id, (_, _, role))| (*id, role.as_str().to_string(), "access"))
        .collect();
    let token_project_role = if p.has(Role::ProjectDev) {
        "projectDev"
    } else {
        "readOnly"
    };
    for id in &p.projects {
        if !projects.iter().any(|(x, _, _)| x == id) {
            projects.push((*id, token_project_role.to_string(), "token"));
        }
    }
    for (id, role, source) in projects {
        let Some(project) = found(st.store.get_project(id).await)? else {
            continue;
        };
        let Some((cluster, tenant)) = tenant_and_cluster(&st, project.tenant_id).await? else {
            continue;
        };
        grants.push(EffectiveGrant {
            role,
            source: source.into(),
            path: format!(
                "/api/v1/clusters/{}/tenants/{}/projects/{}",
                cluster.id, tenant.id, project.id
            ),
            cluster,
            tenant,
            project: Some(NamedRef {
                id: project.id.0,
                name: project.name,
            }),
        });
    }
    Ok(axum::Json(Me {
        subject: p.subject,
        roles: p.roles,
        tenants: p.tenants,
        projects: p.projects,
        groups: p.groups,
        issuer: p.issuer,
        grants,
    }))
}

/// A tenant and its cluster, named; `None` when the tenant is gone.
async fn tenant_and_cluster(
    st: &AppState,
    id: TenantId,
) -> ApiResult<Option<(NamedRef, NamedRef)>> {
    let Some(tenant) = found(st.store.get_tenant(id).await)? else {
        return Ok(None);
    };
    let Some(cluster) = found(st.store.get_cluster(tenant.cluster_id).await)? else {
        return Ok(None);
    };
    Ok(Some((
        NamedRef {
            id: cluster.id.0,
            name: cluster.name,
        },
        NamedRef {
            id: tenant.id.0,
            name: tenant.name,
        },
    )))
}

/// A record, or `None` when it is gone (a grant may name a record deleted since).
fn found<T>(res: Result<T, kubenova_store::StoreError>) -> ApiResult<Option<T>> {
    match res {
        Ok(v) => Ok(Some(v)),
        Err(kubenova_store::StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
