//! RFC 8693 token exchange: a CI job trades the OIDC token its CI system gives it (GitHub
//! Actions, GitLab, Buildkite, ...) for a short-lived KubeNova token, under a trust policy
//! of the `--oidc-config` document. No long-lived secret lives in the CI system.
//!
//! `POST /api/v1/oauth/token` is unauthenticated, like an OAuth token endpoint: the subject
//! token is the credential. It takes `application/x-www-form-urlencoded` (RFC 8693 §2.1;
//! a JSON object of the same string parameters is accepted too) and answers RFC 8693
//! §2.2.1 (`access_token`, `issued_token_type`, `token_type`, `expires_in`) or an RFC 6749
//! §5.2 error (`error`, `error_description`) that is also a KN error (`code`, `message`,
//! `requestId`); every answer carries `Cache-Control: no-store`.
//!
//! ```yaml
//! tokenExchange:
//!   issuers:                           # CI providers: used for exchange only, never to sign in
//!     - issuer: https://token.actions.githubusercontent.com
//!   policies:
//!     - name: acme-web-deploy          # a-z, 0-9, '-' (at most 63)
//!       issuer: https://token.actions.githubusercontent.com
//!       audience: https://kubenova.example.com   # the subject token's aud must be this
//!       conditions:                    # every one must hold; '*' matches any characters
//!         repository: acme/web
//!         ref: refs/heads/*
//!       grant: {tenant: 2222..., project: 3333..., role: developer}
//!       ttl: 15m                       # default 15m, at most 1h
//! ```
//!
//! The grant maps onto the roles of minted tokens (`POST /api/v1/tokens`): a tenant's
//! `owner` is `tenantOwner` of that tenant, its `viewer` is `readOnly` scoped to it; a
//! project's `developer` is `projectDev` of that project, its `viewer` is `readOnly` scoped
//! to it. A tenant-wide `developer` and a project's `owner` have no such role and are
//! refused when the document is loaded, as are platform roles. The issued token's subject
//! is `exchange:<policy>:<the subject token's sub>`; it expires at the earliest of the
//! policy's `ttl`, the manager's maximum token TTL and the subject token's `exp`.

use super::AppState;
use super::authz::Role;
use super::error::ApiError;
use super::extract::SourceIp;
use super::oidc::{IssuerConfig, KeySource, OidcConfig};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kubenova_api::error::{ErrorBody, ErrorCode};
use kubenova_api::ids::{ProjectId, TenantId};
use kubenova_api::model::{AuditEvent, AuditOutcome};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The token endpoint.
pub const PATH: &str = "/api/v1/oauth/token";
/// The `grant_type` of token exchange.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// A JWT (RFC 8693 §3).
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// An OpenID Connect ID token.
pub const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
/// An OAuth access token (the default `issued_token_type`).
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// The largest accepted `subject_token`.
pub const MAX_SUBJECT_TOKEN: usize = 16 * 1024;
/// The largest accepted request body.
pub const MAX_BODY: usize = 32 * 1024;
/// A policy's `ttl` when it gives none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15 * 60);
/// The longest `ttl` a policy may give.
pub const MAX_TTL: Duration = Duration::from_secs(60 * 60);
/// The shortest `ttl` a policy may give.
pub const MIN_TTL: Duration = Duration::from_secs(60);
/// Most CI providers.
pub const MAX_EXCHANGE_ISSUERS: usize = 16;
/// Most policies.
pub const MAX_POLICIES: usize = 256;
/// Most conditions of one policy.
pub const MAX_CONDITIONS: usize = 32;
/// The prefix of every exchanged token's subject.
pub const SUBJECT_PREFIX: &str = "exchange:";
/// Claims the policy's `issuer` and `audience` and the token's validity already decide; a
/// condition on them is refused.
const RESERVED_CLAIMS: &[&str] = &["iss", "aud", "exp", "nbf", "iat", "jti"];

// ---- configuration ----------------------------------------------------------------------

/// The `tokenExchange` section of the `--oidc-config` document.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenExchangeConfig {
    /// The CI providers whose tokens may be exchanged. They are trusted for exchange only:
    /// their tokens never authenticate as bearer tokens.
    #[serde(default)]
    pub issuers: Vec<ExchangeIssuerConfig>,
    /// The trust policies.
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
}

/// A CI provider.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExchangeIssuerConfig {
    /// The issuer URL, exactly as its tokens' `iss` (e.g.
    /// `https://token.actions.githubusercontent.com`); keys by OIDC discovery.
    pub issuer: String,
    /// Its JWKS as a local file instead of discovery (read once at start).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
}

/// A trust policy: which CI tokens may get which grant.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyConfig {
    /// Its name (lower-case letters, digits and `-`, at most 63): named by a request's
    /// `audience` or `scope`, and in the issued token's subject.
    #[serde(default)]
    pub name: String,
    /// The CI provider (one of `tokenExchange.issuers`).
    #[serde(default)]
    pub issuer: String,
    /// The `aud` the subject token must carry.
    #[serde(default)]
    pub audience: String,
    /// Claim name → value the claim must have: exact, or a pattern where `*` matches any
    /// run of characters (`repo:acme/web:ref:refs/heads/*`). Every condition must hold; at
    /// least one is required.
    #[serde(default)]
    pub conditions: BTreeMap<String, String>,
    /// What the issued token may do.
    #[serde(default)]
    pub grant: Option<GrantConfig>,
    /// The issued token's lifetime (`15m` by default, at most `1h`).
    #[serde(default)]
    pub ttl: Option<String>,
}

