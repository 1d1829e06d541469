//! Manager-signed tokens: claims, verification with the published JWKS, rotation, storage.
#![allow(clippy::unwrap_used)]

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use kubenova_api::error::ErrorCode;
use kubenova_api::model::AccessRole;
use kubenova_kubeconfig::{
    Claims, Error, ExecCredential, KeySet, MAX_EXTRA_GROUPS, MAX_EXTRA_GROUPS_BYTES, MAX_GROUP_LEN,
    SigningKey, TokenSpec, carried_groups, openid_configuration,
    openid_configuration_with_jwks_path,
};
use time::{Duration, OffsetDateTime};

const ISSUER: &str = "https://manager.example.com";
const AUD: &str = "kubenova:cluster:prod-eu";
const MAX: Duration = Duration::hours(24);

fn spec(project: Option<&str>, role: AccessRole, ttl: Duration) -> TokenSpec {
    TokenSpec {
        issuer: ISSUER.into(),
        audience: AUD.into(),
        subject: "alice@example.com".into(),
        tenant: "acme".into(),
        project: project.map(str::to_owned),
        role,
        ttl,
        extra_groups: Vec::new(),
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn mint(keys: &KeySet, at: OffsetDateTime, ttl: Duration) -> (String, Claims) {
    let claims = Claims::new(&spec(None, AccessRole::Owner, ttl), at, MAX).unwrap();
    (keys.issue(&claims).unwrap(), claims)
}

#[test]
fn claims_carry_scope_groups_and_times() {
    let at = now();
    let c = Claims::new(
        &spec(Some("web"), AccessRole::Developer, Duration::minutes(30)),
        at,
        MAX,
    )
    .unwrap();
    assert_eq!(c.iss, ISSUER);
    assert_eq!(c.aud, AUD);
    assert_eq!(c.sub, "alice@example.com");
    assert_eq!(c.groups, ["kubenova:project:acme:web:developer"]);
    assert_eq!(c.iat, at.unix_timestamp());
    assert_eq!(c.nbf, c.iat);
    assert_eq!(c.exp, c.iat + 1800);
    let jti = uuid::Uuid::parse_str(&c.jti).unwrap();
    assert_eq!(jti.get_version_num(), 7);
    let t = Claims::new(&spec(None, AccessRole::Viewer, Duration::hours(1)), at, MAX).unwrap();
    assert_eq!(t.groups, ["kubenova:tenant:acme:viewer"]);
    assert_ne!(t.jti, c.jti);
}

#[test]
fn token_verifies_with_the_published_jwks_only() {
    let keys = KeySet::generate(now()).unwrap();
    let (token, claims) = mint(&keys, now(), Duration::hours(1));

    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(header.kid.as_deref(), Some(keys.active().kid()));

    // Take the key from the served JSON document, as an API server would.
    let jwks: serde_json::Value = serde_json::from_str(&keys.jwks_json().unwrap()).unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header.kid.clone().unwrap().as_str())
        .unwrap();
    assert_eq!(jwk["kty"], "EC");
    assert_eq!(jwk["crv"], "P-256");
    assert_eq!(jwk["use"], "sig");
    assert_eq!(jwk["alg"], "ES256");
    let x = jwk["x"].as_str().unwrap();
    let y = jwk["y"].as_str().unwrap();
    assert_eq!(x.len(), 43, "32 bytes base64url without padding");
    assert_eq!(y.len(), 43);
    let dk = DecodingKey::from_ec_components(x, y).unwrap();
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&[AUD]);
    v.set_issuer(&[ISSUER]);
    let got = jsonwebtoken::decode::<Claims>(&token, &dk, &v)
        .unwrap()
        .claims;
    assert_eq!(got, claims);

    // A different key's JWK must not verify it.
    let other = KeySet::generate(now()).unwrap();
    let jwk = other.active().jwk();
    let dk = DecodingKey::from_jwk(&jwk).unwrap();
    let e = jsonwebtoken::decode::<Claims>(&token, &dk, &v).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::InvalidSignature);
    assert!(matches!(
        other.verify(&token, AUD),
        Err(Error::UnknownKey(_))
    ));

    // And the crate's own verifier agrees.
    assert_eq!(keys.verify(&token, AUD).unwrap(), claims);
    assert_eq!(
        keys.verify_with_issuer(&token, ISSUER, AUD).unwrap(),
        claims
    );
    assert!(
        keys.verify_with_issuer(&token, "https://evil.example.com", AUD)
            .is_err()
    );
}

