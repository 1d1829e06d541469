//! In-process tests (`oneshot` against `api::router`, a fresh SQLite store per test, the
//! testkit as the cluster where one is needed) of what a first day with KubeNova needs:
//! registering a cluster with a raw kubeconfig upload, replacing a registered cluster's
//! kubeconfig, and one body rule for every list-replacing PUT.
#![allow(clippy::unwrap_used, missing_docs)]

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use kubenova_api::ids::{ProjectId, TenantId};
use kubenova_manager::api::AppState;
use kubenova_manager::api::authz::Role;
use kubenova_manager::api::config::ServerConfig;
use kubenova_store::crypto::{Kek, Keyring};
use kubenova_store::{AuditQuery, Store};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

const SECRET: &[u8] = b"routes-clusters-test-secret-0123456789abcdef";

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
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
    #[track_caller]
    fn expect(&self, status: StatusCode) -> Value {
        assert_eq!(self.status, status, "body: {}", self.text);
        self.json()
    }
    #[track_caller]
    fn expect_kn(&self, status: StatusCode, code: &str) -> Value {
        assert_eq!(self.status, status, "body: {}", self.text);
        let v = self.json();
        assert_eq!(v["code"], code, "body: {}", self.text);
        v
    }
    /// The fields named by a KN-422.
    #[track_caller]
    fn violations(&self) -> Vec<String> {
        let v = self.expect_kn(StatusCode::UNPROCESSABLE_ENTITY, "KN-422");
        v["details"]["violations"]
            .as_array()
            .unwrap_or_else(|| panic!("no violations: {}", self.text))
            .iter()
            .map(|x| x["field"].as_str().unwrap().to_string())
            .collect()
    }
}

async fn app_with(cfg: ServerConfig) -> App {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keyring::new(vec![Kek::new("k1", &[7u8; 32]).unwrap()]).unwrap();
    let store = kubenova_store::connect(
        &format!("sqlite://{}", dir.path().join("kn.db").display()),
        keys,
    )
    .await
    .unwrap();
    let cfg = ServerConfig {
        rate_limit_subject_rps: 0,
        rate_limit_ip_rps: 0,
        ..cfg
    };
    let state = kubenova_manager::test_state(store, cfg, SECRET);
    let router = kubenova_manager::api::router(state.clone());
    App {
        state,
        router,
        _dir: dir,
    }
}