/// A policy's grant: one tenant, or one project of it, with a role.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrantConfig {
    /// The tenant's id.
    #[serde(default)]
    pub tenant: String,
    /// A project's id (of that tenant); without it the grant is tenant-wide.
    #[serde(default)]
    pub project: Option<String>,
    /// `owner` or `viewer` of the tenant; `developer` or `viewer` of the project.
    #[serde(default)]
    pub role: String,
}

/// The role a grant gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantRole {
    /// Owner of the tenant (`tenantOwner`).
    Owner,
    /// Developer of the project (`projectDev`).
    Developer,
    /// Viewer of the tenant or project (scoped `readOnly`).
    Viewer,
}

impl GrantRole {
    fn as_str(self) -> &'static str {
        match self {
            GrantRole::Owner => "owner",
            GrantRole::Developer => "developer",
            GrantRole::Viewer => "viewer",
        }
    }
}

/// A checked grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The tenant.
    pub tenant: TenantId,
    /// The project, for a project grant.
    pub project: Option<ProjectId>,
    /// The role.
    pub role: GrantRole,
}

impl Grant {
    /// The issued token's roles, tenants and projects.
    pub fn token_scope(&self) -> (Vec<Role>, Vec<TenantId>, Vec<ProjectId>) {
        match (self.project, self.role) {
            (None, GrantRole::Owner) => (vec![Role::TenantOwner], vec![self.tenant], vec![]),
            (Some(p), GrantRole::Developer) => (vec![Role::ProjectDev], vec![], vec![p]),
            (Some(p), _) => (vec![Role::ReadOnly], vec![], vec![p]),
            (None, _) => (vec![Role::ReadOnly], vec![self.tenant], vec![]),
        }
    }
}

fn is_policy_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !n.starts_with('-')
        && !n.ends_with('-')
}

impl PolicyConfig {
    fn grant(&self, at: &str) -> Result<Grant, String> {
        let Some(g) = &self.grant else {
            return Err(format!(
                "{at}.grant is missing: give {{tenant: <id>, project: <id> (optional), role: owner|developer|viewer}}"
            ));
        };
        let tenant = g.tenant.trim().parse::<uuid::Uuid>().map_err(|_| {
            format!(
                "{at}.grant.tenant {:?} is not a tenant id (a UUID)",
                g.tenant
            )
        })?;
        let project = g
            .project
            .as_deref()
            .map(|p| {
                p.trim()
                    .parse::<uuid::Uuid>()
                    .map_err(|_| format!("{at}.grant.project {p:?} is not a project id (a UUID)"))
            })
            .transpose()?;
        let role = match g.role.as_str() {
            "owner" => GrantRole::Owner,
            "developer" => GrantRole::Developer,
            "viewer" => GrantRole::Viewer,
            r @ ("admin" | "ops" | "readOnly" | "tenantOwner" | "projectDev") => {
                return Err(format!(
                    "{at}.grant.role {r:?} is not allowed: token exchange grants only owner, developer or viewer of one tenant or project, never a platform role"
                ));
            }
            r => {
                return Err(format!(
                    "{at}.grant.role {r:?} is unknown: use owner, developer or viewer"
                ));
            }
        };
        match (project, role) {
            (None, GrantRole::Developer) => Err(format!(
                "{at}.grant.role developer needs grant.project: a tenant-wide grant is owner or viewer"
            )),
            (Some(_), GrantRole::Owner) => Err(format!(
                "{at}.grant.role owner of a project (changing the project and its access) cannot be carried by an exchanged token: use developer to deploy its apps, or owner without grant.project for the whole tenant"
            )),
            _ => Ok(Grant {
                tenant: TenantId::from(tenant),
                project: project.map(ProjectId::from),
                role,
            }),
        }
    }

    fn ttl(&self, at: &str) -> Result<Duration, String> {
        let Some(raw) = &self.ttl else {
            return Ok(DEFAULT_TTL);
        };
        let ttl = super::config::parse_duration(raw).map_err(|e| format!("{at}.ttl: {e}"))?;
        if ttl < MIN_TTL || ttl > MAX_TTL {
            return Err(format!(
                "{at}.ttl {raw:?} must be between 1m and 1h (an exchanged token is short-lived; the CI job exchanges again for more)"
            ));
        }
        Ok(ttl)
    }
}

impl TokenExchangeConfig {
    /// Checks the section against the identity providers of the same document: CI
    /// providers' URLs, and every policy (name, issuer, audience, conditions, grant, ttl).
    /// Errors name the policy and the field.
    pub fn check(&self, identity: &OidcConfig) -> Result<(), String> {
        self.compile(&identity.issuers).map(|_| ())
    }

