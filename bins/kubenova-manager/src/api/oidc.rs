//! Identity providers: the OIDC issuers whose tokens sign people in, their keys (found by
//! OIDC discovery and fetched from `jwks_uri`, refreshed in the background and at once when
//! a token names a key not seen yet), and how a token's claims become a subject, groups and
//! platform roles. Tenant and project rights are not in the token: they are derived per
//! request from tenants' `owners` and projects' `access` (see `kubenova_api::identity`).
//!
//! The configuration is a YAML (or JSON) file, `--oidc-config`:
//!
//! ```yaml
//! issuers:
//!   - issuer: https://keycloak.example.com/realms/platform
//!     audience: kubenova
//!     subjectClaim: email        # default sub
//!     groupsClaim: groups        # default groups
//!     groupsPrefix: ""           # e.g. "oidc:" to keep IdP groups apart
//!     login:                     # `kubenova login` signs people in with this issuer
//!       clientId: kubenova       # default: the audience
//!       scopes: [openid, email, profile, offline_access]
//! platformRoles:
//!   admin: [platform-admins]
//!   ops: [sre]
//!   readOnly: [auditors]
//! ```
//!
//! The same document may also configure CI token exchange (`tokenExchange`, see
//! [`super::exchange`]); [`OidcDocument`] reads the whole document, and the CI providers'
//! keys are held by the same [`KeySource`] machinery as the identity providers'.

use super::authz::Role;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Most issuers in one configuration.
pub const MAX_ISSUERS: usize = 16;
/// Most groups taken from one token (more is refused: a token that large is not a
/// person's).
pub const MAX_GROUPS: usize = 256;
/// How often every issuer's keys are fetched again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(15 * 60);
/// The shortest time between two fetches of one issuer's keys (a token naming an unknown
/// key triggers one at most this often).
pub const REFRESH_MIN_GAP: Duration = Duration::from_secs(10);
/// The timeout of one discovery or JWKS request.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest discovery document or JWKS accepted.
const MAX_DOCUMENT: usize = 512 * 1024;

/// The `--oidc-config` file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OidcConfig {
    /// The trusted issuers.
    pub issuers: Vec<IssuerConfig>,
    /// Platform roles granted by group membership (groups as mapped, prefix included).
    #[serde(default)]
    pub platform_roles: PlatformRoles,
}

/// Groups granting the platform roles.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlatformRoles {
    /// Groups whose members are `admin`.
    #[serde(default)]
    pub admin: Vec<String>,
    /// Groups whose members are `ops`.
    #[serde(default)]
    pub ops: Vec<String>,
    /// Groups whose members are (unscoped) `readOnly`.
    #[serde(default)]
    pub read_only: Vec<String>,
}

impl PlatformRoles {
    /// The roles `groups` grant.
    pub fn of(&self, groups: &[String]) -> Vec<Role> {
        let any = |names: &[String]| names.iter().any(|n| groups.contains(n));
        [
            (Role::Admin, &self.admin),
            (Role::Ops, &self.ops),
            (Role::ReadOnly, &self.read_only),
        ]
        .into_iter()
        .filter(|(_, names)| any(names))
        .map(|(r, _)| r)
        .collect()
    }
}

fn default_subject_claim() -> String {
    "sub".into()
}

fn default_groups_claim() -> String {
    "groups".into()
}

/// One trusted issuer.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssuerConfig {
    /// The issuer URL, exactly as its tokens' `iss` and its discovery document say.
    pub issuer: String,
    /// The `aud` its tokens must carry (the client id registered for KubeNova).
    pub audience: String,
    /// The claim holding the subject (`sub`, `email`, `preferred_username`, ...).
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// The claim holding the groups (an array of strings, or one string).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Put before every subject (e.g. `keycloak:`), to keep several issuers' people apart.
    #[serde(default)]
    pub subject_prefix: String,
    /// Put before every group.
    #[serde(default)]
    pub groups_prefix: String,
    /// The issuer's JWKS as a local file instead of discovery (air-gapped installs; keys
    /// are then read once at start).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Also honour the token's `roles`, `tenants` and `projects` claims as a minted token's
    /// (for an issuer that emits KubeNova's own claims; off by default: rights come from
    /// groups and the model).
    #[serde(default)]
    pub role_claims: bool,
    /// How the `kubenova` CLI signs people in with this issuer (`kubenova login`); absent:
    /// this issuer is not offered by `GET /api/v1/auth/providers`.
    #[serde(default)]
    pub login: Option<LoginConfig>,
}

