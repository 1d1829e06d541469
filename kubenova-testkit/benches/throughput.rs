//! Throughput of the emulator through the real `kube::Client` (HTTPS), compared with the same
//! number of requests to a bare hyper echo server behind the same TLS stack, plus the
//! "100 watchers on 10k objects" memory scenario. Prints figures; `harness = false`.
//!
//! Run: `cargo bench -p kubenova-testkit --bench throughput`
#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kubenova_testkit::TestCluster;
use serde_json::json;

const N: usize = 2_000;

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"bench": "yes"}}, "data": {"k": "v"}}),
    )
    .unwrap()
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn rate(n: usize, d: Duration) -> String {
    format!(
        "{:>8.0}/s ({:>7.1} µs each)",
        n as f64 / d.as_secs_f64(),
        d.as_secs_f64() * 1e6 / n as f64
    )
}

async fn echo_server() -> (String, String) {
    let tls = kubenova_testkit::server::generate_tls().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        use http_body_util::BodyExt as _;
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let out = if body.is_empty() {
                            hyper::body::Bytes::from_static(b"{}")
                        } else {
                            body
                        };
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .body(http_body_util::Full::new(out))
                                .unwrap(),
                        )
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (format!("https://127.0.0.1:{port}"), tls.ca_pem)
}

fn echo_client(url: &str, ca_pem: &str) -> kube::Client {
    use base64::Engine as _;
    let body: String = ca_pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    let mut config = kube::Config::new(url.parse().unwrap());
    config.root_cert = Some(vec![der]);
    kube::Client::try_from(config).unwrap()
}

async fn throughput() {
    let cluster = TestCluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let (echo_url, echo_ca) = echo_server().await;
    let echo = echo_client(&echo_url, &echo_ca);
    let payload = serde_json::to_vec(&cm("x")).unwrap();

    println!("\n## kubenova-testkit throughput (sequential, one client, HTTPS, N = {N})");
    let t = Instant::now();
    for i in 0..N {
        cms.create(&PostParams::default(), &cm(&format!("cm-{i}")))
            .await
            .unwrap();
    }
    let create = t.elapsed();
    let t = Instant::now();
    for _ in 0..N {
        let req = http::Request::post("/echo")
            .header("content-type", "application/json")
            .body(payload.clone())
            .unwrap();
        let _: serde_json::Value = echo.request(req).await.unwrap();
    }
    let echo_post = t.elapsed();
    println!(
        "create            {}   | echo POST {}",
        rate(N, create),
        rate(N, echo_post)
    );

    let t = Instant::now();
    for i in 0..N {
        cms.get(&format!("cm-{i}")).await.unwrap();
    }
    let get = t.elapsed();
    let t = Instant::now();
    for _ in 0..N {
        let req = http::Request::get("/echo").body(vec![]).unwrap();
        let _: serde_json::Value = echo.request(req).await.unwrap();
    }
    let echo_get = t.elapsed();
    println!(
        "get               {}   | echo GET  {}",
        rate(N, get),
        rate(N, echo_get)
    );

    let lists = 20;
    let t = Instant::now();
    for _ in 0..lists {
        let l = cms
            .list(&ListParams::default().labels("bench=yes"))
            .await
            .unwrap();
        assert_eq!(l.items.len(), N);
    }
    let list = t.elapsed();
    println!(
        "list ({N} items)  {}   = {:.0} objects/s",
        rate(lists, list),
        (lists * N) as f64 / list.as_secs_f64()
    );

    let rv = cms
        .list(&ListParams::default().limit(1))
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = cms
        .watch(&WatchParams::default().disable_bookmarks(), &rv)
        .await
        .unwrap()
        .boxed();
    let writer = {
        let cms = cms.clone();
        tokio::spawn(async move {
            for i in 0..N {
                cms.create(&PostParams::default(), &cm(&format!("w-{i}")))
                    .await
                    .unwrap();
            }
        })
    };
    let t = Instant::now();
    let mut seen = 0;
    while seen < N {
        if let WatchEvent::Added(_) = stream.try_next().await.unwrap().unwrap() {
            seen += 1;
        }
    }
    let watch = t.elapsed();
    writer.await.unwrap();
    println!(
        "watch (create→event delivered, writer and watcher concurrent) {}",
        rate(N, watch)
    );
    cluster.shutdown().await;
}

async fn watchers_memory() {
    let objects = 10_000;
    let watchers = 100;
    let updates = 1_000;
    let before = rss_mib();
    let cluster = TestCluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    // Let the background compilation of the built-in JSON-schema validators finish.
    cms.create(&PostParams::default(), &cm("warm"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = rss_mib();
    let t = Instant::now();
    // Load the store directly (same code path as the HTTP handlers, without HTTP cost).
    let store = cluster.store().clone();
    let cm_type = store.resolve("", "v1", "configmaps").unwrap();
    let opts = kubenova_testkit::store::WriteOpts::manager("bench");
    for i in 0..objects {
        let mut v = serde_json::to_value(cm(&format!("obj-{i}"))).unwrap();
        v["data"] = json!({"payload": "x".repeat(256)});
        store.create(&cm_type, Some("default"), v, &opts).unwrap();
    }
    let loaded = rss_mib();
    println!("## 100 watchers on 10k objects (RSS of the whole process: server + client)");
    println!(
        "RSS before start {before:.1} MiB; idle cluster incl. compiled schema validators {started:.1} MiB"
    );
    println!(
        "load {objects} objects (256 B payload each): {:.2}s, RSS {started:.1} → {loaded:.1} MiB ({:.1} KiB/object incl. event history)",
        t.elapsed().as_secs_f64(),
        (loaded - started) * 1024.0 / objects as f64
    );
    let rv = cms
        .list(&ListParams::default().limit(1))
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        let cms = cms.clone();
        let rv = rv.clone();
        let received = received.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = cms
                .watch(&WatchParams::default().disable_bookmarks(), &rv)
                .await
                .unwrap()
                .boxed();
            let mut n = 0;
            while n < updates {
                match s.try_next().await {
                    Ok(Some(WatchEvent::Modified(_))) => {
                        n += 1;
                        received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let watching = rss_mib();
    let t = Instant::now();
    for i in 0..updates {
        let name = format!("obj-{i}");
        let mut v = store.get(&cm_type, Some("default"), &name).unwrap();
        v["data"]["payload"] = json!("y".repeat(256));
        store
            .replace(&cm_type, Some("default"), &name, v, &opts, "")
            .unwrap();
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(120), t).await;
    }
    let elapsed = t.elapsed();
    let total = received.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "{watchers} watchers open: RSS {:.1} MiB; {updates} updates fanned out to {total} deliveries in {:.2}s ({:.0} deliveries/s); RSS after {:.1} MiB",
        watching,
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        rss_mib()
    );
    cluster.shutdown().await;
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Memory first, so its RSS baseline is not inflated by the throughput run.
        watchers_memory().await;
        throughput().await;
    });
}
