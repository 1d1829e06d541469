//! Bearer JWT verification and signing.
//!
//! Tokens are signed with HS256 (shared secret) or ES256 (key pair); `iss`, `aud`, `exp`
//! and `nbf` are checked with the configured clock skew. Claims: `sub`, `roles` (array of
//! role names), optional `tenants` / `projects` (arrays of UUIDs), `jti`. An external OIDC
//! issuer's tokens are accepted too when its JWKS is configured (as a local file): they
//! must carry a `kid` found in the JWKS, its `iss`, and the OIDC audience.
//!
//! `--insecure-dev-no-auth` turns verification off: every request is the admin `dev`.

use super::authz::{Principal, Role};
use super::config::ServerConfig;
use super::error::ApiError;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use kubenova_api::ids::{ProjectId, TenantId};
use kubenova_store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use time::OffsetDateTime;

/// File name of the generated HS256 secret inside the data directory.
pub const JWT_SECRET_FILE: &str = "jwt.secret";
/// File name of the bootstrap admin token inside the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// Purpose of the store secret marking that the bootstrap admin token was issued.
pub const BOOTSTRAP_MARKER: &str = "bootstrap-admin-issued";
/// Subject of the bootstrap admin token.
pub const BOOTSTRAP_SUBJECT: &str = "bootstrap-admin";
/// Subject of every request under `--insecure-dev-no-auth`.
pub const DEV_SUBJECT: &str = "dev";

/// Errors setting up authentication (at startup).
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// A key or option is unusable.
    #[error("authentication setup: {0}")]
    Config(String),
    /// Reading or writing a key or token file failed.
    #[error("authentication setup: {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AuthSetupError + '_ {
    move |source| AuthSetupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The claims of a KubeNova token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Subject.
    pub sub: String,
    /// Role names.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Tenant scope.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<String>,
    /// Project scope.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub projects: Vec<String>,
    /// Token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Issuer.
    #[serde(default)]
    pub iss: String,
    /// Audience (string or array).
    #[serde(default)]
    pub aud: serde_json::Value,
    /// Expiry (seconds since the epoch).
    pub exp: i64,
    /// Not before.
    #[serde(default)]
    pub nbf: Option<i64>,
    /// Issued at.
    #[serde(default)]
    pub iat: Option<i64>,
}

/// A freshly minted token.
#[derive(Debug, Clone)]
pub struct MintedToken {
    /// The compact JWT (a credential: never log or store it).
    pub token: String,
    /// Its `jti`.
    pub jti: String,
    /// Its expiry.
    pub expires_at: OffsetDateTime,
}

/// How requests are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// HS256 shared secret.
    Hs256,
    /// ES256 key pair (or public key only).
    Es256,
    /// `--insecure-dev-no-auth`.
    Disabled,
}

impl AuthMode {
    /// Wire name (`hs256`, `es256`, `disabled`).
    pub fn as_str(&self) -> &'static str {
        match self {
            AuthMode::Hs256 => "hs256",
            AuthMode::Es256 => "es256",
            AuthMode::Disabled => "disabled",
        }
    }
}

/// Verifies bearer tokens and mints new ones.
pub struct Authenticator {
    mode: AuthMode,
    algorithm: Algorithm,
    decoding: Option<DecodingKey>,
    encoding: Option<EncodingKey>,
    oidc: Option<std::sync::Arc<super::oidc::Oidc>>,
    issuer: String,
    audience: String,
    leeway: u64,
    max_ttl: Duration,
    kubeconfig_keys: KubeconfigKeyCache,
    verified: VerifiedTokens,
}

/// Most verified tokens remembered by the authenticator's verified-token cache.
pub const VERIFIED_TOKENS_MAX: usize = 4096;

/// Tokens that passed verification, so a client sending the same bearer token again is
/// not re-verified (HS256/ES256 and claim parsing) on every request.
///
/// Keyed by the SHA-256 of the token (the cache holds no credential, and finding an entry
/// needs the exact token); an entry is used only until the token's `exp` plus the
/// configured leeway, the same bound the full check applies (`nbf` can only have become
/// more true since). Bearer tokens have no revocation here, and the local keys are fixed
/// for the life of the process, so a hit answers what the full check would; an identity
/// provider's token stays accepted until its `exp` even if the provider withdraws its key
/// meanwhile (tenant and project rights are looked up per request, not cached here). At most [`VERIFIED_TOKENS_MAX`] entries: when full, expired entries are dropped,
/// and if none are, the map is cleared.
#[derive(Default)]
struct VerifiedTokens {
    map: std::sync::RwLock<std::collections::HashMap<[u8; 32], (Principal, i64)>>,
}

impl VerifiedTokens {
    fn key(token: &str) -> [u8; 32] {
        use sha2::Digest as _;
        sha2::Sha256::digest(token.as_bytes()).into()
    }

    fn get(&self, key: &[u8; 32], now: i64) -> Option<Principal> {
        let map = match self.map.read() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.get(key)
            .filter(|(_, valid_until)| now < *valid_until)
            .map(|(p, _)| p.clone())
    }

