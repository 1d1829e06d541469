//! Kubeconfig issuance throughput: kubeconfigs issued per second through
//! the API next to bare ES256 signing (`KeySet::issue`) measured in the same run.
//!
//! Issuance goes through the full manager router in-process (`tower::ServiceExt::oneshot`,
//! no sockets): bearer-token authentication, rate-limit bookkeeping, the scope check, the
//! revoked-subject lookup, tenant/cluster reads, ES256 signing, kubeconfig building and
//! YAML serialization, and the credential row + audit event written in one transaction.
//! `KUBENOVA_BENCH_CONNS` (comma-separated, default `16,64,128,256`) tasks issue back to
//! back on a 2-worker runtime, one window per level.
//! The baseline signs the same claims with `KeySet::issue` on 2 threads (the same two
//! cores): one ES256 signature with the key parsed at load, i.e. bare ring ECDSA plus the
//! JWS encoding. Target: issuance ≥ 25% of the bare signing rate.
//!
//! Store: Postgres in a fresh schema (`KUBENOVA_BENCH_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`, pool of 16) when reachable, else SQLite;
//! `KUBENOVA_BENCH_STORE=sqlite` measures the embedded default even when Postgres is up.
//! Run: `cargo bench -p kubenova-manager --bench kubeconfigs`; `KUBENOVA_BENCH_SECS`
//! (default 8). Without `--bench` it runs 1-second windows as a smoke test.
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
use kubenova_api::model::AccessRole;
use kubenova_kubeconfig::{Claims, KeySet, TokenSpec};
use kubenova_manager::api::authz::Role;
use kubenova_manager::api::config::ServerConfig;
use kubenova_store::crypto::{Kek, Keyring};
use kubenova_store::{PgStore, Store, WriteOptions};
use serde_json::{Value, json};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tower::ServiceExt;

const CA: &str = include_str!("../../../kubenova-kubeconfig/tests/fixtures/proxy-ca.pem");

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

