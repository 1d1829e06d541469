//! What tracing costs on the hot path: `GET /api/v1/clusters/{c}/tenants/{t}` (HS256 auth,
//! record cache hit on SQLite, so the request is as cheap as it gets and any per-request
//! cost shows) through the manager's router, in process, one request at a time on one
//! thread, under four subscribers, in alternating rounds of the same run:
//!
//! 1. no subscriber at all (context only);
//! 2. **baseline**: the logging the binaries installed before traces existed (JSON lines,
//!    `info`, one global filter), written to a sink;
//! 3. the subscriber the binaries install now, traces off (no `OTEL_*` endpoint);
//! 4. the same with traces on at 1% sampling (`parentbased_traceidratio`, 0.01), exported
//!    over OTLP/HTTP (batched) to a receiver in this process that accepts and drops them;
//! 5. the same with every request sampled (`parentbased_always_on`, the default).
//!
//! Targets: 3 ≥ 97% of 2's rate (traces off cost nothing measurable); 4 ≥ 95% of 3's (1%
//! sampling costs under 5%); 5 is reported (the price of exporting every request).
//!
//! Each measurement runs in a child process of its own (this benchmark re-executed with
//! `KUBENOVA_BENCH_VARIANT`), as each binary installs exactly one subscriber: the trace
//! propagator and the sampler are process-wide, so two traces-on subscribers in one
//! process would share the last one's sampling ratio, and traces-off variants would run
//! with propagation switched on.
//!
//! `cargo bench -p kubenova-manager --bench tracing` (`KUBENOVA_BENCH_REQUESTS`, default
//! 20,000 per round; 5 rounds; `KUBENOVA_BENCH_ONLY=none,baseline,off,sampled,on` runs only
//! the variants named, e.g. under a profiler). Under `cargo test` (no `--bench`) it runs a
//! few requests of each variant.
#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

/// The allocator of the `kubenova-manager` binary, so the in-process figures match it.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use http_body_util::BodyExt as _;
use hyper::{Method, Request, StatusCode, header};
use kubenova_manager::api::authz::Role;
use kubenova_manager::api::config::ServerConfig;
use kubenova_store::crypto::{Kek, Keyring};
use kubenova_store::{SqliteStore, Store};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt as _;

const SECRET: &str = "kubenova-bench-hs256-secret-0123456789abcdef";
/// A registered cluster's kubeconfig (shared fixture; its token is a stand-in secret).
const KUBECONFIG: &str = include_str!("../tests/fixtures/cluster.kubeconfig");

async fn call(
    app: &axum::Router,
    method: Method,
    path: &str,
    token: &str,
    body: Option<String>,
) -> (StatusCode, bytes::Bytes) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.map(Body::from).unwrap_or_else(Body::empty))
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

fn id(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["id"].as_str().unwrap().to_string()
}