    fn put(&self, key: [u8; 32], principal: &Principal, valid_until: i64, now: i64) {
        let mut map = match self.map.write() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if map.len() >= VERIFIED_TOKENS_MAX {
            map.retain(|_, (_, until)| now < *until);
            if map.len() >= VERIFIED_TOKENS_MAX {
                map.clear();
            }
        }
        map.insert(key, (principal.clone(), valid_until));
    }
}

/// How long the kubeconfig signing keys are used from memory before being re-read from
/// the store (so a rotation by another manager replica or the CLI is picked up).
pub const KUBECONFIG_KEYS_REFRESH: Duration = Duration::from_secs(30);

/// The in-memory copy of the kubeconfig signing [`kubenova_kubeconfig::KeySet`] (the
/// stored, envelope-encrypted copy is authoritative; see `api::kubeconfigs`).
#[derive(Default)]
pub struct KubeconfigKeyCache {
    slot: std::sync::RwLock<
        Option<(
            std::sync::Arc<kubenova_kubeconfig::KeySet>,
            std::time::Instant,
        )>,
    >,
}

impl KubeconfigKeyCache {
    /// The cached key set if it was loaded less than [`KUBECONFIG_KEYS_REFRESH`] ago.
    pub fn fresh(&self) -> Option<std::sync::Arc<kubenova_kubeconfig::KeySet>> {
        let slot = match self.slot.read() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        slot.as_ref()
            .filter(|(_, at)| at.elapsed() < KUBECONFIG_KEYS_REFRESH)
            .map(|(k, _)| std::sync::Arc::clone(k))
    }

    /// Replaces the cached key set (just loaded or rotated).
    pub fn set(&self, keys: std::sync::Arc<kubenova_kubeconfig::KeySet>) {
        let mut slot = match self.slot.write() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        *slot = Some((keys, std::time::Instant::now()));
    }

    /// Forgets the cached key set: the next use re-reads the store.
    pub fn invalidate(&self) {
        let mut slot = match self.slot.write() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        *slot = None;
    }
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("oidc", &self.oidc.as_ref().map(|o| o.issuer_urls()))
            .field("can_mint", &self.encoding.is_some())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// HS256 with a secret (tests, embedding).
    pub fn hs256(
        secret: &[u8],
        issuer: &str,
        audience: &str,
        leeway: Duration,
        max_ttl: Duration,
    ) -> Self {
        Self {
            mode: AuthMode::Hs256,
            algorithm: Algorithm::HS256,
            decoding: Some(DecodingKey::from_secret(secret)),
            encoding: Some(EncodingKey::from_secret(secret)),
            oidc: None,
            issuer: issuer.into(),
            audience: audience.into(),
            leeway: leeway.as_secs(),
            max_ttl,
            kubeconfig_keys: KubeconfigKeyCache::default(),
            verified: VerifiedTokens::default(),
        }
    }

    /// ES256 from PEM keys: the public key verifies, the optional private key (PKCS#8) signs.
    pub fn es256(
        public_pem: &[u8],
        private_pem: Option<&[u8]>,
        issuer: &str,
        audience: &str,
        leeway: Duration,
        max_ttl: Duration,
    ) -> Result<Self, AuthSetupError> {
        let decoding = DecodingKey::from_ec_pem(public_pem).map_err(|e| {
            AuthSetupError::Config(format!("ES256 public key is not an EC PEM key: {e}"))
        })?;
        let encoding = private_pem
            .map(|p| {
                EncodingKey::from_ec_pem(p).map_err(|e| {
                    AuthSetupError::Config(format!(
                        "ES256 private key is not a PKCS#8 EC PEM key: {e}"
                    ))
                })
            })
            .transpose()?;
        Ok(Self {
            mode: AuthMode::Es256,
            algorithm: Algorithm::ES256,
            decoding: Some(decoding),
            encoding,
            oidc: None,
            issuer: issuer.into(),
            audience: audience.into(),
            leeway: leeway.as_secs(),
            max_ttl,
            kubeconfig_keys: KubeconfigKeyCache::default(),
            verified: VerifiedTokens::default(),
        })
    }

    /// No authentication: every request is the admin `dev` (`--insecure-dev-no-auth`).
    pub fn insecure_dev(max_ttl: Duration) -> Self {
        Self {
            mode: AuthMode::Disabled,
            algorithm: Algorithm::HS256,
            decoding: None,
            encoding: None,
            oidc: None,
            issuer: String::new(),
            audience: String::new(),
            leeway: 0,
            max_ttl,
            kubeconfig_keys: KubeconfigKeyCache::default(),
            verified: VerifiedTokens::default(),
        }
    }