/// Most scopes of a login.
pub const MAX_LOGIN_SCOPES: usize = 32;

fn default_login_scopes() -> Vec<String> {
    ["openid", "email", "profile", "offline_access"]
        .map(String::from)
        .to_vec()
}

/// Most characters of a login's `clientSecret`.
pub const MAX_LOGIN_CLIENT_SECRET: usize = 256;

/// How people sign in with an issuer from a terminal: a public OAuth client allowed the
/// device authorization grant and the authorization code grant with PKCE and a loopback
/// redirect (an installed-app or device client, whose secret, if the provider issues
/// one, is not confidential).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoginConfig {
    /// The client id the CLI uses (default: the issuer's `audience`; the ID tokens it
    /// obtains must carry the audience in `aud`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// The scopes asked for (must hold `openid`; `offline_access` gets a refresh token at
    /// most providers).
    #[serde(default = "default_login_scopes")]
    pub scopes: Vec<String>,
    /// The name shown to people choosing a provider (default: the issuer URL).
    #[serde(default)]
    pub display_name: Option<String>,
    /// Only the non-confidential client secret of an installed-app or device client,
    /// for providers that issue one and require it although it is no secret by their
    /// own design (Google's "Desktop app" and "TVs and Limited Input devices" clients).
    /// Never a confidential web client's secret: it is published to every CLI through
    /// the public `GET /api/v1/auth/providers`.
    #[serde(default)]
    pub client_secret: Option<String>,
}

impl LoginConfig {
    /// The client id: the configured one, else the issuer's audience.
    pub fn client_id<'a>(&'a self, issuer: &'a IssuerConfig) -> &'a str {
        self.client_id.as_deref().unwrap_or(&issuer.audience)
    }

    fn check(&self, at: &str) -> Result<(), String> {
        let printable = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic());
        if let Some(c) = &self.client_id
            && !printable(c)
        {
            return Err(format!(
                "{at}.login.clientId {c:?} must be printable ASCII without spaces"
            ));
        }
        if self.scopes.len() > MAX_LOGIN_SCOPES {
            return Err(format!("{at}.login.scopes: at most {MAX_LOGIN_SCOPES}"));
        }
        // RFC 6749, section 3.3: scope tokens are printable ASCII without '"' and '\\'.
        if let Some(bad) = self
            .scopes
            .iter()
            .find(|s| !printable(s) || s.contains(['"', '\\']))
        {
            return Err(format!(
                "{at}.login.scopes: {bad:?} is not a scope (printable ASCII, no spaces or quotes)"
            ));
        }
        if !self.scopes.iter().any(|s| s == "openid") {
            return Err(format!(
                "{at}.login.scopes must hold openid (the CLI signs in with the ID token)"
            ));
        }
        if let Some(c) = &self.client_secret
            && (c.is_empty()
                || c.chars().count() > MAX_LOGIN_CLIENT_SECRET
                || c.chars().any(char::is_control))
        {
            // The value is not repeated: it is meant for CLIs, not for logs.
            return Err(format!(
                "{at}.login.clientSecret must be 1 to {MAX_LOGIN_CLIENT_SECRET} characters without control characters (an installed-app or device client's secret; omit it for a public client without one)"
            ));
        }
        if let Some(n) = &self.display_name
            && (n.trim().is_empty() || n.chars().count() > 64 || n.chars().any(char::is_control))
        {
            return Err(format!(
                "{at}.login.displayName must be 1 to 64 characters without control characters"
            ));
        }
        Ok(())
    }
}

