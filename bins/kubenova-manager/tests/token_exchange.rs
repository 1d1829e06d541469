//! RFC 8693 token exchange: a CI provider (the test kit's in-process OIDC provider, serving
//! discovery and a rotating JWKS over HTTP) signs job tokens the way GitHub Actions does;
//! the manager's real router on SQLite exchanges them under the trust policies of an
//! `--oidc-config` document for short-lived tokens scoped to a tenant or project. Every
//! refusal carries the OAuth error and the KN code and issues nothing; the CI provider's
//! tokens never authenticate directly; bad policies are refused when the document loads.
#![allow(clippy::unwrap_used)]

use axum::body::Body;
use axum::extract::ConnectInfo;
use http_body_util::BodyExt as _;
use hyper::{HeaderMap, Method, Request, StatusCode, header};
use kubenova_manager::api::authz::Role;
use kubenova_manager::api::config::ServerConfig;
use kubenova_manager::api::oidc::{Oidc, OidcDocument};
use kubenova_store::crypto::{Kek, Keyring};
use kubenova_store::{SqliteStore, Store};
use kubenova_testkit::oidc::Provider;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt as _;

mod common;

const SECRET: &[u8] = b"exchange-test-hs256-secret-0123456789abcdef";
/// The audience CI jobs request their tokens for.
const AUD: &str = "https://kubenova.test";
/// The people's identity provider's audience (sign-in).
const SIGNIN_AUD: &str = "kubenova-ui";
const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
const KUBECONFIG: &str = include_str!("fixtures/cluster.kubeconfig");

struct Env {
    app: axum::Router,
    admin: String,
    ci: Provider,
    people: Provider,
    w: World,
    _dir: tempfile::TempDir,
}

struct World {
    cluster: String,
    acme: String,
    other: String,
    doomed: String,
    web: String,
    api: String,
}

impl World {
    fn tenant(&self, t: &str) -> String {
        format!("/api/v1/clusters/{}/tenants/{t}", self.cluster)
    }
    fn project(&self, p: &str) -> String {
        format!("{}/projects/{p}", self.tenant(&self.acme))
    }
}

fn config() -> ServerConfig {
    ServerConfig {
        rate_limit_subject_rps: 0,
        rate_limit_ip_rps: 0,
        ..ServerConfig::default()
    }
}

fn authenticator(cfg: &ServerConfig) -> kubenova_manager::api::auth::Authenticator {
    kubenova_manager::api::auth::Authenticator::hs256(
        SECRET,
        &cfg.jwt_issuer,
        &cfg.jwt_audience,
        cfg.clock_skew,
        cfg.max_token_ttl,
    )
}

fn router(store: Arc<dyn Store>, doc: Option<&str>) -> axum::Router {
    let cfg = config();
    let mut auth = authenticator(&cfg);
    if let Some(doc) = doc {
        let oidc = Arc::new(Oidc::from_document(OidcDocument::parse(doc).unwrap()).unwrap());
        // As the manager does at start: keys fetched in the background.
        drop(oidc.spawn_refresher());
        auth = auth.with_identity_providers(oidc);
    }
    let state = kubenova_manager::assemble_state(
        store,
        kubenova_api::catalog::Catalog::builtin(),
        cfg,
        auth,
    );
    kubenova_manager::api::router(state)
}

/// The trust policies of these tests (ids of `w`).
fn document(ci: &str, people: &str, w: &World) -> String {
    format!(
        r#"
issuers:
  - issuer: {people}
    audience: {SIGNIN_AUD}
    subjectClaim: email
tokenExchange:
  issuers:
    - issuer: {ci}
  policies:
    - name: web-deploy
      issuer: {ci}
      audience: {AUD}
      conditions:
        repository: acme/web
        ref: refs/heads/main
      grant: {{tenant: "{acme}", project: "{web}", role: developer}}
    - name: acme-release
      issuer: {ci}
      audience: {AUD}
      conditions:
        sub: "repo:acme/web:ref:refs/tags/v*"
      grant: {{tenant: "{acme}", role: owner}}
      ttl: 5m
    - name: web-review
      issuer: {ci}
      audience: {AUD}
      conditions:
        repository: "acme/*"
        environment: review
      grant: {{tenant: "{acme}", project: "{web}", role: viewer}}
    - name: doomed-deploy
      issuer: {ci}
      audience: {AUD}
      conditions:
        repository: acme/doomed
      grant: {{tenant: "{doomed}", role: owner}}
"#,
        acme = w.acme,
        web = w.web,
        doomed = w.doomed,
    )
}

