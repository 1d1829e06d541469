//! Kubeconfig issuance throughput: kubeconfigs issued per second through the API, next to
//! two baselines measured in the same run.
//!
//! Issuance goes through the full manager router in-process (`tower::ServiceExt::oneshot`,
//! no sockets): bearer-token authentication, rate-limit bookkeeping, the scope check,
//! tenant/cluster reads, ES256 signing, kubeconfig building and YAML serialization, and
//! the credential row + audit event written (group commit, checked against revocations)
//! before the token is signed. `KUBENOVA_BENCH_CONNS` (comma-separated, default
//! `16,64,128,256`) tasks issue back to back on a 2-worker runtime.
//!
//! **Baseline 1, bare issuance** (target: issuance ≥ 50% of its rate): the same number of
//! tasks on the same runtime each sign the same claims (a fresh `jti` per token) with
//! `KeySet::issue`, the manager's key type and library, and then run one raw sqlx
//! transaction per token that inserts exactly the rows an issuance writes: the
//! `issued_credentials` row and the `audit_events` row, with the store's SQL text and an
//! audit document of the same shape, serialized per token as the store does. No checks, no
//! batching. It writes to a fresh database of its own (a second SQLite file, or a second
//! Postgres schema) opened by the same store constructor, so its pool has the store's
//! settings (SQLite: one connection, WAL, `synchronous=FULL`, exclusive lock; Postgres:
//! pool of 16, no ping). Per concurrency level, `KUBENOVA_BENCH_ROUNDS` (default 3) rounds
//! run both sides one window each, alternating which goes first, so drift on a shared
//! machine hits both alike; the ratio is the median of the per-round ratios.
//!
//! **Baseline 2, bare signing**: `KeySet::issue` alone on 2 threads (the same two cores).
//! Reported as the manager process's own CPU per issuance against one signature's CPU
//! (target ≥ 25% at every level; the database's CPU is reported beside it), and as the
//! issuance rate against the bare signing rate.
//!
//! Stores: both, each fresh: SQLite (embedded default) and Postgres
//! (`KUBENOVA_BENCH_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`, fresh
//! schemas, skipped with a notice when unreachable); `KUBENOVA_BENCH_STORE=sqlite` or
//! `=postgres` measures one. Run: `cargo bench -p kubenova-manager --bench kubeconfigs`;
//! `KUBENOVA_BENCH_SECS` is the window length (default 4). Without `--bench` it runs one
//! round of short windows as a smoke test.
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

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use kubenova_api::ids::{AuditId, ClusterId, TenantId};
use kubenova_api::model::{AccessRole, AuditEvent, AuditOutcome};
use kubenova_kubeconfig::{Claims, KeySet, TokenSpec};
use kubenova_manager::api::authz::Role;
use kubenova_manager::api::config::ServerConfig;
use kubenova_store::crypto::{Kek, Keyring};
use kubenova_store::{CredentialMode, PgStore, SqliteStore, Store, WriteOptions, to_micros};
use serde_json::{Value, json};
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tower::ServiceExt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const CA: &str = include_str!("../../../kubenova-kubeconfig/tests/fixtures/proxy-ca.pem");
const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const ISSUER: &str = "https://kubenova.example.com";
const SUBJECT: &str = "alice@example.com";
/// Issuance rate ÷ bare issuance rate (signature + raw transaction).
const TARGET_BARE_ISSUANCE: f64 = 0.50;
/// One bare signature's CPU ÷ the manager process's CPU per issuance.
const TARGET_CPU_SHARE: f64 = 0.25;

/// The store's insert of one credential row (`record_credential` in `kubenova-store`).
const SQL_CREDENTIAL: &str = "INSERT INTO issued_credentials (jti, tenant_id, project_id, cluster_id, subject, role, mode, issued_by, \
     issued_at, expires_at, revoked_at, revoked_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";
