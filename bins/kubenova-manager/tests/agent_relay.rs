//! Logs and events of apps through the agent channel, in-process over the full router: a
//! user's call becomes a request the test plays the operator for (requests long-poll,
//! answers), every test once on SQLite and once on Postgres (`KUBENOVA_TEST_POSTGRES_URL`;
//! skipped loudly without it, a failure with `KUBENOVA_REQUIRE_POSTGRES=1`). On Postgres,
//! also two managers on one database: the user waits on one, the operator talks to the
//! other.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use kubenova_api::agent::{MAX_ANSWER_LINES, MAX_LOG_LINE_BYTES};
use kubenova_api::ids::{ClusterId, ProjectId, TenantId};
use kubenova_manager::api::AppState;
use kubenova_manager::api::agent::{self, MAX_OPEN_REQUESTS};
use kubenova_manager::api::authz::Role;
use kubenova_manager::api::config::ServerConfig;
use kubenova_store::crypto::{Kek, Keyring};
use kubenova_store::{PgStore, SqliteStore, Store};
use serde_json::{Value, json};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

const SECRET: &[u8] = b"agent-relay-test-secret-0123456789abcdef";

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

fn keyring() -> Keyring {
    Keyring::new(vec![Kek::new("k1", &[9u8; 32]).unwrap()]).unwrap()
}

fn pg_url() -> Option<String> {
    match std::env::var("KUBENOVA_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var("KUBENOVA_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("KUBENOVA_REQUIRE_POSTGRES=1 but KUBENOVA_TEST_POSTGRES_URL is not set");
            }
            eprintln!(
                "!!! POSTGRES SKIPPED: set KUBENOVA_TEST_POSTGRES_URL to run the relay tests on Postgres !!!"
            );
            None
        }
    }
}

/// A fresh database: an SQLite file or a Postgres schema of its own.
struct Db {
    store: Arc<dyn Store>,
    schema: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Db {
    async fn sqlite() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("kn.db").display());
        let s = SqliteStore::connect(&url, keyring()).await.unwrap();
        Db {
            store: Arc::new(s),
            schema: None,
            _dir: Some(dir),
        }
    }

    async fn postgres() -> Option<Db> {
        let url = pg_url()?;
        let schema = format!("kn_relay_{}", uuid::Uuid::new_v4().simple());
        let admin = sqlx::PgPool::connect(&url)
            .await
            .expect("connect to KUBENOVA_TEST_POSTGRES_URL");
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        Some(Db {
            store: Arc::new(Self::pg_store(&url, &schema).await),
            schema: Some(schema),
            _dir: None,
        })
    }

    /// Another connection pool on the same schema (a second manager replica).
    async fn pg_store(url: &str, schema: &str) -> PgStore {
        let opts = sqlx::postgres::PgConnectOptions::from_str(url)
            .unwrap()
            .options([("search_path", schema)]);
        PgStore::connect_with(opts, 8, keyring()).await.unwrap()
    }

    async fn cleanup(self) {
        if let (Some(schema), Some(url)) = (&self.schema, pg_url()) {
            self.store.close().await;
            let admin = sqlx::PgPool::connect(&url).await.unwrap();
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&admin)
                .await
                .unwrap();
            admin.close().await;
        }
    }
}

macro_rules! both {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::Db::sqlite().await;
                    super::$name(&db).await;
                    db.cleanup().await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = super::Db::postgres().await else { return };
                    super::$name(&db).await;
                    db.cleanup().await;
                }
            )+
        }
    };
}

both!(
    logs_and_events_travel_through_the_agent,
    answers_are_refused_unless_of_the_agents_cluster_and_bounded,
    clusters_that_cannot_answer_are_503_with_retry_after,
    bad_parameters_and_foreign_callers_ask_nothing,
    followed_logs_stream_as_server_sent_events,
    answers_in_several_chunks_are_read_to_the_last,
    expired_requests_are_purged,
);

fn config() -> ServerConfig {
    ServerConfig {
        rate_limit_subject_rps: 0,
        rate_limit_ip_rps: 0,
        agent_answer_timeout: Duration::from_secs(10),
        ..ServerConfig::default()
    }
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
    body: Value,
}

/// The manager with one connected cluster (agent credential `agent`) holding tenant
/// `acme` with projects `shop` (app `web`) and `blog`, and a second connected cluster
/// (`other_agent`).
struct W {
    app: axum::Router,
    st: AppState,
    admin: String,
    agent: String,
    other_agent: String,
    cluster: String,
    tenant: String,
    project: String,
    namespace: String,
    app_id: String,
    other_project: String,
}

