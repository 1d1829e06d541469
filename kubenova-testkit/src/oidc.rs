//! An in-process OpenID Connect identity provider for tests and demos.
//!
//! It serves what a relying party such as the KubeNova manager reads from a real provider
//! (Keycloak, Dex, Entra ID, Okta, Google): the discovery document at
//! `/.well-known/openid-configuration` and the JSON Web Key Set it names (`/keys`), with
//! ES256 (ECDSA P-256) signing keys that can be rotated while it runs. Tokens are signed
//! with [`jsonwebtoken`], the same library relying parties verify with, and keys are
//! generated with [`rcgen`] (ring), which the test kit already uses for its certificates.
//!
//! It is also a small OAuth 2.0 authorization server for public clients (no client
//! secret, or with [`Provider::require_client_secret`] the non-confidential secret of an
//! installed-app client, as Google issues, sent in the body or with HTTP Basic), so login
//! flows can be tested end to end:
//!
//! - **Device authorization grant** (RFC 8628): `POST /device_authorization` answers a
//!   `device_code` and a `user_code`; the token endpoint answers `authorization_pending`
//!   until a test approves the user code with [`Provider::approve`] (or a person does, on
//!   the verification page `/device` as the user of [`Provider::set_signed_in`]),
//!   `slow_down` to a client polling faster than the interval, `access_denied` after
//!   [`Provider::deny`] and `expired_token` once the code has expired.
//! - **Authorization code with PKCE** (RFC 7636, loopback redirects per RFC 8252):
//!   `GET /authorize` redirects to the client's `http://127.0.0.1:<any port>/callback`
//!   with a one-time code and the `state`, for the user of [`Provider::set_signed_in`].
//!   Only `S256` challenges are accepted; the token endpoint checks the `code_verifier`.
//! - **Refresh tokens** that rotate: each refresh answers a new refresh token and retires
//!   the old one; presenting a retired one is `invalid_grant` and revokes the whole chain
//!   (reuse detection, as OAuth 2.0 Security Best Current Practice asks).
//! - **Revocation** (RFC 7009) at `POST /revoke`.
//!
//! Token responses carry an `id_token` (when the scope holds `openid`: `aud` = the client
//! id, `sub`, `groups`, `email` for subjects that look like one, `preferred_username`) and
//! an `access_token` (a JWT too), valid for [`Provider::set_token_ttl`] (default
//! [`DEFAULT_TOKEN_TTL_SECONDS`]). [`Provider::grants`] and
//! [`Provider::refresh_token_active`] let tests observe what clients did.
//!
//! The provider listens on plain HTTP on loopback: relying parties accept `http://` only
//! for loopback issuers, which is what tests need and nothing else.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use kubenova_testkit::oidc::Provider;
//! use serde_json::json;
//!
//! let idp = Provider::start().await?;
//! // What the manager is configured with: the issuer URL (discovery does the rest).
//! println!("issuer: {}", idp.issuer());
//! // A token for alice, member of two groups, for the audience `kubenova`.
//! let token = idp.sign(json!({
//!     "aud": "kubenova", "sub": "alice", "groups": ["platform", "team-web"],
//! }));
//! assert_eq!(token.split('.').count(), 3);
//! // Rotation: tokens signed from now on carry a kid the relying party has not seen.
//! idp.rotate();
//! // A login: the CLI under test asked for a device code and printed the user code.
//! # let user_code = String::new();
//! assert!(idp.approve(&user_code, "alice@example.com", &["platform"]));
//! // Browser logins (authorization code + PKCE) sign in as this user.
//! idp.set_signed_in("alice@example.com", &["platform"]);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Json;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::Rng as _;
use serde_json::{Value, json};
use sha2::Digest as _;

/// Lifetime of tokens whose claims do not set `exp`, and of issued tokens by default.
pub const DEFAULT_TOKEN_TTL_SECONDS: i64 = 300;
/// The polling interval device authorization responses name by default (seconds).
pub const DEFAULT_DEVICE_INTERVAL_SECONDS: u64 = 1;
/// How long device codes are valid by default (seconds).
pub const DEFAULT_DEVICE_EXPIRY_SECONDS: u64 = 600;
/// How long authorization codes are valid.
pub const CODE_TTL: Duration = Duration::from_secs(60);
/// The grant type of device access token requests (RFC 8628, section 3.4).
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// One signing key: the private half for [`jsonwebtoken`], the public half as a JWK.
struct Key {
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
}

impl Key {
    fn generate() -> anyhow::Result<Key> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .context("generating a P-256 key")?;
        let encoding = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes())
            .context("loading the generated key")?;
        // The uncompressed SEC1 point: 0x04 || x (32 bytes) || y (32 bytes).
        let point = pair.public_key_raw();
        anyhow::ensure!(
            point.len() == 65 && point[0] == 4,
            "unexpected P-256 public key encoding"
        );
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let kid = uuid::Uuid::new_v4().simple().to_string();
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..]),
            "kid": kid, "use": "sig", "alg": "ES256",
        });
        Ok(Key { kid, encoding, jwk })
    }
}

/// A person signed in at the provider: who tokens are issued for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The `sub` claim (also `preferred_username`, and `email` when it contains an `@`).
    pub subject: String,
    /// The `groups` claim.
    pub groups: Vec<String>,
}

