//! Service-account tokens: HS256-signed JWTs as issued by `TokenRequest`, and their review.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::error::{ApiError, ApiResult};

type HmacSha256 = Hmac<Sha256>;

/// Issuer claim put into tokens.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// An authenticated identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// Username, e.g. `system:serviceaccount:ns:name`.
    pub username: String,
    /// UID (service account uid, or fixed for admin).
    pub uid: String,
    /// Groups.
    pub groups: Vec<String>,
}

/// Claims extracted from a valid service-account token.
#[derive(Debug, Clone)]
pub struct SaClaims {
    /// Namespace.
    pub namespace: String,
    /// Service account name.
    pub name: String,
    /// Service account uid.
    pub uid: String,
    /// Audiences.
    pub audiences: Vec<String>,
    /// Expiry (unix seconds).
    pub exp: i64,
}

/// Signs and verifies tokens with a per-cluster random key.
#[derive(Clone)]
pub struct TokenSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(..)")
    }
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

impl TokenSigner {
    /// A signer with a random 32-byte key.
    pub fn random() -> Self {
        use rand::RngCore as _;
        let mut key = vec![0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        Self { key }
    }

    fn mac(&self, data: &[u8]) -> ApiResult<Vec<u8>> {
        let mut mac = HmacSha256::new_from_slice(&self.key)
            .map_err(|e| ApiError::internal(format!("hmac key: {e}")))?;
        mac.update(data);
        Ok(mac.finalize().into_bytes().to_vec())
    }

    /// Issues a JWT for a service account.
    pub fn issue(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        audiences: &[String],
        expiration_seconds: i64,
    ) -> ApiResult<(String, i64)> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let exp = now + expiration_seconds;
        let header = json!({"alg": "HS256", "typ": "JWT", "kid": "kubenova-testkit"});
        let claims = json!({
            "iss": ISSUER,
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "aud": audiences,
            "iat": now,
            "nbf": now,
            "exp": exp,
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}},
        });
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self.mac(signing_input.as_bytes())?;
        Ok((format!("{signing_input}.{}", b64(&sig)), exp))
    }

    /// Verifies signature and expiry; returns the claims.
    pub fn verify(&self, token: &str) -> Option<SaClaims> {
        let mut parts = token.split('.');
        let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }

        let given = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .ok()?;
        let mut mac = HmacSha256::new_from_slice(&self.key).ok()?;
        mac.update(format!("{h}.{c}").as_bytes());
        mac.verify_slice(&given).ok()?;
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .ok()?,
        )
        .ok()?;
        let exp = claims.get("exp")?.as_i64()?;
        if exp <= time::OffsetDateTime::now_utc().unix_timestamp() {
            return None;
        }
        let k = claims.get("kubernetes.io")?;
        Some(SaClaims {
            namespace: k.get("namespace")?.as_str()?.to_owned(),
            name: k.pointer("/serviceaccount/name")?.as_str()?.to_owned(),
            uid: k.pointer("/serviceaccount/uid")?.as_str()?.to_owned(),
            audiences: claims
                .get("aud")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            exp,
        })
    }
}

/// The user a valid service-account token maps to.
pub fn sa_user(c: &SaClaims) -> UserInfo {
    UserInfo {
        username: format!("system:serviceaccount:{}:{}", c.namespace, c.name),
        uid: c.uid.clone(),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{}", c.namespace),
            "system:authenticated".into(),
        ],
    }
}

/// The admin user.
pub fn admin_user() -> UserInfo {
    UserInfo {
        username: "kubernetes-admin".into(),
        uid: "kubenova-testkit-admin".into(),
        groups: vec!["system:masters".into(), "system:authenticated".into()],
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn roundtrip_and_tamper() {
        let s = TokenSigner::random();
        let (t, _) = s.issue("ns", "sa", "u1", &["api".into()], 600).unwrap();
        let c = s.verify(&t).unwrap();
        assert_eq!(sa_user(&c).username, "system:serviceaccount:ns:sa");
        let mut bad = t.clone();
        bad.push('x');
        assert!(s.verify(&bad).is_none());
        assert!(TokenSigner::random().verify(&t).is_none());
        let (expired, _) = s.issue("ns", "sa", "u1", &[], -1).unwrap();
        assert!(s.verify(&expired).is_none());
    }
}
