//! In-process tests (`oneshot` against `api::router`) of clusters, tenants, catalog,
//! usage ingestion and audit, on a fresh SQLite store per test.
#![allow(clippy::unwrap_used, missing_docs)]

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use base64::Engine as _;
use http_body_util::BodyExt;
use kubenova_api::ids::{ProjectId, TenantId};
use kubenova_api::model::{ObjectStatus, Project};
use kubenova_manager::api::AppState;
use kubenova_manager::api::authz::Role;
use kubenova_manager::api::config::ServerConfig;
use kubenova_store::crypto::{Kek, Keyring};
use kubenova_store::{AuditQuery, Store, WriteOptions};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

const SECRET: &[u8] = b"routes-tenants-test-secret-0123456789abcdef";

/// A registered cluster's kubeconfig (shared fixture; its token is a stand-in secret).
const KUBECONFIG: &str = include_str!("fixtures/cluster.kubeconfig");

struct App {
    state: AppState,
    router: axum::Router,
    _dir: tempfile::TempDir,
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
    fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_string()
    }
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
    #[track_caller]
    fn expect(&self, status: StatusCode) -> &Self {
        assert_eq!(self.status, status, "body: {}", self.text);
        self
    }
    #[track_caller]
    fn expect_kn(&self, status: StatusCode, code: &str) -> &Self {
        assert_eq!(self.status, status, "body: {}", self.text);
        assert_eq!(self.code(), code, "body: {}", self.text);
        self
    }
}

async fn app() -> App {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keyring::new(vec![Kek::new("k1", &[7u8; 32]).unwrap()]).unwrap();
    let store = kubenova_store::connect(
        &format!("sqlite://{}", dir.path().join("kn.db").display()),
        keys,
    )
    .await
    .unwrap();
    let cfg = ServerConfig {
        rate_limit_subject_rps: 100_000,
        rate_limit_subject_burst: 100_000,
        rate_limit_ip_rps: 100_000,
        rate_limit_ip_burst: 100_000,
        ..ServerConfig::default()
    };
    let state = kubenova_manager::test_state(store, cfg, SECRET);
    let router = kubenova_manager::api::router(state.clone());
    App {
        state,
        router,
        _dir: dir,
    }
}

impl App {
    fn store(&self) -> &Arc<dyn Store> {
        &self.state.store
    }

    fn token(
        &self,
        subject: &str,
        roles: &[Role],
        tenants: &[TenantId],
        projects: &[ProjectId],
    ) -> String {
        self.state
            .auth
            .mint(subject, roles, tenants, projects, Duration::from_secs(600))
            .unwrap()
            .token
    }

    fn admin(&self) -> String {
        self.token("admin", &[Role::Admin], &[], &[])
    }

    async fn send(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
        extra: &[(&str, &str)],
    ) -> Resp {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        let req = match body {
            Some(v) => b
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(v.to_string()))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Resp {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&self, uri: &str, token: &str) -> Resp {
        self.send(Method::GET, uri, Some(token), None, &[]).await
    }

    async fn post(&self, uri: &str, token: &str, body: Value) -> Resp {
        self.send(Method::POST, uri, Some(token), Some(body), &[])
            .await
    }

    async fn put(&self, uri: &str, token: &str, body: Value) -> Resp {
        self.send(Method::PUT, uri, Some(token), Some(body), &[])
            .await
    }

    async fn delete(&self, uri: &str, token: &str) -> Resp {
        self.send(Method::DELETE, uri, Some(token), None, &[]).await
    }

    async fn cluster(&self, name: &str) -> String {
        let r = self
            .post(
                "/api/v1/clusters",
                &self.admin(),
                json!({"name": name, "kubeconfig": KUBECONFIG}),
            )
            .await;
        r.expect(StatusCode::CREATED);
        r.json()["id"].as_str().unwrap().to_string()
    }

    async fn tenant(&self, cluster: &str, body: Value) -> Value {
        let r = self
            .post(
                &format!("/api/v1/clusters/{cluster}/tenants"),
                &self.admin(),
                body,
            )
            .await;
        r.expect(StatusCode::CREATED);
        r.json()
    }
}

fn tid(v: &Value) -> TenantId {
    v["id"].as_str().unwrap().parse().unwrap()
}

// ---------------------------------------------------------------------------------
// Clusters
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn cluster_register_read_list() {
    let app = app().await;
    let admin = app.admin();
    // 401 without a token.
    app.send(Method::GET, "/api/v1/clusters", None, None, &[])
        .await
        .expect_kn(StatusCode::UNAUTHORIZED, "KN-401");
    app.send(
        Method::POST,
        "/api/v1/clusters",
        None,
        Some(json!({"name": "a", "kubeconfig": KUBECONFIG})),
        &[],
    )
    .await
    .expect_kn(StatusCode::UNAUTHORIZED, "KN-401");

    let b64 = base64::engine::general_purpose::STANDARD.encode(KUBECONFIG);
    let r = app
        .post(
            "/api/v1/clusters",
            &admin,
            json!({"name": "prod-eu-1", "datacenter": "eu-west", "labels": {"env": "prod"}, "kubeconfig": b64}),
        )
        .await;
    r.expect(StatusCode::CREATED);
    let c = r.json();
    let id = c["id"].as_str().unwrap().to_string();
    assert_eq!(r.header("location"), format!("/api/v1/clusters/{id}"));
    assert_eq!(r.header("etag"), "\"1\"");
    assert_eq!(c["status"], "pending_bootstrap");
    assert_eq!(
        c["capabilities"],
        json!({"certManager": false, "capsule": false, "capsuleProxy": false, "kubeVela": false})
    );
    assert!(c.get("kubeconfig").is_none());
    assert!(!r.text.contains("super-secret"));
    // The kubeconfig is stored (encrypted) as YAML.
    let stored = app
        .store()
        .cluster_kubeconfig(id.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(std::str::from_utf8(&stored).unwrap(), KUBECONFIG);

    // Raw YAML works too.
    app.post(
        "/api/v1/clusters",
        &admin,
        json!({"name": "raw", "kubeconfig": KUBECONFIG}),
    )
    .await
    .expect(StatusCode::CREATED);

    let r = app.get(&format!("/api/v1/clusters/{id}"), &admin).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.header("etag"), "\"1\"");
    assert_eq!(r.json()["name"], "prod-eu-1");
    assert!(!r.text.contains("super-secret"));

    let r = app.get("/api/v1/clusters", &admin).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.json()["items"].as_array().unwrap().len(), 2);
    assert!(r.json()["nextCursor"].is_null());
    assert!(!r.text.contains("super-secret"));

    // Unscoped readOnly reads; tenantOwner, projectDev and scoped readOnly do not.
    let ro = app.token("ro", &[Role::ReadOnly], &[], &[]);
    app.get("/api/v1/clusters", &ro)
        .await
        .expect(StatusCode::OK);
    app.get(&format!("/api/v1/clusters/{id}"), &ro)
        .await
        .expect(StatusCode::OK);
    let owner = app.token("o", &[Role::TenantOwner], &[TenantId::new()], &[]);
    app.get("/api/v1/clusters", &owner)
        .await
        .expect_kn(StatusCode::FORBIDDEN, "KN-403");
    let dev = app.token("d", &[Role::ProjectDev], &[], &[ProjectId::new()]);
    app.get(&format!("/api/v1/clusters/{id}"), &dev)
        .await
        .expect_kn(StatusCode::FORBIDDEN, "KN-403");

    // 400 / 404.
    app.get("/api/v1/clusters/not-a-uuid", &admin)
        .await
        .expect_kn(StatusCode::BAD_REQUEST, "KN-400");
    app.get(
        &format!("/api/v1/clusters/{}", uuid::Uuid::now_v7()),
        &admin,
    )
    .await
    .expect_kn(StatusCode::NOT_FOUND, "KN-404");
}

