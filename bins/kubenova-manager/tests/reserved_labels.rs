//! Reserved label prefixes (`kubernetes.io`, `k8s.io`, Capsule's, KubeVela's, KubeNova's)
//! are refused on clusters, tenants and projects with KN-422 naming the label, and the
//! refused request changes nothing.
#![allow(clippy::unwrap_used, missing_docs)]

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use kubenova_manager::api::AppState;
use kubenova_manager::api::authz::Role;
use kubenova_manager::api::config::ServerConfig;
use kubenova_store::crypto::{Kek, Keyring};
use serde_json::{Value, json};
use std::time::Duration;
use tower::ServiceExt;

const SECRET: &[u8] = b"reserved-labels-test-secret-0123456789abcdef";

const KUBECONFIG: &str = "apiVersion: v1
kind: Config
clusters:
- name: prod
  cluster:
    server: https://10.0.0.1:6443
    certificate-authority-data: TFMwdExTMUNSVWRKVGc9PQ==
contexts:
- name: prod
  context:
    cluster: prod
    user: admin
current-context: prod
users:
- name: admin
  user:
    token: cluster-token
";

struct App {
    state: AppState,
    _dir: tempfile::TempDir,
}

impl App {
    async fn start() -> App {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keyring::new(vec![Kek::new("k1", &[7u8; 32]).unwrap()]).unwrap();
        let store = kubenova_store::connect(
            &format!("sqlite://{}", dir.path().join("kn.db").display()),
            keys,
        )
        .await
        .unwrap();
        let state = kubenova_manager::test_state(store, ServerConfig::default(), SECRET);
        App { state, _dir: dir }
    }

    async fn send(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let token = self
            .state
            .auth
            .mint("admin", &[Role::Admin], &[], &[], Duration::from_secs(600))
            .unwrap()
            .token;
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
        let router = kubenova_manager::api::router(self.state.clone());
        let resp = router.oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, body)
    }

    async fn created(&self, uri: &str, body: Value) -> String {
        let (status, out) = self.send(Method::POST, uri, Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{out}");
        out["id"].as_str().unwrap().to_owned()
    }

    async fn count(&self, uri: &str) -> usize {
        let (status, out) = self.send(Method::GET, uri, None).await;
        assert_eq!(status, StatusCode::OK, "{out}");
        out["items"].as_array().unwrap().len()
    }
}

/// A KN-422 whose only violation is the reserved label, with the reason saying so.
#[track_caller]
fn assert_reserved(status: StatusCode, body: &Value, key: &str) {
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["code"], "KN-422", "{body}");
    let violations = body["details"]["violations"].as_array().unwrap();
    assert_eq!(violations.len(), 1, "{body}");
    assert_eq!(violations[0]["field"], format!("labels.{key:?}"), "{body}");
    let prefix = key.split_once('/').unwrap().0;
    let reason = violations[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("the prefix {prefix:?} is reserved")),
        "{reason}"
    );
}

#[tokio::test]
async fn reserved_label_prefixes_are_refused_everywhere() {
    let app = App::start().await;
    let clusters = "/api/v1/clusters";

    // Clusters.
    let (status, body) = app
        .send(
            Method::POST,
            clusters,
            Some(json!({"name": "prod", "kubeconfig": KUBECONFIG,
                        "labels": {"topology.kubernetes.io/region": "eu"}})),
        )
        .await;
    assert_reserved(status, &body, "topology.kubernetes.io/region");
    assert_eq!(app.count(clusters).await, 0, "nothing was created");
    let cluster = app
        .created(
            clusters,
            json!({"name": "prod", "kubeconfig": KUBECONFIG, "labels": {"example.com/region": "eu"}}),
        )
        .await;

    // Tenants: the label that would lift the plan's Pod Security level.
    let tenants = format!("{clusters}/{cluster}/tenants");
    for key in [
        "pod-security.kubernetes.io/enforce",
        "capsule.clastix.io/tenant",
        "kubenova.io/tenant",
        "app.oam.dev/x",
    ] {
        let (status, body) = app
            .send(
                Method::POST,
                &tenants,
                Some(json!({"name": "acme", "plan": "gold", "labels": {key: "privileged"}})),
            )
            .await;
        assert_reserved(status, &body, key);
    }
    assert_eq!(app.count(&tenants).await, 0, "nothing was created");
    let tenant = app
        .created(
            &tenants,
            json!({"name": "acme", "plan": "gold", "labels": {"team": "a"}}),
        )
        .await;

    // Projects.
    let projects = format!("{tenants}/{tenant}/projects");
    let (status, body) = app
        .send(
            Method::POST,
            &projects,
            Some(
                json!({"name": "web", "labels": {"pod-security.kubernetes.io/enforce": "privileged"}}),
            ),
        )
        .await;
    assert_reserved(status, &body, "pod-security.kubernetes.io/enforce");
    assert_eq!(app.count(&projects).await, 0, "nothing was created");
    app.created(
        &projects,
        json!({"name": "web", "labels": {"example.com/team": "w"}}),
    )
    .await;
}