/// The manager on SQLite.
async fn start() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    start_on(&url, dir).await
}

/// The manager on a fresh Postgres database (its name, to drop it), or `None` when
/// Postgres is not configured (skipped loudly, or a failure under
/// `KUBENOVA_REQUIRE_POSTGRES=1`).
async fn start_postgres() -> Option<(Env, String, String)> {
    let admin = common::pg_url()?;
    let (url, db) = common::create_database(&admin, "kn_exchange").await;
    let env = start_on(&url, tempfile::tempdir().unwrap()).await;
    Some((env, admin, db))
}

async fn start_on(url: &str, dir: tempfile::TempDir) -> Env {
    let keyring = Keyring::new(vec![Kek::new("k", &[9; 32]).unwrap()]).unwrap();
    let store: Arc<dyn Store> = kubenova_store::connect(url, keyring).await.unwrap();
    kubenova_manager::api::kubeconfigs::load_or_create_signing_keys(store.as_ref())
        .await
        .unwrap();
    let admin = authenticator(&config())
        .mint("root", &[Role::Admin], &[], &[], Duration::from_secs(600))
        .unwrap()
        .token;
    // The tenants and projects the policies name exist first (a plain manager seeds them).
    let seed = router(Arc::clone(&store), None);
    let w = world(&seed, &admin).await;
    let ci = Provider::start().await.unwrap();
    let people = Provider::start().await.unwrap();
    let app = router(store, Some(&document(ci.issuer(), people.issuer(), &w)));
    Env {
        app,
        admin,
        ci,
        people,
        w,
        _dir: dir,
    }
}

async fn call(
    app: &axum::Router,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    common::call(app, method, path, token, body).await
}

async fn world(app: &axum::Router, admin: &str) -> World {
    let post = |path: String, body: Value| async move {
        let (s, b) = call(app, Method::POST, &path, admin, Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{path}: {b}");
        b["id"].as_str().unwrap().to_string()
    };
    let cluster = post(
        "/api/v1/clusters".into(),
        json!({"name": "prod", "kubeconfig": KUBECONFIG}),
    )
    .await;
    let tenants = format!("/api/v1/clusters/{cluster}/tenants");
    let acme = post(tenants.clone(), json!({"name": "acme"})).await;
    let other = post(tenants.clone(), json!({"name": "other"})).await;
    let doomed = post(tenants.clone(), json!({"name": "doomed"})).await;
    let web = post(format!("{tenants}/{acme}/projects"), json!({"name": "web"})).await;
    let api = post(format!("{tenants}/{acme}/projects"), json!({"name": "api"})).await;
    World {
        cluster,
        acme,
        other,
        doomed,
        web,
        api,
    }
}

/// A CI job's token, as GitHub Actions shapes it, with `extra` claims on top (they win; a
/// `null` removes the claim).
fn job_token(ci: &Provider, extra: Value) -> String {
    let mut claims = json!({
        "aud": AUD, "sub": "repo:acme/web:ref:refs/heads/main", "repository": "acme/web",
        "repository_owner": "acme", "ref": "refs/heads/main", "run_id": 42,
    });
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    ci.sign(claims)
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    text: String,
}

/// `POST /api/v1/oauth/token` with a form body (or `content_type` and a raw body).
async fn exchange_raw(app: &axum::Router, content_type: &str, body: String) -> Answer {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/oauth/token")
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40001))));
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).to_string();
    Answer {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

async fn exchange(app: &axum::Router, params: &[(&str, &str)]) -> Answer {
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        form.append_pair(k, v);
    }
    exchange_raw(app, "application/x-www-form-urlencoded", form.finish()).await
}

