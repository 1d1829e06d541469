//! Usage ingestion and reads at scale, on SQLite and Postgres.
//!
//! For each backend, in the same process and database:
//!
//! - **ingest**: `Store::upsert_usage` of `tenants × hours` hourly records in batches of
//!   5,000 (the manager's largest batch), next to a raw batched multi-row `INSERT` of the
//!   same rows (another cluster id, same table and indexes, 1,000 rows a statement, one
//!   transaction per 5,000) in the same run, the two alternating in slices of a tenth of
//!   the rows; the ratio raw time ÷ Store time is the Store's share of the raw rate
//!   (target ≥ 50%);
//! - **read**: one tenant's hours in its cluster (`Store::query_usage`) grouped into UTC
//!   days and calendar months as the manager's series does, with every row of both sides
//!   present (2 × tenants × hours), after an `ANALYZE` (as autovacuum would run after a
//!   bulk load) and one unrecorded read; p50 and p99 over 50 reads (targets p99 < 50 ms
//!   on Postgres, < 100 ms on SQLite).
//!
//! Run: `cargo bench -p kubenova-store --bench usage` (1,000 tenants × 1,000 hours;
//! `KUBENOVA_BENCH_USAGE_TENANTS` and `KUBENOVA_BENCH_USAGE_HOURS` change that; Postgres
//! from `KUBENOVA_BENCH_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`,
//! skipped with a notice when it cannot connect). Without `--bench` it is a smoke run.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs
)]

use kubenova_api::ids::{ClusterId, TenantId};
use kubenova_api::model::UsageRecord;
use kubenova_store::crypto::{Kek, Keyring};
use kubenova_store::{
    DEFAULT_USAGE_MAX_RECORDS, PgStore, SqliteStore, Store, UsageQuery, to_micros,
};
use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use uuid::Uuid;

const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const BATCH: usize = 5000;
const RAW_STATEMENT: usize = 1000;
const READS: usize = 50;

fn keyring() -> Keyring {
    Keyring::new(vec![Kek::new("bench", &[7; 32]).unwrap()]).unwrap()
}