    /// Also accepts tokens of an external OIDC issuer verified by its JWKS (JSON text),
    /// with the token's own `roles`, `tenants` and `projects` claims (the form of the
    /// `--oidc-issuer` / `--oidc-jwks-file` flags; see [`Authenticator::with_identity_providers`]
    /// for rights derived from groups and the model).
    pub fn with_oidc(
        self,
        issuer: &str,
        audience: &str,
        jwks_json: &str,
    ) -> Result<Self, AuthSetupError> {
        let jwks: JwkSet = serde_json::from_str(jwks_json)
            .map_err(|e| AuthSetupError::Config(format!("OIDC JWKS is not a JWK set: {e}")))?;
        if jwks.keys.is_empty() {
            return Err(AuthSetupError::Config("OIDC JWKS has no keys".into()));
        }
        let config = super::oidc::IssuerConfig::with_role_claims(issuer, audience, None);
        Ok(
            self.with_identity_providers(std::sync::Arc::new(super::oidc::Oidc::from_issuers(
                vec![super::oidc::Issuer::with_keys(config, jwks)],
                super::oidc::PlatformRoles::default(),
            ))),
        )
    }

    /// Also signs people in with these identity providers: a token whose `iss` is one of
    /// theirs is verified with that issuer's keys and audience, and its subject and groups
    /// are mapped by the issuer's settings (see [`super::oidc`]).
    pub fn with_identity_providers(mut self, oidc: std::sync::Arc<super::oidc::Oidc>) -> Self {
        self.oidc = Some(oidc);
        self
    }

    /// The identity providers, when configured.
    pub fn identity_providers(&self) -> Option<&std::sync::Arc<super::oidc::Oidc>> {
        self.oidc.as_ref()
    }

    /// Builds the authenticator the configuration asks for; generates the HS256 secret
    /// into `<data_dir>/jwt.secret` (mode 0600) when no key is configured.
    pub fn from_config(cfg: &ServerConfig, data_dir: &Path) -> Result<Self, AuthSetupError> {
        if cfg.insecure_dev_no_auth {
            return Ok(Self::insecure_dev(cfg.max_token_ttl));
        }
        let mut auth = if let Some(public) = &cfg.jwt_es256_public_key {
            let pubpem = std::fs::read(public).map_err(io_err(public))?;
            let privpem = match &cfg.jwt_es256_private_key {
                Some(p) => Some(std::fs::read(p).map_err(io_err(p))?),
                None => None,
            };
            Self::es256(
                &pubpem,
                privpem.as_deref(),
                &cfg.jwt_issuer,
                &cfg.jwt_audience,
                cfg.clock_skew,
                cfg.max_token_ttl,
            )?
        } else {
            let secret = match &cfg.jwt_secret {
                Some(s) => s.as_bytes().to_vec(),
                None => load_or_generate_secret(data_dir)?,
            };
            Self::hs256(
                &secret,
                &cfg.jwt_issuer,
                &cfg.jwt_audience,
                cfg.clock_skew,
                cfg.max_token_ttl,
            )
        };
        if let Some(path) = &cfg.oidc_config {
            let doc = super::oidc::OidcDocument::load(path).map_err(AuthSetupError::Config)?;
            let oidc = super::oidc::Oidc::from_document(doc).map_err(AuthSetupError::Config)?;
            if oidc.token_exchange().is_some() && !auth.can_mint() {
                return Err(AuthSetupError::Config(format!(
                    "--oidc-config {}: tokenExchange issues tokens, but this manager has no signing key: configure --jwt-es256-private-key (or HS256)",
                    path.display()
                )));
            }
            auth = auth.with_identity_providers(std::sync::Arc::new(oidc));
        } else if let Some(issuer) = &cfg.oidc_issuer {
            let aud = cfg
                .oidc_audience
                .clone()
                .unwrap_or_else(|| cfg.jwt_audience.clone());
            let config = super::oidc::OidcConfig {
                issuers: vec![super::oidc::IssuerConfig::with_role_claims(
                    issuer,
                    &aud,
                    cfg.oidc_jwks_file.clone(),
                )],
                platform_roles: super::oidc::PlatformRoles::default(),
            };
            let oidc = super::oidc::Oidc::new(config)
                .map_err(|e| AuthSetupError::Config(format!("--oidc-issuer: {e}")))?;
            auth = auth.with_identity_providers(std::sync::Arc::new(oidc));
        }
        Ok(auth)
    }

    /// The mode.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// True when authentication is off.
    pub fn is_disabled(&self) -> bool {
        self.mode == AuthMode::Disabled
    }

    /// True when an external OIDC issuer is configured.
    pub fn oidc_enabled(&self) -> bool {
        self.oidc.is_some()
    }

    /// True when this manager can sign tokens.
    pub fn can_mint(&self) -> bool {
        self.encoding.is_some()
    }

    /// The longest TTL of a minted token.
    pub fn max_ttl(&self) -> Duration {
        self.max_ttl
    }

    /// The cache of the kubeconfig signing keys.
    pub fn kubeconfig_keys(&self) -> &KubeconfigKeyCache {
        &self.kubeconfig_keys
    }

