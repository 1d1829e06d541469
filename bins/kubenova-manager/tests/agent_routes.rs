//! The agent channel in-process over SQLite: heartbeat, the desired-state long-poll
//! (snapshot, deltas, deletions, early return, timeout), status reports (newer wins,
//! duplicates and old ones ignored), component requests, usage upload, stale detection,
//! and isolation between the agents of two clusters and between agent and user tokens.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use kubenova_api::ids::ClusterId;
use kubenova_manager::api::agent::{self, CREDENTIAL_PURPOSE};
use kubenova_manager::api::authz::Role;
use kubenova_manager::api::config::ServerConfig;
use kubenova_manager::api::{AppState, router};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tower::ServiceExt;

struct W {
    app: axum::Router,
    st: AppState,
    admin: String,
    _dir: tempfile::TempDir,
}

struct Resp {
    status: StatusCode,
    body: Value,
}

const KUBECONFIG: &str = "apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority-data: TFMwdExTMUNSVWRKVGc9PQ==
contexts:
- name: c
  context: {cluster: c, user: u}
current-context: c
users:
- name: u
  user: {token: example}
";

async fn world(cfg: ServerConfig) -> W {
    let dir = tempfile::tempdir().unwrap();
    let keys = kubenova_store::crypto::Keyring::load_or_generate(dir.path()).unwrap();
    let url = format!("sqlite://{}", dir.path().join("kn.db").display());
    let store = kubenova_store::connect(&url, keys).await.unwrap();
    let st = kubenova_manager::test_state(store, cfg, b"0123456789abcdef0123456789abcdef");
    let admin = st
        .auth
        .mint("admin", &[Role::Admin], &[], &[], Duration::from_secs(3600))
        .unwrap()
        .token;
    W {
        app: router(st.clone()),
        st,
        admin,
        _dir: dir,
    }
}

fn quiet() -> ServerConfig {
    ServerConfig {
        rate_limit_subject_rps: 0,
        rate_limit_ip_rps: 0,
        ..ServerConfig::default()
    }
}

fn request(method: Method, uri: &str, token: Option<&str>, body: Option<Value>) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    match body {
        Some(v) => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&v).unwrap())),
        None => b.body(Body::empty()),
    }
    .unwrap()
}