impl IssuerConfig {
    /// An issuer whose tokens carry KubeNova's own `sub`, `roles`, `tenants` and
    /// `projects` claims (the `--oidc-issuer` flags): default claim names, no prefixes,
    /// keys from `jwks_file` or by discovery.
    pub fn with_role_claims(issuer: &str, audience: &str, jwks_file: Option<PathBuf>) -> Self {
        IssuerConfig {
            issuer: issuer.into(),
            audience: audience.into(),
            subject_claim: default_subject_claim(),
            groups_claim: default_groups_claim(),
            subject_prefix: String::new(),
            groups_prefix: String::new(),
            jwks_file,
            role_claims: true,
            login: None,
        }
    }
}

fn is_loopback_url(u: &reqwest::Url) -> bool {
    match u.host_str() {
        Some("localhost") => true,
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

impl OidcConfig {
    /// Reads and checks the file (YAML or JSON).
    pub fn load(path: &std::path::Path) -> Result<OidcConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--oidc-config {}: {e}", path.display()))?;
        let cfg: OidcConfig = serde_saphyr::from_str(&text)
            .map_err(|e| format!("--oidc-config {}: {e}", path.display()))?;
        cfg.check()
            .map_err(|e| format!("--oidc-config {}: {e}", path.display()))?;
        Ok(cfg)
    }

    /// Checks every issuer: an `https` URL (plain `http` only on a loopback address), an
    /// audience, claim names, no issuer twice; at least one issuer.
    pub fn check(&self) -> Result<(), String> {
        if self.issuers.is_empty() {
            return Err("issuers: list at least one issuer".into());
        }
        self.check_issuers()
    }

    /// [`OidcConfig::check`] without requiring an issuer (a document that configures token
    /// exchange only).
    fn check_issuers(&self) -> Result<(), String> {
        if self.issuers.len() > MAX_ISSUERS {
            return Err(format!("issuers: at most {MAX_ISSUERS}"));
        }
        for (i, is) in self.issuers.iter().enumerate() {
            let at = format!("issuers[{i}]");
            check_issuer_url(&at, &is.issuer)?;
            if is.audience.trim().is_empty() {
                return Err(format!(
                    "{at}.audience is empty: give the client id registered for KubeNova"
                ));
            }
            for (name, v) in [
                ("subjectClaim", &is.subject_claim),
                ("groupsClaim", &is.groups_claim),
            ] {
                if v.trim().is_empty() {
                    return Err(format!("{at}.{name} is empty"));
                }
            }
            if let Some(login) = &is.login {
                login.check(&at)?;
            }
            if self.issuers[..i].iter().any(|o| o.issuer == is.issuer) {
                return Err(format!("{at}.issuer {:?} is listed twice", is.issuer));
            }
        }
        Ok(())
    }
}

/// Checks an issuer URL (`at` names it in the message): `https` (plain `http` only on a
/// loopback address), no query or fragment.
pub(crate) fn check_issuer_url(at: &str, issuer: &str) -> Result<(), String> {
    let u = reqwest::Url::parse(issuer)
        .map_err(|e| format!("{at}.issuer {issuer:?} is not a URL: {e}"))?;
    if u.scheme() != "https" && !(u.scheme() == "http" && is_loopback_url(&u)) {
        return Err(format!(
            "{at}.issuer {issuer:?} must be an https URL (http only on a loopback address)"
        ));
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(format!(
            "{at}.issuer {issuer:?} may not carry a query or fragment"
        ));
    }
    Ok(())
}

/// The whole `--oidc-config` document: the identity providers people sign in with
/// ([`OidcConfig`]: `issuers`, `platformRoles`) and, optionally, `tokenExchange` (CI
/// providers whose tokens are exchanged for short-lived KubeNova tokens under trust
/// policies; see `super::exchange`). Without `tokenExchange`, `issuers` must list at least
/// one issuer; with it, `issuers` may be empty.
#[derive(Debug, Clone, PartialEq)]
pub struct OidcDocument {
    /// The identity providers.
    pub identity: OidcConfig,
    /// Token exchange, when configured.
    pub token_exchange: Option<super::exchange::TokenExchangeConfig>,
}

/// The document as written: [`OidcConfig`]'s keys (kept in step with it) and
/// `tokenExchange`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DocumentFile {
    #[serde(default)]
    issuers: Vec<IssuerConfig>,
    #[serde(default)]
    platform_roles: PlatformRoles,
    #[serde(default)]
    token_exchange: Option<super::exchange::TokenExchangeConfig>,
}