#[tokio::test]
async fn cluster_register_errors() {
    let app = app().await;
    let admin = app.admin();
    app.cluster("dup").await;
    app.post(
        "/api/v1/clusters",
        &admin,
        json!({"name": "dup", "kubeconfig": KUBECONFIG}),
    )
    .await
    .expect_kn(StatusCode::CONFLICT, "KN-409");
    // Roles.
    for t in [
        app.token("ro", &[Role::ReadOnly], &[], &[]),
        app.token("o", &[Role::TenantOwner], &[TenantId::new()], &[]),
    ] {
        app.post(
            "/api/v1/clusters",
            &t,
            json!({"name": "x", "kubeconfig": KUBECONFIG}),
        )
        .await
        .expect_kn(StatusCode::FORBIDDEN, "KN-403");
    }
    let ops = app.token("ops", &[Role::Ops], &[], &[]);
    app.post(
        "/api/v1/clusters",
        &ops,
        json!({"name": "by-ops", "kubeconfig": KUBECONFIG}),
    )
    .await
    .expect(StatusCode::CREATED);

    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"name": "Bad_Name", "kubeconfig": KUBECONFIG}),
            "name",
        ),
        (json!({"name": "a", "kubeconfig": ""}), "kubeconfig"),
        (
            json!({"name": "a", "kubeconfig": KUBECONFIG.replace("    server:", "    insecure-skip-tls-verify: true\n    server:")}),
            "kubeconfig.clusters[0].cluster.insecure-skip-tls-verify",
        ),
        (
            json!({"name": "a", "kubeconfig": KUBECONFIG.replace("https://", "http://")}),
            "kubeconfig.clusters[0].cluster.server",
        ),
        (
            json!({"name": "a", "kubeconfig": KUBECONFIG.replace("current-context: prod", "current-context: dev")}),
            "kubeconfig.current-context",
        ),
        (
            json!({"name": "a", "kubeconfig": KUBECONFIG.replace("    token: super-secret-cluster-token\n", "    exec:\n      command: sh\n")}),
            "kubeconfig.users[0].user.exec",
        ),
        (
            json!({"name": "a", "kubeconfig": KUBECONFIG.replace("    token: super-secret-cluster-token\n", "    x: y\n")}),
            "kubeconfig.users[0].user",
        ),
        (json!({"name": "a", "kubeconfig": "aGVsbG8="}), "kubeconfig"),
        (
            json!({"name": "a", "kubeconfig": KUBECONFIG, "extra": 1}),
            "extra",
        ),
        (
            json!({"name": "a", "kubeconfig": KUBECONFIG, "capsuleProxyEndpoint": "http://proxy"}),
            "capsuleProxyEndpoint",
        ),
    ];
    for (body, field) in cases {
        let r = app.post("/api/v1/clusters", &admin, body).await;
        r.expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
        let fields: Vec<String> = r.json()["details"]["violations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["field"].as_str().unwrap().to_string())
            .collect();
        assert!(
            fields.iter().any(|f| f == field),
            "{field} not in {fields:?}"
        );
        assert!(!r.text.contains("super-secret"), "{}", r.text);
    }
    // Malformed JSON and wrong content type.
    let r = app
        .send(
            Method::POST,
            "/api/v1/clusters",
            Some(&admin),
            None,
            &[("content-type", "application/json")],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let names: Vec<String> = app.get("/api/v1/clusters", &admin).await.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["dup", "by-ops"], "failed calls change nothing");
}

#[tokio::test]
async fn cluster_pagination() {
    let app = app().await;
    let admin = app.admin();
    for n in ["a", "b", "c"] {
        app.cluster(n).await;
    }
    let r = app.get("/api/v1/clusters?limit=2", &admin).await;
    r.expect(StatusCode::OK);
    let first = r.json();
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let cursor = first["nextCursor"].as_str().unwrap();
    let second = app
        .get(&format!("/api/v1/clusters?limit=2&cursor={cursor}"), &admin)
        .await
        .json();
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert_eq!(second["items"][0]["name"], "c");
    assert!(second["nextCursor"].is_null());
    app.get("/api/v1/clusters?limit=0", &admin)
        .await
        .expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
    app.get("/api/v1/clusters?limit=501", &admin)
        .await
        .expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
    app.get("/api/v1/clusters?cursor=!!", &admin)
        .await
        .expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
    app.get("/api/v1/clusters?limit=abc", &admin)
        .await
        .expect_kn(StatusCode::BAD_REQUEST, "KN-400");
}

