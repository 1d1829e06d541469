//! People signed in with an identity provider: an OIDC provider in this process (discovery
//! and a JWKS over HTTP, ES256 keys that rotate) and the manager's real router on SQLite.
//! Rights come from the model: tenants' `owners`, projects' `access`, platform roles from
//! groups; changes apply to the next request; bad tokens are KN-401 with a reason. Two
//! real manager processes on one Postgres database (configured by an `--oidc-config` file)
//! show a removal applying at once on the other replica.
#![allow(clippy::unwrap_used)]

use hyper::{Method, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kubenova_manager::api::authz::Role;
use kubenova_manager::api::config::ServerConfig;
use kubenova_manager::api::oidc::{IssuerConfig, Oidc, OidcConfig, PlatformRoles};
use kubenova_store::crypto::{Kek, Keyring};
use kubenova_store::{SqliteStore, Store};
use kubenova_testkit::oidc::Provider;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

mod common;

const SECRET: &[u8] = b"identity-test-hs256-secret-0123456789abcdef";
const AUDIENCE: &str = "kubenova-ui";
/// A registered cluster's kubeconfig (shared fixture; its token is a stand-in secret).
const KUBECONFIG: &str = include_str!("fixtures/cluster.kubeconfig");

/// The identity provider (the test kit's, serving discovery and rotating JWKS), and the
/// claims it puts in tokens for this test's people.
#[derive(Clone)]
struct Idp {
    url: String,
    provider: Provider,
}

impl Idp {
    async fn start() -> Idp {
        let provider = Provider::start().await.unwrap();
        Idp {
            url: provider.issuer().to_string(),
            provider,
        }
    }

    /// A new signing key; the old ones are dropped from the JWKS.
    fn rotate(&self) {
        self.provider.rotate();
    }

    /// A token for `sub` in `groups`, with `extra` claims on top (they win).
    fn token(&self, sub: &str, groups: &[&str], extra: Value) -> String {
        let mut claims = json!({
            "iss": self.url, "aud": AUDIENCE, "sub": format!("id-{sub}"), "email": sub,
            "groups": groups,
        });
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        self.provider.sign(claims)
    }
}

struct Manager {
    app: axum::Router,
    admin: String,
    _dir: tempfile::TempDir,
}

async fn manager(issuers: Vec<IssuerConfig>) -> Manager {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    let keyring = Keyring::new(vec![Kek::new("k", &[9; 32]).unwrap()]).unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::connect(&url, keyring).await.unwrap());
    let cfg = ServerConfig {
        rate_limit_subject_rps: 0,
        rate_limit_ip_rps: 0,
        ..ServerConfig::default()
    };
    kubenova_manager::api::kubeconfigs::load_or_create_signing_keys(store.as_ref())
        .await
        .unwrap();
    let oidc = Oidc::new(OidcConfig {
        issuers,
        platform_roles: PlatformRoles {
            admin: vec!["platform-admins".into()],
            ops: vec![],
            read_only: vec!["auditors".into()],
        },
    })
    .unwrap();
    // As the manager does at start: keys fetched in the background.
    let oidc = Arc::new(oidc);
    drop(oidc.spawn_refresher());
    let auth = kubenova_manager::api::auth::Authenticator::hs256(
        SECRET,
        &cfg.jwt_issuer,
        &cfg.jwt_audience,
        cfg.clock_skew,
        cfg.max_token_ttl,
    )
    .with_identity_providers(oidc);
    let admin = auth
        .mint("root", &[Role::Admin], &[], &[], Duration::from_secs(600))
        .unwrap()
        .token;
    let state = kubenova_manager::assemble_state(
        store,
        kubenova_api::catalog::Catalog::builtin(),
        cfg,
        auth,
    );
    Manager {
        app: kubenova_manager::api::router(state),
        admin,
        _dir: dir,
    }
}

fn issuer(url: &str) -> IssuerConfig {
    IssuerConfig {
        issuer: url.to_string(),
        audience: AUDIENCE.into(),
        subject_claim: "email".into(),
        groups_claim: "groups".into(),
        subject_prefix: String::new(),
        groups_prefix: String::new(),
        jwks_file: None,
        role_claims: false,
        login: None,
    }
}

async fn call(
    m: &Manager,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    common::call(&m.app, method, path, token, body).await
}

/// The status of `GET path` with `token`.
async fn get_status(m: &Manager, path: &str, token: &str) -> StatusCode {
    call(m, Method::GET, path, token, None).await.0
}

struct World {
    cluster: String,
    acme: String,
    other: String,
    web: String,
}

