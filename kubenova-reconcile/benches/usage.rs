//! CPU and memory of one usage sample ([`kubenova_reconcile::usage::sample`]) on a large
//! cluster: 1,000 tenants with one project each, 10 pods per tenant (10,000 pods, two
//! containers each), a bound PVC, a LoadBalancer Service and a ResourceQuota per project
//! namespace, and one KubeVela Application per project. Only the aggregation is measured:
//! listing the objects from the API server (the collector's other cost) is not.
//!
//! Run: `cargo bench -p kubenova-reconcile --bench usage` (`KUBENOVA_BENCH_USAGE_PODS`
//! changes the number of pods, 10 per tenant). Without `--bench` it is a smoke run.
#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

use std::time::{Duration, Instant};

use kubenova_reconcile::usage::{HourAccumulator, Inventory, sample};
use serde_json::json;
use uuid::Uuid;

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn inventory(tenants: usize) -> Inventory {
    let mut inv = Inventory::default();
    for t in 0..tenants {
        let tenant = format!("t{t}");
        let ns = format!("t{t}-web-{t:08x}");
        inv.tenants.push(obj(json!({"metadata": {"name": tenant, "labels": {"kubenova.io/id": Uuid::new_v4().to_string()}}, "spec": {"plan": "gold"}})));
        inv.projects.push(obj(json!({"metadata": {"name": "web", "namespace": format!("{tenant}-owner"), "labels": {"kubenova.io/id": Uuid::new_v4().to_string()}}, "spec": {"tenant": tenant}})));
        for (name, role) in [
            (format!("{tenant}-owner"), "owner"),
            (format!("{tenant}-apps"), "apps"),
            (ns.clone(), "project"),
        ] {
            inv.namespaces
                .push(obj(json!({"metadata": {"name": name, "labels": {
                "kubenova.io/tenant": tenant, "capsule.clastix.io/tenant": tenant,
                "kubenova.io/namespace-role": role, "kubenova.io/project": "web"}}})));
        }
        for p in 0..10 {
            inv.pods.push(obj(json!({"metadata": {"name": format!("web-{p}"), "namespace": ns},
                "spec": {"containers": [
                    {"name": "a", "image": "x", "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "500m", "memory": "512Mi"}}},
                    {"name": "b", "image": "x", "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}}]},
                "status": {"phase": "Running"}})));
        }
        inv.pvcs.push(obj(json!({"metadata": {"name": "data", "namespace": ns}, "spec": {"storageClassName": "fast"},
            "status": {"phase": "Bound", "capacity": {"storage": "10Gi"}}})));
        inv.services.push(obj(
            json!({"metadata": {"name": "lb", "namespace": ns}, "spec": {"type": "LoadBalancer"}}),
        ));
        inv.quotas.push(obj(json!({"metadata": {"name": "q", "namespace": ns},
            "status": {"hard": {"pods": "20", "requests.cpu": "4"}, "used": {"pods": "10", "requests.cpu": "3"}}})));
        inv.applications
            .push(obj(json!({"name": "site", "namespace": ns})));
    }
    inv
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let pods: usize = if full {
        std::env::var("KUBENOVA_BENCH_USAGE_PODS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000)
    } else {
        100
    };
    let rss_before = peak_rss_kib();
    let inv = inventory(pods / 10);
    let rss_inventory = peak_rss_kib();
    let rounds = if full { 30 } else { 3 };
    let mut times: Vec<Duration> = Vec::with_capacity(rounds);
    let hour = time::macros::datetime!(2026-01-01 10:00 UTC);
    let mut acc = HourAccumulator::new(hour);
    for i in 0..rounds {
        let t = Instant::now();
        let s = sample(&inv);
        acc.add(&s, hour + time::Duration::minutes(i as i64));
        times.push(t.elapsed());
        assert_eq!(s.scopes.len(), pods / 10 * 2);
    }
    let records = acc.records(
        kubenova_api::ids::ClusterId::new(),
        hour + time::Duration::HOUR,
    );
    assert_eq!(records.len(), pods / 10 * 2);
    times.sort();
    println!();
    println!(
        "| pods | objects | sample p50 | sample max | peak RSS before → with inventory → after sampling |"
    );
    println!("|---|---|---|---|---|");
    let objects = inv.pods.len()
        + inv.namespaces.len()
        + inv.pvcs.len()
        + inv.services.len()
        + inv.quotas.len()
        + inv.applications.len()
        + inv.tenants.len()
        + inv.projects.len();
    println!(
        "| {} | {} | {:.1} ms | {:.1} ms | {} → {} → {} MiB |",
        inv.pods.len(),
        objects,
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
        rss_before.unwrap_or(0) / 1024,
        rss_inventory.unwrap_or(0) / 1024,
        peak_rss_kib().unwrap_or(0) / 1024,
    );
    if !full {
        println!("(smoke run: {pods} pods; figures meaningless)");
    }
}
