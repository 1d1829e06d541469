//! Two real manager processes on one Postgres database: an agent long-polling manager 1
//! is woken within a second by a tenant created through manager 2 (LISTEN/NOTIFY; the
//! fallback poll alone would take 2 s). Needs `KUBENOVA_TEST_POSTGRES_URL` (skipped
//! loudly otherwise; a failure when `KUBENOVA_REQUIRE_POSTGRES=1`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use kubenova_manager::api::authz::Role;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const JWT_SECRET: &str = "two-managers-test-secret-0123456789abcdef";
const KEKS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

mod common;
use common::{Manager, pg_url};

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
    let m1 = Manager::start(&url, d1.path(), JWT_SECRET, KEKS, &[]);
    let m2 = Manager::start(&url, d2.path(), JWT_SECRET, KEKS, &[]);
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (db_url, db) = rt.block_on(common::create_database(&url, "kn_agents"));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(scenario(db_url))
    }));
    rt.block_on(common::drop_database(&url, &db));
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
