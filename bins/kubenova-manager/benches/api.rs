//! Throughput, latency and memory of the manager's HTTP API, each next to a baseline
//! measured in the same run on the same machine (targets in docs/src/benchmarks.md).
//!
//! A loopback load generator (tokio + the hyper HTTP/1.1 client) opens N keep-alive
//! connections, waits until all are connected, then runs requests back to back on each
//! for a fixed duration and reports requests/s and the p50/p99 latency seen by the
//! client. The servers run on their own 2-worker tokio runtime; the load generator on
//! another 2-worker runtime.
//!
//! 1. `GET /api/v1/healthz` through the full manager router (`axum::serve` with connect
//!    info, as `kubenova_manager::serve` does) vs a bare hyper HTTP/1.1 "hello" server on
//!    the same kind of listener. Alternating rounds. Target ≥ 70% of its requests/s.
//! 2. `GET /api/v1/clusters/{c}/tenants/{t}` with an HS256 bearer token, on Postgres (pool
//!    of 64, fresh schema), 64 connections, vs `pgbench -S -M prepared -c 64 -j 2` on a
//!    scratch database, without TLS like sqlx here (run before and after, averaged). Target ≥ 50% of its TPS, p99 < 10 ms.
//! 3. `POST /api/v1/clusters/{c}/tenants` with a unique name and `Idempotency-Key` vs a raw
//!    sqlx transaction on the same pool running the statements the Store runs for it
//!    (bump `cluster_revisions`, insert `desired_changes`, `tenants`, `audit_events`, delete
//!    expired + insert `idempotency_keys`), 64 concurrent. Alternating rounds. Target ≥ 50%.
//! 4. Resident memory of the real `kubenova-manager serve` process (`VmRSS`/`VmHWM` from
//!    `/proc/<pid>/status`): idle on SQLite (< 30 MiB), and under the 64-connection tenant
//!    GET load on SQLite and on Postgres with a pool of 64 (< 150 MiB).
//!
//! Run: `cargo bench -p kubenova-manager --bench api`. Environment:
//! `KUBENOVA_BENCH_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`),
//! `KUBENOVA_BENCH_SECS` (length of one measured window, default 8),
//! `KUBENOVA_BENCH_CONNS` (default 64), `PGBENCH` (path of pgbench). Without `--bench`
//! (e.g. `cargo test --benches`) it runs 1-second windows as a smoke test.
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
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use kubenova_api::ids::{AuditId, TenantId};
use kubenova_api::model::{AuditEvent, AuditOutcome, Tenant};
use kubenova_manager::api::auth::Authenticator;
use kubenova_manager::api::authz::Role;
use kubenova_manager::api::config::ServerConfig;
use kubenova_store::crypto::{Kek, Keyring};
use kubenova_store::{PgStore, Store, to_micros};
use sqlx::Row as _;
use sqlx::types::{Json, JsonRawValue};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const SECRET: &str = "kubenova-bench-hs256-secret-0123456789abcdef";
const MIB: f64 = 1024.0 * 1024.0;

/// A registered cluster's kubeconfig (shared fixture; its token is a stand-in secret).
const KUBECONFIG: &str = include_str!("../tests/fixtures/cluster.kubeconfig");

/// Same SQL text as the Store (kubenova-store/src/sql.rs), so both sides share the
/// connection's cached prepared statements.
const SQL_BUMP: &str =
    "UPDATE cluster_revisions SET revision = revision + 1 WHERE cluster_id = $1 RETURNING revision";
const SQL_CHANGE: &str = "INSERT INTO desired_changes (cluster_id, revision, kind, object_id, deleted) VALUES ($1, $2, $3, $4, $5)";
const SQL_TENANT: &str = "INSERT INTO tenants (id, cluster_id, name, doc, version, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)";
const SQL_AUDIT: &str = "INSERT INTO audit_events (id, at, actor, action, resource_kind, resource_id, outcome, doc) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
const SQL_IDEM_DEL: &str =
    "DELETE FROM idempotency_keys WHERE subject = $1 AND key = $2 AND expires_at <= $3";
const SQL_IDEM: &str = "INSERT INTO idempotency_keys (subject, key, request_hash, status, body, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)";

// ---- load generator -----------------------------------------------------------------

/// What one measured window produced.
#[derive(Default, Clone)]
struct Load {
    ok: u64,
    errors: u64,
    secs: f64,
    /// Latency of every successful request, in microseconds, sorted.
    lat_us: Vec<u32>,
    first_error: Option<String>,
}

impl Load {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.secs
    }
    fn pct_ms(&self, p: f64) -> f64 {
        if self.lat_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.lat_us.len() as f64 - 1.0) * p).round() as usize;
        f64::from(self.lat_us[i]) / 1000.0
    }
    fn merge(list: &[Load]) -> Load {
        let mut out = Load::default();
        for l in list {
            out.ok += l.ok;
            out.errors += l.errors;
            out.secs += l.secs;
            out.lat_us.extend_from_slice(&l.lat_us);
            if out.first_error.is_none() {
                out.first_error.clone_from(&l.first_error);
            }
        }
        out.lat_us.sort_unstable();
        out
    }
    fn describe(&self) -> String {
        format!(
            "{:.0}/s, p50 {:.2} ms, p99 {:.2} ms ({} ok, {} errors in {:.1} s)",
            self.rate(),
            self.pct_ms(0.5),
            self.pct_ms(0.99),
            self.ok,
            self.errors,
            self.secs
        )
    }
}