    /// The principal of a request from its `Authorization` header value.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, ApiError> {
        if self.is_disabled() {
            return Ok(dev_principal());
        }
        let token = bearer_token(authorization)?;
        self.verify(token)
    }

    /// Verifies a compact JWT and returns its principal (KN-401 on any failure). A token
    /// that verified before and has not expired is answered from memory.
    pub fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        if self.is_disabled() {
            return Ok(dev_principal());
        }
        let key = VerifiedTokens::key(token);
        let now = OffsetDateTime::now_utc().unix_timestamp();
        if let Some(p) = self.verified.get(&key, now) {
            return Ok(p);
        }
        let (principal, exp) = self.verify_uncached(token)?;
        let leeway = i64::try_from(self.leeway).unwrap_or(i64::MAX);
        self.verified
            .put(key, &principal, exp.saturating_add(leeway), now);
        Ok(principal)
    }

    /// [`Authenticator::authenticate`], after fetching an identity provider's keys again
    /// when the token names a key not seen yet (a rotation; at most once per
    /// [`super::oidc::REFRESH_MIN_GAP`] per issuer).
    pub async fn authenticate_async(
        &self,
        authorization: Option<&str>,
    ) -> Result<Principal, ApiError> {
        let first = self.authenticate(authorization);
        // Only a refusal costs more: a known token or key is answered as before.
        if first.is_ok() {
            return first;
        }
        if let Some(oidc) = &self.oidc
            && let Ok(token) = bearer_token(authorization)
            && let Some(issuer) = unknown_key_issuer(oidc, token)
        {
            issuer.refresh().await;
            return self.authenticate(authorization);
        }
        first
    }

    /// The full check of [`Authenticator::verify`]: the principal and the token's `exp`.
    fn verify_uncached(&self, token: &str) -> Result<(Principal, i64), ApiError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| ApiError::unauthenticated("the bearer token is not a well-formed JWT"))?;
        // Tokens are routed by their (still unverified) `iss`: an identity provider's are
        // verified by that provider's keys and rules, and nothing else.
        if let Some(oidc) = &self.oidc
            && let Some(iss) = peek_issuer(token)
            && iss != self.issuer
        {
            let iss = iss.as_str();
            let Some(issuer) = oidc.issuer(iss) else {
                return Err(ApiError::unauthenticated(format!(
                    "the bearer token's issuer {:?} is not one this manager trusts",
                    clip(iss, 120)
                )));
            };
            return self.verify_oidc(token, &header, issuer, &oidc.platform_roles);
        }
        let Some(key) = &self.decoding else {
            return Err(ApiError::unauthenticated("no key can verify this token"));
        };
        if header.alg != self.algorithm {
            return Err(ApiError::unauthenticated(format!(
                "the token is signed with {:?}; this manager accepts {:?}",
                header.alg, self.algorithm
            )));
        }
        let validation = self.validation(self.algorithm, &self.issuer, &self.audience);
        decode_claims(token, key, &validation, &self.issuer, &self.audience)
            .and_then(principal_and_exp)
    }

    /// An identity provider's token: its key, algorithm, issuer, audience and times, then
    /// its subject and groups by the issuer's mapping and the platform roles the groups grant.
    fn verify_oidc(
        &self,
        token: &str,
        header: &Header,
        issuer: &super::oidc::Issuer,
        platform: &super::oidc::PlatformRoles,
    ) -> Result<(Principal, i64), ApiError> {
        let cfg = &issuer.config;
        let claims = self
            .decode_provider_token(
                token,
                header,
                issuer.keys(),
                &cfg.issuer,
                &[cfg.audience.as_str()],
            )
            .map_err(|(e, _)| e)?;
        let exp = claims
            .get("exp")
            .and_then(serde_json::Value::as_i64)
            .ok_or_else(|| ApiError::unauthenticated("the bearer token lacks the \"exp\" claim"))?;
        let subject = match claims.get(&cfg.subject_claim) {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => {
                format!("{}{s}", cfg.subject_prefix)
            }
            _ => {
                return Err(ApiError::unauthenticated(format!(
                    "the token has no {:?} claim to take the subject from (the issuer's subjectClaim)",
                    cfg.subject_claim
                )));
            }
        };
        check_subject(&subject)?;
        let groups = groups_of(claims.get(&cfg.groups_claim), &cfg.groups_prefix)?;
        let mut principal = if cfg.role_claims {
            let own: Claims = serde_json::from_value(serde_json::Value::Object(claims.clone()))
                .map_err(|_| {
                    ApiError::unauthenticated("the bearer token's claims have the wrong types")
                })?;
            let mut p = principal_of(Claims {
                sub: subject.clone(),
                ..own
            })?;
            p.subject = subject;
            p
        } else {
            Principal {
                subject,
                ..Principal::default()
            }
        };
        for role in platform.of(&groups) {
            if !principal.roles.contains(&role) {
                principal.roles.push(role);
            }
        }
        principal.groups = groups;
        principal.issuer = Some(cfg.issuer.clone());
        Ok((principal, exp))
    }

    /// An identity provider's (or CI provider's) token, checked: an asymmetric algorithm
    /// the key is for, a key from `keys`, the signature, `iss`, an `aud` among `audiences`,
    /// `exp` and `nbf` (with the clock skew), and `sub` present. The claims, or the refusal
    /// and whether the signature had verified (the claims were then genuinely the issuer's:
    /// expired, another audience, ...).
    pub(crate) fn decode_provider_token(
        &self,
        token: &str,
        header: &Header,
        keys: &super::oidc::KeySource,
        issuer: &str,
        audiences: &[&str],
    ) -> Result<serde_json::Map<String, serde_json::Value>, (ApiError, bool)> {
        if !matches!(
            header.alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
                | Algorithm::ES256
                | Algorithm::ES384
                | Algorithm::EdDSA
        ) {
            return Err((
                ApiError::unauthenticated(format!(
                    "the token's algorithm {:?} is not accepted for an identity provider (asymmetric signatures only)",
                    header.alg
                )),
                false,
            ));
        }
        let Some(jwk) = keys.key(header.kid.as_deref()) else {
            return Err((
                ApiError::unauthenticated(match &header.kid {
                    Some(kid) => format!(
                        "the issuer's keys have no key {:?} (fetched again at most every {} s)",
                        clip(kid, 64),
                        super::oidc::REFRESH_MIN_GAP.as_secs()
                    ),
                    None => "the token names no key (kid) and the issuer has several".to_string(),
                }),
                false,
            ));
        };
        if let Some(alg) = jwk.common.key_algorithm
            && format!("{alg:?}") != format!("{:?}", header.alg)
        {
            return Err((
                ApiError::unauthenticated(format!(
                    "the token is signed with {:?} but its key is for {alg:?}",
                    header.alg
                )),
                false,
            ));
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| {
            (
                ApiError::unauthenticated("the issuer's key for this token is unusable"),
                false,
            )
        })?;
        let mut validation = self.validation(header.alg, issuer, "");
        validation.set_audience(audiences);
        jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &validation)
            .map(|d| d.claims)
            .map_err(|e| {
                // jsonwebtoken checks the signature before any claim.
                let verified = matches!(
                    e.kind(),
                    ErrorKind::ExpiredSignature
                        | ErrorKind::ImmatureSignature
                        | ErrorKind::InvalidAudience
                        | ErrorKind::InvalidIssuer
                        | ErrorKind::MissingRequiredClaim(_)
                        | ErrorKind::Json(_)
                );
                (claims_error(&e, issuer, &audiences.join(" or ")), verified)
            })
    }

    fn validation(&self, alg: Algorithm, issuer: &str, audience: &str) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_issuer(&[issuer]);
        v.set_audience(&[audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v
    }

    /// Signs a token for a subject with roles and scope, valid for `ttl` (at most the max TTL).
    pub fn mint(
        &self,
        subject: &str,
        roles: &[Role],
        tenants: &[TenantId],
        projects: &[ProjectId],
        ttl: Duration,
    ) -> Result<MintedToken, ApiError> {
        let Some(key) = &self.encoding else {
            return Err(ApiError::new(
                kubenova_api::error::ErrorCode::Conflict,
                if self.is_disabled() {
                    "tokens cannot be minted while authentication is disabled (--insecure-dev-no-auth)"
                } else {
                    "this manager has no signing key (configure --jwt-es256-private-key) and cannot mint tokens"
                },
            ));
        };
        if ttl > self.max_ttl {
            return Err(ApiError::invalid(
                "ttlMinutes",
                format!("must be at most {} minutes", self.max_ttl.as_secs() / 60),
            ));
        }
        let now = OffsetDateTime::now_utc();
        let ttl_t = time::Duration::try_from(ttl)
            .map_err(|_| ApiError::invalid("ttlMinutes", "too large"))?;
        let expires_at = (now + ttl_t).replace_nanosecond(0).unwrap_or(now + ttl_t);
        let jti = uuid::Uuid::new_v4().to_string();
        let claims = Claims {
            sub: subject.to_string(),
            roles: roles.iter().map(|r| r.as_str().to_string()).collect(),
            tenants: tenants.iter().map(|t| t.to_string()).collect(),
            projects: projects.iter().map(|p| p.to_string()).collect(),
            jti: Some(jti.clone()),
            iss: self.issuer.clone(),
            aud: serde_json::Value::String(self.audience.clone()),
            exp: expires_at.unix_timestamp(),
            nbf: Some(now.unix_timestamp()),
            iat: Some(now.unix_timestamp()),
        };
        let token =
            jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key).map_err(|e| {
                tracing::error!(error = %e, "signing a token failed");
                ApiError::from(kubenova_api::error::KnError::internal(
                    "signing the token failed",
                ))
            })?;
        Ok(MintedToken {
            token,
            jti,
            expires_at,
        })
    }

    /// On first start (no marker in the store) mints an admin token valid for the max TTL
    /// and writes it to `<data_dir>/admin.token` (mode 0600). Returns the file written.
    /// Logs the path once, never the token.
    pub async fn ensure_bootstrap_admin(
        &self,
        store: &dyn Store,
        data_dir: &Path,
    ) -> Result<Option<PathBuf>, AuthSetupError> {
        if self.is_disabled() {
            return Ok(None);
        }
        match store.get_secret(uuid::Uuid::nil(), BOOTSTRAP_MARKER).await {
            Ok(_) => return Ok(None),
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if !self.can_mint() {
            tracing::warn!(
                "no bootstrap admin token: this manager has no signing key; mint admin tokens with your ES256 private key or OIDC issuer"
            );
            return Ok(None);
        }
        let minted = self
            .mint(BOOTSTRAP_SUBJECT, &[Role::Admin], &[], &[], self.max_ttl)
            .map_err(|e| AuthSetupError::Config(e.error.message))?;
        let path = data_dir.join(ADMIN_TOKEN_FILE);
        write_private_file(&path, format!("{}\n", minted.token).as_bytes(), true)?;
        store
            .put_secret(uuid::Uuid::nil(), BOOTSTRAP_MARKER, minted.jti.as_bytes())
            .await?;
        let event = kubenova_api::model::AuditEvent {
            id: kubenova_api::ids::AuditId::new(),
            at: OffsetDateTime::now_utc(),
            actor: "system".into(),
            roles: vec![],
            action: "token.bootstrap".into(),
            resource_kind: "token".into(),
            resource_id: minted.jti.clone(),
            outcome: kubenova_api::model::AuditOutcome::Success,
            http_status: None,
            request_id: String::new(),
            source_ip: String::new(),
            details: Some(serde_json::json!({
                "subject": BOOTSTRAP_SUBJECT, "roles": ["admin"], "jti": minted.jti,
                "expiresAt": rfc3339(minted.expires_at),
            })),
        };
        if let Err(e) = store.append_audit(&event).await {
            tracing::warn!(error = %e, "could not audit the bootstrap admin token");
        }
        tracing::info!(
            path = %path.display(),
            expires_at = %rfc3339(minted.expires_at),
            "first start: wrote a bootstrap admin token (mode 0600); use it to mint your own tokens with POST /api/v1/tokens, then delete the file"
        );
        Ok(Some(path))
    }
}

