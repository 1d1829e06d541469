//! One whole usage collection, as the operator's usage loop performs it, against an
//! emulated cluster of 10,000 pods: the paged lists of
//! [`kubenova_reconcile::agent::collect_inventory`] (namespaces, NovaTenants,
//! NovaProjects, pods, PVCs, Services, ResourceQuotas, KubeVela Applications), the
//! [`sample`] and its addition to the hour's integral, the inventory dropped after it.
//! The operator lists at every sample (it keeps no watch cache of these kinds), so
//! every collection is a cold one and there is no separate steady state.
//!
//! Baseline in the same run, interleaved round by round: a bare `Api::<Pod>::list` of
//! the same pods in one request, the floor any collector pays.
//!
//! The cluster (1,000 tenants by default) is the testkit in a **separate process** (this
//! bench binary re-executed in server mode), so the figures separate the collector's CPU
//! (this process: `/proc/self/stat` utime + stime) from the API server's (the child's),
//! and the collector's RSS (`VmHWM` of this process, reset through `/proc/self/clear_refs`
//! before each measured run) is its own. Per tenant: the owner, apps and one project
//! namespace as `translate_tenant`/`translate_project` label them, the NovaTenant and
//! NovaProject with manager ids, 10 running pods of two containers with requests and
//! limits (the fields a scheduled, running pod carries: node, tolerations, token volume,
//! conditions, container statuses), a bound 10 GiB PVC, a LoadBalancer Service, the
//! project ResourceQuota with its status and a KubeVela Application.
//!
//! Run: `cargo bench -p kubenova-operator --bench usage` (`KUBENOVA_BENCH_USAGE_PODS`,
//! default 10000, 10 per tenant; `KUBENOVA_BENCH_USAGE_ROUNDS`, default 10). Without
//! `--bench` it is a smoke run on 100 pods.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs
)]

/// The allocator of the `kubenova-operator` binary, so the RSS figures match it.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::future::Future;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams};
use kubenova_api::agent::LABEL_ID;
use kubenova_api::catalog::Catalog;
use kubenova_api::crd::{NovaProject, NovaTenant};
use kubenova_reconcile::agent::collect_inventory;
use kubenova_reconcile::usage::{HourAccumulator, sample};
use kubenova_reconcile::{
    project_namespace, tenant_pod_security, translate_project, translate_tenant,
};
use kubenova_testkit::TestCluster;
use kubenova_testkit::registry::ResourceType;
use kubenova_testkit::store::{Store, WriteOpts};
use serde_json::{Value, json};
use uuid::Uuid;

/// Set in the child: the kubeconfig path to write (server mode).
const SERVE_ENV: &str = "KUBENOVA_BENCH_USAGE_SERVE";
/// Set in the child: the number of tenants to create.
const TENANTS_ENV: &str = "KUBENOVA_BENCH_USAGE_TENANTS";
const PODS_PER_TENANT: usize = 10;