type MakeRequest = Arc<dyn Fn(usize, u64) -> Request<Full<Bytes>> + Send + Sync>;

/// `conns` keep-alive HTTP/1.1 connections to `addr`, each sending `make(conn, seq)`
/// back to back for `dur` once all are connected. Non-2xx responses count as errors.
async fn http_load(addr: SocketAddr, conns: usize, dur: Duration, make: MakeRequest) -> Load {
    let barrier = Arc::new(tokio::sync::Barrier::new(conns));
    let mut tasks = Vec::with_capacity(conns);
    for c in 0..conns {
        let barrier = barrier.clone();
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            barrier.wait().await;
            let start = Instant::now();
            let deadline = start + dur;
            let mut out = Load::default();
            let mut seq = 0u64;
            while Instant::now() < deadline {
                let req = make(c, seq);
                seq += 1;
                let t0 = Instant::now();
                let res = match sender.send_request(req).await {
                    Ok(r) => r,
                    Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert_with(|| e.to_string());
                        break;
                    }
                };
                let status = res.status();
                let body = res.into_body().collect().await.map(|b| b.to_bytes());
                let us = t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                match body {
                    Ok(b) if status.is_success() => {
                        out.ok += 1;
                        out.lat_us.push(us);
                        std::hint::black_box(b);
                    }
                    Ok(b) => {
                        out.errors += 1;
                        out.first_error.get_or_insert_with(|| {
                            format!("{status}: {}", String::from_utf8_lossy(&b))
                        });
                    }
                    Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            out.secs = start.elapsed().as_secs_f64();
            out
        }));
    }
    let mut parts = Vec::with_capacity(conns);
    for t in tasks {
        parts.push(t.await.unwrap());
    }
    let mut total = Load::merge(&parts);
    // Wall time of the window: the mean over connections (they start together).
    total.secs /= conns as f64;
    total
}

/// One request on a fresh connection; returns status and body.
async fn one(addr: SocketAddr, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), BoxError> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let res = sender.send_request(req).await?;
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

fn request(
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
    idem: Option<String>,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "127.0.0.1");
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if let Some(k) = idem {
        b = b.header("idempotency-key", k);
    }
    match body {
        Some(s) => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(s)))
            .unwrap(),
        None => b.body(Full::new(Bytes::new())).unwrap(),
    }
}

/// Creates a cluster and one tenant through the API; returns (cluster id, tenant id).
async fn seed(addr: SocketAddr, token: &str) -> Result<(String, String), BoxError> {
    let body = serde_json::json!({"name": "bench", "kubeconfig": KUBECONFIG}).to_string();
    let (s, b) = one(
        addr,
        request(
            Method::POST,
            "/api/v1/clusters",
            Some(token),
            Some(body),
            None,
        ),
    )
    .await?;
    if s != StatusCode::CREATED {
        return Err(format!("create cluster: {s}: {}", String::from_utf8_lossy(&b)).into());
    }
    let cluster = serde_json::from_slice::<serde_json::Value>(&b)?["id"]
        .as_str()
        .ok_or("no cluster id")?
        .to_string();
    let (s, b) = one(
        addr,
        request(
            Method::POST,
            &format!("/api/v1/clusters/{cluster}/tenants"),
            Some(token),
            Some(tenant_body("seed")),
            None,
        ),
    )
    .await?;
    if s != StatusCode::CREATED {
        return Err(format!("create tenant: {s}: {}", String::from_utf8_lossy(&b)).into());
    }
    let tenant = serde_json::from_slice::<serde_json::Value>(&b)?["id"]
        .as_str()
        .ok_or("no tenant id")?
        .to_string();
    Ok((cluster, tenant))
}

fn tenant_body(name: &str) -> String {
    serde_json::json!({
        "name": name,
        "owners": ["alice@example.com"],
        "labels": {"team": "payments", "env": "prod"},
    })
    .to_string()
}

// ---- servers ------------------------------------------------------------------------