fn records(cluster: ClusterId, tenants: &[TenantId], hours: i64) -> Vec<UsageRecord> {
    let start = time::macros::datetime!(2025-01-01 00:00 UTC);
    let mut out = Vec::with_capacity(tenants.len() * hours as usize);
    for h in 0..hours {
        for (i, t) in tenants.iter().enumerate() {
            out.push(UsageRecord {
                cluster_id: cluster,
                tenant_id: *t,
                project_id: None,
                hour: start + time::Duration::hours(h),
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
        for batch in $rows.chunks(BATCH) {
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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One tenant's hours grouped by day and by month, as the manager's series does.
async fn read(
    store: &dyn Store,
    cluster: ClusterId,
    tenant: TenantId,
    hours: i64,
) -> (usize, usize) {
    let start = time::macros::datetime!(2025-01-01 00:00 UTC);
    let recs = store
        .query_usage(&UsageQuery {
            tenant,
            cluster: Some(cluster),
            project: None,
            all_projects: false,
            from: start,
            to: start + time::Duration::hours(hours),
            max_records: DEFAULT_USAGE_MAX_RECORDS,
        })
        .await
        .unwrap();
    let mut days: BTreeMap<time::Date, i64> = BTreeMap::new();
    let mut months: BTreeMap<(i32, u8), i64> = BTreeMap::new();
    for r in &recs {
        *days.entry(r.hour.date()).or_default() += r.cpu_millicores;
        *months
            .entry((r.hour.year(), r.hour.month() as u8))
            .or_default() += r.cpu_millicores;
    }
    assert_eq!(recs.len() as i64, hours);
    (days.len(), months.len())
}

struct Outcome {
    backend: &'static str,
    rows: usize,
    store: Duration,
    raw: Duration,
    p50: Duration,
    p99: Duration,
    read_target: Duration,
}

async fn bench(
    backend: &'static str,
    store: &dyn Store,
    raw: impl AsyncFn(&[UsageRecord]),
    analyze: impl AsyncFnOnce(),
    tenants: usize,
    hours: i64,
    read_target: Duration,
) -> Outcome {
    let ids: Vec<TenantId> = (0..tenants).map(|_| TenantId::new()).collect();
    let cluster = ClusterId::new();
    let via_store = records(cluster, &ids, hours);
    let via_raw = records(ClusterId::new(), &ids, hours);
    // Both sides alternate in slices of a tenth of the rows, so that the growing table
    // and the machine's drift hit both alike.
    let slice = via_store.len().div_ceil(10).max(BATCH);
    let (mut store_time, mut raw_time) = (Duration::ZERO, Duration::ZERO);
    for (s_part, r_part) in via_store.chunks(slice).zip(via_raw.chunks(slice)) {
        let t = Instant::now();
        for batch in s_part.chunks(BATCH) {
            store.upsert_usage(batch).await.unwrap();
        }
        store_time += t.elapsed();
        let t = Instant::now();
        raw(r_part).await;
        raw_time += t.elapsed();
    }
    // The statistics a database keeps by itself after a bulk load (autovacuum's ANALYZE).
    analyze().await;
    // One unrecorded read warms the caches.
    read(store, cluster, ids[0], hours).await;
    let mut reads = Vec::with_capacity(READS);
    for i in 0..READS {
        let t = Instant::now();
        std::hint::black_box(read(store, cluster, ids[i % ids.len()], hours).await);
        reads.push(t.elapsed());
    }
    reads.sort();
    Outcome {
        backend,
        rows: via_store.len(),
        store: store_time,
        raw: raw_time,
        p50: percentile(&reads, 0.5),
        p99: percentile(&reads, 0.99),
        read_target,
    }
}

async fn sqlite(tenants: usize, hours: i64) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let s = SqliteStore::connect(&url, keyring()).await.unwrap();
    let pool = s.pool().clone();
    let out = bench(
        "SQLite",
        &s,
        async |rows: &[UsageRecord]| raw_insert!(pool, sqlx::Sqlite, rows),
        async || {
            sqlx::query("ANALYZE").execute(&pool).await.unwrap();
        },
        tenants,
        hours,
        Duration::from_millis(100),
    )
    .await;
    s.close().await;
    out
}

async fn postgres(tenants: usize, hours: i64) -> Option<Outcome> {
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
    let s = PgStore::connect_with(
        opts.options([("search_path", schema.as_str())]),
        2,
        keyring(),
    )
    .await
    .unwrap();
    let pool = s.pool().clone();
    let out = bench(
        "Postgres",
        &s,
        async |rows: &[UsageRecord]| raw_insert!(pool, sqlx::Postgres, rows),
        async || {
            sqlx::query("ANALYZE usage_hours")
                .execute(&pool)
                .await
                .unwrap();
        },
        tenants,
        hours,
        Duration::from_millis(50),
    )
    .await;
    s.close().await;
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
    let (tenants, hours) = if full {
        (
            env_or("KUBENOVA_BENCH_USAGE_TENANTS", 1000),
            env_or("KUBENOVA_BENCH_USAGE_HOURS", 1000) as i64,
        )
    } else {
        (10, 48)
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = vec![rt.block_on(sqlite(tenants, hours))];
    if let Some(pg) = rt.block_on(postgres(tenants, hours)) {
        rows.push(pg);
    }
    println!();
    println!(
        "| backend | rows | Store upsert rows/s | raw INSERT rows/s | Store ÷ raw rate (≥ 50%) | read {hours} h by day+month p50 | p99 (target) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        let share = r.raw.as_secs_f64() / r.store.as_secs_f64();
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0}% {} | {:.1} ms | {:.1} ms ({} ms) {} |",
            r.backend,
            r.rows,
            r.rows as f64 / r.store.as_secs_f64(),
            r.rows as f64 / r.raw.as_secs_f64(),
            share * 100.0,
            if share >= 0.5 { "PASS" } else { "FAIL" },
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.read_target.as_millis(),
            if r.p99 <= r.read_target {
                "PASS"
            } else {
                "FAIL"
            },
        );
    }
    if !full {
        println!("(smoke run: {tenants} tenants × {hours} hours; figures meaningless)");
    }
}
