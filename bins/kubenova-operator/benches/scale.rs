//! Operator at scale: N NovaTenants, each with one NovaProject and one NovaApp,
//! against an in-process testkit cluster (upstream CRDs, simulated Capsule and KubeVela).
//!
//! Two phases per scale, each on a fresh cluster, in the same run:
//!
//! - **operator**: the real `kubenova-operator` binary (a separate process, so its peak
//!   RSS, `VmHWM` from `/proc/<pid>/status`, is its own) reconciles what the bench
//!   creates; the clock runs from the first create until every Nova object is `Ready`.
//! - **floor**: the bench itself issues exactly the round trips the same objects need
//!   (finalizer patch, server-side apply of every translated object, one status write
//!   per Nova object once Capsule/KubeVela report ready) with the same concurrency
//!   limits, timed the same way.
//!
//! The testkit counts requests per authenticated user: the operator and the floor run as
//! their own ServiceAccounts, so the bench's own creates and polls are not counted.
//!
//! ```sh
//! cargo bench -p kubenova-operator --bench scale                        # 1,000 and 10,000
//! KUBENOVA_BENCH_TENANTS=1000 cargo bench -p kubenova-operator --bench scale
//! ```
#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use kubenova_api::catalog::Catalog;
use kubenova_api::crd::{NovaApp, NovaProject, NovaTenant};
use kubenova_reconcile::status::{app_verdict, next_status, project_verdict, tenant_verdict};
use kubenova_reconcile::{
    FIELD_MANAGER, app_rules, project_namespace, tenant_pod_security, translate_app,
    translate_project, translate_tenant,
};
use kubenova_testkit::TestCluster;
use kubenova_testkit::selector::{FieldSelector, LabelSelector};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

const OPERATOR_USER: &str = "system:serviceaccount:kubenova-system:kubenova-operator";
const FLOOR_USER: &str = "system:serviceaccount:kubenova-system:floor";
/// Tenants whose create pipeline runs at once (the "users").
const PIPELINES: usize = 64;
/// The operator's per-controller concurrency (its default), also used by the floor.
const CONCURRENCY: usize = 16;

/// The operator process; with `wrapped`, the leader of its own process group (a profiler
/// wrapper and the operator under it), all of which is killed.
struct Guard(Child, bool);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.1 {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.0.id())])
                .status();
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn proc_status(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn start_cluster() -> TestCluster {
    let cluster = TestCluster::builder()
        .with_upstream_crds(true)
        .simulate_capsule(true)
        .simulate_kubevela(true)
        // 10k tenants produce ~100k events; keep resumable history for the operator's
        // watches.
        .event_history(200_000)
        .watch_buffer(200_000)
        .start()
        .await
        .unwrap();
    for crd in kubenova_reconcile::crds::crd_files().unwrap() {
        cluster.register_crd_yaml(&crd.1).unwrap();
    }
    let admin = cluster.client().unwrap();
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "kubenova-system"}})).unwrap();
    Api::<Namespace>::all(admin)
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    cluster
}

async fn sa_token(cluster: &TestCluster, name: &str) -> String {
    let sas: Api<ServiceAccount> = Api::namespaced(cluster.client().unwrap(), "kubenova-system");
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    sas.create(&PostParams::default(), &sa).await.unwrap();
    let req: TokenRequest = serde_json::from_value(json!({"spec": {}})).unwrap();
    sas.create_token_request(name, &PostParams::default(), &req)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
        .unwrap()
}

fn tenant(i: usize) -> NovaTenant {
    serde_json::from_value(json!({
        "apiVersion": "kubenova.io/v1alpha1", "kind": "NovaTenant",
        "metadata": {"name": format!("t{i}")},
        "spec": {"plan": "gold", "owners": ["alice@example.com"]}
    }))
    .unwrap()
}