impl OidcDocument {
    /// Parses a document (YAML or JSON) and checks it.
    pub fn parse(text: &str) -> Result<OidcDocument, String> {
        let file: DocumentFile = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        let doc = OidcDocument {
            identity: OidcConfig {
                issuers: file.issuers,
                platform_roles: file.platform_roles,
            },
            token_exchange: file.token_exchange,
        };
        doc.check()?;
        Ok(doc)
    }

    /// Reads and checks the file (YAML or JSON); errors name the file.
    pub fn load(path: &std::path::Path) -> Result<OidcDocument, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--oidc-config {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("--oidc-config {}: {e}", path.display()))
    }

    /// Checks the identity providers and the token exchange section.
    pub fn check(&self) -> Result<(), String> {
        match &self.token_exchange {
            None => self.identity.check(),
            Some(x) => {
                self.identity.check_issuers()?;
                x.check(&self.identity)
            }
        }
    }
}

/// The keys of an issuer, and how the last fetch went.
#[derive(Default)]
struct Keys {
    set: Option<JwkSet>,
    /// The last failure, while there is one.
    error: Option<String>,
    /// When the keys were last fetched (or the last attempt).
    attempted: Option<Instant>,
}

/// The cached keys of one issuer: fetched by discovery (`<issuer>/.well-known/openid-configuration`,
/// then its `jwks_uri`) or read once from a file, refreshed at most every
/// [`REFRESH_MIN_GAP`]. Serves the issuers people sign in with ([`Issuer`]) and the CI
/// providers of token exchange (`super::exchange`) alike.
pub struct KeySource {
    issuer: String,
    jwks_file: Option<PathBuf>,
    keys: RwLock<Keys>,
    fetch: tokio::sync::Mutex<()>,
    client: reqwest::Client,
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySource")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// A trusted issuer and its cached keys.
pub struct Issuer {
    /// Its configuration.
    pub config: IssuerConfig,
    source: KeySource,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("issuer", &self.config.issuer)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

impl Issuer {
    fn new(config: IssuerConfig, client: reqwest::Client) -> Result<Issuer, String> {
        let source = KeySource::new(&config.issuer, config.jwks_file.clone(), client)?;
        Ok(Issuer { config, source })
    }

    /// An issuer with a fixed key set (tests, embedding).
    pub fn with_keys(config: IssuerConfig, jwks: JwkSet) -> Issuer {
        let source = KeySource::with_keys(&config.issuer, jwks);
        Issuer { config, source }
    }

    /// Its keys.
    pub fn keys(&self) -> &KeySource {
        &self.source
    }

    /// The key `kid` names (without a `kid`: the only key, if there is one).
    pub fn key(&self, kid: Option<&str>) -> Option<Jwk> {
        self.source.key(kid)
    }

    /// Whether keys were ever fetched, else the reason.
    pub fn ready(&self) -> Result<(), String> {
        self.source.ready()
    }

    /// Fetches the keys again; see [`KeySource::refresh`].
    pub async fn refresh(&self) {
        self.source.refresh().await
    }
}

impl KeySource {
    /// The keys of `issuer`: read now from `jwks_file`, else fetched by discovery with
    /// `client` (by [`KeySource::refresh`]).
    pub fn new(
        issuer: &str,
        jwks_file: Option<PathBuf>,
        client: reqwest::Client,
    ) -> Result<KeySource, String> {
        let mut keys = Keys::default();
        if let Some(file) = &jwks_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("{issuer}: jwksFile {}: {e}", file.display()))?;
            keys.set = Some(
                parse_jwks(&text)
                    .map_err(|e| format!("{issuer}: jwksFile {}: {e}", file.display()))?,
            );
        }
        Ok(KeySource {
            issuer: issuer.to_string(),
            jwks_file,
            keys: RwLock::new(keys),
            fetch: tokio::sync::Mutex::new(()),
            client,
        })
    }

    /// A fixed key set (tests, embedding): never fetched.
    pub fn with_keys(issuer: &str, jwks: JwkSet) -> KeySource {
        KeySource {
            issuer: issuer.to_string(),
            jwks_file: None,
            keys: RwLock::new(Keys {
                set: Some(jwks),
                ..Keys::default()
            }),
            fetch: tokio::sync::Mutex::new(()),
            client: reqwest::Client::new(),
        }
    }