    fn compile(&self, signin: &[IssuerConfig]) -> Result<Vec<Policy>, String> {
        if self.issuers.is_empty() {
            return Err("tokenExchange.issuers: list at least one CI provider".into());
        }
        if self.issuers.len() > MAX_EXCHANGE_ISSUERS {
            return Err(format!(
                "tokenExchange.issuers: at most {MAX_EXCHANGE_ISSUERS}"
            ));
        }
        for (i, is) in self.issuers.iter().enumerate() {
            let at = format!("tokenExchange.issuers[{i}]");
            super::oidc::check_issuer_url(&at, &is.issuer)?;
            if self.issuers[..i].iter().any(|o| o.issuer == is.issuer) {
                return Err(format!("{at}.issuer {:?} is listed twice", is.issuer));
            }
        }
        if self.policies.is_empty() {
            return Err("tokenExchange.policies: list at least one policy".into());
        }
        if self.policies.len() > MAX_POLICIES {
            return Err(format!("tokenExchange.policies: at most {MAX_POLICIES}"));
        }
        let mut out = Vec::with_capacity(self.policies.len());
        for (i, p) in self.policies.iter().enumerate() {
            let at = if p.name.is_empty() {
                format!("tokenExchange.policies[{i}]")
            } else {
                format!("tokenExchange.policies[{i}] ({:?})", p.name)
            };
            if !is_policy_name(&p.name) {
                return Err(format!(
                    "{at}.name {:?} must be 1 to 63 lower-case letters, digits and '-' (not at either end)",
                    p.name
                ));
            }
            if self.policies[..i].iter().any(|o| o.name == p.name) {
                return Err(format!("{at}.name {:?} is used twice", p.name));
            }
            if !self.issuers.iter().any(|is| is.issuer == p.issuer) {
                return Err(format!(
                    "{at}.issuer {:?} is not listed under tokenExchange.issuers",
                    p.issuer
                ));
            }
            let aud = p.audience.trim();
            if aud.is_empty() || aud != p.audience || aud.len() > 253 {
                return Err(format!(
                    "{at}.audience must be 1 to 253 characters without surrounding spaces: the aud the CI job requests its token for (e.g. the manager's URL)"
                ));
            }
            if let Some(signin) = signin
                .iter()
                .find(|s| s.issuer == p.issuer && s.audience == p.audience)
            {
                return Err(format!(
                    "{at}.audience {:?} is also the audience people sign in with from {:?} (issuers): a token for this policy would then authenticate directly; use another audience",
                    p.audience, signin.issuer
                ));
            }
            if p.conditions.is_empty() {
                return Err(format!(
                    "{at}.conditions is empty: a policy without conditions would trust every job of every user of {:?}; pin at least the repository or project (e.g. repository: acme/web)",
                    p.issuer
                ));
            }
            if p.conditions.len() > MAX_CONDITIONS {
                return Err(format!("{at}.conditions: at most {MAX_CONDITIONS}"));
            }
            let mut conditions = Vec::with_capacity(p.conditions.len());
            for (claim, value) in &p.conditions {
                if claim.trim().is_empty() || claim.len() > 253 {
                    return Err(format!(
                        "{at}.conditions: a claim name is empty or longer than 253 characters"
                    ));
                }
                if RESERVED_CLAIMS.contains(&claim.as_str()) {
                    return Err(format!(
                        "{at}.conditions.{claim}: the policy's issuer and audience and the token's validity decide {claim}; conditions name other claims"
                    ));
                }
                if value.is_empty() || value.len() > 1024 {
                    return Err(format!(
                        "{at}.conditions.{claim} must be 1 to 1024 characters"
                    ));
                }
                conditions.push((claim.clone(), value.clone()));
            }
            if conditions.iter().all(|(_, v)| v.chars().all(|c| c == '*')) {
                return Err(format!(
                    "{at}.conditions: every condition is only '*', which matches every token: pin at least one value"
                ));
            }
            out.push(Policy {
                name: p.name.clone(),
                issuer: p.issuer.clone(),
                audience: p.audience.clone(),
                conditions,
                grant: p.grant(&at)?,
                ttl: p.ttl(&at)?,
            });
        }
        Ok(out)
    }
}

/// A checked policy.
#[derive(Debug, Clone)]
struct Policy {
    name: String,
    issuer: String,
    audience: String,
    conditions: Vec<(String, String)>,
    grant: Grant,
    ttl: Duration,
}

/// Whether `value` matches `pattern`, where `*` matches any run of characters (also none)
/// and everything else itself.
///
/// ```
/// use kubenova_manager::api::exchange::glob_match;
/// assert!(glob_match("repo:acme/web:ref:refs/heads/*", "repo:acme/web:ref:refs/heads/main"));
/// assert!(!glob_match("repo:acme/web:ref:refs/heads/*", "repo:acme/web2:ref:refs/heads/main"));
/// assert!(glob_match("acme/web", "acme/web"));
/// assert!(!glob_match("acme/web", "acme/web2"));
/// assert!(glob_match("*/web", "acme/web"));
/// ```
pub fn glob_match(pattern: &str, value: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = value.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No '*': exact.
        return rest.is_empty();
    };
    for m in middle {
        match rest.find(m) {
            Some(i) => rest = &rest[i + m.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// A claim's value as conditions compare it: a string as is, a number or boolean as its
/// JSON text; anything else (absent, null, arrays, objects) matches nothing.
fn claim_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn aud_contains(aud: Option<&Value>, wanted: &str) -> bool {
    match aud {
        Some(Value::String(s)) => s == wanted,
        Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(wanted)),
        _ => false,
    }
}

// ---- runtime ----------------------------------------------------------------------------

/// Token exchange as configured: the CI providers' keys and the policies.
#[derive(Debug)]
pub struct TokenExchange {
    issuers: Vec<KeySource>,
    policies: Vec<Policy>,
}

impl TokenExchange {
    /// From a section checked against its document's identity providers (keys from files
    /// are read now; the others are fetched by the identity providers' refresher).
    pub fn new(cfg: TokenExchangeConfig, client: &reqwest::Client) -> Result<Self, String> {
        let policies = cfg.compile(&[])?;
        let issuers = cfg
            .issuers
            .into_iter()
            .map(|i| KeySource::new(&i.issuer, i.jwks_file, client.clone()))
            .collect::<Result<_, _>>()?;
        Ok(TokenExchange { issuers, policies })
    }

    /// The CI providers' key sources.
    pub fn key_sources(&self) -> impl Iterator<Item = &KeySource> {
        self.issuers.iter()
    }

    /// The policies' names, in order.
    pub fn policy_names(&self) -> Vec<&str> {
        self.policies.iter().map(|p| p.name.as_str()).collect()
    }

    fn issuer(&self, iss: &str) -> Option<&KeySource> {
        self.issuers.iter().find(|k| k.issuer() == iss)
    }
}

// ---- the endpoint -----------------------------------------------------------------------

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(token))
}