/// A time as RFC 3339 (UTC), the way log lines and audit details show times.
pub fn rfc3339(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn dev_principal() -> Principal {
    Principal {
        subject: DEV_SUBJECT.into(),
        roles: vec![Role::Admin],
        ..Principal::default()
    }
}

fn decode_claims(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
    issuer: &str,
    audience: &str,
) -> Result<Claims, ApiError> {
    jsonwebtoken::decode::<Claims>(token, key, validation)
        .map(|d| d.claims)
        .map_err(|e| claims_error(&e, issuer, audience))
}

/// What a token that failed verification is told (never the token).
fn claims_error(e: &jsonwebtoken::errors::Error, issuer: &str, audience: &str) -> ApiError {
    let msg = match e.kind() {
        ErrorKind::ExpiredSignature => "the bearer token has expired".to_string(),
        ErrorKind::ImmatureSignature => "the bearer token is not valid yet (nbf)".to_string(),
        ErrorKind::InvalidSignature => "the bearer token's signature is invalid".to_string(),
        ErrorKind::InvalidAudience => {
            format!("the bearer token is not for this audience (expected aud {audience:?})")
        }
        ErrorKind::InvalidIssuer => {
            format!("the bearer token is from another issuer (expected iss {issuer:?})")
        }
        ErrorKind::InvalidAlgorithm => "the bearer token's algorithm is not accepted".to_string(),
        ErrorKind::MissingRequiredClaim(c) => format!("the bearer token lacks the {c:?} claim"),
        ErrorKind::Json(_) => "the bearer token's claims have the wrong types".to_string(),
        _ => "the bearer token is malformed".to_string(),
    };
    ApiError::unauthenticated(msg)
}

/// The token of an `Authorization: Bearer <jwt>` header value.
fn bearer_token(authorization: Option<&str>) -> Result<&str, ApiError> {
    let Some(h) = authorization else {
        return Err(ApiError::unauthenticated(
            "missing bearer token: send Authorization: Bearer <jwt>",
        ));
    };
    let token = match h.trim().split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => {
            return Err(ApiError::unauthenticated(
                "the Authorization header must use the Bearer scheme: Authorization: Bearer <jwt>",
            ));
        }
    };
    if token.is_empty() {
        return Err(ApiError::unauthenticated("empty bearer token"));
    }
    Ok(token)
}

