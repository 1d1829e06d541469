//! Manager-signed ES256 tokens: signing keys, key rotation, claims, JWKS and OIDC discovery.

use base64::Engine as _;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, EllipticCurveKeyParameters,
    EllipticCurveKeyType, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use kubenova_api::model::AccessRole;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::kubeconfig::{check_https, check_label};
use crate::{project_group, tenant_group};

/// The only signing algorithm: ES256 (ECDSA P-256 with SHA-256).
pub const ALGORITHM: &str = "ES256";
/// Default token TTL when a request names none (1 hour).
pub const DEFAULT_TTL: Duration = Duration::hours(1);
/// Default JWKS path relative to the issuer URL.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// Path of the OIDC discovery document relative to the issuer URL.
pub const OPENID_CONFIGURATION_PATH: &str = "/.well-known/openid-configuration";

/// One JWS part: base64url of the value's JSON.
fn b64url_json<T: Serialize>(value: &T) -> Result<String> {
    let json = serde_json::to_vec(value).map_err(|e| Error::Serialization(e.to_string()))?;
    Ok(b64url(&json))
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// One ES256 key pair with its `kid`.
///
/// The `kid` is the RFC 7638 JWK thumbprint (SHA-256, base64url) of the public key, so it
/// is stable across restarts and derived from the key alone. The private key is kept as
/// PKCS#8 DER; [`SigningKey::to_bytes`] gives the storage form (to be envelope-encrypted
/// by the caller). The key is parsed once, when loaded: signing a token is one ECDSA
/// signature, not a PKCS#8 parse (a point multiplication) plus a signature.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    pkcs8: Zeroizing<Vec<u8>>,
    x: String,
    y: String,
    created_at: OffsetDateTime,
    deactivated_at: Option<OffsetDateTime>,
    pair: std::sync::Arc<EcdsaKeyPair>,
    decoding: DecodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("created_at", &self.created_at)
            .field("deactivated_at", &self.deactivated_at)
            .finish_non_exhaustive()
    }
}

/// Storage record of one key (JSON inside [`SigningKey::to_bytes`]).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyRecord {
    kid: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option", default)]
    deactivated_at: Option<OffsetDateTime>,
    /// base64 of the PKCS#8 DER private key.
    pkcs8: String,
}

impl Drop for KeyRecord {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.pkcs8);
    }
}