/// A token exchange request (RFC 8693 §2.1), form-encoded.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[schema(example = json!({
    "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
    "subject_token": "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ...",
    "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
    "audience": "acme-web-deploy"}))]
pub struct TokenExchangeRequest {
    /// `urn:ietf:params:oauth:grant-type:token-exchange`.
    pub grant_type: String,
    /// The CI system's OIDC token (a JWT, at most 16 KiB).
    pub subject_token: String,
    /// `urn:ietf:params:oauth:token-type:jwt` or `urn:ietf:params:oauth:token-type:id_token`.
    pub subject_token_type: String,
    /// The policy to use, by name (needed only when several policies accept the token).
    #[serde(default)]
    pub audience: Option<String>,
    /// The same as `audience` (one policy name); when both are given they must agree.
    #[serde(default)]
    pub scope: Option<String>,
    /// `urn:ietf:params:oauth:token-type:access_token` (the default) or
    /// `urn:ietf:params:oauth:token-type:jwt`.
    #[serde(default)]
    pub requested_token_type: Option<String>,
}

/// A successful exchange (RFC 8693 §2.2.1).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"access_token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9...",
    "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
    "token_type": "Bearer", "expires_in": 900}))]
pub struct TokenExchangeResponse {
    /// The KubeNova bearer token (a credential: shown once).
    pub access_token: String,
    /// `urn:ietf:params:oauth:token-type:access_token`, or `...:jwt` when requested.
    pub issued_token_type: String,
    /// `Bearer`.
    pub token_type: String,
    /// Seconds until it expires.
    pub expires_in: i64,
}

/// A refused exchange: an OAuth error (RFC 6749 §5.2) and a KN error in one body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"error": "invalid_grant",
    "error_description": "no token exchange policy accepts this token",
    "code": "KN-403", "message": "no token exchange policy accepts this token",
    "requestId": "9b2f0c9e-3c1c-4d0e-a1f4-1a2b3c4d5e6f"}))]
pub struct TokenErrorBody {
    /// `invalid_request`, `unsupported_grant_type`, `invalid_grant`, `invalid_target`,
    /// `invalid_scope`, `server_error` or `temporarily_unavailable`.
    #[serde(rename = "error")]
    pub error: String,
    /// What was wrong and how to fix it (the same as `message`).
    #[serde(rename = "error_description")]
    pub error_description: String,
    /// The KN code.
    pub code: ErrorCode,
    /// The same as `error_description`.
    pub message: String,
    /// The request id of the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// An exchange refused: the OAuth error and the KN code (whose status is the response's).
#[derive(Debug)]
struct Refusal {
    error: &'static str,
    code: ErrorCode,
    message: String,
}

impl Refusal {
    fn new(error: &'static str, code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            error,
            code,
            message: message.into(),
        }
    }
    fn request(message: impl Into<String>) -> Self {
        Self::new("invalid_request", ErrorCode::BadRequest, message)
    }
    fn grant(message: impl Into<String>) -> Self {
        Self::new("invalid_grant", ErrorCode::Unauthenticated, message)
    }
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        let error = match e.error.code {
            ErrorCode::Unavailable => "temporarily_unavailable",
            c if c.http_status() >= 500 => "server_error",
            ErrorCode::Unauthenticated => "invalid_grant",
            _ => "invalid_request",
        };
        Refusal {
            error,
            code: e.error.code,
            message: e.error.message,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = TokenErrorBody {
            error: self.error.into(),
            error_description: self.message.clone(),
            code: self.code,
            message: self.message,
            request_id: super::error::current_request_id(),
        };
        let mut resp = (status, axum::Json(body)).into_response();
        let h = resp.headers_mut();
        no_store(h);
        if status == StatusCode::UNAUTHORIZED {
            // RFC 9110: a 401 names a scheme; the subject token was refused.
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"kubenova\", error=\"invalid_token\""),
            );
        }
        if self.code == ErrorCode::Unavailable {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        resp
    }
}

