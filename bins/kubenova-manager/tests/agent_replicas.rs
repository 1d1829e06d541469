//! The agent channel across manager replicas on one Postgres database, in-process over
//! the full router (`KUBENOVA_TEST_POSTGRES_URL`; skipped loudly without it, a failure
//! with `KUBENOVA_REQUIRE_POSTGRES=1`):
//!
//! - a replica whose record cache still holds a record another replica changed (its
//!   invalidation not delivered yet) still gives the agent the committed content for the
//!   revision it is told, and judges status reports on the committed status;
//! - while the Postgres listener is down, hundreds of waiting long-polls issue a bounded
//!   number of store queries (not two per waiter every 200 ms), and a change still
//!   reaches its waiter within a bounded time.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use kubenova_manager::api::AppState;
use kubenova_manager::api::authz::Role;
use kubenova_manager::api::config::ServerConfig;
use kubenova_store::crypto::{Kek, Keyring};
use kubenova_store::{PgStore, Store};
use serde_json::{Value, json};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tower::ServiceExt;

const SECRET: &[u8] = b"agent-replicas-test-secret-0123456789abcdef";

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
    Keyring::new(vec![Kek::new("k1", &[7u8; 32]).unwrap()]).unwrap()
}

fn pg_url() -> Option<String> {
    match std::env::var("KUBENOVA_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var("KUBENOVA_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("KUBENOVA_REQUIRE_POSTGRES=1 but KUBENOVA_TEST_POSTGRES_URL is not set");
            }
            eprintln!(
                "!!! POSTGRES SKIPPED: set KUBENOVA_TEST_POSTGRES_URL to run the replica tests on Postgres !!!"
            );
            None
        }
    }
}

/// A Postgres schema of its own; each replica gets its own connection pool on it.
struct Db {
    url: String,
    schema: String,
}

impl Db {
    async fn new() -> Option<Db> {
        let url = pg_url()?;
        let schema = format!("kn_replicas_{}", uuid::Uuid::new_v4().simple());
        let admin = sqlx::PgPool::connect(&url)
            .await
            .expect("connect to KUBENOVA_TEST_POSTGRES_URL");
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        Some(Db { url, schema })
    }

    /// A store of one replica (its own pool and record cache).
    async fn store(&self, pool: u32) -> Arc<dyn Store> {
        let opts = sqlx::postgres::PgConnectOptions::from_str(&self.url)
            .unwrap()
            .options([("search_path", self.schema.as_str())]);
        Arc::new(PgStore::connect_with(opts, pool, keyring()).await.unwrap())
    }

    async fn cleanup(self) {
        let admin = sqlx::PgPool::connect(&self.url).await.unwrap();
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
    }
}

/// A TCP proxy to Postgres that can be cut: [`Proxy::cut`] closes every proxied
/// connection and refuses new ones.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<tokio::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<tokio::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (up2, conns2) = (Arc::clone(&up), Arc::clone(&conns));
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                conns2.lock().await.push(task);
            }
        });
        Proxy {
            port,
            up,
            conns,
            accept,
        }
    }

    /// `url` with this proxy as host and port.
    fn url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap();
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let userinfo = authority
            .rsplit_once('@')
            .map(|(u, _)| format!("{u}@"))
            .unwrap_or_default();
        format!("{scheme}://{userinfo}127.0.0.1:{}/{path}", self.port)
    }

    async fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for t in self.conns.lock().await.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn config() -> ServerConfig {
    ServerConfig {
        rate_limit_subject_rps: 0,
        rate_limit_ip_rps: 0,
        ..ServerConfig::default()
    }
}

struct Resp {
    status: StatusCode,
    body: Value,
    text: String,
}

/// One manager replica: its state and router.
#[derive(Clone)]
struct Replica {
    st: AppState,
    app: axum::Router,
}

impl Replica {
    fn new(store: Arc<dyn Store>) -> Replica {
        let st = kubenova_manager::test_state(store, config(), SECRET);
        Replica {
            app: kubenova_manager::api::router(st.clone()),
            st,
        }
    }

    fn admin(&self) -> String {
        self.st
            .auth
            .mint("admin", &[Role::Admin], &[], &[], Duration::from_secs(3600))
            .unwrap()
            .token
    }