/// The `iss` claim of a compact JWT, read without verifying it (to choose the verifier).
fn peek_issuer(token: &str) -> Option<String> {
    use base64::Engine as _;
    #[derive(Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    let payload = token.split('.').nth(1)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<Iss>(&raw).ok()?.iss
}

/// The identity provider whose token this is, when the token names a key it has not got.
fn unknown_key_issuer<'o>(
    oidc: &'o super::oidc::Oidc,
    token: &str,
) -> Option<&'o std::sync::Arc<super::oidc::Issuer>> {
    let issuer = oidc.issuer(&peek_issuer(token)?)?;
    let kid = jsonwebtoken::decode_header(token).ok()?.kid;
    issuer.key(kid.as_deref()).is_none().then_some(issuer)
}

/// At most `n` characters of a value from a token, for a message.
fn clip(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// The groups claim: an array of strings or one string, each prefixed; at most
/// [`super::oidc::MAX_GROUPS`].
fn groups_of(v: Option<&serde_json::Value>, prefix: &str) -> Result<Vec<String>, ApiError> {
    let names: Vec<&str> = match v {
        None | Some(serde_json::Value::Null) => vec![],
        Some(serde_json::Value::String(s)) => vec![s.as_str()],
        Some(serde_json::Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for i in items {
                match i.as_str() {
                    Some(s) => out.push(s),
                    None => {
                        return Err(ApiError::unauthenticated(
                            "the token's groups claim holds something other than strings",
                        ));
                    }
                }
            }
            out
        }
        Some(_) => {
            return Err(ApiError::unauthenticated(
                "the token's groups claim is neither a string nor an array of strings",
            ));
        }
    };
    if names.len() > super::oidc::MAX_GROUPS {
        return Err(ApiError::unauthenticated(format!(
            "the token names more than {} groups",
            super::oidc::MAX_GROUPS
        )));
    }
    let mut groups: Vec<String> = Vec::with_capacity(names.len());
    for n in names {
        if n.is_empty() || n.len() > 253 || n.chars().any(char::is_control) {
            return Err(ApiError::unauthenticated(
                "the token's groups must be 1 to 253 characters without control characters",
            ));
        }
        let g = format!("{prefix}{n}");
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    Ok(groups)
}

fn check_subject(sub: &str) -> Result<(), ApiError> {
    if sub.trim().is_empty() {
        return Err(ApiError::unauthenticated(
            "the bearer token has an empty sub claim",
        ));
    }
    if sub.chars().any(char::is_control) || sub.len() > 253 {
        return Err(ApiError::unauthenticated(
            "the bearer token's sub claim must be at most 253 characters without control characters",
        ));
    }
    Ok(())
}

fn principal_and_exp(claims: Claims) -> Result<(Principal, i64), ApiError> {
    let exp = claims.exp;
    principal_of(claims).map(|p| (p, exp))
}

fn principal_of(claims: Claims) -> Result<Principal, ApiError> {
    check_subject(&claims.sub)?;
    let mut roles = Vec::with_capacity(claims.roles.len());
    for r in &claims.roles {
        match Role::parse(r) {
            Some(role) if !roles.contains(&role) => roles.push(role),
            Some(_) => {}
            None => {
                return Err(ApiError::unauthenticated(format!(
                    "unknown role {r:?} in the token (known: admin, ops, tenantOwner, projectDev, readOnly)"
                )));
            }
        }
    }
    let uuids = |claim: &str, v: &[String]| -> Result<Vec<uuid::Uuid>, ApiError> {
        v.iter()
            .map(|s| {
                s.parse::<uuid::Uuid>().map_err(|_| {
                    ApiError::unauthenticated(format!("the {claim} claim holds {s:?}, not a UUID"))
                })
            })
            .collect()
    };
    Ok(Principal {
        subject: claims.sub,
        roles,
        tenants: uuids("tenants", &claims.tenants)?
            .into_iter()
            .map(TenantId::from)
            .collect(),
        projects: uuids("projects", &claims.projects)?
            .into_iter()
            .map(ProjectId::from)
            .collect(),
        ..Principal::default()
    })
}

/// Reads `<data_dir>/jwt.secret`, or creates it with 32 random bytes (base64url) and mode 0600.
pub fn load_or_generate_secret(data_dir: &Path) -> Result<Vec<u8>, AuthSetupError> {
    let path = data_dir.join(JWT_SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            warn_if_readable_by_others(&path);
            let s = s.trim().to_string();
            if s.len() < 32 {
                return Err(AuthSetupError::Config(format!(
                    "{} holds fewer than 32 bytes; delete it to generate a new secret",
                    path.display()
                )));
            }
            Ok(s.into_bytes())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use base64::Engine as _;
            use rand::RngCore as _;
            let mut raw = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut raw);
            let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
            if !write_private_file(&path, format!("{secret}\n").as_bytes(), false)? {
                // Another process created it first: use theirs.
                return load_or_generate_secret(data_dir);
            }
            tracing::info!(path = %path.display(), "generated an HS256 token signing secret (mode 0600)");
            Ok(secret.into_bytes())
        }
        Err(e) => Err(io_err(&path)(e)),
    }
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(m) = std::fs::metadata(path)
            && m.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %path.display(), "secret file is readable by group or others; chmod 600 it");
        }
    }
}