fn no_store(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// The request's parameters, each at most once; empty values are treated as absent
/// (RFC 6749 §3.2).
#[derive(Debug, Default)]
struct Params(BTreeMap<String, String>);

impl Params {
    fn from_pairs(pairs: impl Iterator<Item = (String, String)>) -> Result<Params, Refusal> {
        let mut map = BTreeMap::new();
        for (k, v) in pairs {
            if v.is_empty() {
                continue;
            }
            if map.contains_key(&k) {
                return Err(Refusal::request(format!(
                    "the parameter {:?} is given more than once",
                    clip(&k, 64)
                )));
            }
            map.insert(k, v);
        }
        Ok(Params(map))
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    fn required(&self, k: &str) -> Result<&str, Refusal> {
        self.get(k)
            .ok_or_else(|| Refusal::request(format!("the parameter {k} is required")))
    }
}

fn clip(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

async fn params_of(headers: &HeaderMap, body: Body) -> Result<Params, Refusal> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let form = match mime.as_str() {
        "application/x-www-form-urlencoded" => true,
        "application/json" => false,
        _ => {
            return Err(Refusal::new(
                "invalid_request",
                ErrorCode::UnsupportedMediaType,
                format!(
                    "expected Content-Type: application/x-www-form-urlencoded (RFC 8693; application/json is accepted too), got {:?}",
                    clip(if ct.is_empty() { "none" } else { ct }, 100)
                ),
            ));
        }
    };
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        Refusal::new(
            "invalid_request",
            ErrorCode::PayloadTooLarge,
            format!("the request body exceeds {MAX_BODY} bytes"),
        )
    })?;
    if form {
        Params::from_pairs(
            form_urlencoded::parse(&bytes).map(|(k, v)| (k.into_owned(), v.into_owned())),
        )
    } else {
        let obj: serde_json::Map<String, Value> = serde_json::from_slice(&bytes).map_err(|e| {
            Refusal::request(format!(
                "the body is not a JSON object of string parameters: {e}"
            ))
        })?;
        let mut pairs = Vec::with_capacity(obj.len());
        for (k, v) in obj {
            match v {
                Value::String(s) => pairs.push((k, s)),
                Value::Null => {}
                _ => {
                    return Err(Refusal::request(format!(
                        "the parameter {:?} must be a string",
                        clip(&k, 64)
                    )));
                }
            }
        }
        Params::from_pairs(pairs.into_iter())
    }
}

/// The unverified claims of a compact JWT (to route it to its issuer, and, once its
/// signature verified, to name its subject in a refusal's audit event).
fn peek_claims(token: &str) -> Option<serde_json::Map<String, Value>> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&raw).ok()
}

fn str_claim(claims: &serde_json::Map<String, Value>, k: &str) -> String {
    claims
        .get(k)
        .and_then(Value::as_str)
        .map(|s| clip(s, 253))
        .unwrap_or_default()
}

/// What the audit of an exchange records (never a token).
#[derive(Debug, Default)]
struct Record {
    issuer: String,
    subject: String,
    policy: Option<String>,
    details: serde_json::Map<String, Value>,
}