    /// The issuer URL.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        match self.keys.read() {
            Ok(k) => k,
            Err(p) => p.into_inner(),
        }
    }

    /// The key `kid` names (without a `kid`: the only key, if there is one).
    pub fn key(&self, kid: Option<&str>) -> Option<Jwk> {
        let keys = self.read();
        let set = keys.set.as_ref()?;
        match kid {
            Some(k) => set.find(k).cloned(),
            None if set.keys.len() == 1 => set.keys.first().cloned(),
            None => None,
        }
    }

    /// Whether keys were ever fetched, else the reason.
    pub fn ready(&self) -> Result<(), String> {
        let keys = self.read();
        match (&keys.set, &keys.error) {
            (Some(_), _) => Ok(()),
            (None, Some(e)) => Err(format!("{}: {e}", self.issuer)),
            (None, None) => Err(format!("{}: keys not fetched yet", self.issuer)),
        }
    }

    /// Fetches the keys again (discovery, then `jwks_uri`) unless they were fetched less
    /// than [`REFRESH_MIN_GAP`] ago (then returns at once). Keys from a file are kept.
    /// A failure keeps the keys held before and is logged with the issuer, not the token.
    pub async fn refresh(&self) {
        if self.jwks_file.is_some() {
            return;
        }
        let _one = self.fetch.lock().await;
        if self
            .read()
            .attempted
            .is_some_and(|at| at.elapsed() < REFRESH_MIN_GAP)
        {
            return;
        }
        let res = self.fetch_keys().await;
        let mut keys = match self.keys.write() {
            Ok(k) => k,
            Err(p) => p.into_inner(),
        };
        keys.attempted = Some(Instant::now());
        match res {
            Ok(set) => {
                let n = set.keys.len();
                keys.set = Some(set);
                keys.error = None;
                tracing::debug!(issuer = %self.issuer, keys = n, "identity provider keys fetched");
            }
            Err(e) => {
                tracing::warn!(issuer = %self.issuer, error = %e, "identity provider keys could not be fetched; keeping the keys held before");
                keys.error = Some(e);
            }
        }
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        let resp = self
            .client
            .get(url)
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {}", e.without_url()))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", resp.status().as_u16()));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT as u64)
        {
            return Err(format!("GET {url}: larger than {MAX_DOCUMENT} bytes"));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("GET {url}: {}", e.without_url()))?;
        if body.len() > MAX_DOCUMENT {
            return Err(format!("GET {url}: larger than {MAX_DOCUMENT} bytes"));
        }
        Ok(body.to_vec())
    }

    async fn fetch_keys(&self) -> Result<JwkSet, String> {
        let base = self.issuer.trim_end_matches('/');
        let url = format!("{base}/.well-known/openid-configuration");
        let body = self.get(&url).await?;
        let d: Discovery = serde_json::from_slice(&body)
            .map_err(|e| format!("{url}: not an OIDC discovery document: {e}"))?;
        // OpenID Connect Discovery: the document's issuer is exactly the configured one.
        if d.issuer != self.issuer {
            return Err(format!(
                "{url} names the issuer {:?}, not {:?}: configure the issuer exactly as its tokens' iss",
                d.issuer, self.issuer
            ));
        }
        let jwks_url = reqwest::Url::parse(&d.jwks_uri)
            .map_err(|e| format!("{url}: jwks_uri {:?} is not a URL: {e}", d.jwks_uri))?;
        if jwks_url.scheme() != "https"
            && !(jwks_url.scheme() == "http" && is_loopback_url(&jwks_url))
        {
            return Err(format!("{url}: jwks_uri {:?} is not https", d.jwks_uri));
        }
        let body = self.get(jwks_url.as_str()).await?;
        let text = std::str::from_utf8(&body).map_err(|_| format!("{jwks_url}: not UTF-8"))?;
        parse_jwks(text).map_err(|e| format!("{jwks_url}: {e}"))
    }
}

