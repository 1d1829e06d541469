//! Tokens (`POST /api/v1/tokens`, admin only) and the current principal (`GET /api/v1/me`).
//!
//! A minted token is a credential: it is returned once and never stored or logged. The
//! audit event records its `jti`, subject, roles, scope and expiry. For the same reason a
//! token response is never kept as an idempotency record: retrying `POST /tokens` with the
//! same `Idempotency-Key` mints a new token.

use super::AppState;
use super::authz::{Principal, Role};
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

/// The authenticated caller: subject, roles and tenant/project scope.
#[utoipa::path(
    get,
    path = "/api/v1/me",
    tag = "auth",
    operation_id = "me",
    responses(
        (status = 200, description = "The caller", body = Principal,
            example = json!({"subject": "admin@example.com", "roles": ["admin"], "tenants": [], "projects": []})),
        (status = 401, description = "No or invalid bearer token", body = ErrorBody,
            example = json!({"code": "KN-401", "message": "the bearer token has expired"})),
    ),
    security(("bearerAuth" = []))
)]
async fn me(ctx: Ctx) -> axum::Json<Principal> {
    axum::Json(ctx.principal)
}
