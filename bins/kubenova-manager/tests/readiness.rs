//! `/readyz` on a manager on Postgres: each dependency is taken away and given back, and
//! readiness follows: the store (its connections go through a TCP proxy that the test
//! cuts), the migrations (the newest one marked not applied), the signing keys (deleted
//! from the store, then corrupted, and read by a replica with another KEK) and the change listener's `LISTEN` connection (through
//! a second proxy). A 503 names the failed check. Needs `KUBENOVA_TEST_POSTGRES_URL`
//! (skipped loudly without it; a failure with `KUBENOVA_REQUIRE_POSTGRES=1`).
#![allow(clippy::unwrap_used, missing_docs)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use kubenova_manager::api;
use kubenova_manager::api::config::ServerConfig;
use kubenova_manager::api::kubeconfigs::{SIGNING_KEYS_OWNER, SIGNING_KEYS_PURPOSE};
use kubenova_store::crypto::{Kek, Keyring};
use kubenova_store::{PgStore, Store};
use serde_json::Value;
use std::str::FromStr as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tower::ServiceExt as _;

fn pg_url() -> Option<String> {
    match std::env::var("KUBENOVA_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert!(
                std::env::var("KUBENOVA_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "KUBENOVA_REQUIRE_POSTGRES=1 but KUBENOVA_TEST_POSTGRES_URL is not set"
            );
            eprintln!(
                "!!! POSTGRES SKIPPED: set KUBENOVA_TEST_POSTGRES_URL to run the readiness test !!!"
            );
            None
        }
    }
}

