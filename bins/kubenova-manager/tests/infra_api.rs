//! In-process tests of the manager's infrastructure: ops endpoints, authentication, the
//! KN envelope on every error, request ids, limits, rate limits, idempotency, audit of
//! failures, metrics, tokens and the OpenAPI document.
#![allow(clippy::unwrap_used, missing_docs)]

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt as _;
use kubenova_manager::api::{self, AppState, authz::Role, config::ServerConfig};
use kubenova_store::crypto::{Kek, Keyring};
use kubenova_store::{AuditQuery, Store};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt as _;

const SECRET: &[u8] = b"infra-test-secret-infra-test-secret!";

struct App {
    router: Router,
    state: AppState,
    _dir: tempfile::TempDir,
}

async fn store(dir: &std::path::Path) -> Arc<dyn Store> {
    let url = format!("sqlite://{}", dir.join("t.db").display());
    let keys = Keyring::new(vec![Kek::new("k1", &[7u8; 32]).unwrap()]).unwrap();
    kubenova_store::connect(&url, keys).await.unwrap()
}

async fn app_with(cfg: ServerConfig) -> App {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let state = kubenova_manager::test_state(store, cfg, SECRET);
    App {
        router: api::router(state.clone()),
        state,
        _dir: dir,
    }
}

fn quiet() -> ServerConfig {
    // Generous limits so only the rate-limit tests hit them.
    ServerConfig {
        rate_limit_ip_rps: 10_000,
        rate_limit_ip_burst: 10_000,
        rate_limit_subject_rps: 10_000,
        rate_limit_subject_burst: 10_000,
        ..Default::default()
    }
}

async fn app() -> App {
    app_with(quiet()).await
}

impl App {
    fn token(&self, roles: &[Role]) -> String {
        self.state
            .auth
            .mint("tester", roles, &[], &[], Duration::from_secs(600))
            .unwrap()
            .token
    }

    fn admin(&self) -> String {
        self.token(&[Role::Admin])
    }

    async fn send(
        &self,
        req: Request<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, Value, Vec<u8>) {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, headers, v, bytes)
    }

    async fn get(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, axum::http::HeaderMap, Value, Vec<u8>) {
        let mut b = Request::get(path);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        self.send(b.body(Body::empty()).unwrap()).await
    }

    async fn post_json(
        &self,
        path: &str,
        token: &str,
        body: &Value,
        idem: Option<&str>,
    ) -> (StatusCode, axum::http::HeaderMap, Value, Vec<u8>) {
        let mut b = Request::post(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(k) = idem {
            b = b.header("idempotency-key", k);
        }
        self.send(
            b.body(Body::from(serde_json::to_vec(body).unwrap()))
                .unwrap(),
        )
        .await
    }
}

fn assert_envelope(v: &Value, code: &str) {
    assert_eq!(v["code"], code, "body: {v}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "body: {v}"
    );
    assert!(
        v["requestId"].as_str().is_some_and(|m| !m.is_empty()),
        "body: {v}"
    );
}