/// The baseline: hyper's HTTP/1.1 connection builder answering "hello" to everything.
async fn hello_server(listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The manager's router served like `kubenova_manager::serve` does (the same
/// `axum::serve` with connect info), on a port of its own.
async fn manager_server(
    rt: &tokio::runtime::Runtime,
    state: kubenova_manager::api::AppState,
) -> SocketAddr {
    let listener = rt
        .spawn(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .await
        .unwrap()
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
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

fn bench_config() -> ServerConfig {
    ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        rate_limit_subject_rps: 0,
        rate_limit_ip_rps: 0,
        ..ServerConfig::default()
    }
}

fn keyring() -> Keyring {
    Keyring::new(vec![Kek::new("bench", &[7; 32]).unwrap()]).unwrap()
}

fn authenticator() -> Authenticator {
    let cfg = ServerConfig::default();
    Authenticator::hs256(
        SECRET.as_bytes(),
        &cfg.jwt_issuer,
        &cfg.jwt_audience,
        cfg.clock_skew,
        cfg.max_token_ttl,
    )
}

fn admin_token(auth: &Authenticator) -> String {
    auth.mint(
        "bench-admin",
        &[Role::Admin],
        &[],
        &[],
        Duration::from_secs(3600),
    )
    .unwrap()
    .token
}

// ---- results table ------------------------------------------------------------------

struct Row {
    figure: String,
    value: String,
    baseline: String,
    ratio: String,
    target: String,
    pass: Option<bool>,
}

fn verdict(p: Option<bool>) -> &'static str {
    match p {
        Some(true) => "PASS",
        Some(false) => "FAIL",
        None => "n/a",
    }
}

fn ratio_row(figure: &str, value: &Load, base: &Load, base_name: &str, min: f64) -> Row {
    let r = value.rate() / base.rate();
    Row {
        figure: figure.into(),
        value: format!(
            "{:.0}/s (p50 {:.2} ms, p99 {:.2} ms)",
            value.rate(),
            value.pct_ms(0.5),
            value.pct_ms(0.99)
        ),
        baseline: format!(
            "{base_name}: {:.0}/s (p50 {:.2} ms, p99 {:.2} ms)",
            base.rate(),
            base.pct_ms(0.5),
            base.pct_ms(0.99)
        ),
        ratio: format!("{:.1}%", r * 100.0),
        target: format!("≥ {:.0}%", min * 100.0),
        pass: Some(r >= min && value.errors == 0),
    }
}

// ---- phase 1: healthz vs hyper ------------------------------------------------------

fn phase_healthz(
    server_rt: &tokio::runtime::Runtime,
    client_rt: &tokio::runtime::Runtime,
    conns: usize,
    dur: Duration,
    rounds: usize,
) -> (Load, Load) {
    client_rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("healthz.db").display());
        let store = server_rt
            .spawn(async move { kubenova_store::connect(&url, keyring()).await.unwrap() })
            .await
            .unwrap();
        let state = kubenova_manager::test_state(store, bench_config(), SECRET.as_bytes());
        let manager = manager_server(server_rt, state).await;
        let listener = server_rt
            .spawn(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .await
            .unwrap()
            .unwrap();
        let hello = listener.local_addr().unwrap();
        server_rt.spawn(hello_server(listener));

        let get = |path: &'static str| -> MakeRequest {
            Arc::new(move |_, _| request(Method::GET, path, None, None, None))
        };
        // Warm-up (not recorded).
        let warm = dur.min(Duration::from_secs(1));
        http_load(hello, conns, warm, get("/")).await;
        http_load(manager, conns, warm, get("/api/v1/healthz")).await;
        let (mut m, mut h) = (Vec::new(), Vec::new());
        for r in 0..rounds {
            let (mm, hh) = if r % 2 == 0 {
                let hh = http_load(hello, conns, dur, get("/")).await;
                let mm = http_load(manager, conns, dur, get("/api/v1/healthz")).await;
                (mm, hh)
            } else {
                let mm = http_load(manager, conns, dur, get("/api/v1/healthz")).await;
                let hh = http_load(hello, conns, dur, get("/")).await;
                (mm, hh)
            };
            eprintln!("  round {r}: manager healthz {}", mm.describe());
            eprintln!("  round {r}: bare hyper      {}", hh.describe());
            m.push(mm);
            h.push(hh);
        }
        drop(dir);
        (Load::merge(&m), Load::merge(&h))
    })
}

// ---- pgbench ------------------------------------------------------------------------