impl World {
    fn tenant(&self, t: &str) -> String {
        format!("/api/v1/clusters/{}/tenants/{t}", self.cluster)
    }
    fn project(&self) -> String {
        format!("{}/projects/{}", self.tenant(&self.acme), self.web)
    }
}

async fn world(m: &Manager) -> World {
    let (s, c) = call(
        m,
        Method::POST,
        "/api/v1/clusters",
        &m.admin,
        Some(json!({"name": "prod", "kubeconfig": KUBECONFIG})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    let cluster = c["id"].as_str().unwrap().to_string();
    let tenants = format!("/api/v1/clusters/{cluster}/tenants");
    let (s, t) = call(
        m,
        Method::POST,
        &tenants,
        &m.admin,
        Some(json!({"name": "acme", "owners": ["alice@example.com", "group:acme-admins"]})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let acme = t["id"].as_str().unwrap().to_string();
    let (s, o) = call(
        m,
        Method::POST,
        &tenants,
        &m.admin,
        Some(json!({"name": "other", "owners": ["mallory@example.com"]})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{o}");
    let other = o["id"].as_str().unwrap().to_string();
    let (s, p) = call(m, Method::POST, &format!("{tenants}/{acme}/projects"), &m.admin, Some(json!({"name": "web", "access": ["viewer:carol@example.com", "developer:group:web-devs"]}))).await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let web = p["id"].as_str().unwrap().to_string();
    World {
        cluster,
        acme,
        other,
        web,
    }
}

#[tokio::test]
async fn owners_access_and_groups_grant_rights_that_follow_the_model() {
    let idp = Idp::start().await;
    let m = manager(vec![issuer(&idp.url)]).await;
    let w = world(&m).await;

    // alice is named in acme's owners: she owns it and nothing else.
    let alice = idp.token("alice@example.com", &[], json!({}));
    assert_eq!(
        get_status(&m, &w.tenant(&w.acme), &alice).await,
        StatusCode::OK
    );
    assert_eq!(
        get_status(&m, &w.tenant(&w.other), &alice).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get_status(&m, "/api/v1/clusters", &alice).await,
        StatusCode::FORBIDDEN
    );
    let (s, body) = call(
        &m,
        Method::POST,
        &format!("{}/projects", w.tenant(&w.acme)),
        &alice,
        Some(json!({"name": "api"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let (s, list) = call(&m, Method::GET, "/api/v1/tenants", &alice, None).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme"]);
    // /me names what she may use, with the path.
    let (s, me) = call(&m, Method::GET, "/api/v1/me", &alice, None).await;
    assert_eq!(s, StatusCode::OK, "{me}");
    assert_eq!(me["subject"], "alice@example.com");
    assert_eq!(me["issuer"], idp.url.as_str());
    let grants = me["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 1, "{me}");
    assert_eq!(grants[0]["role"], "tenantOwner");
    assert_eq!(grants[0]["source"], "owners");
    assert_eq!(grants[0]["tenant"]["name"], "acme");
    assert_eq!(grants[0]["cluster"]["name"], "prod");
    assert_eq!(grants[0]["path"], w.tenant(&w.acme).as_str());

    // bob owns acme through his group.
    let bob = idp.token("bob@example.com", &["acme-admins"], json!({}));
    assert_eq!(
        get_status(&m, &w.tenant(&w.acme), &bob).await,
        StatusCode::OK
    );
    // Without the group (a new token after a group change) he has nothing.
    let bob_later = idp.token("bob@example.com", &["other-team"], json!({}));
    assert_eq!(
        get_status(&m, &w.tenant(&w.acme), &bob_later).await,
        StatusCode::NOT_FOUND
    );

    // carol is a viewer of web: she reads it, lists only it, changes nothing, and does
    // not see the tenant record.
    let carol = idp.token("carol@example.com", &[], json!({}));
    assert_eq!(get_status(&m, &w.project(), &carol).await, StatusCode::OK);
    assert_eq!(
        get_status(&m, &w.tenant(&w.acme), &carol).await,
        StatusCode::NOT_FOUND
    );
    let (s, list) = call(
        &m,
        Method::GET,
        &format!("{}/projects", w.tenant(&w.acme)),
        &carol,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    let (s, _) = call(
        &m,
        Method::PUT,
        &format!("{}/access", w.project()),
        &carol,
        Some(json!(["owner:carol@example.com"])),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (_, me) = call(&m, Method::GET, "/api/v1/me", &carol, None).await;
    assert_eq!(me["grants"][0]["role"], "viewer", "{me}");
    assert_eq!(me["grants"][0]["project"]["name"], "web", "{me}");
    assert_eq!(me["grants"][0]["path"], w.project().as_str(), "{me}");

    // dave develops in web through his group; a developer may not change the project.
    let dave = idp.token("dave@example.com", &["web-devs"], json!({}));
    assert_eq!(get_status(&m, &w.project(), &dave).await, StatusCode::OK);
    let (s, _) = call(
        &m,
        Method::PUT,
        &format!("{}/access", w.project()),
        &dave,
        Some(json!(["dave@example.com"])),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Platform roles come from configured groups only; a token's own `roles` claim from an
    // identity provider grants nothing.
    let eve = idp.token("eve@example.com", &["platform-admins"], json!({}));
    assert_eq!(
        get_status(&m, "/api/v1/clusters", &eve).await,
        StatusCode::OK
    );
    let forger = idp.token(
        "forger@example.com",
        &[],
        json!({"roles": ["admin"], "tenants": [w.other]}),
    );
    assert_eq!(
        get_status(&m, "/api/v1/clusters", &forger).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get_status(&m, &w.tenant(&w.other), &forger).await,
        StatusCode::NOT_FOUND
    );

    // Taking alice out of the owners takes effect on her next request, same token.
    let (s, body) = call(
        &m,
        Method::PUT,
        &format!("{}/owners", w.tenant(&w.acme)),
        &m.admin,
        Some(json!(["group:acme-admins"])),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(
        get_status(&m, &w.tenant(&w.acme), &alice).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get_status(&m, &w.tenant(&w.acme), &bob).await,
        StatusCode::OK
    );
    // And taking carol out of the project's access.
    let (s, body) = call(
        &m,
        Method::PUT,
        &format!("{}/access", w.project()),
        &m.admin,
        Some(json!(["developer:group:web-devs"])),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(
        get_status(&m, &w.project(), &carol).await,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn bad_tokens_are_refused_with_a_reason_and_rotated_keys_are_fetched() {
    let idp = Idp::start().await;
    let m = manager(vec![issuer(&idp.url)]).await;
    let w = world(&m).await;
    let reason = |body: &Value| body["message"].as_str().unwrap_or_default().to_string();

    let alice = idp.token("alice@example.com", &[], json!({}));
    assert_eq!(
        get_status(&m, &w.tenant(&w.acme), &alice).await,
        StatusCode::OK
    );

    let cases: Vec<(String, &str)> = vec![
        (
            idp.token(
                "alice@example.com",
                &[],
                json!({"iss": "https://evil.example.com"}),
            ),
            "not one this manager trusts",
        ),
        (
            idp.token("alice@example.com", &[], json!({"aud": "someone-else"})),
            "audience",
        ),
        (
            idp.token("alice@example.com", &[], json!({"exp": 1_000_000})),
            "expired",
        ),
        (
            idp.token("alice@example.com", &[], json!({"email": ""})),
            "subject",
        ),
        (
            idp.token("alice@example.com", &[], json!({"groups": [1, 2]})),
            "groups",
        ),
    ];
    for (token, why) in &cases {
        let (s, body) = call(&m, Method::GET, &w.tenant(&w.acme), token, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{why}: {body}");
        assert_eq!(body["code"], "KN-401");
        assert!(reason(&body).contains(why), "{why}: {body}");
    }
    // A token signed with a shared secret under the provider's name: refused (identity
    // providers sign asymmetrically), whatever the secret.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"iss": idp.url, "aud": AUDIENCE, "email": "alice@example.com", "sub": "x", "exp": now + 60}),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    let (s, body) = call(&m, Method::GET, &w.tenant(&w.acme), &hs, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(reason(&body).contains("asymmetric"), "{body}");
    // An unsigned token (`alg: none`).
    let none = format!(
        "{}.{}.",
        base64_url(r#"{"alg":"none","typ":"JWT"}"#),
        base64_url(&json!({"iss": idp.url, "aud": AUDIENCE, "email": "alice@example.com", "sub": "x", "exp": now + 60}).to_string())
    );
    assert_eq!(
        get_status(&m, &w.tenant(&w.acme), &none).await,
        StatusCode::UNAUTHORIZED
    );
    // A token of a key the provider never published.
    let stranger = Idp {
        url: idp.url.clone(),
        provider: Provider::start().await.unwrap(),
    };
    let (s, body) = call(
        &m,
        Method::GET,
        &w.tenant(&w.acme),
        &stranger.token("alice@example.com", &[], json!({})),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(reason(&body).contains("no key"), "{body}");

    // The provider rotates: a token of the new key is accepted once the keys are fetched
    // again (at most every 10 s per issuer; the refusal above fetched them just now).
    idp.rotate();
    tokio::time::sleep(kubenova_manager::api::oidc::REFRESH_MIN_GAP).await;
    let rotated = idp.token("alice@example.com", &[], json!({}));
    let (s, body) = call(&m, Method::GET, &w.tenant(&w.acme), &rotated, None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn an_unreachable_issuer_fails_readiness_with_the_reason() {
    // Nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dead = issuer(&format!("http://127.0.0.1:{port}"));
    let m = manager(vec![dead]).await;
    // The first readiness check may race the background fetch: wait for its verdict.
    let mut body = Value::Null;
    for _ in 0..50 {
        let (s, b) = call(&m, Method::GET, "/api/v1/readyz", &m.admin, None).await;
        body = b;
        if s == StatusCode::SERVICE_UNAVAILABLE
            && body["message"].as_str().is_some_and(|m| m.contains("GET"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        body["details"]["failed"]
            .as_array()
            .is_some_and(|f| f.contains(&json!("identityProviders"))),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains(&format!("127.0.0.1:{port}")),
        "{body}"
    );
    // Minted tokens still work meanwhile.
    assert_eq!(
        get_status(&m, "/api/v1/clusters", &m.admin).await,
        StatusCode::OK
    );
}

fn base64_url(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_applies_at_once_on_every_replica() {
    let Some(url) = common::pg_url() else { return };
    let (db_url, db) = common::create_database(&url, "kn_identity").await;
    let result = tokio::spawn(two_replicas(db_url)).await;
    common::drop_database(&url, &db).await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn two_replicas(db_url: String) {
    const JWT: &str = "identity-replicas-secret-0123456789abcdef";
    const KEKS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let idp = Idp::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The configuration file as an operator writes it (YAML).
    let config = dir.path().join("oidc.yaml");
    std::fs::write(
        &config,
        format!(
            "issuers:\n  - issuer: {}\n    audience: {AUDIENCE}\n    subjectClaim: email\n",
            idp.url
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let env = [("KUBENOVA_OIDC_CONFIG", config.as_str())];
    let (d1, d2) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&d1).unwrap();
    std::fs::create_dir_all(&d2).unwrap();
    let replica_a = common::Manager::start(&db_url, &d1, JWT, KEKS, &env);
    let replica_b = common::Manager::start(&db_url, &d2, JWT, KEKS, &env);
    let (a, b) = (
        format!("http://{}", replica_a.addr),
        format!("http://{}", replica_b.addr),
    );
    let http = reqwest::Client::new();
    // Ready once each replica fetched the provider's keys.
    for base in [&a, &b] {
        let mut ready = false;
        for _ in 0..100 {
            let r = http
                .get(format!("{base}/api/v1/readyz"))
                .send()
                .await
                .unwrap();
            if r.status() == reqwest::StatusCode::OK {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready, "{base} never became ready");
    }
    let admin = kubenova_manager::api::auth::Authenticator::hs256(
        JWT.as_bytes(),
        "kubenova",
        "kubenova-api",
        Duration::from_secs(60),
        Duration::from_secs(3600),
    )
    .mint("root", &[Role::Admin], &[], &[], Duration::from_secs(600))
    .unwrap()
    .token;
    let send = |method: reqwest::Method, url: String, token: &str, body: Option<Value>| {
        common::send(&http, method, url, token, body)
    };
    let (s, c) = send(
        reqwest::Method::POST,
        format!("{a}/api/v1/clusters"),
        &admin,
        Some(json!({"name": "prod", "kubeconfig": KUBECONFIG})),
    )
    .await;
    assert_eq!(s, 201, "{c}");
    let tenants = format!("/api/v1/clusters/{}/tenants", c["id"].as_str().unwrap());
    let (s, t) = send(
        reqwest::Method::POST,
        format!("{a}{tenants}"),
        &admin,
        Some(json!({"name": "acme", "owners": ["alice@example.com"]})),
    )
    .await;
    assert_eq!(s, 201, "{t}");
    let tenant = format!("{tenants}/{}", t["id"].as_str().unwrap());

    let alice = idp.token("alice@example.com", &[], json!({}));
    let (s, body) = send(reqwest::Method::GET, format!("{b}{tenant}"), &alice, None).await;
    assert_eq!(s, 200, "alice owns acme on the other replica: {body}");
    let (s, body) = send(
        reqwest::Method::PUT,
        format!("{a}{tenant}/owners"),
        &admin,
        Some(json!(["bob@example.com"])),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    // At once, with the token she holds, on the replica that did not make the change.
    let (s, body) = send(reqwest::Method::GET, format!("{b}{tenant}"), &alice, None).await;
    assert_eq!(s, 404, "{body}");
    let bob = idp.token("bob@example.com", &[], json!({}));
    let (s, body) = send(reqwest::Method::GET, format!("{b}{tenant}"), &bob, None).await;
    assert_eq!(s, 200, "{body}");
}