#[test]
fn expired_token_fails() {
    let keys = KeySet::generate(now()).unwrap();
    let (token, _) = mint(&keys, now() - Duration::hours(2), Duration::hours(1));
    let e = keys.verify(&token, AUD).unwrap_err();
    match &e {
        Error::InvalidToken(j) => assert_eq!(j.kind(), &ErrorKind::ExpiredSignature),
        other => panic!("{other}"),
    }
    assert_eq!(e.code(), ErrorCode::Unauthenticated);
}

#[test]
fn not_yet_valid_token_fails() {
    let keys = KeySet::generate(now()).unwrap();
    let (token, _) = mint(&keys, now() + Duration::hours(1), Duration::hours(1));
    match keys.verify(&token, AUD).unwrap_err() {
        Error::InvalidToken(j) => assert_eq!(j.kind(), &ErrorKind::ImmatureSignature),
        other => panic!("{other}"),
    }
}

#[test]
fn token_for_another_clusters_audience_fails() {
    let keys = KeySet::generate(now()).unwrap();
    let (token, _) = mint(&keys, now(), Duration::hours(1));
    match keys.verify(&token, "kubenova:cluster:other").unwrap_err() {
        Error::InvalidToken(j) => assert_eq!(j.kind(), &ErrorKind::InvalidAudience),
        other => panic!("{other}"),
    }
}

#[test]
fn tampered_token_fails() {
    let keys = KeySet::generate(now()).unwrap();
    let (token, _) = mint(&keys, now(), Duration::hours(1));
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged_claims = {
        use base64::Engine as _;
        let mut c: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(parts[1])
                .unwrap(),
        )
        .unwrap();
        c["groups"] = serde_json::json!(["kubenova:tenant:other:owner"]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(c.to_string())
    };
    parts[1] = &forged_claims;
    assert!(keys.verify(&parts.join("."), AUD).is_err());
}

#[test]
fn rotation_overlap_then_retirement() {
    let t0 = now() - Duration::hours(3);
    let mut keys = KeySet::generate(t0).unwrap();
    let old_kid = keys.active().kid().to_owned();
    let (old_token, _) = mint(&keys, now(), Duration::hours(1));

    // Rotate: the new key signs, the old one still verifies.
    let new_kid = keys.rotate(now()).unwrap().kid().to_owned();
    assert_ne!(old_kid, new_kid);
    let (new_token, _) = mint(&keys, now(), Duration::hours(1));
    assert_eq!(
        jsonwebtoken::decode_header(&new_token)
            .unwrap()
            .kid
            .as_deref(),
        Some(new_kid.as_str())
    );
    assert!(keys.verify(&old_token, AUD).is_ok());
    assert!(keys.verify(&new_token, AUD).is_ok());
    let kids: Vec<_> = keys
        .jwks()
        .keys
        .into_iter()
        .filter_map(|k| k.common.key_id)
        .collect();
    assert_eq!(kids, [new_kid.clone(), old_kid.clone()]);

    // Before max_ttl has passed since the rotation, nothing is retired.
    assert!(
        keys.retire_expired(now() + Duration::hours(1), MAX)
            .is_empty()
    );
    assert!(keys.verify(&old_token, AUD).is_ok());

    // After it, the old key is gone: its tokens fail and it leaves the JWKS.
    let retired = keys.retire_expired(now() + MAX + Duration::seconds(1), MAX);
    assert_eq!(retired, std::slice::from_ref(&old_kid));
    assert!(matches!(
        keys.verify(&old_token, AUD),
        Err(Error::UnknownKey(k)) if k == old_kid
    ));
    assert!(keys.verify(&new_token, AUD).is_ok());
    assert_eq!(keys.jwks().keys.len(), 1);
    // The active key is never retired.
    assert!(
        keys.retire_expired(now() + Duration::days(365), MAX)
            .is_empty()
    );
}

#[test]
fn ttl_bounds() {
    let at = now();
    for ttl in [
        Duration::ZERO,
        Duration::seconds(-5),
        MAX + Duration::seconds(1),
    ] {
        let e = Claims::new(&spec(None, AccessRole::Owner, ttl), at, MAX).unwrap_err();
        assert!(matches!(e, Error::TtlOutOfRange { .. }), "{ttl}: {e}");
        assert_eq!(e.code(), ErrorCode::Validation);
    }
    assert!(Claims::new(&spec(None, AccessRole::Owner, MAX), at, MAX).is_ok());
    assert!(
        Claims::new(
            &spec(None, AccessRole::Owner, Duration::seconds(1)),
            at,
            MAX
        )
        .is_ok()
    );
}

