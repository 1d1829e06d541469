//! Where people sign in: the `login` section of an issuer in `--oidc-config` and the
//! public `GET /api/v1/auth/providers` that `kubenova login` reads before it has a token.
#![allow(clippy::unwrap_used)]

use axum::body::Body;
use axum::extract::ConnectInfo;
use http_body_util::BodyExt as _;
use hyper::{Request, StatusCode};
use kubenova_manager::api::config::ServerConfig;
use kubenova_manager::api::oidc::{Oidc, OidcConfig};
use kubenova_store::crypto::{Kek, Keyring};
use kubenova_store::{SqliteStore, Store};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use tower::ServiceExt as _;

fn parse(yaml: &str) -> Result<OidcConfig, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("oidc.yaml");
    std::fs::write(&path, yaml).unwrap();
    OidcConfig::load(&path)
}

const TWO_ISSUERS: &str = r#"
issuers:
  - issuer: https://keycloak.example.com/realms/platform
    audience: kubenova
    login: {}
  - issuer: https://dex.example.com
    audience: kubenova-dex
    login:
      clientId: kubenova-cli
      scopes: [openid, email, groups, offline_access]
      displayName: Dex
  - issuer: https://machines.example.com
    audience: kubenova
"#;

#[test]
fn login_sections_parse_with_defaults() {
    let cfg = parse(TWO_ISSUERS).unwrap();
    let kc = cfg.issuers[0].login.as_ref().unwrap();
    assert_eq!(
        kc.client_id(&cfg.issuers[0]),
        "kubenova",
        "defaults to the audience"
    );
    assert_eq!(kc.scopes, ["openid", "email", "profile", "offline_access"]);
    assert_eq!(kc.display_name, None);
    let dex = cfg.issuers[1].login.as_ref().unwrap();
    assert_eq!(dex.client_id(&cfg.issuers[1]), "kubenova-cli");
    assert_eq!(dex.display_name.as_deref(), Some("Dex"));
    assert!(cfg.issuers[2].login.is_none());
}

#[test]
fn bad_login_sections_are_refused_naming_the_field() {
    let cases = [
        (
            "login: {scopes: [email]}",
            "issuers[0].login.scopes must hold openid",
        ),
        ("login: {clientId: 'a b'}", "issuers[0].login.clientId"),
        ("login: {clientId: ''}", "issuers[0].login.clientId"),
        (
            "login: {scopes: [openid, 'a\"b']}",
            "issuers[0].login.scopes",
        ),
        ("login: {displayName: ''}", "issuers[0].login.displayName"),
        ("login: {secret: x}", "secret"),
        ("login: {clientSecret: ''}", "issuers[0].login.clientSecret"),
        (
            "login: {clientSecret: \"GOCSPX-a\\nb\"}",
            "issuers[0].login.clientSecret",
        ),
        (
            "login: {clientSecret: \"a\\u0000b\"}",
            "issuers[0].login.clientSecret",
        ),
    ];
    let too_long = format!("login: {{clientSecret: {}}}", "s".repeat(257));
    let cases = cases
        .iter()
        .map(|(l, w)| (l.to_string(), *w))
        .chain([(too_long, "issuers[0].login.clientSecret")]);
    for (login, want) in cases {
        let yaml = format!(
            "issuers:\n  - issuer: https://idp.example.com\n    audience: kubenova\n    {login}\n"
        );
        let err = parse(&yaml).unwrap_err();
        assert!(err.contains(want), "{login}: {err}");
        // The refused value is not repeated in the message (it is meant for CLIs, not logs).
        if want.ends_with("clientSecret") {
            assert!(
                !err.contains("GOCSPX") && !err.contains(&"s".repeat(257)),
                "{err}"
            );
        }
    }
}

#[test]
fn a_login_client_secret_up_to_the_bound_is_accepted() {
    let secret = "s".repeat(kubenova_manager::api::oidc::MAX_LOGIN_CLIENT_SECRET);
    let cfg = parse(&format!(
        "issuers:\n  - issuer: https://accounts.google.com\n    audience: x.apps.googleusercontent.com\n    login: {{clientSecret: {secret}}}\n"
    ))
    .unwrap();
    assert_eq!(
        cfg.issuers[0]
            .login
            .as_ref()
            .unwrap()
            .client_secret
            .as_deref(),
        Some(secret.as_str())
    );
}

async fn providers(oidc: Option<OidcConfig>) -> (StatusCode, Value) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    let keyring = Keyring::new(vec![Kek::new("k", &[9; 32]).unwrap()]).unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::connect(&url, keyring).await.unwrap());
    let cfg = ServerConfig::default();
    let mut auth = kubenova_manager::api::auth::Authenticator::hs256(
        b"login-providers-test-secret-0123456789",
        &cfg.jwt_issuer,
        &cfg.jwt_audience,
        cfg.clock_skew,
        cfg.max_token_ttl,
    );
    if let Some(c) = oidc {
        auth = auth.with_identity_providers(Arc::new(Oidc::new(c).unwrap()));
    }
    let state = kubenova_manager::assemble_state(
        store,
        kubenova_api::catalog::Catalog::builtin(),
        cfg,
        auth,
    );
    let app = kubenova_manager::api::router(state);
    // No Authorization header: the endpoint is public.
    let mut req = Request::get("/api/v1/auth/providers")
        .body(Body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn the_providers_offering_sign_in_are_listed_without_a_token() {
    let (s, v) = providers(Some(parse(TWO_ISSUERS).unwrap())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"providers": [
            {"issuer": "https://keycloak.example.com/realms/platform", "clientId": "kubenova",
             "scopes": ["openid", "email", "profile", "offline_access"],
             "displayName": "https://keycloak.example.com/realms/platform"},
            {"issuer": "https://dex.example.com", "clientId": "kubenova-cli",
             "scopes": ["openid", "email", "groups", "offline_access"], "displayName": "Dex"},
        ]})
    );
    // Without identity providers, or none with a login section: an empty list.
    let (s, v) = providers(None).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"providers": []})));
}

#[tokio::test]
async fn an_installed_app_client_secret_is_published_with_its_provider() {
    let cfg = parse(
        r#"
issuers:
  - issuer: https://accounts.google.com
    audience: 1234-abc.apps.googleusercontent.com
    subjectClaim: email
    login:
      clientSecret: GOCSPX-installed-app-secret
      displayName: Google
"#,
    )
    .unwrap();
    let (s, v) = providers(Some(cfg)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"providers": [
            {"issuer": "https://accounts.google.com",
             "clientId": "1234-abc.apps.googleusercontent.com",
             "scopes": ["openid", "email", "profile", "offline_access"],
             "displayName": "Google", "clientSecret": "GOCSPX-installed-app-secret"},
        ]})
    );
}
