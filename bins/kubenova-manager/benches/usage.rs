//! Usage ingestion through the agent route, and one tenant's year read over HTTP, on
//! SQLite and on Postgres (a fresh database file or schema each).
//!
//! For each backend, the manager's router is served in-process on loopback (as
//! `kubenova_manager::serve` does) over a store of its own; a cluster and `tenants`
//! tenants are created through the API (admin token), and the agent credential is staged
//! as a bootstrap does (`stage_credential`; its first use makes it current). Then, in the
//! same process and database:
//!
//! - **ingest**: `tenants × hours` hourly records in the operator's order (oldest hour
//!   first, then tenant id) three ways, alternating in slices of a tenth of the rows so
//!   that the growing table and the machine's drift hit all alike:
//!   1. **route**: `POST /api/v1/agent/usage` in the operator's batches
//!      (`kubenova_reconcile::agent::USAGE_BATCH`, 500 records) with the agent
//!      credential, one keep-alive connection, one request after the other as the
//!      operator sends; the JSON bodies are encoded before the clock starts (the
//!      operator's work, on its own machine);
//!   2. **store**: `Store::upsert_usage` of the same batches (another cluster id): the
//!      route's storage work without HTTP, authentication and batch checks;
//!   3. **raw**: a raw batched multi-row `INSERT` of the same rows (a third cluster id,
//!      same table and indexes, 1,000 rows a statement, one transaction per 5,000), as
//!      in `cargo bench -p kubenova-store --bench usage`.
//!
//!   Route ÷ raw rate (target ≥ 50%) and store ÷ raw are reported.
//! - **read**: one more tenant of the cluster gets a whole year (8,760 hours) through the
//!   route; then, with every ingested row present (3 × tenants × hours + 8,760) and after
//!   an `ANALYZE` (as autovacuum would run after a bulk load), `GET
//!   /api/v1/tenants/{id}/usage?from=..&to=..&granularity=day` and `month` (admin token),
//!   each 50 times after one unrecorded read: p50 and p99 seen by the client, whole
//!   answer received (targets p99 < 50 ms on Postgres, < 100 ms on SQLite). The year's
//!   `Store::usage_day_sums` (what the route asks the database) alone is timed too
//!   (diagnostic).
//!
//! Run: `cargo bench -p kubenova-manager --bench usage` (1,000 tenants × 1,000 hours;
//! `KUBENOVA_BENCH_USAGE_TENANTS` and `KUBENOVA_BENCH_USAGE_HOURS` change that; Postgres
//! from `KUBENOVA_BENCH_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`,
//! skipped with a notice when it cannot connect). Without `--bench` (e.g. `cargo test
//! --benches`) it is a smoke run of 10 tenants × 48 hours and a 72-hour "year".
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs
)]

/// The allocator of the `kubenova-manager` binary, so the in-process figures match it.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use kubenova_api::ids::{ClusterId, TenantId};
use kubenova_api::model::UsageRecord;
use kubenova_manager::api::authz::Role;
use kubenova_manager::api::config::ServerConfig;
use kubenova_reconcile::agent::USAGE_BATCH;
use kubenova_store::crypto::{Kek, Keyring};
use kubenova_store::{PgStore, SqliteStore, Store, UsageQuery, to_micros};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use uuid::Uuid;

const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const SECRET: &str = "kubenova-bench-hs256-secret-0123456789abcdef";
/// Rows a transaction of the raw side (the Store bench's batch).
const RAW_BATCH: usize = 5000;
const RAW_STATEMENT: usize = 1000;
const READS: usize = 50;
const START: OffsetDateTime = time::macros::datetime!(2025-01-01 00:00 UTC);

/// A registered cluster's kubeconfig (shared fixture; its token is a stand-in secret).
const KUBECONFIG: &str = include_str!("../tests/fixtures/cluster.kubeconfig");

fn keyring() -> Keyring {
    Keyring::new(vec![Kek::new("bench", &[7; 32]).unwrap()]).unwrap()
}