impl SigningKey {
    /// Generates a fresh P-256 key pair.
    pub fn generate(now: OffsetDateTime) -> Result<Self> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|e| Error::Key(format!("generating P-256 key: {e}")))?;
        Self::from_pkcs8_der(doc.as_ref(), now)
    }

    /// Loads a key from PKCS#8 DER (as produced by [`SigningKey::pkcs8_der`]).
    pub fn from_pkcs8_der(der: &[u8], created_at: OffsetDateTime) -> Result<Self> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| Error::Key(format!("not a PKCS#8 P-256 key: {e}")))?;
        let public = pair.public_key().as_ref();
        // Uncompressed SEC1 point: 0x04 || x (32 bytes) || y (32 bytes).
        if public.len() != 65 || public[0] != 0x04 {
            return Err(Error::Key("unexpected public key encoding".to_owned()));
        }
        let x = b64url(&public[1..33]);
        let y = b64url(&public[33..65]);
        let thumbprint_input = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = b64url(&Sha256::digest(thumbprint_input.as_bytes()));
        let decoding = DecodingKey::from_ec_components(&x, &y)?;
        Ok(Self {
            kid,
            pkcs8: Zeroizing::new(der.to_vec()),
            x,
            y,
            created_at,
            deactivated_at: None,
            pair: std::sync::Arc::new(pair),
            decoding,
        })
    }

    /// Loads a key from a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pkcs8_pem(pem: &str, created_at: OffsetDateTime) -> Result<Self> {
        // Let jsonwebtoken's own PEM parser judge it first: that is the path it signs with.
        EncodingKey::from_ec_pem(pem.as_bytes())?;
        let body: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .flat_map(str::split_whitespace)
            .collect();
        let der = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .map_err(|e| Error::Key(format!("PEM body is not base64: {e}")))?,
        );
        Self::from_pkcs8_der(&der, created_at)
    }

    /// The PKCS#8 PEM of the private key (for `EncodingKey::from_ec_pem` and for tooling).
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        let body = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*self.pkcs8));
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for chunk in body.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(chunk));
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        Zeroizing::new(pem)
    }

    /// The private key as PKCS#8 DER. Secret.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// Serializes the key with its metadata (kid, creation and deactivation time) for
    /// storage. The bytes contain the private key: envelope-encrypt them before storing.
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>> {
        let record = KeyRecord {
            kid: self.kid.clone(),
            created_at: self.created_at,
            deactivated_at: self.deactivated_at,
            pkcs8: base64::engine::general_purpose::STANDARD.encode(&*self.pkcs8),
        };
        serde_json::to_vec(&record)
            .map(Zeroizing::new)
            .map_err(|e| Error::Serialization(e.to_string()))
    }

    /// Inverse of [`SigningKey::to_bytes`]; checks that the stored `kid` matches the key.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let record: KeyRecord =
            serde_json::from_slice(bytes).map_err(|e| Error::Serialization(e.to_string()))?;
        let der = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(&record.pkcs8)
                .map_err(|e| Error::Key(format!("stored key is not base64: {e}")))?,
        );
        let mut key = Self::from_pkcs8_der(&der, record.created_at)?;
        if key.kid != record.kid {
            return Err(Error::Key(format!(
                "stored kid {:?} does not match the key's thumbprint {:?}",
                record.kid, key.kid
            )));
        }
        key.deactivated_at = record.deactivated_at;
        Ok(key)
    }

    /// The key id (`kid` header of every token it signs).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// When the key was created.
    pub fn created_at(&self) -> OffsetDateTime {
        self.created_at
    }

    /// When the key stopped signing (set by [`KeySet::rotate`]); `None` while active.
    pub fn deactivated_at(&self) -> Option<OffsetDateTime> {
        self.deactivated_at
    }

    /// The public key as a JWK (`kty` EC, `crv` P-256, `use` sig, `alg` ES256).
    pub fn jwk(&self) -> Jwk {
        Jwk {
            common: CommonParameters {
                public_key_use: Some(PublicKeyUse::Signature),
                key_algorithm: Some(KeyAlgorithm::ES256),
                key_id: Some(self.kid.clone()),
                ..CommonParameters::default()
            },
            algorithm: AlgorithmParameters::EllipticCurve(EllipticCurveKeyParameters {
                key_type: EllipticCurveKeyType::EC,
                curve: EllipticCurve::P256,
                x: self.x.clone(),
                y: self.y.clone(),
            }),
        }
    }
}

/// The manager's signing keys: one active key that signs, plus older keys that still
/// verify until every token they signed has expired.
#[derive(Debug, Clone)]
pub struct KeySet {
    active: SigningKey,
    previous: Vec<SigningKey>,
}

/// Storage form of a whole key set (JSON inside [`KeySet::to_bytes`]).
#[derive(Serialize, Deserialize)]
struct KeySetRecord {
    version: u32,
    active: String,
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    /// A key set with one freshly generated active key.
    pub fn generate(now: OffsetDateTime) -> Result<Self> {
        Ok(Self::new(SigningKey::generate(now)?))
    }

    /// A key set whose only key is `active`.
    pub fn new(active: SigningKey) -> Self {
        Self {
            active,
            previous: Vec::new(),
        }
    }

    /// A key set from stored keys: `active` signs, `previous` only verify.
    /// Previous keys without a deactivation time are treated as deactivated at `active`'s
    /// creation.
    pub fn from_keys(active: SigningKey, previous: Vec<SigningKey>) -> Self {
        let at = active.created_at;
        let previous = previous
            .into_iter()
            .filter(|k| k.kid != active.kid)
            .map(|mut k| {
                k.deactivated_at.get_or_insert(at);
                k
            })
            .collect();
        Self { active, previous }
    }