fn forge(claims: Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[tokio::test]
async fn healthz_readyz_version_are_public() {
    let app = app().await;
    let (s, h, v, _) = app.get("/api/v1/healthz", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v, json!({"status": "ok"}));
    assert!(h.contains_key("x-request-id"));

    // The kubeconfig signing keys are a dependency: the binary creates them at start.
    let (s, _, v, _) = app.get("/api/v1/readyz", None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["details"]["dependency"], "signingKeys", "{v}");
    kubenova_manager::api::kubeconfigs::load_or_create_signing_keys(app.state.store.as_ref())
        .await
        .unwrap();
    let (s, _, v, _) = app.get("/api/v1/readyz", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "ready");
    assert_eq!(v["dependencies"]["store"]["status"], "ok");
    assert_eq!(v["dependencies"]["store"]["backend"], "sqlite");
    assert_eq!(v["dependencies"]["signingKeys"]["status"], "ok");
    // No change listener on SQLite.
    assert!(v["dependencies"].get("changeListener").is_none(), "{v}");

    let (s, _, v, _) = app.get("/api/v1/version", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["apiVersions"], json!(["v1"]));
}

#[tokio::test]
async fn features_need_a_token_and_report_real_flags() {
    let app = app().await;
    let (s, _, v, _) = app.get("/api/v1/features", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_envelope(&v, "KN-401");
    let (s, _, v, _) = app
        .get("/api/v1/features", Some(&app.token(&[Role::ReadOnly])))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["auth"], true);
    assert_eq!(v["authMode"], "hs256");
    assert_eq!(v["oidc"], false);
    assert_eq!(v["store"], "sqlite");
    assert_eq!(v["defaultPlan"], "baseline");
    assert_eq!(v["rateLimits"]["perSubject"]["perSecond"], 10_000);
}

#[tokio::test]
async fn bad_tokens_get_kn_401_with_a_clear_message() {
    let app = app().await;
    let base = || json!({"sub": "eve", "roles": ["admin"], "iss": "kubenova", "aud": "kubenova-api", "exp": now() + 600});
    let mut expired = base();
    expired["exp"] = json!(now() - 3600);
    let mut wrong_aud = base();
    wrong_aud["aud"] = json!("someone-else");
    let mut wrong_iss = base();
    wrong_iss["iss"] = json!("evil");
    let mut future = base();
    future["nbf"] = json!(now() + 3600);
    let mut unknown_role = base();
    unknown_role["roles"] = json!(["root"]);
    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "missing bearer token"),
        (Some("not-a-jwt".into()), "not a well-formed JWT"),
        (Some(forge(expired, SECRET)), "expired"),
        (
            Some(forge(base(), b"forged-secret-forged-secret-forged!!")),
            "signature",
        ),
        (Some(forge(wrong_aud, SECRET)), "audience"),
        (Some(forge(wrong_iss, SECRET)), "issuer"),
        (Some(forge(future, SECRET)), "not valid yet"),
        (Some(forge(unknown_role, SECRET)), "unknown role"),
    ];
    for (tok, needle) in cases {
        let (s, h, v, _) = app.get("/api/v1/me", tok.as_deref()).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{needle}: {v}");
        assert_envelope(&v, "KN-401");
        assert!(
            v["message"].as_str().unwrap().contains(needle),
            "{needle}: {v}"
        );
        assert!(h.get(header::WWW_AUTHENTICATE).is_some());
    }
    // Within the clock skew an expired token still passes.
    let mut skewed = base();
    skewed["exp"] = json!(now() - 10);
    let (s, _, v, _) = app.get("/api/v1/me", Some(&forge(skewed, SECRET))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["subject"], "eve");
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let app = app().await;
    let (_, h, _, _) = app
        .send(
            Request::get("/api/v1/healthz")
                .header("x-request-id", "abc-123")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(h["x-request-id"], "abc-123");
    let (_, h, v, _) = app
        .send(
            Request::get("/api/v1/nope")
                .header("x-request-id", "bad id with spaces")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    let id = h["x-request-id"].to_str().unwrap();
    assert_ne!(id, "bad id with spaces");
    assert!(uuid::Uuid::parse_str(id).is_ok());
    assert_eq!(v["requestId"], id);
}

#[tokio::test]
async fn every_error_is_a_kn_envelope() {
    let app = app_with(ServerConfig {
        body_limit: 1024,
        ..quiet()
    })
    .await;
    let admin = app.admin();

    let (s, _, v, _) = app.get("/api/v1/does-not-exist", Some(&admin)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_envelope(&v, "KN-404");
    let (s, _, v, _) = app.get("/nothing/here", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_envelope(&v, "KN-404");

    let (s, h, v, _) = app
        .send(
            Request::delete("/api/v1/healthz")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_envelope(&v, "KN-405");
    assert!(h[header::ALLOW].to_str().unwrap().contains("GET"));

    let big = json!({"stream": "x".repeat(4096), "component": "c", "status": "ok"});
    let (s, _, v, _) = app
        .post_json("/api/v1/telemetry/events", &admin, &big, None)
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_envelope(&v, "KN-413");
    // Also when the body is read by the idempotency layer.
    let (s, _, v, _) = app
        .post_json("/api/v1/telemetry/events", &admin, &big, Some("k-big"))
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_envelope(&v, "KN-413");

    let (s, _, v, _) = app
        .send(
            Request::post("/api/v1/telemetry/events")
                .header(header::AUTHORIZATION, format!("Bearer {admin}"))
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from("hello"))
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_envelope(&v, "KN-415");

    let (s, _, v, _) = app
        .send(
            Request::post("/api/v1/telemetry/events")
                .header(header::AUTHORIZATION, format!("Bearer {admin}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{\"stream\":"))
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_envelope(&v, "KN-400");

    let (s, _, v, _) = app
        .post_json(
            "/api/v1/telemetry/events",
            &admin,
            &json!({"stream": "a", "component": "b", "status": "ok", "extra": 1}),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_envelope(&v, "KN-422");

    let (s, _, v, _) = app
        .post_json(
            "/api/v1/telemetry/events",
            &admin,
            &json!({"stream": "", "component": "B!", "status": "ok"}),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        v["details"]["violations"].as_array().unwrap().len(),
        2,
        "{v}"
    );
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let app = app_with(ServerConfig {
        rate_limit_subject_rps: 1,
        rate_limit_subject_burst: 2,
        ..quiet()
    })
    .await;
    let t = app.admin();
    assert_eq!(app.get("/api/v1/me", Some(&t)).await.0, StatusCode::OK);
    assert_eq!(app.get("/api/v1/me", Some(&t)).await.0, StatusCode::OK);
    let (s, h, v, _) = app.get("/api/v1/me", Some(&t)).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_envelope(&v, "KN-429");
    assert!(
        h[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    // Another subject has its own bucket; public endpoints are never limited.
    let other = app
        .state
        .auth
        .mint(
            "other",
            &[Role::ReadOnly],
            &[],
            &[],
            Duration::from_secs(60),
        )
        .unwrap()
        .token;
    assert_eq!(app.get("/api/v1/me", Some(&other)).await.0, StatusCode::OK);
    for _ in 0..5 {
        assert_eq!(app.get("/api/v1/healthz", None).await.0, StatusCode::OK);
    }
    let (_, _, _, metrics) = app.get("/metrics", None).await;
    let text = String::from_utf8(metrics).unwrap();
    assert!(
        text.contains("kubenova_rate_limited_total{scope=\"subject\"} 1"),
        "{text}"
    );

    let app = app_with(ServerConfig {
        rate_limit_ip_rps: 1,
        rate_limit_ip_burst: 1,
        ..quiet()
    })
    .await;
    let t = app.admin();
    assert_eq!(app.get("/api/v1/me", Some(&t)).await.0, StatusCode::OK);
    let (s, h, v, _) = app.get("/api/v1/me", None).await;
    assert_eq!(
        s,
        StatusCode::TOO_MANY_REQUESTS,
        "per-IP limit applies before authentication: {v}"
    );
    assert!(h.contains_key(header::RETRY_AFTER));
}

#[tokio::test]
async fn idempotency_replays_and_rejects_mismatch() {
    let app = app().await;
    let t = app.token(&[Role::Ops]);
    let body = json!({"stream": "component_install", "component": "cert-manager", "status": "error", "error": "exit status 1"});
    let (s1, h1, v1, _) = app
        .post_json("/api/v1/telemetry/events", &t, &body, Some("key-1"))
        .await;
    assert_eq!(s1, StatusCode::ACCEPTED, "{v1}");
    assert!(h1.get("idempotent-replayed").is_none());
    let (s2, h2, v2, _) = app
        .post_json("/api/v1/telemetry/events", &t, &body, Some("key-1"))
        .await;
    assert_eq!(s2, StatusCode::ACCEPTED);
    assert_eq!(v2, v1);
    assert_eq!(h2["idempotent-replayed"], "true");
    // Only one audit event for the two calls.
    let page = app
        .state
        .store
        .query_audit(&AuditQuery {
            resource_kind: Some("cluster".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page.items
            .iter()
            .filter(|e| e.action == "telemetry.event")
            .count(),
        1
    );

    let other = json!({"stream": "component_install", "component": "capsule", "status": "ok"});
    let (s, _, v, _) = app
        .post_json("/api/v1/telemetry/events", &t, &other, Some("key-1"))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_envelope(&v, "KN-422");
    assert_eq!(
        v["message"],
        "Idempotency-Key reused with a different request"
    );

    // Keys are per subject.
    let t2 = app
        .state
        .auth
        .mint(
            "someone-else",
            &[Role::Ops],
            &[],
            &[],
            Duration::from_secs(60),
        )
        .unwrap()
        .token;
    let (s, h, _, _) = app
        .post_json("/api/v1/telemetry/events", &t2, &other, Some("key-1"))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert!(h.get("idempotent-replayed").is_none());

    let long = "k".repeat(256);
    let (s, _, v, _) = app
        .post_json("/api/v1/telemetry/events", &t, &body, Some(&long))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_envelope(&v, "KN-422");
}

#[tokio::test]
async fn failed_and_denied_calls_are_audited() {
    let app = app().await;
    let ro = app.token(&[Role::ReadOnly]);
    let (s, _, v, _) = app
        .post_json(
            "/api/v1/tokens",
            &ro,
            &json!({"subject": "x", "roles": ["admin"]}),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_envelope(&v, "KN-403");
    let (s, _, _, _) = app
        .send(
            Request::post("/api/v1/tokens")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{}"))
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let admin = app.admin();
    let (s, _, _, _) = app
        .post_json("/api/v1/tokens", &admin, &json!({"subject": ""}), None)
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);

    let events = app
        .state
        .store
        .query_audit(&AuditQuery::default())
        .await
        .unwrap()
        .items;
    let find = |actor: &str, status: u16| {
        events
            .iter()
            .find(|e| e.actor == actor && e.http_status == Some(status))
            .unwrap_or_else(|| panic!("no audit event for {actor} {status}: {events:#?}"))
    };
    let denied = find("tester", 403);
    assert_eq!(denied.outcome, kubenova_api::model::AuditOutcome::Denied);
    assert_eq!(denied.action, "POST /api/v1/tokens");
    assert_eq!(denied.resource_kind, "token");
    assert_eq!(denied.roles, vec!["readOnly".to_string()]);
    assert!(!denied.request_id.is_empty());
    assert_eq!(denied.source_ip, "unknown");
    assert_eq!(
        find("anonymous", 401).outcome,
        kubenova_api::model::AuditOutcome::Denied
    );
    assert_eq!(
        find("tester", 422).outcome,
        kubenova_api::model::AuditOutcome::Failed
    );
}

#[tokio::test]
async fn tokens_are_admin_only_bounded_and_work() {
    let app = app_with(ServerConfig {
        max_token_ttl: Duration::from_secs(3600),
        ..quiet()
    })
    .await;
    let admin = app.admin();
    let tenant = uuid::Uuid::new_v4();
    let (s, h, v, _) = app
        .post_json(
            "/api/v1/tokens",
            &admin,
            &json!({"subject": "alice", "roles": ["tenantOwner"], "tenants": [tenant], "ttlMinutes": 30}),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(h[header::CACHE_CONTROL], "no-store");
    let token = v["token"].as_str().unwrap().to_string();
    let exp = time::OffsetDateTime::parse(
        v["expiresAt"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let left = (exp - time::OffsetDateTime::now_utc()).whole_minutes();
    assert!((28..=30).contains(&left), "{left}");

    let (s, _, me, _) = app.get("/api/v1/me", Some(&token)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        me,
        // The scope's tenant does not exist: nothing to list among the grants.
        json!({"subject": "alice", "roles": ["tenantOwner"], "tenants": [tenant], "projects": [], "grants": []})
    );

    // The audit event names the jti, never the token.
    let events = app
        .state
        .store
        .query_audit(&AuditQuery {
            resource_kind: Some("token".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .items;
    let ev = events.iter().find(|e| e.action == "token.create").unwrap();
    assert_eq!(ev.details.as_ref().unwrap()["subject"], "alice");
    assert!(!serde_json::to_string(&events).unwrap().contains(&token));

    // The minted tenantOwner may not mint.
    let (s, _, _, _) = app
        .post_json("/api/v1/tokens", &token, &json!({"subject": "bob"}), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // TTL over the maximum, unknown role.
    let (s, _, v, _) = app
        .post_json(
            "/api/v1/tokens",
            &admin,
            &json!({"subject": "bob", "ttlMinutes": 61}),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["details"]["violations"][0]["field"], "ttlMinutes", "{v}");
    let (s, _, v, _) = app
        .post_json(
            "/api/v1/tokens",
            &admin,
            &json!({"subject": "bob", "roles": ["root"]}),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_envelope(&v, "KN-422");
}

#[tokio::test]
async fn metrics_count_requests_by_route_template() {
    let app = app().await;
    let t = app.admin();
    app.get("/api/v1/me", Some(&t)).await;
    app.get("/api/v1/me", None).await;
    app.get("/api/v1/unknown", None).await;
    let (s, h, _, body) = app.get("/metrics", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(h[header::CONTENT_TYPE].to_str().unwrap().contains("text"));
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains(
            "kubenova_http_requests_total{method=\"GET\",route=\"/api/v1/me\",status=\"200\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "kubenova_http_requests_total{method=\"GET\",route=\"/api/v1/me\",status=\"401\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("route=\"unmatched\",status=\"404\""),
        "{text}"
    );
    assert!(
        text.contains("kubenova_http_request_duration_seconds_bucket"),
        "{text}"
    );
    // SQLite holds its file exclusively, so its record cache is on from the start; nothing
    // here reads a cluster, tenant or project, so nothing was answered from it yet.
    assert!(text.contains("kubenova_store_cache_enabled 1"), "{text}");
    assert!(text.contains("kubenova_store_cache_hits_total 0"), "{text}");
    // Every store call is timed, by operation: here the audit read.
    app.get("/api/v1/audit", Some(&t)).await;
    let (_, _, _, body) = app.get("/metrics", None).await;
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains(
            "kubenova_store_operation_duration_seconds_count{operation=\"query_audit\"} 1"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn openapi_and_docs_are_served() {
    let app = app().await;
    let (s, h, v, _) = app.get("/api/v1/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h[header::CONTENT_TYPE], "application/json");
    for p in [
        "/api/v1/healthz",
        "/api/v1/readyz",
        "/api/v1/version",
        "/api/v1/features",
        "/api/v1/telemetry/events",
        "/api/v1/tokens",
        "/api/v1/me",
    ] {
        assert!(
            v["paths"][p].is_object(),
            "{p} missing from the OpenAPI document"
        );
    }
    assert_eq!(
        v["paths"]["/api/v1/tokens"]["post"]["operationId"],
        "createToken"
    );
    let (s, h, _, body) = app.get("/api/v1/docs", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        h[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(String::from_utf8_lossy(&body).contains("KubeNova API"));
}

#[tokio::test]
async fn insecure_dev_mode_makes_everyone_admin_dev() {
    let app = app_with(ServerConfig {
        insecure_dev_no_auth: true,
        ..quiet()
    })
    .await;
    let (s, _, v, _) = app.get("/api/v1/me", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["subject"], "dev");
    assert_eq!(v["roles"], json!(["admin"]));
    let (_, _, v, _) = app.get("/api/v1/features", None).await;
    assert_eq!(v["auth"], false);
    assert_eq!(v["authMode"], "disabled");
}

#[tokio::test]
async fn bootstrap_admin_token_is_written_once_and_private() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let data = dir.path().join("data");
    let cfg = ServerConfig::default();
    let auth = api::auth::Authenticator::from_config(&cfg, &data).unwrap();
    let path = auth
        .ensure_bootstrap_admin(store.as_ref(), &data)
        .await
        .unwrap()
        .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(data.join("jwt.secret"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let token = std::fs::read_to_string(&path).unwrap();
    let p = auth.verify(token.trim()).unwrap();
    assert_eq!(p.roles, vec![Role::Admin]);
    // A restart reuses the secret (the token stays valid) and issues no second token.
    let auth2 = api::auth::Authenticator::from_config(&cfg, &data).unwrap();
    assert!(auth2.verify(token.trim()).is_ok());
    assert!(
        auth2
            .ensure_bootstrap_admin(store.as_ref(), &data)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn telemetry_checks_role_and_cluster() {
    let app = app().await;
    let dev = app.token(&[Role::ProjectDev]);
    let body = json!({"stream": "reconcile", "component": "capsule", "status": "ok"});
    let (s, _, v, _) = app
        .post_json("/api/v1/telemetry/events", &dev, &body, None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_envelope(&v, "KN-403");
    let mut b = body.clone();
    b["clusterId"] = json!(uuid::Uuid::new_v4());
    let (s, _, v, _) = app
        .post_json("/api/v1/telemetry/events", &app.admin(), &b, None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_envelope(&v, "KN-404");
}

#[tokio::test]
async fn method_matters_for_public_routes_too() {
    let app = app().await;
    let (s, _, v, _) = app
        .send(
            Request::builder()
                .method(Method::POST)
                .uri("/api/v1/version")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_envelope(&v, "KN-405");
}