/// Exchanges a CI system's OIDC token for a short-lived KubeNova token (RFC 8693).
///
/// Unauthenticated: the `subject_token` is the credential. It must be signed by a CI
/// provider of `tokenExchange` in the `--oidc-config` document, carry a policy's
/// `audience` and satisfy every one of its `conditions`; the issued token has the policy's
/// grant, the subject `exchange:<policy>:<sub>` and expires at the earliest of the
/// policy's `ttl` and the subject token's `exp`. Errors carry the OAuth `error` and the KN
/// `code`.
#[utoipa::path(
    post,
    path = "/api/v1/oauth/token",
    tag = "auth",
    operation_id = "exchangeToken",
    request_body(content(
        (TokenExchangeRequest = "application/x-www-form-urlencoded", example = json!({
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJpc3MiOiJodHRwczovL3Rva2VuLmFjdGlvbnMuZ2l0aHVidXNlcmNvbnRlbnQuY29tIn0.c2ln",
            "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
            "audience": "acme-web-deploy"})),
        (TokenExchangeRequest = "application/json", example = json!({
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJpc3MiOiJodHRwczovL3Rva2VuLmFjdGlvbnMuZ2l0aHVidXNlcmNvbnRlbnQuY29tIn0.c2ln",
            "subject_token_type": "urn:ietf:params:oauth:token-type:id_token"})),
    )),
    responses(
        (status = 200, description = "Token issued", body = TokenExchangeResponse,
            headers(("Cache-Control" = String, description = "no-store"))),
        (status = 400, description = "invalid_request (a parameter missing, repeated or unsupported), unsupported_grant_type (also when token exchange is not configured), invalid_scope, or invalid_target when several policies accept the token and the request names none", body = TokenErrorBody,
            example = json!({"error": "unsupported_grant_type", "error_description": "grant_type must be urn:ietf:params:oauth:grant-type:token-exchange",
                "code": "KN-400", "message": "grant_type must be urn:ietf:params:oauth:grant-type:token-exchange"})),
        (status = 401, description = "invalid_grant: the subject token is not one a trusted CI provider signed for a policy's audience, or has expired", body = TokenErrorBody,
            example = json!({"error": "invalid_grant", "error_description": "the subject_token has expired",
                "code": "KN-401", "message": "the subject_token has expired"})),
        (status = 403, description = "invalid_grant: no policy's conditions hold for the token; invalid_target: the policy named does not accept it", body = TokenErrorBody,
            example = json!({"error": "invalid_grant", "error_description": "no token exchange policy accepts this token",
                "code": "KN-403", "message": "no token exchange policy accepts this token"})),
        (status = 404, description = "invalid_target: the tenant or project the policy grants no longer exists", body = TokenErrorBody,
            example = json!({"error": "invalid_target", "error_description": "the tenant 22222222-2222-2222-2222-222222222222 that policy acme-web-deploy grants no longer exists",
                "code": "KN-404", "message": "the tenant 22222222-2222-2222-2222-222222222222 that policy acme-web-deploy grants no longer exists"})),
        (status = 413, description = "The body exceeds 32 KiB", body = ErrorBody,
            example = json!({"code": "KN-413", "message": "the request body exceeds 32768 bytes"})),
        (status = 415, description = "Not form-encoded (or JSON)", body = TokenErrorBody,
            example = json!({"error": "invalid_request", "error_description": "expected Content-Type: application/x-www-form-urlencoded (RFC 8693; application/json is accepted too), got \"text/plain\"",
                "code": "KN-415", "message": "expected Content-Type: application/x-www-form-urlencoded (RFC 8693; application/json is accepted too), got \"text/plain\""})),
        (status = 429, description = "Rate limited (per source IP)", body = ErrorBody,
            example = json!({"code": "KN-429", "message": "rate limit per source IP exceeded; retry in 1 s"})),
    ),
    security(())
)]
async fn token(
    State(st): State<AppState>,
    headers: HeaderMap,
    req: axum::extract::Request,
) -> Response {
    let source_ip = req
        .extensions()
        .get::<SourceIp>()
        .map(|s| s.0.clone())
        .unwrap_or_default();
    let mut rec = Record::default();
    let res = exchange(&st, &headers, req.into_body(), &source_ip, &mut rec).await;
    match res {
        Ok(resp) => resp,
        Err((refusal, verified)) => {
            if verified {
                audit_refusal(&st, &rec, &refusal, &source_ip).await;
            } else {
                tracing::debug!(error = refusal.error, reason = %refusal.message, source_ip = %source_ip, "token exchange refused");
            }
            refusal.into_response()
        }
    }
}

/// Refused: the refusal, and whether the subject token's signature had verified (then the
/// refusal is audited).
type Refused = (Refusal, bool);