fn find_pgbench() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PGBENCH") {
        return Some(PathBuf::from(p));
    }
    if let Ok(out) = Command::new("which").arg("pgbench").output()
        && out.status.success()
    {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !p.is_empty() {
            return Some(PathBuf::from(p));
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin/pgbench"))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop()
}

/// `url` with its database replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{db}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Runs `pgbench -S -M prepared -c conns -j 2 -T secs` with per-transaction logs;
/// returns its TPS (without connection time) as a `Load` with the logged latencies.
fn pgbench_run(pgbench: &Path, conninfo: &str, conns: usize, secs: u64) -> Result<Load, BoxError> {
    let logdir = tempfile::tempdir()?;
    let prefix = logdir.path().join("pgbench_log");
    let out = Command::new(pgbench)
        .env("PGSSLMODE", "disable")
        .args([
            "-n",
            "-S",
            "-M",
            "prepared",
            "-c",
            &conns.to_string(),
            "-j",
            "2",
            "-T",
            &secs.to_string(),
            "-l",
        ])
        .arg(format!("--log-prefix={}", prefix.display()))
        .arg(conninfo)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "pgbench failed: {}\n{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let tps: f64 = stdout
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l["tps = ".len()..].split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no tps line in pgbench output:\n{stdout}"))?;
    let mut lat_us = Vec::new();
    for e in std::fs::read_dir(logdir.path())? {
        let text = std::fs::read_to_string(e?.path())?;
        for line in text.lines() {
            // client_id transaction_no time script_no time_epoch time_us
            if let Some(us) = line.split_whitespace().nth(2).and_then(|v| v.parse().ok()) {
                lat_us.push(us);
            }
        }
    }
    lat_us.sort_unstable();
    let ok = (tps * secs as f64).round() as u64;
    Ok(Load {
        ok,
        errors: 0,
        secs: secs as f64,
        lat_us,
        first_error: None,
    })
}

struct PgBench {
    admin: sqlx::PgPool,
    exe: PathBuf,
    db: String,
    conninfo: String,
}

impl PgBench {
    async fn setup(admin: &sqlx::PgPool, url: &str) -> Result<Self, BoxError> {
        let exe = find_pgbench().ok_or("pgbench not found (install postgresql-client-15)")?;
        let db = format!("kn_bench_pgbench_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(admin)
            .await?;
        let conninfo = with_database(url, &db);
        let out = Command::new(&exe)
            .env("PGSSLMODE", "disable")
            .args(["-i", "-s", "1", "-q"])
            .arg(&conninfo)
            .output()?;
        let this = Self {
            admin: admin.clone(),
            exe,
            db,
            conninfo,
        };
        if !out.status.success() {
            this.drop_db().await;
            return Err(format!(
                "pgbench -i failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(this)
    }

    async fn drop_db(&self) {
        if let Err(e) = sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db))
            .execute(&self.admin)
            .await
        {
            eprintln!("warning: could not drop {}: {e}", self.db);
        }
    }
}

// ---- raw sqlx baseline of tenant creation -------------------------------------------

/// The statements `Store::create_tenant` runs for an API create with an audit event and
/// an idempotency record, in one transaction, written directly against the pool.
async fn raw_create(
    pool: &sqlx::PgPool,
    template: &Tenant,
    name: String,
    key: String,
) -> Result<(), BoxError> {
    let now = OffsetDateTime::now_utc();
    let mut t = template.clone();
    t.id = TenantId::new();
    t.name = name;
    t.created_at = now;
    t.updated_at = now;
    let bytes = serde_json::to_vec(&t)?;
    let doc = JsonRawValue::from_string(String::from_utf8(bytes.clone())?)?;
    let ev = AuditEvent {
        id: AuditId::new(),
        at: now,
        actor: "bench-admin".into(),
        roles: vec!["admin".into()],
        action: "tenant.create".into(),
        resource_kind: "tenant".into(),
        resource_id: t.id.to_string(),
        outcome: AuditOutcome::Success,
        http_status: Some(201),
        request_id: uuid::Uuid::new_v4().to_string(),
        source_ip: "127.0.0.1".into(),
        details: Some(
            serde_json::json!({"clusterId": t.cluster_id, "name": t.name, "plan": t.plan}),
        ),
    };
    let hash = "0".repeat(64);
    let expires = now + time::Duration::hours(24);
    let mut tx = pool.begin().await?;
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
    sqlx::query(SQL_AUDIT)
        .bind(ev.id.0)
        .bind(to_micros(ev.at))
        .bind(&ev.actor)
        .bind(&ev.action)
        .bind(&ev.resource_kind)
        .bind(&ev.resource_id)
        .bind("success")
        .bind(Json(&ev))
        .execute(&mut *tx)
        .await?;
    sqlx::query(SQL_IDEM_DEL)
        .bind("bench-admin")
        .bind(&key)
        .bind(to_micros(now))
        .execute(&mut *tx)
        .await?;
    sqlx::query(SQL_IDEM)
        .bind("bench-admin")
        .bind(&key)
        .bind(&hash)
        .bind(201i32)
        .bind(&bytes)
        .bind(to_micros(now))
        .bind(to_micros(expires))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// `conns` tasks running `raw_create` back to back for `dur` (on the server runtime).
async fn raw_load(
    pool: sqlx::PgPool,
    template: Tenant,
    conns: usize,
    dur: Duration,
    tag: String,
) -> Load {
    let barrier = Arc::new(tokio::sync::Barrier::new(conns));
    let template = Arc::new(template);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (pool, template, barrier, tag) =
            (pool.clone(), template.clone(), barrier.clone(), tag.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let start = Instant::now();
            let mut out = Load::default();
            let mut seq = 0u64;
            while start.elapsed() < dur {
                let name = format!("{tag}-{c}-{seq}");
                let key = format!("{tag}-key-{c}-{seq}");
                seq += 1;
                let t0 = Instant::now();
                match raw_create(&pool, &template, name, key).await {
                    Ok(()) => {
                        out.ok += 1;
                        out.lat_us
                            .push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    }
                    Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            out.secs = start.elapsed().as_secs_f64();
            out
        }));
    }
    let mut parts = Vec::new();
    for t in tasks {
        parts.push(t.await.unwrap());
    }
    let mut total = Load::merge(&parts);
    total.secs /= conns as f64;
    total
}

/// `conns` tasks calling `Store::get_tenant` back to back for `dur` (no HTTP, no auth).
async fn store_load(store: Arc<dyn Store>, id: TenantId, conns: usize, dur: Duration) -> Load {
    let barrier = Arc::new(tokio::sync::Barrier::new(conns));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (store, barrier) = (store.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let start = Instant::now();
            let mut out = Load::default();
            while start.elapsed() < dur {
                let t0 = Instant::now();
                match store.get_tenant(id).await {
                    Ok(t) => {
                        std::hint::black_box(t);
                        out.ok += 1;
                        out.lat_us
                            .push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    }
                    Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            out.secs = start.elapsed().as_secs_f64();
            out
        }));
    }
    let mut parts = Vec::new();
    for t in tasks {
        parts.push(t.await.unwrap());
    }
    let mut total = Load::merge(&parts);
    total.secs /= conns as f64;
    total
}

// ---- phases 2 and 3: Postgres -------------------------------------------------------

struct PgOutcome {
    get: Load,
    /// Diagnostic: `Store::get_tenant` called directly by 64 tasks (no HTTP, no auth).
    direct: Load,
    /// Diagnostic: µs per HS256 bearer-token verification (one thread).
    jwt_us: f64,
    /// Diagnostic: `direct` with the record cache off (every read from Postgres).
    direct_db: Load,
    /// Diagnostic: the GET load with the record cache off.
    get_uncached: Load,
    /// Record cache hits and misses during the GET load.
    cache: kubenova_store::cache::CacheStats,
    pgbench: Option<Load>,
    pgbench_note: String,
    post: Load,
    raw: Load,
}

fn phase_postgres(
    server_rt: &tokio::runtime::Runtime,
    client_rt: &tokio::runtime::Runtime,
    url: &str,
    conns: usize,
    dur: Duration,
    rounds: usize,
) -> Result<PgOutcome, BoxError> {
    client_rt.block_on(async {
        let opts = sqlx::postgres::PgConnectOptions::from_str(url)?;
        let admin = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(opts.clone())
            .await?;

        // pgbench first: Postgres allows 100 connections, and the manager's pool keeps
        // its 64 open once grown.
        let secs = dur.as_secs().max(1);
        let mut pgbench_note = String::new();
        let pgb = match PgBench::setup(&admin, url).await {
            Ok(p) => Some(p),
            Err(e) => {
                pgbench_note = format!("pgbench unavailable: {e}");
                eprintln!("!!! {pgbench_note}");
                None
            }
        };
        let mut pgbench_runs = Vec::new();
        if let Some(p) = &pgb {
            match pgbench_run(&p.exe, &p.conninfo, conns, secs) {
                Ok(l) => {
                    eprintln!("  pgbench -S (before): {}", l.describe());
                    pgbench_runs.push(l);
                }
                Err(e) => pgbench_note = e.to_string(),
            }
        }

        let schema = format!("kn_bench_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await?;
        let result = async {
            let store_opts = opts.clone().options([("search_path", schema.as_str())]);
            let store = server_rt
                .spawn(async move { PgStore::connect_with(store_opts, 64, keyring()).await })
                .await??;
            let pool = store.pool().clone();
            let store: Arc<dyn Store> = Arc::new(store);
            let state =
                kubenova_manager::test_state(store.clone(), bench_config(), SECRET.as_bytes());
            // As the real binary on Postgres: the listener that keeps the record cache
            // correct across replicas, and enables it once it listens.
            {
                let _rt = server_rt.enter();
                kubenova_manager::listen_postgres(&state, url);
            }
            let cache = store
                .row_cache()
                .ok_or("the Postgres store has no record cache")?;
            let waited = Instant::now();
            while !cache.is_enabled() {
                if waited.elapsed() > Duration::from_secs(10) {
                    return Err("the change listener did not enable the record cache".into());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let token = admin_token(&state.auth);
            let addr = manager_server(server_rt, state).await;
            let (cluster, tenant) = seed(addr, &token).await?;

            // GET one tenant.
            let path: Arc<str> = format!("/api/v1/clusters/{cluster}/tenants/{tenant}").into();
            let tok: Arc<str> = token.clone().into();
            let make_get: MakeRequest = {
                let (path, tok) = (path.clone(), tok.clone());
                Arc::new(move |_, _| request(Method::GET, &path, Some(&tok), None, None))
            };
            http_load(
                addr,
                conns,
                dur.min(Duration::from_secs(1)),
                make_get.clone(),
            )
            .await;
            let before = cache.stats();
            let get = http_load(addr, conns, dur, make_get.clone()).await;
            let after = cache.stats();
            let cache_stats = kubenova_store::cache::CacheStats {
                hits: after.hits - before.hits,
                misses: after.misses - before.misses,
                invalidations: after.invalidations - before.invalidations,
            };
            eprintln!("  manager GET tenant:  {}", get.describe());
            eprintln!("  record cache during it: {cache_stats:?}");

            // Diagnostics: the same read without HTTP, and the cost of token checks.
            let tid = TenantId(uuid::Uuid::parse_str(&tenant)?);
            let direct = server_rt
                .spawn(store_load(store.clone(), tid, conns, dur))
                .await?;
            eprintln!(
                "  direct Store::get_tenant ({conns} tasks, no HTTP): {}",
                direct.describe()
            );
            // The same two loads with the record cache off: every read from Postgres.
            cache.disable();
            let direct_db = server_rt
                .spawn(store_load(store.clone(), tid, conns, dur))
                .await?;
            eprintln!(
                "  direct Store::get_tenant, record cache off: {}",
                direct_db.describe()
            );
            let get_uncached = http_load(addr, conns, dur, make_get).await;
            eprintln!(
                "  manager GET tenant, record cache off: {}",
                get_uncached.describe()
            );
            let bearer = format!("Bearer {token}");
            let n = 20_000u32;
            let auth = authenticator();
            let t0 = Instant::now();
            for _ in 0..n {
                std::hint::black_box(auth.authenticate(Some(&bearer)).is_ok());
            }
            let jwt_us = t0.elapsed().as_secs_f64() * 1e6 / f64::from(n);
            eprintln!("  HS256 verify: {jwt_us:.2} µs/token");

            // POST tenant vs raw transaction.
            let template = store.get_tenant(tid).await?;
            let posts_path: Arc<str> = format!("/api/v1/clusters/{cluster}/tenants").into();
            let (mut posts, mut raws) = (Vec::new(), Vec::new());
            for r in 0..rounds + 1 {
                let tag: Arc<str> =
                    format!("r{r}h{}", &uuid::Uuid::new_v4().simple().to_string()[..6]).into();
                let make_post: MakeRequest = {
                    let (path, tok, tag) = (posts_path.clone(), tok.clone(), tag.clone());
                    Arc::new(move |c, s| {
                        request(
                            Method::POST,
                            &path,
                            Some(&tok),
                            Some(tenant_body(&format!("{tag}-{c}-{s}"))),
                            Some(format!("{tag}-{c}-{s}")),
                        )
                    })
                };
                let raw_tag = format!("r{r}s{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
                // Round 0 is a warm-up of 1 s each (not recorded).
                let d = if r == 0 {
                    dur.min(Duration::from_secs(1))
                } else {
                    dur
                };
                let run_raw = || {
                    server_rt.spawn(raw_load(
                        pool.clone(),
                        template.clone(),
                        conns,
                        d,
                        raw_tag.clone(),
                    ))
                };
                let (p, w) = if r % 2 == 1 {
                    let p = http_load(addr, conns, d, make_post.clone()).await;
                    let w = run_raw().await?;
                    (p, w)
                } else {
                    let w = run_raw().await?;
                    let p = http_load(addr, conns, d, make_post.clone()).await;
                    (p, w)
                };
                if r > 0 {
                    eprintln!("  round {r}: manager POST tenant {}", p.describe());
                    eprintln!("  round {r}: raw sqlx tx         {}", w.describe());
                    if let Some(e) = &p.first_error {
                        eprintln!("    first POST error: {e}");
                    }
                    if let Some(e) = &w.first_error {
                        eprintln!("    first raw error: {e}");
                    }
                    posts.push(p);
                    raws.push(w);
                }
            }
            let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants")
                .fetch_one(&pool)
                .await?;
            eprintln!("  tenants rows after the POST phase: {rows}");
            pool.close().await;

            Ok::<_, BoxError>((
                get,
                direct,
                jwt_us,
                (direct_db, get_uncached, cache_stats),
                Load::merge(&posts),
                Load::merge(&raws),
            ))
        }
        .await;

        // pgbench again, after the manager's pool is closed; the two runs are averaged.
        if let Some(p) = &pgb {
            if result.is_ok() {
                match pgbench_run(&p.exe, &p.conninfo, conns, secs) {
                    Ok(l) => {
                        eprintln!("  pgbench -S (after):  {}", l.describe());
                        pgbench_runs.push(l);
                    }
                    Err(e) => pgbench_note = e.to_string(),
                }
            }
            p.drop_db().await;
        }
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&admin)
            .await?;
        admin.close().await;
        let (get, direct, jwt_us, (direct_db, get_uncached, cache), post, raw) = result?;
        let pgbench = (!pgbench_runs.is_empty()).then(|| Load::merge(&pgbench_runs));
        Ok(PgOutcome {
            get,
            direct,
            jwt_us,
            direct_db,
            get_uncached,
            cache,
            pgbench,
            pgbench_note,
            post,
            raw,
        })
    })
}

// ---- phase 4: memory of the real binary ---------------------------------------------

/// `VmRSS` and `VmHWM` of a process, in bytes.
fn proc_mem(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|kb| kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

struct Manager {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Manager {
    async fn start(database_url: &str, pool: Option<u32>) -> Result<Self, BoxError> {
        let exe = env!("CARGO_BIN_EXE_kubenova-manager");
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = std::fs::File::create(dir.path().join("manager.log"))?;
        let mut cmd = Command::new(exe);
        for (k, _) in std::env::vars() {
            if k.starts_with("KUBENOVA_") || k == "DATABASE_URL" {
                cmd.env_remove(k);
            }
        }
        cmd.arg("serve")
            .env("DATABASE_URL", database_url)
            .env("KUBENOVA_DATA_DIR", dir.path())
            .env("KUBENOVA_LISTEN", addr.to_string())
            .env("KUBENOVA_JWT_SECRET", SECRET)
            .env("KUBENOVA_RATE_LIMIT_SUBJECT_RPS", "0")
            .env("KUBENOVA_RATE_LIMIT_IP_RPS", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        if let Some(n) = pool {
            cmd.env("KUBENOVA_DB_MAX_CONNECTIONS", n.to_string());
        }
        let child = cmd.spawn()?;
        let mut m = Self {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = one(
                addr,
                request(Method::GET, "/api/v1/healthz", None, None, None),
            )
            .await
            .map(|(s, _)| s == StatusCode::OK)
            .unwrap_or(false);
            if ready {
                return Ok(m);
            }
            if let Ok(Some(st)) = m.child.try_wait() {
                let log =
                    std::fs::read_to_string(m._dir.path().join("manager.log")).unwrap_or_default();
                return Err(format!("kubenova-manager exited ({st}):\n{log}").into());
            }
            if Instant::now() > deadline {
                m.stop();
                return Err("kubenova-manager did not become ready in 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct MemOutcome {
    idle_rss: u64,
    load_rss_max: u64,
    load_hwm: u64,
    load: Load,
}

/// Starts the binary, measures idle RSS, then RSS during the 64-connection GET load.
async fn memory_run(
    database_url: &str,
    pool: Option<u32>,
    conns: usize,
    dur: Duration,
) -> Result<MemOutcome, BoxError> {
    let mut m = Manager::start(database_url, pool).await?;
    let result = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (idle_rss, _) = proc_mem(m.pid()).ok_or("no /proc status")?;
        let token = admin_token(&authenticator());
        let (cluster, tenant) = seed(m.addr, &token).await?;
        let path: Arc<str> = format!("/api/v1/clusters/{cluster}/tenants/{tenant}").into();
        let tok: Arc<str> = token.into();
        let make: MakeRequest =
            Arc::new(move |_, _| request(Method::GET, &path, Some(&tok), None, None));
        let pid = m.pid();
        let stop = Arc::new(AtomicU64::new(0));
        let max_rss = Arc::new(AtomicU64::new(0));
        let sampler = {
            let (stop, max_rss) = (stop.clone(), max_rss.clone());
            tokio::spawn(async move {
                while stop.load(Ordering::Relaxed) == 0 {
                    if let Some((rss, _)) = proc_mem(pid) {
                        max_rss.fetch_max(rss, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        let load = http_load(m.addr, conns, dur, make).await;
        stop.store(1, Ordering::Relaxed);
        sampler.await?;
        let (rss_end, hwm) = proc_mem(pid).ok_or("no /proc status")?;
        Ok::<_, BoxError>(MemOutcome {
            idle_rss,
            load_rss_max: max_rss.load(Ordering::Relaxed).max(rss_end),
            load_hwm: hwm,
            load,
        })
    }
    .await;
    m.stop();
    result
}

// ---- main ---------------------------------------------------------------------------

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let env_num = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let secs = if full {
        env_num("KUBENOVA_BENCH_SECS", 8)
    } else {
        1
    };
    let conns = env_num("KUBENOVA_BENCH_CONNS", 64) as usize;
    let dur = Duration::from_secs(secs);
    let url = std::env::var("KUBENOVA_BENCH_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_PG_URL.to_string());

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-server")
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let mut rows = Vec::new();

    let half = Duration::from_secs((secs / 2).max(1));
    eprintln!(
        "== 1. GET /api/v1/healthz vs bare hyper, {conns} connections, 4 alternating rounds of {} s each",
        half.as_secs()
    );
    let (m, h) = phase_healthz(&server_rt, &client_rt, conns, half, 4);
    rows.push(ratio_row(
        "GET /api/v1/healthz (full router)",
        &m,
        &h,
        "bare hyper hello",
        0.70,
    ));

    eprintln!("== 2./3. Postgres ({}) ", kubenova_store::redact_url(&url));
    match phase_postgres(&server_rt, &client_rt, &url, conns, dur, 2) {
        Ok(pg) => {
            match &pg.pgbench {
                Some(b) => {
                    rows.push(ratio_row(
                        "GET one tenant, HS256 auth, Postgres",
                        &pg.get,
                        b,
                        "pgbench -S -M prepared",
                        0.50,
                    ));
                }
                None => rows.push(Row {
                    figure: "GET one tenant, HS256 auth, Postgres".into(),
                    value: pg.get.describe(),
                    baseline: pg.pgbench_note.clone(),
                    ratio: "–".into(),
                    target: "≥ 50%".into(),
                    pass: None,
                }),
            }
            let p99 = pg.get.pct_ms(0.99);
            rows.push(Row {
                figure: "GET one tenant: p99 latency".into(),
                value: format!("{p99:.2} ms"),
                baseline: pg
                    .pgbench
                    .as_ref()
                    .map(|b| format!("pgbench p99 {:.2} ms", b.pct_ms(0.99)))
                    .unwrap_or_else(|| "–".into()),
                ratio: "–".into(),
                target: "< 10 ms".into(),
                pass: Some(p99 < 10.0),
            });
            rows.push(Row {
                figure: "(diagnostic) Store::get_tenant direct, no HTTP/auth (record cache on)"
                    .into(),
                value: format!(
                    "{:.0}/s (p50 {:.2} ms, p99 {:.2} ms)",
                    pg.direct.rate(),
                    pg.direct.pct_ms(0.5),
                    pg.direct.pct_ms(0.99)
                ),
                baseline: pg
                    .pgbench
                    .as_ref()
                    .map(|b| format!("pgbench -S: {:.0}/s", b.rate()))
                    .unwrap_or_else(|| "–".into()),
                ratio: pg
                    .pgbench
                    .as_ref()
                    .map(|b| format!("{:.1}%", pg.direct.rate() / b.rate() * 100.0))
                    .unwrap_or_else(|| "–".into()),
                target: "–".into(),
                pass: None,
            });
            rows.push(Row {
                figure: "(diagnostic) same, record cache off (a Postgres read each)".into(),
                value: format!(
                    "{:.0}/s (p50 {:.2} ms, p99 {:.2} ms)",
                    pg.direct_db.rate(),
                    pg.direct_db.pct_ms(0.5),
                    pg.direct_db.pct_ms(0.99)
                ),
                baseline: pg
                    .pgbench
                    .as_ref()
                    .map(|b| format!("pgbench -S: {:.0}/s", b.rate()))
                    .unwrap_or_else(|| "–".into()),
                ratio: pg
                    .pgbench
                    .as_ref()
                    .map(|b| format!("{:.1}%", pg.direct_db.rate() / b.rate() * 100.0))
                    .unwrap_or_else(|| "–".into()),
                target: "–".into(),
                pass: None,
            });
            rows.push(Row {
                figure: "(diagnostic) GET one tenant, record cache off".into(),
                value: pg.get_uncached.describe(),
                baseline: pg
                    .pgbench
                    .as_ref()
                    .map(|b| format!("pgbench -S: {:.0}/s", b.rate()))
                    .unwrap_or_else(|| "–".into()),
                ratio: pg
                    .pgbench
                    .as_ref()
                    .map(|b| format!("{:.1}%", pg.get_uncached.rate() / b.rate() * 100.0))
                    .unwrap_or_else(|| "–".into()),
                target: "–".into(),
                pass: None,
            });
            rows.push(Row {
                figure: "(diagnostic) record cache during the GET load".into(),
                value: format!("{} hits, {} misses", pg.cache.hits, pg.cache.misses),
                baseline: "–".into(),
                ratio: "–".into(),
                target: "–".into(),
                pass: None,
            });
            rows.push(Row {
                figure: "(diagnostic) HS256 token verification".into(),
                value: format!("{:.2} µs/request", pg.jwt_us),
                baseline: "–".into(),
                ratio: "–".into(),
                target: "–".into(),
                pass: None,
            });
            rows.push(ratio_row(
                "POST tenant (Idempotency-Key, audit, 1 tx)",
                &pg.post,
                &pg.raw,
                "raw sqlx tx",
                0.50,
            ));
        }
        Err(e) => {
            eprintln!("!!! POSTGRES SKIPPED: {e}");
            rows.push(Row {
                figure: "Postgres figures".into(),
                value: format!("skipped: {e}"),
                baseline: "–".into(),
                ratio: "–".into(),
                target: "–".into(),
                pass: None,
            });
        }
    }

    eprintln!("== 4. resident memory of `kubenova-manager serve`");
    let mem_row = |rows: &mut Vec<Row>, label: &str, out: Result<MemOutcome, BoxError>| match out {
        Ok(o) => {
            eprintln!(
                "  {label}: idle {:.1} MiB, under load max VmRSS {:.1} MiB, VmHWM {:.1} MiB; load {}",
                o.idle_rss as f64 / MIB,
                o.load_rss_max as f64 / MIB,
                o.load_hwm as f64 / MIB,
                o.load.describe()
            );
            Some(o)
        }
        Err(e) => {
            eprintln!("!!! memory run on {label} failed: {e}");
            rows.push(Row {
                figure: format!("RSS on {label}"),
                value: format!("failed: {e}"),
                baseline: "–".into(),
                ratio: "–".into(),
                target: "–".into(),
                pass: None,
            });
            None
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let sqlite_url = format!("sqlite://{}", dir.path().join("mem.db").display());
    let sq = mem_row(
        &mut rows,
        "SQLite",
        client_rt.block_on(memory_run(&sqlite_url, None, conns, dur)),
    );
    if let Some(o) = sq {
        rows.push(Row {
            figure: "RSS idle, SQLite (real binary)".into(),
            value: format!("{:.1} MiB", o.idle_rss as f64 / MIB),
            baseline: "–".into(),
            ratio: "–".into(),
            target: "< 30 MiB".into(),
            pass: Some((o.idle_rss as f64 / MIB) < 30.0),
        });
        rows.push(Row {
            figure: format!("RSS under GET load, SQLite, {conns} conns"),
            value: format!(
                "max VmRSS {:.1} MiB, VmHWM {:.1} MiB",
                o.load_rss_max as f64 / MIB,
                o.load_hwm as f64 / MIB
            ),
            baseline: format!(
                "idle {:.1} MiB; load {:.0}/s",
                o.idle_rss as f64 / MIB,
                o.load.rate()
            ),
            ratio: format!("{:.2}×", o.load_hwm as f64 / o.idle_rss as f64),
            target: "< 150 MiB".into(),
            pass: Some((o.load_hwm as f64 / MIB) < 150.0 && o.load.errors == 0),
        });
    }
    // The same on Postgres with a pool of 64, in a fresh schema.
    let pg_mem = client_rt.block_on(async {
        let opts = sqlx::postgres::PgConnectOptions::from_str(&url)?;
        let admin = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(opts)
            .await?;
        let schema = format!("kn_bench_mem_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await?;
        let sep = if url.contains('?') { '&' } else { '?' };
        let murl = format!("{url}{sep}options=-c%20search_path%3D{schema}");
        let out = memory_run(&murl, Some(64), conns, dur).await;
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&admin)
            .await?;
        admin.close().await;
        out
    });
    if let Some(o) = mem_row(&mut rows, "Postgres", pg_mem) {
        rows.push(Row {
            figure: format!("RSS under GET load, Postgres pool 64, {conns} conns"),
            value: format!(
                "max VmRSS {:.1} MiB, VmHWM {:.1} MiB",
                o.load_rss_max as f64 / MIB,
                o.load_hwm as f64 / MIB
            ),
            baseline: format!(
                "idle {:.1} MiB; load {:.0}/s",
                o.idle_rss as f64 / MIB,
                o.load.rate()
            ),
            ratio: format!("{:.2}×", o.load_hwm as f64 / o.idle_rss as f64),
            target: "< 150 MiB".into(),
            pass: Some((o.load_hwm as f64 / MIB) < 150.0 && o.load.errors == 0),
        });
    }
    drop(dir);

    println!();
    println!("| figure | KubeNova | baseline (same run) | ratio | target | result |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.figure,
            r.value,
            r.baseline,
            r.ratio,
            r.target,
            verdict(r.pass)
        );
    }
    println!();
    println!(
        "{conns} connections, {secs} s windows, total bench time {:.0} s",
        started.elapsed().as_secs_f64()
    );
    server_rt.shutdown_timeout(Duration::from_secs(1));
    client_rt.shutdown_timeout(Duration::from_secs(1));
}