fn project(i: usize) -> NovaProject {
    serde_json::from_value(json!({
        "apiVersion": "kubenova.io/v1alpha1", "kind": "NovaProject",
        "metadata": {"name": "web", "namespace": format!("t{i}-owner")},
        "spec": {"tenant": format!("t{i}"), "access": ["bob@example.com"]}
    }))
    .unwrap()
}

fn app(i: usize) -> NovaApp {
    serde_json::from_value(json!({
        "apiVersion": "kubenova.io/v1alpha1", "kind": "NovaApp",
        "metadata": {"name": "shop", "namespace": project_namespace(&format!("t{i}"), "web")},
        "spec": {"tenant": format!("t{i}"), "project": "web",
                 "components": [{"name": "web", "type": "webservice", "properties": {"image": "nginx:1.27"}}]}
    }))
    .unwrap()
}

/// Waits (polling the store directly: no HTTP, not counted) until `name` exists.
async fn until_exists(cluster: &TestCluster, group: &str, ver: &str, plural: &str, name: &str) {
    let t = cluster.store().resolve(group, ver, plural).unwrap();
    let deadline = Instant::now() + Duration::from_secs(1800);
    while cluster.store().get(&t, None, name).is_err() {
        assert!(Instant::now() < deadline, "{plural} {name} never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn count_ready(cluster: &TestCluster, plural: &str) -> usize {
    let store = cluster.store();
    let t = store.resolve("kubenova.io", "v1alpha1", plural).unwrap();
    let list = store
        .list(
            &t,
            None,
            &LabelSelector::parse("").unwrap(),
            &FieldSelector::parse("").unwrap(),
            None,
            None,
        )
        .unwrap();
    list["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|o| o.pointer("/status/phase") == Some(&json!("Ready")))
                .count()
        })
        .unwrap_or(0)
}

/// Waits until the Capsule Tenants / KubeVela Applications report ready (store polling).
fn count_where(
    cluster: &TestCluster,
    g: &str,
    v: &str,
    plural: &str,
    f: fn(&Value) -> bool,
) -> usize {
    let store = cluster.store();
    let t = store.resolve(g, v, plural).unwrap();
    let list = store
        .list(
            &t,
            None,
            &LabelSelector::parse("").unwrap(),
            &FieldSelector::parse("").unwrap(),
            None,
            None,
        )
        .unwrap();
    list["items"]
        .as_array()
        .map(|a| a.iter().filter(|o| f(o)).count())
        .unwrap_or(0)
}

async fn all_ready(cluster: &TestCluster, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let done = count_ready(cluster, "novatenants") == n
            && count_ready(cluster, "novaprojects") == n
            && count_ready(cluster, "novaapps") == n;
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "not all Ready after an hour");
        // Each check clones every Nova object out of the store: poll less often at scale
        // so the check does not steal the API server's CPU (0.1 s up to 1,000 tenants, 1 s at 10,000).
        tokio::time::sleep(Duration::from_millis(100 * (n as u64 / 1000).max(1))).await;
    }
}

/// What the user does: create the tenant, then the project once its owner namespace
/// exists, then the app once the project namespace exists.
async fn create_trio(cluster: &TestCluster, admin: &Client, i: usize) {
    Api::<NovaTenant>::all(admin.clone())
        .create(&PostParams::default(), &tenant(i))
        .await
        .unwrap();
    until_exists(cluster, "", "v1", "namespaces", &format!("t{i}-owner")).await;
    Api::<NovaProject>::namespaced(admin.clone(), &format!("t{i}-owner"))
        .create(&PostParams::default(), &project(i))
        .await
        .unwrap();
    let pns = project_namespace(&format!("t{i}"), "web");
    until_exists(cluster, "", "v1", "namespaces", &pns).await;
    Api::<NovaApp>::namespaced(admin.clone(), &pns)
        .create(&PostParams::default(), &app(i))
        .await
        .unwrap();
}

struct Phase {
    seconds: f64,
    counts: kubenova_testkit::RequestCounts,
    rss_peak_kib: Option<u64>,
}

