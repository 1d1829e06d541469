//! Cost of the [`Store`] abstraction over hand-written sqlx, on SQLite and Postgres.
//!
//! For each backend this measures, in the same process and against the same pool and
//! database:
//!
//! - **insert**: `Store::create_tenant` next to a raw sqlx transaction running exactly
//!   the same statements (bump `cluster_revisions` with `UPDATE … RETURNING`, insert the
//!   `desired_changes` row, insert the `tenants` row with the same JSON document, which
//!   the raw side serializes with `serde_json` inside the timed loop as the Store must);
//! - **point read**: `Store::get_tenant` next to a raw
//!   `SELECT doc FROM tenants WHERE id = $1` whose column is decoded into the same
//!   `Tenant` type with `serde_json`.
//!
//! The tenants to insert are built before the clock starts (model construction is not
//! store cost). After one unrecorded warm-up round, each round runs both sides in
//! alternating chunks (Store, raw, raw, Store, …; 100 inserts / 1,000 reads per chunk on
//! SQLite, 50 / 500 on Postgres) so that drift on a shared machine hits both alike. The
//! ops/s reported are the medians over the rounds; the cost multiple is the median of
//! the per-round `Store time ÷ raw time` (= raw ops/s ÷ Store ops/s); target ≤ 1.3×.
//!
//! Run: `cargo bench -p kubenova-store --bench store` (Postgres from
//! `KUBENOVA_BENCH_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`; the
//! Postgres half is skipped with a notice when it cannot connect). Without `--bench` (as
//! under `cargo test --benches`) it runs a few iterations as a smoke test.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

use kubenova_api::ids::{ClusterId, TenantId};
use kubenova_api::model::{
    Capabilities, Cluster, ClusterStatus, ObjectStatus, Tenant, TenantOverrides, tenant_namespaces,
};
use kubenova_store::crypto::{Kek, Keyring};
use kubenova_store::{PgStore, SqliteStore, Store, WriteOptions, to_micros};
use sqlx::Row;
use sqlx::types::{Json, JsonRawValue};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Maximum accepted cost of the Store over the raw statements.
const TARGET: f64 = 1.3;

/// Same SQL text as the Store issues (see `sql.rs`), so both sides hit the same cached
/// prepared statements.
const SQL_BUMP: &str =
    "UPDATE cluster_revisions SET revision = revision + 1 WHERE cluster_id = $1 RETURNING revision";
const SQL_CHANGE: &str = "INSERT INTO desired_changes (cluster_id, revision, kind, object_id, deleted) VALUES ($1, $2, $3, $4, $5)";
const SQL_TENANT: &str = "INSERT INTO tenants (id, cluster_id, name, doc, version, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)";
const SQL_GET: &str = "SELECT doc FROM tenants WHERE id = $1";

/// Iteration counts of one backend: per round, `inserts` and `reads` operations per
/// side, run in alternating chunks so that drift (other tenants of the VM, checkpoints,
/// table growth) hits both sides alike.
#[derive(Clone, Copy)]
struct Plan {
    inserts: usize,
    insert_chunk: usize,
    reads: usize,
    read_chunk: usize,
    rounds: usize,
}

impl Plan {
    fn quick() -> Self {
        Plan {
            inserts: 20,
            insert_chunk: 10,
            reads: 50,
            read_chunk: 25,
            rounds: 1,
        }
    }
}

/// One measured backend: the Store behind the trait object, plus the same statements
/// written directly against its pool.
trait Backend {
    fn name(&self) -> &'static str;
    fn store(&self) -> &dyn Store;
    async fn raw_insert(&self, t: &Tenant) -> Result<(), BoxError>;
    async fn raw_get(&self, id: TenantId) -> Result<Tenant, BoxError>;
}

struct Sqlite {
    store: Arc<dyn Store>,
    pool: sqlx::SqlitePool,
}

impl Backend for Sqlite {
    fn name(&self) -> &'static str {
        "SQLite"
    }

    fn store(&self) -> &dyn Store {
        &*self.store
    }

    async fn raw_insert(&self, t: &Tenant) -> Result<(), BoxError> {
        let doc = serde_json::to_string(t)?;
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(SQL_BUMP)
            .bind(t.cluster_id.0)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or("cluster not found")?;
        let revision: i64 = row.try_get(0)?;
        sqlx::query(SQL_CHANGE)
            .bind(t.cluster_id.0)
            .bind(revision)
            .bind("tenant")
            .bind(t.id.0)
            .bind(false)
            .execute(&mut *tx)
            .await?;
        sqlx::query(SQL_TENANT)
            .bind(t.id.0)
            .bind(t.cluster_id.0)
            .bind(&t.name)
            .bind(doc)
            .bind(t.version)
            .bind(to_micros(t.created_at))
            .bind(to_micros(t.updated_at))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn raw_get(&self, id: TenantId) -> Result<Tenant, BoxError> {
        let row = sqlx::query(SQL_GET)
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?
            .ok_or("tenant not found")?;
        let doc: &str = row.try_get(0)?;
        Ok(serde_json::from_str(doc)?)
    }
}