async fn app() -> App {
    app_with(ServerConfig::default()).await
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

    /// Any request: `body` is sent as is with `content_type` (none when `None`).
    async fn raw(
        &self,
        method: Method,
        uri: &str,
        token: &str,
        content_type: Option<&str>,
        body: impl Into<Vec<u8>>,
        extra: &[(&str, &str)],
    ) -> Resp {
        let mut b = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        if let Some(ct) = content_type {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        let resp = self
            .router
            .clone()
            .oneshot(b.body(Body::from(body.into())).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Resp {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn json(&self, method: Method, uri: &str, token: &str, body: Value) -> Resp {
        self.raw(
            method,
            uri,
            token,
            Some("application/json"),
            body.to_string(),
            &[],
        )
        .await
    }

    async fn get(&self, uri: &str) -> Value {
        let r = self
            .raw(Method::GET, uri, &self.admin(), None, "", &[])
            .await;
        r.expect(StatusCode::OK)
    }

    async fn cluster_named(&self, name: &str, kubeconfig: &str) -> String {
        let r = self
            .json(
                Method::POST,
                "/api/v1/clusters",
                &self.admin(),
                json!({"name": name, "kubeconfig": kubeconfig}),
            )
            .await;
        r.expect(StatusCode::CREATED)["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn cluster_names(&self) -> Vec<String> {
        self.get("/api/v1/clusters").await["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// The stored kubeconfig (surrounding whitespace of a raw YAML is not kept).
    async fn stored_kubeconfig(&self, id: &str) -> String {
        let k = self
            .store()
            .cluster_kubeconfig(id.parse().unwrap())
            .await
            .unwrap();
        let mut text = String::from_utf8(k.to_vec()).unwrap();
        text.truncate(text.trim_end().len());
        text.push('\n');
        text
    }

    async fn audit_actions(&self) -> Vec<(String, String, Option<u16>)> {
        self.store()
            .query_audit(&AuditQuery::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|e| {
                (
                    e.action,
                    serde_json::to_value(e.outcome)
                        .unwrap()
                        .as_str()
                        .unwrap()
                        .to_string(),
                    e.http_status,
                )
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------
// Registration with a raw kubeconfig upload
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_cluster_registers_with_a_raw_kubeconfig_upload() {
    let app = app().await;
    let admin = app.admin();

    // `kubectl config view --raw --minify | curl --data-binary @- -H 'Content-Type: application/yaml'`
    let r = app
        .raw(
            Method::POST,
            "/api/v1/clusters?name=prod-eu-1&datacenter=eu-west&labels=env%3Dprod,team%3Dcore",
            &admin,
            Some("application/yaml"),
            KUBECONFIG,
            &[],
        )
        .await;
    let c = r.expect(StatusCode::CREATED);
    assert_eq!(c["name"], "prod-eu-1");
    assert_eq!(c["datacenter"], "eu-west");
    assert_eq!(c["labels"], json!({"env": "prod", "team": "core"}));
    assert_eq!(c["status"], "pending_bootstrap");
    assert!(!r.text.contains("super-secret"), "{}", r.text);
    let id = c["id"].as_str().unwrap().to_string();
    assert_eq!(r.header("location"), format!("/api/v1/clusters/{id}"));
    assert_eq!(app.stored_kubeconfig(&id).await, KUBECONFIG);

    // `application/x-yaml` (with a charset) is the same; labels and datacenter are optional.
    let r = app
        .raw(
            Method::POST,
            "/api/v1/clusters?name=kind",
            &admin,
            Some("application/x-yaml; charset=utf-8"),
            KUBECONFIG,
            &[],
        )
        .await;
    let c = r.expect(StatusCode::CREATED);
    assert_eq!(c["datacenter"], "");
    assert_eq!(c["labels"], json!({}));

    // Every bad upload is a KN error naming what to fix, and creates nothing.
    let before = app.cluster_names().await;
    let bad_yaml = |q: &str, body: &str| {
        let uri = format!("/api/v1/clusters{q}");
        let body = body.to_string();
        let app = &app;
        let admin = admin.clone();
        async move {
            app.raw(
                Method::POST,
                &uri,
                &admin,
                Some("application/yaml"),
                body,
                &[],
            )
            .await
        }
    };
    assert_eq!(bad_yaml("", KUBECONFIG).await.violations(), ["name"]);
    assert_eq!(
        bad_yaml("?name=Bad_Name", KUBECONFIG).await.violations(),
        ["name"]
    );
    assert!(
        bad_yaml("?name=x&labels=env", KUBECONFIG)
            .await
            .violations()
            .contains(&"labels".to_string())
    );
    assert!(
        bad_yaml("?name=x&labels=bad%20key%3Dv", KUBECONFIG)
            .await
            .violations()
            .iter()
            .any(|f| f.starts_with("labels"))
    );
    assert_eq!(
        bad_yaml(
            "?name=x",
            &KUBECONFIG.replace(
                "    server:",
                "    insecure-skip-tls-verify: true\n    server:"
            )
        )
        .await
        .violations(),
        ["kubeconfig.clusters[0].cluster.insecure-skip-tls-verify"]
    );
    assert_eq!(bad_yaml("?name=x", "").await.violations(), ["kubeconfig"]);
    let r = bad_yaml("?name=x", "clusters: [unclosed\n  token: super-secret").await;
    assert_eq!(r.violations(), ["kubeconfig"]);
    assert!(!r.text.contains("super-secret"), "{}", r.text);
    // An unknown query parameter is named.
    let r = bad_yaml("?name=x&colour=blue", KUBECONFIG).await;
    let v = r.expect_kn(StatusCode::BAD_REQUEST, "KN-400");
    assert!(v["message"].as_str().unwrap().contains("colour"), "{v}");
    // Not UTF-8.
    let r = app
        .raw(
            Method::POST,
            "/api/v1/clusters?name=x",
            &admin,
            Some("application/yaml"),
            vec![0xff, 0xfe, 0x00],
            &[],
        )
        .await;
    assert_eq!(r.violations(), ["kubeconfig"]);
    // Another content type: KN-415 naming the accepted ones.
    let r = app
        .raw(
            Method::POST,
            "/api/v1/clusters?name=x",
            &admin,
            Some("text/plain"),
            KUBECONFIG,
            &[],
        )
        .await;
    let v = r.expect_kn(StatusCode::UNSUPPORTED_MEDIA_TYPE, "KN-415");
    let m = v["message"].as_str().unwrap();
    assert!(
        m.contains("application/json") && m.contains("application/yaml"),
        "{m}"
    );
    // JSON takes everything from the body: query parameters there are refused, not ignored.
    let r = app
        .json(
            Method::POST,
            "/api/v1/clusters?name=other",
            &admin,
            json!({"name": "x", "kubeconfig": KUBECONFIG}),
        )
        .await;
    let v = r.expect_kn(StatusCode::BAD_REQUEST, "KN-400");
    assert!(v["message"].as_str().unwrap().contains("name"), "{v}");
    // Only admin and ops register.
    let ro = app.token("ro", &[Role::ReadOnly], &[], &[]);
    app.raw(
        Method::POST,
        "/api/v1/clusters?name=x",
        &ro,
        Some("application/yaml"),
        KUBECONFIG,
        &[],
    )
    .await
    .expect_kn(StatusCode::FORBIDDEN, "KN-403");
    assert_eq!(
        app.cluster_names().await,
        before,
        "failed uploads change nothing"
    );
}

// ---------------------------------------------------------------------------------
// Replacing a registered cluster's kubeconfig
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_clusters_kubeconfig_is_replaced_validated_audited_and_never_returned() {
    let app = app().await;
    let admin = app.admin();
    let id = app.cluster_named("prod", KUBECONFIG).await;
    let uri = format!("/api/v1/clusters/{id}/kubeconfig");
    let rotated = KUBECONFIG.replace("super-secret-cluster-token", "super-secret-rotated-token");

    // JSON, as at registration (base64 or YAML in `kubeconfig`).
    let r = app
        .json(Method::PUT, &uri, &admin, json!({"kubeconfig": rotated}))
        .await;
    let c = r.expect(StatusCode::OK);
    assert_eq!(c["id"], id.as_str());
    assert_eq!(c["version"], 2);
    assert_eq!(r.header("etag"), "\"2\"");
    assert!(c.get("kubeconfig").is_none());
    assert!(!r.text.contains("super-secret"), "{}", r.text);
    assert_eq!(app.stored_kubeconfig(&id).await, rotated);
    assert!(
        c["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["type"] == "KubeconfigReplaced" && x["status"] == "True"),
        "{c}"
    );

    // A raw upload, with If-Match; ops may rotate too.
    let ops = app.token("ops", &[Role::Ops], &[], &[]);
    let r = app
        .raw(
            Method::PUT,
            &uri,
            &ops,
            Some("application/yaml"),
            KUBECONFIG,
            &[("if-match", "\"2\"")],
        )
        .await;
    assert_eq!(r.expect(StatusCode::OK)["version"], 3);
    assert_eq!(app.stored_kubeconfig(&id).await, KUBECONFIG);

    // Every bad input is a KN error and changes nothing (record, kubeconfig, audit log).
    let audit_before = app.audit_actions().await;
    let stale = app
        .raw(
            Method::PUT,
            &uri,
            &admin,
            Some("application/yaml"),
            rotated.clone(),
            &[("if-match", "\"2\"")],
        )
        .await;
    stale.expect_kn(StatusCode::PRECONDITION_FAILED, "KN-412");
    let insecure = app
        .json(
            Method::PUT,
            &uri,
            &admin,
            json!({"kubeconfig": rotated.replace("    server:", "    insecure-skip-tls-verify: true\n    server:")}),
        )
        .await;
    assert_eq!(
        insecure.violations(),
        ["kubeconfig.clusters[0].cluster.insecure-skip-tls-verify"]
    );
    assert!(!insecure.text.contains("super-secret"), "{}", insecure.text);
    let exec = app
        .raw(
            Method::PUT,
            &uri,
            &admin,
            Some("application/yaml"),
            rotated.replace(
                "    token: super-secret-rotated-token\n",
                "    exec:\n      command: sh\n",
            ),
            &[],
        )
        .await;
    assert_eq!(exec.violations(), ["kubeconfig.users[0].user.exec"]);
    let unknown = app
        .json(
            Method::PUT,
            &uri,
            &admin,
            json!({"kubeconfig": rotated, "name": "renamed"}),
        )
        .await;
    assert_eq!(unknown.violations(), ["name"]);
    let empty = app
        .json(Method::PUT, &uri, &admin, json!({"kubeconfig": ""}))
        .await;
    assert_eq!(empty.violations(), ["kubeconfig"]);
    app.raw(
        Method::PUT,
        &uri,
        &admin,
        Some("text/plain"),
        rotated.clone(),
        &[],
    )
    .await
    .expect_kn(StatusCode::UNSUPPORTED_MEDIA_TYPE, "KN-415");
    app.raw(
        Method::PUT,
        &uri,
        &admin,
        Some("application/yaml"),
        rotated.clone(),
        &[("if-match", "not-an-etag")],
    )
    .await
    .expect_kn(StatusCode::BAD_REQUEST, "KN-400");
    for t in [
        app.token("ro", &[Role::ReadOnly], &[], &[]),
        app.token("o", &[Role::TenantOwner], &[TenantId::new()], &[]),
    ] {
        app.raw(
            Method::PUT,
            &uri,
            &t,
            Some("application/yaml"),
            rotated.clone(),
            &[],
        )
        .await
        .expect_kn(StatusCode::FORBIDDEN, "KN-403");
    }
    app.raw(
        Method::PUT,
        &format!("/api/v1/clusters/{}/kubeconfig", uuid::Uuid::now_v7()),
        &admin,
        Some("application/yaml"),
        rotated.clone(),
        &[],
    )
    .await
    .expect_kn(StatusCode::NOT_FOUND, "KN-404");
    app.raw(
        Method::PUT,
        "/api/v1/clusters/nope/kubeconfig",
        &admin,
        Some("application/yaml"),
        rotated.clone(),
        &[],
    )
    .await
    .expect_kn(StatusCode::BAD_REQUEST, "KN-400");
    assert_eq!(app.stored_kubeconfig(&id).await, KUBECONFIG);
    assert_eq!(
        app.get(&format!("/api/v1/clusters/{id}")).await["version"],
        3
    );

    // Two successful rotations, audited with who and never with the kubeconfig.
    let events = app
        .store()
        .query_audit(&AuditQuery::default())
        .await
        .unwrap()
        .items;
    let rotations: Vec<_> = events
        .iter()
        .filter(|e| e.action == "cluster.kubeconfig.replace")
        .collect();
    assert_eq!(rotations.len(), 2, "{events:?}");
    assert_eq!(
        rotations
            .iter()
            .map(|e| e.actor.as_str())
            .collect::<Vec<_>>(),
        ["admin", "ops"]
    );
    assert!(
        rotations
            .iter()
            .all(|e| e.resource_id == id && e.http_status == Some(200))
    );
    let all = serde_json::to_string(&events).unwrap();
    assert!(!all.contains("super-secret"), "{all}");
    // The failures after `audit_before` were audited as failures or denials, never as a change.
    let after = app.audit_actions().await;
    assert!(
        after[audit_before.len()..]
            .iter()
            .all(|(_, outcome, _)| outcome != "success"),
        "{after:?}"
    );
}

/// The next bootstrap uses the replaced kubeconfig: a cluster registered with a credential
/// the API server refuses fails to bootstrap; after the replacement it bootstraps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_bootstrap_uses_the_replaced_kubeconfig() {
    let cluster = kubenova_testkit::TestCluster::start().await.unwrap();
    let app = app_with(ServerConfig {
        agent_manager_url: Some("https://kubenova.example.com".into()),
        ..ServerConfig::default()
    })
    .await;
    let admin = app.admin();
    let good = cluster.kubeconfig_yaml();
    let refused = good.replace(cluster.admin_token(), "a-token-the-cluster-refuses");
    assert_ne!(good, refused);
    let id = app.cluster_named("kit", &refused).await;
    let bootstrap = format!("/api/v1/clusters/{id}/bootstrap/operator");

    let r = app
        .raw(Method::POST, &bootstrap, &admin, None, "", &[])
        .await;
    assert_ne!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let c = app.get(&format!("/api/v1/clusters/{id}")).await;
    let cond = c["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["type"] == "Bootstrapped")
        .cloned()
        .unwrap();
    assert_eq!(cond["reason"], "Unauthorized", "{c}");

    app.raw(
        Method::PUT,
        &format!("/api/v1/clusters/{id}/kubeconfig"),
        &admin,
        Some("application/yaml"),
        good.clone(),
        &[],
    )
    .await
    .expect(StatusCode::OK);
    let r = app
        .raw(Method::POST, &bootstrap, &admin, None, "", &[])
        .await;
    let v = r.expect(StatusCode::ACCEPTED);
    assert_eq!(v["status"], "applied", "{v}");
    assert!(!r.text.contains(cluster.admin_token()));
}

// ---------------------------------------------------------------------------------
// One rule for every list-replacing PUT: `[...]` or `{"<field>": [...]}`
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn every_list_replacing_put_takes_an_array_or_an_object() {
    let app = app().await;
    let admin = app.admin();
    let cid = app.cluster_named("c1", KUBECONFIG).await;
    let t = app
        .json(
            Method::POST,
            &format!("/api/v1/clusters/{cid}/tenants"),
            &admin,
            json!({"name": "acme", "owners": ["alice@example.com"]}),
        )
        .await
        .expect(StatusCode::CREATED);
    let tpath = format!(
        "/api/v1/clusters/{cid}/tenants/{}",
        t["id"].as_str().unwrap()
    );
    let p = app
        .json(
            Method::POST,
            &format!("{tpath}/projects"),
            &admin,
            json!({"name": "web"}),
        )
        .await
        .expect(StatusCode::CREATED);
    let ppath = format!("{tpath}/projects/{}", p["id"].as_str().unwrap());
    let a = app
        .json(
            Method::POST,
            &format!("{ppath}/apps"),
            &admin,
            json!({"name": "site", "image": "nginx:1.27"}),
        )
        .await
        .expect(StatusCode::CREATED);
    let apath = format!("{ppath}/apps/{}", a["id"].as_str().unwrap());

    // (route, field, a valid list, where the list shows in the answer, an invalid item)
    let cases: Vec<(String, &str, Value, &str, Value)> = vec![
        (
            format!("{tpath}/owners"),
            "owners",
            json!(["bob@example.com", "group:acme-admins"]),
            "/owners",
            json!("group:"),
        ),
        (
            format!("{tpath}/network-policies"),
            "policies",
            json!(["tenant-isolation"]),
            "/overrides/networkPolicies",
            json!("no-such-policyset"),
        ),
        (
            format!("{ppath}/access"),
            "access",
            json!(["bob@example.com", "viewer:group:auditors"]),
            "/access",
            json!("viewer:group:"),
        ),
        (
            format!("{apath}/traits"),
            "traits",
            json!([{"type": "scaler", "properties": {"replicas": 2}}]),
            "/spec/traits",
            json!({"type": "Not_A_Type"}),
        ),
        (
            format!("{apath}/policies"),
            "policies",
            json!([{"name": "gc", "type": "garbage-collect", "properties": {}}]),
            "/spec/policies",
            json!({"name": "gc", "type": "garbage-collect", "properties": 3}),
        ),
    ];
    for (route, field, list, shown, bad_item) in cases {
        let owner = route.rsplit_once('/').unwrap().0.to_string();
        // The bare array.
        let r = app.json(Method::PUT, &route, &admin, list.clone()).await;
        let v = r.expect(StatusCode::OK);
        assert_eq!(v.pointer(shown), Some(&list), "{route} with an array: {v}");
        // The object form, here with an empty list.
        let r = app
            .json(Method::PUT, &route, &admin, json!({ field: [] }))
            .await;
        let v = r.expect(StatusCode::OK);
        assert_eq!(
            v.pointer(shown),
            Some(&json!([])),
            "{route} with an object: {v}"
        );
        // Back to the list, then bad inputs: each a KN error naming the field, none a change.
        app.json(Method::PUT, &route, &admin, list.clone())
            .await
            .expect(StatusCode::OK);
        let version = app.get(&owner).await["version"].clone();
        let mut items = list.as_array().unwrap().clone();
        items.push(bad_item.clone());
        let named = |fields: Vec<String>, want: &str| {
            assert!(
                fields.iter().any(|f| f.starts_with(want)),
                "{route}: {want} not in {fields:?}"
            );
        };
        let bad_index = format!("{field}[{}]", items.len() - 1);
        named(
            app.json(Method::PUT, &route, &admin, Value::Array(items.clone()))
                .await
                .violations(),
            &bad_index,
        );
        named(
            app.json(Method::PUT, &route, &admin, json!({ field: items }))
                .await
                .violations(),
            &bad_index,
        );
        named(
            app.json(Method::PUT, &route, &admin, json!({"wrong": list}))
                .await
                .violations(),
            "wrong",
        );
        for scalar in [json!("x"), json!(42), json!(true)] {
            let r = app.json(Method::PUT, &route, &admin, scalar).await;
            let fields = r.violations();
            assert_eq!(fields, ["body"], "{route}: {}", r.text);
            assert!(
                r.text.contains(&format!("{{\\\"{field}\\\": [...]}}")),
                "{route}: the message names both forms: {}",
                r.text
            );
        }
        let r = app
            .raw(
                Method::PUT,
                &route,
                &admin,
                Some("application/json"),
                "[",
                &[],
            )
            .await;
        r.expect_kn(StatusCode::BAD_REQUEST, "KN-400");
        assert_eq!(
            app.get(&owner).await["version"],
            version,
            "{route}: bad inputs change nothing"
        );
    }
}

// ---------------------------------------------------------------------------------
// Bootstrap: the URL agents are told, preconditions, and the recorded outcome
// ---------------------------------------------------------------------------------

/// Registers the testkit cluster with `app` and returns its id.
async fn register_kit(app: &App, cluster: &kubenova_testkit::TestCluster, name: &str) -> String {
    app.cluster_named(name, &cluster.kubeconfig_yaml()).await
}

async fn agent_secret(cluster: &kubenova_testkit::TestCluster) -> Option<String> {
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(cluster.client().unwrap(), "kubenova-system");
    let s = secrets.get_opt("kubenova-agent").await.unwrap()?;
    Some(String::from_utf8(s.data.unwrap()["managerUrl"].0.clone()).unwrap())
}

/// Without `--agent-manager-url` and `--external-url`, a manager listening on loopback
/// tells the operator its own listen address, and says so; what cannot work is refused
/// before anything is applied, with a precondition error naming the option to set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_tells_agents_a_url_they_can_use_or_says_what_to_configure() {
    let cluster = kubenova_testkit::TestCluster::start().await.unwrap();
    let refusals: Vec<(ServerConfig, &str)> = vec![
        (
            ServerConfig {
                listen: "0.0.0.0:8080".parse().unwrap(),
                ..ServerConfig::default()
            },
            "--agent-manager-url",
        ),
        (
            ServerConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                ..ServerConfig::default()
            },
            "--agent-manager-url",
        ),
        (
            ServerConfig {
                agent_manager_url: Some("http://10.1.2.3:8080".into()),
                ..ServerConfig::default()
            },
            "https://",
        ),
        (
            ServerConfig {
                external_url: Some("http://kubenova.example.com".into()),
                ..ServerConfig::default()
            },
            "https://",
        ),
        (
            ServerConfig {
                agent_manager_url: Some("https://kubenova.example.com".into()),
                agent_manager_ca_file: Some("/nonexistent/manager-ca.pem".into()),
                ..ServerConfig::default()
            },
            "--agent-manager-ca-file",
        ),
    ];
    for (cfg, names) in refusals {
        let app = app_with(cfg.clone()).await;
        let id = register_kit(&app, &cluster, "kit").await;
        let before = app.get(&format!("/api/v1/clusters/{id}")).await;
        let r = app
            .raw(
                Method::POST,
                &format!("/api/v1/clusters/{id}/bootstrap/operator"),
                &app.admin(),
                None,
                "",
                &[],
            )
            .await;
        let v = r.expect_kn(StatusCode::CONFLICT, "KN-409");
        let message = v["message"].as_str().unwrap();
        assert!(message.contains(names), "{cfg:?}: {message}");
        assert_eq!(v["details"]["precondition"], "manager-configuration", "{v}");
        assert!(
            v["details"]["option"].as_str().unwrap().starts_with("--"),
            "{v}"
        );
        assert_eq!(
            app.get(&format!("/api/v1/clusters/{id}")).await,
            before,
            "{cfg:?}: a refused bootstrap changes nothing"
        );
        assert_eq!(
            agent_secret(&cluster).await,
            None,
            "{cfg:?}: nothing applied"
        );
        let events = app.audit_actions().await;
        assert_eq!(
            events.last().map(|(_, o, s)| (o.as_str(), *s)),
            Some(("failed", Some(409))),
            "{events:?}"
        );
    }

    // Loopback, nothing configured: the listen address, said in the answer and the Secret.
    let app = app().await;
    let id = register_kit(&app, &cluster, "kit").await;
    let r = app
        .raw(
            Method::POST,
            &format!("/api/v1/clusters/{id}/bootstrap/operator"),
            &app.admin(),
            None,
            "",
            &[],
        )
        .await;
    let v = r.expect(StatusCode::ACCEPTED);
    assert_eq!(v["status"], "applied", "{v}");
    assert_eq!(v["agentManagerUrl"], "http://127.0.0.1:8080", "{v}");
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains("--listen") && message.contains("--agent-manager-url"),
        "{message}"
    );
    assert_eq!(
        agent_secret(&cluster).await.as_deref(),
        Some("http://127.0.0.1:8080")
    );

    // The operation documents the precondition as KN-409, and no 5xx for it.
    let spec = serde_json::to_value(kubenova_manager::api::openapi()).unwrap();
    let responses =
        &spec["paths"]["/api/v1/clusters/{clusterID}/bootstrap/{component}"]["post"]["responses"];
    let conflict = responses["409"].to_string();
    assert!(conflict.contains("--agent-manager-url"), "{conflict}");
    assert!(responses.get("503").is_none(), "{responses}");
}

/// A failed bootstrap is answered and audited as the failure it is, with its KN code; a
/// retry with the same Idempotency-Key tries again instead of replaying the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_bootstrap_is_answered_and_audited_as_a_failure() {
    let cluster = kubenova_testkit::TestCluster::start().await.unwrap();
    let app = app_with(ServerConfig {
        agent_manager_url: Some("https://kubenova.example.com".into()),
        ..ServerConfig::default()
    })
    .await;
    let admin = app.admin();
    let id = register_kit(&app, &cluster, "kit").await;
    let uri = format!("/api/v1/clusters/{id}/bootstrap/operator");

    // The kubeconfig's identity may not create ClusterRoles: KN-409 naming the cause.
    let forbid = cluster.faults().inject(
        kubenova_testkit::Fault::writes()
            .resource("clusterroles")
            .status(403),
    );
    let r = app
        .raw(
            Method::POST,
            &uri,
            &admin,
            None,
            "",
            &[("idempotency-key", "bootstrap-1")],
        )
        .await;
    let v = r.expect_kn(StatusCode::CONFLICT, "KN-409");
    assert_eq!(v["details"]["reason"], "Forbidden", "{v}");
    assert_eq!(v["details"]["retryable"], false, "{v}");
    assert_eq!(v["details"]["clusterStatus"], "error", "{v}");
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains("403") && message.contains("PUT /api/v1/clusters/"),
        "{message}"
    );
    assert!(!r.text.contains(cluster.admin_token()));
    let c = app.get(&format!("/api/v1/clusters/{id}")).await;
    assert_eq!(c["status"], "error");
    let events = app
        .store()
        .query_audit(&AuditQuery::default())
        .await
        .unwrap()
        .items;
    let boots: Vec<_> = events
        .iter()
        .filter(|e| e.resource_id == id || e.resource_id.ends_with("/bootstrap/operator"))
        .filter(|e| e.action != "cluster.create")
        .collect();
    assert_eq!(boots.len(), 1, "one audit event per call: {boots:?}");
    let e = boots[0];
    assert_eq!(e.action, "cluster.bootstrap");
    assert_eq!(serde_json::to_value(e.outcome).unwrap(), "failed", "{e:?}");
    assert_eq!(e.http_status, Some(409));
    let details = e.details.clone().unwrap();
    assert_eq!(details["code"], "KN-409", "{details}");
    assert_eq!(details["reason"], "Forbidden", "{details}");

    // The same Idempotency-Key once the cause is fixed: applied, not the stored failure.
    cluster.faults().remove(forbid);
    let r = app
        .raw(
            Method::POST,
            &uri,
            &admin,
            None,
            "",
            &[("idempotency-key", "bootstrap-1")],
        )
        .await;
    assert_eq!(r.expect(StatusCode::ACCEPTED)["status"], "applied");
    assert_eq!(r.header("idempotent-replayed"), "");

    // The API server goes away: KN-409 too (the manager itself is fine), retryable.
    cluster.shutdown().await;
    let r = app.raw(Method::POST, &uri, &admin, None, "", &[]).await;
    let v = r.expect_kn(StatusCode::CONFLICT, "KN-409");
    assert_eq!(v["details"]["reason"], "Unreachable", "{v}");
    assert_eq!(v["details"]["retryable"], true, "{v}");
    let last = app
        .store()
        .query_audit(&AuditQuery::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .rfind(|e| e.action == "cluster.bootstrap")
        .unwrap();
    assert_eq!(serde_json::to_value(last.outcome).unwrap(), "failed");
    assert_eq!(last.http_status, Some(409));
    let details = last.details.unwrap();
    assert_eq!(details["code"], "KN-409");
    assert_eq!(details["reason"], "Unreachable");
    let actions = app.audit_actions().await;
    assert_eq!(
        actions
            .iter()
            .filter(|(a, o, _)| a == "cluster.bootstrap" && o == "success")
            .count(),
        1,
        "only the applied bootstrap is a success: {actions:?}"
    );
}

// ---------------------------------------------------------------------------------
// Capabilities say whether a kubeconfig can be issued, exactly as the issuance does
// ---------------------------------------------------------------------------------

const PROXY_NS: &str = "capsule-system";

async fn apply_in_cluster<K>(client: &kube::Client, object: Value)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let name = object["metadata"]["name"].as_str().unwrap().to_string();
    kube::Api::<K>::namespaced(client.clone(), PROXY_NS)
        .patch(
            &name,
            &kube::api::PatchParams::apply("helm").force(),
            &kube::api::Patch::Apply(object),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {name}: {e}"));
}

/// The Service and Deployment the Capsule Proxy chart creates (release `capsule-proxy`,
/// TLS from the Secret `capsule-proxy` mounted at `--ssl-cert-path`).
async fn install_capsule_proxy_chart(client: &kube::Client) {
    kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .patch(
            PROXY_NS,
            &kube::api::PatchParams::apply("helm").force(),
            &kube::api::Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": PROXY_NS}}),
            ),
        )
        .await
        .unwrap();
    apply_in_cluster::<k8s_openapi::api::core::v1::Service>(
        client,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "capsule-proxy", "namespace": PROXY_NS},
            "spec": {"type": "ClusterIP", "ports": [{"name": "proxy", "port": 9001, "protocol": "TCP", "targetPort": 9001}],
                "selector": {"app.kubernetes.io/name": "capsule-proxy"}}}),
    )
    .await;
    apply_in_cluster::<k8s_openapi::api::apps::v1::Deployment>(
        client,
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "capsule-proxy", "namespace": PROXY_NS},
            "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "capsule-proxy"}},
                "template": {"metadata": {"labels": {"app.kubernetes.io/name": "capsule-proxy"}},
                    "spec": {"volumes": [{"name": "certs", "secret": {"secretName": "capsule-proxy", "defaultMode": 420}}],
                        "containers": [{"name": "capsule-proxy", "image": "ghcr.io/projectcapsule/capsule-proxy:v0.14.1",
                            "args": ["--listening-port=9001", "--enable-ssl=true",
                                "--ssl-cert-path=/opt/capsule-proxy/tls.crt", "--ssl-key-path=/opt/capsule-proxy/tls.key"],
                            "volumeMounts": [{"mountPath": "/opt/capsule-proxy", "name": "certs"}]}]}}}}),
    )
    .await;
}