impl User {
    fn new(subject: &str, groups: &[&str]) -> User {
        User {
            subject: subject.to_string(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }
}

/// Where a device authorization request stands.
#[derive(Debug, Clone)]
enum DeviceStatus {
    Pending,
    Approved(User),
    Denied,
}

struct Device {
    user_code: String,
    client_id: String,
    scope: String,
    expires_at: Instant,
    interval: Duration,
    last_poll: Option<Instant>,
    status: DeviceStatus,
}

struct Code {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    scope: String,
    nonce: Option<String>,
    user: User,
    expires_at: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefreshState {
    Active,
    /// Exchanged for a newer one.
    Rotated,
    Revoked,
}

struct Refresh {
    client_id: String,
    user: User,
    scope: String,
    /// Every refresh token descending from one grant shares it.
    family: u64,
    state: RefreshState,
}

struct Settings {
    token_ttl: Duration,
    device_interval: Duration,
    device_expiry: Duration,
    signed_in: Option<User>,
    /// The client secret every client must authenticate with, when set.
    client_secret: Option<String>,
}

#[derive(Default)]
struct Grants {
    devices: HashMap<String, Device>,
    codes: HashMap<String, Code>,
    /// Codes already exchanged, and the token family they started.
    used_codes: HashMap<String, u64>,
    refresh: HashMap<String, Refresh>,
    next_family: u64,
    /// The grant type of every token response that issued tokens, in order.
    log: Vec<String>,
    revocations: usize,
}

struct Inner {
    issuer: String,
    /// The published keys; the last one signs.
    keys: Mutex<Vec<Key>>,
    settings: Mutex<Settings>,
    grants: Mutex<Grants>,
    shutdown: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

/// A running identity provider. Clones share it; it stops when [`Provider::shutdown`] is
/// called or the runtime ends.
#[derive(Clone)]
pub struct Provider {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.inner.issuer)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A random URL-safe secret of 32 bytes.
fn secret() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill(&mut b);
    b64url(&b)
}

/// The characters of user codes (RFC 8628, section 6.1: no vowels, no look-alikes).
const USER_CODE_CHARS: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";

/// A user code `XXXX-XXXX`.
fn user_code() -> String {
    let mut rng = rand::thread_rng();
    let mut s = String::with_capacity(9);
    for i in 0..8 {
        if i == 4 {
            s.push('-');
        }
        s.push(USER_CODE_CHARS[rng.gen_range(0..USER_CODE_CHARS.len())] as char);
    }
    s
}

/// A user code as typed (any case, dashes and spaces ignored) in canonical form.
fn normalize_user_code(s: &str) -> String {
    let chars: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if chars.len() == 8 {
        format!("{}-{}", &chars[..4], &chars[4..])
    } else {
        chars
    }
}

impl Provider {
    /// Starts a provider on a free loopback port with one signing key.
    pub async fn start() -> anyhow::Result<Provider> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the identity provider")?;
        let issuer = format!("http://{}", listener.local_addr()?);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let provider = Provider {
            inner: Arc::new(Inner {
                issuer,
                keys: Mutex::new(vec![Key::generate()?]),
                settings: Mutex::new(Settings {
                    token_ttl: Duration::from_secs(DEFAULT_TOKEN_TTL_SECONDS as u64),
                    device_interval: Duration::from_secs(DEFAULT_DEVICE_INTERVAL_SECONDS),
                    device_expiry: Duration::from_secs(DEFAULT_DEVICE_EXPIRY_SECONDS),
                    signed_in: None,
                    client_secret: None,
                }),
                grants: Mutex::new(Grants::default()),
                shutdown: Mutex::new(Some(tx)),
            }),
        };
        let app = axum::Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/keys", get(keys))
            .route("/device_authorization", post(device_authorization))
            .route("/device", get(device_page).post(device_decision))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/revoke", post(revoke))
            .with_state(provider.clone());
        tokio::spawn(async move {
            let stop = async {
                let _ = rx.await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::warn!(error = %e, "the test identity provider stopped");
            }
        });
        Ok(provider)
    }

    /// The issuer URL (`http://127.0.0.1:<port>`), exactly as it appears in `iss`.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// The published JSON Web Key Set (`{"keys": [...]}`).
    pub fn jwks(&self) -> Value {
        let keys = lock(&self.inner.keys);
        json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
    }

    /// Replaces every key with a new one: tokens signed before no longer verify, and
    /// tokens signed from now on carry a `kid` relying parties have not seen yet.
    pub fn rotate(&self) {
        let key = Key::generate().expect("generating a P-256 key");
        *lock(&self.inner.keys) = vec![key];
    }

    /// Adds a new signing key and keeps the old ones published (a rollover).
    pub fn add_key(&self) {
        let key = Key::generate().expect("generating a P-256 key");
        lock(&self.inner.keys).push(key);
    }

    /// Signs `claims` (a JSON object) with the current key, ES256, `kid` in the header.
    /// `iss`, `iat` and `exp` (now + [`DEFAULT_TOKEN_TTL_SECONDS`]) are added when absent;
    /// a claim set to `null` is removed, so tests can make tokens that lack one.
    pub fn sign(&self, claims: Value) -> String {
        self.sign_for(claims, DEFAULT_TOKEN_TTL_SECONDS, None)
    }

    fn sign_for(&self, claims: Value, ttl_seconds: i64, typ: Option<&str>) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut all = json!({
            "iss": self.inner.issuer, "iat": now, "exp": now + ttl_seconds,
        });
        let given = claims.as_object().expect("claims must be a JSON object");
        for (k, v) in given {
            if v.is_null() {
                all.as_object_mut().expect("object").remove(k);
            } else {
                all[k] = v.clone();
            }
        }
        let keys = lock(&self.inner.keys);
        let key = keys.last().expect("at least one key");
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.kid.clone());
        if let Some(t) = typ {
            header.typ = Some(t.to_string());
        }
        jsonwebtoken::encode(&header, &all, &key.encoding).expect("signing a token")
    }

    /// The lifetime of the ID and access tokens issued from now on (`expires_in`). A
    /// short one makes clients refresh; zero issues tokens that are already expired.
    pub fn set_token_ttl(&self, ttl: Duration) {
        lock(&self.inner.settings).token_ttl = ttl;
    }

    /// The polling interval (whole seconds, at least 1) named by device authorization
    /// responses from now on; polling a device code more often is `slow_down`.
    pub fn set_device_interval(&self, interval: Duration) {
        lock(&self.inner.settings).device_interval = interval.max(Duration::from_secs(1));
    }

    /// How long device codes issued from now on are valid (zero: expired at once, so
    /// polling them is `expired_token`).
    pub fn set_device_expiry(&self, expiry: Duration) {
        lock(&self.inner.settings).device_expiry = expiry;
    }

    /// The person signed in at the provider's web pages: `/authorize` issues codes for
    /// them, and the verification page approves device requests as them.
    pub fn set_signed_in(&self, subject: &str, groups: &[&str]) {
        lock(&self.inner.settings).signed_in = Some(User::new(subject, groups));
    }

    /// Clients must authenticate with `secret` from now on (`client_secret` in the body,
    /// `client_secret_post`, or the password of HTTP Basic, `client_secret_basic`, RFC 6749
    /// section 2.3.1) at the device authorization, token and revocation endpoints; without
    /// it or with another one they are answered `invalid_client` (401). This is how
    /// providers such as Google treat their installed-app and device clients, whose secret
    /// is not confidential but must be sent.
    pub fn require_client_secret(&self, secret: &str) {
        lock(&self.inner.settings).client_secret = Some(secret.to_string());
    }

    /// Nobody is signed in any more: `/authorize` answers `access_denied`.
    pub fn sign_out(&self) {
        lock(&self.inner.settings).signed_in = None;
    }

    /// The user codes of device requests waiting for a decision (not expired).
    pub fn pending_user_codes(&self) -> Vec<String> {
        let now = Instant::now();
        lock(&self.inner.grants)
            .devices
            .values()
            .filter(|d| matches!(d.status, DeviceStatus::Pending) && d.expires_at > now)
            .map(|d| d.user_code.clone())
            .collect()
    }

    /// Approves the pending device request with `user_code` (as typed: any case, dashes
    /// optional) for `subject` in `groups`; false when there is no such pending request.
    pub fn approve(&self, user_code: &str, subject: &str, groups: &[&str]) -> bool {
        self.decide(
            user_code,
            DeviceStatus::Approved(User::new(subject, groups)),
        )
    }