struct Postgres {
    store: Arc<dyn Store>,
    pool: sqlx::PgPool,
}

impl Backend for Postgres {
    fn name(&self) -> &'static str {
        "Postgres"
    }

    fn store(&self) -> &dyn Store {
        &*self.store
    }

    async fn raw_insert(&self, t: &Tenant) -> Result<(), BoxError> {
        // Serialized here, bound as JSONB without re-serializing (a `RawValue` is
        // written through verbatim).
        let doc = JsonRawValue::from_string(serde_json::to_string(t)?)?;
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(SQL_BUMP)
            .bind(t.cluster_id.0)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or("cluster not found")?;
        let revision: i64 = row.try_get(0)?;
        sqlx::query(SQL_CHANGE)
            .bind(t.cluster_id.0)
            .bind(revision)
            .bind("tenant")
            .bind(t.id.0)
            .bind(false)
            .execute(&mut *tx)
            .await?;
        sqlx::query(SQL_TENANT)
            .bind(t.id.0)
            .bind(t.cluster_id.0)
            .bind(&t.name)
            .bind(Json(&*doc))
            .bind(t.version)
            .bind(to_micros(t.created_at))
            .bind(to_micros(t.updated_at))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn raw_get(&self, id: TenantId) -> Result<Tenant, BoxError> {
        let row = sqlx::query(SQL_GET)
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?
            .ok_or("tenant not found")?;
        // The JSONB column in binary format: a version byte (1) then the JSON text.
        let bytes: &[u8] = row.try_get_unchecked(0)?;
        let json = match bytes.split_first() {
            Some((1, rest)) => rest,
            _ => bytes,
        };
        Ok(serde_json::from_slice(json)?)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Store,
    Raw,
}

/// Inserts `tenants`, one transaction each; returns the time taken.
async fn time_inserts(b: &impl Backend, side: Side, tenants: &[Tenant]) -> Duration {
    let opts = WriteOptions::default();
    let start = Instant::now();
    for t in tenants {
        match side {
            Side::Store => b
                .store()
                .create_tenant(t, &opts)
                .await
                .expect("Store::create_tenant"),
            Side::Raw => b.raw_insert(t).await.expect("raw insert"),
        }
    }
    start.elapsed()
}

/// Reads `n` tenants round-robin over `ids` from index `from`; returns the time taken.
async fn time_reads(
    b: &impl Backend,
    side: Side,
    ids: &[TenantId],
    from: usize,
    n: usize,
) -> Duration {
    let start = Instant::now();
    for i in from..from + n {
        let id = ids[i % ids.len()];
        let t = match side {
            Side::Store => b.store().get_tenant(id).await.expect("Store::get_tenant"),
            Side::Raw => b.raw_get(id).await.expect("raw select"),
        };
        black_box(t);
    }
    start.elapsed()
}

/// Which side runs first in chunk `k`: A B, B A, A B, …
fn order(k: usize) -> [Side; 2] {
    if k.is_multiple_of(2) {
        [Side::Store, Side::Raw]
    } else {
        [Side::Raw, Side::Store]
    }
}

/// Per-side totals of one round.
#[derive(Default)]
struct Round {
    store: Duration,
    raw: Duration,
}

impl Round {
    fn add(&mut self, side: Side, d: Duration) {
        match side {
            Side::Store => self.store += d,
            Side::Raw => self.raw += d,
        }
    }
}

/// One insert round: `store` and `raw` (the same number of tenants each) go in
/// interleaved chunks of `chunk`.
async fn insert_round(b: &impl Backend, store: &[Tenant], raw: &[Tenant], chunk: usize) -> Round {
    let mut round = Round::default();
    for (k, (s, r)) in store.chunks(chunk).zip(raw.chunks(chunk)).enumerate() {
        for side in order(k) {
            let batch = if side == Side::Store { s } else { r };
            round.add(side, time_inserts(b, side, batch).await);
        }
    }
    round
}

/// One read round: `n` reads per side in interleaved chunks of `chunk`, both sides
/// reading the same ids in the same order.
async fn read_round(b: &impl Backend, ids: &[TenantId], n: usize, chunk: usize) -> Round {
    let mut round = Round::default();
    for (k, from) in (0..n).step_by(chunk).enumerate() {
        let len = chunk.min(n - from);
        for side in order(k) {
            round.add(side, time_reads(b, side, ids, from, len).await);
        }
    }
    round
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    }
}

