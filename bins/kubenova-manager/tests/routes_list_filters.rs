//! In-process tests (`oneshot` against `api::router`) of the list filters: `?name=` on the
//! lists of clusters, tenants (per cluster and across clusters), projects and apps, and
//! `?labelSelector=` on those of clusters, tenants and projects; bad values are KN-422
//! naming the parameter, and a filter only narrows what the caller may see.
#![allow(clippy::unwrap_used, missing_docs)]

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use kubenova_api::ids::{ProjectId, TenantId};
use kubenova_manager::api::AppState;
use kubenova_manager::api::authz::Role;
use kubenova_manager::api::config::ServerConfig;
use kubenova_store::crypto::{Kek, Keyring};
use serde_json::{Value, json};
use std::time::Duration;
use tower::ServiceExt;

const SECRET: &[u8] = b"routes-list-filters-test-secret-0123456789";

/// A registered cluster's kubeconfig (shared fixture; its token is a stand-in secret).
const KUBECONFIG: &str = include_str!("fixtures/cluster.kubeconfig");

struct App {
    state: AppState,
    router: axum::Router,
    admin: String,
    _dir: tempfile::TempDir,
}

struct Resp {
    status: StatusCode,
    body: Value,
    text: String,
}

impl Resp {
    #[track_caller]
    fn ok(&self) -> &Value {
        assert_eq!(self.status, StatusCode::OK, "body: {}", self.text);
        &self.body
    }

