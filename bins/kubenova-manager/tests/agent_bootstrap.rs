//! `POST /clusters/{id}/bootstrap/operator` against the testkit API server: the stored
//! kubeconfig is used once to apply the operator; the cluster goes `bootstrapping`, then
//! `connected` on a heartbeat with the credential read back from the applied Secret;
//! re-bootstrap rotates the credential; a kubeconfig whose identity lacks rights (a 403
//! injected by the testkit) and an unreachable API server give KN-409 and status `error`
//! with a condition naming the cause; `--operator-helm-installer` adds the
//! installer identity.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Role as RbacRole};
use kube::Api;
use kubenova_manager::api::authz::Role;
use kubenova_manager::api::config::ServerConfig;
use kubenova_manager::api::router;
use kubenova_reconcile::manifests::{
    ENV_INSTALLER_SERVICE_ACCOUNT, INSTALLER_NAME, INSTALLER_TOKEN_ROLE,
};
use serde_json::{Value, json};
use std::time::Duration;
use tower::ServiceExt;

async fn call(
    app: &axum::Router,
    m: Method,
    uri: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut b = Request::builder()
        .method(m)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    let req = match body {
        Some(v) => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&v).unwrap())),
        None => {
            b = b.header(header::CONTENT_LENGTH, "0");
            b.body(Body::empty())
        }
    }
    .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn heartbeat() -> Value {
    json!({"operatorVersion": "0.1.0", "appliedRevision": 0})
}

/// A testkit cluster registered with a manager on SQLite (agents get
/// `https://kubenova.example.com/`).
struct Registered {
    cluster: kubenova_testkit::TestCluster,
    _dir: tempfile::TempDir,
    st: kubenova_manager::api::AppState,
    admin: String,
    app: axum::Router,
    cid: String,
}

async fn registered(operator_helm_installer: bool) -> Registered {
    let dir = tempfile::tempdir().unwrap();
    let keys = kubenova_store::crypto::Keyring::load_or_generate(dir.path()).unwrap();
    let url = format!("sqlite://{}", dir.path().join("kn.db").display());
    let store = kubenova_store::connect(&url, keys).await.unwrap();
    registered_on(store, dir, operator_helm_installer).await
}

/// The Postgres URL for tests, or `None` (skipped loudly) unless Postgres is required.
fn pg_url() -> Option<String> {
    match std::env::var("KUBENOVA_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var("KUBENOVA_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("KUBENOVA_REQUIRE_POSTGRES=1 but KUBENOVA_TEST_POSTGRES_URL is not set");
            }
            eprintln!(
                "!!! POSTGRES SKIPPED: set KUBENOVA_TEST_POSTGRES_URL to run the bootstrap tests on Postgres !!!"
            );
            None
        }
    }
}

/// Like [`registered`] on Postgres, in a schema of its own (dropped by [`drop_schema`]).
async fn registered_on_postgres(url: &str, schema: &str) -> Registered {
    let admin = sqlx::PgPool::connect(url)
        .await
        .expect("connect to KUBENOVA_TEST_POSTGRES_URL");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let opts = <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(url)
        .unwrap()
        .options([("search_path", schema)]);
    let dir = tempfile::tempdir().unwrap();
    let keys = kubenova_store::crypto::Keyring::load_or_generate(dir.path()).unwrap();
    let store = kubenova_store::PgStore::connect_with(opts, 4, keys)
        .await
        .unwrap();
    registered_on(std::sync::Arc::new(store), dir, false).await
}

async fn drop_schema(url: &str, schema: &str) {
    let admin = sqlx::PgPool::connect(url).await.unwrap();
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
}