async fn send(app: axum::Router, req: Request<Body>) -> Resp {
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Resp {
        status,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

impl W {
    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        send(self.app.clone(), request(method, uri, token, body)).await
    }

    async fn admin_post(&self, uri: &str, body: Value) -> Value {
        let r = self
            .call(Method::POST, uri, Some(&self.admin.clone()), Some(body))
            .await;
        assert!(r.status.is_success(), "POST {uri}: {} {}", r.status, r.body);
        r.body
    }

    /// A registered cluster and its agent credential (as bootstrap would mint it).
    async fn cluster(&self, name: &str) -> (String, String) {
        let c = self
            .admin_post(
                "/api/v1/clusters",
                json!({"name": name, "kubeconfig": KUBECONFIG}),
            )
            .await;
        let id = c["id"].as_str().unwrap().to_string();
        let token = agent::rotate_credential(self.st.store.as_ref(), id.parse().unwrap())
            .await
            .unwrap();
        (id, token.to_string())
    }

    async fn tenant(&self, cluster: &str, name: &str) -> String {
        self.admin_post(
            &format!("/api/v1/clusters/{cluster}/tenants"),
            json!({"name": name, "owners": ["alice@example.com"]}),
        )
        .await["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn desired(&self, token: &str, cursor: i64, wait: u64) -> Value {
        let r = self
            .call(
                Method::GET,
                &format!("/api/v1/agent/desired?cursor={cursor}&waitSeconds={wait}"),
                Some(token),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.body
    }

    async fn heartbeat(&self, token: &str) -> Resp {
        self.call(
            Method::POST,
            "/api/v1/agent/heartbeat",
            Some(token),
            Some(json!({
                "operatorVersion": "0.1.0",
                "kubernetesVersion": "v1.36.0",
                "capabilities": {"certManager": true, "capsule": true, "capsuleProxy": true, "kubeVela": false},
                "components": [{"name": "capsule", "version": "0.14.0", "phase": "ready"}],
                "proxy": {"url": "https://proxy.example.com:9001", "caData": "TFMwdExTMUNSVWRKVGc9PQ=="},
                "appliedRevision": 0
            })),
        )
        .await
    }

    async fn get(&self, uri: &str) -> Value {
        let r = self
            .call(Method::GET, uri, Some(&self.admin.clone()), None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "GET {uri}: {}", r.body);
        r.body
    }
}

fn ids_of(d: &Value, kind: &str) -> Vec<String> {
    d["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["kind"] == kind)
        .map(|o| o["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn heartbeat_connects_and_reports_capabilities() {
    let w = world(quiet()).await;
    let (cid, token) = w.cluster("hb").await;
    assert_eq!(
        w.get(&format!("/api/v1/clusters/{cid}")).await["status"],
        "pending_bootstrap"
    );
    let r = w.heartbeat(&token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["clusterId"], cid.as_str());
    assert_eq!(r.body["status"], "connected");
    assert_eq!(r.body["intervalSeconds"], 30);
    let c = w.get(&format!("/api/v1/clusters/{cid}")).await;
    assert_eq!(c["status"], "connected");
    assert_eq!(c["operatorVersion"], "0.1.0");
    assert_eq!(c["proxy"]["url"], "https://proxy.example.com:9001");
    let caps = w.get(&format!("/api/v1/clusters/{cid}/capabilities")).await;
    assert_eq!(caps["reported"], true);
    assert_eq!(caps["capsule"], true);
    assert_eq!(caps["kubeVela"], false);
    assert_eq!(caps["components"][0]["name"], "capsule");
    assert_eq!(caps["components"][0]["phase"], "ready");

    // Bad heartbeats are KN-422 naming the field.
    let r = w
        .call(
            Method::POST,
            "/api/v1/agent/heartbeat",
            Some(&token),
            Some(json!({"operatorVersion": "0.1.0", "components": [{"name": "istio", "phase": "ready"}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(
        r.body["details"]["violations"][0]["field"],
        "components[0].name"
    );
}

/// A heartbeat that changes nothing but its time keeps the cluster's version (and so the
/// ETag a user holds for `If-Match`); a heartbeat that changes what the cluster says is a
/// new version.
#[tokio::test]
async fn heartbeats_that_change_nothing_keep_the_cluster_version() {
    let w = world(quiet()).await;
    let (cid, token) = w.cluster("quiet-hb").await;
    assert_eq!(w.heartbeat(&token).await.status, StatusCode::OK);
    let first = w.get(&format!("/api/v1/clusters/{cid}")).await;
    let at = |c: &Value| {
        time::OffsetDateTime::parse(
            c["lastHeartbeatAt"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    for _ in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        assert_eq!(w.heartbeat(&token).await.status, StatusCode::OK);
    }
    let later = w.get(&format!("/api/v1/clusters/{cid}")).await;
    assert_eq!(later["version"], first["version"], "{later}");
    assert_eq!(later["updatedAt"], first["updatedAt"]);
    assert!(at(&later) > at(&first), "the heartbeat time still moves");
    assert_eq!(later["status"], "connected");

    // A new operator version is a change.
    let r = w
        .call(
            Method::POST,
            "/api/v1/agent/heartbeat",
            Some(&token),
            Some(json!({"operatorVersion": "0.2.0", "kubernetesVersion": "v1.36.0",
                "capabilities": {"certManager": true, "capsule": true, "capsuleProxy": true, "kubeVela": false},
                "components": [{"name": "capsule", "version": "0.14.0", "phase": "ready"}],
                "proxy": {"url": "https://proxy.example.com:9001", "caData": "TFMwdExTMUNSVWRKVGc9PQ=="},
                "appliedRevision": 0})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let upgraded = w.get(&format!("/api/v1/clusters/{cid}")).await;
    assert_eq!(
        upgraded["version"].as_i64().unwrap(),
        first["version"].as_i64().unwrap() + 1
    );
    assert_eq!(upgraded["operatorVersion"], "0.2.0");
}

/// The change log does not grow without bound: heartbeats compact it behind the
/// revision the agent applied, and a cursor from before that gets a snapshot.
#[tokio::test]
async fn heartbeats_compact_the_change_log_behind_the_applied_revision() {
    let w = world(quiet()).await;
    let (cid, token) = w.cluster("compacting").await;
    for i in 0..(agent::KEPT_CHANGES + 20) {
        w.tenant(&cid, &format!("t{i}")).await;
    }
    let rev = w.desired(&token, 0, 1).await["revision"].as_i64().unwrap();
    assert!(rev > agent::KEPT_CHANGES + 10, "{rev}");
    assert_eq!(w.desired(&token, 1, 0).await["snapshot"], false);
    let r = w
        .call(
            Method::POST,
            "/api/v1/agent/heartbeat",
            Some(&token),
            Some(json!({"operatorVersion": "0.1.0", "appliedRevision": rev})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let id: ClusterId = cid.parse().unwrap();
    assert_eq!(
        w.st.store
            .changes_since(id, 1, 10)
            .await
            .unwrap()
            .map(|c| c.len()),
        None,
        "compacted"
    );
    let old = w.desired(&token, 1, 0).await;
    assert_eq!(old["snapshot"], true);
    assert_eq!(
        ids_of(&old, "tenant").len() as i64,
        agent::KEPT_CHANGES + 20
    );
    // Cursors within the kept window still get deltas.
    let recent = w.desired(&token, rev - 5, 0).await;
    assert_eq!(recent["snapshot"], false);
    assert_eq!(ids_of(&recent, "tenant").len(), 5);
}

#[tokio::test]
async fn long_poll_snapshot_deltas_deletions_and_waits() {
    let w = world(quiet()).await;
    let (cid, token) = w.cluster("lp").await;

    // An empty cluster: an empty snapshot, but only after the wait (no spinning).
    let started = Instant::now();
    let d = w.desired(&token, 0, 1).await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(
        (d["revision"].as_i64(), d["snapshot"].as_bool()),
        (Some(0), Some(true))
    );
    assert!(d["objects"].as_array().unwrap().is_empty());

    let t = w.tenant(&cid, "acme").await;
    let p = w
        .admin_post(
            &format!("/api/v1/clusters/{cid}/tenants/{t}/projects"),
            json!({"name": "web"}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let apps = format!("/api/v1/clusters/{cid}/tenants/{t}/projects/{p}/apps");
    let a = w
        .admin_post(
            &apps,
            json!({"name": "shop", "image": "ghcr.io/acme/shop:1.0.0"}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Snapshot: tenants, then projects, then apps, as Nova objects labelled with their ids.
    let snap = w.desired(&token, 0, 30).await;
    assert_eq!(snap["snapshot"], true);
    let kinds: Vec<&str> = snap["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["tenant", "project", "app"]);
    assert_eq!(ids_of(&snap, "tenant"), std::slice::from_ref(&t));
    let obj = &snap["objects"][0]["object"];
    assert_eq!(obj["kind"], "NovaTenant");
    assert_eq!(obj["metadata"]["name"], "acme");
    assert_eq!(obj["metadata"]["labels"]["kubenova.io/id"], t.as_str());
    assert_eq!(snap["objects"][1]["object"]["kind"], "NovaProject");
    let app_obj = &snap["objects"][2]["object"];
    assert_eq!(app_obj["kind"], "NovaApp");
    assert_eq!(app_obj["spec"]["tenant"], "acme");
    assert_eq!(app_obj["spec"]["project"], "web");
    let r1 = snap["revision"].as_i64().unwrap();
    assert!(r1 >= 3);

    // A delta after an update carries only the changed object.
    let r = w
        .call(
            Method::PUT,
            &format!("/api/v1/clusters/{cid}/tenants/{t}/owners"),
            Some(&w.admin.clone()),
            Some(json!({"owners": ["bob@example.com"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let d = w.desired(&token, r1, 5).await;
    assert_eq!(d["snapshot"], false);
    assert_eq!(ids_of(&d, "tenant"), std::slice::from_ref(&t));
    assert_eq!(d["objects"].as_array().unwrap().len(), 1);
    assert!(
        d["objects"][0]["object"]["spec"]["owners"]
            .to_string()
            .contains("bob@example.com")
    );
    let r2 = d["revision"].as_i64().unwrap();
    assert!(r2 > r1);

    // A deletion appears in `deleted`.
    let r = w
        .call(
            Method::DELETE,
            &format!("{apps}/{a}"),
            Some(&w.admin.clone()),
            None,
        )
        .await;
    assert!(r.status.is_success(), "{} {}", r.status, r.body);
    let d = w.desired(&token, r2, 5).await;
    assert_eq!(d["deleted"], json!([{"kind": "app", "id": a}]));
    assert!(d["objects"].as_array().unwrap().is_empty());
    let r3 = d["revision"].as_i64().unwrap();

    // No change: the wait times out with the same revision and nothing in it.
    let started = Instant::now();
    let d = w.desired(&token, r3, 1).await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(d["revision"].as_i64(), Some(r3));
    assert_eq!(d["snapshot"], false);
    assert!(d["objects"].as_array().unwrap().is_empty());
    assert!(d["deleted"].as_array().unwrap().is_empty());

    // A waiting poll returns early when a tenant is created.
    let waiting = tokio::spawn(send(
        w.app.clone(),
        request(
            Method::GET,
            &format!("/api/v1/agent/desired?cursor={r3}&waitSeconds=30"),
            Some(&token),
            None,
        ),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the poll must wait for a change");
    let t2 = w.tenant(&cid, "beta").await;
    let created = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the poll returned")
        .unwrap();
    let latency = created.elapsed();
    assert!(latency < Duration::from_secs(1), "woke after {latency:?}");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(ids_of(&r.body, "tenant"), [t2]);
    assert!(r.body["revision"].as_i64().unwrap() > r3);

    // A cursor ahead of the cluster (e.g. a restored database) gets a snapshot.
    let d = w.desired(&token, 1_000_000, 1).await;
    assert_eq!(d["snapshot"], true);
    assert_eq!(ids_of(&d, "tenant").len(), 2);

    // Bad parameters.
    let r = w
        .call(
            Method::GET,
            "/api/v1/agent/desired?waitSeconds=61",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["details"]["violations"][0]["field"], "waitSeconds");
    let r = w
        .call(
            Method::GET,
            "/api/v1/agent/desired?cursor=x",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn compacted_cursors_get_a_snapshot() {
    let w = world(quiet()).await;
    let (cid, token) = w.cluster("cp").await;
    let t = w.tenant(&cid, "acme").await;
    w.tenant(&cid, "beta").await;
    let id: ClusterId = cid.parse().unwrap();
    w.st.store.compact_changes(id, 2).await.unwrap();
    let d = w.desired(&token, 1, 5).await;
    assert_eq!(d["snapshot"], true);
    assert_eq!(ids_of(&d, "tenant").len(), 2);
    assert!(ids_of(&d, "tenant").contains(&t));
}

#[tokio::test]
async fn status_reports_newer_wins_and_runs_follow() {
    let w = world(quiet()).await;
    let (cid, token) = w.cluster("st").await;
    let t = w.tenant(&cid, "acme").await;
    let p = w
        .admin_post(
            &format!("/api/v1/clusters/{cid}/tenants/{t}/projects"),
            json!({"name": "web"}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let apps = format!("/api/v1/clusters/{cid}/tenants/{t}/projects/{p}/apps");
    let a = w
        .admin_post(
            &apps,
            json!({"name": "shop", "image": "ghcr.io/acme/shop:1.0.0"}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = w
        .call(
            Method::POST,
            &format!("{apps}/{a}:deploy"),
            Some(&w.admin.clone()),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let rev = w.desired(&token, 0, 1).await["revision"].as_i64().unwrap();

    let report = |kind: &str, id: &str, phase: &str, observed: i64| {
        json!({"kind": kind, "id": id, "status": {"phase": phase, "observedRevision": observed,
            "conditions": [{"type": "Ready", "status": if phase == "ready" {"True"} else {"False"},
                "reason": "Reconciled", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
    };
    let post = |items: Vec<Value>| {
        w.call(
            Method::POST,
            "/api/v1/agent/status",
            Some(&token),
            Some(json!({"items": items})),
        )
    };

    let r = post(vec![
        report("tenant", &t, "ready", rev),
        report("project", &p, "reconciling", rev),
    ])
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body, json!({"applied": 2, "ignored": 0}));
    let tenant = w.get(&format!("/api/v1/clusters/{cid}/tenants/{t}")).await;
    assert_eq!(tenant["status"]["phase"], "ready");
    assert_eq!(tenant["status"]["observedRevision"], rev);
    let version = tenant["version"].as_i64().unwrap();

    // A duplicate and an older report change nothing.
    let r = post(vec![
        report("tenant", &t, "ready", rev),
        report("tenant", &t, "degraded", rev - 1),
    ])
    .await;
    assert_eq!(r.body, json!({"applied": 0, "ignored": 2}));
    let tenant = w.get(&format!("/api/v1/clusters/{cid}/tenants/{t}")).await;
    assert_eq!(tenant["status"]["phase"], "ready");
    assert_eq!(
        tenant["version"].as_i64().unwrap(),
        version,
        "no version churn"
    );

    // An unknown id is ignored, not an error (it may have been deleted meanwhile).
    let r = post(vec![report(
        "tenant",
        &uuid::Uuid::now_v7().to_string(),
        "ready",
        rev,
    )])
    .await;
    assert_eq!(r.body, json!({"applied": 0, "ignored": 1}));

    // The app: Ready at a revision reflecting the deploy → the deploy run succeeds.
    let runs = w.get(&format!("{apps}/{a}/workflow/runs")).await;
    assert_eq!(runs["items"][0]["status"], "requested");
    let mut item = report("app", &a, "ready", rev);
    item["velaPhase"] = json!("running");
    let r = post(vec![item]).await;
    assert_eq!(r.body, json!({"applied": 1, "ignored": 0}));
    let status = w.get(&format!("{apps}/{a}/status")).await;
    assert_eq!(
        status["phase"]
            .as_str()
            .or(status["status"]["phase"].as_str()),
        Some("ready"),
        "{status}"
    );
    let app = w.get(&format!("{apps}/{a}")).await;
    assert_eq!(app["velaPhase"], "running");
    let runs = w.get(&format!("{apps}/{a}/workflow/runs")).await;
    assert_eq!(runs["items"][0]["status"], "succeeded", "{runs}");
    assert!(runs["items"][0]["endedAt"].is_string());

    let too_many: Vec<Value> = (0..1001)
        .map(|_| report("tenant", &t, "ready", rev))
        .collect();
    let r = post(too_many).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
}

/// One object with a very long message (an app with many unhealthy services, a helm
/// failure's stderr) must not keep the status of every other object, or the cluster's
/// heartbeats, out: the manager cuts the text item by item and stores the rest.
/// Batches delayed past newer ones (a timed-out send landing after its retry), racing:
/// the store compares inside its write, so whatever the interleaving the newest report
/// stays and every older one is counted as ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delayed_older_reports_never_overwrite_newer_ones() {
    let w = world(quiet()).await;
    let (cid, token) = w.cluster("race").await;
    let t = w.tenant(&cid, "acme").await;
    for round in 0..3i64 {
        let base = 1000 * (round + 1);
        let mut tasks = vec![];
        // Newest first, then the older ones arriving late, all at once.
        for rev in (0..32i64).rev() {
            let app = w.app.clone();
            let body = json!({"items": [{"kind": "tenant", "id": t, "status": {
                "phase": if rev == 31 { "ready" } else { "degraded" },
                "observedRevision": base + rev,
                "message": format!("at {}", base + rev)}}]});
            let req = request(
                Method::POST,
                "/api/v1/agent/status",
                Some(&token),
                Some(body),
            );
            tasks.push(tokio::spawn(send(app, req)));
        }
        let mut applied = 0;
        for task in tasks {
            let r = task.await.unwrap();
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            applied += r.body["applied"].as_i64().unwrap();
        }
        assert!(applied >= 1, "round {round}: nothing applied");
        let got = w.get(&format!("/api/v1/clusters/{cid}/tenants/{t}")).await;
        assert_eq!(
            got["status"]["observedRevision"],
            base + 31,
            "round {round}: an older report overwrote the newest: {}",
            got["status"]
        );
        assert_eq!(got["status"]["phase"], "ready", "{}", got["status"]);
    }
}

#[tokio::test]
async fn long_messages_are_cut_per_item_never_refused_for_the_batch() {
    let w = world(quiet()).await;
    let (cid, token) = w.cluster("long").await;
    let t = w.tenant(&cid, "acme").await;
    let p = w
        .admin_post(
            &format!("/api/v1/clusters/{cid}/tenants/{t}/projects"),
            json!({"name": "web"}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let rev = w.desired(&token, 0, 1).await["revision"].as_i64().unwrap();
    let long = "svc-é: back-off restarting failed container; ".repeat(400);
    assert!(long.len() > 16_000);
    let r = w
        .call(
            Method::POST,
            "/api/v1/agent/status",
            Some(&token),
            Some(json!({"items": [
                {"kind": "tenant", "id": t, "status": {"phase": "degraded", "observedRevision": rev,
                    "message": long,
                    "conditions": [{"type": "Degraded", "status": "True", "reason": "R".repeat(500),
                        "message": long, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}},
                {"kind": "project", "id": p, "status": {"phase": "ready", "observedRevision": rev}}
            ]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body, json!({"applied": 2, "ignored": 0}));
    let tenant = w.get(&format!("/api/v1/clusters/{cid}/tenants/{t}")).await;
    let msg = tenant["status"]["message"].as_str().unwrap();
    assert!(msg.len() <= 4096 && msg.len() > 4000, "{}", msg.len());
    assert!(
        msg.starts_with("svc-é: back-off") && msg.ends_with("bytes cut]"),
        "{msg}"
    );
    let cond = &tenant["status"]["conditions"][0];
    assert!(cond["message"].as_str().unwrap().len() <= 4096);
    assert!(cond["reason"].as_str().unwrap().len() <= 128);
    let project = w
        .get(&format!("/api/v1/clusters/{cid}/tenants/{t}/projects/{p}"))
        .await;
    assert_eq!(project["status"]["phase"], "ready");

    // A heartbeat whose component message is helm's whole stderr still connects.
    let r = w
        .call(
            Method::POST,
            "/api/v1/agent/heartbeat",
            Some(&token),
            Some(json!({"operatorVersion": "0.1.0",
                "components": [{"name": "capsule", "phase": "failed", "message": long}],
                "appliedRevision": rev})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let caps = w.get(&format!("/api/v1/clusters/{cid}/capabilities")).await;
    let capsule = caps["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "capsule")
        .unwrap();
    assert_eq!(capsule["phase"], "failed");
    assert!(capsule["message"].as_str().unwrap().len() <= 4096);
}

#[tokio::test]
async fn component_requests_ride_the_long_poll() {
    let w = world(quiet()).await;
    let (cid, token) = w.cluster("cr").await;
    w.tenant(&cid, "acme").await;
    let rev = w.desired(&token, 0, 1).await["revision"].as_i64().unwrap();

    let waiting = tokio::spawn(send(
        w.app.clone(),
        request(
            Method::GET,
            &format!("/api/v1/agent/desired?cursor={rev}&waitSeconds=30"),
            Some(&token),
            None,
        ),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = w
        .call(
            Method::POST,
            &format!("/api/v1/clusters/{cid}/bootstrap/capsule"),
            Some(&w.admin.clone()),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(r.body["status"], "accepted");
    let asked = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert!(asked.elapsed() < Duration::from_secs(1));
    assert_eq!(r.body["components"][0]["component"], "capsule");
    assert_eq!(r.body["components"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["revision"].as_i64(), Some(rev));

    // Delivered: marked installing, and sent again until acknowledged.
    let caps = w.get(&format!("/api/v1/clusters/{cid}/capabilities")).await;
    assert_eq!(caps["components"][0]["name"], "capsule");
    assert_eq!(caps["components"][0]["phase"], "installing");
    let d = w.desired(&token, rev, 1).await;
    assert_eq!(d["components"][0]["component"], "capsule");

    // An operator that does not acknowledge requests (no `acknowledgedRequests`): its
    // report replaces the delivered request.
    let r = w.heartbeat(&token).await;
    assert_eq!(r.status, StatusCode::OK);
    let caps = w.get(&format!("/api/v1/clusters/{cid}/capabilities")).await;
    assert_eq!(caps["components"][0]["phase"], "ready");

    // Refresh asks for every component but the operator itself.
    let r = w
        .call(
            Method::POST,
            &format!("/api/v1/clusters/{cid}/refresh"),
            Some(&w.admin.clone()),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let d = w.desired(&token, rev, 5).await;
    let comps: Vec<&str> = d["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["component"].as_str().unwrap())
        .collect();
    assert_eq!(
        comps,
        ["cert-manager", "capsule", "capsule-proxy", "kubevela"]
    );

    let r = w
        .call(
            Method::POST,
            &format!("/api/v1/clusters/{cid}/bootstrap/istio"),
            Some(&w.admin.clone()),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn component_requests_are_kept_until_acknowledged() {
    let w = world(quiet()).await;
    let (cid, token) = w.cluster("ack").await;
    let rev = w.desired(&token, 0, 1).await["revision"].as_i64().unwrap();
    let r = w
        .call(
            Method::POST,
            &format!("/api/v1/clusters/{cid}/bootstrap/capsule"),
            Some(&w.admin.clone()),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let d = w.desired(&token, rev, 1).await;
    assert_eq!(d["components"].as_array().unwrap().len(), 1, "{d}");
    assert_eq!(d["components"][0]["component"], "capsule");
    let id = d["components"][0]["id"]
        .as_str()
        .expect("request id")
        .to_string();

    // The operator restarts before acting and heartbeats what it sees: capsule absent,
    // nothing acknowledged. The request survives and is delivered again, same id.
    let hb = |acks: Value, phase: &str| {
        json!({"operatorVersion": "0.1.0",
            "components": [{"name": "capsule", "phase": phase}],
            "acknowledgedRequests": acks, "appliedRevision": rev})
    };
    let r = w
        .call(
            Method::POST,
            "/api/v1/agent/heartbeat",
            Some(&token),
            Some(hb(json!([]), "absent")),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let caps = w.get(&format!("/api/v1/clusters/{cid}/capabilities")).await;
    let capsule = caps["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "capsule")
        .unwrap()
        .clone();
    assert_ne!(capsule["phase"], "absent", "{caps}");
    let d = w.desired(&token, rev, 1).await;
    assert_eq!(d["components"][0]["component"], "capsule", "{d}");
    assert_eq!(d["components"][0]["id"], id.as_str());

    // Acknowledged by id: the report now wins and the request is not sent again.
    let r = w
        .call(
            Method::POST,
            "/api/v1/agent/heartbeat",
            Some(&token),
            Some(hb(json!([id]), "installing")),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let d = w.desired(&token, rev, 1).await;
    assert!(d["components"].as_array().unwrap().is_empty(), "{d}");
    let r = w
        .call(
            Method::POST,
            "/api/v1/agent/heartbeat",
            Some(&token),
            Some(hb(json!([]), "ready")),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let caps = w.get(&format!("/api/v1/clusters/{cid}/capabilities")).await;
    assert_eq!(caps["components"][0]["phase"], "ready", "{caps}");
}

#[tokio::test]
async fn agents_are_isolated_from_other_clusters_and_from_user_routes() {
    let w = world(quiet()).await;
    let (ca, ta) = w.cluster("a").await;
    let (cb, tb) = w.cluster("b").await;
    let tenant_a = w.tenant(&ca, "acme").await;
    let tenant_b = w.tenant(&cb, "beta").await;
    let pb = w
        .admin_post(
            &format!("/api/v1/clusters/{cb}/tenants/{tenant_b}/projects"),
            json!({"name": "web"}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Desired state: only A's objects, whatever the cursor.
    let snap = w.desired(&ta, 0, 1).await;
    assert_eq!(ids_of(&snap, "tenant"), std::slice::from_ref(&tenant_a));
    assert!(!snap.to_string().contains(&tenant_b));
    assert!(!snap.to_string().contains(&pb));
    let rb = w.desired(&tb, 0, 1).await["revision"].as_i64().unwrap();
    w.tenant(&cb, "gamma").await;
    let d = w.desired(&ta, snap["revision"].as_i64().unwrap(), 1).await;
    assert!(d["objects"].as_array().unwrap().is_empty(), "{d}");
    let d = w.desired(&tb, rb, 5).await;
    assert_eq!(ids_of(&d, "tenant").len(), 1);

    // Status for B's records through A's credential: ignored, B unchanged.
    let r = w
        .call(
            Method::POST,
            "/api/v1/agent/status",
            Some(&ta),
            Some(json!({"items": [
                {"kind": "tenant", "id": tenant_b, "status": {"phase": "degraded", "observedRevision": 99}},
                {"kind": "project", "id": pb, "status": {"phase": "degraded", "observedRevision": 99}}
            ]})),
        )
        .await;
    assert_eq!(r.body, json!({"applied": 0, "ignored": 2}));
    let b = w
        .get(&format!("/api/v1/clusters/{cb}/tenants/{tenant_b}"))
        .await;
    assert_eq!(b["status"]["phase"], "pending");

    // Usage: another cluster's id is KN-403; B's tenant under A's id is KN-422.
    let record = |cluster: &str, tenant: &str| {
        json!([{"clusterId": cluster, "tenantId": tenant, "hour": "2026-01-01T10:00:00Z",
            "cpuMillicores": 1500, "memoryBytes": 1, "storageBytes": 1, "loadBalancers": 0,
            "namespaces": 2, "pods": 3, "apps": 1}])
    };
    let r = w
        .call(
            Method::POST,
            "/api/v1/agent/usage",
            Some(&ta),
            Some(record(&cb, &tenant_b)),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = w
        .call(
            Method::POST,
            "/api/v1/agent/usage",
            Some(&ta),
            Some(record(&ca, &tenant_b)),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    let r = w
        .call(
            Method::POST,
            "/api/v1/agent/usage",
            Some(&ta),
            Some(record(&ca, &tenant_a)),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let usage = w
        .get(&format!(
            "/api/v1/tenants/{tenant_a}/usage?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z"
        ))
        .await;
    assert!(usage.to_string().contains("1500"), "{usage}");

    // Heartbeats only touch the agent's own cluster.
    assert_eq!(w.heartbeat(&ta).await.status, StatusCode::OK);
    assert_eq!(
        w.get(&format!("/api/v1/clusters/{ca}")).await["status"],
        "connected"
    );
    assert_eq!(
        w.get(&format!("/api/v1/clusters/{cb}")).await["status"],
        "pending_bootstrap"
    );

    // Agent credentials never work on user routes, user tokens never on agent routes.
    for uri in [
        "/api/v1/clusters",
        "/api/v1/me",
        &format!("/api/v1/clusters/{ca}"),
    ] {
        let r = w.call(Method::GET, uri, Some(&ta), None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{uri}");
        assert_eq!(r.body["code"], "KN-401");
    }
    let admin = w.admin.clone();
    for (m, uri) in [
        (Method::POST, "/api/v1/agent/heartbeat"),
        (Method::GET, "/api/v1/agent/desired?waitSeconds=0"),
        (Method::POST, "/api/v1/agent/status"),
        (Method::POST, "/api/v1/agent/usage"),
    ] {
        let body = (m == Method::POST).then(|| json!({}));
        for token in [Some(admin.as_str()), None, Some("kna_garbage")] {
            let r = w.call(m.clone(), uri, token, body.clone()).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{m} {uri} {token:?}");
            assert_eq!(r.body["code"], "KN-401");
        }
    }
    // A's credential with B's id swapped in is not B's credential.
    let forged = ta.replace(&ca.replace('-', ""), &cb.replace('-', ""));
    assert_eq!(w.heartbeat(&forged).await.status, StatusCode::UNAUTHORIZED);
    // Rotation revokes the old credential.
    let id: ClusterId = ca.parse().unwrap();
    let new = agent::rotate_credential(w.st.store.as_ref(), id)
        .await
        .unwrap();
    assert_eq!(w.heartbeat(&ta).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(w.heartbeat(&new).await.status, StatusCode::OK);
    // Only the hash is stored.
    let stored =
        w.st.store
            .get_secret(id.0, CREDENTIAL_PURPOSE)
            .await
            .unwrap();
    assert_eq!(stored.len(), 32);
    assert!(!String::from_utf8_lossy(&stored).contains("kna_"));
}

/// Behind an ingress every agent call comes from one address (here all in-process calls
/// share the source IP `unknown`): agents are limited per cluster, so one cluster spending
/// its budget leaves another untouched; calls without a valid credential are still limited
/// per source IP.
#[tokio::test]
async fn agents_are_rate_limited_per_cluster_not_per_source_ip() {
    let w = world(ServerConfig {
        rate_limit_subject_rps: 1,
        rate_limit_subject_burst: 3,
        rate_limit_ip_rps: 1,
        rate_limit_ip_burst: 3,
        ..ServerConfig::default()
    })
    .await;
    // Two admin calls: the shared source IP has one call left.
    let (ca, ta) = w.cluster("a").await;
    let (_cb, tb) = w.cluster("b").await;

    // Cluster A spends its budget.
    let mut limited = None;
    for i in 0..8 {
        let r = w.heartbeat(&ta).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some((i, r));
            break;
        }
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let (i, r) = limited.expect("cluster A was never rate limited");
    assert!(
        i >= 3,
        "A was limited after {i} calls, before its burst of 3"
    );
    assert_eq!(r.body["code"], "KN-429", "{}", r.body);
    assert!(
        r.body["message"].as_str().unwrap().contains("per cluster"),
        "{}",
        r.body
    );

    // Cluster B, from the same address, has its own budget.
    for _ in 0..3 {
        let r = w.heartbeat(&tb).await;
        assert_eq!(r.status, StatusCode::OK, "B limited with A: {}", r.body);
    }
    let c = w.get(&format!("/api/v1/clusters/{ca}")).await;
    assert_eq!(c["status"], "connected", "{c}");

    // Calls with no valid credential are charged to the source IP (one call left of its
    // burst, and at most a few refilled while this runs).
    let mut statuses = vec![];
    for _ in 0..6 {
        let r = w.heartbeat("kna_not-a-credential").await;
        statuses.push(r.status);
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    }
    assert_eq!(
        statuses.last(),
        Some(&StatusCode::TOO_MANY_REQUESTS),
        "unauthenticated agent calls are limited per source IP: {statuses:?}"
    );

    let metrics = w.st.runtime.encode_metrics();
    assert!(
        sample(&metrics, "kubenova_rate_limited_total{scope=\"cluster\"}").unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
    assert!(
        sample(&metrics, "kubenova_rate_limited_total{scope=\"ip\"}").unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn stale_after_missed_heartbeats_and_recovery() {
    let w = world(ServerConfig {
        agent_heartbeat_interval: Duration::from_millis(200),
        ..quiet()
    })
    .await;
    let (cid, token) = w.cluster("stale").await;
    let r = w.heartbeat(&token).await;
    assert_eq!(r.body["intervalSeconds"], 1);
    let interval = w.st.config.agent_heartbeat_interval;
    assert_eq!(
        agent::mark_stale(w.st.store.as_ref(), interval)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        w.get(&format!("/api/v1/clusters/{cid}")).await["status"],
        "connected"
    );

    tokio::time::sleep(Duration::from_millis(700)).await;
    // Shown stale on read at once, recorded by the background pass.
    assert_eq!(
        w.get(&format!("/api/v1/clusters/{cid}")).await["status"],
        "stale"
    );
    assert_eq!(
        agent::mark_stale(w.st.store.as_ref(), interval)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        agent::mark_stale(w.st.store.as_ref(), interval)
            .await
            .unwrap(),
        0
    );
    let id: ClusterId = cid.parse().unwrap();
    let c = w.st.store.get_cluster(id).await.unwrap();
    assert_eq!(c.status.as_str(), "stale");
    let cond = c
        .conditions
        .iter()
        .find(|c| c.type_ == "AgentConnected")
        .unwrap();
    assert_eq!(cond.reason, "HeartbeatsMissed");

    let r = w.heartbeat(&token).await;
    assert_eq!(r.body["status"], "connected");
    assert_eq!(
        w.get(&format!("/api/v1/clusters/{cid}")).await["status"],
        "connected"
    );
    let list = w.get("/api/v1/clusters").await;
    assert_eq!(list["items"][0]["status"], "connected");
}

#[tokio::test]
async fn logs_of_a_cluster_whose_operator_is_not_connected_are_503_never_invented() {
    let w = world(quiet()).await;
    let (cid, _) = w.cluster("logs").await;
    let t = w.tenant(&cid, "acme").await;
    let p = w
        .admin_post(
            &format!("/api/v1/clusters/{cid}/tenants/{t}/projects"),
            json!({"name": "web"}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let apps = format!("/api/v1/clusters/{cid}/tenants/{t}/projects/{p}/apps");
    let a = w
        .admin_post(
            &apps,
            json!({"name": "shop", "image": "ghcr.io/acme/shop:1.0.0"}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = w
        .call(
            Method::GET,
            &format!("{apps}/{a}/logs/shop"),
            Some(&w.admin.clone()),
            None,
        )
        .await;
    // Logs travel through the operator, which never connected: KN-503 saying so.
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("its operator, which is not connected"),
        "{}",
        r.body
    );
    assert!(r.body.get("lines").is_none());
}

/// The value of one sample line of `/metrics` (`name{labels} value`), if present.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn sync_lag_is_measured_once_per_write_that_becomes_ready() {
    let w = world(quiet()).await;
    let (cid, token) = w.cluster("lag").await;
    let t = w.tenant(&cid, "acme").await;
    let rev = w.desired(&token, 0, 1).await["revision"].as_i64().unwrap();
    let report = |phase: &str, observed: i64| json!({"items": [{"kind": "tenant", "id": t, "status": {"phase": phase, "observedRevision": observed}}]});
    let post = |body: Value| {
        w.call(
            Method::POST,
            "/api/v1/agent/status",
            Some(&token),
            Some(body),
        )
    };
    let count = || {
        sample(
            &w.st.runtime.encode_metrics(),
            "kubenova_agent_sync_lag_seconds_count{kind=\"tenant\"}",
        )
        .unwrap_or(0.0)
    };

    // Reconciling is not ready: nothing measured; ready for the write: one sample.
    assert_eq!(
        post(report("reconciling", rev)).await.status,
        StatusCode::OK
    );
    assert_eq!(count(), 0.0);
    assert_eq!(post(report("ready", rev)).await.body["applied"], 1);
    assert_eq!(count(), 1.0);
    let metrics = w.st.runtime.encode_metrics();
    let sum = sample(
        &metrics,
        "kubenova_agent_sync_lag_seconds_sum{kind=\"tenant\"}",
    )
    .unwrap();
    assert!(sum > 0.0 && sum < 60.0, "{sum}");

    // A newer revision written for another object, and the tenant re-reported ready at it
    // (a resync): stored, not measured again.
    w.tenant(&cid, "beta").await;
    let rev2 = w.desired(&token, rev, 1).await["revision"]
        .as_i64()
        .unwrap();
    assert!(rev2 > rev);
    assert_eq!(post(report("ready", rev2)).await.body["applied"], 1);
    assert_eq!(count(), 1.0);

    // A new write of the tenant: ready for an older revision is not it; ready for the
    // write's revision is measured.
    let r = w
        .call(
            Method::PUT,
            &format!("/api/v1/clusters/{cid}/tenants/{t}/quotas"),
            Some(&w.admin.clone()),
            Some(json!({"requests.cpu": "3"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let rev3 = w.desired(&token, rev2, 1).await["revision"]
        .as_i64()
        .unwrap();
    assert!(rev3 > rev2);
    assert_eq!(
        post(report("reconciling", rev2 + 1)).await.status,
        StatusCode::OK
    );
    assert_eq!(count(), 1.0);
    assert_eq!(post(report("ready", rev3)).await.body["applied"], 1);
    assert_eq!(count(), 2.0);
}

#[tokio::test]
async fn the_sweep_counts_clusters_and_forgets_deleted_ones() {
    let w = world(quiet()).await;
    let (_a, token_a) = w.cluster("east").await;
    let (b, token_b) = w.cluster("west").await;
    w.cluster("north").await;
    assert_eq!(w.heartbeat(&token_a).await.status, StatusCode::OK);
    assert_eq!(w.heartbeat(&token_b).await.status, StatusCode::OK);
    let sweep = || async {
        let (_, clusters) = agent::sweep_clusters(w.st.store.as_ref(), Duration::from_secs(30))
            .await
            .unwrap();
        w.st.runtime
            .slo
            .observe_clusters(&clusters, time::OffsetDateTime::now_utc());
        kubenova_manager::api::slo::observe_store(&w.st).await;
        w.st.runtime.encode_metrics()
    };
    let m = sweep().await;
    assert_eq!(
        sample(&m, "kubenova_clusters{status=\"connected\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample(&m, "kubenova_clusters{status=\"pending_bootstrap\"}"),
        Some(1.0)
    );
    assert_eq!(sample(&m, "kubenova_clusters{status=\"stale\"}"), Some(0.0));
    let age = |m: &str, name: &str| {
        m.lines()
            .find(|l| {
                l.starts_with("kubenova_cluster_heartbeat_age_seconds{")
                    && l.contains(&format!("name=\"{name}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
    };
    assert!(
        age(&m, "west").is_some_and(|a| (0.0..5.0).contains(&a)),
        "{m}"
    );
    assert_eq!(age(&m, "north"), None, "never heartbeated");
    assert_eq!(
        sample(&m, "kubenova_store_backend_info{backend=\"sqlite\"}"),
        Some(1.0)
    );
    // The test state has no signing keys yet: unreadable.
    assert_eq!(sample(&m, "kubenova_signing_keys_readable"), Some(0.0));

    let r = w
        .call(
            Method::DELETE,
            &format!("/api/v1/clusters/{b}"),
            Some(&w.admin.clone()),
            None,
        )
        .await;
    assert!(r.status.is_success(), "{} {}", r.status, r.body);
    kubenova_manager::api::kubeconfigs::load_or_create_signing_keys(w.st.store.as_ref())
        .await
        .unwrap();
    let m = sweep().await;
    assert_eq!(
        sample(&m, "kubenova_clusters{status=\"connected\"}"),
        Some(1.0)
    );
    assert_eq!(
        age(&m, "west"),
        None,
        "the deleted cluster's series is gone: {m}"
    );
    assert!(age(&m, "east").is_some());
    assert_eq!(sample(&m, "kubenova_signing_keys_readable"), Some(1.0));
    let key_age = sample(&m, "kubenova_signing_key_age_seconds").unwrap();
    assert!((0.0..60.0).contains(&key_age), "{key_age}");
}