    /// The key that signs new tokens.
    pub fn active(&self) -> &SigningKey {
        &self.active
    }

    /// Older keys that still verify.
    pub fn previous(&self) -> &[SigningKey] {
        &self.previous
    }

    /// All keys that verify: the active one first.
    pub fn keys(&self) -> impl Iterator<Item = &SigningKey> {
        std::iter::once(&self.active).chain(self.previous.iter())
    }

    /// The verifying key with this `kid`.
    pub fn find(&self, kid: &str) -> Option<&SigningKey> {
        self.keys().find(|k| k.kid == kid)
    }

    /// Generates a new active key; the old active key keeps verifying (deactivated at
    /// `now`) until [`KeySet::retire_expired`] removes it. Returns the new active key.
    pub fn rotate(&mut self, now: OffsetDateTime) -> Result<&SigningKey> {
        let next = SigningKey::generate(now)?;
        let mut old = std::mem::replace(&mut self.active, next);
        old.deactivated_at = Some(now);
        self.previous.insert(0, old);
        Ok(&self.active)
    }

    /// Removes previous keys whose tokens have all expired, i.e. keys deactivated at or
    /// before `now - max_ttl` (no token outlives its key's deactivation by more than the
    /// maximum TTL). Returns the removed `kid`s. Pass `max_ttl` plus any clock-skew
    /// allowance the API servers use.
    pub fn retire_expired(&mut self, now: OffsetDateTime, max_ttl: Duration) -> Vec<String> {
        let mut retired = Vec::new();
        self.previous.retain(|k| {
            let keep = k.deactivated_at.is_none_or(|d| d + max_ttl > now);
            if !keep {
                retired.push(k.kid.clone());
            }
            keep
        });
        retired
    }

    /// Signs `claims` with the active key (header `alg` ES256, `typ` JWT, `kid`): a JWS
    /// compact serialization (RFC 7515), `base64url(header).base64url(claims).base64url(r||s)`,
    /// signed with the key parsed when it was loaded. Verification (here, in the API
    /// server, in PyJWT) is the standard one.
    pub fn issue(&self, claims: &Claims) -> Result<String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.active.kid.clone());
        let mut token = b64url_json(&header)?;
        token.push('.');
        token.push_str(&b64url_json(claims)?);
        let signature = self
            .active
            .pair
            .sign(&SystemRandom::new(), token.as_bytes())
            .map_err(|_| Error::Key("ES256 signing failed".to_owned()))?;
        token.push('.');
        token.push_str(&b64url(signature.as_ref()));
        Ok(token)
    }

    /// Verifies a token: known `kid`, ES256 signature, `exp` and `nbf` against the current
    /// time (no leeway), `aud` equal to `expected_aud`, and all claims present.
    pub fn verify(&self, token: &str, expected_aud: &str) -> Result<Claims> {
        self.verify_inner(token, expected_aud, None)
    }

    /// [`KeySet::verify`] that also requires `iss == expected_iss`.
    pub fn verify_with_issuer(
        &self,
        token: &str,
        expected_iss: &str,
        expected_aud: &str,
    ) -> Result<Claims> {
        self.verify_inner(token, expected_aud, Some(expected_iss))
    }

    fn verify_inner(&self, token: &str, aud: &str, iss: Option<&str>) -> Result<Claims> {
        let header = jsonwebtoken::decode_header(token)?;
        if header.alg != Algorithm::ES256 {
            return Err(Error::InvalidToken(
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm.into(),
            ));
        }
        let kid = header.kid.unwrap_or_default();
        let key = self
            .find(&kid)
            .ok_or_else(|| Error::UnknownKey(kid.clone()))?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_audience(&[aud]);
        validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
        if let Some(iss) = iss {
            validation.set_issuer(&[iss]);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation)?;
        Ok(data.claims)
    }

    /// The JWK Set of every verifying key (active first).
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: self.keys().map(SigningKey::jwk).collect(),
        }
    }

    /// The JWK Set as the JSON document served at the JWKS URL.
    pub fn jwks_json(&self) -> Result<String> {
        serde_json::to_string(&self.jwks()).map_err(|e| Error::Serialization(e.to_string()))
    }

    /// Serializes all keys for storage. Contains private keys: envelope-encrypt it.
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>> {
        let mut keys = Vec::new();
        for k in self.keys() {
            let bytes = k.to_bytes()?;
            keys.push(
                serde_json::from_slice(&bytes).map_err(|e| Error::Serialization(e.to_string()))?,
            );
        }
        let record = KeySetRecord {
            version: 1,
            active: self.active.kid.clone(),
            keys,
        };
        serde_json::to_vec(&record)
            .map(Zeroizing::new)
            .map_err(|e| Error::Serialization(e.to_string()))
    }

    /// Inverse of [`KeySet::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let record: KeySetRecord =
            serde_json::from_slice(bytes).map_err(|e| Error::Serialization(e.to_string()))?;
        if record.version != 1 {
            return Err(Error::Serialization(format!(
                "unsupported key set version {}",
                record.version
            )));
        }
        let mut active = None;
        let mut previous = Vec::new();
        for v in &record.keys {
            let bytes = Zeroizing::new(
                serde_json::to_vec(v).map_err(|e| Error::Serialization(e.to_string()))?,
            );
            let key = SigningKey::from_bytes(&bytes)?;
            if key.kid == record.active && active.is_none() {
                active = Some(key);
            } else {
                previous.push(key);
            }
        }
        let active = active.ok_or_else(|| {
            Error::Serialization(format!("active key {:?} not in the set", record.active))
        })?;
        Ok(Self::from_keys(active, previous))
    }
}