fn request(
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
    accept: Option<&str>,
) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if let Some(a) = accept {
        b = b.header(header::ACCEPT, a);
    }
    match body {
        Some(v) => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(v)),
        None => b.body(Body::empty()),
    }
    .unwrap()
}

async fn send(app: axum::Router, req: Request<Body>) -> Resp {
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).to_string();
    Resp {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        text,
    }
}

impl W {
    async fn new(store: Arc<dyn Store>, cfg: ServerConfig) -> W {
        let st = kubenova_manager::test_state(store, cfg, SECRET);
        Self::on(st).await
    }

    async fn on(st: AppState) -> W {
        let admin = st
            .auth
            .mint("admin", &[Role::Admin], &[], &[], Duration::from_secs(3600))
            .unwrap()
            .token;
        let mut w = W {
            app: kubenova_manager::api::router(st.clone()),
            st,
            admin,
            agent: String::new(),
            other_agent: String::new(),
            cluster: String::new(),
            tenant: String::new(),
            project: String::new(),
            namespace: String::new(),
            app_id: String::new(),
            other_project: String::new(),
        };
        // Unique names: several worlds may share one database.
        let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let (cluster, agent) = w.connected_cluster(&format!("c-{tag}")).await;
        let (_, other_agent) = w.connected_cluster(&format!("other-{tag}")).await;
        w.cluster = cluster;
        w.agent = agent;
        w.other_agent = other_agent;
        w.tenant = w
            .admin_post(
                &format!("/api/v1/clusters/{}/tenants", w.cluster),
                json!({"name": "acme", "owners": ["alice@acme.example"]}),
            )
            .await["id"]
            .as_str()
            .unwrap()
            .to_string();
        let shop = w
            .admin_post(
                &format!(
                    "/api/v1/clusters/{}/tenants/{}/projects",
                    w.cluster, w.tenant
                ),
                json!({"name": "shop"}),
            )
            .await;
        w.project = shop["id"].as_str().unwrap().to_string();
        w.namespace = shop["namespace"].as_str().unwrap().to_string();
        w.other_project = w
            .admin_post(
                &format!(
                    "/api/v1/clusters/{}/tenants/{}/projects",
                    w.cluster, w.tenant
                ),
                json!({"name": "blog"}),
            )
            .await["id"]
            .as_str()
            .unwrap()
            .to_string();
        w.app_id = w
            .admin_post(
                &format!("{}/apps", w.project_path()),
                json!({"name": "web", "image": "nginx:1.27"}),
            )
            .await["id"]
            .as_str()
            .unwrap()
            .to_string();
        w
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        send(
            self.app.clone(),
            request(
                method,
                uri,
                token,
                body.map(|v| serde_json::to_vec(&v).unwrap()),
                None,
            ),
        )
        .await
    }

    async fn admin_post(&self, uri: &str, body: Value) -> Value {
        let r = self
            .call(Method::POST, uri, Some(&self.admin.clone()), Some(body))
            .await;
        assert!(r.status.is_success(), "POST {uri}: {} {}", r.status, r.body);
        r.body
    }