/// One row of the result table.
struct Outcome {
    backend: &'static str,
    operation: &'static str,
    per_round: usize,
    rounds: usize,
    /// Median ops/s of the Store.
    store: f64,
    /// Median ops/s of the raw statements.
    raw: f64,
    /// Cost multiple (raw ops/s ÷ Store ops/s) of each round.
    ratios: Vec<f64>,
}

impl Outcome {
    fn new(backend: &'static str, operation: &'static str, n: usize, rounds: &[Round]) -> Self {
        let ops = |d: Duration| n as f64 / d.as_secs_f64();
        Outcome {
            backend,
            operation,
            per_round: n,
            rounds: rounds.len(),
            store: median(rounds.iter().map(|r| ops(r.store)).collect()),
            raw: median(rounds.iter().map(|r| ops(r.raw)).collect()),
            ratios: rounds
                .iter()
                .map(|r| r.store.as_secs_f64() / r.raw.as_secs_f64())
                .collect(),
        }
    }

    /// Median of the per-round cost multiples (each round's two sides share a time
    /// window, so this is steadier than the ratio of the two medians).
    fn multiple(&self) -> f64 {
        median(self.ratios.clone())
    }
}

/// Runs the insert and read comparisons on one backend.
async fn run(b: &impl Backend, cluster: ClusterId, plan: Plan) -> Vec<Outcome> {
    let mut batch = 0usize;
    let mut tenants = |n: usize, tag: &str| {
        batch += 1;
        (0..n)
            .map(|i| tenant(cluster, &format!("bench-{tag}-{batch}-{i}")))
            .collect::<Vec<_>>()
    };

    // Warm-up round (connections, statement caches, allocator); it also fills the read
    // set, half written by each side, which both sides check they can read.
    let warm_s = tenants(plan.inserts, "s");
    let warm_r = tenants(plan.inserts, "r");
    insert_round(b, &warm_s, &warm_r, plan.insert_chunk).await;
    check_same(b, &warm_s[0], &warm_r[0]).await;
    let ids: Vec<TenantId> = warm_s
        .iter()
        .zip(&warm_r)
        .flat_map(|(s, r)| [s.id, r.id])
        .collect();
    read_round(b, &ids, plan.reads, plan.read_chunk).await;

    let (mut ins, mut get) = (Vec::new(), Vec::new());
    for _ in 0..plan.rounds {
        let (s, r) = (tenants(plan.inserts, "s"), tenants(plan.inserts, "r"));
        ins.push(insert_round(b, &s, &r, plan.insert_chunk).await);
        get.push(read_round(b, &ids, plan.reads, plan.read_chunk).await);
    }

    // Both sides bumped the revision once per insert.
    let inserted = 2 * plan.inserts * (plan.rounds + 1);
    let revision = b
        .store()
        .cluster_revision(cluster)
        .await
        .expect("cluster_revision");
    assert_eq!(
        revision,
        inserted as i64,
        "{}: one revision per insert",
        b.name()
    );

    vec![
        Outcome::new(b.name(), "insert (create_tenant)", plan.inserts, &ins),
        Outcome::new(b.name(), "point read (get_tenant)", plan.reads, &get),
    ]
}

/// Both sides wrote the same row shape: each reads back what the other wrote.
async fn check_same(b: &impl Backend, via_store: &Tenant, via_raw: &Tenant) {
    let a = b
        .raw_get(via_store.id)
        .await
        .expect("raw read of Store row");
    assert_eq!(&a, via_store, "{}: raw read of a Store insert", b.name());
    let c = b
        .store()
        .get_tenant(via_raw.id)
        .await
        .expect("Store read of raw row");
    assert_eq!(&c, via_raw, "{}: Store read of a raw insert", b.name());
}

fn now() -> OffsetDateTime {
    // Microsecond precision, as stored.
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(t.nanosecond() / 1000 * 1000)
        .expect("valid nanosecond")
}

fn keyring() -> Keyring {
    Keyring::new(vec![Kek::new("bench", &[7; 32]).expect("KEK")]).expect("keyring")
}

fn cluster() -> Cluster {
    let t = now();
    Cluster {
        id: ClusterId::new(),
        name: "bench".into(),
        datacenter: "dc1".into(),
        labels: BTreeMap::new(),
        status: ClusterStatus::PendingBootstrap,
        capabilities: Capabilities::default(),
        components: vec![],
        proxy: None,
        conditions: vec![],
        last_heartbeat_at: None,
        operator_version: None,
        version: 1,
        created_at: t,
        updated_at: t,
    }
}