fn main() {
    if let Ok(path) = std::env::var(SERVE_ENV) {
        let tenants = std::env::var(TENANTS_ENV).unwrap().parse().unwrap();
        serve(Path::new(&path), tenants);
        return;
    }
    let full = std::env::args().any(|a| a == "--bench");
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (pods, rounds) = if full {
        (
            env("KUBENOVA_BENCH_USAGE_PODS", 10_000),
            env("KUBENOVA_BENCH_USAGE_ROUNDS", 10).max(1),
        )
    } else {
        (100, 2)
    };
    let tenants = (pods / PODS_PER_TENANT).max(1);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");

    let started = Instant::now();
    let mut server = Server(
        Command::new(std::env::current_exe().unwrap())
            .env(SERVE_ENV, &kubeconfig)
            .env(TENANTS_ENV, tenants.to_string())
            .env("KUBENOVA_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "the server process did not start");
    eprintln!(
        "cluster of {} pods ({tenants} tenants) created in {:.1} s",
        tenants * PODS_PER_TENANT,
        started.elapsed().as_secs_f64()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench(&kubeconfig, server.0.id(), tenants, rounds));
    if !full {
        println!("(smoke run: {pods} pods; figures meaningless)");
    }
}

/// The server process; killed when the bench ends or panics.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one measured run cost.
#[derive(Debug, Clone, Copy)]
struct Cost {
    wall: Duration,
    /// CPU seconds of this process (the collector).
    client_cpu: f64,
    /// CPU seconds of the API server process.
    server_cpu: f64,
    /// Peak RSS of this process during the run, KiB.
    peak_rss_kib: u64,
}

/// Clock ticks per second of `/proc/<pid>/stat`.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of `pid` (`self` for this process), in ticks.
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name in parentheses: state is the 3rd field, utime the 14th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn status_kib(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = text.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Resets `VmHWM` to the current RSS (Linux ≥ 4.0).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

async fn measure<T>(server: &str, tick: f64, f: impl Future<Output = T>) -> (T, Cost) {
    reset_peak_rss();
    let (c0, s0) = (cpu_ticks("self"), cpu_ticks(server));
    let t = Instant::now();
    let out = f.await;
    let wall = t.elapsed();
    let (c1, s1) = (cpu_ticks("self"), cpu_ticks(server));
    let cost = Cost {
        wall,
        client_cpu: (c1 - c0) as f64 / tick,
        server_cpu: (s1 - s0) as f64 / tick,
        peak_rss_kib: status_kib("VmHWM:"),
    };
    (out, cost)
}

/// The bare list: every pod in one request, deserialized, counted and dropped.
async fn bare_list(pods: &Api<Pod>) -> usize {
    pods.list(&ListParams::default()).await.unwrap().items.len()
}

/// What the operator's usage loop does per sample: list, sample, integrate, drop.
/// Returns (scopes, pods, time in the lists, time in the sample).
async fn collection(
    client: &kube::Client,
    acc: &mut HourAccumulator,
    minute: i64,
) -> (usize, usize, Duration, Duration) {
    let t = Instant::now();
    let inv = collect_inventory(client).await.unwrap();
    let lists = t.elapsed();
    let t = Instant::now();
    let s = sample(&inv);
    acc.add(&s, acc.hour() + time::Duration::seconds(minute));
    let pods = inv.pods.len();
    drop(inv);
    (s.scopes.len(), pods, lists, t.elapsed())
}

async fn bench(kubeconfig: &Path, server_pid: u32, tenants: usize, rounds: usize) {
    let server = server_pid.to_string();
    let tick = clock_ticks();
    let client = kubenova_operator::client(Some(kubeconfig)).await.unwrap();
    let pods_api: Api<Pod> = Api::all(client.clone());
    // Connection and TLS set up outside the measured runs, as in a long-running operator.
    Api::<Namespace>::all(client.clone())
        .list(&ListParams::default().limit(1))
        .await
        .unwrap();
    let rest_kib = status_kib("VmRSS:");
    let hour = time::macros::datetime!(2026-01-01 10:00 UTC);
    let mut acc = HourAccumulator::new(hour);
    let pods = tenants * PODS_PER_TENANT;

    // First runs: the collection in a fresh process, as in an operator whose memory no
    // larger list has grown; its peak RSS is the figure. The allocator keeps freed pages
    // for a while, so later peaks include what an earlier run left.
    let (r, first_coll) = measure(&server, tick, collection(&client, &mut acc, 0)).await;
    assert_eq!((r.0, r.1), (tenants * 2, pods));
    let (n, first_bare) = measure(&server, tick, bare_list(&pods_api)).await;
    assert_eq!(n, pods);
    let listed_bytes = serde_json::to_vec(&pods_api.list(&ListParams::default()).await.unwrap())
        .unwrap()
        .len();

    let mut bare = Vec::with_capacity(rounds);
    let mut coll = Vec::with_capacity(rounds);
    let mut split = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let (n, c) = measure(&server, tick, bare_list(&pods_api)).await;
        assert_eq!(n, pods);
        bare.push(c);
        let minute = i64::try_from(i + 1).unwrap();
        let (r, c) = measure(&server, tick, collection(&client, &mut acc, minute)).await;
        assert_eq!((r.0, r.1), (tenants * 2, pods));
        coll.push(c);
        split.push((r.2, r.3));
    }
    // The integral is right: every tenant runs 10 pods of 250m + 50m requests.
    let records = acc.records(kubenova_api::ids::ClusterId::new(), acc.end());
    assert_eq!(records.len(), tenants * 2);
    assert!(
        records
            .iter()
            .all(|r| r.cpu_millicores == 3000 && r.pods == 10 && r.load_balancers == 1)
    );
    let after_kib = status_kib("VmRSS:");

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let p50 = |v: &mut Vec<Duration>| {
        v.sort();
        (ms(v[v.len() / 2]), ms(v[v.len() - 1]))
    };
    let stats = |runs: &[Cost]| {
        let n = runs.len() as f64;
        let mut walls: Vec<Duration> = runs.iter().map(|c| c.wall).collect();
        let (p50, max) = p50(&mut walls);
        (
            p50,
            max,
            runs.iter().map(|c| c.client_cpu).sum::<f64>() / n * 1e3,
            runs.iter().map(|c| c.server_cpu).sum::<f64>() / n * 1e3,
            runs.iter().map(|c| c.peak_rss_kib).max().unwrap_or(0) / 1024,
        )
    };
    let b = stats(&bare);
    let c = stats(&coll);
    let (b_first, c_first) = (
        first_bare.peak_rss_kib / 1024,
        first_coll.peak_rss_kib / 1024,
    );
    let objects = tenants * (3 + 2 + PODS_PER_TENANT + 4);
    println!();
    println!(
        "{pods} pods, {objects} listed objects; pod list {:.1} MiB as JSON ({} B per pod); {rounds} rounds",
        listed_bytes as f64 / (1 << 20) as f64,
        listed_bytes / pods
    );
    println!();
    println!(
        "| run | wall p50 | wall max | collector CPU / run | API server CPU / run | collector peak RSS: first run (max of the rounds) |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| bare `Api::<Pod>::list` ({pods} pods, one request) | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {b_first} ({}) MiB |",
        b.0, b.1, b.2, b.3, b.4
    );
    println!(
        "| whole collection (8 paged lists, sample, integral) | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {c_first} ({}) MiB |",
        c.0, c.1, c.2, c.3, c.4
    );
    println!(
        "| collection ÷ bare list | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
        c.0 / b.0,
        c.1 / b.1,
        c.2 / b.2,
        c.3 / b.3,
        c_first as f64 / b_first.max(1) as f64
    );
    println!();
    let mut lists: Vec<Duration> = split.iter().map(|s| s.0).collect();
    let mut samples: Vec<Duration> = split.iter().map(|s| s.1).collect();
    println!(
        "collection wall p50: lists {:.0} ms, sample + integral {:.0} ms",
        p50(&mut lists).0,
        p50(&mut samples).0
    );
    println!(
        "first runs (collection in a fresh process, then the bare list): collection {:.0} ms wall, {:.0} ms CPU; bare list {:.0} ms wall, {:.0} ms CPU",
        ms(first_coll.wall),
        first_coll.client_cpu * 1e3,
        ms(first_bare.wall),
        first_bare.client_cpu * 1e3,
    );
    println!(
        "collector RSS: {} MiB at rest (client connected) → {} MiB after the last collection",
        rest_kib / 1024,
        after_kib / 1024
    );
}

/// Server mode: an emulated cluster filled with `tenants` tenants; serves until stdin closes.
fn serve(kubeconfig: &Path, tenants: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cluster = TestCluster::builder()
            .with_upstream_crds(true)
            .start()
            .await
            .unwrap();
        for crd in kubenova_reconcile::crds::crd_files().unwrap() {
            cluster.register_crd_yaml(&crd.1).unwrap();
        }
        populate(cluster.store(), tenants);
        let tmp = PathBuf::from(format!("{}.tmp", kubeconfig.display()));
        std::fs::write(&tmp, cluster.kubeconfig_yaml()).unwrap();
        std::fs::rename(&tmp, kubeconfig).unwrap();
        let mut out = std::io::stdout();
        writeln!(out, "ready").unwrap();
        out.flush().unwrap();
        // Until the bench closes our stdin (or dies).
        tokio::task::spawn_blocking(|| {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
        })
        .await
        .unwrap();
        cluster.shutdown().await;
    });
}

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