/// Rate limits off: the operator's catch-up of a backlog is what is measured, not the
/// per-cluster limit (which 429s it into backoff; see docs/src/benchmarks.md).
fn bench_config() -> ServerConfig {
    ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        rate_limit_subject_rps: 0,
        rate_limit_ip_rps: 0,
        ..ServerConfig::default()
    }
}

/// `tenants × hours` records of `cluster` in the operator's order: oldest hour first,
/// then tenant id (`tenants` sorted).
fn records(cluster: ClusterId, tenants: &[TenantId], hours: i64) -> Vec<UsageRecord> {
    let mut out = Vec::with_capacity(tenants.len() * hours as usize);
    for h in 0..hours {
        for (i, t) in tenants.iter().enumerate() {
            out.push(UsageRecord {
                cluster_id: cluster,
                tenant_id: *t,
                project_id: None,
                hour: START + time::Duration::hours(h),
                cpu_millicores: 1000 + (i as i64 % 7) * 250,
                memory_bytes: 2 << 30,
                storage_bytes: 10 << 30,
                load_balancers: 1,
                namespaces: 3,
                pods: 12,
                apps: 2,
                cpu_limit_millicores: 4000,
                memory_limit_bytes: 4 << 30,
                storage_by_class: BTreeMap::new(),
                quotas: Vec::new(),
                cluster_capacity: None,
            });
        }
    }
    out
}

macro_rules! raw_insert {
    ($pool:expr, $Db:ty, $rows:expr) => {{
        for batch in $rows.chunks(RAW_BATCH) {
            let mut tx = $pool.begin().await.unwrap();
            let now = to_micros(OffsetDateTime::now_utc());
            for chunk in batch.chunks(RAW_STATEMENT) {
                let mut qb = sqlx::QueryBuilder::<$Db>::new(
                    "INSERT INTO usage_hours (cluster_id, tenant_id, project_key, hour, cpu_millicores, memory_bytes, storage_bytes, \
                     load_balancers, namespaces, pods, apps, reported_at, cpu_limit_millicores, memory_limit_bytes, detail) ",
                );
                qb.push_values(chunk, |mut b, r: &UsageRecord| {
                    b.push_bind(r.cluster_id.0)
                        .push_bind(r.tenant_id.0)
                        .push_bind(Uuid::nil())
                        .push_bind(to_micros(r.hour))
                        .push_bind(r.cpu_millicores)
                        .push_bind(r.memory_bytes)
                        .push_bind(r.storage_bytes)
                        .push_bind(r.load_balancers)
                        .push_bind(r.namespaces)
                        .push_bind(r.pods)
                        .push_bind(r.apps)
                        .push_bind(now)
                        .push_bind(r.cpu_limit_millicores)
                        .push_bind(r.memory_limit_bytes)
                        .push_bind(Option::<sqlx::types::Json<()>>::None);
                });
                qb.build().execute(&mut *tx).await.unwrap();
            }
            tx.commit().await.unwrap();
        }
    }};
}

// ---- HTTP ---------------------------------------------------------------------------

/// One keep-alive HTTP/1.1 connection, requests one after the other (as the operator's
/// client sends).
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Conn { sender }
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        bearer: &str,
        body: Option<Bytes>,
    ) -> (StatusCode, Bytes) {
        let b = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "127.0.0.1")
            .header(header::AUTHORIZATION, format!("Bearer {bearer}"));
        let req = match body {
            Some(s) => b
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(s))
                .unwrap(),
            None => b.body(Full::new(Bytes::new())).unwrap(),
        };
        self.sender.ready().await.unwrap();
        let res = self.sender.send_request(req).await.unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    }

    /// Sends and expects `want`, else panics with the answer.
    async fn expect(
        &mut self,
        want: StatusCode,
        method: Method,
        path: &str,
        bearer: &str,
        body: Option<Bytes>,
    ) -> Bytes {
        let (s, b) = self.send(method.clone(), path, bearer, body).await;
        assert_eq!(
            s,
            want,
            "{method} {path}: {}",
            String::from_utf8_lossy(&b[..b.len().min(2000)])
        );
        b
    }
}