/// What a token is for: input of [`Claims::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpec {
    /// `iss`: the manager's external URL.
    pub issuer: String,
    /// `aud`: the audience the target cluster's API server expects (one per cluster).
    pub audience: String,
    /// `sub`: who the token is for (the requesting user or a service identity).
    pub subject: String,
    /// Tenant name.
    pub tenant: String,
    /// Project name for project-scoped tokens.
    pub project: Option<String>,
    /// Role.
    pub role: AccessRole,
    /// Lifetime; must be > 0 and ≤ the caller's maximum.
    pub ttl: Duration,
    /// Groups the token carries besides its scope group: who the subject is elsewhere
    /// (e.g. the groups of the organisation's identity provider), for the cluster's own
    /// RBAC. Each must be carriable ([`carried_groups`] keeps only those, within the
    /// bounds): never `system:` or `kubenova:` (so no group of Kubernetes itself and no
    /// other KubeNova scope), at most [`MAX_EXTRA_GROUPS`] of at most [`MAX_GROUP_LEN`]
    /// bytes each and [`MAX_EXTRA_GROUPS_BYTES`] together, once each. [`Claims::new`]
    /// refuses a spec that breaks one of these rules ([`Error::InvalidGroup`]). Empty
    /// for a token that carries its scope only.
    pub extra_groups: Vec<String>,
}

/// Most groups a token carries besides its scope group ([`TokenSpec::extra_groups`]).
pub const MAX_EXTRA_GROUPS: usize = 64;
/// Longest group a token carries besides its scope group, in bytes.
pub const MAX_GROUP_LEN: usize = 128;
/// Most bytes of all the groups a token carries besides its scope group (so that a token
/// stays well within the request header limits of API servers and proxies).
pub const MAX_EXTRA_GROUPS_BYTES: usize = 4096;

/// Why `group` may not be carried by a token besides its scope group, if it may not.
fn group_refusal(group: &str) -> Option<&'static str> {
    let lower = group.to_ascii_lowercase();
    if group.trim().is_empty() {
        Some("must not be empty")
    } else if group.trim() != group || group.chars().any(char::is_control) {
        Some("must not have leading or trailing spaces or control characters")
    } else if lower.starts_with("system:") {
        Some("system: groups are Kubernetes' own")
    } else if lower.starts_with("kubenova:") {
        Some("kubenova: groups are scope groups, only ever the one the token is issued for")
    } else if group.len() > MAX_GROUP_LEN {
        Some("longer than 128 bytes")
    } else {
        None
    }
}