/// A TCP proxy to Postgres that can be cut: [`Proxy::cut`] closes every proxied
/// connection and refuses new ones until [`Proxy::restore`].
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
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

    async fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for t in self.conns.lock().await.drain(..) {
            t.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn readyz(router: &axum::Router) -> (StatusCode, Value) {
    let res = router
        .clone()
        .oneshot(Request::get("/api/v1/readyz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Polls `/readyz` until `ok` accepts the answer (at most 40 s).
async fn wait_readyz(
    router: &axum::Router,
    what: &str,
    ok: impl Fn(StatusCode, &Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (s, v) = readyz(router).await;
        if ok(s, &v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "readyz never became {what}; last: {s} {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ready(s: StatusCode, v: &Value) -> bool {
    s == StatusCode::OK && v["status"] == "ready"
}

fn failed(dependency: &'static str) -> impl Fn(StatusCode, &Value) -> bool {
    move |s, v| {
        s == StatusCode::SERVICE_UNAVAILABLE
            && v["code"] == "KN-503"
            && v["details"]["dependency"] == dependency
            && v["details"]["failed"]
                .as_array()
                .is_some_and(|f| f.iter().any(|d| d == dependency))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_each_dependency_away_and_back() {
    let Some(url) = pg_url() else { return };
    let schema = format!("kn_ready_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    let opts = sqlx::postgres::PgConnectOptions::from_str(&url).unwrap();
    let target = format!("{}:{}", opts.get_host(), opts.get_port());
    let store_proxy = Proxy::start(target.clone()).await;
    let listen_proxy = Proxy::start(target).await;
    let keyring = Keyring::new(vec![Kek::new("k1", &[5u8; 32]).unwrap()]).unwrap();
    let store = PgStore::connect_with(
        opts.clone()
            .host("127.0.0.1")
            .port(store_proxy.port)
            .options([("search_path", schema.as_str())]),
        4,
        keyring,
    )
    .await
    .unwrap();
    let store: Arc<dyn Store> = Arc::new(store);
    let state = kubenova_manager::test_state(
        Arc::clone(&store),
        ServerConfig::default(),
        b"readiness-test-secret-readiness-test!",
    );
    let keys = api::kubeconfigs::load_or_create_signing_keys(store.as_ref())
        .await
        .unwrap();
    drop(keys);
    // The same URL with the proxy as host and port.
    let (scheme, rest) = url.split_once("://").unwrap();
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let userinfo = authority
        .rsplit_once('@')
        .map(|(u, _)| format!("{u}@"))
        .unwrap_or_default();
    let listen_url = format!(
        "{scheme}://{userinfo}127.0.0.1:{}/{path}",
        listen_proxy.port
    );
    kubenova_manager::listen_postgres(&state, &listen_url);
    let router = api::router(state.clone());

    // All there.
    let v = wait_readyz(&router, "ready", ready).await;
    for dep in ["store", "signingKeys", "changeListener"] {
        assert_eq!(v["dependencies"][dep]["status"], "ok", "{v}");
    }
    assert_eq!(v["dependencies"]["store"]["backend"], "postgres");

    // The change listener's LISTEN connection.
    listen_proxy.cut().await;
    let v = wait_readyz(&router, "503 changeListener", failed("changeListener")).await;
    assert!(v["message"].as_str().unwrap().contains("LISTEN"), "{v}");
    assert_eq!(
        v["details"]["failed"],
        serde_json::json!(["changeListener"])
    );
    listen_proxy.restore();
    wait_readyz(&router, "ready again after the listener", ready).await;

    // The migrations: the newest one marked failed.
    let mark = |ok: bool| {
        format!(
            "UPDATE {schema}._sqlx_migrations SET success = {ok} WHERE version = (SELECT MAX(version) FROM {schema}._sqlx_migrations)"
        )
    };
    sqlx::query(&mark(false)).execute(&admin).await.unwrap();
    let v = wait_readyz(&router, "503 migrations", failed("migrations")).await;
    assert!(v["message"].as_str().unwrap().contains("migrate"), "{v}");
    sqlx::query(&mark(true)).execute(&admin).await.unwrap();
    wait_readyz(&router, "ready again after the migrations", ready).await;

    // The signing keys: gone, then unusable.
    let (original, _) = store
        .get_secret_versioned(SIGNING_KEYS_OWNER, SIGNING_KEYS_PURPOSE)
        .await
        .unwrap();
    sqlx::query(&format!(
        "DELETE FROM {schema}.secrets WHERE id = '{SIGNING_KEYS_PURPOSE}/{SIGNING_KEYS_OWNER}'"
    ))
    .execute(&admin)
    .await
    .unwrap();
    let v = wait_readyz(&router, "503 signingKeys (missing)", failed("signingKeys")).await;
    assert!(v["message"].as_str().unwrap().contains("missing"), "{v}");
    store
        .put_secret(SIGNING_KEYS_OWNER, SIGNING_KEYS_PURPOSE, &original)
        .await
        .unwrap();
    wait_readyz(&router, "ready again after the keys came back", ready).await;
    let (_, version2) = store
        .get_secret_versioned(SIGNING_KEYS_OWNER, SIGNING_KEYS_PURPOSE)
        .await
        .unwrap();
    store
        .replace_secret(
            SIGNING_KEYS_OWNER,
            SIGNING_KEYS_PURPOSE,
            b"not a key set",
            version2,
        )
        .await
        .unwrap();
    let v = wait_readyz(&router, "503 signingKeys (unusable)", failed("signingKeys")).await;
    assert!(v["message"].as_str().unwrap().contains("unusable"), "{v}");
    let (_, version3) = store
        .get_secret_versioned(SIGNING_KEYS_OWNER, SIGNING_KEYS_PURPOSE)
        .await
        .unwrap();
    store
        .replace_secret(
            SIGNING_KEYS_OWNER,
            SIGNING_KEYS_PURPOSE,
            &original,
            version3,
        )
        .await
        .unwrap();
    wait_readyz(&router, "ready again after the keys were repaired", ready).await;

    // A replica whose KEK is not the one that wrapped the keys cannot decrypt them.
    let other = PgStore::connect_with(
        opts.clone().options([("search_path", schema.as_str())]),
        2,
        Keyring::new(vec![Kek::new("k2", &[6u8; 32]).unwrap()]).unwrap(),
    )
    .await
    .unwrap();
    let other: Arc<dyn Store> = Arc::new(other);
    let other_router = api::router(kubenova_manager::test_state(
        Arc::clone(&other),
        ServerConfig::default(),
        b"readiness-test-secret-readiness-test!",
    ));
    let v = wait_readyz(
        &other_router,
        "503 signingKeys (KEK)",
        failed("signingKeys"),
    )
    .await;
    assert!(v["message"].as_str().unwrap().contains("decrypted"), "{v}");
    drop(other_router);
    other.close().await;

    // The store itself: every connection cut and refused.
    store_proxy.cut().await;
    let v = wait_readyz(&router, "503 store", failed("store")).await;
    assert_eq!(v["details"]["failed"], serde_json::json!(["store"]));
    store_proxy.restore();
    wait_readyz(&router, "ready again after the store", ready).await;

    drop(router);
    drop(state);
    store.close().await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
}
