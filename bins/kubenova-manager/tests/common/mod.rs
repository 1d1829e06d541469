//! What the tests that run the manager as a process share.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A `kubenova-manager serve` process on a free loopback port, killed when dropped.
pub struct Manager {
    child: Child,
    /// Its `host:port`.
    pub addr: String,
    /// Its log so far (stderr).
    pub log: Arc<Mutex<String>>,
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Manager {
    /// Starts the manager on `database_url` with its data in `dir`, the HS256 secret, the
    /// key-encryption keys and `env` on top; returns once it listens.
    pub fn start(
        database_url: &str,
        dir: &std::path::Path,
        jwt_secret: &str,
        keks: &str,
        env: &[(&str, &str)],
    ) -> Manager {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kubenova-manager"))
            .current_dir(dir)
            .env_remove("KUBENOVA_INSECURE_DEV_NO_AUTH")
            .env("DATABASE_URL", database_url)
            .env("KUBENOVA_DATA_DIR", dir.join("data"))
            .env("KUBENOVA_KEKS", keks)
            .env("KUBENOVA_JWT_SECRET", jwt_secret)
            .envs(env.iter().copied())
            .env("KUBENOVA_LOG", "info")
            .env_remove("KUBENOVA_LOG_FORMAT")
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log2.lock().unwrap().push_str(&line);
                log2.lock().unwrap().push('\n');
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["fields"]["message"] == "listening"
                {
                    let _ = tx.send(
                        v["fields"]["address"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    );
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("the manager did not start; log:\n{}", log.lock().unwrap());
            }
        };
        Manager { child, addr, log }
    }
}

/// The Postgres URL for tests, or `None` (skipped loudly) unless Postgres is required.
pub fn pg_url() -> Option<String> {
    match std::env::var("KUBENOVA_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var("KUBENOVA_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("KUBENOVA_REQUIRE_POSTGRES=1 but KUBENOVA_TEST_POSTGRES_URL is not set");
            }
            eprintln!(
                "!!! POSTGRES SKIPPED: set KUBENOVA_TEST_POSTGRES_URL to run managers on Postgres !!!"
            );
            None
        }
    }
}

/// `url` naming the database `db` instead.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let head = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{head}/{db}?{q}"),
        None => format!("{head}/{db}"),
    }
}

/// A new database on the server of `url` (named `<prefix>_<uuid>`): its URL and name.
pub async fn create_database(url: &str, prefix: &str) -> (String, String) {
    let db = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(url)
        .await
        .expect("connect to KUBENOVA_TEST_POSTGRES_URL");
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    (with_database(url, &db), db)
}

/// Drops a database made by [`create_database`].
pub async fn drop_database(url: &str, db: &str) {
    let admin = sqlx::PgPool::connect(url).await.unwrap();
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .execute(&admin)
        .await;
    admin.close().await;
}

/// One request to an in-process manager router, from a loopback peer, with a bearer token
/// and an optional JSON body: its status and JSON body (`Null` when the body is not JSON).
pub async fn call(
    app: &axum::Router,
    method: hyper::Method,
    path: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> (hyper::StatusCode, serde_json::Value) {
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(
            body.map(|b| axum::body::Body::from(b.to_string()))
                .unwrap_or_else(axum::body::Body::empty),
        )
        .unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            40000,
        ))));
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// One request to a manager process with a bearer token and an optional JSON body: its
/// status and JSON body (`Null` when the body is not JSON). The request is built at once,
/// so the returned future borrows nothing.
pub fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<serde_json::Value>,
) -> impl std::future::Future<Output = (u16, serde_json::Value)> + use<> {
    let mut r = http.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    async move {
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        (
            status,
            resp.json::<serde_json::Value>()
                .await
                .unwrap_or(serde_json::Value::Null),
        )
    }
}