/// The groups a token may carry besides its scope group, taken from `groups` (e.g. a
/// person's groups as their identity provider names them), and how many were left out.
///
/// Keeps, in the order given, each group once, except those that may never be carried
/// (empty, with leading or trailing spaces or control characters, longer than
/// [`MAX_GROUP_LEN`], or beginning with `system:` or `kubenova:` in any case), and stops
/// at [`MAX_EXTRA_GROUPS`] groups or [`MAX_EXTRA_GROUPS_BYTES`] bytes: the groups after
/// that are left out (counted in `dropped`), never an error. The result always passes
/// [`Claims::new`].
///
/// ```
/// use kubenova_kubeconfig::{carried_groups, MAX_EXTRA_GROUPS};
/// let c = carried_groups(["acme-admins", "system:masters", "kubenova:tenant:victim:owner", "acme-admins", "qa"]);
/// assert_eq!(c.groups, ["acme-admins", "qa"]);
/// assert_eq!(c.dropped, 2); // the repetition is not counted
///
/// let many: Vec<String> = (0..100).map(|i| format!("g{i}")).collect();
/// let c = carried_groups(&many);
/// assert_eq!(c.groups.len(), MAX_EXTRA_GROUPS);
/// assert_eq!(c.groups[0], "g0");
/// assert_eq!(c.dropped, 100 - MAX_EXTRA_GROUPS);
/// ```
pub fn carried_groups<I, S>(groups: I) -> CarriedGroups
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = CarriedGroups::default();
    let mut bytes = 0;
    for g in groups {
        let g = g.as_ref();
        if out.groups.iter().any(|kept| kept == g) {
            continue;
        }
        if group_refusal(g).is_some()
            || out.groups.len() >= MAX_EXTRA_GROUPS
            || bytes + g.len() > MAX_EXTRA_GROUPS_BYTES
        {
            out.dropped += 1;
            continue;
        }
        bytes += g.len();
        out.groups.push(g.to_owned());
    }
    out
}

/// What [`carried_groups`] keeps and how many groups it left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CarriedGroups {
    /// The groups to carry ([`TokenSpec::extra_groups`]).
    pub groups: Vec<String>,
    /// Groups left out: never carriable, or beyond the bounds.
    pub dropped: usize,
}

/// Checks [`TokenSpec::extra_groups`] (see there).
fn check_extra_groups(groups: &[String]) -> Result<()> {
    if groups.len() > MAX_EXTRA_GROUPS {
        return Err(Error::InvalidGroup {
            group: groups[MAX_EXTRA_GROUPS].clone(),
            reason: format!(
                "a token carries at most {MAX_EXTRA_GROUPS} groups besides its scope group"
            ),
        });
    }
    let mut bytes = 0;
    for (i, g) in groups.iter().enumerate() {
        if let Some(reason) = group_refusal(g) {
            return Err(Error::InvalidGroup {
                group: g.clone(),
                reason: reason.to_owned(),
            });
        }
        if groups[..i].contains(g) {
            return Err(Error::InvalidGroup {
                group: g.clone(),
                reason: "listed twice".to_owned(),
            });
        }
        bytes += g.len();
        if bytes > MAX_EXTRA_GROUPS_BYTES {
            return Err(Error::InvalidGroup {
                group: g.clone(),
                reason: format!(
                    "the groups besides the scope group take at most {MAX_EXTRA_GROUPS_BYTES} bytes together"
                ),
            });
        }
    }
    Ok(())
}

/// The claims of a manager-signed token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer (the manager's external URL).
    pub iss: String,
    /// Audience (the cluster).
    pub aud: String,
    /// Subject.
    pub sub: String,
    /// The scope group first, exactly one KubeNova group ([`tenant_group`] or
    /// [`project_group`]), then [`TokenSpec::extra_groups`].
    pub groups: Vec<String>,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// Not before (unix seconds, = `iat`).
    pub nbf: i64,
    /// Expiry (unix seconds).
    pub exp: i64,
    /// Unique token id (UUIDv7: unique and in issue order), the handle for audit and
    /// revocation.
    pub jti: String,
}