/// Writes a file readable only by the owner (0600), creating the directory (0700) if
/// needed. With `replace` an existing file is replaced; otherwise returns `false` if it exists.
pub fn write_private_file(
    path: &Path,
    bytes: &[u8],
    replace: bool,
) -> Result<bool, AuthSetupError> {
    use std::io::Write as _;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt as _;
            b.mode(0o700);
        }
        b.create(dir).map_err(io_err(dir))?;
    }
    if replace {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(path)(e)),
        }
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = match opts.open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && !replace => return Ok(false),
        Err(e) => return Err(io_err(path)(e)),
    };
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(io_err(path))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn auth() -> Authenticator {
        Authenticator::hs256(
            SECRET,
            "kubenova",
            "kubenova-api",
            Duration::from_secs(60),
            Duration::from_secs(3600),
        )
    }

    #[test]
    fn mint_then_verify_round_trips() {
        let a = auth();
        let t = TenantId::new();
        let m = a
            .mint(
                "alice",
                &[Role::TenantOwner],
                &[t],
                &[],
                Duration::from_secs(600),
            )
            .unwrap();
        let p = a.verify(&m.token).unwrap();
        assert_eq!(p.subject, "alice");
        assert_eq!(p.roles, vec![Role::TenantOwner]);
        assert_eq!(p.tenants, vec![t]);
        assert!(
            a.mint("alice", &[], &[], &[], Duration::from_secs(7200))
                .is_err()
        );
    }

    #[test]
    fn wrong_key_audience_issuer_are_rejected() {
        let m = auth()
            .mint("a", &[Role::Admin], &[], &[], Duration::from_secs(60))
            .unwrap();
        let other = Authenticator::hs256(
            b"another-secret-another-secret-xx",
            "kubenova",
            "kubenova-api",
            Duration::ZERO,
            Duration::from_secs(3600),
        );
        assert!(
            other
                .verify(&m.token)
                .unwrap_err()
                .error
                .message
                .contains("signature")
        );
        let aud = Authenticator::hs256(
            SECRET,
            "kubenova",
            "other",
            Duration::ZERO,
            Duration::from_secs(3600),
        );
        assert!(
            aud.verify(&m.token)
                .unwrap_err()
                .error
                .message
                .contains("audience")
        );
        let iss = Authenticator::hs256(
            SECRET,
            "other",
            "kubenova-api",
            Duration::ZERO,
            Duration::from_secs(3600),
        );
        assert!(
            iss.verify(&m.token)
                .unwrap_err()
                .error
                .message
                .contains("issuer")
        );
        assert!(auth().authenticate(None).is_err());
        assert!(auth().authenticate(Some("Basic abc")).is_err());
        assert!(
            auth()
                .authenticate(Some(&format!("bearer {}", m.token)))
                .is_ok()
        );
    }

    #[test]
    fn verified_tokens_are_remembered_only_until_they_expire() {
        let a = Authenticator::hs256(
            SECRET,
            "kubenova",
            "kubenova-api",
            Duration::ZERO,
            Duration::from_secs(3600),
        );
        let m = a
            .mint("alice", &[Role::Admin], &[], &[], Duration::from_secs(600))
            .unwrap();
        assert_eq!(a.verify(&m.token).unwrap().subject, "alice");
        let key = VerifiedTokens::key(&m.token);
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert!(a.verified.get(&key, now).is_some());
        // Past exp (+ leeway 0) the entry is not used.
        assert!(
            a.verified
                .get(&key, m.expires_at.unix_timestamp())
                .is_none()
        );
        // A forged variant of a remembered token still fails the full check.
        let mut forged = m.token.clone();
        forged.pop();
        forged.push(if m.token.ends_with('A') { 'B' } else { 'A' });
        assert!(a.verify(&forged).is_err());
        assert!(a.verify(&m.token).is_ok());
        // Bounded: filling it past the maximum keeps it at most the maximum.
        for i in 0..(VERIFIED_TOKENS_MAX + 10) {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&(i as u64).to_le_bytes());
            a.verified.put(k, &dev_principal(), now + 60, now);
        }
        assert!(a.verified.map.read().unwrap().len() <= VERIFIED_TOKENS_MAX);
    }

    #[test]
    fn unknown_role_is_rejected() {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let claims = serde_json::json!({"sub": "x", "roles": ["root"], "iss": "kubenova", "aud": "kubenova-api", "exp": now + 60});
        let tok = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert!(
            auth()
                .verify(&tok)
                .unwrap_err()
                .error
                .message
                .contains("unknown role")
        );
    }

    #[test]
    fn secret_file_is_private_and_stable() {
        let d = tempfile::tempdir().unwrap();
        let a = load_or_generate_secret(&d.path().join("sub")).unwrap();
        let b = load_or_generate_secret(&d.path().join("sub")).unwrap();
        assert_eq!(a, b);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(d.path().join("sub").join(JWT_SECRET_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
