//! ES256 key pairs and an external OIDC issuer's JWKS (keys generated with the `openssl`
//! CLI; skipped loudly when it is missing).
#![allow(clippy::unwrap_used, missing_docs)]

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kubenova_manager::api::auth::Authenticator;
use kubenova_manager::api::authz::Role;
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn openssl(args: &[&str], dir: &Path) -> Option<Vec<u8>> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    out.status.success().then_some(out.stdout)
}

/// (public PEM, PKCS#8 private PEM, x, y) of a fresh P-256 key.
fn ec_key(dir: &Path) -> Option<(Vec<u8>, Vec<u8>, String, String)> {
    openssl(
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ec.pem",
        ],
        dir,
    )?;
    openssl(
        &[
            "pkcs8", "-topk8", "-nocrypt", "-in", "ec.pem", "-out", "priv.pem",
        ],
        dir,
    )?;
    openssl(&["ec", "-in", "ec.pem", "-pubout", "-out", "pub.pem"], dir)?;
    let text =
        String::from_utf8(openssl(&["ec", "-in", "ec.pem", "-text", "-noout"], dir)?).ok()?;
    let hex: String = text
        .split("pub:")
        .nth(1)?
        .split("ASN1")
        .next()?
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .collect();
    let bytes = hex::decode(hex).ok()?;
    assert_eq!(bytes.len(), 65, "uncompressed point");
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    Some((
        std::fs::read(dir.join("pub.pem")).ok()?,
        std::fs::read(dir.join("priv.pem")).ok()?,
        b64(&bytes[1..33]),
        b64(&bytes[33..65]),
    ))
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[test]
fn es256_and_oidc_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let Some((public, private, x, y)) = ec_key(dir.path()) else {
        eprintln!("!!! ES256/OIDC TEST SKIPPED: the openssl CLI is not available !!!");
        return;
    };
    let skew = Duration::from_secs(30);
    let max = Duration::from_secs(3600);

    // ES256: mint with the private key, verify with the public key.
    let es = Authenticator::es256(
        &public,
        Some(&private),
        "kubenova",
        "kubenova-api",
        skew,
        max,
    )
    .unwrap();
    let minted = es
        .mint("svc", &[Role::Ops], &[], &[], Duration::from_secs(60))
        .unwrap();
    assert_eq!(es.verify(&minted.token).unwrap().roles, vec![Role::Ops]);
    let verify_only =
        Authenticator::es256(&public, None, "kubenova", "kubenova-api", skew, max).unwrap();
    assert!(verify_only.verify(&minted.token).is_ok());
    assert!(!verify_only.can_mint());
    assert!(
        verify_only
            .mint("x", &[], &[], &[], Duration::from_secs(60))
            .is_err()
    );
    // An HS256 token (e.g. signed with the public key as a secret) is refused.
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "eve", "roles": ["admin"], "iss": "kubenova", "aud": "kubenova-api", "exp": now() + 60}),
        &EncodingKey::from_secret(&public),
    )
    .unwrap();
    assert_eq!(es.verify(&hs).unwrap_err().error.code.as_str(), "KN-401");

    // OIDC: a token with a `kid` from the JWKS, the issuer's `iss` and the audience.
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": "idp-1", "alg": "ES256", "use": "sig"}]});
    let auth = Authenticator::hs256(
        b"local-secret-local-secret-local-secret",
        "kubenova",
        "kubenova-api",
        skew,
        max,
    )
    .with_oidc("https://idp.example.com", "kubenova-api", &jwks.to_string())
    .unwrap();
    assert!(auth.oidc_enabled());
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("idp-1".into());
    let key = EncodingKey::from_ec_pem(&private).unwrap();
    let sign = |claims: serde_json::Value| jsonwebtoken::encode(&header, &claims, &key).unwrap();
    let good = sign(
        json!({"sub": "carol", "roles": ["readOnly"], "iss": "https://idp.example.com", "aud": ["kubenova-api", "other"], "exp": now() + 60}),
    );
    let p = auth.verify(&good).unwrap();
    assert_eq!(
        (p.subject.as_str(), p.roles.clone()),
        ("carol", vec![Role::ReadOnly])
    );
    // Tokens are routed by `iss`: another issuer's is refused whatever key it names, and
    // one claiming this manager's own issuer is checked as a local (HS256) token.
    let local_claim = sign(
        json!({"sub": "carol", "roles": ["admin"], "iss": "kubenova", "aud": "kubenova-api", "exp": now() + 60}),
    );
    assert_eq!(
        auth.verify(&local_claim).unwrap_err().error.code.as_str(),
        "KN-401"
    );
    let wrong_iss = sign(
        json!({"sub": "carol", "roles": [], "iss": "https://elsewhere.example.com", "aud": "kubenova-api", "exp": now() + 60}),
    );
    assert!(
        auth.verify(&wrong_iss)
            .unwrap_err()
            .error
            .message
            .contains("issuer")
    );
    // Local tokens still work next to the OIDC issuer.
    let local = auth
        .mint("dave", &[Role::Admin], &[], &[], Duration::from_secs(60))
        .unwrap();
    assert_eq!(auth.verify(&local.token).unwrap().subject, "dave");
}