/// A running pod as the API server returns it once scheduled and started.
fn pod(ns: &str, tenant: usize, p: usize) -> Value {
    let node = tenant % 100;
    let started = "2026-12-07T10:00:00Z";
    let ip = format!("10.{}.{}.{}", 100 + tenant / 256, tenant % 256, p + 2);
    let container = |name: &str, resources: Value| {
        json!({
            "name": name, "image": format!("registry.example.com/{name}:1.0"),
            "imagePullPolicy": "IfNotPresent",
            "ports": [{"containerPort": 8080, "protocol": "TCP"}],
            "resources": resources,
            "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
            "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
        })
    };
    let status = |name: &str| {
        json!({
            "name": name, "image": format!("registry.example.com/{name}:1.0"),
            "imageID": format!("registry.example.com/{name}@sha256:{}", "ab".repeat(32)),
            "containerID": format!("containerd://{}", "cd".repeat(32)),
            "ready": true, "restartCount": 0, "started": true,
            "state": {"running": {"startedAt": started}},
        })
    };
    let condition = |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": started});
    let conditions = [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ]
    .map(condition);
    json!({
        "metadata": {
            "name": format!("web-7c9f8d6b5-{p:05}"), "namespace": ns,
            "generateName": "web-7c9f8d6b5-",
            "labels": {"app.kubernetes.io/name": "web", "pod-template-hash": "7c9f8d6b5"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7c9f8d6b5",
                "uid": Uuid::new_v4().to_string(), "controller": true, "blockOwnerDeletion": true}],
        },
        "spec": {
            "containers": [
                container("a", json!({"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "500m", "memory": "512Mi"}})),
                container("b", json!({"requests": {"cpu": "50m", "memory": "64Mi"}})),
            ],
            "dnsPolicy": "ClusterFirst", "enableServiceLinks": true,
            "nodeName": format!("node-{node}"), "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0, "restartPolicy": "Always", "schedulerName": "default-scheduler",
            "securityContext": {}, "serviceAccount": "default", "serviceAccountName": "default",
            "terminationGracePeriodSeconds": 30,
            "tolerations": [
                {"effect": "NoExecute", "key": "node.kubernetes.io/not-ready", "operator": "Exists", "tolerationSeconds": 300},
                {"effect": "NoExecute", "key": "node.kubernetes.io/unreachable", "operator": "Exists", "tolerationSeconds": 300},
            ],
            "volumes": [{"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}, "path": "namespace"}]}},
            ]}}],
        },
        "status": {
            "phase": "Running",
            "conditions": conditions,
            "hostIP": format!("10.0.0.{node}"), "hostIPs": [{"ip": format!("10.0.0.{node}")}],
            "podIP": ip, "podIPs": [{"ip": ip}],
            "qosClass": "Burstable", "startTime": started,
            "containerStatuses": [status("a"), status("b")],
        },
    })
}