/// The store's insert of one audit event on Postgres (the document column is `json`).
const SQL_AUDIT_PG: &str = "INSERT INTO audit_events (id, at, actor, action, resource_kind, resource_id, outcome, doc) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8::json)";
/// The same on SQLite (the document column is `TEXT`).
const SQL_AUDIT_SQLITE: &str = "INSERT INTO audit_events (id, at, actor, action, resource_kind, resource_id, outcome, doc) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "Postgres",
        }
    }
}

async fn call(
    app: &axum::Router,
    method: Method,
    uri: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Vec<u8>) {
    let b = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    let req = match body {
        Some(v) => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(v.to_string())),
        None => b.body(Body::empty()),
    }
    .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, bytes)
}

/// CPU seconds (user + system) used so far by the processes whose `/proc/<pid>/stat`
/// command is one of `names` (`None`: this process only). Clock ticks are 1/100 s on Linux.
fn cpu_seconds(names: Option<&[&str]>) -> f64 {
    let ticks = |stat: &str| -> Option<f64> {
        // Fields after the command (which may contain spaces) start at ") ".
        let rest = &stat[stat.rfind(") ")? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
    };
    let Some(names) = names else {
        return std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| ticks(&s))
            .unwrap_or(0.0);
    };
    let mut total = 0.0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let comm = stat
            .split_once(" (")
            .and_then(|(_, r)| r.rsplit_once(") "))
            .map(|(c, _)| c);
        if comm.is_some_and(|c| names.contains(&c)) {
            total += ticks(&stat).unwrap_or(0.0);
        }
    }
    total
}

/// CPU seconds used so far by this process's threads whose name starts with `prefix`:
/// sqlx runs each SQLite connection on a thread of its own (`sqlx-sqlite-worker-N`,
/// shortened to 15 characters by the kernel), which is the embedded database's CPU.
fn thread_cpu_seconds(prefix: &str) -> f64 {
    let mut total = 0.0;
    for e in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some((comm, rest)) = stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(") "))
        else {
            continue;
        };
        if !comm.starts_with(prefix) {
            continue;
        }
        let f: Vec<&str> = rest.split_whitespace().collect();
        let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        total += (tick(11) + tick(12)) / 100.0;
    }
    total
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn keyring() -> Keyring {
    Keyring::new(vec![Kek::new("k1", &[5u8; 32]).unwrap()]).unwrap()
}

fn pg_url() -> String {
    std::env::var("KUBENOVA_BENCH_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_PG_URL.into())
}

/// Creates a fresh schema on `url`; answers its name and connect options that use it.
async fn pg_schema(
    url: &str,
    prefix: &str,
) -> Result<(String, sqlx::postgres::PgConnectOptions), BoxError> {
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await?;
    let schema = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await?;
    admin.close().await;
    let opts = sqlx::postgres::PgConnectOptions::from_str(url)?
        .options([("search_path", schema.as_str())]);
    Ok((schema, opts))
}

async fn drop_schemas(url: &str, schemas: &[String]) {
    let admin = sqlx::PgPool::connect(url).await.unwrap();
    for schema in schemas {
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&admin)
            .await
            .unwrap();
    }
    admin.close().await;
}

/// The raw side's pool: the pool of a second, fresh store of the same backend.
enum RawPool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// Baseline 1: what an issuance must do at the least, written directly: sign the claims,
/// then insert the credential row and the audit event in one transaction.
struct BareIssuance {
    keys: KeySet,
    spec: TokenSpec,
    tenant: TenantId,
    cluster: ClusterId,
    pool: RawPool,
}