#[tokio::test]
async fn capabilities_bootstrap_refresh() {
    let app = app().await;
    let admin = app.admin();
    let id = app.cluster("c1").await;
    let r = app
        .get(&format!("/api/v1/clusters/{id}/capabilities"), &admin)
        .await;
    r.expect(StatusCode::OK);
    let caps = r.json();
    assert_eq!(caps["capsule"], false);
    assert_eq!(caps["kubeVela"], false);
    assert_eq!(caps["reported"], false);
    assert_eq!(caps["components"], json!([]));
    app.get("/api/v1/clusters/x/capabilities", &admin)
        .await
        .expect_kn(StatusCode::BAD_REQUEST, "KN-400");
    app.get(
        &format!("/api/v1/clusters/{}/capabilities", uuid::Uuid::now_v7()),
        &admin,
    )
    .await
    .expect_kn(StatusCode::NOT_FOUND, "KN-404");

    // (The operator bootstrap, which applies objects to the cluster, is covered with a
    // testkit cluster in tests/routes_clusters.rs and tests/agent_bootstrap.rs.)
    let r = app
        .post(
            &format!("/api/v1/clusters/{id}/bootstrap/capsule"),
            &admin,
            json!({}),
        )
        .await;
    r.expect(StatusCode::ACCEPTED);
    let b = r.json();
    assert_eq!(b["status"], "accepted");
    assert_eq!(b["component"], "capsule");
    assert_eq!(
        b["clusterStatus"], "pending_bootstrap",
        "a component request does not change the lifecycle status"
    );
    let mut requested = b["cluster"]["components"][0].clone();
    let request_id = requested
        .as_object_mut()
        .unwrap()
        .remove("requestId")
        .expect("a request carries its id");
    assert!(
        uuid::Uuid::parse_str(request_id.as_str().unwrap()).is_ok(),
        "{request_id}"
    );
    assert_eq!(
        requested,
        json!({"name": "capsule", "phase": "requested", "message": "(re)install requested by admin; waiting for the operator"})
    );
    assert_eq!(b["cluster"]["conditions"][0]["type"], "BootstrapRequested");
    assert_eq!(r.header("etag"), "\"2\"");
    // Unknown component; roles; stale If-Match.
    let r = app
        .post(
            &format!("/api/v1/clusters/{id}/bootstrap/istio"),
            &admin,
            json!({}),
        )
        .await;
    r.expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
    assert_eq!(r.json()["details"]["violations"][0]["field"], "component");
    let ro = app.token("ro", &[Role::ReadOnly], &[], &[]);
    app.post(
        &format!("/api/v1/clusters/{id}/bootstrap/capsule"),
        &ro,
        json!({}),
    )
    .await
    .expect_kn(StatusCode::FORBIDDEN, "KN-403");
    app.send(
        Method::POST,
        &format!("/api/v1/clusters/{id}/bootstrap/capsule"),
        Some(&admin),
        None,
        &[("if-match", "\"1\"")],
    )
    .await
    .expect_kn(StatusCode::PRECONDITION_FAILED, "KN-412");
    app.post(
        &format!(
            "/api/v1/clusters/{}/bootstrap/capsule",
            uuid::Uuid::now_v7()
        ),
        &admin,
        json!({}),
    )
    .await
    .expect_kn(StatusCode::NOT_FOUND, "KN-404");

    let r = app
        .post(&format!("/api/v1/clusters/{id}/refresh"), &admin, json!({}))
        .await;
    r.expect(StatusCode::ACCEPTED);
    let b = r.json();
    assert_eq!(
        b["requested"],
        json!(["cert-manager", "capsule", "capsule-proxy", "kubevela"]),
        "the operator itself is reinstalled only by bootstrap/operator"
    );
    let names: Vec<&str> = b["cluster"]["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["cert-manager", "capsule", "capsule-proxy", "kubevela"]
    );
    assert_eq!(b["cluster"]["status"], "pending_bootstrap");
    app.post("/api/v1/clusters/nope/refresh", &admin, json!({}))
        .await
        .expect_kn(StatusCode::BAD_REQUEST, "KN-400");
    // Capabilities stay honest: requested, not installed.
    let caps = app
        .get(&format!("/api/v1/clusters/{id}/capabilities"), &admin)
        .await
        .json();
    assert_eq!(caps["capsule"], false);
    assert_eq!(caps["components"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn cluster_delete() {
    let app = app().await;
    let admin = app.admin();
    let id = app.cluster("c1").await;
    app.tenant(&id, json!({"name": "acme"})).await;
    app.delete(
        &format!("/api/v1/clusters/{id}"),
        &app.token("o", &[Role::ReadOnly], &[], &[]),
    )
    .await
    .expect_kn(StatusCode::FORBIDDEN, "KN-403");
    app.delete(&format!("/api/v1/clusters/{id}"), &admin)
        .await
        .expect_kn(StatusCode::CONFLICT, "KN-409");
    app.send(
        Method::DELETE,
        &format!("/api/v1/clusters/{id}?cascade=true"),
        Some(&admin),
        None,
        &[("if-match", "\"7\"")],
    )
    .await
    .expect_kn(StatusCode::PRECONDITION_FAILED, "KN-412");
    app.send(
        Method::DELETE,
        &format!("/api/v1/clusters/{id}?cascade=true"),
        Some(&admin),
        None,
        &[("if-match", "\"1\"")],
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    app.get(&format!("/api/v1/clusters/{id}"), &admin)
        .await
        .expect_kn(StatusCode::NOT_FOUND, "KN-404");
    app.delete(&format!("/api/v1/clusters/{id}"), &admin)
        .await
        .expect_kn(StatusCode::NOT_FOUND, "KN-404");
    app.delete("/api/v1/clusters/zzz", &admin)
        .await
        .expect_kn(StatusCode::BAD_REQUEST, "KN-400");
    let r = app.get("/api/v1/tenants", &admin).await;
    assert_eq!(r.json()["items"], json!([]), "cascade removed the tenant");
}

// ---------------------------------------------------------------------------------
// Tenants: plan application
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn tenant_create_applies_default_plan() {
    let app = app().await;
    let c = app.cluster("c1").await;
    let r = app
        .post(
            &format!("/api/v1/clusters/{c}/tenants"),
            &app.admin(),
            json!({"name": "acme", "owners": ["alice@example.com"]}),
        )
        .await;
    r.expect(StatusCode::CREATED);
    let t = r.json();
    let id = t["id"].as_str().unwrap();
    assert_eq!(
        r.header("location"),
        format!("/api/v1/clusters/{c}/tenants/{id}")
    );
    assert_eq!(r.header("etag"), "\"1\"");
    let plan = app.state.catalog.plan("baseline").unwrap();
    assert_eq!(t["plan"], "baseline");
    assert_eq!(
        t["quotas"],
        serde_json::to_value(&plan.tenant_quotas).unwrap()
    );
    assert_eq!(
        t["limits"],
        serde_json::to_value(&plan.limit_range.default).unwrap()
    );
    assert_eq!(t["networkPolicies"], json!(plan.policysets));
    assert_eq!(t["ownerNamespace"], "acme-owner");
    assert_eq!(t["appsNamespace"], "acme-apps");
    assert_eq!(t["status"]["phase"], "pending");
    assert_eq!(t["overrides"], json!({"quotas": {}, "limits": {}}));
    // It is stored as returned.
    let got = app
        .get(&format!("/api/v1/clusters/{c}/tenants/{id}"), &app.admin())
        .await;
    got.expect(StatusCode::OK);
    assert_eq!(got.json(), t);
    assert_eq!(got.header("etag"), "\"1\"");
}

#[tokio::test]
async fn tenant_create_named_plan_and_overrides() {
    let app = app().await;
    let c = app.cluster("c1").await;
    let t = app
        .tenant(&c, json!({"name": "gold-co", "plan": "gold"}))
        .await;
    assert_eq!(t["plan"], "gold");
    assert_eq!(t["quotas"]["requests.cpu"], "6");
    assert_eq!(t["limits"]["cpu"], "1");
    assert_eq!(
        t["networkPolicies"],
        json!(app.state.catalog.plan("gold").unwrap().policysets)
    );

    let t = app
        .tenant(
            &c,
            json!({"name": "custom", "plan": "baseline", "quotas": {"requests.cpu": "4", "count/deployments.apps": "10"},
                   "limits": {"cpu": "1"}, "networkPolicies": ["tenant-isolation"]}),
        )
        .await;
    assert_eq!(t["quotas"]["requests.cpu"], "4");
    assert_eq!(t["quotas"]["count/deployments.apps"], "10");
    assert_eq!(t["quotas"]["pods"], "50", "plan quotas not overridden stay");
    assert_eq!(t["limits"], json!({"cpu": "1", "memory": "512Mi"}));
    assert_eq!(t["networkPolicies"], json!(["tenant-isolation"]));
    assert_eq!(
        t["overrides"]["quotas"],
        json!({"count/deployments.apps": "10", "requests.cpu": "4"})
    );
    assert_eq!(
        t["overrides"]["networkPolicies"],
        json!(["tenant-isolation"])
    );
}

#[tokio::test]
async fn tenant_create_errors() {
    let app = app().await;
    let admin = app.admin();
    let c = app.cluster("c1").await;
    app.tenant(&c, json!({"name": "acme"})).await;
    let url = format!("/api/v1/clusters/{c}/tenants");
    app.post(&url, &admin, json!({"name": "acme"}))
        .await
        .expect_kn(StatusCode::CONFLICT, "KN-409");
    let cases: Vec<(Value, &str)> = vec![
        (json!({"name": "x", "plan": "diamond"}), "plan"),
        (
            json!({"name": "x", "networkPolicies": ["deny-all"]}),
            "networkPolicies[0]",
        ),
        (
            json!({"name": "x", "quotas": {"requests.cpu": "4 cores"}}),
            "quotas.requests.cpu",
        ),
        (
            json!({"name": "x", "quotas": {"pods": "-1"}}),
            "quotas.pods",
        ),
        (json!({"name": "x", "limits": {"cpu": "64"}}), "limits.cpu"),
        (json!({"name": "Bad_Name"}), "name"),
        (json!({"name": "x".repeat(51)}), "name"),
        (json!({"name": "x", "owners": ["group:"]}), "owners[0]"),
        (json!({"name": "x", "plna": "gold"}), "plna"),
    ];
    for (body, field) in cases {
        let r = app.post(&url, &admin, body.clone()).await;
        r.expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
        let fields: Vec<String> = r.json()["details"]["violations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["field"].as_str().unwrap().to_string())
            .collect();
        assert!(
            fields.iter().any(|f| f.replace('"', "") == field),
            "{body}: {field} not in {fields:?}"
        );
    }
    // Unknown cluster, bad id, roles, missing token.
    app.post(
        &format!("/api/v1/clusters/{}/tenants", uuid::Uuid::now_v7()),
        &admin,
        json!({"name": "x"}),
    )
    .await
    .expect_kn(StatusCode::NOT_FOUND, "KN-404");
    app.post("/api/v1/clusters/abc/tenants", &admin, json!({"name": "x"}))
        .await
        .expect_kn(StatusCode::BAD_REQUEST, "KN-400");
    for t in [
        app.token("ro", &[Role::ReadOnly], &[], &[]),
        app.token("o", &[Role::TenantOwner], &[TenantId::new()], &[]),
        app.token("d", &[Role::ProjectDev], &[], &[ProjectId::new()]),
    ] {
        app.post(&url, &t, json!({"name": "x"}))
            .await
            .expect_kn(StatusCode::FORBIDDEN, "KN-403");
    }
    app.send(Method::POST, &url, None, Some(json!({"name": "x"})), &[])
        .await
        .expect_kn(StatusCode::UNAUTHORIZED, "KN-401");
    let ops = app.token("ops", &[Role::Ops], &[], &[]);
    app.post(&url, &ops, json!({"name": "by-ops"}))
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(
        app.get("/api/v1/tenants", &admin).await.json()["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn tenant_create_is_idempotent_with_a_key() {
    let app = app().await;
    let admin = app.admin();
    let c = app.cluster("c1").await;
    let url = format!("/api/v1/clusters/{c}/tenants");
    let body = json!({"name": "acme"});
    let a = app
        .send(
            Method::POST,
            &url,
            Some(&admin),
            Some(body.clone()),
            &[("idempotency-key", "k-1")],
        )
        .await;
    a.expect(StatusCode::CREATED);
    let b = app
        .send(
            Method::POST,
            &url,
            Some(&admin),
            Some(body),
            &[("idempotency-key", "k-1")],
        )
        .await;
    b.expect(StatusCode::CREATED);
    assert_eq!(a.json(), b.json());
    let diff = app
        .send(
            Method::POST,
            &url,
            Some(&admin),
            Some(json!({"name": "other"})),
            &[("idempotency-key", "k-1")],
        )
        .await;
    diff.expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
    assert_eq!(
        app.get(&url, &admin).await.json()["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

// ---------------------------------------------------------------------------------
// Tenants: scope, reads, lists
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn tenant_scope_and_lists() {
    let app = app().await;
    let admin = app.admin();
    let c1 = app.cluster("c1").await;
    let c2 = app.cluster("c2").await;
    let a = app.tenant(&c1, json!({"name": "a"})).await;
    let b = app.tenant(&c1, json!({"name": "b"})).await;
    let z = app.tenant(&c2, json!({"name": "z"})).await;
    let (ida, idb) = (tid(&a), tid(&b));

    let owner_a = app.token("owner-a", &[Role::TenantOwner], &[ida], &[]);
    app.get(&format!("/api/v1/clusters/{c1}/tenants/{ida}"), &owner_a)
        .await
        .expect(StatusCode::OK);
    // B is invisible: 404 exactly as for an unknown tenant.
    let r = app
        .get(&format!("/api/v1/clusters/{c1}/tenants/{idb}"), &owner_a)
        .await;
    r.expect_kn(StatusCode::NOT_FOUND, "KN-404");
    let unknown = TenantId::new();
    let r2 = app
        .get(
            &format!("/api/v1/clusters/{c1}/tenants/{unknown}"),
            &owner_a,
        )
        .await;
    r2.expect_kn(StatusCode::NOT_FOUND, "KN-404");
    let list = app
        .get(&format!("/api/v1/clusters/{c1}/tenants"), &owner_a)
        .await
        .json();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["name"], "a");
    let all = app.get("/api/v1/tenants", &owner_a).await.json();
    assert_eq!(all["items"].as_array().unwrap().len(), 1);
    // The owner may read but not change its tenant; B is 404 for writes too.
    app.put(
        &format!("/api/v1/clusters/{c1}/tenants/{ida}/owners"),
        &owner_a,
        json!({"owners": ["x@example.com"]}),
    )
    .await
    .expect_kn(StatusCode::FORBIDDEN, "KN-403");
    app.put(
        &format!("/api/v1/clusters/{c1}/tenants/{idb}/owners"),
        &owner_a,
        json!({"owners": ["x@example.com"]}),
    )
    .await
    .expect_kn(StatusCode::NOT_FOUND, "KN-404");
    app.delete(&format!("/api/v1/clusters/{c1}/tenants/{idb}"), &owner_a)
        .await
        .expect_kn(StatusCode::NOT_FOUND, "KN-404");
    // Tenant in the wrong cluster path: 404.
    app.get(&format!("/api/v1/clusters/{c2}/tenants/{ida}"), &admin)
        .await
        .expect_kn(StatusCode::NOT_FOUND, "KN-404");
    // projectDev sees no tenant records.
    let dev = app.token("dev", &[Role::ProjectDev], &[], &[ProjectId::new()]);
    app.get(&format!("/api/v1/clusters/{c1}/tenants/{ida}"), &dev)
        .await
        .expect_kn(StatusCode::NOT_FOUND, "KN-404");
    app.get("/api/v1/tenants", &dev)
        .await
        .expect_kn(StatusCode::FORBIDDEN, "KN-403");
    // Unscoped readOnly sees everything, changes nothing.
    let ro = app.token("ro", &[Role::ReadOnly], &[], &[]);
    assert_eq!(
        app.get("/api/v1/tenants", &ro).await.json()["items"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    app.put(
        &format!("/api/v1/tenants/{ida}/plan"),
        &ro,
        json!({"plan": "gold"}),
    )
    .await
    .expect_kn(StatusCode::FORBIDDEN, "KN-403");
    // Cluster filter, pagination, bad params.
    let r = app
        .get(&format!("/api/v1/tenants?clusterId={c2}"), &admin)
        .await
        .json();
    assert_eq!(r["items"][0]["id"], z["id"]);
    let p1 = app.get("/api/v1/tenants?limit=2", &admin).await.json();
    assert_eq!(p1["items"].as_array().unwrap().len(), 2);
    let p2 = app
        .get(
            &format!(
                "/api/v1/tenants?limit=2&cursor={}",
                p1["nextCursor"].as_str().unwrap()
            ),
            &admin,
        )
        .await
        .json();
    assert_eq!(p2["items"].as_array().unwrap().len(), 1);
    assert!(p2["nextCursor"].is_null());
    let owner_ab = app.token("owner-ab", &[Role::TenantOwner], &[ida, idb, tid(&z)], &[]);
    let p1 = app
        .get(&format!("/api/v1/clusters/{c1}/tenants?limit=1"), &owner_ab)
        .await
        .json();
    assert_eq!(p1["items"].as_array().unwrap().len(), 1);
    let p2 = app
        .get(
            &format!(
                "/api/v1/clusters/{c1}/tenants?limit=1&cursor={}",
                p1["nextCursor"].as_str().unwrap()
            ),
            &owner_ab,
        )
        .await
        .json();
    assert_eq!(p2["items"].as_array().unwrap().len(), 1);
    assert_ne!(p1["items"][0]["id"], p2["items"][0]["id"]);
    app.get("/api/v1/tenants?clusterId=nope", &admin)
        .await
        .expect_kn(StatusCode::BAD_REQUEST, "KN-400");
    app.get("/api/v1/tenants?bogus=1", &admin)
        .await
        .expect_kn(StatusCode::BAD_REQUEST, "KN-400");
    app.get(
        &format!("/api/v1/clusters/{}/tenants", uuid::Uuid::now_v7()),
        &admin,
    )
    .await
    .expect_kn(StatusCode::NOT_FOUND, "KN-404");
    app.get("/api/v1/clusters/x/tenants/y", &admin)
        .await
        .expect_kn(StatusCode::BAD_REQUEST, "KN-400");
    app.get(&format!("/api/v1/clusters/{c1}/tenants/y"), &admin)
        .await
        .expect_kn(StatusCode::BAD_REQUEST, "KN-400");
}

// ---------------------------------------------------------------------------------
// Tenants: updates
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn tenant_updates_reresolve_the_plan() {
    let app = app().await;
    let admin = app.admin();
    let c = app.cluster("c1").await;
    let t = app
        .tenant(&c, json!({"name": "acme", "quotas": {"pods": "10"}}))
        .await;
    let id = tid(&t);
    let base = format!("/api/v1/clusters/{c}/tenants/{id}");

    let r = app
        .put(
            &format!("{base}/owners"),
            &admin,
            json!({"owners": ["alice@example.com", "group:acme-admins"]}),
        )
        .await;
    r.expect(StatusCode::OK);
    assert_eq!(
        r.json()["owners"],
        json!(["alice@example.com", "group:acme-admins"])
    );
    assert_eq!(r.header("etag"), "\"2\"");
    app.put(
        &format!("{base}/owners"),
        &admin,
        json!({"owners": ["a@x.io", "a@x.io"]}),
    )
    .await
    .expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");

    // Quotas replace the overrides: pods goes back to the plan's 50.
    let r = app
        .put(
            &format!("{base}/quotas"),
            &admin,
            json!({"requests.cpu": "3", "requests.memory": "8Gi"}),
        )
        .await;
    r.expect(StatusCode::OK);
    let q = r.json();
    assert_eq!(q["quotas"]["requests.cpu"], "3");
    assert_eq!(q["quotas"]["requests.memory"], "8Gi");
    assert_eq!(q["quotas"]["pods"], "50");
    assert_eq!(
        q["overrides"]["quotas"],
        json!({"requests.cpu": "3", "requests.memory": "8Gi"})
    );
    app.put(&format!("{base}/quotas"), &admin, json!({"cpu": "4 cores"}))
        .await
        .expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
    app.put(&format!("{base}/quotas"), &admin, json!({"bad key!": "4"}))
        .await
        .expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");

    let r = app
        .put(&format!("{base}/limits"), &admin, json!({"cpu": "1"}))
        .await;
    r.expect(StatusCode::OK);
    assert_eq!(r.json()["limits"], json!({"cpu": "1", "memory": "512Mi"}));
    let r = app
        .put(&format!("{base}/limits"), &admin, json!({"cpu": "8"}))
        .await;
    r.expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
    assert!(r.text.contains("maximum"));

    let r = app
        .put(
            &format!("{base}/network-policies"),
            &admin,
            json!({"policies": ["pod-security-restricted"]}),
        )
        .await;
    r.expect(StatusCode::OK);
    assert_eq!(
        r.json()["networkPolicies"],
        json!(["pod-security-restricted"])
    );
    let r = app
        .put(
            &format!("{base}/network-policies"),
            &admin,
            json!({"policies": ["tenant-isolation", "deny-all"]}),
        )
        .await;
    r.expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
    assert_eq!(r.json()["details"]["violations"][0]["field"], "policies[1]");
    assert!(r.json()["message"].as_str().unwrap().contains("deny-all"));
    let r = app
        .put(
            &format!("{base}/network-policies"),
            &admin,
            json!({"policies": null}),
        )
        .await;
    r.expect(StatusCode::OK);
    assert_eq!(
        r.json()["networkPolicies"],
        json!(app.state.catalog.plan("baseline").unwrap().policysets)
    );

    // Plan change keeps the overrides on top of the new plan.
    let r = app
        .put(
            &format!("/api/v1/tenants/{id}/plan"),
            &admin,
            json!({"plan": "gold"}),
        )
        .await;
    r.expect(StatusCode::OK);
    let g = r.json();
    assert_eq!(g["plan"], "gold");
    assert_eq!(g["quotas"]["requests.cpu"], "3", "override kept");
    assert_eq!(g["quotas"]["pods"], "200", "gold's value");
    assert_eq!(g["limits"]["cpu"], "1");
    assert_eq!(g["limits"]["memory"], "1Gi");
    let version = g["version"].as_i64().unwrap();
    let r = app
        .put(
            &format!("/api/v1/tenants/{id}/plan"),
            &admin,
            json!({"plan": "diamond"}),
        )
        .await;
    r.expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
    assert_eq!(r.json()["details"]["violations"][0]["field"], "plan");
    app.put(
        &format!("/api/v1/tenants/{id}/plan"),
        &admin,
        json!({"plan": "gold", "x": 1}),
    )
    .await
    .expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");

    // If-Match: stale → 412, current → 200.
    let stale = format!("\"{}\"", version - 1);
    app.send(
        Method::PUT,
        &format!("{base}/quotas"),
        Some(&admin),
        Some(json!({})),
        &[("if-match", stale.as_str())],
    )
    .await
    .expect_kn(StatusCode::PRECONDITION_FAILED, "KN-412");
    let cur = format!("\"{version}\"");
    let r = app
        .send(
            Method::PUT,
            &format!("{base}/quotas"),
            Some(&admin),
            Some(json!({})),
            &[("if-match", cur.as_str())],
        )
        .await;
    r.expect(StatusCode::OK);
    assert_eq!(r.json()["quotas"]["requests.cpu"], "6");

    // Failed calls changed nothing; 400/404 on ids.
    let now = app.get(&base, &admin).await.json();
    assert_eq!(now["version"], version + 1);
    app.put("/api/v1/tenants/nope/plan", &admin, json!({"plan": "gold"}))
        .await
        .expect_kn(StatusCode::BAD_REQUEST, "KN-400");
    app.put(
        &format!("/api/v1/tenants/{}/plan", TenantId::new()),
        &admin,
        json!({"plan": "gold"}),
    )
    .await
    .expect_kn(StatusCode::NOT_FOUND, "KN-404");
    app.put(
        &format!("/api/v1/clusters/{c}/tenants/{}/limits", TenantId::new()),
        &admin,
        json!({}),
    )
    .await
    .expect_kn(StatusCode::NOT_FOUND, "KN-404");
}

#[tokio::test]
async fn tenant_delete_refuses_children() {
    let app = app().await;
    let admin = app.admin();
    let c = app.cluster("c1").await;
    let t = app.tenant(&c, json!({"name": "acme"})).await;
    let id = tid(&t);
    let now = time::OffsetDateTime::now_utc();
    let project = Project {
        id: ProjectId::new(),
        cluster_id: c.parse().unwrap(),
        tenant_id: id,
        name: "web".into(),
        description: String::new(),
        labels: Default::default(),
        access: vec![],
        namespace: kubenova_api::model::project_namespace("acme", "web"),
        status: ObjectStatus::default(),
        version: 1,
        created_at: now,
        updated_at: now,
    };
    app.store()
        .create_project(&project, &WriteOptions::default())
        .await
        .unwrap();
    let url = format!("/api/v1/clusters/{c}/tenants/{id}");
    let sum = app.get(&format!("{url}/summary"), &admin).await;
    sum.expect(StatusCode::OK);
    assert_eq!(sum.json()["projects"], 1);
    assert_eq!(sum.json()["namespaces"], 3);
    app.delete(&url, &app.token("ops", &[Role::ReadOnly], &[], &[]))
        .await
        .expect_kn(StatusCode::FORBIDDEN, "KN-403");
    app.delete(&url, &admin)
        .await
        .expect_kn(StatusCode::CONFLICT, "KN-409");
    app.send(
        Method::DELETE,
        &format!("{url}?cascade=true"),
        Some(&admin),
        None,
        &[("if-match", "\"9\"")],
    )
    .await
    .expect_kn(StatusCode::PRECONDITION_FAILED, "KN-412");
    app.delete(&format!("{url}?cascade=true"), &admin)
        .await
        .expect(StatusCode::NO_CONTENT);
    app.get(&url, &admin)
        .await
        .expect_kn(StatusCode::NOT_FOUND, "KN-404");
    assert!(app.store().get_project(project.id).await.is_err());
    app.delete(&url, &admin)
        .await
        .expect_kn(StatusCode::NOT_FOUND, "KN-404");
}

// ---------------------------------------------------------------------------------
// Summary, usage, kubeconfig
// ---------------------------------------------------------------------------------

fn hour_ago(h: i64) -> String {
    let now = time::OffsetDateTime::now_utc();
    let t = now
        .replace_minute(0)
        .unwrap()
        .replace_second(0)
        .unwrap()
        .replace_nanosecond(0)
        .unwrap()
        - time::Duration::hours(h);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[tokio::test]
async fn usage_ingest_summary_and_report() {
    let app = app().await;
    let admin = app.admin();
    let c = app.cluster("c1").await;
    let t = app
        .tenant(&c, json!({"name": "acme", "quotas": {"pods": "10"}}))
        .await;
    let id = tid(&t);
    let base = format!("/api/v1/clusters/{c}/tenants/{id}");

    let s = app.get(&format!("{base}/summary"), &admin).await;
    s.expect(StatusCode::OK);
    let s = s.json();
    assert_eq!(s["projects"], 0);
    assert_eq!(s["apps"], 0);
    assert_eq!(s["namespaces"], 2);
    assert_eq!(s["loadBalancers"], 0);
    assert_eq!(s["quotaViolations"], 0);
    assert_eq!(s["usageReported"], false);

    let rec = |hour: String, pods: i64| {
        json!({"clusterId": c, "tenantId": id, "hour": hour, "cpuMillicores": 1500, "memoryBytes": 2147483648_i64,
               "storageBytes": 10737418240_i64, "loadBalancers": 1, "namespaces": 2, "pods": pods, "apps": 0})
    };
    let r = app
        .post(
            "/api/v1/usage",
            &admin,
            json!({"records": [rec(hour_ago(2), 5), rec(hour_ago(1), 12)]}),
        )
        .await;
    r.expect(StatusCode::ACCEPTED);
    assert_eq!(r.json(), json!({"accepted": 2}));
    // Re-sending an hour replaces it (idempotent per hour).
    app.post(
        "/api/v1/usage",
        &admin,
        json!({"records": [rec(hour_ago(1), 12)]}),
    )
    .await
    .expect(StatusCode::ACCEPTED);

    let s = app.get(&format!("{base}/summary"), &admin).await.json();
    assert_eq!(s["usageReported"], true);
    assert_eq!(s["loadBalancers"], 1);
    assert_eq!(s["quotaViolations"], 1);
    assert_eq!(s["exceededQuotas"], json!(["pods"]));

    let u = app
        .get(&format!("/api/v1/tenants/{id}/usage"), &admin)
        .await;
    u.expect(StatusCode::OK);
    let u = u.json();
    assert_eq!(u["records"].as_array().unwrap().len(), 2);
    assert_eq!(u["totals"]["hours"], 2);
    assert_eq!(u["totals"]["cpuMillicoreHours"], 3000);
    assert_eq!(u["totals"]["podHours"], 17);
    assert_eq!(u["cpuRequests"], "1500m");
    assert_eq!(u["memoryRequests"], "2Gi");
    assert_eq!(u["pvcStorage"], "10Gi");
    assert_eq!(u["pods"], 12);
    assert_eq!(u["quotaViolations"], 1);
    // baseline: cpu 3 core-hours × 0.040 = 0.12; memory 4 GiB-h × 0.005 = 0.02; storage 20 GiB-h × 0.00014 = 0.0028; lb 2 × 0.025 = 0.05.
    assert_eq!(u["cost"]["currency"], "USD");
    assert_eq!(u["cost"]["cpu"], "0.120000");
    assert_eq!(u["cost"]["total"], "0.192800");

    let csv = app
        .get(&format!("/api/v1/tenants/{id}/usage?format=csv"), &admin)
        .await;
    csv.expect(StatusCode::OK);
    assert!(csv.header("content-type").starts_with("text/csv"));
    assert_eq!(csv.text.lines().count(), 3);
    assert!(
        csv.text
            .starts_with("hour,clusterId,tenantId,projectId,cpuMillicores")
    );

    // Empty range; bad parameters.
    let from = hour_ago(100);
    let to = hour_ago(90);
    let r = app
        .get(
            &format!("/api/v1/tenants/{id}/usage?from={from}&to={to}"),
            &admin,
        )
        .await
        .json();
    assert_eq!(r["usageReported"], false);
    assert!(r.get("cpuRequests").is_none());
    app.get(
        &format!("/api/v1/tenants/{id}/usage?from=yesterday"),
        &admin,
    )
    .await
    .expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
    app.get(
        &format!("/api/v1/tenants/{id}/usage?granularity=week"),
        &admin,
    )
    .await
    .expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
    app.get(
        &format!("/api/v1/tenants/{id}/usage?from={to}&to={from}"),
        &admin,
    )
    .await
    .expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
    app.get(&format!("/api/v1/tenants/{id}/usage?format=xml"), &admin)
        .await
        .expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
    app.get("/api/v1/tenants/x/usage", &admin)
        .await
        .expect_kn(StatusCode::BAD_REQUEST, "KN-400");
    let other = app.token("o", &[Role::TenantOwner], &[TenantId::new()], &[]);
    app.get(&format!("/api/v1/tenants/{id}/usage"), &other)
        .await
        .expect_kn(StatusCode::NOT_FOUND, "KN-404");
    let mine = app.token("o", &[Role::TenantOwner], &[id], &[]);
    app.get(&format!("/api/v1/tenants/{id}/usage"), &mine)
        .await
        .expect(StatusCode::OK);
    app.get(&format!("{base}/summary"), &mine)
        .await
        .expect(StatusCode::OK);
    app.get(&format!("{base}/summary"), &other)
        .await
        .expect_kn(StatusCode::NOT_FOUND, "KN-404");
}

#[tokio::test]
async fn usage_ingest_errors() {
    let app = app().await;
    let admin = app.admin();
    let c = app.cluster("c1").await;
    let t = app.tenant(&c, json!({"name": "acme"})).await;
    let id = tid(&t);
    let good = json!({"clusterId": c, "tenantId": id, "hour": hour_ago(1), "cpuMillicores": 1, "memoryBytes": 1,
        "storageBytes": 0, "loadBalancers": 0, "namespaces": 2, "pods": 1, "apps": 0});
    let mut half = good.clone();
    half["hour"] = json!("2026-01-01T10:30:00Z");
    let mut neg = good.clone();
    neg["pods"] = json!(-1);
    let mut stranger = good.clone();
    stranger["tenantId"] = json!(TenantId::new());
    let mut wrong_cluster = good.clone();
    wrong_cluster["clusterId"] = json!(uuid::Uuid::now_v7());
    let mut bad_project = good.clone();
    bad_project["projectId"] = json!(ProjectId::new());
    for (records, field) in [
        (json!([]), "records"),
        (json!([half]), "records[0].hour"),
        (json!([good.clone(), neg]), "records[1].pods"),
        (json!([stranger]), "records[0].tenantId"),
        (json!([wrong_cluster]), "records[0].tenantId"),
        (json!([bad_project]), "records[0].projectId"),
        (json!([good.clone(), good.clone()]), "records[1]"),
    ] {
        let r = app
            .post("/api/v1/usage", &admin, json!({"records": records}))
            .await;
        r.expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
        assert_eq!(
            r.json()["details"]["violations"][0]["field"],
            field,
            "{}",
            r.text
        );
    }
    for t in [
        app.token("o", &[Role::TenantOwner], &[id], &[]),
        app.token("ro", &[Role::ReadOnly], &[], &[]),
    ] {
        app.post("/api/v1/usage", &t, json!({"records": [good.clone()]}))
            .await
            .expect_kn(StatusCode::FORBIDDEN, "KN-403");
    }
    app.send(
        Method::POST,
        "/api/v1/usage",
        None,
        Some(json!({"records": [good.clone()]})),
        &[],
    )
    .await
    .expect_kn(StatusCode::UNAUTHORIZED, "KN-401");
    let u = app
        .get(&format!("/api/v1/tenants/{id}/usage"), &admin)
        .await
        .json();
    assert_eq!(u["records"], json!([]), "rejected batches stored nothing");
    let ops = app.token("ops", &[Role::Ops], &[], &[]);
    app.post("/api/v1/usage", &ops, json!({"records": [good]}))
        .await
        .expect(StatusCode::ACCEPTED);
}

/// Series by hour, day and month, the quota report from the ResourceQuotas' status, the
/// cross-tenant export (JSON and CSV, paged, filtered, admin/ops only) and the batches
/// refused as a whole (future hours, absurd values, storage classes that do not add up).
#[tokio::test]
async fn usage_series_quota_report_and_export() {
    let app = app().await;
    let admin = app.admin();
    let c = app.cluster("c1").await;
    let t = app.tenant(&c, json!({"name": "acme"})).await;
    let id = tid(&t);
    let other = app.tenant(&c, json!({"name": "beta"})).await;
    let other_id = tid(&other);
    let rec = |tenant: TenantId, hour: String, cpu: i64| {
        json!({"clusterId": c, "tenantId": tenant, "hour": hour, "cpuMillicores": cpu, "memoryBytes": 1073741824_i64,
               "storageBytes": 3221225472_i64, "storageByClass": {"fast": 1073741824_i64, "": 2147483648_i64},
               "loadBalancers": 1, "namespaces": 2, "pods": 2, "apps": 1,
               "cpuLimitMillicores": 2 * cpu, "memoryLimitBytes": 2147483648_i64})
    };
    let mut latest = rec(id, hour_ago(1), 1000);
    latest["quotas"] = json!([
        {"namespace": "acme-apps", "name": "compute", "resource": "requests.cpu", "used": "1500m", "hard": "1"},
        {"namespace": "acme-apps", "name": "compute", "resource": "pods", "used": "2", "hard": "10"}
    ]);
    let records = vec![
        rec(id, hour_ago(50), 1000),
        rec(id, hour_ago(26), 1000),
        rec(id, hour_ago(2), 1000),
        latest,
        rec(other_id, hour_ago(1), 500),
    ];
    app.post("/api/v1/usage", &admin, json!({"records": records}))
        .await
        .expect(StatusCode::ACCEPTED);

    let from = hour_ago(72);
    let u = app
        .get(
            &format!("/api/v1/tenants/{id}/usage?from={from}&granularity=day"),
            &admin,
        )
        .await;
    u.expect(StatusCode::OK);
    let u = u.json();
    let series = u["series"].as_array().unwrap();
    let hours: i64 = series.iter().map(|b| b["hours"].as_i64().unwrap()).sum();
    assert_eq!(hours, 4, "{u}");
    assert!(series.len() >= 2, "the hours span at least two UTC days");
    for b in series {
        assert_eq!(b["plans"][0]["plan"], "baseline");
        assert_eq!(b["currency"], "USD");
        assert!(b["end"].as_str() > b["start"].as_str());
    }
    assert_eq!(u["costByPlan"][0]["plan"], "baseline");
    assert_eq!(u["costByPlan"][0]["hours"], 4);
    assert_eq!(u["totalCost"], u["cost"]["total"], "one plan: both agree");
    assert_eq!(u["quota"]["violations"], 1);
    assert_eq!(u["quota"]["items"].as_array().unwrap().len(), 2);
    assert_eq!(u["quotaViolations"], 1);
    assert_eq!(
        u["records"],
        json!([]),
        "day periods are summed by the database: no hours"
    );
    let hours = app
        .get(&format!("/api/v1/tenants/{id}/usage?from={from}"), &admin)
        .await
        .json();
    assert_eq!(
        hours["records"][3]["storageByClass"]["fast"],
        1073741824_i64
    );
    // The same cost and totals whether the hours or the database's day sums are priced.
    for key in [
        "costByPlan",
        "totalCost",
        "totals",
        "quota",
        "quotaViolations",
        "lastReportedAt",
        "usageReported",
    ] {
        assert_eq!(hours[key], u[key], "{key}");
    }
    let s = app
        .get(
            &format!("/api/v1/clusters/{c}/tenants/{id}/summary"),
            &admin,
        )
        .await
        .json();
    assert_eq!(s["exceededQuotas"], json!(["requests.cpu"]), "{s}");
    let months = app
        .get(
            &format!("/api/v1/tenants/{id}/usage?from={from}&granularity=month"),
            &admin,
        )
        .await
        .json();
    let m: i64 = months["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["hours"].as_i64().unwrap())
        .sum();
    assert_eq!(m, 4);
    assert!(
        months["series"][0]["start"]
            .as_str()
            .unwrap()
            .contains("-01T00:00:00Z")
    );

    // The export: every tenant, paged; filters; CSV.
    let mut items = Vec::new();
    let mut url = format!("/api/v1/usage?from={from}&limit=2");
    loop {
        let page = app.get(&url, &admin).await;
        page.expect(StatusCode::OK);
        let page = page.json();
        items.extend(page["items"].as_array().unwrap().clone());
        match page["nextCursor"].as_str() {
            Some(cur) => url = format!("/api/v1/usage?from={from}&limit=2&cursor={cur}"),
            None => break,
        }
    }
    assert_eq!(items.len(), 5);
    let only = app
        .get(
            &format!("/api/v1/usage?from={from}&tenantId={other_id}"),
            &admin,
        )
        .await
        .json();
    assert_eq!(only["items"].as_array().unwrap().len(), 1);
    assert!(only["nextCursor"].is_null());
    let ops = app.token("ops", &[Role::Ops], &[], &[]);
    let csv = app
        .get(
            &format!("/api/v1/usage?from={from}&format=csv&limit=3"),
            &ops,
        )
        .await;
    csv.expect(StatusCode::OK);
    assert_eq!(csv.text.lines().count(), 4);
    assert!(!csv.header("kn-next-cursor").is_empty());
    // Streamed: the whole range in one body, the same records as the pages, in order.
    let nd = app
        .get(&format!("/api/v1/usage?from={from}&stream=true"), &ops)
        .await;
    nd.expect(StatusCode::OK);
    assert_eq!(nd.header("content-type"), "application/x-ndjson");
    let streamed: Vec<serde_json::Value> = nd
        .text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(streamed, items);
    let first_two = app
        .get(&format!("/api/v1/usage?from={from}&limit=2"), &ops)
        .await
        .json();
    let second = first_two["nextCursor"].as_str().unwrap();
    let resumed = app
        .get(
            &format!("/api/v1/usage?from={from}&stream=true&format=csv&cursor={second}"),
            &ops,
        )
        .await;
    resumed.expect(StatusCode::OK);
    assert!(resumed.header("content-type").starts_with("text/csv"));
    let lines: Vec<&str> = resumed.text.lines().collect();
    assert!(
        lines[0].ends_with("cpuLimitMillicores,memoryLimitBytes"),
        "{}",
        lines[0]
    );
    assert_eq!(
        lines.len(),
        1 + 3,
        "the records after the second: {}",
        resumed.text
    );
    assert!(lines[1].starts_with(items[2]["hour"].as_str().unwrap()));
    app.get(
        &format!("/api/v1/usage?from={from}&stream=true&limit=5"),
        &ops,
    )
    .await
    .expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
    for tok in [
        app.token("o", &[Role::TenantOwner], &[id], &[]),
        app.token("ro", &[Role::ReadOnly], &[], &[]),
    ] {
        app.get("/api/v1/usage", &tok)
            .await
            .expect_kn(StatusCode::FORBIDDEN, "KN-403");
    }
    for (q, field) in [
        ("from=yesterday", "from"),
        ("to=2026-01-01T00:00:00Z&from=2027-01-01T00:00:00Z", "from"),
        ("from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
        ("format=xml", "format"),
        ("limit=0", "limit"),
        ("tenantId=acme", "tenantId"),
        ("cursor=bm9wZQ", "cursor"),
    ] {
        let r = app.get(&format!("/api/v1/usage?{q}"), &admin).await;
        r.expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
        assert_eq!(r.json()["details"]["violations"][0]["field"], field, "{q}");
    }
    app.get("/api/v1/usage?tenant=x", &admin)
        .await
        .expect_kn(StatusCode::BAD_REQUEST, "KN-400");

    // Refused as a whole: a future hour, an absurd value, classes that do not add up.
    let future = (time::OffsetDateTime::now_utc() + time::Duration::hours(2))
        .replace_minute(0)
        .unwrap()
        .replace_second(0)
        .unwrap()
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let mut absurd = rec(id, hour_ago(3), 1000);
    absurd["pods"] = json!(100_000_000_000_i64);
    let mut classes = rec(id, hour_ago(4), 1000);
    classes["storageBytes"] = json!(1);
    for (bad, field) in [
        (rec(id, future, 1), "records[1].hour"),
        (absurd, "records[1].pods"),
        (classes, "records[1].storageByClass"),
    ] {
        let r = app
            .post(
                "/api/v1/usage",
                &admin,
                json!({"records": [rec(id, hour_ago(5), 7), bad]}),
            )
            .await;
        r.expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
        assert_eq!(
            r.json()["details"]["violations"][0]["field"],
            field,
            "{}",
            r.text
        );
    }
    let u = app
        .get(&format!("/api/v1/tenants/{id}/usage?from={from}"), &admin)
        .await
        .json();
    assert_eq!(
        u["records"].as_array().unwrap().len(),
        4,
        "nothing partial stored"
    );
}

/// A price change in the catalog prices only the hours after it: past hours keep the
/// price-table version in force then, which each period names with its prices.
#[tokio::test]
async fn a_price_change_never_reprices_past_hours() {
    let mut app = app().await;
    let admin = app.admin();
    let c = app.cluster("c1").await;
    let t = app.tenant(&c, json!({"name": "acme"})).await;
    let id = tid(&t);
    let at = |s: String| {
        time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339).unwrap()
    };
    let record = |catalog: kubenova_api::catalog::Catalog, since: String| {
        let store = app.store().clone();
        async move {
            kubenova_manager::record_catalog_prices(store.as_ref(), &catalog, at(since))
                .await
                .unwrap();
        }
    };
    record((*app.state.catalog).clone(), hour_ago(100)).await;
    let rec = |hour: String| {
        json!({"clusterId": c, "tenantId": id, "hour": hour, "cpuMillicores": 1000, "memoryBytes": 0,
               "storageBytes": 0, "loadBalancers": 0, "namespaces": 1, "pods": 1, "apps": 0})
    };
    app.post(
        "/api/v1/usage",
        &admin,
        json!({"records": [rec(hour_ago(50))]}),
    )
    .await
    .expect(StatusCode::ACCEPTED);
    let url = format!(
        "/api/v1/tenants/{id}/usage?from={}&granularity=hour",
        hour_ago(72)
    );
    let before = app.get(&url, &admin).await.json();
    let old_cost = before["series"][0]["cost"].clone();
    assert!(old_cost.is_string(), "{before}");

    // Ten hours ago the manager restarted with baseline's CPU price doubled; a later
    // restart with the same prices records no new version.
    let mut changed = (*app.state.catalog).clone();
    let baseline = changed.plans.get_mut("baseline").unwrap();
    baseline.prices.cpu_core_hour = baseline.prices.cpu_core_hour + baseline.prices.cpu_core_hour;
    record(changed.clone(), hour_ago(10)).await;
    record(changed.clone(), hour_ago(5)).await;
    // The restarted manager serves with the changed catalog.
    app.state.catalog = std::sync::Arc::new(changed);
    app.router = kubenova_manager::api::router(app.state.clone());
    app.post(
        "/api/v1/usage",
        &admin,
        json!({"records": [rec(hour_ago(2))]}),
    )
    .await
    .expect(StatusCode::ACCEPTED);

    let after = app.get(&url, &admin).await;
    after.expect(StatusCode::OK);
    let after = after.json();
    let series = after["series"].as_array().unwrap();
    assert_eq!(series.len(), 2, "{after}");
    assert_eq!(
        series[0]["cost"], old_cost,
        "the past hour keeps its price: {after}"
    );
    let (old, new) = (&series[0]["plans"][0], &series[1]["plans"][0]);
    assert_eq!(old["pricesSince"], hour_ago(100));
    assert_eq!(new["pricesSince"], hour_ago(10), "{after}");
    assert_eq!(
        old["prices"]["cpuCoreHour"],
        before["series"][0]["plans"][0]["prices"]["cpuCoreHour"]
    );
    assert_ne!(old["prices"]["cpuCoreHour"], new["prices"]["cpuCoreHour"]);
    let micros = |v: &Value| -> i64 { v.as_str().unwrap().replace('.', "").parse().unwrap() };
    assert_eq!(micros(&series[1]["cost"]), 2 * micros(&series[0]["cost"]));
    let by_version = after["costByPlan"].as_array().unwrap();
    assert_eq!(
        by_version.len(),
        2,
        "one entry per price-table version: {after}"
    );
    assert_eq!(
        micros(&after["totalCost"]),
        3 * micros(&series[0]["cost"]),
        "{after}"
    );

    // An hour just before the price change, reported late: on most days it shares its UTC
    // day with hours after the change. Summed by the database per day and pricing span,
    // every hour keeps its price: the same costs as priced hour by hour.
    app.post(
        "/api/v1/usage",
        &admin,
        json!({"records": [rec(hour_ago(11))]}),
    )
    .await
    .expect(StatusCode::ACCEPTED);
    let hourly = app.get(&url, &admin).await.json();
    let daily = app
        .get(
            &format!(
                "/api/v1/tenants/{id}/usage?from={}&granularity=day",
                hour_ago(72)
            ),
            &admin,
        )
        .await
        .json();
    assert_eq!(daily["costByPlan"], hourly["costByPlan"], "{daily}");
    assert_eq!(daily["totalCost"], hourly["totalCost"]);
    assert_eq!(daily["totals"], hourly["totals"]);
    assert_eq!(
        micros(&hourly["totalCost"]),
        4 * micros(&series[0]["cost"]),
        "{hourly}"
    );
    let day_costs: i64 = daily["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| micros(&b["cost"]))
        .sum();
    assert_eq!(day_costs, micros(&daily["totalCost"]));
}

#[tokio::test]
async fn tenant_kubeconfig_is_honest() {
    let app = app().await;
    let admin = app.admin();
    let c = app.cluster("c1").await;
    let t = app.tenant(&c, json!({"name": "acme"})).await;
    let r = app
        .get(&format!("/api/v1/tenants/{}/kubeconfig", tid(&t)), &admin)
        .await;
    r.expect_kn(StatusCode::CONFLICT, "KN-409");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("Capsule Proxy")
    );
    let r = app
        .post(
            "/api/v1/clusters",
            &admin,
            json!({"name": "with-proxy", "kubeconfig": KUBECONFIG, "capsuleProxyEndpoint": "https://proxy.example.com:9001"}),
        )
        .await;
    r.expect(StatusCode::CREATED);
    assert_eq!(r.json()["proxy"]["url"], "https://proxy.example.com:9001");
    let c2 = r.json()["id"].as_str().unwrap().to_string();
    let t2 = app.tenant(&c2, json!({"name": "beta"})).await;
    // A proxy without its CA: no kubeconfig (issuance is tested in routes_kubeconfigs.rs).
    let r = app
        .get(&format!("/api/v1/tenants/{}/kubeconfig", tid(&t2)), &admin)
        .await;
    r.expect_kn(StatusCode::CONFLICT, "KN-409");
    assert!(r.text.contains("CA"), "{}", r.text);
    app.get("/api/v1/tenants/zz/kubeconfig", &admin)
        .await
        .expect_kn(StatusCode::BAD_REQUEST, "KN-400");
    app.get(
        &format!("/api/v1/tenants/{}/kubeconfig", TenantId::new()),
        &admin,
    )
    .await
    .expect_kn(StatusCode::NOT_FOUND, "KN-404");
    let other = app.token("o", &[Role::TenantOwner], &[TenantId::new()], &[]);
    app.get(&format!("/api/v1/tenants/{}/kubeconfig", tid(&t)), &other)
        .await
        .expect_kn(StatusCode::NOT_FOUND, "KN-404");
}

// ---------------------------------------------------------------------------------
// Catalog and audit
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn catalog_routes() {
    let app = app().await;
    let dev = app.token("d", &[Role::ProjectDev], &[], &[ProjectId::new()]);
    let r = app.get("/api/v1/plans", &dev).await;
    r.expect(StatusCode::OK);
    let plans = r.json();
    let names: Vec<&str> = plans["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["baseline", "gold", "platinum"]);
    let p1 = app.get("/api/v1/plans?limit=2", &dev).await.json();
    assert_eq!(p1["items"].as_array().unwrap().len(), 2);
    let p2 = app
        .get(
            &format!(
                "/api/v1/plans?limit=2&cursor={}",
                p1["nextCursor"].as_str().unwrap()
            ),
            &dev,
        )
        .await
        .json();
    assert_eq!(p2["items"][0]["name"], "platinum");
    assert!(p2["nextCursor"].is_null());
    let g = app.get("/api/v1/plans/gold", &dev).await;
    g.expect(StatusCode::OK);
    assert_eq!(g.json()["tenantQuotas"]["requests.cpu"], "6");
    app.get("/api/v1/plans/diamond", &dev)
        .await
        .expect_kn(StatusCode::NOT_FOUND, "KN-404");
    let ps = app.get("/api/v1/policysets", &dev).await;
    ps.expect(StatusCode::OK);
    assert!(
        ps.json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "tenant-isolation")
    );
    app.get("/api/v1/policysets/tenant-isolation", &dev)
        .await
        .expect(StatusCode::OK);
    app.get("/api/v1/policysets/deny-all", &dev)
        .await
        .expect_kn(StatusCode::NOT_FOUND, "KN-404");
    app.get("/api/v1/plans?cursor=@@", &dev)
        .await
        .expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
    app.send(Method::GET, "/api/v1/plans", None, None, &[])
        .await
        .expect_kn(StatusCode::UNAUTHORIZED, "KN-401");
}

#[tokio::test]
async fn audit_log() {
    let app = app().await;
    let admin = app.admin();
    let c = app.cluster("c1").await;
    let t = app.tenant(&c, json!({"name": "acme"})).await;
    app.put(
        &format!("/api/v1/tenants/{}/plan", tid(&t)),
        &admin,
        json!({"plan": "gold"}),
    )
    .await
    .expect(StatusCode::OK);
    let r = app.get("/api/v1/audit", &admin).await;
    r.expect(StatusCode::OK);
    let actions: Vec<String> = r.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    for a in ["cluster.create", "tenant.create", "tenant.plan.update"] {
        assert!(actions.iter().any(|x| x == a), "{a} not in {actions:?}");
    }
    let r = app
        .get(
            &format!("/api/v1/audit?resourceKind=tenant&resourceId={}", tid(&t)),
            &admin,
        )
        .await
        .json();
    assert_eq!(r["items"].as_array().unwrap().len(), 2);
    assert!(
        r["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["outcome"] == "success" && e["actor"] == "admin")
    );
    let p1 = app
        .get("/api/v1/audit?limit=1&resourceKind=tenant", &admin)
        .await
        .json();
    let p2 = app
        .get(
            &format!(
                "/api/v1/audit?limit=1&resourceKind=tenant&cursor={}",
                p1["nextCursor"].as_str().unwrap()
            ),
            &admin,
        )
        .await
        .json();
    assert_ne!(p1["items"][0]["id"], p2["items"][0]["id"]);
    let future = "2999-01-01T00:00:00Z";
    assert_eq!(
        app.get(&format!("/api/v1/audit?from={future}"), &admin)
            .await
            .json()["items"],
        json!([])
    );
    app.get("/api/v1/audit?from=yesterday", &admin)
        .await
        .expect_kn(StatusCode::BAD_REQUEST, "KN-400");
    app.get("/api/v1/audit?limit=9999", &admin)
        .await
        .expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
    app.get("/api/v1/audit", &app.token("ops", &[Role::Ops], &[], &[]))
        .await
        .expect_kn(StatusCode::FORBIDDEN, "KN-403");
    app.send(Method::GET, "/api/v1/audit", None, None, &[])
        .await
        .expect_kn(StatusCode::UNAUTHORIZED, "KN-401");
    // Mutations carry the request id in their audit event.
    let stored = app
        .store()
        .query_audit(&AuditQuery {
            actor: Some("admin".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(stored.items.iter().all(|e| !e.request_id.is_empty()));
}

#[test]
fn openapi_documents_every_operation_of_this_group() {
    let spec = serde_json::to_value(kubenova_manager::api::openapi()).unwrap();
    let ops = [
        ("get", "/api/v1/clusters", &["200", "401", "403"][..]),
        (
            "post",
            "/api/v1/clusters",
            &["201", "400", "401", "403", "409", "422"],
        ),
        (
            "get",
            "/api/v1/clusters/{clusterID}",
            &["200", "400", "401", "404"],
        ),
        (
            "delete",
            "/api/v1/clusters/{clusterID}",
            &["204", "400", "404", "409", "412"],
        ),
        (
            "get",
            "/api/v1/clusters/{clusterID}/capabilities",
            &["200", "404"],
        ),
        (
            "post",
            "/api/v1/clusters/{clusterID}/bootstrap/{component}",
            &["202", "404", "422"],
        ),
        (
            "post",
            "/api/v1/clusters/{clusterID}/refresh",
            &["202", "404"],
        ),
        (
            "get",
            "/api/v1/clusters/{clusterID}/tenants",
            &["200", "404"],
        ),
        (
            "post",
            "/api/v1/clusters/{clusterID}/tenants",
            &["201", "404", "409", "422"],
        ),
        (
            "get",
            "/api/v1/clusters/{clusterID}/tenants/{tenantID}",
            &["200", "404"],
        ),
        (
            "delete",
            "/api/v1/clusters/{clusterID}/tenants/{tenantID}",
            &["204", "404", "409", "412"],
        ),
        (
            "put",
            "/api/v1/clusters/{clusterID}/tenants/{tenantID}/owners",
            &["200", "404", "412", "422"],
        ),
        (
            "put",
            "/api/v1/clusters/{clusterID}/tenants/{tenantID}/quotas",
            &["200", "404", "412", "422"],
        ),
        (
            "put",
            "/api/v1/clusters/{clusterID}/tenants/{tenantID}/limits",
            &["200", "404", "412", "422"],
        ),
        (
            "put",
            "/api/v1/clusters/{clusterID}/tenants/{tenantID}/network-policies",
            &["200", "404", "412", "422"],
        ),
        (
            "get",
            "/api/v1/clusters/{clusterID}/tenants/{tenantID}/summary",
            &["200", "404"],
        ),
        (
            "get",
            "/api/v1/tenants/{tenantID}/kubeconfig",
            &["404", "409", "503"],
        ),
        (
            "get",
            "/api/v1/tenants/{tenantID}/usage",
            &["200", "400", "404"],
        ),
        (
            "put",
            "/api/v1/tenants/{tenantID}/plan",
            &["200", "404", "422"],
        ),
        ("get", "/api/v1/tenants", &["200", "403"]),
        ("get", "/api/v1/plans", &["200", "401"]),
        ("get", "/api/v1/plans/{name}", &["200", "404"]),
        ("get", "/api/v1/policysets", &["200", "401"]),
        ("get", "/api/v1/policysets/{name}", &["200", "404"]),
        ("post", "/api/v1/usage", &["202", "403", "422"]),
        ("get", "/api/v1/audit", &["200", "401", "403"]),
    ];
    for (method, path, statuses) in ops {
        let op = &spec["paths"][path][method];
        assert!(
            op.is_object(),
            "{method} {path} missing from the OpenAPI document"
        );
        assert!(op["operationId"].is_string(), "{method} {path}");
        assert!(
            op["tags"].as_array().is_some_and(|t| !t.is_empty()),
            "{method} {path}"
        );
        assert!(op["security"].is_array(), "{method} {path} has no security");
        for s in statuses {
            let resp = &op["responses"][*s];
            assert!(resp.is_object(), "{method} {path} does not document {s}");
            if s.starts_with('4') || s.starts_with('5') {
                let content = &resp["content"]["application/json"];
                assert_eq!(
                    content["schema"]["$ref"], "#/components/schemas/ErrorBody",
                    "{method} {path} {s}"
                );
                assert!(
                    content["example"]["code"]
                        .as_str()
                        .is_some_and(|c| c == format!("KN-{s}")),
                    "{method} {path} {s}"
                );
            }
        }
        if op.get("requestBody").is_some() {
            assert!(
                op["requestBody"]["content"]["application/json"]["example"].is_object(),
                "{method} {path} request example"
            );
        }
    }
}