    /// Denies the pending device request with `user_code` (the client then gets
    /// `access_denied`); false when there is no such pending request.
    pub fn deny(&self, user_code: &str) -> bool {
        self.decide(user_code, DeviceStatus::Denied)
    }

    fn decide(&self, user_code: &str, to: DeviceStatus) -> bool {
        let code = normalize_user_code(user_code);
        let now = Instant::now();
        let mut g = lock(&self.inner.grants);
        match g.devices.values_mut().find(|d| {
            d.user_code == code && matches!(d.status, DeviceStatus::Pending) && d.expires_at > now
        }) {
            Some(d) => {
                d.status = to;
                true
            }
            None => false,
        }
    }

    /// The `grant_type` of every token response that issued tokens, oldest first
    /// (`urn:ietf:params:oauth:grant-type:device_code`, `authorization_code`,
    /// `refresh_token`).
    pub fn grants(&self) -> Vec<String> {
        lock(&self.inner.grants).log.clone()
    }

    /// How many revocation requests were answered.
    pub fn revocations(&self) -> usize {
        lock(&self.inner.grants).revocations
    }

    /// Whether `refresh_token` was issued and still refreshes (not rotated, not revoked).
    pub fn refresh_token_active(&self, refresh_token: &str) -> bool {
        lock(&self.inner.grants)
            .refresh
            .get(refresh_token)
            .is_some_and(|r| r.state == RefreshState::Active)
    }

    /// Stops serving (discovery and keys become unreachable).
    pub fn shutdown(&self) {
        if let Some(tx) = lock(&self.inner.shutdown).take() {
            let _ = tx.send(());
        }
    }

    /// Issues an ID token (when `scope` holds `openid`), an access token and a new
    /// refresh token of `family` (a new family when `None`); logs `grant`.
    fn issue(&self, g: &mut Grants, grant: &str, to: Issue<'_>, family: Option<u64>) -> Response {
        let Issue {
            client_id,
            user,
            scope,
            nonce,
        } = to;
        let ttl = lock(&self.inner.settings).token_ttl.as_secs() as i64;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let access = self.sign_for(
            json!({
                "sub": user.subject, "aud": client_id, "client_id": client_id,
                "scope": scope, "groups": user.groups,
                "jti": uuid::Uuid::new_v4().to_string(),
            }),
            ttl,
            Some("at+jwt"),
        );
        let mut body = json!({
            "access_token": access, "token_type": "Bearer", "expires_in": ttl, "scope": scope,
        });
        if scope.split(' ').any(|s| s == "openid") {
            let mut claims = json!({
                "sub": user.subject, "aud": client_id, "azp": client_id, "auth_time": now,
                "groups": user.groups, "preferred_username": user.subject,
            });
            if user.subject.contains('@') {
                claims["email"] = json!(user.subject);
                claims["email_verified"] = json!(true);
            }
            if let Some(n) = nonce {
                claims["nonce"] = json!(n);
            }
            body["id_token"] = json!(self.sign_for(claims, ttl, None));
        }
        let family = family.unwrap_or_else(|| {
            g.next_family += 1;
            g.next_family
        });
        let refresh = secret();
        g.refresh.insert(
            refresh.clone(),
            Refresh {
                client_id: client_id.to_string(),
                user: user.clone(),
                scope: scope.to_string(),
                family,
                state: RefreshState::Active,
            },
        );
        body["refresh_token"] = json!(refresh);
        g.log.push(grant.to_string());
        no_store(StatusCode::OK, body)
    }
}

/// Whom tokens are issued to, and for what.
struct Issue<'a> {
    client_id: &'a str,
    user: &'a User,
    scope: &'a str,
    nonce: Option<&'a str>,
}

/// A JSON answer that must not be cached (RFC 6749, section 5.1).
fn no_store(status: StatusCode, body: Value) -> Response {
    let mut r = (status, Json(body)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

/// An OAuth error answer (RFC 6749, section 5.2): 400, or 401 for `invalid_client`.
fn oauth_error(error: &str, description: &str) -> Response {
    let status = if error == "invalid_client" {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::BAD_REQUEST
    };
    let mut r = no_store(
        status,
        json!({"error": error, "error_description": description}),
    );
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"kubenova-testkit\""),
        );
    }
    r
}

/// Form or query parameters, each at most once (RFC 6749, section 3.1).
fn params(pairs: Vec<(String, String)>) -> Result<HashMap<String, String>, String> {
    let mut m = HashMap::new();
    for (k, v) in pairs {
        if m.insert(k.clone(), v).is_some() {
            return Err(format!("the parameter {k} is given more than once"));
        }
    }
    Ok(m)
}