/// The heartbeat the operator sends: its Capsule Proxy discovery in `cluster`, and the
/// capability flag as the operator sets it (deployed and an endpoint found).
async fn operator_heartbeat(cluster: &kube::Client) -> Value {
    let found = kubenova_reconcile::agent::discover_proxy(cluster, None).await;
    json!({"operatorVersion": "0.1.0", "appliedRevision": 0,
        "capabilities": {"certManager": true, "capsule": true, "capsuleProxy": found.endpoint.is_some(), "kubeVela": true},
        "proxy": found.endpoint, "proxyDiscovery": found.discovery})
}

/// Whatever the cluster holds, `capabilities.kubeconfigs` says exactly what an issuance
/// answers: ready and the issuance succeeds, or not ready with the issuance's KN error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_and_kubeconfig_issuance_never_disagree() {
    let cluster = kubenova_testkit::TestCluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    let app = app_with(ServerConfig {
        agent_manager_url: Some("https://kubenova.example.com".into()),
        ..ServerConfig::default()
    })
    .await;
    let admin = app.admin();
    let id = register_kit(&app, &cluster, "kit").await;
    app.raw(
        Method::POST,
        &format!("/api/v1/clusters/{id}/bootstrap/operator"),
        &admin,
        None,
        "",
        &[],
    )
    .await
    .expect(StatusCode::ACCEPTED);
    let agent_token = {
        let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
            kube::Api::namespaced(client.clone(), "kubenova-system");
        let s = secrets.get("kubenova-agent").await.unwrap();
        String::from_utf8(s.data.unwrap()["token"].0.clone()).unwrap()
    };
    let tenant = app
        .json(
            Method::POST,
            &format!("/api/v1/clusters/{id}/tenants"),
            &admin,
            json!({"name": "acme", "owners": ["alice@example.com"]}),
        )
        .await
        .expect(StatusCode::CREATED);
    let tenant_id = tenant["id"].as_str().unwrap().to_string();

    // Before any report, with no Capsule Proxy, without its certificate Secret, with it.
    let mut seen_ready = Vec::new();
    for step in [
        "nothing reported",
        "no capsule-proxy",
        "no secret",
        "cert-manager secret",
    ] {
        match step {
            "nothing reported" => {}
            "no capsule-proxy" => {
                let hb = operator_heartbeat(&client).await;
                app.json(Method::POST, "/api/v1/agent/heartbeat", &agent_token, hb)
                    .await
                    .expect(StatusCode::OK);
            }
            "no secret" => {
                install_capsule_proxy_chart(&client).await;
                let hb = operator_heartbeat(&client).await;
                app.json(Method::POST, "/api/v1/agent/heartbeat", &agent_token, hb)
                    .await
                    .expect(StatusCode::OK);
            }
            _ => {
                use base64::Engine as _;
                let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
                apply_in_cluster::<k8s_openapi::api::core::v1::Secret>(
                    &client,
                    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                        "metadata": {"name": "capsule-proxy", "namespace": PROXY_NS},
                        "data": {"tls.crt": b64("leaf"), "tls.key": b64("key"), "ca.crt": b64(cluster.ca_pem())}}),
                )
                .await;
                let hb = operator_heartbeat(&client).await;
                app.json(Method::POST, "/api/v1/agent/heartbeat", &agent_token, hb)
                    .await
                    .expect(StatusCode::OK);
            }
        }
        let caps = app
            .get(&format!("/api/v1/clusters/{id}/capabilities"))
            .await;
        let k = &caps["kubeconfigs"];
        let issued = app
            .raw(
                Method::GET,
                &format!("/api/v1/tenants/{tenant_id}/kubeconfig"),
                &admin,
                None,
                "",
                &[],
            )
            .await;
        assert_eq!(
            k["ready"].as_bool(),
            Some(issued.status == StatusCode::OK),
            "{step}: capabilities {caps} vs issuance {} {}",
            issued.status,
            issued.text
        );
        if issued.status != StatusCode::OK {
            let e = issued.json();
            assert_eq!(k["reason"], e["message"], "{step}");
            assert_eq!(k["code"], e["code"], "{step}");
        } else {
            assert_eq!(issued.json()["server"], k["proxyUrl"], "{step}");
        }
        seen_ready.push((step, k.clone(), caps["capsuleProxy"].clone()));
    }
    let [nothing, absent, no_secret, ready] = &seen_ready[..] else {
        unreachable!()
    };
    assert_eq!(nothing.1["ready"], false);
    assert!(
        absent.1["reason"]
            .as_str()
            .unwrap()
            .contains("Service capsule-system/capsule-proxy not found"),
        "{absent:?}"
    );
    // The case the operator reports Capsule Proxy yet no kubeconfig can be issued: the
    // capability is there, the readiness says exactly why not.
    assert_eq!(no_secret.2, true, "{no_secret:?}");
    assert_eq!(no_secret.1["ready"], false);
    let reason = no_secret.1["reason"].as_str().unwrap();
    assert!(
        reason.contains("Secret capsule-system/capsule-proxy") && reason.contains("does not exist"),
        "{reason}"
    );
    assert_eq!(ready.1["ready"], true, "{ready:?}");
    assert_eq!(
        ready.1["proxyUrl"],
        "https://capsule-proxy.capsule-system.svc:9001"
    );
    assert!(
        ready.1["discovery"]
            .as_str()
            .unwrap()
            .contains("inside the cluster"),
        "{ready:?}"
    );
    let c = app.get(&format!("/api/v1/clusters/{id}")).await;
    assert!(
        c["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["type"] == "CapsuleProxyDiscovered" && x["status"] == "True"),
        "{c}"
    );
}