/// An OTLP/HTTP endpoint that accepts every export and keeps nothing, served on a thread
/// of its own (as a collector runs elsewhere: receiving is not the manager's cost).
fn sink_receiver() -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = axum::Router::new().route(
                "/v1/traces",
                axum::routing::post(|_body: bytes::Bytes| async { Vec::<u8>::new() }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(format!("http://{}", listener.local_addr().unwrap()))
                .unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

/// The subscriber of the binaries before traces: `fmt().json()` with a global filter.
fn baseline_dispatch() -> tracing::Dispatch {
    tracing::Dispatch::new(
        tracing_subscriber::fmt()
            .json()
            .with_env_filter("info")
            .with_writer(std::io::sink)
            .with_timer(kubenova_telemetry::Rfc3339Utc)
            .finish(),
    )
}

/// The subscriber the binaries install now; traces on when `otlp` names an endpoint,
/// sampled at `ratio` (parent-based).
fn shipped_dispatch(
    otlp: Option<&str>,
    ratio: f64,
) -> (tracing::Dispatch, kubenova_telemetry::Telemetry) {
    let mut env = kubenova_telemetry::Environment::default();
    if let Some(url) = otlp {
        for (k, v) in [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", url.to_string()),
            (
                "OTEL_TRACES_SAMPLER",
                "parentbased_traceidratio".to_string(),
            ),
            ("OTEL_TRACES_SAMPLER_ARG", ratio.to_string()),
        ] {
            env.otel.insert(k.into(), v);
        }
    }
    kubenova_telemetry::build(
        &kubenova_telemetry::LogArgs::default(),
        "info",
        "kubenova-manager-bench",
        &env,
        std::io::sink,
    )
    .unwrap()
}

const VARIANT_VAR: &str = "KUBENOVA_BENCH_VARIANT";

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let per_round: usize = if full {
        std::env::var("KUBENOVA_BENCH_REQUESTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000)
    } else {
        200
    };
    if let Ok(name) = std::env::var(VARIANT_VAR) {
        let variant = Variant::ALL
            .into_iter()
            .find(|v| v.name() == name)
            .unwrap_or_else(|| panic!("{VARIANT_VAR}={name:?} names no variant"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let us = rt.block_on(measure(variant, per_round));
        println!("{us}");
        return;
    }
    let rounds = if full { 5 } else { 1 };
    compare(full, per_round, rounds);
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    None,
    Baseline,
    Off,
    OnSampled,
    On,
}

impl Variant {
    const ALL: [Variant; 5] = [
        Variant::None,
        Variant::Baseline,
        Variant::Off,
        Variant::OnSampled,
        Variant::On,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::None => "none",
            Variant::Baseline => "baseline",
            Variant::Off => "off",
            Variant::OnSampled => "sampled",
            Variant::On => "on",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Variant::None => "no subscriber",
            Variant::Baseline => "logging before traces (baseline)",
            Variant::Off => "as shipped, traces off",
            Variant::OnSampled => "traces on, 1% sampled (OTLP/HTTP)",
            Variant::On => "traces on, every request (OTLP/HTTP)",
        }
    }
}

/// One round of one variant, in this (child) process: µs per request.
async fn measure(variant: Variant, per_round: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let keyring = Keyring::new(vec![Kek::new("bench", &[7; 32]).unwrap()]).unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::connect(&url, keyring).await.unwrap());
    let config = ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        rate_limit_subject_rps: 0,
        rate_limit_ip_rps: 0,
        ..ServerConfig::default()
    };
    let state = kubenova_manager::test_state(store.clone(), config, SECRET.as_bytes());
    let token = state
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
    let app = kubenova_manager::api::router(state);
    let body = serde_json::json!({"name": "bench", "kubeconfig": KUBECONFIG}).to_string();
    let (s, b) = call(&app, Method::POST, "/api/v1/clusters", &token, Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let cluster = id(&b);
    let body = serde_json::json!({"name": "t1", "owners": ["alice@example.com"]}).to_string();
    let tenants = format!("/api/v1/clusters/{cluster}/tenants");
    let (s, b) = call(&app, Method::POST, &tenants, &token, Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let path = format!("{tenants}/{}", id(&b));

    let (dispatch, mut guard) = match variant {
        Variant::None => (tracing::Dispatch::none(), None),
        Variant::Baseline => (baseline_dispatch(), None),
        Variant::Off => {
            let (d, g) = shipped_dispatch(None, 1.0);
            assert!(g.traces.is_none(), "traces turned on without an endpoint");
            (d, Some(g))
        }
        Variant::OnSampled | Variant::On => {
            let ratio = if variant == Variant::On { 1.0 } else { 0.01 };
            let (d, g) = shipped_dispatch(Some(&sink_receiver()), ratio);
            assert!(g.traces.is_some(), "traces did not turn on");
            (d, Some(g))
        }
    };
    let _scope = tracing::dispatcher::set_default(&dispatch);
    for _ in 0..(per_round / 20).max(10) {
        let (s, _) = call(&app, Method::GET, &path, &token, None).await;
        assert_eq!(s, StatusCode::OK);
    }
    let started = Instant::now();
    for _ in 0..per_round {
        let (s, _) = call(&app, Method::GET, &path, &token, None).await;
        assert_eq!(s, StatusCode::OK);
    }
    let us = started.elapsed().as_secs_f64() * 1e6 / per_round as f64;
    if let Some(g) = guard.as_mut() {
        g.shutdown();
    }
    store.close().await;
    us
}

/// Runs every variant's rounds as child processes, in rotating order, and prints the table.
fn compare(full: bool, per_round: usize, rounds: usize) {
    let only = std::env::var("KUBENOVA_BENCH_ONLY").unwrap_or_default();
    let variants: Vec<Variant> = Variant::ALL
        .into_iter()
        .filter(|v| only.is_empty() || only.split(',').any(|o| o.trim() == v.name()))
        .collect();
    let exe = std::env::current_exe().unwrap();
    let mut all: Vec<(Variant, Vec<f64>)> = variants.iter().map(|v| (*v, Vec::new())).collect();
    eprintln!("GET one tenant through the router, {per_round} requests per round, {rounds} rounds");
    for round in 0..rounds {
        // Rotate the order each round so no variant always runs first.
        for k in 0..variants.len() {
            let v = variants[(k + round) % variants.len()];
            let mut cmd = std::process::Command::new(&exe);
            if full {
                cmd.arg("--bench");
            }
            let out = cmd
                .env(VARIANT_VAR, v.name())
                .env("KUBENOVA_BENCH_REQUESTS", per_round.to_string())
                .stderr(std::process::Stdio::inherit())
                .output()
                .unwrap();
            assert!(out.status.success(), "variant {} failed", v.name());
            let us: f64 = String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .and_then(|l| l.trim().parse().ok())
                .unwrap_or_else(|| panic!("variant {} printed no figure", v.name()));
            eprintln!("  round {round}: {:<42} {us:7.2} µs/request", v.label());
            all.iter_mut().find(|(x, _)| *x == v).unwrap().1.push(us);
        }
    }
    // Variants left out (`KUBENOVA_BENCH_ONLY`) read as NaN.
    let figures = |v: Variant| {
        let mut xs = all
            .iter()
            .find(|(x, _)| *x == v)
            .map(|a| a.1.clone())
            .unwrap_or_default();
        xs.sort_by(f64::total_cmp);
        xs
    };
    let get = |v: Variant| figures(v).first().copied().unwrap_or(f64::NAN);
    let median = |v: Variant| {
        let xs = figures(v);
        xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
    };
    println!();
    println!("| subscriber | best µs/request | median µs/request | rate vs baseline (best) |");
    println!("|---|---|---|---|");
    for &v in &variants {
        println!(
            "| {} | {:.2} | {:.2} | {:.1}% |",
            v.label(),
            get(v),
            median(v),
            100.0 * get(Variant::Baseline) / get(v)
        );
    }
    let off_ratio = get(Variant::Baseline) / get(Variant::Off);
    println!();
    println!(
        "traces off: {:.1}% of the baseline's rate (target ≥ 97%): {}",
        100.0 * off_ratio,
        if off_ratio >= 0.97 { "PASS" } else { "MISS" }
    );
    let sampled_ratio = get(Variant::Off) / get(Variant::OnSampled);
    println!(
        "traces on, 1% sampled: {:.1}% of the traces-off rate ({:+.2} µs per request; target ≥ 95%): {}",
        100.0 * sampled_ratio,
        get(Variant::OnSampled) - get(Variant::Off),
        if sampled_ratio >= 0.95 {
            "PASS"
        } else {
            "MISS"
        }
    );
    println!(
        "traces on, every request: {:.1}% of the traces-off rate ({:+.2} µs per request)",
        100.0 * get(Variant::Off) / get(Variant::On),
        get(Variant::On) - get(Variant::Off)
    );
}