impl BareIssuance {
    async fn issue(&self) -> Result<(), BoxError> {
        let now = OffsetDateTime::now_utc();
        let claims = Claims::new(&self.spec, now, time::Duration::days(1))?;
        std::hint::black_box(self.keys.issue(&claims)?);
        let jti = uuid::Uuid::parse_str(&claims.jti)?;
        let issued_at = OffsetDateTime::from_unix_timestamp(claims.iat)?;
        // The audit event the manager writes for a token kubeconfig (same fields and details).
        let ev = AuditEvent {
            id: AuditId::new(),
            at: now,
            actor: SUBJECT.into(),
            roles: vec![Role::TenantOwner.as_str().to_string()],
            action: "kubeconfig.issue".into(),
            resource_kind: "credential".into(),
            resource_id: claims.jti.clone(),
            outcome: AuditOutcome::Success,
            http_status: Some(200),
            request_id: uuid::Uuid::new_v4().to_string(),
            source_ip: String::new(),
            details: Some(json!({
                "issuedBy": SUBJECT, "subject": SUBJECT,
                "clusterId": self.cluster, "cluster": "bench",
                "tenantId": self.tenant, "tenant": "acme",
                "projectId": null, "project": null,
                "role": AccessRole::Developer.as_str(), "mode": CredentialMode::Token.as_str(),
                "ttlSeconds": self.spec.ttl.whole_seconds(),
                "jti": claims.jti, "expiresAt": claims.exp,
            })),
        };
        let outcome = serde_json::to_value(ev.outcome)?;
        let doc = serde_json::to_string(&ev)?;
        macro_rules! transaction {
            ($pool:expr, $audit:expr) => {{
                let mut tx = $pool.begin().await?;
                sqlx::query(SQL_CREDENTIAL)
                    .bind(jti)
                    .bind(self.tenant.0)
                    .bind(None::<uuid::Uuid>)
                    .bind(self.cluster.0)
                    .bind(SUBJECT)
                    .bind(AccessRole::Developer.as_str())
                    .bind(CredentialMode::Token.as_str())
                    .bind(SUBJECT)
                    .bind(to_micros(issued_at))
                    .bind(to_micros(claims.expires_at()))
                    .bind(None::<i64>)
                    .bind(None::<String>)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query($audit)
                    .bind(ev.id.0)
                    .bind(to_micros(ev.at))
                    .bind(&ev.actor)
                    .bind(&ev.action)
                    .bind(&ev.resource_kind)
                    .bind(&ev.resource_id)
                    .bind(outcome.as_str().unwrap_or_default())
                    .bind(doc)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }};
        }
        match &self.pool {
            RawPool::Sqlite(p) => transaction!(p, SQL_AUDIT_SQLITE),
            RawPool::Postgres(p) => transaction!(p, SQL_AUDIT_PG),
        }
        Ok(())
    }

    /// Rows the raw side wrote: (credential rows, audit events).
    async fn rows(&self) -> (i64, i64) {
        let (c, a) = (
            "SELECT COUNT(*) FROM issued_credentials",
            "SELECT COUNT(*) FROM audit_events",
        );
        match &self.pool {
            RawPool::Sqlite(p) => (
                sqlx::query_scalar(c).fetch_one(p).await.unwrap(),
                sqlx::query_scalar(a).fetch_one(p).await.unwrap(),
            ),
            RawPool::Postgres(p) => (
                sqlx::query_scalar(c).fetch_one(p).await.unwrap(),
                sqlx::query_scalar(a).fetch_one(p).await.unwrap(),
            ),
        }
    }
}

/// The claims of the bench's issuances (as the manager builds them for the owner).
fn token_spec(cluster: ClusterId) -> TokenSpec {
    TokenSpec {
        issuer: ISSUER.into(),
        audience: format!("kubenova:cluster:{cluster}"),
        subject: SUBJECT.into(),
        tenant: "acme".into(),
        project: None,
        role: AccessRole::Developer,
        ttl: time::Duration::hours(1),
        extra_groups: Vec::new(),
    }
}

