//! Benchmark: propagation latency and desired-state sync, with the three real
//! binaries (testkit, manager, operator started from the bootstrap Deployment).
//!
//! 1. **Propagation**: `KUBENOVA_BENCH_WRITES` (default 1000) sequential REST writes, each
//!    a new project of one tenant; the time from the `POST` until the project's REST
//!    status is `ready` (the operator applied the NovaProject, the controller created the
//!    namespace and RoleBindings, the status came back over the agent channel). p50/p99.
//! 2. **Sync**: with the operator stopped, `KUBENOVA_BENCH_TENANTS` (default 10000) tenants
//!    are created through the REST API; then the agent long-poll is timed for a full
//!    snapshot (cursor 0) and for a single-change delta, next to one store read of the same
//!    rows in the same run (every page of `Store::list_tenants`, `list_cluster_projects`
//!    and `list_cluster_apps` of the cluster, the batched reads the snapshot makes;
//!    `Store::get_tenant`).
//!
//! Run: `cargo bench -p kubenova-demo --bench propagation` (builds on the binaries of
//! `target/release`: `cargo build --release -p kubenova-manager -p kubenova-operator -p
//! kubenova-testkit` first). Postgres at `KUBENOVA_BENCH_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`, a fresh database per run), else SQLite.
//! Turn the manager's rate limits off for it: `KUBENOVA_RATE_LIMIT_SUBJECT_RPS=0
//! KUBENOVA_RATE_LIMIT_IP_RPS=0` (the manager process inherits the environment).
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs
)]

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kubenova_demo::flow::{Flow, create_tenancy};
use kubenova_demo::{Binaries, Rest};
use kubenova_store::ListParams;
use serde_json::json;
use std::time::{Duration, Instant};