async fn open_store(dir: &std::path::Path) -> (Arc<dyn Store>, String, Option<(String, String)>) {
    let keys = Keyring::new(vec![Kek::new("k1", &[5u8; 32]).unwrap()]).unwrap();
    let url = std::env::var("KUBENOVA_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let sqlite_only = std::env::var("KUBENOVA_BENCH_STORE").as_deref() == Ok("sqlite");
    let admin = if sqlite_only {
        None
    } else {
        sqlx::PgPool::connect(&url).await.ok()
    };
    if let Some(admin) = admin {
        let schema = format!("kn_bench_kc_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let opts = sqlx::postgres::PgConnectOptions::from_str(&url)
            .unwrap()
            .options([("search_path", schema.as_str())]);
        let s = PgStore::connect_with(opts, 16, keys).await.unwrap();
        return (
            Arc::new(s),
            "Postgres (pool 16)".into(),
            Some((url, schema)),
        );
    }
    let s = kubenova_store::connect(&format!("sqlite://{}", dir.join("kn.db").display()), keys)
        .await
        .unwrap();
    (
        s,
        "SQLite (embedded default, synchronous=FULL)".into(),
        None,
    )
}

/// Bare signing rate (per second) and CPU per signature (µs, measured, so other load on
/// the machine does not inflate it).
fn bare_signing(secs: Duration, threads: usize) -> (f64, f64) {
    let keys = Arc::new(KeySet::generate(time::OffsetDateTime::now_utc()).unwrap());
    let spec = TokenSpec {
        issuer: "https://kubenova.example.com".into(),
        audience: "kubenova:cluster:bench".into(),
        subject: "alice@example.com".into(),
        tenant: "acme".into(),
        project: None,
        role: AccessRole::Developer,
        ttl: time::Duration::hours(1),
    };
    let claims = Arc::new(
        Claims::new(
            &spec,
            time::OffsetDateTime::now_utc(),
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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let secs = Duration::from_secs(if full {
        std::env::var("KUBENOVA_BENCH_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(8)
    } else {
        1
    });
    // Concurrency levels, one window each (e.g. `KUBENOVA_BENCH_CONNS=16,64`).
    let levels: Vec<usize> = std::env::var("KUBENOVA_BENCH_CONNS")
        .unwrap_or_else(|_| "16,64,128,256".into())
        .split(',')
        .map(|v| {
            v.trim()
                .parse()
                .expect("KUBENOVA_BENCH_CONNS: comma-separated numbers")
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (runs, backend) = rt.block_on(async {
        let (store, backend, pg) = open_store(dir.path()).await;
        let cfg = ServerConfig {
            external_url: Some("https://kubenova.example.com".into()),
            rate_limit_subject_rps: 0,
            rate_limit_ip_rps: 0,
            ..ServerConfig::default()
        };
        let st = kubenova_manager::test_state(store, cfg, b"kubeconfig-bench-secret-0123456789abcdef");
        // As the real binary on Postgres: the listener that keeps the record cache correct
        // and enables it once it listens.
        if let Some((url, _)) = &pg {
            kubenova_manager::listen_postgres(&st, url);
            let cache = st.store.row_cache().unwrap();
            let waited = Instant::now();
            while !cache.is_enabled() {
                assert!(waited.elapsed() < Duration::from_secs(10), "the record cache was never enabled");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let app = kubenova_manager::api::router(st.clone());
        let admin = st.auth.mint("admin", &[Role::Admin], &[], &[], Duration::from_secs(3600)).unwrap().token;
        let kc = "apiVersion: v1\nkind: Config\nclusters:\n- name: p\n  cluster:\n    server: https://10.0.0.1:6443\n    certificate-authority-data: TFMwdExTMUNSVWRKVGc9PQ==\ncontexts:\n- name: p\n  context:\n    cluster: p\n    user: a\ncurrent-context: p\nusers:\n- name: a\n  user:\n    token: x\n";
        let (s, c) = call(&app, Method::POST, "/api/v1/clusters", &admin, Some(json!({"name": "bench", "kubeconfig": kc}))).await;
        assert_eq!(s, StatusCode::CREATED);
        let c: Value = serde_json::from_slice(&c).unwrap();
        let cid: kubenova_api::ids::ClusterId = c["id"].as_str().unwrap().parse().unwrap();
        let mut rec = st.store.get_cluster(cid).await.unwrap();
        let v = rec.version;
        rec.version += 1;
        use base64::Engine as _;
        rec.proxy = Some(serde_json::from_value(json!({"url": "https://capsule-proxy.example.com:9001",
            "caData": base64::engine::general_purpose::STANDARD.encode(CA)})).unwrap());
        st.store.update_cluster(&rec, v, &WriteOptions::default()).await.unwrap();
        let (s, t) = call(&app, Method::POST, &format!("/api/v1/clusters/{cid}/tenants"), &admin, Some(json!({"name": "acme"}))).await;
        assert_eq!(s, StatusCode::CREATED);
        let t: Value = serde_json::from_slice(&t).unwrap();
        let tid: kubenova_api::ids::TenantId = t["id"].as_str().unwrap().parse().unwrap();
        let owner = st.auth.mint("alice@example.com", &[Role::TenantOwner], &[tid], &[], Duration::from_secs(3600)).unwrap().token;
        let uri = format!("/api/v1/tenants/{tid}/kubeconfig?role=developer");
        // Warm up (loads the signing keys, fills the pool).
        for _ in 0..50 {
            assert_eq!(call(&app, Method::GET, &uri, &owner, None).await.0, StatusCode::OK);
        }
        let mut runs = Vec::new();
        let mut issued = 0u64;
        for &conns in &levels {
            let deadline = Instant::now() + secs;
            let start = Instant::now();
            let (cpu0, pg0) = (cpu_seconds(None), cpu_seconds(Some(&["postgres"])));
            let tasks: Vec<_> = (0..conns)
                .map(|_| {
                    let (app, uri, owner) = (app.clone(), uri.clone(), owner.clone());
                    tokio::spawn(async move {
                        let mut lat = Vec::new();
                        let mut errors = 0u64;
                        while Instant::now() < deadline {
                            let t0 = Instant::now();
                            let (s, _) = call(&app, Method::GET, &uri, &owner, None).await;
                            if s == StatusCode::OK {
                                lat.push(t0.elapsed());
                            } else {
                                errors += 1;
                            }
                        }
                        (lat, errors)
                    })
                })
                .collect();
            let mut all = Vec::new();
            let mut errors = 0;
            for t in tasks {
                let (l, e) = t.await.unwrap();
                all.extend(l);
                errors += e;
            }
            let elapsed = start.elapsed().as_secs_f64();
            let (cpu, pg_cpu) = (cpu_seconds(None) - cpu0, cpu_seconds(Some(&["postgres"])) - pg0);
            all.sort();
            let ok = all.len() as u64;
            issued += ok;
            let per = |secs: f64| secs * 1e6 / ok.max(1) as f64;
            runs.push((conns, ok as f64 / elapsed, percentile(&all, 0.5), percentile(&all, 0.99), ok, errors, per(cpu), per(pg_cpu)));
        }
        // Every issuance left a credential row.
        let mut listed = 0u64;
        let mut cursor = None;
        loop {
            let page = st.store.list_credentials(tid, &kubenova_store::CredentialQuery {
                subject: None,
                page: kubenova_store::ListParams { limit: Some(500), cursor: cursor.take() },
            }).await.unwrap();
            listed += page.items.len() as u64;
            match page.next_cursor { Some(c) => cursor = Some(c), None => break }
        }
        assert_eq!(listed, issued + 50, "credential rows");
        if let Some((url, schema)) = pg {
            let admin = sqlx::PgPool::connect(&url).await.unwrap();
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&admin).await.unwrap();
        }
        (runs, backend)
    });
    drop(rt);
    let (bare, sign_us) = bare_signing(secs, 2);
    println!(
        "kubeconfig issuance — {backend}, {}s windows",
        secs.as_secs()
    );
    println!("| figure | value | baseline | ratio | target |");
    println!("|---|---|---|---|---|");
    for &(conns, _, _, _, _, _, cpu_us, pg_us) in &runs {
        println!(
            "| CPU per issuance, {conns} concurrent | manager process {cpu_us:.0} µs, Postgres server {pg_us:.0} µs | one bare signature: {sign_us:.1} µs | manager alone: {:.1}% | (the manager's rate if the database had cores of its own) |",
            sign_us / cpu_us * 100.0
        );
    }
    for (conns, api_rate, p50, p99, ok, errors, _, _) in runs {
        let ratio = api_rate / bare;
        println!(
            "| kubeconfigs issued/s through the API (GET …/kubeconfig?role=developer), {conns} concurrent | {api_rate:.0} /s (p50 {:.2} ms, p99 {:.2} ms, {ok} ok, {errors} errors) | bare ES256 `KeySet::issue` on 2 threads: {bare:.0} /s | {:.1}% | ≥ 25% {} |",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            ratio * 100.0,
            if ratio >= 0.25 { "met" } else { "NOT met" }
        );
    }
}