impl Claims {
    /// Builds the claims for `spec` issued at `now`, with a fresh `jti`.
    ///
    /// Fails with [`Error::TtlOutOfRange`] when `spec.ttl` ≤ 0 or > `max_ttl`, with
    /// [`Error::InvalidName`] / [`Error::InvalidSubject`] for bad tenant, project or
    /// subject, and with [`Error::InvalidGroup`] for an extra group that may not be carried.
    pub fn new(spec: &TokenSpec, now: OffsetDateTime, max_ttl: Duration) -> Result<Self> {
        if spec.ttl <= Duration::ZERO || spec.ttl > max_ttl {
            return Err(Error::TtlOutOfRange {
                requested_seconds: spec.ttl.whole_seconds(),
                max_seconds: max_ttl.whole_seconds(),
            });
        }
        check_label("tenant", &spec.tenant)?;
        if let Some(p) = &spec.project {
            check_label("project", p)?;
        }
        if spec.subject.trim().is_empty() || spec.subject.starts_with("system:") {
            return Err(Error::InvalidSubject(spec.subject.clone()));
        }
        check_https("issuer", &spec.issuer, true)?;
        if spec.audience.trim().is_empty() {
            return Err(Error::InvalidName {
                field: "audience",
                reason: "must not be empty".to_owned(),
            });
        }
        check_extra_groups(&spec.extra_groups)?;
        let group = match &spec.project {
            Some(p) => project_group(&spec.tenant, p, spec.role),
            None => tenant_group(&spec.tenant, spec.role),
        };
        let iat = now.unix_timestamp();
        Ok(Self {
            iss: spec.issuer.clone(),
            aud: spec.audience.clone(),
            sub: spec.subject.clone(),
            groups: std::iter::once(group)
                .chain(spec.extra_groups.iter().cloned())
                .collect(),
            iat,
            nbf: iat,
            exp: iat + spec.ttl.whole_seconds(),
            jti: uuid::Uuid::now_v7().to_string(),
        })
    }

    /// `exp` as a timestamp.
    pub fn expires_at(&self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(self.exp).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

/// The OIDC discovery document served at `/.well-known/openid-configuration`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenIdConfiguration {
    /// Issuer URL; equals the tokens' `iss`.
    pub issuer: String,
    /// Where the JWK Set is served.
    pub jwks_uri: String,
    /// `["id_token"]`.
    pub response_types_supported: Vec<String>,
    /// `["public"]`.
    pub subject_types_supported: Vec<String>,
    /// `["ES256"]`.
    pub id_token_signing_alg_values_supported: Vec<String>,
    /// The claims tokens carry.
    pub claims_supported: Vec<String>,
}

/// Discovery document for `issuer` with the JWKS at `issuer + "/.well-known/jwks.json"`.
///
/// ```
/// let d = kubenova_kubeconfig::openid_configuration("https://manager.example.com/");
/// assert_eq!(d.issuer, "https://manager.example.com/");
/// assert_eq!(d.jwks_uri, "https://manager.example.com/.well-known/jwks.json");
/// ```
pub fn openid_configuration(issuer: &str) -> OpenIdConfiguration {
    openid_configuration_with_jwks_path(issuer, JWKS_PATH)
}

/// Discovery document with the JWKS served at `jwks_path` below the issuer URL.
pub fn openid_configuration_with_jwks_path(issuer: &str, jwks_path: &str) -> OpenIdConfiguration {
    let strs = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    OpenIdConfiguration {
        issuer: issuer.to_owned(),
        jwks_uri: format!(
            "{}/{}",
            issuer.trim_end_matches('/'),
            jwks_path.trim_start_matches('/')
        ),
        response_types_supported: strs(&["id_token"]),
        subject_types_supported: strs(&["public"]),
        id_token_signing_alg_values_supported: strs(&[ALGORITHM]),
        claims_supported: strs(&["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "groups"]),
    }
}