/// The standard request for `token`, naming `policy` when given.
async fn exchange_token(app: &axum::Router, token: &str, policy: Option<&str>) -> Answer {
    let mut p = vec![
        ("grant_type", GRANT),
        ("subject_token", token),
        ("subject_token_type", ID_TOKEN),
    ];
    if let Some(n) = policy {
        p.push(("audience", n));
    }
    exchange(app, &p).await
}

/// The audit events of token exchanges.
async fn exchange_audit(env: &Env) -> Vec<Value> {
    let (s, b) = call(
        &env.app,
        Method::GET,
        "/api/v1/audit?resourceKind=token&limit=500",
        &env.admin,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "token.exchange")
        .cloned()
        .collect()
}

fn issued(env_ok: &Answer) -> String {
    assert_eq!(env_ok.status, StatusCode::OK, "{}", env_ok.text);
    env_ok.body["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_ci_token_is_exchanged_for_a_token_that_works_only_within_the_policy_grant() {
    exchanges_within_the_grant(start().await).await;
}

#[tokio::test]
async fn a_ci_token_is_exchanged_on_postgres() {
    let Some((env, admin, db)) = start_postgres().await else {
        return;
    };
    exchanges_within_the_grant(env).await;
    common::drop_database(&admin, &db).await;
}

async fn exchanges_within_the_grant(env: Env) {
    let w = &env.w;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();

    // Exact conditions (repository, ref): developer of acme/web, for 15 minutes at most
    // and never past the job token's exp (5 minutes here).
    let job = job_token(&env.ci, json!({}));
    let a = exchange_token(&env.app, &job, None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(a.body["token_type"], "Bearer");
    assert_eq!(
        a.body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    let expires_in = a.body["expires_in"].as_i64().unwrap();
    assert!(
        expires_in > 0 && expires_in <= kubenova_testkit::oidc::DEFAULT_TOKEN_TTL_SECONDS,
        "{}",
        a.text
    );
    let dev = issued(&a);

    let (s, me) = call(&env.app, Method::GET, "/api/v1/me", &dev, None).await;
    assert_eq!(s, StatusCode::OK, "{me}");
    assert_eq!(
        me["subject"],
        "exchange:web-deploy:repo:acme/web:ref:refs/heads/main"
    );
    assert_eq!(me["roles"], json!(["projectDev"]));
    assert_eq!(me["projects"], json!([w.web]));
    // Within the grant: read the project, deploy an app in it.
    let (s, b) = call(&env.app, Method::GET, &w.project(&w.web), &dev, None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = call(
        &env.app,
        Method::POST,
        &format!("{}/apps", w.project(&w.web)),
        &dev,
        Some(json!({"name": "site", "image": "ghcr.io/acme/web:1.0.0"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    // Elsewhere: another project, another tenant, as if they did not exist; nothing of the
    // platform.
    for path in [
        w.project(&w.api),
        w.tenant(&w.other),
        format!("{}/projects", w.tenant(&w.other)),
    ] {
        let (s, b) = call(&env.app, Method::GET, &path, &dev, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {b}");
        assert_eq!(b["code"], "KN-404");
    }
    let (s, _) = call(&env.app, Method::GET, "/api/v1/clusters", &dev, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = call(
        &env.app,
        Method::POST,
        "/api/v1/tokens",
        &dev,
        Some(json!({"subject": "x", "roles": ["admin"]})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // The project itself (its access, delete) is not a developer's.
    let (s, _) = call(&env.app, Method::DELETE, &w.project(&w.web), &dev, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // A glob condition on sub (any v* tag): owner of the tenant, for the policy's 5m.
    let tag = job_token(
        &env.ci,
        json!({"sub": "repo:acme/web:ref:refs/tags/v1.2.0", "ref": "refs/tags/v1.2.0",
               "exp": now + 3600}),
    );
    let a = exchange_token(&env.app, &tag, None).await;
    let owner = issued(&a);
    let expires_in = a.body["expires_in"].as_i64().unwrap();
    assert!(expires_in > 240 && expires_in <= 300, "{}", a.text);
    let (s, b) = call(&env.app, Method::GET, &w.tenant(&w.acme), &owner, None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = call(
        &env.app,
        Method::POST,
        &format!("{}/projects", w.tenant(&w.acme)),
        &owner,
        Some(json!({"name": "docs"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, _) = call(&env.app, Method::GET, &w.tenant(&w.other), &owner, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // The pattern is anchored: a branch named like a tag does not match it.
    let fake = job_token(
        &env.ci,
        json!({"sub": "repo:acme/web:ref:refs/heads/refs/tags/v1"}),
    );
    let a = exchange_token(&env.app, &fake, Some("acme-release")).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);

    // Several policies accept a review job's token: it names one (audience or scope).
    let review = job_token(&env.ci, json!({"environment": "review"}));
    let a = exchange_token(&env.app, &review, Some("web-review")).await;
    let viewer = issued(&a);
    let (s, _) = call(&env.app, Method::GET, &w.project(&w.web), &viewer, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(
        &env.app,
        Method::POST,
        &format!("{}/apps", w.project(&w.web)),
        &viewer,
        Some(json!({"name": "nope", "image": "ghcr.io/acme/web:1.0.0"})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let a = exchange(
        &env.app,
        &[
            ("grant_type", GRANT),
            ("subject_token", &review),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ("scope", "web-deploy"),
            (
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:jwt",
            ),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        a.body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:jwt"
    );
    // The same parameters as a JSON object.
    let a = exchange_raw(
        &env.app,
        "application/json",
        json!({"grant_type": GRANT, "subject_token": job, "subject_token_type": ID_TOKEN})
            .to_string(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);

    // Every exchange is audited: policy, the CI subject, the issued jti and the grant; no
    // token.
    let events = exchange_audit(&env).await;
    let ok: Vec<&Value> = events
        .iter()
        .filter(|e| e["outcome"] == "success")
        .collect();
    assert_eq!(ok.len(), 5, "{events:?}");
    let first = ok[0];
    assert_eq!(
        first["actor"],
        "exchange:web-deploy:repo:acme/web:ref:refs/heads/main"
    );
    assert_eq!(first["details"]["policy"], "web-deploy");
    assert_eq!(first["details"]["issuer"], env.ci.issuer());
    assert_eq!(
        first["details"]["subject"],
        "repo:acme/web:ref:refs/heads/main"
    );
    assert_eq!(first["details"]["grant"]["role"], "developer");
    assert_eq!(first["details"]["grant"]["project"], w.web.as_str());
    assert_eq!(first["resourceId"], first["details"]["jti"]);
    let all = serde_json::to_string(&events).unwrap();
    for t in [&job, &tag, &review, &dev, &owner, &viewer] {
        assert!(!all.contains(t.as_str()), "a token in the audit log");
    }
}

/// A refusal case: its name, the parameters, the status, the OAuth error, the KN code and
/// words of the message.
type Case = (
    &'static str,
    Vec<(String, String)>,
    StatusCode,
    &'static str,
    &'static str,
    &'static str,
);

#[tokio::test]
async fn refusals_carry_the_oauth_error_and_the_kn_code_and_issue_nothing() {
    refusals(start().await).await;
}

#[tokio::test]
async fn refusals_on_postgres() {
    let Some((env, admin, db)) = start_postgres().await else {
        return;
    };
    refusals(env).await;
    common::drop_database(&admin, &db).await;
}

async fn refusals(env: Env) {
    let w = &env.w;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let good = job_token(&env.ci, json!({}));
    // Warm the keys (the first exchange may race the background fetch).
    issued(&exchange_token(&env.app, &good, None).await);
    let before = exchange_audit(&env).await;

    // A stranger: another provider, same iss (a key the CI provider never published).
    let stranger = Provider::start().await.unwrap();
    let forged = stranger.sign(json!({
        "iss": env.ci.issuer(), "aud": AUD, "sub": "repo:acme/web:ref:refs/heads/main",
        "repository": "acme/web", "ref": "refs/heads/main",
    }));
    let unknown_issuer = stranger.sign(json!({
        "aud": AUD, "sub": "repo:acme/web:ref:refs/heads/main",
        "repository": "acme/web", "ref": "refs/heads/main",
    }));
    let std_req = |token: String| {
        vec![
            ("grant_type".to_string(), GRANT.to_string()),
            ("subject_token".to_string(), token),
            ("subject_token_type".to_string(), ID_TOKEN.to_string()),
        ]
    };
    let with = |mut p: Vec<(String, String)>, k: &str, v: &str| {
        p.retain(|(x, _)| x != k);
        p.push((k.into(), v.into()));
        p
    };
    // (case, parameters, status, OAuth error, KN code, words in the message)
    let cases: Vec<Case> = vec![
        (
            "wrong audience",
            std_req(job_token(&env.ci, json!({"aud": "sts.amazonaws.com"}))),
            StatusCode::UNAUTHORIZED,
            "invalid_grant",
            "KN-401",
            "audience",
        ),
        (
            "expired",
            std_req(job_token(
                &env.ci,
                json!({"exp": now - 600, "iat": now - 900}),
            )),
            StatusCode::UNAUTHORIZED,
            "invalid_grant",
            "KN-401",
            "expired",
        ),
        (
            "unknown issuer",
            std_req(unknown_issuer),
            StatusCode::UNAUTHORIZED,
            "invalid_grant",
            "KN-401",
            "not trusted for token exchange",
        ),
        (
            "forged signature",
            std_req(forged),
            StatusCode::UNAUTHORIZED,
            "invalid_grant",
            "KN-401",
            "no key",
        ),
        (
            "not a JWT",
            std_req("not-a-jwt".into()),
            StatusCode::UNAUTHORIZED,
            "invalid_grant",
            "KN-401",
            "not a well-formed JWT",
        ),
        (
            "a condition fails",
            std_req(job_token(
                &env.ci,
                json!({"ref": "refs/heads/feature", "sub": "repo:acme/web:ref:refs/heads/feature"}),
            )),
            StatusCode::FORBIDDEN,
            "invalid_grant",
            "KN-403",
            "no token exchange policy accepts this token",
        ),
        (
            "a condition's claim is absent",
            std_req(job_token(&env.ci, json!({"repository": null}))),
            StatusCode::FORBIDDEN,
            "invalid_grant",
            "KN-403",
            "no token exchange policy accepts",
        ),
        (
            "an unknown policy named",
            with(std_req(good.clone()), "audience", "no-such-policy"),
            StatusCode::FORBIDDEN,
            "invalid_target",
            "KN-403",
            "no-such-policy",
        ),
        (
            "a policy named that does not accept the token",
            with(std_req(good.clone()), "audience", "web-review"),
            StatusCode::FORBIDDEN,
            "invalid_target",
            "KN-403",
            "web-review",
        ),
        (
            "ambiguous",
            std_req(job_token(&env.ci, json!({"environment": "review"}))),
            StatusCode::BAD_REQUEST,
            "invalid_target",
            "KN-400",
            "web-deploy, web-review",
        ),
        (
            "bad grant_type",
            with(std_req(good.clone()), "grant_type", "client_credentials"),
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "KN-400",
            "grant_type",
        ),
        (
            "bad subject_token_type",
            with(
                std_req(good.clone()),
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "KN-400",
            "subject_token_type",
        ),
        (
            "no subject_token",
            vec![
                ("grant_type".into(), GRANT.into()),
                ("subject_token_type".into(), ID_TOKEN.into()),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "KN-400",
            "subject_token is required",
        ),
        (
            "a parameter twice",
            {
                let mut p = std_req(good.clone());
                p.push(("subject_token".into(), good.clone()));
                p
            },
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "KN-400",
            "more than once",
        ),
        (
            "bad requested_token_type",
            with(
                std_req(good.clone()),
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:refresh_token",
            ),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "KN-400",
            "requested_token_type",
        ),
        (
            "delegation",
            with(std_req(good.clone()), "actor_token", &good),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "KN-400",
            "actor_token",
        ),
        (
            "a subject_token over 16 KiB",
            std_req("a".repeat(17 * 1024)),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "KN-400",
            "larger than 16384 bytes",
        ),
    ];
    for (case, params, status, error, code, words) in &cases {
        let p: Vec<(&str, &str)> = params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let a = exchange(&env.app, &p).await;
        assert_eq!(a.status, *status, "{case}: {}", a.text);
        assert_eq!(a.body["error"], *error, "{case}: {}", a.text);
        assert_eq!(a.body["code"], *code, "{case}: {}", a.text);
        assert_eq!(a.body["message"], a.body["error_description"], "{case}");
        assert!(
            a.body["message"].as_str().unwrap().contains(words),
            "{case}: {}",
            a.text
        );
        assert!(a.body.get("access_token").is_none(), "{case}");
        assert_eq!(a.headers[header::CACHE_CONTROL], "no-store", "{case}");
        for (k, v) in params {
            if k == "subject_token" && v.len() > 20 {
                assert!(!a.text.contains(v.as_str()), "{case}: the token is echoed");
            }
        }
    }
    // Not form-encoded.
    let a = exchange_raw(&env.app, "text/plain", format!("subject_token={good}")).await;
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", a.text);
    assert_eq!(a.body["error"], "invalid_request");
    assert_eq!(a.body["code"], "KN-415");
    // A body over the limit.
    let a = exchange_raw(
        &env.app,
        "application/x-www-form-urlencoded",
        format!("subject_token={}", "a".repeat(40 * 1024)),
    )
    .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.text);
    assert_eq!(a.body["code"], "KN-413");

    // The tenant a policy grants is deleted: invalid_target, KN-404.
    let (s, b) = call(
        &env.app,
        Method::DELETE,
        &w.tenant(&w.doomed),
        &env.admin,
        None,
    )
    .await;
    assert!(s.is_success(), "{b}");
    let doomed_job = job_token(
        &env.ci,
        json!({"repository": "acme/doomed", "sub": "repo:acme/doomed:ref:refs/heads/main"}),
    );
    let a = exchange_token(&env.app, &doomed_job, None).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    assert_eq!(a.body["error"], "invalid_target");
    assert_eq!(a.body["code"], "KN-404");
    assert!(a.text.contains(&w.doomed), "{}", a.text);

    // Nothing was issued; refusals after the signature verified are audited (with the CI
    // subject and why), those before are not.
    let after = exchange_audit(&env).await;
    let successes = |v: &[Value]| v.iter().filter(|e| e["outcome"] == "success").count();
    assert_eq!(successes(&after), successes(&before));
    let denied: Vec<&Value> = after.iter().filter(|e| e["outcome"] == "denied").collect();
    let reasons: Vec<&str> = denied
        .iter()
        .map(|e| e["details"]["reason"].as_str().unwrap())
        .collect();
    for words in [
        "audience",
        "expired",
        "no token exchange policy accepts this token",
        "web-deploy, web-review",
        "no longer exists",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(words)),
            "{words}: {reasons:?}"
        );
    }
    for words in ["not trusted", "no key", "well-formed", "grant_type"] {
        assert!(
            !reasons.iter().any(|r| r.contains(words)),
            "{words}: {reasons:?}"
        );
    }
    let failed = denied
        .iter()
        .find(|e| {
            e["details"]["reason"]
                .as_str()
                .unwrap()
                .contains("no token exchange policy accepts this token")
                && e["details"]["subject"] == "repo:acme/web:ref:refs/heads/feature"
        })
        .expect("the refusal names the CI subject");
    assert!(
        failed["details"]["mismatches"]
            .as_array()
            .unwrap()
            .contains(&json!({"policy": "web-deploy", "claims": ["ref"]})),
        "{failed}"
    );
    let gone = denied
        .iter()
        .find(|e| e["details"]["policy"] == "doomed-deploy")
        .unwrap();
    assert_eq!(
        gone["actor"],
        "exchange:doomed-deploy:repo:acme/doomed:ref:refs/heads/main"
    );
    let all = serde_json::to_string(&after).unwrap();
    assert!(!all.contains(&good) && !all.contains(&doomed_job));
}

#[tokio::test]
async fn ci_tokens_never_authenticate_directly() {
    let env = start().await;
    let job = job_token(&env.ci, json!({}));
    // Exchangeable (keys fetched), but never a bearer token: the CI provider is not an
    // identity provider people sign in with.
    issued(&exchange_token(&env.app, &job, None).await);
    for token in [
        job.clone(),
        job_token(
            &env.ci,
            json!({"aud": SIGNIN_AUD, "email": "alice@example.com"}),
        ),
    ] {
        let (s, b) = call(&env.app, Method::GET, "/api/v1/me", &token, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
        assert_eq!(b["code"], "KN-401");
        assert!(
            b["message"]
                .as_str()
                .unwrap()
                .contains("not one this manager trusts"),
            "{b}"
        );
    }
    // People's tokens still sign in, and are not exchangeable.
    let alice = env
        .people
        .sign(json!({"aud": SIGNIN_AUD, "sub": "a", "email": "alice@example.com"}));
    let mut ok = false;
    for _ in 0..50 {
        let (s, _) = call(&env.app, Method::GET, "/api/v1/me", &alice, None).await;
        if s == StatusCode::OK {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the people's provider signs in");
    let a = exchange_token(&env.app, &alice, None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text);
    assert_eq!(a.body["error"], "invalid_grant");
}

#[tokio::test]
async fn rotated_keys_at_the_ci_provider_are_fetched() {
    let env = start().await;
    issued(&exchange_token(&env.app, &job_token(&env.ci, json!({})), None).await);
    // The provider rotates: a token of the new key is exchanged once the keys are fetched
    // again (at most every 10 s per provider; the exchange above may just have fetched).
    env.ci.rotate();
    tokio::time::sleep(kubenova_manager::api::oidc::REFRESH_MIN_GAP).await;
    let rotated = job_token(&env.ci, json!({}));
    issued(&exchange_token(&env.app, &rotated, None).await);
}

#[tokio::test]
async fn without_token_exchange_configured_the_grant_is_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    let keyring = Keyring::new(vec![Kek::new("k", &[9; 32]).unwrap()]).unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::connect(&url, keyring).await.unwrap());
    let app = router(store, None);
    let a = exchange(
        &app,
        &[
            ("grant_type", GRANT),
            ("subject_token", "x.y.z"),
            ("subject_token_type", ID_TOKEN),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert_eq!(a.body["error"], "unsupported_grant_type");
    assert!(a.text.contains("not configured"), "{}", a.text);
}

#[tokio::test]
async fn an_unreachable_ci_provider_fails_readiness_with_the_reason() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dead = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    let keyring = Keyring::new(vec![Kek::new("k", &[9; 32]).unwrap()]).unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::connect(&url, keyring).await.unwrap());
    let doc = format!(
        "tokenExchange:\n  issuers: [{{issuer: \"{dead}\"}}]\n  policies:\n    - {{name: p, issuer: \"{dead}\", audience: a, conditions: {{repository: acme/web}}, grant: {{tenant: \"{}\", role: owner}}}}\n",
        uuid::Uuid::new_v4()
    );
    let app = router(store, Some(&doc));
    let mut body = Value::Null;
    for _ in 0..50 {
        let (s, b) = call(&app, Method::GET, "/api/v1/readyz", "", None).await;
        body = b;
        if s == StatusCode::SERVICE_UNAVAILABLE
            && body["message"].as_str().is_some_and(|m| m.contains("GET"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("127.0.0.1:{port}")),
        "{body}"
    );
}

#[test]
fn bad_policies_are_refused_when_the_document_loads() {
    let ci = "https://token.actions.githubusercontent.com";
    let t = "22222222-2222-2222-2222-222222222222";
    let p = "33333333-3333-3333-3333-333333333333";
    let doc = |policy: &str| {
        format!(
            "issuers: [{{issuer: \"https://idp.example.com\", audience: kubenova}}]\ntokenExchange:\n  issuers: [{{issuer: \"{ci}\"}}]\n  policies:\n    - {policy}\n"
        )
    };
    let ok = format!(
        "{{name: deploy, issuer: \"{ci}\", audience: kn, conditions: {{repository: acme/web}}, grant: {{tenant: \"{t}\", project: \"{p}\", role: developer}}, ttl: 30m}}"
    );
    OidcDocument::parse(&doc(&ok)).unwrap();
    // Token exchange alone (no people's identity provider) is a valid document.
    OidcDocument::parse(&format!(
        "tokenExchange:\n  issuers: [{{issuer: \"{ci}\"}}]\n  policies:\n    - {ok}\n"
    ))
    .unwrap();
    let cases = [
        (
            ok.replace("conditions: {repository: acme/web}, ", ""),
            "policies[0] (\"deploy\").conditions is empty",
        ),
        (
            ok.replace("repository: acme/web", "sub: \"*\""),
            "matches every token",
        ),
        (
            ok.replace("repository: acme/web", "aud: kn"),
            "conditions.aud",
        ),
        (
            ok.replace("30m", "2h"),
            "(\"deploy\").ttl \"2h\" must be between 1m and 1h",
        ),
        (ok.replace("30m", "soon"), "(\"deploy\").ttl"),
        (
            ok.replace(
                &format!("issuer: \"{ci}\""),
                "issuer: \"https://gitlab.example.com\"",
            ),
            "(\"deploy\").issuer \"https://gitlab.example.com\" is not listed under tokenExchange.issuers",
        ),
        (
            ok.replace("role: developer", "role: admin"),
            "(\"deploy\").grant.role \"admin\" is not allowed",
        ),
        (
            ok.replace("role: developer", "role: ops"),
            "never a platform role",
        ),
        (
            ok.replace("role: developer", "role: owner"),
            "(\"deploy\").grant.role owner of a project",
        ),
        (
            ok.replace(&format!(", project: \"{p}\""), ""),
            "(\"deploy\").grant.role developer needs grant.project",
        ),
        (
            ok.replace(&format!("tenant: \"{t}\""), "tenant: acme"),
            "(\"deploy\").grant.tenant \"acme\" is not a tenant id",
        ),
        (
            ok.replace(
                &format!(", grant: {{tenant: \"{t}\", project: \"{p}\", role: developer}}"),
                "",
            ),
            "(\"deploy\").grant is missing",
        ),
        (
            ok.replace("audience: kn", "audience: \"\""),
            "(\"deploy\").audience",
        ),
        (
            ok.replace("name: deploy", "name: Deploy_1"),
            "policies[0] (\"Deploy_1\").name",
        ),
    ];
    for (policy, words) in &cases {
        let err = OidcDocument::parse(&doc(policy)).unwrap_err();
        assert!(err.contains(words), "{policy}\n=> {err}");
    }
    // A sign-in issuer's own audience cannot be a policy's: a token for the policy would
    // also sign in directly.
    let both = format!(
        "issuers: [{{issuer: \"{ci}\", audience: kubenova}}]\ntokenExchange:\n  issuers: [{{issuer: \"{ci}\"}}]\n  policies:\n    - {}\n",
        ok.replace("audience: kn", "audience: kubenova")
    );
    let err = OidcDocument::parse(&both).unwrap_err();
    assert!(
        err.contains("also the audience people sign in with"),
        "{err}"
    );
    // Two policies of one name; no policies; no CI provider.
    let twice = format!(
        "tokenExchange:\n  issuers: [{{issuer: \"{ci}\"}}]\n  policies:\n    - {ok}\n    - {ok}\n"
    );
    assert!(
        OidcDocument::parse(&twice)
            .unwrap_err()
            .contains("used twice")
    );
    let none = format!("tokenExchange:\n  issuers: [{{issuer: \"{ci}\"}}]\n  policies: []\n");
    assert!(
        OidcDocument::parse(&none)
            .unwrap_err()
            .contains("list at least one policy")
    );
    // Without tokenExchange, a document still needs an identity provider.
    assert!(
        OidcDocument::parse("platformRoles: {admin: [x]}\n")
            .unwrap_err()
            .contains("list at least one issuer")
    );
}