async fn exchange(
    st: &AppState,
    headers: &HeaderMap,
    body: Body,
    source_ip: &str,
    rec: &mut Record,
) -> Result<Response, Refused> {
    let unverified = |r: Refusal| (r, false);
    let params = params_of(headers, body).await.map_err(unverified)?;
    let grant_type = params.required("grant_type").map_err(unverified)?;
    if grant_type != GRANT_TYPE {
        return Err(unverified(Refusal::new(
            "unsupported_grant_type",
            ErrorCode::BadRequest,
            format!("grant_type must be {GRANT_TYPE}"),
        )));
    }
    let Some(x) = st
        .auth
        .identity_providers()
        .and_then(|o| o.token_exchange())
        .cloned()
    else {
        return Err(unverified(Refusal::new(
            "unsupported_grant_type",
            ErrorCode::BadRequest,
            "token exchange is not configured on this manager (tokenExchange in the --oidc-config document)",
        )));
    };
    if params.get("actor_token").is_some() || params.get("actor_token_type").is_some() {
        return Err(unverified(Refusal::request(
            "delegation (actor_token) is not supported: send only the subject_token",
        )));
    }
    if params.get("resource").is_some() {
        return Err(unverified(Refusal::new(
            "invalid_target",
            ErrorCode::BadRequest,
            "resource is not supported: name the policy in audience (or scope)",
        )));
    }
    let subject_token = params.required("subject_token").map_err(unverified)?;
    if subject_token.len() > MAX_SUBJECT_TOKEN {
        return Err(unverified(Refusal::request(format!(
            "the subject_token is larger than {MAX_SUBJECT_TOKEN} bytes"
        ))));
    }
    let stt = params.required("subject_token_type").map_err(unverified)?;
    if stt != TOKEN_TYPE_JWT && stt != TOKEN_TYPE_ID_TOKEN {
        return Err(unverified(Refusal::request(format!(
            "subject_token_type must be {TOKEN_TYPE_JWT} or {TOKEN_TYPE_ID_TOKEN}"
        ))));
    }
    let issued_type = match params.get("requested_token_type") {
        None | Some(TOKEN_TYPE_ACCESS_TOKEN) => TOKEN_TYPE_ACCESS_TOKEN,
        Some(TOKEN_TYPE_JWT) => TOKEN_TYPE_JWT,
        Some(_) => {
            return Err(unverified(Refusal::request(format!(
                "requested_token_type must be {TOKEN_TYPE_ACCESS_TOKEN} (the default) or {TOKEN_TYPE_JWT}"
            ))));
        }
    };
    let scope = match params.get("scope").map(str::split_whitespace) {
        None => None,
        Some(mut words) => match (words.next(), words.next()) {
            (Some(one), None) => Some(one),
            _ => {
                return Err(unverified(Refusal::new(
                    "invalid_scope",
                    ErrorCode::BadRequest,
                    "scope names one token exchange policy",
                )));
            }
        },
    };
    let named = match (params.get("audience"), scope) {
        (Some(a), Some(s)) if a != s => {
            return Err(unverified(Refusal::new(
                "invalid_target",
                ErrorCode::BadRequest,
                "audience and scope name different policies: give one",
            )));
        }
        (a, s) => a.or(s),
    };

    // The subject token: routed by its unverified iss to a CI provider, then verified.
    let header = jsonwebtoken::decode_header(subject_token)
        .map_err(|_| unverified(Refusal::grant("the subject_token is not a well-formed JWT")))?;
    let iss = peek_claims(subject_token)
        .and_then(|c| c.get("iss").and_then(Value::as_str).map(str::to_string))
        .ok_or_else(|| unverified(Refusal::grant("the subject_token has no iss claim")))?;
    let Some(keys) = x.issuer(&iss) else {
        return Err(unverified(Refusal::grant(format!(
            "the subject_token's issuer {:?} is not trusted for token exchange",
            clip(&iss, 120)
        ))));
    };
    rec.issuer = iss.clone();
    let mut audiences: Vec<&str> = Vec::new();
    for p in x.policies.iter().filter(|p| p.issuer == iss) {
        if !audiences.contains(&p.audience.as_str()) {
            audiences.push(&p.audience);
        }
    }
    let mut decoded = st
        .auth
        .decode_provider_token(subject_token, &header, keys, &iss, &audiences);
    if matches!(decoded, Err((_, false))) && keys.key(header.kid.as_deref()).is_none() {
        // A key not seen yet: the provider rotated (fetched at most every REFRESH_MIN_GAP).
        keys.refresh().await;
        decoded = st
            .auth
            .decode_provider_token(subject_token, &header, keys, &iss, &audiences);
    }
    let claims = match decoded {
        Ok(c) => c,
        Err((e, verified)) => {
            if verified && let Some(c) = peek_claims(subject_token) {
                rec.subject = str_claim(&c, "sub");
            }
            let msg = e
                .error
                .message
                .replace("the bearer token", "the subject_token");
            return Err((Refusal::grant(msg), verified));
        }
    };
    let verified = |r: Refusal| (r, true);
    rec.subject = str_claim(&claims, "sub");
    let sub = match claims.get("sub") {
        Some(Value::String(s)) if !s.trim().is_empty() && !s.chars().any(char::is_control) => {
            s.clone()
        }
        _ => {
            return Err(verified(Refusal::grant(
                "the subject_token's sub claim is empty or holds control characters",
            )));
        }
    };

    // The policies: those of this issuer and audience whose every condition holds.
    let mut accepted: Vec<&Policy> = Vec::new();
    let mut mismatches = Vec::new();
    for p in x.policies.iter().filter(|p| p.issuer == iss) {
        if !aud_contains(claims.get("aud"), &p.audience) {
            mismatches.push(json!({"policy": p.name, "audience": p.audience}));
            continue;
        }
        let failed: Vec<&str> = p
            .conditions
            .iter()
            .filter(|(claim, pattern)| {
                !claim_text(claims.get(claim)).is_some_and(|v| glob_match(pattern, &v))
            })
            .map(|(claim, _)| claim.as_str())
            .collect();
        if failed.is_empty() {
            accepted.push(p);
        } else {
            mismatches.push(json!({"policy": p.name, "claims": failed}));
        }
    }
    rec.details
        .insert("mismatches".into(), Value::Array(mismatches));
    let policy = match named {
        Some(n) => {
            rec.details.insert("requested".into(), json!(clip(n, 63)));
            match accepted.iter().find(|p| p.name == n) {
                Some(p) => *p,
                None => {
                    return Err(verified(Refusal::new(
                        "invalid_target",
                        ErrorCode::Forbidden,
                        format!(
                            "no token exchange policy named {:?} accepts this token",
                            clip(n, 63)
                        ),
                    )));
                }
            }
        }
        None => match accepted.as_slice() {
            [] => {
                return Err(verified(Refusal::new(
                    "invalid_grant",
                    ErrorCode::Forbidden,
                    "no token exchange policy accepts this token (its audience and claims do not satisfy any policy's audience and conditions)",
                )));
            }
            [one] => *one,
            several => {
                let names: Vec<&str> = several.iter().map(|p| p.name.as_str()).collect();
                rec.details.insert("candidates".into(), json!(names));
                return Err(verified(Refusal::new(
                    "invalid_target",
                    ErrorCode::BadRequest,
                    format!(
                        "several token exchange policies accept this token ({}): name one in audience",
                        names.join(", ")
                    ),
                )));
            }
        },
    };
    rec.policy = Some(policy.name.clone());
    let subject = format!("{SUBJECT_PREFIX}{}:{sub}", policy.name);
    if subject.chars().count() > 253 {
        return Err(verified(Refusal::grant(format!(
            "the subject_token's sub is too long: the exchanged token's subject exchange:{}:<sub> must be at most 253 characters",
            policy.name
        ))));
    }

    // The target still exists.
    let g = &policy.grant;
    let gone = |what: String| {
        verified(Refusal::new(
            "invalid_target",
            ErrorCode::NotFound,
            format!(
                "the {what} that policy {} grants no longer exists",
                policy.name
            ),
        ))
    };
    match st.store.get_tenant(g.tenant).await {
        Ok(_) => {}
        Err(kubenova_store::StoreError::NotFound { .. }) => {
            return Err(gone(format!("tenant {}", g.tenant)));
        }
        Err(e) => return Err(verified(ApiError::from(e).into())),
    }
    if let Some(pid) = g.project {
        match st.store.get_project(pid).await {
            Ok(p) if p.tenant_id == g.tenant => {}
            Ok(_) | Err(kubenova_store::StoreError::NotFound { .. }) => {
                return Err(gone(format!("project {pid} of tenant {}", g.tenant)));
            }
            Err(e) => return Err(verified(ApiError::from(e).into())),
        }
    }

    // Its lifetime: the policy's, within the manager's maximum and the subject token's exp.
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(now);
    let left = u64::try_from(exp.saturating_sub(now).saturating_sub(1)).unwrap_or(0);
    let ttl = policy
        .ttl
        .min(st.auth.max_ttl())
        .min(st.config.max_token_ttl)
        .min(Duration::from_secs(left));
    if ttl.is_zero() {
        return Err(verified(Refusal::grant("the subject_token has expired")));
    }
    let (roles, tenants, projects) = g.token_scope();
    let minted = st
        .auth
        .mint(&subject, &roles, &tenants, &projects, ttl)
        .map_err(|e| verified(e.into()))?;
    let expires_in = (minted.expires_at.unix_timestamp() - now).max(0);
    let event = AuditEvent {
        id: kubenova_api::ids::AuditId::new(),
        at: OffsetDateTime::now_utc(),
        actor: subject.clone(),
        roles: roles.iter().map(|r| r.as_str().to_string()).collect(),
        action: "token.exchange".into(),
        resource_kind: "token".into(),
        resource_id: minted.jti.clone(),
        outcome: AuditOutcome::Success,
        http_status: Some(200),
        request_id: super::error::current_request_id().unwrap_or_default(),
        source_ip: source_ip.to_string(),
        details: Some(json!({
            "issuer": iss, "subject": rec.subject, "policy": policy.name,
            "jti": minted.jti,
            "grant": {"tenant": g.tenant, "project": g.project, "role": g.role.as_str()},
            "roles": roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
            "tenants": tenants, "projects": projects,
            "expiresAt": super::auth::rfc3339(minted.expires_at),
        })),
    };
    // Nothing is issued without its audit event.
    st.store
        .append_audit(&event)
        .await
        .map_err(|e| verified(ApiError::from(e).into()))?;
    tracing::info!(
        target: "kubenova::audit",
        actor = %subject, policy = %policy.name, issuer = %iss, jti = %minted.jti,
        outcome = "success", "token exchanged"
    );
    let mut resp = (
        StatusCode::OK,
        axum::Json(TokenExchangeResponse {
            access_token: minted.token,
            issued_token_type: issued_type.into(),
            token_type: "Bearer".into(),
            expires_in,
        }),
    )
        .into_response();
    no_store(resp.headers_mut());
    Ok(resp)
}