/// Bare signing rate (per second) and CPU per signature (µs, measured, so other load on
/// the machine does not inflate it).
fn bare_signing(secs: Duration, threads: usize) -> (f64, f64) {
    let keys = Arc::new(KeySet::generate(OffsetDateTime::now_utc()).unwrap());
    let claims = Arc::new(
        Claims::new(
            &token_spec(ClusterId::new()),
            OffsetDateTime::now_utc(),
            time::Duration::days(1),
        )
        .unwrap(),
    );
    let count = Arc::new(AtomicU64::new(0));
    let cpu0 = cpu_seconds(None);
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (keys, claims, count) = (keys.clone(), claims.clone(), count.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + secs;
                let mut n = 0u64;
                while Instant::now() < deadline {
                    std::hint::black_box(keys.issue(&claims).unwrap());
                    n += 1;
                }
                count.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let n = count.load(Ordering::Relaxed) as f64;
    (
        n / start.elapsed().as_secs_f64(),
        (cpu_seconds(None) - cpu0) * 1e6 / n.max(1.0),
    )
}

/// One side's window at one concurrency level.
#[derive(Default)]
struct Window {
    ok: u64,
    errors: u64,
    secs: f64,
    lat: Vec<Duration>,
    /// CPU seconds of this process during the window, the database's threads excluded.
    cpu: f64,
    /// CPU seconds of the database during the window: the Postgres server processes, or
    /// this process's SQLite connection threads.
    db_cpu: f64,
}

impl Window {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.secs
    }
}

/// Runs `op` back to back on `conns` tasks for `len`; `op` answers whether it succeeded.
async fn window<F, Fut>(conns: usize, len: Duration, postgres: bool, op: F) -> Window
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let db = || {
        if postgres {
            cpu_seconds(Some(&["postgres"]))
        } else {
            thread_cpu_seconds("sqlx-sqlite")
        }
    };
    let (cpu0, db0) = (cpu_seconds(None), db());
    let start = Instant::now();
    let deadline = start + len;
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    if op().await {
                        lat.push(t0.elapsed());
                    } else {
                        errors += 1;
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut w = Window::default();
    for t in tasks {
        let (l, e) = t.await.unwrap();
        w.lat.extend(l);
        w.errors += e;
    }
    w.secs = start.elapsed().as_secs_f64();
    w.db_cpu = db() - db0;
    w.cpu = cpu_seconds(None) - cpu0 - if postgres { 0.0 } else { w.db_cpu };
    w.ok = w.lat.len() as u64;
    w
}

/// Both sides' windows at one concurrency level, one per round each.
struct Level {
    conns: usize,
    api: Vec<Window>,
    bare: Vec<Window>,
}

/// Totals of one side over the rounds: rate, p50, p99, ok, errors, CPU µs per operation
/// in this process and in the database.
struct Totals {
    rate: f64,
    p50: Duration,
    p99: Duration,
    ok: u64,
    errors: u64,
    cpu_us: f64,
    db_us: f64,
}