async fn registered_on(
    store: std::sync::Arc<dyn kubenova_store::Store>,
    dir: tempfile::TempDir,
    operator_helm_installer: bool,
) -> Registered {
    let cluster = kubenova_testkit::TestCluster::start().await.unwrap();
    let cfg = ServerConfig {
        rate_limit_subject_rps: 0,
        rate_limit_ip_rps: 0,
        agent_manager_url: Some("https://kubenova.example.com/".into()),
        operator_image: "registry.example.com/kubenova-operator:test".into(),
        operator_helm_installer,
        ..ServerConfig::default()
    };
    let st = kubenova_manager::test_state(store, cfg, b"0123456789abcdef0123456789abcdef");
    let admin = st
        .auth
        .mint("admin", &[Role::Admin], &[], &[], Duration::from_secs(3600))
        .unwrap()
        .token;
    let app = router(st.clone());
    let (s, c) = call(
        &app,
        Method::POST,
        "/api/v1/clusters",
        &admin,
        Some(json!({"name": "kit", "kubeconfig": cluster.kubeconfig_yaml()})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    let cid = c["id"].as_str().unwrap().to_string();
    Registered {
        cluster,
        _dir: dir,
        st,
        admin,
        app,
        cid,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_applies_the_operator_and_the_heartbeat_connects() {
    let Registered {
        cluster,
        _dir,
        st,
        admin,
        app,
        cid,
    } = registered(false).await;

    let (s, r) = call(
        &app,
        Method::POST,
        &format!("/api/v1/clusters/{cid}/bootstrap/operator"),
        &admin,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{r}");
    assert_eq!(r["status"], "applied");
    assert_eq!(r["clusterStatus"], "bootstrapping");
    assert_eq!(r["cluster"]["status"], "bootstrapping");
    let text = r.to_string();
    assert!(
        !text.contains(cluster.admin_token()),
        "the kubeconfig is never returned"
    );
    assert!(!text.contains("kna_"), "the credential is never returned");

    // What the cluster now holds.
    let kc = cluster.client().unwrap();
    Api::<Namespace>::all(kc.clone())
        .get("kubenova-system")
        .await
        .unwrap();
    let d = Api::<Deployment>::namespaced(kc.clone(), "kubenova-system")
        .get("kubenova-operator")
        .await
        .unwrap();
    assert_eq!(
        d.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .as_deref(),
        Some("registry.example.com/kubenova-operator:test")
    );
    let secrets = Api::<Secret>::namespaced(kc.clone(), "kubenova-system");
    let read_token = || async {
        let s = secrets.get("kubenova-agent").await.unwrap();
        let data = s.data.unwrap();
        assert_eq!(data["managerUrl"].0, b"https://kubenova.example.com");
        String::from_utf8(data["token"].0.clone()).unwrap()
    };
    let token = read_token().await;
    assert!(token.starts_with(&format!("kna_{}", cid.replace('-', ""))));
    // Without --operator-helm-installer there is no installer identity.
    assert!(
        Api::<ServiceAccount>::namespaced(kc.clone(), "kubenova-system")
            .get_opt(INSTALLER_NAME)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        Api::<ClusterRoleBinding>::all(kc.clone())
            .get_opt(INSTALLER_NAME)
            .await
            .unwrap()
            .is_none()
    );

    let (s, hb) = call(
        &app,
        Method::POST,
        "/api/v1/agent/heartbeat",
        &token,
        Some(heartbeat()),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{hb}");
    let (_, c) = call(
        &app,
        Method::GET,
        &format!("/api/v1/clusters/{cid}"),
        &admin,
        None,
    )
    .await;
    assert_eq!(c["status"], "connected");
    assert!(
        c["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["type"] == "Bootstrapped" && x["status"] == "True")
    );

    // Re-bootstrap: idempotent, rotates the credential. The running operator keeps
    // working with the old one until the new one is first used; then the old one is
    // revoked.
    let (s, r) = call(
        &app,
        Method::POST,
        &format!("/api/v1/clusters/{cid}/bootstrap/operator"),
        &admin,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{r}");
    let new = read_token().await;
    assert_ne!(new, token);
    let (s, _) = call(
        &app,
        Method::POST,
        "/api/v1/agent/heartbeat",
        &token,
        Some(heartbeat()),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::OK,
        "the old credential works until the new one is used"
    );
    let (s, _) = call(
        &app,
        Method::POST,
        "/api/v1/agent/heartbeat",
        &new,
        Some(heartbeat()),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(
        &app,
        Method::POST,
        "/api/v1/agent/heartbeat",
        &token,
        Some(heartbeat()),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "the old credential is revoked");

    // The kubeconfig's identity may not create cluster-wide RBAC: the bootstrap records an
    // error whose condition names the refusal and the object.
    let forbid = cluster.faults().inject(
        kubenova_testkit::Fault::writes()
            .resource("clusterroles")
            .status(403),
    );
    let (s, r) = call(
        &app,
        Method::POST,
        &format!("/api/v1/clusters/{cid}/bootstrap/operator"),
        &admin,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{r}");
    assert_eq!(r["code"], "KN-409");
    assert_eq!(r["details"]["clusterStatus"], "error");
    let message = r["message"].as_str().unwrap();
    assert!(
        message.contains("403") && message.contains("ClusterRole"),
        "{r}"
    );
    let (_, c) = call(
        &app,
        Method::GET,
        &format!("/api/v1/clusters/{cid}"),
        &admin,
        None,
    )
    .await;
    let cond = c["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["type"] == "Bootstrapped")
        .unwrap()
        .clone();
    assert_eq!(
        (cond["status"].as_str(), cond["reason"].as_str()),
        (Some("False"), Some("Forbidden"))
    );
    assert!(!r.to_string().contains(cluster.admin_token()));
    cluster.faults().remove(forbid);

    // The API server goes away: the next bootstrap records an error naming the cause.
    cluster.shutdown().await;
    let (s, r) = call(
        &app,
        Method::POST,
        &format!("/api/v1/clusters/{cid}/bootstrap/operator"),
        &admin,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{r}");
    assert_eq!(r["code"], "KN-409");
    assert_eq!(r["details"]["reason"], "Unreachable");
    assert_eq!(r["details"]["clusterStatus"], "error");
    assert!(
        r["message"].as_str().unwrap().contains("unreachable"),
        "{r}"
    );
    let (_, c) = call(
        &app,
        Method::GET,
        &format!("/api/v1/clusters/{cid}"),
        &admin,
        None,
    )
    .await;
    assert_eq!(c["status"], "error");
    let cond = c["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["type"] == "Bootstrapped")
        .unwrap()
        .clone();
    assert_eq!(
        (cond["status"].as_str(), cond["reason"].as_str()),
        (Some("False"), Some("Unreachable"))
    );
    let op = c["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "operator")
        .unwrap()
        .clone();
    assert_eq!(op["phase"], "failed");

    // Without a manager URL agents can use, bootstrap refuses before touching the cluster:
    // a precondition (KN-409) naming the option to set.
    let st2 = kubenova_manager::test_state(
        st.store.clone(),
        ServerConfig {
            listen: "0.0.0.0:8080".parse().unwrap(),
            ..ServerConfig::default()
        },
        b"0123456789abcdef0123456789abcdef",
    );
    let (s, r) = call(
        &router(st2),
        Method::POST,
        &format!("/api/v1/clusters/{cid}/bootstrap/operator"),
        &admin,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("--agent-manager-url")
    );
}

/// `--operator-helm-installer` (ServerConfig::operator_helm_installer) through the route:
/// the bootstrap also applies the installer ServiceAccount bound to cluster-admin, a Role
/// letting the operator create tokens for that ServiceAccount only, and tells the
/// operator its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_with_the_helm_installer_option_applies_the_installer_identity() {
    // `_dir` stays bound: the SQLite database lives in it.
    let Registered {
        cluster,
        _dir,
        admin,
        app,
        cid,
        ..
    } = registered(true).await;
    let (s, r) = call(
        &app,
        Method::POST,
        &format!("/api/v1/clusters/{cid}/bootstrap/operator"),
        &admin,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{r}");
    assert_eq!(r["status"], "applied");

    let kc = cluster.client().unwrap();
    let sa = Api::<ServiceAccount>::namespaced(kc.clone(), "kubenova-system")
        .get(INSTALLER_NAME)
        .await
        .unwrap();
    assert_eq!(sa.automount_service_account_token, Some(false));
    let crb = Api::<ClusterRoleBinding>::all(kc.clone())
        .get(INSTALLER_NAME)
        .await
        .unwrap();
    assert_eq!(crb.role_ref.name, "cluster-admin");
    let subjects = crb.subjects.unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, INSTALLER_NAME);
    assert_eq!(subjects[0].namespace.as_deref(), Some("kubenova-system"));
    // The operator may create tokens for the installer only, nothing else.
    let role = Api::<RbacRole>::namespaced(kc.clone(), "kubenova-system")
        .get(INSTALLER_TOKEN_ROLE)
        .await
        .unwrap();
    let rules = role.rules.unwrap();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0].verbs, vec!["create".to_string()]);
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["serviceaccounts/token".to_string()][..])
    );
    assert_eq!(
        rules[0].resource_names.as_deref(),
        Some(&[INSTALLER_NAME.to_string()][..])
    );
    let d = Api::<Deployment>::namespaced(kc.clone(), "kubenova-system")
        .get("kubenova-operator")
        .await
        .unwrap();
    let env = d.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap_or_default();
    assert!(
        env.iter().any(|e| e.name == ENV_INSTALLER_SERVICE_ACCOUNT
            && e.value.as_deref() == Some(INSTALLER_NAME)),
        "{env:?}"
    );
}

/// A re-bootstrap whose apply fails must not lock the running operator out: the old
/// credential keeps working (the attack surface being an outage: before, the credential
/// was rotated before the Secret was applied). Run on SQLite and Postgres.
async fn a_failed_rebootstrap_keeps_the_running_operator_connected(r: Registered) {
    let Registered {
        cluster,
        _dir,
        admin,
        app,
        cid,
        ..
    } = r;
    let uri = format!("/api/v1/clusters/{cid}/bootstrap/operator");
    let bootstrap = || call(&app, Method::POST, &uri, &admin, None);
    let hb = |token: String| {
        let app = app.clone();
        async move {
            call(
                &app,
                Method::POST,
                "/api/v1/agent/heartbeat",
                &token,
                Some(heartbeat()),
            )
            .await
            .0
        }
    };
    let kc = cluster.client().unwrap();
    let secrets = Api::<Secret>::namespaced(kc, "kubenova-system");
    let read_token = || async {
        let s = secrets.get("kubenova-agent").await.unwrap();
        String::from_utf8(s.data.unwrap()["token"].0.clone()).unwrap()
    };
    let (s, r) = bootstrap().await;
    assert_eq!(s, StatusCode::ACCEPTED, "{r}");
    let running = read_token().await;
    assert_eq!(hb(running.clone()).await, StatusCode::OK);

    // The apply of the Secret fails: the bootstrap fails, the operator keeps working.
    let broken = cluster.faults().inject(
        kubenova_testkit::Fault::writes()
            .resource("secrets")
            .status(500),
    );
    let (s, r) = bootstrap().await;
    assert_eq!(s, StatusCode::CONFLICT, "{r}");
    assert_eq!(r["details"]["reason"], "Rejected", "{r}");
    assert_eq!(r["details"]["retryable"], true, "{r}");
    cluster.faults().remove(broken);
    assert_eq!(read_token().await, running, "the Secret was not changed");
    assert_eq!(
        hb(running.clone()).await,
        StatusCode::OK,
        "the running operator's credential still works"
    );

    // The apply fails after the Secret (at the Deployment): the Secret holds a new
    // credential, which a restarted operator would use; both work until it is used.
    let broken = cluster.faults().inject(
        kubenova_testkit::Fault::writes()
            .resource("deployments")
            .status(500),
    );
    let (s, r) = bootstrap().await;
    assert_eq!(s, StatusCode::CONFLICT, "{r}");
    assert_eq!(r["details"]["reason"], "Rejected", "{r}");
    assert_eq!(r["details"]["retryable"], true, "{r}");
    cluster.faults().remove(broken);
    let staged = read_token().await;
    assert_ne!(staged, running);
    assert_eq!(hb(running.clone()).await, StatusCode::OK);
    assert_eq!(hb(staged.clone()).await, StatusCode::OK);
    assert_eq!(
        hb(running).await,
        StatusCode::UNAUTHORIZED,
        "revoked once the new credential was used"
    );
    assert_eq!(hb(staged).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rebootstrap_keeps_the_running_operator_connected_on_sqlite() {
    a_failed_rebootstrap_keeps_the_running_operator_connected(registered(false).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rebootstrap_keeps_the_running_operator_connected_on_postgres() {
    let Some(url) = pg_url() else { return };
    let schema = format!("kn_bootstrap_{}", uuid::Uuid::new_v4().simple());
    let r = registered_on_postgres(&url, &schema).await;
    a_failed_rebootstrap_keeps_the_running_operator_connected(r).await;
    drop_schema(&url, &schema).await;
}