#[test]
fn bad_subjects_and_scopes_are_rejected() {
    let at = now();
    let mut s = spec(None, AccessRole::Owner, Duration::hours(1));
    s.subject = "system:admin".into();
    assert!(matches!(
        Claims::new(&s, at, MAX),
        Err(Error::InvalidSubject(_))
    ));
    s.subject = String::new();
    assert!(matches!(
        Claims::new(&s, at, MAX),
        Err(Error::InvalidSubject(_))
    ));
    let mut s = spec(Some("a:b"), AccessRole::Owner, Duration::hours(1));
    assert!(matches!(
        Claims::new(&s, at, MAX),
        Err(Error::InvalidName { .. })
    ));
    s.project = None;
    s.issuer = "http://manager.example.com".into();
    assert!(matches!(
        Claims::new(&s, at, MAX),
        Err(Error::InsecureUrl { .. })
    ));
}

#[test]
fn keys_survive_storage_round_trip() {
    let mut keys = KeySet::generate(now() - Duration::hours(1)).unwrap();
    let (old_token, _) = mint(&keys, now(), Duration::hours(1));
    keys.rotate(now()).unwrap();
    let bytes = keys.to_bytes().unwrap();
    let back = KeySet::from_bytes(&bytes).unwrap();
    assert_eq!(back.active().kid(), keys.active().kid());
    assert_eq!(back.previous().len(), 1);
    assert_eq!(
        back.previous()[0]
            .deactivated_at()
            .map(|t| t.unix_timestamp()),
        keys.previous()[0]
            .deactivated_at()
            .map(|t| t.unix_timestamp())
    );
    assert!(back.verify(&old_token, AUD).is_ok());
    let (t, _) = mint(&back, now(), Duration::hours(1));
    assert!(keys.verify(&t, AUD).is_ok());

    // Single key records and PEM.
    let k = keys.active();
    let one = SigningKey::from_bytes(&k.to_bytes().unwrap()).unwrap();
    assert_eq!(one.kid(), k.kid());
    let pem = k.to_pkcs8_pem();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
    let from_pem = SigningKey::from_pkcs8_pem(&pem, k.created_at()).unwrap();
    assert_eq!(from_pem.kid(), k.kid());

    // Corrupt storage is an error, not a panic.
    assert!(KeySet::from_bytes(b"{}").is_err());
    assert!(SigningKey::from_pkcs8_der(b"nope", now()).is_err());
    let debug = format!("{k:?}");
    assert!(!debug.contains(&pem[30..60]));
}

#[test]
fn discovery_document() {
    let d = openid_configuration(ISSUER);
    let v = serde_json::to_value(&d).unwrap();
    assert_eq!(v["issuer"], ISSUER);
    assert_eq!(
        v["jwks_uri"],
        "https://manager.example.com/.well-known/jwks.json"
    );
    assert_eq!(
        v["id_token_signing_alg_values_supported"],
        serde_json::json!(["ES256"])
    );
    assert_eq!(
        v["response_types_supported"],
        serde_json::json!(["id_token"])
    );
    assert_eq!(v["subject_types_supported"], serde_json::json!(["public"]));
    for c in ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "groups"] {
        assert!(
            v["claims_supported"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x == c),
            "{c}"
        );
    }
    let d = openid_configuration_with_jwks_path("https://m.example.com/kn/", "/openid/v1/jwks");
    assert_eq!(d.jwks_uri, "https://m.example.com/kn/openid/v1/jwks");
}

#[test]
fn exec_credential_json() {
    let keys = KeySet::generate(now()).unwrap();
    let (token, claims) = mint(&keys, now(), Duration::minutes(10));
    let ec = ExecCredential::for_token(token.clone(), &claims);
    let v: serde_json::Value = serde_json::from_str(&ec.to_json().unwrap()).unwrap();
    assert_eq!(v["apiVersion"], "client.authentication.k8s.io/v1");
    assert_eq!(v["kind"], "ExecCredential");
    assert_eq!(v["status"]["token"], token.as_str());
    let ts = v["status"]["expirationTimestamp"].as_str().unwrap();
    let parsed = OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).unwrap();
    assert_eq!(parsed.unix_timestamp(), claims.exp);
    assert!(ts.ends_with('Z'), "{ts}");
}

#[test]
fn key_set_can_be_shared_across_tasks() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<KeySet>();
    assert_send_sync::<SigningKey>();
    assert_send_sync::<Error>();
}

#[test]
fn from_keys_drops_duplicates_and_marks_previous_deactivated() {
    let a = SigningKey::generate(now() - Duration::hours(2)).unwrap();
    let b = SigningKey::generate(now()).unwrap();
    let set = KeySet::from_keys(b.clone(), vec![a.clone(), b.clone()]);
    assert_eq!(set.previous().len(), 1);
    assert_eq!(set.previous()[0].kid(), a.kid());
    assert_eq!(set.previous()[0].deactivated_at(), Some(b.created_at()));
    assert_eq!(set.active().deactivated_at(), None);
}

