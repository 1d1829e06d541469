//! An in-process OpenID Connect identity provider for tests and demos.
//!
//! It serves what a relying party such as the KubeNova manager reads from a real provider
//! (Keycloak, Dex, Entra ID, Okta, Google): the discovery document at
//! `/.well-known/openid-configuration` and the JSON Web Key Set it names (`/keys`), with
//! ES256 (ECDSA P-256) signing keys that can be rotated while it runs. Tokens are signed
//! with [`jsonwebtoken`], the same library relying parties verify with, and keys are
//! generated with [`rcgen`] (ring), which the test kit already uses for its certificates.
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
//! # Ok(()) }
//! ```

use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::Json;
use axum::extract::State;
use axum::routing::get;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// Lifetime of tokens whose claims do not set `exp`.
pub const DEFAULT_TOKEN_TTL_SECONDS: i64 = 300;

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

struct Inner {
    issuer: String,
    /// The published keys; the last one signs.
    keys: Mutex<Vec<Key>>,
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
                shutdown: Mutex::new(Some(tx)),
            }),
        };
        let app = axum::Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/keys", get(keys))
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
        let keys = self.inner.keys.lock().expect("keys lock");
        json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
    }

    /// Replaces every key with a new one: tokens signed before no longer verify, and
    /// tokens signed from now on carry a `kid` relying parties have not seen yet.
    pub fn rotate(&self) {
        let key = Key::generate().expect("generating a P-256 key");
        *self.inner.keys.lock().expect("keys lock") = vec![key];
    }

    /// Adds a new signing key and keeps the old ones published (a rollover).
    pub fn add_key(&self) {
        let key = Key::generate().expect("generating a P-256 key");
        self.inner.keys.lock().expect("keys lock").push(key);
    }

    /// Signs `claims` (a JSON object) with the current key, ES256, `kid` in the header.
    /// `iss`, `iat` and `exp` (now + [`DEFAULT_TOKEN_TTL_SECONDS`]) are added when absent;
    /// a claim set to `null` is removed, so tests can make tokens that lack one.
    pub fn sign(&self, claims: Value) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut all = json!({
            "iss": self.inner.issuer, "iat": now, "exp": now + DEFAULT_TOKEN_TTL_SECONDS,
        });
        let given = claims.as_object().expect("claims must be a JSON object");
        for (k, v) in given {
            if v.is_null() {
                all.as_object_mut().expect("object").remove(k);
            } else {
                all[k] = v.clone();
            }
        }
        let keys = self.inner.keys.lock().expect("keys lock");
        let key = keys.last().expect("at least one key");
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, &all, &key.encoding).expect("signing a token")
    }

    /// Stops serving (discovery and keys become unreachable).
    pub fn shutdown(&self) {
        if let Some(tx) = self.inner.shutdown.lock().expect("shutdown lock").take() {
            let _ = tx.send(());
        }
    }
}

async fn discovery(State(p): State<Provider>) -> Json<Value> {
    let base = p.issuer();
    Json(json!({
        "issuer": base,
        "jwks_uri": format!("{base}/keys"),
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
    }))
}

async fn keys(State(p): State<Provider>) -> Json<Value> {
    Json(p.jwks())
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
        let verify = |jwks: &Value, token: &str| {
            let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
            let jwk = jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .find(|k| k["kid"] == kid.as_str())?;
            let key = DecodingKey::from_ec_components(
                jwk["x"].as_str().unwrap(),
                jwk["y"].as_str().unwrap(),
            )
            .unwrap();
            let mut v = Validation::new(Algorithm::ES256);
            v.set_audience(&["a"]);
            v.required_spec_claims.clear();
            v.validate_exp = false;
            jsonwebtoken::decode::<Value>(token, &key, &v)
                .ok()
                .map(|d| d.claims)
        };
        let jwks: Value = reqwest_get(doc["jwks_uri"].as_str().unwrap()).await;
        let claims = verify(&jwks, &token).expect("verifies against the served JWKS");
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["iss"], idp.issuer());
        assert!(claims.get("exp").is_none(), "a null claim is removed");
        idp.rotate();
        let jwks: Value = reqwest_get(doc["jwks_uri"].as_str().unwrap()).await;
        assert!(verify(&jwks, &token).is_none(), "the old key is gone");
        let fresh = idp.sign(json!({"aud": "a", "sub": "bob"}));
        assert_eq!(verify(&jwks, &fresh).unwrap()["sub"], "bob");
        idp.shutdown();
    }

    /// A plain HTTP/1.1 GET over a TCP stream (the test kit has no HTTP client dependency).
    async fn reqwest_get(url: &str) -> Value {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let rest = url.strip_prefix("http://").unwrap();
        let (authority, path) = rest.split_at(rest.find('/').unwrap());
        let mut s = tokio::net::TcpStream::connect(authority).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.unwrap();
        let body = &buf[buf.find("\r\n\r\n").unwrap() + 4..];
        serde_json::from_str(body).unwrap()
    }
}