    async fn call(&self, method: Method, uri: &str, token: &str, body: Option<Value>) -> Resp {
        let b = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        let req = match body {
            Some(v) => b
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&v).unwrap())),
            None => b.body(Body::empty()),
        }
        .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Resp {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            text: String::from_utf8_lossy(&bytes).to_string(),
        }
    }

    async fn ok(&self, method: Method, uri: &str, token: &str, body: Option<Value>) -> Value {
        let r = self.call(method.clone(), uri, token, body).await;
        assert!(
            r.status.is_success(),
            "{method} {uri}: {} {}",
            r.status,
            r.text
        );
        r.body
    }

    /// A registered cluster and its agent credential (as bootstrap would mint it).
    async fn cluster(&self, admin: &str, name: &str) -> (String, String) {
        let c = self
            .ok(
                Method::POST,
                "/api/v1/clusters",
                admin,
                Some(json!({"name": name, "kubeconfig": KUBECONFIG})),
            )
            .await;
        let id = c["id"].as_str().unwrap().to_string();
        let token = kubenova_manager::api::agent::rotate_credential(
            self.st.store.as_ref(),
            id.parse().unwrap(),
        )
        .await
        .unwrap()
        .to_string();
        (id, token)
    }

    async fn tenant(&self, admin: &str, cluster: &str, name: &str) -> String {
        let t = self
            .ok(
                Method::POST,
                &format!("/api/v1/clusters/{cluster}/tenants"),
                admin,
                Some(json!({"name": name, "owners": ["alice@example.com"]})),
            )
            .await;
        t["id"].as_str().unwrap().to_string()
    }

    async fn desired(&self, agent: &str, cursor: i64, wait: u64) -> Value {
        self.ok(
            Method::GET,
            &format!("/api/v1/agent/desired?cursor={cursor}&waitSeconds={wait}"),
            agent,
            None,
        )
        .await
    }

    async fn report(&self, agent: &str, tenant: &str, phase: &str, observed: i64) -> Value {
        self.ok(
            Method::POST,
            "/api/v1/agent/status",
            agent,
            Some(json!({"items": [{"kind": "tenant", "id": tenant,
                "status": {"phase": phase, "conditions": [], "observedRevision": observed}}]})),
        )
        .await
    }

    /// The total of store calls so far (the metered store's per-operation counts).
    async fn store_calls(&self) -> u64 {
        let req = Request::builder()
            .uri("/metrics")
            .body(Body::empty())
            .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|l| l.starts_with("kubenova_store_operation_duration_seconds_count{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

fn tenant_object<'a>(d: &'a Value, id: &str) -> &'a Value {
    d["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "tenant" && o["id"] == id)
        .unwrap_or_else(|| panic!("no tenant {id} in {d}"))
}

/// Replica B holds tenant T in its record cache; T changes through replica A, and B's
/// invalidation of T is never delivered (its cache is enabled as if its listener were
/// connected, but no listener runs: the slowest possible invalidation, deterministic).
/// B's notifier is woken as its listener would be by the desired-state notification.
/// The agent polling B must get T's new content with the new revision, and B must judge
/// a status report on T's committed status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_a_stale_cache_still_serves_committed_content() {
    let Some(db) = Db::new().await else { return };
    let a = Replica::new(db.store(4).await);
    let b = Replica::new(db.store(4).await);
    b.st.store.row_cache().unwrap().enable();
    let admin = a.admin();
    let (cluster, agent) = a.cluster(&admin, "replicas").await;
    a.tenant(&admin, &cluster, "first").await;
    let snap = b.desired(&agent, 0, 0).await;
    assert_eq!(snap["snapshot"], true, "{snap}");
    let rev = snap["revision"].as_i64().unwrap();

    // T is created through A; the agent's delta from B reads it (and B caches it), as
    // does a user's read on B.
    let t = a.tenant(&admin, &cluster, "acme").await;
    let d = b.desired(&agent, rev, 0).await;
    assert_eq!(
        tenant_object(&d, &t)["object"]["spec"]["owners"],
        json!(["alice@example.com"]),
        "{d}"
    );
    let rev = d["revision"].as_i64().unwrap();
    b.ok(
        Method::GET,
        &format!("/api/v1/clusters/{cluster}/tenants/{t}"),
        &admin,
        None,
    )
    .await;

    // The agent waits on B; T's owners change through A; B's notification arrives first.
    let poll = {
        let b = b.clone();
        let agent = agent.clone();
        tokio::spawn(async move { b.desired(&agent, rev, 20).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!poll.is_finished(), "the poll must be waiting");
    a.ok(
        Method::PUT,
        &format!("/api/v1/clusters/{cluster}/tenants/{t}/owners"),
        &admin,
        Some(json!({"owners": ["bob@example.com"]})),
    )
    .await;
    b.st.changes.notify(cluster.parse().unwrap());
    let d = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the poll returned after the notification")
        .unwrap();
    let new_rev = d["revision"].as_i64().unwrap();
    assert!(new_rev > rev, "{d}");
    assert_eq!(
        tenant_object(&d, &t)["object"]["spec"]["owners"],
        json!(["bob@example.com"]),
        "revision {new_rev} must carry the owners committed at that revision: {d}"
    );

    // The cursor is still behind on a fresh poll of B (e.g. after the agent restarted).
    let again = b.desired(&agent, rev, 0).await;
    assert_eq!(
        tenant_object(&again, &t)["object"]["spec"]["owners"],
        json!(["bob@example.com"]),
        "{again}"
    );
    let snap = b.desired(&agent, 0, 0).await;
    assert_eq!(
        tenant_object(&snap, &t)["object"]["spec"]["owners"],
        json!(["bob@example.com"]),
        "{snap}"
    );

    // Reports: `ready` at the new revision through B, then B caches that status; a
    // `degraded` report at the same revision lands through A. `ready` again through B is
    // news (the committed status is `degraded`), whatever B's cache still holds.
    let r = b.report(&agent, &t, "ready", new_rev).await;
    assert_eq!(r["applied"], 1, "{r}");
    let seen = b
        .ok(
            Method::GET,
            &format!("/api/v1/clusters/{cluster}/tenants/{t}"),
            &admin,
            None,
        )
        .await;
    assert_eq!(seen["status"]["phase"], "ready", "{seen}");
    let r = a.report(&agent, &t, "degraded", new_rev).await;
    assert_eq!(r["applied"], 1, "{r}");
    let r = b.report(&agent, &t, "ready", new_rev).await;
    assert_eq!(
        r["applied"], 1,
        "a report judged on B's stale cached status was ignored: {r}"
    );
    let stored = a.st.store.get_tenant(t.parse().unwrap()).await.unwrap();
    assert_eq!(stored.status.phase, kubenova_api::model::Phase::Ready);

    a.st.store.close().await;
    b.st.store.close().await;
    db.cleanup().await;
}

/// Waiting long-polls of one replica while its Postgres listener is down.
const WAITERS: usize = 200;
/// How long the store calls of the waiting polls are counted.
const WINDOW: Duration = Duration::from_secs(4);
/// Most fallback polls per second of one replica's waiters while the listener is down.
const POLLS_PER_SECOND: u64 = kubenova_store::notify::LOST_POLLS_PER_SECOND as u64;
/// Longest backoff of one waiter's fallback polls while the listener is down.
const LONGEST_BACKOFF: Duration = kubenova_store::notify::LOST_POLL_MAX;

/// 200 agents wait on replica A, then A's listener loses its connection (it goes through
/// a proxy the test cuts; A's store does not) and cannot reconnect. Over the next 4 s the
/// waiting polls issue about two store calls per paced poll (at most 100 polls a second:
/// 800, bound 1,000), not two per waiter every 200 ms (measured 7,291 before the pacing,
/// of 8,000 in theory); and a tenant created through replica B reaches its agent's poll
/// on A within the longest backoff plus the time the pacing needs to serve every waiter
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_listener_does_not_turn_long_polls_into_a_query_storm() {
    let Some(db) = Db::new().await else { return };
    let a = Replica::new(db.store(8).await);
    let b = Replica::new(db.store(4).await);
    let opts = sqlx::postgres::PgConnectOptions::from_str(&db.url).unwrap();
    let proxy = Proxy::start(format!("{}:{}", opts.get_host(), opts.get_port())).await;
    kubenova_manager::listen_postgres(&a.st, &proxy.url(&db.url));
    let admin = a.admin();
    let mut agents = Vec::with_capacity(WAITERS);
    for i in 0..WAITERS {
        agents.push(a.cluster(&admin, &format!("storm-{i}")).await);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !a.st.changes.is_listening() {
        assert!(Instant::now() < deadline, "the listener never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Every agent has its (empty) snapshot at revision 0 and waits for a change.
    let polls: Vec<_> = agents
        .iter()
        .map(|(_, agent)| {
            let a = a.clone();
            let agent = agent.clone();
            tokio::spawn(async move {
                let d = a.desired(&agent, 0, 30).await;
                (d, Instant::now())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The listener's connection is lost, and every reconnect attempt fails.
    proxy.cut().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.st.changes.is_listening() {
        assert!(
            Instant::now() < deadline,
            "the listener never noticed the cut"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = a.store_calls().await;
    tokio::time::sleep(WINDOW).await;
    let calls = a.store_calls().await - before;
    // Two calls per poll, plus a margin for polls whose slot came just before the window.
    let bound = 2 * POLLS_PER_SECOND * WINDOW.as_secs() * 5 / 4;
    eprintln!(
        "{WAITERS} waiting long-polls, listener down: {calls} store calls in {WINDOW:?} (bound {bound})"
    );
    assert!(
        calls <= bound,
        "{calls} store calls in {WINDOW:?} from {WAITERS} waiting polls (bound {bound})"
    );
    assert!(
        polls.iter().all(|p| !p.is_finished()),
        "the polls must still be waiting"
    );

    // A change through B (no in-process wake-up on A) reaches its waiter on A.
    let (cluster, _) = &agents[WAITERS / 2];
    let t = b.tenant(&b.admin(), cluster, "late").await;
    let written = Instant::now();
    let mut polls = polls;
    let poll = polls.remove(WAITERS / 2);
    let limit = LONGEST_BACKOFF + Duration::from_secs(WAITERS as u64 / POLLS_PER_SECOND + 1);
    let (d, returned) = tokio::time::timeout(limit + Duration::from_secs(5), poll)
        .await
        .expect("the change reached its waiter")
        .unwrap();
    let latency = returned.saturating_duration_since(written);
    eprintln!("the change reached its waiter after {latency:?} (bound {limit:?})");
    assert!(latency <= limit, "{latency:?} > {limit:?}");
    tenant_object(&d, &t);
    for p in polls {
        p.abort();
    }
    a.st.store.close().await;
    b.st.store.close().await;
    db.cleanup().await;
}