#[test]
fn extra_groups_follow_the_scope_group_and_survive_verification() {
    let keys = KeySet::generate(now()).unwrap();
    let mut s = spec(Some("web"), AccessRole::Viewer, Duration::minutes(10));
    s.extra_groups = vec!["acme-admins".into(), "kc:qa".into()];
    let claims = Claims::new(&s, now(), MAX).unwrap();
    assert_eq!(
        claims.groups,
        ["kubenova:project:acme:web:viewer", "acme-admins", "kc:qa"]
    );
    let back = keys.verify(&keys.issue(&claims).unwrap(), AUD).unwrap();
    assert_eq!(back.groups, claims.groups);
}

#[test]
fn groups_that_may_never_be_carried_are_refused_by_claims_and_dropped_by_carried_groups() {
    let hostile = [
        "system:masters",
        "SYSTEM:masters",
        "System:Authenticated",
        "kubenova:tenant:victim:owner",
        "KubeNova:project:victim:web:owner",
        " system:masters",
        "system:masters ",
        "ops\nsystem:masters",
        "",
        "   ",
    ];
    let long = "g".repeat(MAX_GROUP_LEN + 1);
    for g in hostile.iter().copied().chain([long.as_str()]) {
        let mut s = spec(None, AccessRole::Owner, Duration::minutes(10));
        s.extra_groups = vec!["fine".into(), g.to_string()];
        let e = Claims::new(&s, now(), MAX).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidGroup { group, .. } if group == g),
            "{g:?}: {e}"
        );
        assert_eq!(e.code(), ErrorCode::Validation);
        let c = carried_groups(["fine", g]);
        assert_eq!(c.groups, ["fine"], "{g:?}");
        assert_eq!(c.dropped, 1, "{g:?}");
    }
    // The longest carriable group is carried.
    let edge = "g".repeat(MAX_GROUP_LEN);
    assert_eq!(
        carried_groups([edge.as_str()]).groups,
        std::slice::from_ref(&edge)
    );
    // Twice is refused by Claims::new, once kept by carried_groups.
    let mut s = spec(None, AccessRole::Owner, Duration::minutes(10));
    s.extra_groups = vec!["a".into(), "a".into()];
    assert!(matches!(
        Claims::new(&s, now(), MAX),
        Err(Error::InvalidGroup { .. })
    ));
    assert_eq!(
        carried_groups(["a", "a"]),
        kubenova_kubeconfig::CarriedGroups {
            groups: vec!["a".into()],
            dropped: 0
        }
    );
}

#[test]
fn extra_groups_are_bounded_in_number_and_bytes() {
    // One more than the maximum: refused, and carried_groups keeps the first ones.
    let many: Vec<String> = (0..=MAX_EXTRA_GROUPS)
        .map(|i| format!("group-{i}"))
        .collect();
    let mut s = spec(None, AccessRole::Owner, Duration::minutes(10));
    s.extra_groups = many.clone();
    assert!(matches!(
        Claims::new(&s, now(), MAX),
        Err(Error::InvalidGroup { .. })
    ));
    let c = carried_groups(&many);
    assert_eq!(c.groups, many[..MAX_EXTRA_GROUPS]);
    assert_eq!(c.dropped, 1);
    s.extra_groups = c.groups;
    let claims = Claims::new(&s, now(), MAX).unwrap();
    assert_eq!(claims.groups.len(), 1 + MAX_EXTRA_GROUPS);

    // Long names: the byte budget stops them before the count does.
    let long: Vec<String> = (0..MAX_EXTRA_GROUPS)
        .map(|i| format!("{i:03}-{}", "x".repeat(MAX_GROUP_LEN - 4)))
        .collect();
    let c = carried_groups(&long);
    assert_eq!(c.groups.len(), MAX_EXTRA_GROUPS_BYTES / MAX_GROUP_LEN);
    assert_eq!(c.groups.len() + c.dropped, long.len());
    assert!(c.groups.iter().map(String::len).sum::<usize>() <= MAX_EXTRA_GROUPS_BYTES);
    s.extra_groups = c.groups;
    let keys = KeySet::generate(now()).unwrap();
    let token = keys.issue(&Claims::new(&s, now(), MAX).unwrap()).unwrap();
    // A sane size for an Authorization header (within the common 8 KiB limits).
    assert!(token.len() < 7 * 1024, "token of {} bytes", token.len());
    s.extra_groups = long;
    assert!(matches!(
        Claims::new(&s, now(), MAX),
        Err(Error::InvalidGroup { .. })
    ));
}