fn parse_jwks(text: &str) -> Result<JwkSet, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("not a JWK set: {e}"))?;
    if set.keys.is_empty() {
        return Err("the JWK set has no keys".into());
    }
    Ok(set)
}

/// The trusted issuers, the platform-role mapping and token exchange.
#[derive(Debug)]
pub struct Oidc {
    issuers: Vec<Arc<Issuer>>,
    /// Groups granting platform roles.
    pub platform_roles: PlatformRoles,
    exchange: Option<Arc<super::exchange::TokenExchange>>,
}

fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .map_err(|e| format!("identity provider HTTP client: {e}"))
}

impl Oidc {
    /// From a checked configuration; keys from files are read now, the others are fetched
    /// by [`Oidc::spawn_refresher`] (and at once for a token naming an unknown key).
    pub fn new(cfg: OidcConfig) -> Result<Oidc, String> {
        Self::from_document(OidcDocument {
            identity: cfg,
            token_exchange: None,
        })
    }

    /// From a whole document: the identity providers and token exchange (its CI
    /// providers' keys are fetched and refreshed like the identity providers').
    pub fn from_document(doc: OidcDocument) -> Result<Oidc, String> {
        doc.check()?;
        let client = http_client()?;
        let issuers = doc
            .identity
            .issuers
            .into_iter()
            .map(|c| Issuer::new(c, client.clone()).map(Arc::new))
            .collect::<Result<_, _>>()?;
        let exchange = doc
            .token_exchange
            .map(|x| super::exchange::TokenExchange::new(x, &client).map(Arc::new))
            .transpose()?;
        Ok(Oidc {
            issuers,
            platform_roles: doc.identity.platform_roles,
            exchange,
        })
    }

    /// From issuers built by the caller (tests, embedding).
    pub fn from_issuers(issuers: Vec<Issuer>, platform_roles: PlatformRoles) -> Oidc {
        Oidc {
            issuers: issuers.into_iter().map(Arc::new).collect(),
            platform_roles,
            exchange: None,
        }
    }

    /// Token exchange, when the document configures it.
    pub fn token_exchange(&self) -> Option<&Arc<super::exchange::TokenExchange>> {
        self.exchange.as_ref()
    }

    /// Every key source: the identity providers', then token exchange's CI providers'.
    fn key_sources(&self) -> Vec<&KeySource> {
        let mut out: Vec<&KeySource> = self.issuers.iter().map(|i| i.keys()).collect();
        if let Some(x) = &self.exchange {
            out.extend(x.key_sources());
        }
        out
    }

    /// The issuer whose URL is `iss`.
    pub fn issuer(&self, iss: &str) -> Option<&Arc<Issuer>> {
        self.issuers.iter().find(|i| i.config.issuer == iss)
    }

    /// The issuers people sign in with (those with a `login` section), in configuration
    /// order.
    pub fn login_issuers(&self) -> impl Iterator<Item = (&IssuerConfig, &LoginConfig)> {
        self.issuers
            .iter()
            .filter_map(|i| i.config.login.as_ref().map(|l| (&i.config, l)))
    }

    /// The issuers' URLs.
    pub fn issuer_urls(&self) -> Vec<&str> {
        self.issuers
            .iter()
            .map(|i| i.config.issuer.as_str())
            .collect()
    }

    /// Keeps the keys fresh (identity providers and token exchange's CI providers): every
    /// [`REFRESH_EVERY`], and every [`REFRESH_MIN_GAP`] while an issuer has none.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut last_full = Instant::now();
            loop {
                let full = last_full.elapsed() >= REFRESH_EVERY;
                let due = this
                    .key_sources()
                    .into_iter()
                    .filter(|k| full || k.ready().is_err())
                    .map(|k| k.refresh());
                futures::future::join_all(due).await;
                if full {
                    last_full = Instant::now();
                }
                tokio::time::sleep(REFRESH_MIN_GAP).await;
            }
        })
    }

    /// Ready when every issuer (and CI provider) has keys; else which have none and why.
    pub fn readiness(&self) -> Result<(), String> {
        let failed: Vec<String> = self
            .key_sources()
            .into_iter()
            .filter_map(|k| k.ready().err())
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "identity provider keys unavailable: {}",
                failed.join("; ")
            ))
        }
    }
}