/// One form-urlencoded part of HTTP Basic client credentials (RFC 6749, section 2.3.1).
fn form_decoded(s: &str) -> String {
    url::form_urlencoded::parse(format!("v={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Equal, in time that depends only on the lengths.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The authenticated client: its id (`client_id` in the body, or the user name of HTTP
/// Basic authentication; both must agree when both are given) and, when the provider
/// requires one, its secret (`client_secret` in the body or the Basic password, not both).
fn client_id(
    provider: &Provider,
    headers: &HeaderMap,
    p: &HashMap<String, String>,
) -> Result<String, Response> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .map(|s| match s.split_once(':') {
            Some((u, pw)) => (form_decoded(u), Some(form_decoded(pw))),
            None => (form_decoded(&s), None),
        });
    let (basic_id, basic_secret) = basic.map_or((None, None), |(u, pw)| (Some(u), pw));
    let body = p.get("client_id").cloned();
    let id = match (basic_id, body) {
        (Some(a), Some(b)) if a != b => {
            return Err(oauth_error(
                "invalid_client",
                "client_id and the Basic user name differ",
            ));
        }
        (Some(id), _) | (None, Some(id)) if !id.is_empty() => id,
        _ => return Err(oauth_error("invalid_client", "client_id is required")),
    };
    let required = lock(&provider.inner.settings).client_secret.clone();
    if let Some(required) = required {
        let basic_secret = basic_secret.filter(|s| !s.is_empty());
        let given = match (basic_secret, p.get("client_secret")) {
            (Some(_), Some(_)) => {
                return Err(oauth_error(
                    "invalid_client",
                    "the client authenticated in more than one way (Basic and client_secret)",
                ));
            }
            (Some(s), None) => s,
            (None, Some(s)) => s.clone(),
            (None, None) => {
                return Err(oauth_error(
                    "invalid_client",
                    "client authentication required: this client has a client secret",
                ));
            }
        };
        if !same_secret(&given, &required) {
            return Err(oauth_error(
                "invalid_client",
                "client authentication failed: wrong client secret",
            ));
        }
    }
    Ok(id)
}

async fn discovery(State(p): State<Provider>) -> Json<Value> {
    let base = p.issuer();
    let auth_methods = if lock(&p.inner.settings).client_secret.is_some() {
        json!(["client_secret_post", "client_secret_basic"])
    } else {
        json!(["none"])
    };
    Json(json!({
        "issuer": base,
        "jwks_uri": format!("{base}/keys"),
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "device_authorization_endpoint": format!("{base}/device_authorization"),
        "revocation_endpoint": format!("{base}/revoke"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token", DEVICE_CODE_GRANT],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "scopes_supported": ["openid", "email", "profile", "groups", "offline_access"],
        "claims_supported": ["sub", "email", "groups", "preferred_username"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
    }))
}

async fn keys(State(p): State<Provider>) -> Json<Value> {
    Json(p.jwks())
}

/// RFC 8628, section 3.1 and 3.2.
async fn device_authorization(
    State(p): State<Provider>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let f = match params(pairs) {
        Ok(f) => f,
        Err(e) => return oauth_error("invalid_request", &e),
    };
    let client_id = match client_id(&p, &headers, &f) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let scope = f.get("scope").cloned().unwrap_or_default();
    let (interval, expiry) = {
        let s = lock(&p.inner.settings);
        (s.device_interval, s.device_expiry)
    };
    let device_code = secret();
    let user_code = user_code();
    lock(&p.inner.grants).devices.insert(
        device_code.clone(),
        Device {
            user_code: user_code.clone(),
            client_id,
            scope,
            expires_at: Instant::now() + expiry,
            interval,
            last_poll: None,
            status: DeviceStatus::Pending,
        },
    );
    let base = p.issuer();
    no_store(
        StatusCode::OK,
        json!({
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": format!("{base}/device"),
            "verification_uri_complete": format!("{base}/device?user_code={user_code}"),
            "expires_in": expiry.as_secs(),
            "interval": interval.as_secs(),
        }),
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The verification page: a form to approve or deny a device request.
async fn device_page(Query(pairs): Query<Vec<(String, String)>>) -> Html<String> {
    let code = pairs
        .iter()
        .find(|(k, _)| k == "user_code")
        .map(|(_, v)| html_escape(v))
        .unwrap_or_default();
    Html(format!(
        "<!doctype html><title>Sign in a device</title>\
         <form method=\"post\" action=\"/device\">\
         <label>Code <input name=\"user_code\" value=\"{code}\"></label>\
         <button name=\"action\" value=\"approve\">Approve</button>\
         <button name=\"action\" value=\"deny\">Deny</button></form>"
    ))
}

/// The verification form's answer, as the person of [`Provider::set_signed_in`].
async fn device_decision(
    State(p): State<Provider>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let f = match params(pairs) {
        Ok(f) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, Html(html_escape(&e))).into_response(),
    };
    let code = f.get("user_code").map(String::as_str).unwrap_or_default();
    let decided = match f.get("action").map(String::as_str) {
        Some("approve") => {
            let Some(user) = lock(&p.inner.settings).signed_in.clone() else {
                return (
                    StatusCode::UNAUTHORIZED,
                    Html("Nobody is signed in.".to_string()),
                )
                    .into_response();
            };
            p.decide(code, DeviceStatus::Approved(user))
        }
        Some("deny") => p.decide(code, DeviceStatus::Denied),
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                Html("action must be approve or deny".to_string()),
            )
                .into_response();
        }
    };
    if decided {
        Html("Done: you may return to your device.".to_string()).into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            Html("No pending request has this code.".to_string()),
        )
            .into_response()
    }
}

/// A loopback redirect URI as RFC 8252 (section 7.3) describes: `http`, an IP literal
/// loopback host, any port, the path `/callback`.
fn loopback_redirect(raw: &str) -> Option<url::Url> {
    let u = url::Url::parse(raw).ok()?;
    let loopback = matches!(
        u.host(),
        Some(url::Host::Ipv4(ip)) if ip.is_loopback()
    ) || matches!(u.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback());
    (u.scheme() == "http"
        && loopback
        && u.path() == "/callback"
        && u.fragment().is_none()
        && u.username().is_empty()
        && u.password().is_none())
    .then_some(u)
}

/// RFC 6749, section 4.1.1, with PKCE (RFC 7636, S256 only) and loopback redirects.
async fn authorize(
    State(p): State<Provider>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let bad = |m: &str| (StatusCode::BAD_REQUEST, Html(html_escape(m))).into_response();
    let f = match params(pairs) {
        Ok(f) => f,
        Err(e) => return bad(&e),
    };
    // Without a valid client and redirect URI, the error is shown, never redirected.
    let Some(client_id) = f.get("client_id").filter(|c| !c.is_empty()) else {
        return bad("client_id is required");
    };
    let Some(redirect_raw) = f.get("redirect_uri") else {
        return bad("redirect_uri is required");
    };
    let Some(redirect) = loopback_redirect(redirect_raw) else {
        return bad("redirect_uri must be http://127.0.0.1:<port>/callback (or [::1])");
    };
    let state = f.get("state").cloned();
    let back = |params: &[(&str, &str)]| {
        let mut u = redirect.clone();
        {
            let mut q = u.query_pairs_mut();
            for (k, v) in params {
                q.append_pair(k, v);
            }
            if let Some(s) = &state {
                q.append_pair("state", s);
            }
        }
        let mut r = StatusCode::FOUND.into_response();
        r.headers_mut().insert(
            header::LOCATION,
            HeaderValue::from_str(u.as_str()).expect("a URL is a header value"),
        );
        r
    };
    let error = |e: &str, d: &str| back(&[("error", e), ("error_description", d)]);
    if f.get("response_type").map(String::as_str) != Some("code") {
        return error("unsupported_response_type", "response_type must be code");
    }
    let Some(challenge) = f.get("code_challenge") else {
        return error("invalid_request", "code_challenge is required (PKCE)");
    };
    if f.get("code_challenge_method").map(String::as_str) != Some("S256") {
        return error(
            "invalid_request",
            "code_challenge_method must be S256 (plain is not supported)",
        );
    }
    if challenge.len() != 43
        || !challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return error(
            "invalid_request",
            "code_challenge must be BASE64URL(SHA256(code_verifier))",
        );
    }
    let Some(user) = lock(&p.inner.settings).signed_in.clone() else {
        return error("access_denied", "nobody is signed in at the provider");
    };
    let code = secret();
    lock(&p.inner.grants).codes.insert(
        code.clone(),
        Code {
            client_id: client_id.clone(),
            redirect_uri: redirect_raw.clone(),
            challenge: challenge.clone(),
            scope: f.get("scope").cloned().unwrap_or_default(),
            nonce: f.get("nonce").cloned(),
            user,
            expires_at: Instant::now() + CODE_TTL,
        },
    );
    back(&[("code", &code)])
}

/// A PKCE code verifier: 43 to 128 unreserved characters (RFC 7636, section 4.1).
fn valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// The token endpoint: device code, authorization code and refresh token grants.
async fn token(
    State(p): State<Provider>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let f = match params(pairs) {
        Ok(f) => f,
        Err(e) => return oauth_error("invalid_request", &e),
    };
    let client_id = match client_id(&p, &headers, &f) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or_default();
    let grant = get("grant_type");
    let mut g = lock(&p.inner.grants);
    match grant {
        DEVICE_CODE_GRANT => {
            let now = Instant::now();
            let Some(d) = g.devices.get_mut(get("device_code")) else {
                return oauth_error("invalid_grant", "unknown device_code");
            };
            if d.client_id != client_id {
                return oauth_error("invalid_grant", "the device_code is another client's");
            }
            if d.expires_at <= now {
                return oauth_error("expired_token", "the device_code has expired");
            }
            // RFC 8628, section 3.5: polling faster than the interval is slow_down, and the
            // interval grows by 5 seconds for this request.
            if let Some(last) = d.last_poll
                && now.duration_since(last) < d.interval
            {
                d.last_poll = Some(now);
                d.interval += Duration::from_secs(5);
                return oauth_error("slow_down", "polling too fast");
            }
            d.last_poll = Some(now);
            match d.status.clone() {
                DeviceStatus::Pending => {
                    oauth_error("authorization_pending", "the user has not decided yet")
                }
                DeviceStatus::Denied => {
                    let code = get("device_code").to_string();
                    g.devices.remove(&code);
                    oauth_error("access_denied", "the user denied the request")
                }
                DeviceStatus::Approved(user) => {
                    let scope = d.scope.clone();
                    let code = get("device_code").to_string();
                    g.devices.remove(&code);
                    p.issue(
                        &mut g,
                        grant,
                        Issue {
                            client_id: &client_id,
                            user: &user,
                            scope: &scope,
                            nonce: None,
                        },
                        None,
                    )
                }
            }
        }
        "authorization_code" => {
            let code_param = get("code").to_string();
            let Some(code) = g.codes.remove(&code_param) else {
                // A code presented twice revokes what it issued (RFC 6749, section 4.1.2).
                if let Some(family) = g.used_codes.get(&code_param).copied() {
                    revoke_family(&mut g, family);
                }
                return oauth_error("invalid_grant", "unknown or already used code");
            };
            g.next_family += 1;
            let family = g.next_family;
            g.used_codes.insert(code_param, family);
            if code.expires_at <= Instant::now() {
                return oauth_error("invalid_grant", "the code has expired");
            }
            if code.client_id != client_id {
                return oauth_error("invalid_grant", "the code is another client's");
            }
            if get("redirect_uri") != code.redirect_uri {
                return oauth_error(
                    "invalid_grant",
                    "redirect_uri differs from the authorization request's",
                );
            }
            let verifier = get("code_verifier");
            if !valid_verifier(verifier) {
                return oauth_error("invalid_request", "code_verifier is missing or malformed");
            }
            if b64url(&sha2::Sha256::digest(verifier.as_bytes())) != code.challenge {
                return oauth_error(
                    "invalid_grant",
                    "code_verifier does not match the code_challenge",
                );
            }
            p.issue(
                &mut g,
                grant,
                Issue {
                    client_id: &client_id,
                    user: &code.user,
                    scope: &code.scope,
                    nonce: code.nonce.as_deref(),
                },
                Some(family),
            )
        }
        "refresh_token" => {
            let token = get("refresh_token").to_string();
            let Some(r) = g.refresh.get(&token) else {
                return oauth_error("invalid_grant", "unknown refresh_token");
            };
            if r.client_id != client_id {
                return oauth_error("invalid_grant", "the refresh_token is another client's");
            }
            match r.state {
                RefreshState::Active => {}
                RefreshState::Revoked => {
                    return oauth_error("invalid_grant", "the refresh_token was revoked");
                }
                RefreshState::Rotated => {
                    // Reuse of a rotated token: someone else may hold it; end the chain.
                    let family = r.family;
                    revoke_family(&mut g, family);
                    return oauth_error(
                        "invalid_grant",
                        "the refresh_token was already used (every token of this login is revoked)",
                    );
                }
            }
            let (user, scope, family) = (r.user.clone(), r.scope.clone(), r.family);
            // A narrower scope may be asked for, never a wider one (RFC 6749, section 6).
            let scope = match f.get("scope") {
                Some(asked) => {
                    if !asked.split(' ').all(|s| scope.split(' ').any(|o| o == s)) {
                        return oauth_error("invalid_scope", "wider than the original scope");
                    }
                    asked.clone()
                }
                None => scope,
            };
            if let Some(r) = g.refresh.get_mut(&token) {
                r.state = RefreshState::Rotated;
            }
            p.issue(
                &mut g,
                grant,
                Issue {
                    client_id: &client_id,
                    user: &user,
                    scope: &scope,
                    nonce: None,
                },
                Some(family),
            )
        }
        "" => oauth_error("invalid_request", "grant_type is required"),
        other => oauth_error(
            "unsupported_grant_type",
            &format!("grant_type {other} is not supported"),
        ),
    }
}

fn revoke_family(g: &mut Grants, family: u64) {
    for r in g.refresh.values_mut().filter(|r| r.family == family) {
        r.state = RefreshState::Revoked;
    }
}

/// RFC 7009: revoking a refresh token revokes every token of its chain; unknown tokens,
/// access tokens and tokens of another client are answered 200 and change nothing.
async fn revoke(
    State(p): State<Provider>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let f = match params(pairs) {
        Ok(f) => f,
        Err(e) => return oauth_error("invalid_request", &e),
    };
    let client_id = match client_id(&p, &headers, &f) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(token) = f.get("token") else {
        return oauth_error("invalid_request", "token is required");
    };
    let mut g = lock(&p.inner.grants);
    g.revocations += 1;
    if let Some(family) = g
        .refresh
        .get(token)
        .filter(|r| r.client_id == client_id)
        .map(|r| r.family)
    {
        revoke_family(&mut g, family);
    }
    StatusCode::OK.into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[tokio::test]
    async fn tokens_verify_against_the_served_keys_until_rotation() {
        let idp = Provider::start().await.unwrap();
        let doc: Value = reqwest_get(&format!(
            "{}/.well-known/openid-configuration",
            idp.issuer()
        ))
        .await;
        assert_eq!(doc["issuer"], idp.issuer());
        let token = idp.sign(json!({"aud": "a", "sub": "alice", "exp": null}));
        let jwks: Value = reqwest_get(doc["jwks_uri"].as_str().unwrap()).await;
        let claims = verify(&jwks, &token, "a").expect("verifies against the served JWKS");
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["iss"], idp.issuer());
        assert!(claims.get("exp").is_none(), "a null claim is removed");
        idp.rotate();
        let jwks: Value = reqwest_get(doc["jwks_uri"].as_str().unwrap()).await;
        assert!(verify(&jwks, &token, "a").is_none(), "the old key is gone");
        let fresh = idp.sign(json!({"aud": "a", "sub": "bob"}));
        assert_eq!(verify(&jwks, &fresh, "a").unwrap()["sub"], "bob");
        idp.shutdown();
    }

    /// The claims of `token` when it verifies against `jwks` for `aud` (expiry unchecked).
    fn verify(jwks: &Value, token: &str, aud: &str) -> Option<Value> {
        let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
        let jwk = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid.as_str())?;
        let key =
            DecodingKey::from_ec_components(jwk["x"].as_str().unwrap(), jwk["y"].as_str().unwrap())
                .unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&[aud]);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        jsonwebtoken::decode::<Value>(token, &key, &v)
            .ok()
            .map(|d| d.claims)
    }

    /// A plain HTTP/1.1 GET over a TCP stream (no redirects followed).
    async fn reqwest_get(url: &str) -> Value {
        let (_, _, body) = http("GET", url, None).await;
        serde_json::from_str(&body).unwrap()
    }

    /// A plain HTTP/1.1 request over a TCP stream (the test kit has no HTTP client
    /// dependency): status, headers (lower-case names) and body.
    async fn http(
        method: &str,
        url: &str,
        form: Option<&[(&str, &str)]>,
    ) -> (u16, HashMap<String, String>, String) {
        http_with(method, url, form, "").await
    }

    /// [`http`] with extra header lines (each ending in CRLF).
    async fn http_with(
        method: &str,
        url: &str,
        form: Option<&[(&str, &str)]>,
        extra_headers: &str,
    ) -> (u16, HashMap<String, String>, String) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let rest = url.strip_prefix("http://").unwrap();
        let (authority, path) = rest.split_at(rest.find('/').unwrap());
        let mut s = tokio::net::TcpStream::connect(authority).await.unwrap();
        let body = form
            .map(|f| {
                url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(f)
                    .finish()
            })
            .unwrap_or_default();
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
        req.push_str(extra_headers);
        if form.is_some() {
            req.push_str(&format!(
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(&body);
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.unwrap();
        let (head, body) = buf.split_at(buf.find("\r\n\r\n").unwrap());
        let mut lines = head.lines();
        let status = lines.next().unwrap().split(' ').nth(1).unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        (status.parse().unwrap(), headers, body[4..].to_string())
    }

    async fn post(url: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let (s, _, body) = http("POST", url, Some(form)).await;
        (s, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    fn claims(token: &str) -> Value {
        let payload = token.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap()
    }

    async fn endpoints(idp: &Provider) -> Value {
        reqwest_get(&format!(
            "{}/.well-known/openid-configuration",
            idp.issuer()
        ))
        .await
    }

    #[tokio::test]
    async fn discovery_names_the_login_endpoints() {
        let idp = Provider::start().await.unwrap();
        let d = endpoints(&idp).await;
        let base = idp.issuer();
        assert_eq!(
            d["device_authorization_endpoint"],
            format!("{base}/device_authorization")
        );
        assert_eq!(d["token_endpoint"], format!("{base}/token"));
        assert_eq!(d["authorization_endpoint"], format!("{base}/authorize"));
        assert_eq!(d["revocation_endpoint"], format!("{base}/revoke"));
        assert_eq!(d["code_challenge_methods_supported"], json!(["S256"]));
        let grants = d["grant_types_supported"].as_array().unwrap();
        for g in ["authorization_code", "refresh_token", DEVICE_CODE_GRANT] {
            assert!(grants.contains(&json!(g)), "{g}");
        }
    }

    #[tokio::test]
    async fn a_required_client_secret_is_checked_in_the_body_or_with_basic() {
        let idp = Provider::start().await.unwrap();
        let d = endpoints(&idp).await;
        assert_eq!(d["token_endpoint_auth_methods_supported"], json!(["none"]));
        idp.require_client_secret("s3cret+/=");
        let d = endpoints(&idp).await;
        assert_eq!(
            d["token_endpoint_auth_methods_supported"],
            json!(["client_secret_post", "client_secret_basic"])
        );
        let device_url = d["device_authorization_endpoint"].as_str().unwrap();
        let token_url = d["token_endpoint"].as_str().unwrap();
        let revoke_url = d["revocation_endpoint"].as_str().unwrap();
        for url in [device_url, token_url, revoke_url] {
            for form in [
                vec![("client_id", "cli"), ("scope", "openid"), ("token", "t")],
                vec![
                    ("client_id", "cli"),
                    ("client_secret", "wrong"),
                    ("token", "t"),
                ],
                vec![("client_id", "cli"), ("client_secret", ""), ("token", "t")],
            ] {
                let (s, h, body) = http("POST", url, Some(&form)).await;
                let v: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(
                    (s, v["error"].as_str()),
                    (401, Some("invalid_client")),
                    "{url} {form:?}"
                );
                assert!(h.contains_key("www-authenticate"), "{h:?}");
            }
        }
        let (s, auth) = post(
            device_url,
            &[
                ("client_id", "cli"),
                ("client_secret", "s3cret+/="),
                ("scope", "openid"),
            ],
        )
        .await;
        assert_eq!(s, 200, "{auth}");
        // client_secret_basic: id and secret form-urlencoded, then Base64 (RFC 6749, 2.3.1).
        let basic = |id: &str, secret: &str| {
            let enc =
                |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
            let b = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                enc(id),
                enc(secret)
            ));
            format!("Authorization: Basic {b}\r\n")
        };
        let (s, _, body) = http_with(
            "POST",
            device_url,
            Some(&[("scope", "openid")]),
            &basic("cli", "s3cret+/="),
        )
        .await;
        assert_eq!(s, 200, "{body}");
        let (s, _, body) = http_with(
            "POST",
            device_url,
            Some(&[("scope", "openid")]),
            &basic("cli", "s3cret"),
        )
        .await;
        assert_eq!(s, 401, "{body}");
        // Both ways at once is refused.
        let (s, _, body) = http_with(
            "POST",
            device_url,
            Some(&[("scope", "openid"), ("client_secret", "s3cret+/=")]),
            &basic("cli", "s3cret+/="),
        )
        .await;
        assert_eq!(s, 401, "{body}");
        // The approved device code is exchanged with the secret, and only with it.
        let device_code = auth["device_code"].as_str().unwrap();
        assert!(idp.approve(auth["user_code"].as_str().unwrap(), "alice", &[]));
        let poll = |secret: &'static str| {
            [
                ("grant_type", DEVICE_CODE_GRANT),
                ("device_code", device_code),
                ("client_id", "cli"),
                ("client_secret", secret),
            ]
        };
        let (s, v) = post(token_url, &poll("nope")).await;
        assert_eq!((s, v["error"].as_str()), (401, Some("invalid_client")));
        let (s, v) = post(token_url, &poll("s3cret+/=")).await;
        assert_eq!(s, 200, "{v}");
        assert!(v["id_token"].is_string());
    }

    #[tokio::test]
    async fn device_flow_pending_slow_down_approved_once() {
        let idp = Provider::start().await.unwrap();
        // A long interval: two polls in a row are certainly faster than it.
        idp.set_device_interval(Duration::from_secs(60));
        let d = endpoints(&idp).await;
        let (s, auth) = post(
            d["device_authorization_endpoint"].as_str().unwrap(),
            &[("client_id", "cli"), ("scope", "openid email")],
        )
        .await;
        assert_eq!(s, 200, "{auth}");
        assert_eq!(auth["interval"], 60);
        let user_code = auth["user_code"].as_str().unwrap().to_string();
        assert_eq!(idp.pending_user_codes(), vec![user_code.clone()]);
        assert!(
            auth["verification_uri_complete"]
                .as_str()
                .unwrap()
                .ends_with(&user_code)
        );
        let token_url = d["token_endpoint"].as_str().unwrap();
        let device_code = auth["device_code"].as_str().unwrap();
        let poll = [
            ("grant_type", DEVICE_CODE_GRANT),
            ("device_code", device_code),
            ("client_id", "cli"),
        ];
        let (s, e) = post(token_url, &poll).await;
        assert_eq!(
            (s, e["error"].as_str()),
            (400, Some("authorization_pending"))
        );
        let (s, e) = post(token_url, &poll).await;
        assert_eq!((s, e["error"].as_str()), (400, Some("slow_down")));
        // Another client cannot use the code.
        let (_, e) = post(
            token_url,
            &[
                ("grant_type", DEVICE_CODE_GRANT),
                ("device_code", device_code),
                ("client_id", "other"),
            ],
        )
        .await;
        assert_eq!(e["error"], "invalid_grant");
        // As typed by a person: lower case, no dash.
        assert!(idp.approve(
            &user_code.to_lowercase().replace('-', ""),
            "alice@example.com",
            &["devs"]
        ));
        assert!(!idp.deny(&user_code), "already decided");
        // The interval is now 65 s; rather than wait, the test makes the last poll old.
        {
            let mut g = lock(&idp.inner.grants);
            let dev = g.devices.get_mut(device_code).unwrap();
            dev.last_poll = Some(Instant::now() - Duration::from_secs(120));
        }
        let (s, t) = post(token_url, &poll).await;
        assert_eq!(s, 200, "{t}");
        let id = claims(t["id_token"].as_str().unwrap());
        assert_eq!(id["aud"], "cli");
        assert_eq!(id["sub"], "alice@example.com");
        assert_eq!(id["email"], "alice@example.com");
        assert_eq!(id["groups"], json!(["devs"]));
        assert_eq!(id["iss"], idp.issuer());
        let jwks = reqwest_get(d["jwks_uri"].as_str().unwrap()).await;
        assert!(verify(&jwks, t["id_token"].as_str().unwrap(), "cli").is_some());
        assert!(t["access_token"].is_string());
        assert!(idp.refresh_token_active(t["refresh_token"].as_str().unwrap()));
        assert_eq!(idp.grants(), vec![DEVICE_CODE_GRANT.to_string()]);
        // One time only.
        let (_, e) = post(token_url, &poll).await;
        assert_eq!(e["error"], "invalid_grant");
    }

    #[tokio::test]
    async fn device_flow_denied_and_expired() {
        let idp = Provider::start().await.unwrap();
        let d = endpoints(&idp).await;
        let device_url = d["device_authorization_endpoint"].as_str().unwrap();
        let token_url = d["token_endpoint"].as_str().unwrap();
        let (_, auth) = post(device_url, &[("client_id", "cli"), ("scope", "openid")]).await;
        // Denied on the verification page, by the signed-in person.
        let (s, _, page) = http(
            "GET",
            auth["verification_uri_complete"].as_str().unwrap(),
            None,
        )
        .await;
        assert_eq!(s, 200);
        assert!(page.contains(auth["user_code"].as_str().unwrap()));
        let (s, _, _) = http(
            "POST",
            &format!("{}/device", idp.issuer()),
            Some(&[
                ("user_code", auth["user_code"].as_str().unwrap()),
                ("action", "deny"),
            ]),
        )
        .await;
        assert_eq!(s, 200);
        let (s, e) = post(
            token_url,
            &[
                ("grant_type", DEVICE_CODE_GRANT),
                ("device_code", auth["device_code"].as_str().unwrap()),
                ("client_id", "cli"),
            ],
        )
        .await;
        assert_eq!((s, e["error"].as_str()), (400, Some("access_denied")));

        idp.set_device_expiry(Duration::ZERO);
        let (_, auth) = post(device_url, &[("client_id", "cli"), ("scope", "openid")]).await;
        let (_, e) = post(
            token_url,
            &[
                ("grant_type", DEVICE_CODE_GRANT),
                ("device_code", auth["device_code"].as_str().unwrap()),
                ("client_id", "cli"),
            ],
        )
        .await;
        assert_eq!(e["error"], "expired_token");
        assert!(!idp.approve(auth["user_code"].as_str().unwrap(), "a", &[]));
        assert!(idp.grants().is_empty());
    }

    fn pkce() -> (String, String) {
        let verifier = secret();
        let challenge = b64url(&sha2::Sha256::digest(verifier.as_bytes()));
        (verifier, challenge)
    }

    /// `/authorize` for a loopback client: the redirect's query parameters.
    async fn authorize_redirect(idp: &Provider, query: &[(&str, &str)]) -> HashMap<String, String> {
        let q = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(query)
            .finish();
        let (s, h, body) = http("GET", &format!("{}/authorize?{q}", idp.issuer()), None).await;
        assert_eq!(s, 302, "{body}");
        let loc = url::Url::parse(&h["location"]).unwrap();
        assert_eq!(loc.path(), "/callback");
        loc.query_pairs().into_owned().collect()
    }

    #[tokio::test]
    async fn authorization_code_with_pkce() {
        let idp = Provider::start().await.unwrap();
        let redirect = "http://127.0.0.1:45678/callback";
        let (verifier, challenge) = pkce();
        let base = [
            ("response_type", "code"),
            ("client_id", "cli"),
            ("redirect_uri", redirect),
            ("scope", "openid groups"),
            ("state", "st-1"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ];
        // Nobody signed in: access_denied, with the state.
        let q = authorize_redirect(&idp, &base).await;
        assert_eq!(q["error"], "access_denied");
        assert_eq!(q["state"], "st-1");
        idp.set_signed_in("bob", &["ops"]);
        // plain is refused.
        let mut plain = base;
        plain[5].1 = "x".repeat(43).leak();
        plain[6].1 = "plain";
        let q = authorize_redirect(&idp, &plain).await;
        assert_eq!(q["error"], "invalid_request");
        // A redirect that is not loopback is shown, never followed.
        let mut evil = base;
        evil[2].1 = "https://evil.example.com/callback";
        let qs = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(evil)
            .finish();
        let (s, h, _) = http("GET", &format!("{}/authorize?{qs}", idp.issuer()), None).await;
        assert_eq!(s, 400);
        assert!(!h.contains_key("location"));

        let q = authorize_redirect(&idp, &base).await;
        assert_eq!(q["state"], "st-1");
        let code = q["code"].clone();
        let token_url = format!("{}/token", idp.issuer());
        let exchange = |code: String, verifier: String| {
            let token_url = token_url.clone();
            async move {
                post(
                    &token_url,
                    &[
                        ("grant_type", "authorization_code"),
                        ("code", &code),
                        ("redirect_uri", redirect),
                        ("client_id", "cli"),
                        ("code_verifier", &verifier),
                    ],
                )
                .await
            }
        };
        let (wrong, _) = pkce();
        let (s, e) = exchange(code.clone(), wrong).await;
        assert_eq!((s, e["error"].as_str()), (400, Some("invalid_grant")));
        // The code was spent by the failed attempt.
        let (_, e) = exchange(code, verifier.clone()).await;
        assert_eq!(e["error"], "invalid_grant");

        let code = authorize_redirect(&idp, &base).await["code"].clone();
        let (s, t) = exchange(code.clone(), verifier.clone()).await;
        assert_eq!(s, 200, "{t}");
        let id = claims(t["id_token"].as_str().unwrap());
        assert_eq!(
            (id["sub"].as_str(), id["aud"].as_str()),
            (Some("bob"), Some("cli"))
        );
        assert!(id.get("email").is_none());
        let rt = t["refresh_token"].as_str().unwrap().to_string();
        assert!(idp.refresh_token_active(&rt));
        // Replaying the code fails and revokes what it issued.
        let (_, e) = exchange(code, verifier).await;
        assert_eq!(e["error"], "invalid_grant");
        assert!(!idp.refresh_token_active(&rt));
        assert_eq!(idp.grants(), vec!["authorization_code".to_string()]);
    }

    #[tokio::test]
    async fn refresh_tokens_rotate_expire_and_revoke() {
        let idp = Provider::start().await.unwrap();
        idp.set_token_ttl(Duration::from_secs(7));
        let token_url = format!("{}/token", idp.issuer());
        let (_, auth) = post(
            &format!("{}/device_authorization", idp.issuer()),
            &[("client_id", "cli"), ("scope", "openid offline_access")],
        )
        .await;
        assert!(idp.approve(auth["user_code"].as_str().unwrap(), "carol", &[]));
        let (_, t) = post(
            &token_url,
            &[
                ("grant_type", DEVICE_CODE_GRANT),
                ("device_code", auth["device_code"].as_str().unwrap()),
                ("client_id", "cli"),
            ],
        )
        .await;
        assert_eq!(t["expires_in"], 7);
        let id = claims(t["id_token"].as_str().unwrap());
        assert_eq!(id["exp"].as_i64().unwrap() - id["iat"].as_i64().unwrap(), 7);
        let rt1 = t["refresh_token"].as_str().unwrap().to_string();
        let refresh = |rt: String| {
            let token_url = token_url.clone();
            async move {
                post(
                    &token_url,
                    &[
                        ("grant_type", "refresh_token"),
                        ("refresh_token", &rt),
                        ("client_id", "cli"),
                    ],
                )
                .await
            }
        };
        let (s, t2) = refresh(rt1.clone()).await;
        assert_eq!(s, 200, "{t2}");
        assert_eq!(claims(t2["id_token"].as_str().unwrap())["sub"], "carol");
        let rt2 = t2["refresh_token"].as_str().unwrap().to_string();
        assert_ne!(rt1, rt2);
        assert!(!idp.refresh_token_active(&rt1));
        assert!(idp.refresh_token_active(&rt2));
        let (s, t3) = refresh(rt2.clone()).await;
        assert_eq!(s, 200);
        let rt3 = t3["refresh_token"].as_str().unwrap().to_string();
        // Reusing a rotated token fails and ends the chain.
        let (s, e) = refresh(rt2).await;
        assert_eq!((s, e["error"].as_str()), (400, Some("invalid_grant")));
        assert!(!idp.refresh_token_active(&rt3));
        let (_, e) = refresh(rt3).await;
        assert_eq!(e["error"], "invalid_grant");

        // A fresh login, revoked at the revocation endpoint.
        let (_, auth) = post(
            &format!("{}/device_authorization", idp.issuer()),
            &[("client_id", "cli"), ("scope", "openid")],
        )
        .await;
        assert!(idp.approve(auth["user_code"].as_str().unwrap(), "carol", &[]));
        let (_, t) = post(
            &token_url,
            &[
                ("grant_type", DEVICE_CODE_GRANT),
                ("device_code", auth["device_code"].as_str().unwrap()),
                ("client_id", "cli"),
            ],
        )
        .await;
        let rt = t["refresh_token"].as_str().unwrap().to_string();
        let revoke_url = format!("{}/revoke", idp.issuer());
        // Another client's revocation changes nothing.
        let (s, _) = post(
            &revoke_url,
            &[
                ("token", &rt),
                ("token_type_hint", "refresh_token"),
                ("client_id", "other"),
            ],
        )
        .await;
        assert_eq!(s, 200);
        assert!(idp.refresh_token_active(&rt));
        let (s, _) = post(&revoke_url, &[("token", &rt), ("client_id", "cli")]).await;
        assert_eq!(s, 200);
        assert!(!idp.refresh_token_active(&rt));
        let (_, e) = refresh(rt).await;
        assert_eq!(e["error"], "invalid_grant");
        // Unknown tokens are fine to revoke (RFC 7009, section 2.2).
        let (s, _) = post(&revoke_url, &[("token", "nope"), ("client_id", "cli")]).await;
        assert_eq!(s, 200);
        assert_eq!(idp.revocations(), 3);
        assert_eq!(
            idp.grants(),
            vec![
                DEVICE_CODE_GRANT.to_string(),
                "refresh_token".into(),
                "refresh_token".into(),
                DEVICE_CODE_GRANT.into(),
            ]
        );
    }

    #[tokio::test]
    async fn malformed_token_requests() {
        let idp = Provider::start().await.unwrap();
        let token_url = format!("{}/token", idp.issuer());
        let (s, e) = post(&token_url, &[("grant_type", "refresh_token")]).await;
        assert_eq!((s, e["error"].as_str()), (401, Some("invalid_client")));
        let (_, e) = post(
            &token_url,
            &[("grant_type", "password"), ("client_id", "cli")],
        )
        .await;
        assert_eq!(e["error"], "unsupported_grant_type");
        let (_, e) = post(
            &token_url,
            &[
                ("grant_type", "refresh_token"),
                ("client_id", "cli"),
                ("client_id", "other"),
            ],
        )
        .await;
        assert_eq!(e["error"], "invalid_request");
    }
}
