//! Two real manager processes on one Postgres database: an agent long-polling manager 1
//! is woken within a second by a tenant created through manager 2 (LISTEN/NOTIFY; the
//! fallback poll alone would take 2 s). Needs `KUBENOVA_TEST_POSTGRES_URL` (skipped
//! loudly otherwise; a failure when `KUBENOVA_REQUIRE_POSTGRES=1`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use kubenova_manager::api::authz::Role;
use serde_json::{Value, json};
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const JWT_SECRET: &str = "two-managers-test-secret-0123456789abcdef";
const KEKS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

struct Manager {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(database_url: &str, dir: &std::path::Path) -> Manager {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubenova-manager"))
        .current_dir(dir)
        .env_remove("KUBENOVA_INSECURE_DEV_NO_AUTH")
        .env("DATABASE_URL", database_url)
        .env("KUBENOVA_DATA_DIR", dir.join("data"))
        .env("KUBENOVA_KEKS", KEKS)
        .env("KUBENOVA_JWT_SECRET", JWT_SECRET)
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
            if let Ok(v) = serde_json::from_str::<Value>(&line)
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

fn pg_url() -> Option<String> {
    match std::env::var("KUBENOVA_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var("KUBENOVA_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("KUBENOVA_REQUIRE_POSTGRES=1 but KUBENOVA_TEST_POSTGRES_URL is not set");
            }
            eprintln!(
                "!!! POSTGRES SKIPPED: set KUBENOVA_TEST_POSTGRES_URL to run two managers on Postgres !!!"
            );
            None
        }
    }
}

fn with_database(url: &str, db: &str) -> String {
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

async fn scenario(url: String) {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let m1 = start(&url, d1.path());
    let m2 = start(&url, d2.path());
    // Manager 1 must be listening before the test relies on notifications.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !m1
        .log
        .lock()
        .unwrap()
        .contains("listening for desired-state changes")
    {
        assert!(
            Instant::now() < deadline,
            "manager 1 never listened:\n{}",
            m1.log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let auth = kubenova_manager::api::auth::Authenticator::hs256(
        JWT_SECRET.as_bytes(),
        "kubenova",
        "kubenova-api",
        Duration::from_secs(60),
        Duration::from_secs(3600),
    );
    let admin = auth
        .mint("admin", &[Role::Admin], &[], &[], Duration::from_secs(3600))
        .unwrap()
        .token;
    let http = reqwest::Client::new();
    let base2 = format!("http://{}", m2.addr);
    let c: Value = http
        .post(format!("{base2}/api/v1/clusters"))
        .bearer_auth(&admin)
        .json(&json!({"name": "pg", "kubeconfig": KUBECONFIG}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cid: kubenova_api::ids::ClusterId = c["id"].as_str().expect("cluster id").parse().unwrap();

    // The agent credential, as a bootstrap would mint it (through the shared store).
    let keys = kubenova_store::crypto::Keyring::from_env_value(KEKS).unwrap();
    let store = kubenova_store::connect(&url, keys).await.unwrap();
    let token = kubenova_manager::api::agent::rotate_credential(store.as_ref(), cid)
        .await
        .unwrap()
        .to_string();

    // The first tenant, then the agent's snapshot from manager 1.
    let create = |name: &'static str| {
        let http = http.clone();
        let admin = admin.clone();
        let base2 = base2.clone();
        async move {
            let r = http
                .post(format!("{base2}/api/v1/clusters/{cid}/tenants"))
                .bearer_auth(&admin)
                .json(&json!({"name": name, "owners": ["alice@example.com"]}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    create("acme").await;
    let base1 = format!("http://{}", m1.addr);
    let snap: Value = http
        .get(format!("{base1}/api/v1/agent/desired?cursor=0"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(snap["snapshot"], true, "{snap}");
    let mut rev = snap["revision"].as_i64().unwrap();

    for round in 0..3 {
        let poll = {
            let http = http.clone();
            let token = token.clone();
            let url = format!("{base1}/api/v1/agent/desired?cursor={rev}&waitSeconds=30");
            tokio::spawn(async move {
                let v: Value = http
                    .get(url)
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                (v, Instant::now())
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !poll.is_finished(),
            "the poll must be waiting (round {round})"
        );
        let name = ["beta", "gamma", "delta"][round];
        let id = create(name).await;
        let created = Instant::now();
        let (v, returned) = tokio::time::timeout(Duration::from_secs(10), poll)
            .await
            .expect("the poll returned")
            .unwrap();
        let latency = returned.saturating_duration_since(created);
        assert!(
            latency < Duration::from_secs(1),
            "manager 1 woke {latency:?} after the write through manager 2 (round {round})"
        );
        let ids: Vec<&str> = v["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [id.as_str()], "{v}");
        let new_rev = v["revision"].as_i64().unwrap();
        assert!(new_rev > rev);
        rev = new_rev;
    }

    // Manager 1 listens on Postgres, so its record cache answers repeated reads.
    for _ in 0..3 {
        let r = http
            .get(format!("{base1}/api/v1/clusters/{cid}"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let metrics = http
        .get(format!("{base1}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("kubenova_store_cache_enabled 1"),
        "{metrics}"
    );
    let hits: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kubenova_store_cache_hits_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_default();
    assert!(hits >= 2, "{metrics}");
    drop(m2);
    drop(m1);
}

#[test]
fn a_write_through_one_manager_wakes_a_poll_on_another() {
    let Some(url) = pg_url() else { return };
    let db = format!("kn_agents_{}", uuid::Uuid::new_v4().simple());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let admin = sqlx::PgPool::connect(&url)
            .await
            .expect("connect to KUBENOVA_TEST_POSTGRES_URL");
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
    });
    let db_url = with_database(&url, &db);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(scenario(db_url))
    }));
    rt.block_on(async {
        let admin = sqlx::PgPool::connect(&url).await.unwrap();
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .execute(&admin)
            .await;
        admin.close().await;
    });
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