    /// A registered cluster whose operator said hello.
    async fn connected_cluster(&self, name: &str) -> (String, String) {
        let c = self
            .admin_post(
                "/api/v1/clusters",
                json!({"name": name, "kubeconfig": KUBECONFIG}),
            )
            .await;
        let id = c["id"].as_str().unwrap().to_string();
        let token = agent::rotate_credential(self.st.store.as_ref(), id.parse().unwrap())
            .await
            .unwrap()
            .to_string();
        let r = self
            .call(
                Method::POST,
                "/api/v1/agent/heartbeat",
                Some(&token),
                Some(json!({"operatorVersion": "0.1.0"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        (id, token)
    }

    fn project_path(&self) -> String {
        format!(
            "/api/v1/clusters/{}/tenants/{}/projects/{}",
            self.cluster, self.tenant, self.project
        )
    }

    fn app_path(&self) -> String {
        format!("{}/apps/{}", self.project_path(), self.app_id)
    }

    fn token(&self, subject: &str, roles: &[Role], tenants: &[&str], projects: &[&str]) -> String {
        let tenants: Vec<TenantId> = tenants.iter().map(|t| t.parse().unwrap()).collect();
        let projects: Vec<ProjectId> = projects.iter().map(|p| p.parse().unwrap()).collect();
        self.st
            .auth
            .mint(
                subject,
                roles,
                &tenants,
                &projects,
                Duration::from_secs(3600),
            )
            .unwrap()
            .token
    }

    /// A developer of project `shop`.
    fn dev(&self) -> String {
        self.token(
            "dev@acme.example",
            &[Role::ProjectDev],
            &[],
            &[&self.project],
        )
    }

    /// A user's call, running while the test plays the operator.
    fn spawn_user(
        &self,
        path: String,
        token: String,
        accept: Option<&'static str>,
    ) -> tokio::task::JoinHandle<Resp> {
        let app = self.app.clone();
        tokio::spawn(async move {
            send(app, request(Method::GET, &path, Some(&token), None, accept)).await
        })
    }

    /// The operator's requests long-poll.
    async fn poll(&self, token: &str, wait: u64) -> Vec<Value> {
        let r = self
            .call(
                Method::GET,
                &format!("/api/v1/agent/requests?waitSeconds={wait}"),
                Some(token),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.body["requests"].as_array().unwrap().clone()
    }

    /// Polls until `n` requests were handed over (each is handed over once).
    async fn requests(&self, token: &str, n: usize) -> Vec<Value> {
        let mut got = Vec::new();
        while got.len() < n {
            let more = self.poll(token, 20).await;
            assert!(
                !more.is_empty(),
                "no request within 20 s (have {})",
                got.len()
            );
            got.extend(more);
        }
        assert_eq!(got.len(), n, "{got:?}");
        got
    }

    async fn answer(&self, token: &str, body: Value) -> Resp {
        self.call(
            Method::POST,
            "/api/v1/agent/answers",
            Some(token),
            Some(body),
        )
        .await
    }
}

fn line(pod: &str, text: &str) -> Value {
    json!({"time": "2026-01-01T00:00:01Z", "pod": pod, "container": "web", "text": text})
}

async fn logs_and_events_travel_through_the_agent(db: &Db) {
    let w = W::new(db.store.clone(), config()).await;
    let dev = w.dev();

    // JSON: the request names the app and its project namespace (from the manager's
    // records), the answer comes back as the response.
    let user = w.spawn_user(
        format!("{}/logs/web?tailLines=5&container=web", w.app_path()),
        dev.clone(),
        None,
    );
    let reqs = w.requests(&w.agent, 1).await;
    let r = &reqs[0];
    assert_eq!(r["kind"], "logs");
    assert_eq!(r["app"], "web");
    assert_eq!(r["appId"], w.app_id.as_str());
    assert_eq!(r["namespace"], w.namespace.as_str());
    assert_eq!(r["components"], json!(["web"]));
    assert_eq!(
        r["logs"],
        json!({"component": "web", "container": "web", "tailLines": 5, "previous": false, "follow": false, "followSeconds": 0})
    );
    // Handed over once; not to another cluster's operator.
    assert!(w.poll(&w.agent, 0).await.is_empty());
    assert!(w.poll(&w.other_agent, 0).await.is_empty());
    let a = w
        .answer(
            &w.agent,
            json!({"requestId": r["id"], "seq": 0, "done": true,
                "pods": [{"pod": "web-1", "container": "web", "lines": 2}],
                "lines": [line("web-1", "starting"), line("web-1", "listening on :8080")]}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body, json!({"stored": true, "stop": false}));
    let got = user.await.unwrap();
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.body["appId"], w.app_id.as_str());
    assert_eq!(got.body["component"], "web");
    assert_eq!(got.body["truncated"], false);
    let texts: Vec<&str> = got.body["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["starting", "listening on :8080"]);
    assert_eq!(got.body["pods"][0]["pod"], "web-1");

    // text/plain by Accept: lines of several pods carry their pod and container.
    let user = w.spawn_user(
        format!("{}/logs/web", w.app_path()),
        dev.clone(),
        Some("text/plain"),
    );
    let r = w.requests(&w.agent, 1).await.remove(0);
    assert_eq!(r["logs"]["tailLines"], 100, "the default tail");
    w.answer(
        &w.agent,
        json!({"requestId": r["id"], "seq": 0, "done": true,
            "pods": [{"pod": "web-1", "container": "web", "lines": 1}, {"pod": "web-2", "container": "web", "lines": 1, "error": "previous terminated container \"web\" in pod \"web-2\" not found"}],
            "lines": [line("web-1", "one"), line("web-2", "two")]}),
    )
    .await;
    let got = user.await.unwrap();
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert!(
        got.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(
        got.text,
        "# [web-2/web] previous terminated container \"web\" in pod \"web-2\" not found\n[web-1/web] one\n[web-2/web] two\n"
    );

    // Events.
    let user = w.spawn_user(format!("{}/events", w.app_path()), dev.clone(), None);
    let r = w.requests(&w.agent, 1).await.remove(0);
    assert_eq!(r["kind"], "events");
    assert_eq!(r["namespace"], w.namespace.as_str());
    assert!(r.get("logs").is_none());
    w.answer(
        &w.agent,
        json!({"requestId": r["id"], "seq": 0, "done": true,
            "events": [{"type": "Warning", "reason": "BackOff", "message": "Back-off restarting failed container web",
                "object": {"kind": "Pod", "name": "web-1"}, "count": 3, "lastTime": "2026-01-01T00:03:00Z", "source": "kubelet"}]}),
    )
    .await;
    let got = user.await.unwrap();
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.body["events"][0]["reason"], "BackOff");
    assert_eq!(got.body["events"][0]["object"]["name"], "web-1");
    assert_eq!(got.body["truncated"], false);

    // The operator's remark reaches the user.
    let user = w.spawn_user(format!("{}/logs/web", w.app_path()), dev.clone(), None);
    let r = w.requests(&w.agent, 1).await.remove(0);
    w.answer(
        &w.agent,
        json!({"requestId": r["id"], "seq": 0, "done": true, "pods": [],
            "message": "component web has no pods in namespace x (labels app.oam.dev/name=web,app.oam.dev/component=web)"}),
    )
    .await;
    let got = user.await.unwrap();
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert!(got.body["message"].as_str().unwrap().contains("no pods"));
    assert_eq!(got.body["lines"], json!([]));
}

async fn answers_are_refused_unless_of_the_agents_cluster_and_bounded(db: &Db) {
    let w = W::new(db.store.clone(), config()).await;
    let user = w.spawn_user(format!("{}/logs/web", w.app_path()), w.dev(), None);
    let r = w.requests(&w.agent, 1).await.remove(0);
    let id = r["id"].as_str().unwrap().to_string();
    let answer = |lines: Value| json!({"requestId": id, "seq": 0, "done": true, "lines": lines});

    // Another cluster's operator cannot answer it, nor can anyone answer what does not exist.
    let theirs = w
        .answer(&w.other_agent, answer(json!([line("evil", "injected")])))
        .await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND, "{}", theirs.body);
    assert_eq!(theirs.body["code"], "KN-404");
    let unknown = w
        .answer(
            &w.agent,
            json!({"requestId": uuid::Uuid::new_v4(), "seq": 0, "done": true}),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.body);
    // Out of bounds: a line too long, too many lines, a body above the limit.
    let long = w
        .answer(
            &w.agent,
            answer(json!([line("web-1", &"x".repeat(MAX_LOG_LINE_BYTES + 1))])),
        )
        .await;
    assert_eq!(
        long.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        long.body
    );
    assert_eq!(
        long.body["details"]["violations"][0]["field"],
        "lines[0].text"
    );
    let many: Vec<Value> = (0..=MAX_ANSWER_LINES).map(|_| line("p", "x")).collect();
    let many = w.answer(&w.agent, answer(Value::Array(many))).await;
    assert_eq!(
        many.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        many.body
    );
    assert_eq!(many.body["details"]["violations"][0]["field"], "lines");
    let lines: Vec<Value> = (0..200)
        .map(|i| {
            line(
                "web-1",
                &format!("{i}{}", "y".repeat(MAX_LOG_LINE_BYTES - 10)),
            )
        })
        .collect();
    let huge = w.answer(&w.agent, answer(Value::Array(lines))).await;
    assert_eq!(huge.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", huge.body);
    // Out of order.
    let gap = w
        .answer(
            &w.agent,
            json!({"requestId": id, "seq": 1, "lines": [line("web-1", "later")]}),
        )
        .await;
    assert_eq!(gap.status, StatusCode::CONFLICT, "{}", gap.body);
    // User tokens are not agent credentials, and agent credentials are not user tokens.
    let as_user = w.answer(&w.admin, answer(json!([]))).await;
    assert_eq!(as_user.status, StatusCode::UNAUTHORIZED);
    let as_agent = w
        .call(
            Method::GET,
            &format!("{}/events", w.app_path()),
            Some(&w.agent),
            None,
        )
        .await;
    assert_eq!(as_agent.status, StatusCode::UNAUTHORIZED);

    // None of that was stored: the user gets exactly the operator's answer.
    let ok = w
        .answer(&w.agent, answer(json!([line("web-1", "the real line")])))
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    let got = user.await.unwrap();
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.body["lines"], json!([line("web-1", "the real line")]));
    // The caller is done: the request is gone, and so is every later answer.
    wait_gone(&w, &id).await;
}

/// Waits until answers to `id` are refused as gone (the caller deletes its request when
/// it is done with it, in the background).
async fn wait_gone(w: &W, id: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = w
            .answer(&w.agent, json!({"requestId": id, "seq": 9, "done": true}))
            .await;
        if r.status == StatusCode::NOT_FOUND {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "request {id} still answerable: {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn clusters_that_cannot_answer_are_503_with_retry_after(db: &Db) {
    let cfg = ServerConfig {
        agent_answer_timeout: Duration::from_millis(300),
        ..config()
    };
    let w = W::new(db.store.clone(), cfg).await;
    let dev = w.dev();

    // Connected, but the operator never answers: KN-503 after the answer timeout.
    let user = w.spawn_user(format!("{}/logs/web", w.app_path()), dev.clone(), None);
    let r = w.requests(&w.agent, 1).await.remove(0);
    let got = user.await.unwrap();
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "{}", got.text);
    assert_eq!(got.body["code"], "KN-503");
    assert_eq!(got.body["details"]["dependency"], "cluster-agent");
    assert!(
        got.body["message"]
            .as_str()
            .unwrap()
            .contains("did not answer within 300 ms"),
        "{}",
        got.body
    );
    assert!(got.headers.contains_key(header::RETRY_AFTER));
    // Its request is gone: a late answer is refused.
    wait_gone(&w, r["id"].as_str().unwrap()).await;

    // An operator that reports it could not read the cluster.
    let user = w.spawn_user(format!("{}/events", w.app_path()), dev.clone(), None);
    let r = w.requests(&w.agent, 1).await.remove(0);
    w.answer(
        &w.agent,
        json!({"requestId": r["id"], "seq": 0, "done": true,
            "error": {"message": "events is forbidden: User \"system:serviceaccount:kubenova-system:kubenova-operator\" cannot list resource \"events\""}}),
    )
    .await;
    let got = user.await.unwrap();
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "{}", got.text);
    assert!(
        got.body["message"]
            .as_str()
            .unwrap()
            .contains("cannot list")
    );
    assert!(got.headers.contains_key(header::RETRY_AFTER));

    // The cluster's bound of requests in flight.
    let slow = ServerConfig {
        agent_answer_timeout: Duration::from_secs(15),
        ..config()
    };
    let w2 = W::on(kubenova_manager::test_state(db.store.clone(), slow, SECRET)).await;
    let dev2 = w2.dev();
    let waiting: Vec<_> = (0..MAX_OPEN_REQUESTS)
        .map(|_| w2.spawn_user(format!("{}/logs/web", w2.app_path()), dev2.clone(), None))
        .collect();
    let reqs = w2.requests(&w2.agent, MAX_OPEN_REQUESTS as usize).await;
    let full = w2
        .call(
            Method::GET,
            &format!("{}/logs/web", w2.app_path()),
            Some(&dev2),
            None,
        )
        .await;
    assert_eq!(
        full.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        full.text
    );
    assert!(full.body["message"].as_str().unwrap().contains("in flight"));
    assert!(full.headers.contains_key(header::RETRY_AFTER));
    assert!(
        w2.poll(&w2.agent, 0).await.is_empty(),
        "the refused call asked nothing"
    );
    for r in &reqs {
        w2.answer(
            &w2.agent,
            json!({"requestId": r["id"], "seq": 0, "done": true}),
        )
        .await;
    }
    for u in waiting {
        assert_eq!(u.await.unwrap().status, StatusCode::OK);
    }

    // Not connected (never heartbeated): KN-503 at once, nothing asked.
    let c = w
        .admin_post(
            "/api/v1/clusters",
            json!({"name": "cold", "kubeconfig": KUBECONFIG}),
        )
        .await;
    let cold = c["id"].as_str().unwrap().to_string();
    let cold_agent =
        agent::rotate_credential(w.st.store.as_ref(), cold.parse::<ClusterId>().unwrap())
            .await
            .unwrap()
            .to_string();
    let t = w
        .admin_post(
            &format!("/api/v1/clusters/{cold}/tenants"),
            json!({"name": "zeta", "owners": ["z@zeta.example"]}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let p = w
        .admin_post(
            &format!("/api/v1/clusters/{cold}/tenants/{t}/projects"),
            json!({"name": "web"}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let apps = format!("/api/v1/clusters/{cold}/tenants/{t}/projects/{p}/apps");
    let a = w
        .admin_post(&apps, json!({"name": "site", "image": "nginx:1.27"}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    for path in [
        format!("{apps}/{a}/logs/site"),
        format!("{apps}/{a}/events"),
    ] {
        let got = w
            .call(Method::GET, &path, Some(&w.admin.clone()), None)
            .await;
        assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "{}", got.text);
        assert!(
            got.body["message"]
                .as_str()
                .unwrap()
                .contains("pending_bootstrap"),
            "{}",
            got.body
        );
        assert!(got.headers.contains_key(header::RETRY_AFTER));
    }
    assert!(w.poll(&cold_agent, 0).await.is_empty());
}

async fn bad_parameters_and_foreign_callers_ask_nothing(db: &Db) {
    let w = W::new(db.store.clone(), config()).await;
    let dev = w.dev();
    let logs = format!("{}/logs/web", w.app_path());
    for (query, status, field) in [
        (
            "tailLines=0",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("tailLines"),
        ),
        (
            "tailLines=5001",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("tailLines"),
        ),
        (
            "sinceSeconds=0",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("sinceSeconds"),
        ),
        (
            "sinceSeconds=604801",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("sinceSeconds"),
        ),
        (
            "container=Not_A_Name",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("container"),
        ),
        ("tailLines=ten", StatusCode::BAD_REQUEST, None),
        ("tailLines=-1", StatusCode::BAD_REQUEST, None),
        ("previous=maybe", StatusCode::BAD_REQUEST, None),
    ] {
        let r = w
            .call(Method::GET, &format!("{logs}?{query}"), Some(&dev), None)
            .await;
        assert_eq!(r.status, status, "{query}: {}", r.text);
        if let Some(f) = field {
            assert_eq!(r.body["details"]["violations"][0]["field"], f, "{query}");
        }
    }
    let r = w
        .call(
            Method::GET,
            &format!("{}/logs/worker", w.app_path()),
            Some(&dev),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);

    // Callers outside the app's project or tenant: KN-404, as for reading the app.
    let other = w
        .admin_post(
            &format!("/api/v1/clusters/{}/tenants", w.cluster),
            json!({"name": "beta", "owners": ["bob@beta.example"]}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let foreign = [
        w.token("bob@beta.example", &[Role::TenantOwner], &[&other], &[]),
        w.token(
            "dev@acme.example",
            &[Role::ProjectDev],
            &[],
            &[&w.other_project],
        ),
        w.token("audit@beta.example", &[Role::ReadOnly], &[&other], &[]),
    ];
    for token in &foreign {
        for path in [logs.clone(), format!("{}/events", w.app_path())] {
            let r = w.call(Method::GET, &path, Some(token), None).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.text);
            assert_eq!(r.body["code"], "KN-404");
        }
    }
    assert!(w.poll(&w.agent, 0).await.is_empty(), "nothing was asked");

    // The operator finds a parameter wrong (a container the pods lack): KN-422 naming it.
    let user = w.spawn_user(format!("{logs}?container=sidecar"), dev.clone(), None);
    let r = w.requests(&w.agent, 1).await.remove(0);
    w.answer(
        &w.agent,
        json!({"requestId": r["id"], "seq": 0, "done": true,
            "error": {"field": "container", "message": "the pods of component web have no container \"sidecar\"; their containers: web"}}),
    )
    .await;
    let got = user.await.unwrap();
    assert_eq!(got.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", got.text);
    assert_eq!(got.body["details"]["violations"][0]["field"], "container");
}

/// Reads server-sent events from a streaming body until `n` events arrived.
struct Events {
    body: Body,
    buf: String,
}

impl Events {
    async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = String::new();
                let mut data = String::new();
                for l in block.lines() {
                    if let Some(e) = l.strip_prefix("event:") {
                        event = e.trim().to_string();
                    } else if let Some(d) = l.strip_prefix("data:") {
                        data.push_str(d.trim_start());
                    }
                }
                if event.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some((event, serde_json::from_str(&data).unwrap()));
            }
            let frame = tokio::time::timeout(Duration::from_secs(30), self.body.frame())
                .await
                .expect("no event within 30 s")?
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buf.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }
}

async fn follow(w: &W, token: &str) -> (tokio::task::JoinHandle<axum::response::Response>, Value) {
    let app = w.app.clone();
    let req = request(
        Method::GET,
        &format!("{}/logs/web?follow=true&tailLines=1", w.app_path()),
        Some(token),
        None,
        None,
    );
    let user = tokio::spawn(async move { app.oneshot(req).await.unwrap() });
    let r = w.requests(&w.agent, 1).await.remove(0);
    assert_eq!(r["logs"]["follow"], true);
    assert_eq!(r["logs"]["followSeconds"], 300);
    (user, r)
}

async fn followed_logs_stream_as_server_sent_events(db: &Db) {
    let w = W::new(db.store.clone(), config()).await;
    let dev = w.dev();

    // Pods and the tail first, then new lines as they come, then the end.
    let (user, r) = follow(&w, &dev).await;
    let id = r["id"].clone();
    let ok = |r: Resp| {
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.body
    };
    ok(w.answer(
        &w.agent,
        json!({"requestId": id, "seq": 0, "pods": [{"pod": "web-1", "container": "web", "lines": 1}],
            "lines": [line("web-1", "tail")]}),
    )
    .await);
    let resp = user.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE].to_str().unwrap(),
        "text/event-stream"
    );
    let mut events = Events {
        body: resp.into_body(),
        buf: String::new(),
    };
    let (e, d) = events.next().await.unwrap();
    assert_eq!(
        (e.as_str(), &d["pods"][0]["pod"]),
        ("pods", &json!("web-1"))
    );
    let (e, d) = events.next().await.unwrap();
    assert_eq!((e.as_str(), d["text"].as_str()), ("line", Some("tail")));
    ok(w.answer(
        &w.agent,
        json!({"requestId": id, "seq": 1, "lines": [line("web-1", "new 1"), line("web-1", "new 2")]}),
    )
    .await);
    // A probe ("still wanted?") is acknowledged, not stored.
    assert_eq!(
        ok(w.answer(&w.agent, json!({"requestId": id, "seq": 2})).await),
        json!({"stored": false, "stop": false})
    );
    for want in ["new 1", "new 2"] {
        let (e, d) = events.next().await.unwrap();
        assert_eq!((e.as_str(), d["text"].as_str()), ("line", Some(want)));
    }
    ok(w.answer(
        &w.agent,
        json!({"requestId": id, "seq": 3, "done": true, "end": "ended", "message": "every followed container stopped"}),
    )
    .await);
    let (e, d) = events.next().await.unwrap();
    assert_eq!((e.as_str(), &d["reason"]), ("end", &json!("ended")));
    assert!(events.next().await.is_none(), "the stream ends after `end`");
    wait_gone(&w, id.as_str().unwrap()).await;

    // The client leaves: the request goes, and the operator is told to stop.
    let (user, r) = follow(&w, &dev).await;
    ok(w.answer(
        &w.agent,
        json!({"requestId": r["id"], "seq": 0, "pods": []}),
    )
    .await);
    let resp = user.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    drop(resp);
    wait_gone(&w, r["id"].as_str().unwrap()).await;

    // The byte bound of a follow: the operator is told to stop, the client sees why.
    let (user, r) = follow(&w, &dev).await;
    let id = r["id"].clone();
    ok(
        w.answer(&w.agent, json!({"requestId": id, "seq": 0, "pods": []}))
            .await,
    );
    let resp = user.await.unwrap();
    let mut events = Events {
        body: resp.into_body(),
        buf: String::new(),
    };
    assert_eq!(events.next().await.unwrap().0, "pods");
    let big: Vec<Value> = (0..80)
        .map(|i| {
            line(
                "web-1",
                &format!("{i:03}{}", "z".repeat(MAX_LOG_LINE_BYTES - 100)),
            )
        })
        .collect();
    let reader = tokio::spawn(async move {
        let mut lines = 0;
        loop {
            match events.next().await {
                Some((e, _)) if e == "line" => lines += 1,
                Some((e, d)) if e == "end" => return (lines, d),
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    let mut seq = 1;
    loop {
        let reply = ok(w
            .answer(&w.agent, json!({"requestId": id, "seq": seq, "lines": big}))
            .await);
        seq += 1;
        if reply["stop"] == true {
            assert_eq!(reply["stored"], false);
            break;
        }
        assert!(seq < 20, "no stop after {seq} chunks");
    }
    let (lines, end) = reader.await.unwrap();
    assert_eq!(end["reason"], "limit", "{end}");
    assert_eq!(
        lines,
        (seq - 2) * 80,
        "every accepted chunk reached the client"
    );
    wait_gone(&w, id.as_str().unwrap()).await;
}

/// Postgres: two managers on one database. The user's call waits on manager 1, the
/// operator polls and answers manager 2: the request reaches manager 2's long-poll and
/// the answer reaches manager 1's waiting call (LISTEN/NOTIFY, with fallback polls).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_managers_relay_through_one_database() {
    let Some(db) = Db::postgres().await else {
        return;
    };
    let url = pg_url().unwrap();
    let schema = db.schema.clone().unwrap();
    let st1 = kubenova_manager::test_state(db.store.clone(), config(), SECRET);
    let st2 = kubenova_manager::test_state(
        Arc::new(Db::pg_store(&url, &schema).await),
        config(),
        SECRET,
    );
    for st in [&st1, &st2] {
        kubenova_manager::listen_postgres(st, &url);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !(st1.changes.is_listening() && st2.changes.is_listening()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the listeners never connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let w1 = W::on(st1).await;
    let app2 = kubenova_manager::api::router(st2.clone());
    let on2 = |method: Method, uri: &str, token: &str, body: Option<Value>| {
        send(
            app2.clone(),
            request(
                method,
                uri,
                Some(token),
                body.map(|v| serde_json::to_vec(&v).unwrap()),
                None,
            ),
        )
    };
    for round in 0..3 {
        let user = w1.spawn_user(format!("{}/logs/web", w1.app_path()), w1.dev(), None);
        let polled = on2(
            Method::GET,
            "/api/v1/agent/requests?waitSeconds=20",
            &w1.agent,
            None,
        )
        .await;
        assert_eq!(polled.status, StatusCode::OK, "{}", polled.text);
        let r = &polled.body["requests"][0];
        assert_eq!(
            r["namespace"],
            w1.namespace.as_str(),
            "round {round}: {}",
            polled.body
        );
        let a = on2(
            Method::POST,
            "/api/v1/agent/answers",
            &w1.agent,
            Some(json!({"requestId": r["id"], "seq": 0, "done": true,
                "lines": [line("web-1", &format!("round {round}"))]})),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        let got = user.await.unwrap();
        assert_eq!(got.status, StatusCode::OK, "{}", got.text);
        assert_eq!(got.body["lines"][0]["text"], format!("round {round}"));
    }
    st2.store.close().await;
    db.cleanup().await;
}

async fn answers_in_several_chunks_are_read_to_the_last(db: &Db) {
    let w = W::new(db.store.clone(), config()).await;
    let user = w.spawn_user(format!("{}/logs/web", w.app_path()), w.dev(), None);
    let r = w.requests(&w.agent, 1).await.remove(0);
    let first = w
        .answer(
            &w.agent,
            json!({"requestId": r["id"], "seq": 0, "pods": [{"pod": "web-1", "container": "web", "lines": 2}],
                "lines": [line("web-1", "one")]}),
        )
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    // The call waits for the last chunk before it answers.
    tokio::task::yield_now().await;
    let last = w
        .answer(
            &w.agent,
            json!({"requestId": r["id"], "seq": 1, "done": true, "lines": [line("web-1", "two")]}),
        )
        .await;
    assert_eq!(last.status, StatusCode::OK, "{}", last.body);
    let got = user.await.unwrap();
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(
        got.body["lines"],
        json!([line("web-1", "one"), line("web-1", "two")])
    );
}

async fn expired_requests_are_purged(db: &Db) {
    let cfg = ServerConfig {
        agent_heartbeat_interval: Duration::from_millis(100),
        ..config()
    };
    let w = W::new(db.store.clone(), cfg).await;
    // A request whose caller is gone without deleting it (a crashed replica).
    let now = time::OffsetDateTime::now_utc();
    let id = uuid::Uuid::new_v4();
    let record = kubenova_store::AgentRequestRecord {
        id,
        cluster_id: w.cluster.parse().unwrap(),
        app_id: w.app_id.parse().unwrap(),
        kind: "logs".into(),
        doc: json!({"id": id}),
        created_at: now - time::Duration::minutes(10),
        expires_at: now - time::Duration::minutes(5),
    };
    assert!(w.st.store.create_agent_request(&record, 10).await.unwrap());
    let task = agent::spawn_stale_task(w.st.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while w.st.store.take_agent_answers(id).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "never purged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
}