async fn operator_phase(n: usize) -> Phase {
    let cluster = Arc::new(start_cluster().await);
    let token = sa_token(&cluster, "kubenova-operator").await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig.yaml");
    std::fs::write(
        &kubeconfig,
        cluster
            .kubeconfig_yaml()
            .replace(cluster.admin_token(), &token),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("operator.log")).unwrap();
    // `KUBENOVA_BENCH_WRAP="heaptrack -o /tmp/op"` runs the operator under a profiler
    // (the peak RSS is then the wrapper's, not the operator's). heaptrack hooks malloc:
    // add `--no-default-features` (no jemalloc) to see the operator's allocations.
    let wrap = std::env::var("KUBENOVA_BENCH_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let mut cmd = match words.next() {
        Some(w) => {
            let mut c = Command::new(w);
            c.args(words).arg(env!("CARGO_BIN_EXE_kubenova-operator"));
            std::os::unix::process::CommandExt::process_group(&mut c, 0);
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_kubenova-operator")),
    };
    let child = cmd
        .env("KUBENOVA_KUBECONFIG", &kubeconfig)
        .env("KUBENOVA_LISTEN", "127.0.0.1:0")
        .env("KUBENOVA_CONCURRENCY", CONCURRENCY.to_string())
        .env("KUBENOVA_LEADER_ELECTION", "false")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let operator = Guard(child, !wrap.trim().is_empty());
    let pid = operator.0.id();
    // Let it connect and start its watches before the clock starts.
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.faults().counts_for(OPERATOR_USER).verb("watch") < 6 {
        assert!(
            Instant::now() < deadline,
            "operator did not start its watches"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = cluster.faults().counts_for(OPERATOR_USER);

    let admin = cluster.client().unwrap();
    let start = Instant::now();
    let sem = Arc::new(Semaphore::new(PIPELINES));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let (cluster, admin) = (cluster.clone(), admin.clone());
        tasks.push(tokio::spawn(async move {
            create_trio(&cluster, &admin, i).await;
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    all_ready(&cluster, n).await;
    let seconds = start.elapsed().as_secs_f64();
    // Settle: requests triggered by the last status writes still count (a loop would
    // show here).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let counts = cluster.faults().counts_for(OPERATOR_USER).since(&before);
    let rss_peak_kib = proc_status(pid, "VmHWM:");
    drop(operator);
    if let Ok(text) = std::fs::read_to_string(dir.path().join("operator.log"))
        && !text.trim().is_empty()
    {
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        println!("  operator log (last lines): {tail:?}");
    }
    Phase {
        seconds,
        counts,
        rss_peak_kib,
    }
}

fn ar(kind: &str) -> (ApiResource, bool) {
    let (g, v, p, namespaced) = match kind {
        "Namespace" => ("", "v1", "namespaces", false),
        "ResourceQuota" => ("", "v1", "resourcequotas", true),
        "ServiceAccount" => ("", "v1", "serviceaccounts", true),
        "RoleBinding" => ("rbac.authorization.k8s.io", "v1", "rolebindings", true),
        "Tenant" => ("capsule.clastix.io", "v1beta2", "tenants", false),
        "Application" => ("core.oam.dev", "v1beta1", "applications", true),
        other => panic!("{other}"),
    };
    (
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(g, v, kind), p),
        namespaced,
    )
}

async fn ssa(client: &Client, obj: &Value) {
    let kind = obj["kind"].as_str().unwrap();
    let (ar, namespaced) = ar(kind);
    let api: Api<DynamicObject> = if namespaced {
        Api::namespaced_with(
            client.clone(),
            obj["metadata"]["namespace"].as_str().unwrap(),
            &ar,
        )
    } else {
        Api::all_with(client.clone(), &ar)
    };
    api.patch(
        obj["metadata"]["name"].as_str().unwrap(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .unwrap();
}

fn finalizer_patch() -> Patch<Value> {
    // What kube::runtime::finalizer sends: test + add of metadata.finalizers.
    Patch::Json(
        serde_json::from_value(json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["kubenova.io/cleanup"]}
        ]))
        .unwrap(),
    )
}

async fn floor_trio(cluster: &TestCluster, admin: &Client, floor: &Client, i: usize) {
    let pp = PostParams::default();
    let nt = Api::<NovaTenant>::all(admin.clone())
        .create(&pp, &tenant(i))
        .await
        .unwrap();
    Api::<NovaTenant>::all(floor.clone())
        .patch(&nt.name_any(), &PatchParams::default(), &finalizer_patch())
        .await
        .unwrap();
    let t = translate_tenant(&nt, Catalog::builtin_ref()).unwrap();
    for obj in t.to_values() {
        ssa(floor, &obj).await;
    }
    let owner = format!("t{i}-owner");
    let np = Api::<NovaProject>::namespaced(admin.clone(), &owner)
        .create(&pp, &project(i))
        .await
        .unwrap();
    Api::<NovaProject>::namespaced(floor.clone(), &owner)
        .patch("web", &PatchParams::default(), &finalizer_patch())
        .await
        .unwrap();
    let psa = tenant_pod_security(&nt, Catalog::builtin_ref()).unwrap();
    for obj in translate_project(&np, psa.as_ref()).unwrap().to_values() {
        ssa(floor, &obj).await;
    }
    let pns = project_namespace(&format!("t{i}"), "web");
    let na = Api::<NovaApp>::namespaced(admin.clone(), &pns)
        .create(&pp, &app(i))
        .await
        .unwrap();
    Api::<NovaApp>::namespaced(floor.clone(), &pns)
        .patch("shop", &PatchParams::default(), &finalizer_patch())
        .await
        .unwrap();
    let rules = app_rules(&nt.spec, Catalog::builtin_ref()).unwrap();
    ssa(floor, &translate_app(&na, &rules).unwrap()).await;
    let _ = cluster;
}

fn status_patch(
    verdict: &kubenova_reconcile::Verdict,
    generation: Option<i64>,
    namespaces: Vec<String>,
) -> Patch<Value> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let next = next_status(None, verdict, generation, namespaces, &now).unwrap();
    Patch::Merge(json!({"status": next}))
}

async fn floor_statuses(cluster: &TestCluster, floor: &Client, i: usize) {
    let store = cluster.store();
    let get = |g: &str, v: &str, p: &str, ns: Option<&str>, name: &str| {
        let t = store.resolve(g, v, p).unwrap();
        store.get(&t, ns, name).unwrap()
    };
    let pp = PatchParams::default();
    let name = format!("t{i}");
    let owner = format!("{name}-owner");
    let pns = project_namespace(&name, "web");
    let tenant = get("capsule.clastix.io", "v1beta2", "tenants", None, &name);
    Api::<NovaTenant>::all(floor.clone())
        .patch_status(
            &name,
            &pp,
            &status_patch(
                &tenant_verdict(Some(&tenant)),
                Some(1),
                vec![owner.clone(), format!("{name}-apps")],
            ),
        )
        .await
        .unwrap();
    let ns = get("", "v1", "namespaces", None, &pns);
    Api::<NovaProject>::namespaced(floor.clone(), &owner)
        .patch_status(
            "web",
            &pp,
            &status_patch(&project_verdict(Some(&ns)), Some(1), vec![pns.clone()]),
        )
        .await
        .unwrap();
    let application = get(
        "core.oam.dev",
        "v1beta1",
        "applications",
        Some(&pns),
        "shop",
    );
    Api::<NovaApp>::namespaced(floor.clone(), &pns)
        .patch_status(
            "shop",
            &pp,
            &status_patch(&app_verdict(Some(&application)), Some(1), vec![]),
        )
        .await
        .unwrap();
}

async fn floor_phase(n: usize) -> Phase {
    let cluster = Arc::new(start_cluster().await);
    let token = sa_token(&cluster, "floor").await;
    let floor = cluster.client_with_token(&token).unwrap();
    let admin = cluster.client().unwrap();
    let before = cluster.faults().counts_for(FLOOR_USER);
    let start = Instant::now();
    // The same limits as the operator: PIPELINES users creating, CONCURRENCY round trips
    // per controller kind (3 kinds).
    let sem = Arc::new(Semaphore::new(PIPELINES.min(3 * CONCURRENCY)));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let (cluster, admin, floor) = (cluster.clone(), admin.clone(), floor.clone());
        tasks.push(tokio::spawn(async move {
            floor_trio(&cluster, &admin, &floor, i).await;
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Capsule and KubeVela must report ready before Ready can be written.
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let tenants = count_where(&cluster, "capsule.clastix.io", "v1beta2", "tenants", |o| {
            o.pointer("/status/state") == Some(&json!("Active"))
        });
        let apps = count_where(&cluster, "core.oam.dev", "v1beta1", "applications", |o| {
            o.pointer("/status/status") == Some(&json!("running"))
        });
        if tenants == n && apps == n {
            break;
        }
        assert!(Instant::now() < deadline, "simulations never caught up");
        tokio::time::sleep(Duration::from_millis(50 * (n as u64 / 1000).max(1))).await;
    }
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let (cluster, floor) = (cluster.clone(), floor.clone());
        tasks.push(tokio::spawn(async move {
            floor_statuses(&cluster, &floor, i).await;
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    all_ready(&cluster, n).await;
    let seconds = start.elapsed().as_secs_f64();
    let counts = cluster.faults().counts_for(FLOOR_USER).since(&before);
    Phase {
        seconds,
        counts,
        rss_peak_kib: None,
    }
}

fn summary(counts: &kubenova_testkit::RequestCounts) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for ((verb, _), n) in &counts.by_verb_resource {
        *m.entry(verb.clone()).or_insert(0) += n;
    }
    m
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "nproc {}, CPU {cpu}, loadavg {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

fn main() {
    let scales: Vec<usize> = std::env::var("KUBENOVA_BENCH_TENANTS")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().replace('_', "").parse().ok())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("machine: {}", machine());
    println!(
        "operator binary: {}",
        env!("CARGO_BIN_EXE_kubenova-operator")
    );
    assert!(Path::new(env!("CARGO_BIN_EXE_kubenova-operator")).exists());
    for n in scales {
        let objects = (3 * n) as f64;
        println!("\n== {n} tenants ({} Nova objects) ==", 3 * n);
        // `KUBENOVA_BENCH_OPERATOR_ONLY=1`: skip the floor (profiling runs).
        if std::env::var_os("KUBENOVA_BENCH_OPERATOR_ONLY").is_some() {
            let op = rt.block_on(operator_phase(n));
            println!(
                "operator: {:>8.1} s  {:>8} requests ({:.2}/object)  peak RSS {:?} KiB",
                op.seconds,
                op.counts.total,
                op.counts.total as f64 / objects,
                op.rss_peak_kib
            );
            println!("operator requests by resource:\n{}", op.counts);
            continue;
        }
        let floor = rt.block_on(floor_phase(n));
        println!(
            "floor:    {:>8.1} s  {:>8} requests ({:.2}/object)  {:?}",
            floor.seconds,
            floor.counts.total,
            floor.counts.total as f64 / objects,
            summary(&floor.counts)
        );
        let op = rt.block_on(operator_phase(n));
        println!(
            "operator: {:>8.1} s  {:>8} requests ({:.2}/object)  {:?}",
            op.seconds,
            op.counts.total,
            op.counts.total as f64 / objects,
            summary(&op.counts)
        );
        println!("operator requests by resource:\n{}", op.counts);
        println!(
            "ratio: time {:.2}x, requests {:.2}x (target <= 1.5x); operator peak RSS {} (target < 100 MiB)",
            op.seconds / floor.seconds,
            op.counts.total as f64 / floor.counts.total as f64,
            op.rss_peak_kib
                .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
                .unwrap_or_else(|| "n/a".into())
        );
        println!("machine after run: {}", machine());
    }
}