fn totals(ws: &[Window]) -> Totals {
    let ok: u64 = ws.iter().map(|w| w.ok).sum();
    let secs: f64 = ws.iter().map(|w| w.secs).sum();
    let mut lat: Vec<Duration> = ws.iter().flat_map(|w| w.lat.iter().copied()).collect();
    lat.sort();
    let per = |s: f64| s * 1e6 / ok.max(1) as f64;
    Totals {
        rate: ok as f64 / secs,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        ok,
        errors: ws.iter().map(|w| w.errors).sum(),
        cpu_us: per(ws.iter().map(|w| w.cpu).sum()),
        db_us: per(ws.iter().map(|w| w.db_cpu).sum()),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Measures one backend (fresh database or schemas); `None` when Postgres is unreachable.
async fn run_backend(
    backend: Backend,
    dir: &std::path::Path,
    levels: &[usize],
    len: Duration,
    rounds: usize,
) -> Option<Vec<Level>> {
    let url = pg_url();
    // The manager's store and the raw side's pool: two stores opened alike.
    let (store, bare_pool, pg): (Arc<dyn Store>, RawPool, Option<Vec<String>>) = match backend {
        Backend::Sqlite => {
            let open = |file: &str| {
                let url = format!("sqlite://{}", dir.join(file).display());
                async move { SqliteStore::connect(&url, keyring()).await }
            };
            let bare = open("bare.db").await.unwrap();
            (
                Arc::new(open("kn.db").await.unwrap()),
                RawPool::Sqlite(bare.pool().clone()),
                None,
            )
        }
        Backend::Postgres => {
            let (schema, opts) = match pg_schema(&url, "kn_bench_kc").await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!(
                        "!!! POSTGRES SKIPPED: cannot use {}: {e}",
                        kubenova_store::redact_url(&url)
                    );
                    eprintln!(
                        "!!! set KUBENOVA_BENCH_POSTGRES_URL to a reachable database to measure it"
                    );
                    return None;
                }
            };
            let (bare_schema, bare_opts) = pg_schema(&url, "kn_bench_kcraw").await.unwrap();
            let s = PgStore::connect_with(opts, 16, keyring()).await.unwrap();
            let bare = PgStore::connect_with(bare_opts, 16, keyring())
                .await
                .unwrap();
            (
                Arc::new(s),
                RawPool::Postgres(bare.pool().clone()),
                Some(vec![schema, bare_schema]),
            )
        }
    };
    let postgres = backend == Backend::Postgres;
    let cfg = ServerConfig {
        external_url: Some(ISSUER.into()),
        rate_limit_subject_rps: 0,
        rate_limit_ip_rps: 0,
        ..ServerConfig::default()
    };
    let st = kubenova_manager::test_state(store, cfg, b"kubeconfig-bench-secret-0123456789abcdef");
    // As the real binary on Postgres: the listener that keeps the record cache correct
    // and enables it once it listens.
    if postgres {
        kubenova_manager::listen_postgres(&st, &url);
        let cache = st.store.row_cache().unwrap();
        let waited = Instant::now();
        while !cache.is_enabled() {
            assert!(
                waited.elapsed() < Duration::from_secs(10),
                "the record cache was never enabled"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let app = kubenova_manager::api::router(st.clone());
    let admin = st
        .auth
        .mint("admin", &[Role::Admin], &[], &[], Duration::from_secs(3600))
        .unwrap()
        .token;
    let kc = "apiVersion: v1\nkind: Config\nclusters:\n- name: p\n  cluster:\n    server: https://10.0.0.1:6443\n    certificate-authority-data: TFMwdExTMUNSVWRKVGc9PQ==\ncontexts:\n- name: p\n  context:\n    cluster: p\n    user: a\ncurrent-context: p\nusers:\n- name: a\n  user:\n    token: x\n";
    let (s, c) = call(
        &app,
        Method::POST,
        "/api/v1/clusters",
        &admin,
        Some(json!({"name": "bench", "kubeconfig": kc})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let c: Value = serde_json::from_slice(&c).unwrap();
    let cid: ClusterId = c["id"].as_str().unwrap().parse().unwrap();
    let mut rec = st.store.get_cluster(cid).await.unwrap();
    let v = rec.version;
    rec.version += 1;
    use base64::Engine as _;
    rec.proxy = Some(
        serde_json::from_value(json!({"url": "https://capsule-proxy.example.com:9001",
            "caData": base64::engine::general_purpose::STANDARD.encode(CA)}))
        .unwrap(),
    );
    st.store
        .update_cluster(&rec, v, &WriteOptions::default())
        .await
        .unwrap();
    let (s, t) = call(
        &app,
        Method::POST,
        &format!("/api/v1/clusters/{cid}/tenants"),
        &admin,
        Some(json!({"name": "acme"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let t: Value = serde_json::from_slice(&t).unwrap();
    let tid: TenantId = t["id"].as_str().unwrap().parse().unwrap();
    let owner = st
        .auth
        .mint(
            SUBJECT,
            &[Role::TenantOwner],
            &[tid],
            &[],
            Duration::from_secs(3600),
        )
        .unwrap()
        .token;
    let uri = format!("/api/v1/tenants/{tid}/kubeconfig?role=developer");
    let bare = Arc::new(BareIssuance {
        keys: KeySet::generate(OffsetDateTime::now_utc()).unwrap(),
        spec: token_spec(cid),
        tenant: tid,
        cluster: cid,
        pool: bare_pool,
    });
    // Warm up both sides (signing keys loaded, pools filled, statements prepared).
    const WARM: u64 = 50;
    for _ in 0..WARM {
        assert_eq!(
            call(&app, Method::GET, &uri, &owner, None).await.0,
            StatusCode::OK
        );
        bare.issue().await.unwrap();
    }
    let api_op = {
        let (app, uri, owner) = (app.clone(), uri.clone(), owner.clone());
        move || {
            let (app, uri, owner) = (app.clone(), uri.clone(), owner.clone());
            async move { call(&app, Method::GET, &uri, &owner, None).await.0 == StatusCode::OK }
        }
    };
    let bare_op = {
        let bare = bare.clone();
        move || {
            let bare = bare.clone();
            async move {
                match bare.issue().await {
                    Ok(()) => true,
                    Err(e) => {
                        eprintln!("bare issuance failed: {e}");
                        false
                    }
                }
            }
        }
    };
    let mut out = Vec::new();
    for &conns in levels {
        let mut level = Level {
            conns,
            api: Vec::new(),
            bare: Vec::new(),
        };
        for round in 0..rounds {
            // API first in even rounds, the baseline first in odd ones.
            for api_side in [round % 2 == 0, round % 2 == 1] {
                if api_side {
                    level
                        .api
                        .push(window(conns, len, postgres, api_op.clone()).await);
                } else {
                    level
                        .bare
                        .push(window(conns, len, postgres, bare_op.clone()).await);
                }
            }
        }
        out.push(level);
    }
    // Every issuance left a credential row, and every bare one its two rows.
    let issued: u64 = out.iter().flat_map(|l| &l.api).map(|w| w.ok).sum();
    let mut listed = 0u64;
    let mut cursor = None;
    loop {
        let page = st
            .store
            .list_credentials(
                tid,
                &kubenova_store::CredentialQuery {
                    subject: None,
                    page: kubenova_store::ListParams {
                        limit: Some(500),
                        cursor: cursor.take(),
                    },
                },
            )
            .await
            .unwrap();
        listed += page.items.len() as u64;
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(listed, issued + WARM, "credential rows");
    let bare_ok: u64 = out.iter().flat_map(|l| &l.bare).map(|w| w.ok).sum();
    let want = i64::try_from(bare_ok + WARM).unwrap();
    assert_eq!(bare.rows().await, (want, want), "bare issuance rows");
    st.store.close().await;
    match &bare.pool {
        RawPool::Sqlite(p) => p.close().await,
        RawPool::Postgres(p) => p.close().await,
    }
    if let Some(schemas) = pg {
        drop_schemas(&url, &schemas).await;
    }
    Some(out)
}

fn report(backend: Backend, levels: &[Level], rounds: usize, len: Duration, bare_sign: (f64, f64)) {
    let (sign_rate, sign_us) = bare_sign;
    println!();
    println!(
        "kubeconfig issuance — {} (fresh {}), {rounds} round(s) of {:.1} s windows per side and level",
        backend.name(),
        match backend {
            Backend::Sqlite => "files; embedded default, synchronous=FULL, one connection",
            Backend::Postgres => "schemas; pool 16",
        },
        len.as_secs_f64()
    );
    println!(
        "| concurrent | issued/s through the API (GET …/kubeconfig?role=developer) | bare issuance: ES256 `KeySet::issue` + raw sqlx tx (credential + audit rows) | ratio: median of rounds (per round) | target ≥ 50% |"
    );
    println!("|---|---|---|---|---|");
    for l in levels {
        let (a, b) = (totals(&l.api), totals(&l.bare));
        let ratios: Vec<f64> = l
            .api
            .iter()
            .zip(&l.bare)
            .map(|(a, b)| a.rate() / b.rate())
            .collect();
        let per_round: Vec<String> = ratios
            .iter()
            .map(|r| format!("{:.0}%", r * 100.0))
            .collect();
        let ratio = median(ratios);
        println!(
            "| {} | {:.0} /s (p50 {:.2} ms, p99 {:.2} ms, {} ok, {} errors) | {:.0} /s (p50 {:.2} ms, p99 {:.2} ms, {} ok, {} errors) | {:.1}% ({}) | {} |",
            l.conns,
            a.rate,
            a.p50.as_secs_f64() * 1e3,
            a.p99.as_secs_f64() * 1e3,
            a.ok,
            a.errors,
            b.rate,
            b.p50.as_secs_f64() * 1e3,
            b.p99.as_secs_f64() * 1e3,
            b.ok,
            b.errors,
            ratio * 100.0,
            per_round.join(", "),
            if ratio >= TARGET_BARE_ISSUANCE {
                "met"
            } else {
                "NOT met"
            }
        );
    }
    println!();
    println!(
        "| concurrent | CPU per issuance: manager (this process{}) | database ({}) | bare issuance's CPU: this process + database | one bare signature (2 threads: {sign_rate:.0} /s) | manager share: signature ÷ manager CPU, target ≥ 25% | issuance rate ÷ bare signing rate |",
        if backend == Backend::Sqlite {
            ", its SQLite connection thread excluded"
        } else {
            ""
        },
        match backend {
            Backend::Sqlite => "the SQLite connection thread",
            Backend::Postgres => "the Postgres server processes, any client's",
        }
    );
    println!("|---|---|---|---|---|---|---|");
    for l in levels {
        let (a, b) = (totals(&l.api), totals(&l.bare));
        let share = sign_us / a.cpu_us;
        println!(
            "| {} | {:.1} µs | {:.1} µs | {:.1} + {:.1} µs | {sign_us:.1} µs | {:.1}% {} | {:.1}% |",
            l.conns,
            a.cpu_us,
            a.db_us,
            b.cpu_us,
            b.db_us,
            share * 100.0,
            if share >= TARGET_CPU_SHARE {
                "met"
            } else {
                "NOT met"
            },
            a.rate / sign_rate * 100.0
        );
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let len = if full {
        Duration::from_secs_f64(
            std::env::var("KUBENOVA_BENCH_SECS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(4.0),
        )
    } else {
        Duration::from_millis(300)
    };
    let rounds = if full {
        std::env::var("KUBENOVA_BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3)
    } else {
        1
    };
    // Concurrency levels (e.g. `KUBENOVA_BENCH_CONNS=16,64`).
    let levels: Vec<usize> = std::env::var("KUBENOVA_BENCH_CONNS")
        .unwrap_or_else(|_| "16,64,128,256".into())
        .split(',')
        .map(|v| {
            v.trim()
                .parse()
                .expect("KUBENOVA_BENCH_CONNS: comma-separated numbers")
        })
        .collect();
    let backends: Vec<Backend> = match std::env::var("KUBENOVA_BENCH_STORE").as_deref() {
        Ok("sqlite") => vec![Backend::Sqlite],
        Ok("postgres") => vec![Backend::Postgres],
        Ok("") | Err(_) => vec![Backend::Sqlite, Backend::Postgres],
        Ok(other) => panic!(
            "KUBENOVA_BENCH_STORE={other:?}: use sqlite, postgres or leave it unset for both"
        ),
    };
    for backend in backends {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let levels = rt.block_on(run_backend(backend, dir.path(), &levels, len, rounds));
        drop(rt);
        let Some(levels) = levels else { continue };
        let bare_sign = bare_signing(len, 2);
        report(backend, &levels, rounds, len, bare_sign);
    }
}