/// Audits a refusal of a token whose signature verified (sampled like unauthenticated
/// calls: at most `--audit-unauthenticated-per-source` per source and minute and
/// `--audit-unauthenticated-total` per minute, since anyone can obtain such tokens).
async fn audit_refusal(st: &AppState, rec: &Record, r: &Refusal, source_ip: &str) {
    tracing::info!(
        target: "kubenova::audit",
        issuer = %rec.issuer, subject = %rec.subject, error = r.error, reason = %r.message,
        outcome = "denied", "token exchange refused"
    );
    if !st.runtime.sample_unauthenticated_audit(source_ip) {
        return;
    }
    let mut details = rec.details.clone();
    details.insert("issuer".into(), json!(rec.issuer));
    details.insert("subject".into(), json!(rec.subject));
    details.insert("policy".into(), json!(rec.policy));
    details.insert("error".into(), json!(r.error));
    details.insert("reason".into(), json!(r.message));
    let event = AuditEvent {
        id: kubenova_api::ids::AuditId::new(),
        at: OffsetDateTime::now_utc(),
        actor: match &rec.policy {
            Some(p) => format!("{SUBJECT_PREFIX}{p}:{}", rec.subject),
            None => rec.subject.clone(),
        },
        roles: vec![],
        action: "token.exchange".into(),
        resource_kind: "token".into(),
        resource_id: rec.policy.clone().unwrap_or_default(),
        outcome: if r.code.http_status() >= 500 {
            AuditOutcome::Failed
        } else {
            AuditOutcome::Denied
        },
        http_status: Some(r.code.http_status()),
        request_id: super::error::current_request_id().unwrap_or_default(),
        source_ip: source_ip.to_string(),
        details: Some(Value::Object(details)),
    };
    if let Err(e) = st.store.append_audit(&event).await {
        st.runtime.audit_failures.inc();
        tracing::error!(error = %e, "could not write the audit event of a refused token exchange");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "abc"));
        assert!(glob_match("a*b*c", "a-b-b-c"));
        assert!(!glob_match("a*b*c", "a-c"));
        assert!(!glob_match("ab*ba", "aba"));
        assert!(glob_match("ab*ba", "abba"));
        assert!(!glob_match("refs/heads/*", "refs/tags/v1"));
    }
}