/// Reads every page of a listing; returns how many rows it had.
async fn all_pages<T, F, Fut>(mut fetch: F) -> Result<usize, kubenova_store::StoreError>
where
    F: FnMut(ListParams) -> Fut,
    Fut: std::future::Future<Output = Result<kubenova_store::Page<T>, kubenova_store::StoreError>>,
{
    let mut params = ListParams::first(kubenova_store::MAX_PAGE_SIZE);
    let mut rows = 0;
    loop {
        let page = fetch(params.clone()).await?;
        rows += page.items.len();
        match page.next_cursor {
            Some(c) => params.cursor = Some(c),
            None => return Ok(rows),
        }
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn database() -> (String, Option<(String, String)>) {
    let url = std::env::var("KUBENOVA_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    match sqlx::PgPool::connect(&url).await {
        Ok(admin) => {
            let db = format!("kn_bench_{}", uuid::Uuid::new_v4().simple());
            sqlx::query(&format!("CREATE DATABASE {db}"))
                .execute(&admin)
                .await
                .unwrap();
            admin.close().await;
            let (base, _) = url.rsplit_once('/').unwrap();
            (format!("{base}/{db}"), Some((url, db)))
        }
        Err(e) => {
            eprintln!("Postgres unavailable ({e}); using SQLite");
            let dir =
                std::env::temp_dir().join(format!("kn-bench-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&dir).unwrap();
            (format!("sqlite://{}", dir.join("kn.db").display()), None)
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let writes = env_or("KUBENOVA_BENCH_WRITES", 1000);
    let tenants = env_or("KUBENOVA_BENCH_TENANTS", 10_000);
    let bins = Binaries::locate()?;
    let (url, pg) = database().await;
    let dir = tempfile::tempdir()?;
    let result = run(bins, dir.path(), &url, writes, tenants).await;
    if let Some((admin_url, db)) = pg {
        let admin = sqlx::PgPool::connect(&admin_url).await?;
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .execute(&admin)
            .await;
    }
    result
}

async fn run(
    bins: Binaries,
    dir: &std::path::Path,
    url: &str,
    writes: usize,
    tenants: usize,
) -> anyhow::Result<()> {
    let backend = if url.starts_with("postgres") {
        "Postgres"
    } else {
        "SQLite"
    };
    println!("store: {backend}; writes: {writes}; tenants for sync: {tenants}");
    let mut flow = Flow::start(bins, dir, url).await?;
    flow.bootstrap().await?;
    flow.start_operator().await?;
    flow.wait_cluster_status("connected", Duration::from_secs(60))
        .await?;
    let t = create_tenancy(&flow, "bench").await?;
    flow.wait_phase(&t.tenant_path, "ready").await?;
    let api = flow.api();

    // 1. Propagation.
    let mut lat = Vec::with_capacity(writes);
    let started = Instant::now();
    for i in 0..writes {
        let t0 = Instant::now();
        let p = api
            .post(
                &format!("{}/projects", t.tenant_path),
                &json!({"name": format!("p{i}")}),
            )
            .await?;
        let path = format!("{}/projects/{}", t.tenant_path, p["id"].as_str().unwrap());
        loop {
            let v = api.get(&path).await?;
            if v["status"]["phase"] == "ready" {
                break;
            }
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(60),
                "project {i} not ready: {v}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        lat.push(t0.elapsed());
    }
    let total = started.elapsed();
    lat.sort();
    println!(
        "propagation: {writes} writes in {:.1}s; REST write → Ready in cluster → REST status: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        total.as_secs_f64(),
        pct(&lat, 0.5).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3
    );

    // 2. Sync: the operator steps aside; tenants are created through the REST API.
    flow.operator.as_mut().unwrap().stop();
    let seed = Instant::now();
    let mut ids = Vec::new();
    for i in 0..tenants {
        let v = api
            .post(
                &flow.cluster_path("/tenants"),
                &json!({"name": format!("t{i}"), "plan": "baseline"}),
            )
            .await?;
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    println!(
        "seeded {tenants} tenants in {:.1}s",
        seed.elapsed().as_secs_f64()
    );
    let secrets: Api<Secret> = Api::namespaced(flow.testkit.client.clone(), "kubenova-system");
    let s = secrets.get("kubenova-agent").await?;
    let token = String::from_utf8(s.data.unwrap()["token"].0.clone())?;
    let agent = Rest::new(&flow.manager.url, &token);

    let t0 = Instant::now();
    let (st, snap) = agent
        .call("GET", "/api/v1/agent/desired?cursor=0&waitSeconds=1", None)
        .await?;
    let snapshot = t0.elapsed();
    anyhow::ensure!(st.is_success(), "snapshot: {st} {snap}");
    let objects = snap["objects"].as_array().map(|a| a.len()).unwrap_or(0);
    let revision = snap["revision"].as_i64().unwrap_or(0);
    let bytes = snap.to_string().len();

    // A single change, then the delta from the snapshot's revision (the poll is waiting
    // when the change lands, as in production: time from the write to the answer).
    let agent2 = agent.clone();
    let poll = tokio::spawn(async move {
        let r = agent2
            .call(
                "GET",
                &format!("/api/v1/agent/desired?cursor={revision}&waitSeconds=30"),
                None,
            )
            .await;
        (Instant::now(), r)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let w0 = Instant::now();
    api.ok(
        "PUT",
        &flow.cluster_path(&format!("/tenants/{}/quotas", ids[0])),
        Some(&json!({"pods": "20"})),
    )
    .await?;
    let write_done = w0.elapsed();
    let (answered, r) = poll.await?;
    let (st, delta) = r?;
    anyhow::ensure!(st.is_success(), "delta: {st} {delta}");
    let wake = answered.duration_since(w0);
    let t1 = Instant::now();
    let (_, delta2) = agent
        .call(
            "GET",
            &format!("/api/v1/agent/desired?cursor={revision}&waitSeconds=1"),
            None,
        )
        .await?;
    let delta_read = t1.elapsed();

    // Baseline in the same run: the store itself, same rows.
    let keys = kubenova_store::crypto::Keyring::load_or_generate(&dir.join("manager-data"))?;
    let store = kubenova_store::connect(url, keys).await?;
    let cluster: kubenova_api::ids::ClusterId = flow.cluster.parse()?;
    let s = store.as_ref();
    let b0 = Instant::now();
    let tenant_rows = all_pages(|p| async move { s.list_tenants(Some(cluster), &p).await }).await?;
    let project_rows =
        all_pages(|p| async move { s.list_cluster_projects(cluster, &p).await }).await?;
    let app_rows = all_pages(|p| async move { s.list_cluster_apps(cluster, &p).await }).await?;
    let list_all = b0.elapsed();
    let b1 = Instant::now();
    store.get_tenant(ids[0].parse()?).await?;
    let get_one = b1.elapsed();

    println!(
        "snapshot (cursor 0): {objects} objects, {:.1} MiB, {:.0} ms; store baseline of the same rows \
         (list_tenants + list_cluster_projects + list_cluster_apps: {} + {} + {} rows): {:.0} ms ({:.2}x)",
        bytes as f64 / (1 << 20) as f64,
        snapshot.as_secs_f64() * 1e3,
        tenant_rows,
        project_rows,
        app_rows,
        list_all.as_secs_f64() * 1e3,
        snapshot.as_secs_f64() / list_all.as_secs_f64()
    );
    println!(
        "delta (1 change): write {:.1} ms, waiting poll answered {:.1} ms after the write started ({} object); \
         delta read on demand {:.2} ms ({} object); store baseline get_tenant {:.2} ms ({:.2}x)",
        write_done.as_secs_f64() * 1e3,
        wake.as_secs_f64() * 1e3,
        delta["objects"].as_array().map(|a| a.len()).unwrap_or(0),
        delta_read.as_secs_f64() * 1e3,
        delta2["objects"].as_array().map(|a| a.len()).unwrap_or(0),
        get_one.as_secs_f64() * 1e3,
        delta_read.as_secs_f64() / get_one.as_secs_f64()
    );
    Ok(())
}