fn id_of(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The manager's router served like `kubenova_manager::serve` does.
async fn manager_server(state: kubenova_manager::api::AppState) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let app = kubenova_manager::api::router(state);
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

// ---- the benchmark ------------------------------------------------------------------

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Outcome {
    backend: &'static str,
    rows: usize,
    route: Duration,
    store: Duration,
    raw: Duration,
    year_hours: i64,
    year_upload: Duration,
    day: (Duration, Duration),
    month: (Duration, Duration),
    query_p50: Duration,
    answer_bytes: (usize, usize),
    read_target: Duration,
}

struct Sizes {
    tenants: usize,
    hours: i64,
    year_hours: i64,
}

/// Encodes `rows` as the operator's request bodies (one per batch).
fn bodies(rows: &[UsageRecord]) -> Vec<Bytes> {
    rows.chunks(USAGE_BATCH)
        .map(|b| Bytes::from(serde_json::to_vec(b).unwrap()))
        .collect()
}

async fn bench(
    backend: &'static str,
    store: Arc<dyn Store>,
    pg_url: Option<&str>,
    raw: impl AsyncFn(&[UsageRecord]),
    analyze: impl AsyncFnOnce(),
    size: &Sizes,
    read_target: Duration,
) -> Outcome {
    let state = kubenova_manager::test_state(store.clone(), bench_config(), SECRET.as_bytes());
    if let Some(url) = pg_url {
        // As the real binary on Postgres: the listener that keeps the record cache
        // correct across replicas, and enables it once it listens.
        kubenova_manager::listen_postgres(&state, url);
        let cache = store.row_cache().unwrap();
        let waited = Instant::now();
        while !cache.is_enabled() {
            assert!(
                waited.elapsed() < Duration::from_secs(10),
                "the change listener did not enable the record cache"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let admin = state
        .auth
        .mint(
            "bench-admin",
            &[Role::Admin],
            &[],
            &[],
            Duration::from_secs(3600),
        )
        .unwrap()
        .token;
    let addr = manager_server(state).await;
    let mut conn = Conn::open(addr).await;

    // A cluster and its tenants, through the API.
    let setup = Instant::now();
    let body = serde_json::json!({"name": "bench", "kubeconfig": KUBECONFIG}).to_string();
    let cluster = id_of(
        &conn
            .expect(
                StatusCode::CREATED,
                Method::POST,
                "/api/v1/clusters",
                &admin,
                Some(body.into()),
            )
            .await,
    );
    let mut ids = Vec::with_capacity(size.tenants + 1);
    for i in 0..=size.tenants {
        let body = serde_json::json!({"name": format!("t{i}"), "owners": ["alice@example.com"]})
            .to_string();
        let t = id_of(
            &conn
                .expect(
                    StatusCode::CREATED,
                    Method::POST,
                    &format!("/api/v1/clusters/{cluster}/tenants"),
                    &admin,
                    Some(body.into()),
                )
                .await,
        );
        ids.push(TenantId(t.parse().unwrap()));
    }
    // The last one gets the year.
    let year_tenant = ids.pop().unwrap();
    ids.sort();
    let cluster = ClusterId(cluster.parse().unwrap());
    // The agent credential as a bootstrap stages it; the first upload makes it current.
    let agent = kubenova_manager::api::agent::stage_credential(store.as_ref(), cluster)
        .await
        .unwrap();
    eprintln!(
        "{backend}: cluster and {} tenants created through the API in {:.1} s",
        size.tenants + 1,
        setup.elapsed().as_secs_f64()
    );

    let via_route = records(cluster, &ids, size.hours);
    let via_store = records(ClusterId::new(), &ids, size.hours);
    let via_raw = records(ClusterId::new(), &ids, size.hours);
    let slice = via_route
        .len()
        .div_ceil(10)
        .next_multiple_of(RAW_BATCH)
        .max(RAW_BATCH);
    let (mut route_time, mut store_time, mut raw_time) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for ((a, s), r) in via_route
        .chunks(slice)
        .zip(via_store.chunks(slice))
        .zip(via_raw.chunks(slice))
    {
        let encoded = bodies(a);
        let t = Instant::now();
        for b in encoded {
            conn.expect(
                StatusCode::NO_CONTENT,
                Method::POST,
                "/api/v1/agent/usage",
                &agent,
                Some(b),
            )
            .await;
        }
        route_time += t.elapsed();
        let t = Instant::now();
        for batch in s.chunks(USAGE_BATCH) {
            store.upsert_usage(batch).await.unwrap();
        }
        store_time += t.elapsed();
        let t = Instant::now();
        raw(r).await;
        raw_time += t.elapsed();
        eprint!(".");
    }
    eprintln!();

    // One tenant's year, through the route as well.
    let year = records(cluster, &[year_tenant], size.year_hours);
    let t = Instant::now();
    for b in bodies(&year) {
        conn.expect(
            StatusCode::NO_CONTENT,
            Method::POST,
            "/api/v1/agent/usage",
            &agent,
            Some(b),
        )
        .await;
    }
    let year_upload = t.elapsed();
    // The statistics a database keeps by itself after a bulk load (autovacuum's ANALYZE).
    analyze().await;

    let from = START;
    let to = START + time::Duration::hours(size.year_hours);
    let fmt = |t: OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let mut read = async |g: &str, periods: usize| -> (Duration, Duration, usize) {
        let path = format!(
            "/api/v1/tenants/{year_tenant}/usage?from={}&to={}&granularity={g}",
            fmt(from),
            fmt(to)
        );
        // One unrecorded read warms the caches; it is also the one checked.
        let b = conn
            .expect(StatusCode::OK, Method::GET, &path, &admin, None)
            .await;
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        // Day and month periods are summed by the database: the hours are left out.
        assert_eq!(v["records"], serde_json::json!([]));
        assert_eq!(v["totals"]["hours"].as_i64().unwrap(), size.year_hours);
        assert_eq!(v["series"].as_array().unwrap().len(), periods, "{g} series");
        let mut times = Vec::with_capacity(READS);
        for _ in 0..READS {
            let t = Instant::now();
            let b = conn
                .expect(StatusCode::OK, Method::GET, &path, &admin, None)
                .await;
            times.push(t.elapsed());
            std::hint::black_box(b);
        }
        times.sort();
        (percentile(&times, 0.5), percentile(&times, 0.99), b.len())
    };
    let days = (to - from).whole_days().max(1) as usize;
    let months = {
        let last = to - time::Duration::hours(1);
        ((last.year() - from.year()) * 12 + last.month() as i32 - from.month() as i32 + 1) as usize
    };
    let (d50, d99, day_bytes) = read("day", days).await;
    let (m50, m99, month_bytes) = read("month", months).await;

    // Diagnostic: the year's records read from the store alone.
    let q = UsageQuery {
        tenant: year_tenant,
        cluster: Some(cluster),
        project: None,
        all_projects: false,
        from,
        to,
        max_records: kubenova_store::DEFAULT_USAGE_MAX_RECORDS,
    };
    store.usage_day_sums(&q, &[]).await.unwrap();
    let mut times = Vec::with_capacity(READS);
    for _ in 0..READS {
        let t = Instant::now();
        let days = store.usage_day_sums(&q, &[]).await.unwrap();
        times.push(t.elapsed());
        let hours: i64 = days.iter().map(|d| d.sums.records).sum();
        assert_eq!(hours, size.year_hours);
    }
    times.sort();

    Outcome {
        backend,
        rows: via_route.len(),
        route: route_time,
        store: store_time,
        raw: raw_time,
        year_hours: size.year_hours,
        year_upload,
        day: (d50, d99),
        month: (m50, m99),
        query_p50: percentile(&times, 0.5),
        answer_bytes: (day_bytes, month_bytes),
        read_target,
    }
}

async fn sqlite(size: &Sizes) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let s = SqliteStore::connect(&url, keyring()).await.unwrap();
    let pool = s.pool().clone();
    let store: Arc<dyn Store> = Arc::new(s);
    let out = bench(
        "SQLite",
        store.clone(),
        None,
        async |rows: &[UsageRecord]| raw_insert!(pool, sqlx::Sqlite, rows),
        async || {
            sqlx::query("ANALYZE").execute(&pool).await.unwrap();
        },
        size,
        Duration::from_millis(100),
    )
    .await;
    store.close().await;
    out
}

async fn postgres(size: &Sizes) -> Option<Outcome> {
    let url = std::env::var("KUBENOVA_BENCH_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_PG_URL.to_string());
    let skip = |why: String| {
        eprintln!(
            "!!! POSTGRES SKIPPED: cannot use {}: {why}",
            kubenova_store::redact_url(&url)
        );
    };
    let opts = match sqlx::postgres::PgConnectOptions::from_str(&url) {
        Ok(o) => o,
        Err(e) => {
            skip(e.to_string());
            return None;
        }
    };
    let admin = match sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(3))
        .connect_with(opts.clone())
        .await
    {
        Ok(p) => p,
        Err(e) => {
            skip(e.to_string());
            return None;
        }
    };
    let schema = format!("kn_bench_{}", Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    // The manager's default pool (16).
    let s = PgStore::connect_with(
        opts.options([("search_path", schema.as_str())]),
        16,
        keyring(),
    )
    .await
    .unwrap();
    let pool = s.pool().clone();
    let store: Arc<dyn Store> = Arc::new(s);
    let out = bench(
        "Postgres",
        store.clone(),
        Some(&url),
        async |rows: &[UsageRecord]| raw_insert!(pool, sqlx::Postgres, rows),
        async || {
            sqlx::query("ANALYZE usage_hours")
                .execute(&pool)
                .await
                .unwrap();
        },
        size,
        Duration::from_millis(50),
    )
    .await;
    store.close().await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    Some(out)
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let size = if full {
        Sizes {
            tenants: env_or("KUBENOVA_BENCH_USAGE_TENANTS", 1000),
            hours: env_or("KUBENOVA_BENCH_USAGE_HOURS", 1000) as i64,
            year_hours: 8760,
        }
    } else {
        Sizes {
            tenants: 10,
            hours: 48,
            year_hours: 72,
        }
    };
    // The server and the client share a 2-worker runtime, as on a 2-core manager.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rows = vec![rt.block_on(sqlite(&size))];
    if let Some(pg) = rt.block_on(postgres(&size)) {
        rows.push(pg);
    }
    println!();
    println!(
        "| backend | rows | agent route rows/s | Store rows/s | raw INSERT rows/s | route ÷ raw (≥ 50%) | Store ÷ raw |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        let share = r.raw.as_secs_f64() / r.route.as_secs_f64();
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0}% {} | {:.0}% |",
            r.backend,
            r.rows,
            r.rows as f64 / r.route.as_secs_f64(),
            r.rows as f64 / r.store.as_secs_f64(),
            r.rows as f64 / r.raw.as_secs_f64(),
            share * 100.0,
            if share >= 0.5 { "PASS" } else { "FAIL" },
            r.raw.as_secs_f64() / r.store.as_secs_f64() * 100.0,
        );
    }
    println!();
    println!(
        "| backend | year (hours) | year upload rows/s | day p50 | day p99 | month p50 | month p99 | target p99 | answer day / month | store day sums p50 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let pass = |p99: Duration| if p99 < r.read_target { "PASS" } else { "FAIL" };
        println!(
            "| {} | {} | {:.0} | {:.1} ms | {:.1} ms {} | {:.1} ms | {:.1} ms {} | < {} ms | {} / {} KiB | {:.1} ms |",
            r.backend,
            r.year_hours,
            r.year_hours as f64 / r.year_upload.as_secs_f64(),
            ms(r.day.0),
            ms(r.day.1),
            pass(r.day.1),
            ms(r.month.0),
            ms(r.month.1),
            pass(r.month.1),
            r.read_target.as_millis(),
            r.answer_bytes.0 / 1024,
            r.answer_bytes.1 / 1024,
            ms(r.query_p50),
        );
    }
    if !full {
        println!(
            "(smoke run: {} tenants × {} hours, a {}-hour year; figures meaningless)",
            size.tenants, size.hours, size.year_hours
        );
    }
}