/// Creates `tenants` tenants directly in the store (no HTTP), with statuses set.
fn populate(store: &Store, tenants: usize) {
    let opts = WriteOpts::manager("bench");
    let ty = |g: &str, v: &str, p: &str| {
        store
            .resolve(g, v, p)
            .unwrap_or_else(|| panic!("{g}/{v} {p} not served by the testkit"))
    };
    let (ns_t, pod_t, pvc_t, svc_t, rq_t) = (
        ty("", "v1", "namespaces"),
        ty("", "v1", "pods"),
        ty("", "v1", "persistentvolumeclaims"),
        ty("", "v1", "services"),
        ty("", "v1", "resourcequotas"),
    );
    let (nt_t, np_t, app_t) = (
        ty("kubenova.io", "v1alpha1", "novatenants"),
        ty("kubenova.io", "v1alpha1", "novaprojects"),
        ty("core.oam.dev", "v1beta1", "applications"),
    );
    let create = |t: &ResourceType, ns: Option<&str>, v: Value| {
        store
            .create(t, ns, v, &opts)
            .unwrap_or_else(|e| panic!("create: {e:?}"))
    };
    let set_status = |t: &ResourceType, ns: &str, name: &str, mut v: Value, status: Value| {
        v["status"] = status;
        store
            .replace(t, Some(ns), name, v, &opts, "status")
            .unwrap_or_else(|e| panic!("status of {name}: {e:?}"));
    };
    let catalog = Catalog::builtin_ref();
    for i in 0..tenants {
        let name = format!("t{i}");
        let nt = create(
            &nt_t,
            None,
            json!({"metadata": {"name": name, "labels": {LABEL_ID: Uuid::new_v4().to_string()}},
                   "spec": {"plan": "gold", "owners": ["alice@example.com"]}}),
        );
        let nt: NovaTenant = obj(nt);
        for ns in translate_tenant(&nt, catalog).unwrap().namespaces {
            create(&ns_t, None, serde_json::to_value(ns).unwrap());
        }
        let np = create(
            &np_t,
            Some(&format!("{name}-owner")),
            json!({"metadata": {"name": "web", "namespace": format!("{name}-owner"),
                                "labels": {LABEL_ID: Uuid::new_v4().to_string()}},
                   "spec": {"tenant": name, "access": ["bob@example.com"],
                            "quota": {"pods": "20", "requests.cpu": "4", "requests.memory": "8Gi"}}}),
        );
        let np: NovaProject = obj(np);
        let psa = tenant_pod_security(&nt, catalog).unwrap();
        let project = translate_project(&np, psa.as_ref()).unwrap();
        create(
            &ns_t,
            None,
            serde_json::to_value(&project.namespace).unwrap(),
        );
        let ns = project_namespace(&name, "web");
        let nso = Some(ns.as_str());
        for p in 0..PODS_PER_TENANT {
            let mut v = pod(&ns, i, p);
            let status = v["status"].take();
            let created = create(&pod_t, nso, v);
            let pname = created["metadata"]["name"].as_str().unwrap().to_owned();
            set_status(&pod_t, &ns, &pname, created, status);
        }
        let pvc = create(
            &pvc_t,
            nso,
            json!({"metadata": {"name": "data", "namespace": ns},
                   "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                            "resources": {"requests": {"storage": "10Gi"}}, "volumeName": format!("pvc-{}", Uuid::new_v4())}}),
        );
        set_status(
            &pvc_t,
            &ns,
            "data",
            pvc,
            json!({"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "10Gi"}}),
        );
        create(
            &svc_t,
            nso,
            json!({"metadata": {"name": "web", "namespace": ns},
                   "spec": {"type": "LoadBalancer", "selector": {"app.kubernetes.io/name": "web"},
                            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}}),
        );
        let rq = project.resource_quota.expect("the project sets a quota");
        let rq_name = rq.metadata.name.clone().unwrap();
        let rq = create(&rq_t, nso, serde_json::to_value(&rq).unwrap());
        set_status(
            &rq_t,
            &ns,
            &rq_name,
            rq,
            json!({"hard": {"pods": "20", "requests.cpu": "4", "requests.memory": "8Gi"},
                   "used": {"pods": "10", "requests.cpu": "3", "requests.memory": "3200Mi"}}),
        );
        create(
            &app_t,
            nso,
            json!({"apiVersion": "core.oam.dev/v1beta1", "kind": "Application",
                   "metadata": {"name": "shop", "namespace": ns},
                   "spec": {"components": [{"name": "web", "type": "webservice",
                                            "properties": {"image": "nginx:1.27"}}]}}),
        );
    }
}