/// The tenant shape of the store test-suite, with a few labels and quotas.
fn tenant(cluster: ClusterId, name: &str) -> Tenant {
    let t = now();
    let (o, a) = tenant_namespaces(name);
    let q = |k: &str, v: &str| (k.to_string(), v.parse().expect("quantity"));
    Tenant {
        id: TenantId::new(),
        cluster_id: cluster,
        name: name.into(),
        owners: vec!["alice@example.com".into()],
        plan: "baseline".into(),
        labels: [("team", "payments"), ("env", "prod")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        quotas: [
            q("requests.cpu", "2"),
            q("requests.memory", "4Gi"),
            q("pods", "50"),
        ]
        .into_iter()
        .collect(),
        limits: [q("cpu", "500m"), q("memory", "512Mi")]
            .into_iter()
            .collect(),
        network_policies: vec!["tenant-isolation".into()],
        owner_namespace: o,
        apps_namespace: a,
        overrides: TenantOverrides::default(),
        status: ObjectStatus::default(),
        version: 1,
        created_at: t,
        updated_at: t,
    }
}

async fn sqlite(plan: Plan) -> Vec<Outcome> {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let s = SqliteStore::connect(&url, keyring())
        .await
        .expect("open SQLite store");
    let b = Sqlite {
        pool: s.pool().clone(),
        store: Arc::new(s),
    };
    let c = cluster();
    b.store
        .create_cluster(&c, b"kubeconfig", &WriteOptions::default())
        .await
        .expect("create cluster");
    let out = run(&b, c.id, plan).await;
    b.pool.close().await;
    out
}

async fn postgres(plan: Plan) -> Option<Vec<Outcome>> {
    let url = std::env::var("KUBENOVA_BENCH_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_PG_URL.to_string());
    let shown = kubenova_store::redact_url(&url);
    let skip = |why: String| {
        eprintln!("!!! POSTGRES SKIPPED: cannot use {shown}: {why}");
        eprintln!("!!! set KUBENOVA_BENCH_POSTGRES_URL to a reachable database to measure it");
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
    let schema = format!("kn_bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .expect("create bench schema");
    let s = PgStore::connect_with(
        opts.options([("search_path", schema.as_str())]),
        2,
        keyring(),
    )
    .await
    .expect("open Postgres store");
    let b = Postgres {
        pool: s.pool().clone(),
        store: Arc::new(s),
    };
    let c = cluster();
    b.store
        .create_cluster(&c, b"kubeconfig", &WriteOptions::default())
        .await
        .expect("create cluster");
    let out = run(&b, c.id, plan).await;
    b.pool.close().await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .expect("drop bench schema");
    admin.close().await;
    Some(out)
}

fn print_table(rows: &[Outcome]) {
    println!();
    println!(
        "| backend | operation | ops × rounds | Store ops/s (µs/op) | raw sqlx ops/s (µs/op) | Store cost (raw/Store) | per-round range | ≤ {TARGET}× |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        let lo = r.ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = r.ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        println!(
            "| {} | {} | {} × {} | {:.0} ({:.1}) | {:.0} ({:.1}) | {:.3}× | {:.3}–{:.3}× | {} |",
            r.backend,
            r.operation,
            r.per_round,
            r.rounds,
            r.store,
            1e6 / r.store,
            r.raw,
            1e6 / r.raw,
            r.multiple(),
            lo,
            hi,
            if r.multiple() <= TARGET {
                "PASS"
            } else {
                "FAIL"
            },
        );
    }
    println!();
    println!("per-round cost multiples (Store time ÷ raw time, paired within a round):");
    for r in rows {
        let list: Vec<String> = r.ratios.iter().map(|x| format!("{x:.3}")).collect();
        println!("  {} {}: {}", r.backend, r.operation, list.join(" "));
    }
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (e.g. `cargo test --benches`) is a smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let (sqlite_plan, pg_plan) = if full {
        (
            Plan {
                inserts: 2_000,
                insert_chunk: 100,
                reads: 20_000,
                read_chunk: 1_000,
                rounds: 7,
            },
            Plan {
                inserts: 1_000,
                insert_chunk: 50,
                reads: 5_000,
                read_chunk: 500,
                rounds: 7,
            },
        )
    } else {
        (Plan::quick(), Plan::quick())
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let mut rows = rt.block_on(sqlite(sqlite_plan));
    if let Some(pg) = rt.block_on(postgres(pg_plan)) {
        rows.extend(pg);
    }
    print_table(&rows);
    println!(
        "\n(median of {} rounds after one warm-up round; each round alternates Store and raw in chunks; whole run {:.1} s{})",
        sqlite_plan.rounds,
        started.elapsed().as_secs_f64(),
        if full {
            ""
        } else {
            "; smoke run, figures meaningless"
        }
    );
}