    /// The names of a list, in order.
    #[track_caller]
    fn names(&self) -> Vec<String> {
        self.ok()["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// Asserts a KN-422 with one violation of `field` whose reason contains `reason`.
    #[track_caller]
    fn violation(&self, field: &str, reason: &str) {
        assert_eq!(
            self.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            self.text
        );
        assert_eq!(self.body["code"], "KN-422", "{}", self.text);
        let v = self.body["details"]["violations"].as_array().unwrap();
        assert!(
            v.iter()
                .any(|v| v["field"] == field && v["reason"].as_str().unwrap().contains(reason)),
            "{field}: {reason}: {}",
            self.text
        );
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
    let admin = state
        .auth
        .mint("admin", &[Role::Admin], &[], &[], Duration::from_secs(600))
        .unwrap()
        .token;
    App {
        state,
        router,
        admin,
        _dir: dir,
    }
}

/// Percent-encodes a query value (the selectors hold spaces, `=`, `(`, `!`, `,`).
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl App {
    fn token(&self, roles: &[Role], tenants: &[TenantId], projects: &[ProjectId]) -> String {
        self.state
            .auth
            .mint(
                "someone",
                roles,
                tenants,
                projects,
                Duration::from_secs(600),
            )
            .unwrap()
            .token
    }

    async fn send(&self, method: Method, uri: &str, token: &str, body: Option<Value>) -> Resp {
        let b = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        let req = match body {
            Some(v) => b
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(v.to_string()))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Resp {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    async fn get(&self, uri: &str, token: &str) -> Resp {
        self.send(Method::GET, uri, token, None).await
    }

    async fn create(&self, uri: &str, body: Value) -> Value {
        let r = self.send(Method::POST, uri, &self.admin, Some(body)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{uri}: {}", r.text);
        r.body
    }

    async fn cluster(&self, name: &str, labels: Value) -> String {
        let c = self
            .create(
                "/api/v1/clusters",
                json!({"name": name, "labels": labels, "kubeconfig": KUBECONFIG}),
            )
            .await;
        c["id"].as_str().unwrap().to_string()
    }

    async fn tenant(&self, cluster: &str, name: &str, labels: Value) -> TenantId {
        let t = self
            .create(
                &format!("/api/v1/clusters/{cluster}/tenants"),
                json!({"name": name, "owners": ["alice@example.com"], "labels": labels}),
            )
            .await;
        t["id"].as_str().unwrap().parse().unwrap()
    }
}

/// `name` and `labelSelector` on the cluster and tenant lists, pages included.
#[tokio::test]
async fn clusters_and_tenants_by_name_and_labels() {
    let app = app().await;
    let admin = app.admin.clone();
    let eu = app
        .cluster("eu", json!({"env": "prod", "region": "eu"}))
        .await;
    let us = app
        .cluster("us", json!({"env": "prod", "region": "us"}))
        .await;
    app.cluster("lab", json!({"env": "dev"})).await;

    let r = app.get("/api/v1/clusters?name=eu", &admin).await;
    assert_eq!(r.names(), ["eu"]);
    let r = app.get("/api/v1/clusters?name=e", &admin).await;
    assert!(r.names().is_empty(), "exact names only");
    let sel = |s: &str| format!("/api/v1/clusters?labelSelector={}", enc(s));
    let mut names = app.get(&sel("env=prod"), &admin).await.names();
    names.sort();
    assert_eq!(names, ["eu", "us"]);
    assert_eq!(app.get(&sel("env!=prod"), &admin).await.names(), ["lab"]);
    assert_eq!(
        app.get(&sel("env in (prod), region notin (us)"), &admin)
            .await
            .names(),
        ["eu"]
    );
    assert_eq!(app.get(&sel("!region"), &admin).await.names(), ["lab"]);
    let r = app.get(&format!("{}&name=us", sel("region")), &admin).await;
    assert_eq!(r.names(), ["us"], "name and selector together");

    // Tenants: per cluster and across clusters, and pages of filtered results.
    for i in 0..5 {
        let tier = if i % 2 == 0 { "gold" } else { "silver" };
        app.tenant(&eu, &format!("t{i}"), json!({"tier": tier}))
            .await;
    }
    app.tenant(&us, "t0", json!({"tier": "gold"})).await;
    let r = app
        .get(&format!("/api/v1/clusters/{eu}/tenants?name=t0"), &admin)
        .await;
    assert_eq!(r.names(), ["t0"]);
    assert_eq!(r.ok()["items"][0]["clusterId"], eu.as_str());
    let r = app.get("/api/v1/tenants?name=t0", &admin).await;
    assert_eq!(r.names(), ["t0", "t0"], "one per cluster");
    let r = app
        .get(&format!("/api/v1/tenants?name=t0&clusterId={us}"), &admin)
        .await;
    assert_eq!(r.names(), ["t0"]);
    assert_eq!(r.ok()["items"][0]["clusterId"], us.as_str());

    // Gold tenants of eu, two per page: t0, t2, t4 in id (creation) order.
    let mut url = format!(
        "/api/v1/clusters/{eu}/tenants?limit=2&labelSelector={}",
        enc("tier=gold")
    );
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let r = app.get(&url, &admin).await;
        pages += 1;
        seen.extend(r.names());
        match r.ok()["nextCursor"].as_str() {
            Some(c) => {
                assert_eq!(r.names().len(), 2, "a page before the last is full");
                url = format!(
                    "/api/v1/clusters/{eu}/tenants?limit=2&labelSelector={}&cursor={c}",
                    enc("tier=gold")
                );
            }
            None => break,
        }
    }
    assert_eq!(seen, ["t0", "t2", "t4"]);
    assert_eq!(pages, 2);
    let r = app
        .get(
            &format!("/api/v1/tenants?labelSelector={}", enc("tier notin (gold)")),
            &admin,
        )
        .await;
    assert_eq!(r.names(), ["t1", "t3"]);
}

/// `name` and `labelSelector` on the project list, `name` on the app list.
#[tokio::test]
async fn projects_by_name_and_labels_apps_by_name() {
    let app = app().await;
    let admin = app.admin.clone();
    let c = app.cluster("eu", json!({})).await;
    let t = app.tenant(&c, "acme", json!({})).await;
    let projects = format!("/api/v1/clusters/{c}/tenants/{t}/projects");
    let web = app
        .create(&projects, json!({"name": "web", "labels": {"team": "a"}}))
        .await;
    app.create(&projects, json!({"name": "api", "labels": {"team": "b"}}))
        .await;
    app.create(&projects, json!({"name": "batch"})).await;

    assert_eq!(
        app.get(&format!("{projects}?name=api"), &admin)
            .await
            .names(),
        ["api"]
    );
    let r = app
        .get(
            &format!("{projects}?labelSelector={}", enc("team in (a,b)")),
            &admin,
        )
        .await;
    assert_eq!(r.names(), ["web", "api"]);
    let r = app
        .get(
            &format!("{projects}?labelSelector={}", enc("!team")),
            &admin,
        )
        .await;
    assert_eq!(r.names(), ["batch"]);

    let apps = format!("{projects}/{}/apps", web["id"].as_str().unwrap());
    app.create(&apps, json!({"name": "frontend", "image": "nginx:1.27"}))
        .await;
    app.create(&apps, json!({"name": "backend", "image": "nginx:1.27"}))
        .await;
    assert_eq!(
        app.get(&format!("{apps}?name=backend"), &admin)
            .await
            .names(),
        ["backend"]
    );
    assert!(
        app.get(&format!("{apps}?name=back"), &admin)
            .await
            .names()
            .is_empty()
    );
    assert_eq!(app.get(&apps, &admin).await.names().len(), 2);
    // Apps have no labels: a selector is refused, not ignored.
    app.get(&format!("{apps}?labelSelector=tier"), &admin)
        .await
        .violation("labelSelector", "apps have no labels");
}

/// Bad names and selectors are KN-422 naming the parameter and what is wrong; every bad
/// parameter is reported at once.
#[tokio::test]
async fn bad_filters_are_kn_422_naming_the_parameter() {
    let app = app().await;
    let admin = app.admin.clone();
    let c = app.cluster("eu", json!({})).await;
    let t = app.tenant(&c, "acme", json!({})).await;
    let projects = format!("/api/v1/clusters/{c}/tenants/{t}/projects");
    let p = app.create(&projects, json!({"name": "web"})).await;
    let apps = format!("{projects}/{}/apps", p["id"].as_str().unwrap());
    let lists = [
        "/api/v1/clusters".to_string(),
        format!("/api/v1/clusters/{c}/tenants"),
        "/api/v1/tenants".to_string(),
        projects.clone(),
    ];
    for list in lists.iter().chain([&apps]) {
        app.get(&format!("{list}?name=Acme"), &admin)
            .await
            .violation("name", "is not a DNS-1123 label");
        app.get(
            &format!("{list}?name={}", enc("a'; DROP TABLE tenants; --")),
            &admin,
        )
        .await
        .violation("name", "is not a DNS-1123 label");
        app.get(&format!("{list}?name={}", "a".repeat(64)), &admin)
            .await
            .violation("name", "at most 63 characters");
    }
    let cases = [
        ("tier in (gold", "missing ')'"),
        ("tier>1", "is not supported"),
        ("tier=gold,", "a requirement must follow the ','"),
        ("Bad_Prefix/x", "is not a label key"),
        ("tier=-gold", "is not a valid label value"),
        ("!tier=gold", "'!key' takes no value"),
    ];
    for list in &lists {
        for (selector, reason) in cases {
            app.get(&format!("{list}?labelSelector={}", enc(selector)), &admin)
                .await
                .violation("labelSelector", reason);
        }
        let long = format!("k in ({})", vec!["v"; 600].join(","));
        app.get(&format!("{list}?labelSelector={}", enc(&long)), &admin)
            .await
            .violation("labelSelector", "at most 1024 characters");
        let many: Vec<String> = (0..33).map(|i| format!("k{i}")).collect();
        app.get(
            &format!("{list}?labelSelector={}", enc(&many.join(","))),
            &admin,
        )
        .await
        .violation("labelSelector", "at most 32 requirements");
        // Every bad parameter at once.
        let r = app
            .get(
                &format!("{list}?limit=0&name=Acme&labelSelector={}", enc("a in b")),
                &admin,
            )
            .await;
        r.violation("limit", "at least 1");
        r.violation("name", "DNS-1123");
        r.violation("labelSelector", "expected '(' after 'in'");
    }
    // The empty selector selects everything.
    assert_eq!(
        app.get("/api/v1/clusters?labelSelector=", &admin)
            .await
            .names(),
        ["eu"]
    );
}

/// A filter narrows what the caller may see and nothing more: a scoped principal asking
/// for another tenant by name (or by its labels) gets an empty list, not that tenant.
#[tokio::test]
async fn filters_never_widen_the_callers_scope() {
    let app = app().await;
    let c = app.cluster("eu", json!({})).await;
    let mine = app.tenant(&c, "mine", json!({"tier": "gold"})).await;
    let theirs = app.tenant(&c, "theirs", json!({"tier": "gold"})).await;
    let projects = |t: TenantId| format!("/api/v1/clusters/{c}/tenants/{t}/projects");
    let p1 = app
        .create(
            &projects(mine),
            json!({"name": "p1", "labels": {"team": "a"}}),
        )
        .await;
    app.create(
        &projects(mine),
        json!({"name": "p2", "labels": {"team": "a"}}),
    )
    .await;
    app.create(&projects(theirs), json!({"name": "p1"})).await;

    for token in [
        app.token(&[Role::TenantOwner], &[mine], &[]),
        app.token(&[Role::ReadOnly], &[mine], &[]),
    ] {
        for list in [
            "/api/v1/tenants".to_string(),
            format!("/api/v1/clusters/{c}/tenants"),
        ] {
            let r = app.get(&format!("{list}?name=theirs"), &token).await;
            assert!(r.names().is_empty(), "{list}: {}", r.text);
            assert!(r.ok()["nextCursor"].is_null());
            assert_eq!(
                app.get(&format!("{list}?name=mine"), &token).await.names(),
                ["mine"]
            );
            let r = app
                .get(
                    &format!("{list}?labelSelector={}", enc("tier=gold")),
                    &token,
                )
                .await;
            assert_eq!(r.names(), ["mine"], "{list}: only what the caller sees");
        }
        // Another tenant's projects stay out of reach, filter or not.
        let r = app
            .get(&format!("{}?name=p1", projects(theirs)), &token)
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    }

    // A project-scoped developer sees only its own project, filtered in its scope.
    let p1_id: ProjectId = p1["id"].as_str().unwrap().parse().unwrap();
    let dev = app.token(&[Role::ProjectDev], &[], &[p1_id]);
    let r = app
        .get(
            &format!("{}?labelSelector={}", projects(mine), enc("team=a")),
            &dev,
        )
        .await;
    assert_eq!(r.names(), ["p1"], "not p2, which has the same labels");
    let r = app.get(&format!("{}?name=p2", projects(mine)), &dev).await;
    assert!(r.names().is_empty(), "{}", r.text);
    let r = app.get("/api/v1/clusters?name=eu", &dev).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
}
