//! The component driver's real code path (`HelmCli`) with a real Helm engine against
//! `kubenova-testkit`: `tests/helm-shim/helm` is a `helm`-compatible command line on
//! helm-python-sdk (Helm v4 as a library), and `tests/charts/` holds small stand-ins for
//! the cert-manager, Capsule, Capsule Proxy and KubeVela charts (their Deployments and CRD
//! names), packaged at test time as the `<chart>-<version>.tgz` archives the operator
//! expects in its charts directory. Covered: install in order with `--wait`, the runbook's
//! upgrade on a version bump, a failed upgrade and a failed `--wait` reported as the
//! component's state, and the runbook's rollback (pinning the previous version again).
//!
//! Needs `KUBENOVA_HELM_PYTHON` (scripts/test.sh exports it); skipped loudly without it,
//! and `KUBENOVA_REQUIRE_HELM=1` (set under CI) makes that a failure.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ListParams};
use kubenova_api::model::{Capabilities, ComponentPhase};
use kubenova_reconcile::components::{
    Component, ComponentError, HelmCli, PINNED, component, install_and_wait, install_in_order,
    observe_capabilities,
};
use kubenova_testkit::TestCluster;
use serde_json::Value;

fn helm_ready() -> bool {
    match std::env::var("KUBENOVA_HELM_PYTHON") {
        Ok(p) if !p.is_empty() => true,
        _ => {
            assert!(
                std::env::var("KUBENOVA_REQUIRE_HELM").as_deref() != Ok("1"),
                "KUBENOVA_REQUIRE_HELM=1 but KUBENOVA_HELM_PYTHON is not set (run scripts/helm_python.sh)"
            );
            eprintln!(
                "!!! HELM COMPONENT TESTS SKIPPED: set KUBENOVA_HELM_PYTHON=$(scripts/helm_python.sh) !!!"
            );
            false
        }
    }
}

fn here() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests")
}

struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "kn-helm-components-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(dir.join("charts")).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Packages `tests/charts/<chart>` as `<charts_dir>/<chart>-<version>.tgz` with that version.
fn package(scratch: &Path, chart: &str, version: &str) {
    let work = scratch.join(format!("src-{chart}-{version}"));
    let dest = work.join(chart);
    copy_dir(&here().join("charts").join(chart), &dest);
    let manifest = std::fs::read_to_string(dest.join("Chart.yaml")).unwrap();
    std::fs::write(
        dest.join("Chart.yaml"),
        manifest.replace("version: 0.0.0", &format!("version: {version}")),
    )
    .unwrap();
    let archive = scratch
        .join("charts")
        .join(format!("{chart}-{version}.tgz"));
    let out = Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(&work)
        .arg(chart)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

async fn setup(simulate_rollouts: bool) -> (TestCluster, Scratch, HelmCli) {
    let cluster = TestCluster::builder()
        .with_upstream_crds(false)
        .simulate_workloads(simulate_rollouts)
        .start()
        .await
        .unwrap();
    let scratch = Scratch::new();
    let kubeconfig = scratch.0.join("kubeconfig");
    std::fs::write(&kubeconfig, cluster.kubeconfig_yaml()).unwrap();
    for c in PINNED {
        package(&scratch.0, c.chart, c.version);
    }
    let helm = HelmCli {
        binary: here().join("helm-shim/helm"),
        charts_dir: scratch.0.join("charts"),
        use_remote: false,
        kubeconfig: Some(kubeconfig),
        timeout: Duration::from_secs(60),
        installer: None,
    };
    (cluster, scratch, helm)
}

async fn version_label(client: &kube::Client, c: &Component, deployment: &str) -> String {
    let d = Api::<Deployment>::namespaced(client.clone(), c.namespace)
        .get(deployment)
        .await
        .unwrap();
    d.metadata.labels.unwrap()["app.kubernetes.io/version"].clone()
}

/// Helm's release Secrets of a component: revision → status.
async fn revisions(client: &kube::Client, c: &Component) -> BTreeMap<u32, String> {
    Api::<Secret>::namespaced(client.clone(), c.namespace)
        .list(&ListParams::default().labels(&format!("owner=helm,name={}", c.release)))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| {
            let l = s.metadata.labels.unwrap();
            (l["version"].parse().unwrap(), l["status"].clone())
        })
        .collect()
}

fn statuses(pairs: &[(u32, &str)]) -> BTreeMap<u32, String> {
    pairs.iter().map(|(r, s)| (*r, (*s).to_owned())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_helm_installs_upgrades_and_rolls_back_components() {
    if !helm_ready() {
        return;
    }
    let (cluster, scratch, helm) = setup(true).await;
    let client = cluster.client().unwrap();
    assert_eq!(
        observe_capabilities(&client).await.unwrap(),
        Capabilities::default()
    );

    // Install all four in order, each with --wait.
    let mut seen = Vec::new();
    let states = install_in_order(&helm, &client, &[], Duration::from_secs(60), |s| {
        seen.push((s.name.clone(), s.phase))
    })
    .await
    .unwrap();
    for s in &states {
        assert_eq!(s.phase, ComponentPhase::Ready, "{s:?}");
    }
    let order: Vec<&str> = states.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        order,
        ["cert-manager", "capsule", "capsule-proxy", "kubevela"]
    );
    assert_eq!(seen.len(), 8, "installing then ready for each: {seen:?}");
    // The capabilities come from what Helm really created: CRDs from the charts' crds/
    // and Deployments made available by the simulated rollout.
    let caps = observe_capabilities(&client).await.unwrap();
    assert!(caps.cert_manager && caps.capsule && caps.capsule_proxy && caps.kube_vela);
    for c in PINNED {
        for d in c.deployments {
            assert_eq!(version_label(&client, c, d).await, c.version);
        }
        assert_eq!(revisions(&client, c).await, statuses(&[(1, "deployed")]));
    }
    // The driver's --set values reached the charts.
    let vela = component("kubevela").unwrap();
    let cm = Api::<ConfigMap>::namespaced(client.clone(), vela.namespace)
        .get("kubevela-values")
        .await
        .unwrap();
    let values: Value = serde_json::from_str(&cm.data.unwrap()["values.json"]).unwrap();
    assert_eq!(values["authentication"]["enabled"], true);
    assert_eq!(values["authentication"]["withUser"], true);

    // A second install of the same versions changes nothing but adds a revision.
    let capsule = *component("capsule").unwrap();
    install_and_wait(
        &helm,
        &client,
        &capsule,
        Duration::from_millis(200),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(
        revisions(&client, &capsule).await,
        statuses(&[(1, "superseded"), (2, "deployed")])
    );

    // The runbook's upgrade: a version bump installs the new chart over the release.
    let bumped = Component {
        version: "0.14.7",
        ..capsule
    };
    package(&scratch.0, bumped.chart, bumped.version);
    let v = install_and_wait(
        &helm,
        &client,
        &bumped,
        Duration::from_millis(200),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(v, "0.14.7");
    assert_eq!(
        version_label(&client, &bumped, "capsule-controller-manager").await,
        "0.14.7"
    );
    assert_eq!(
        revisions(&client, &capsule).await,
        statuses(&[(1, "superseded"), (2, "superseded"), (3, "deployed")])
    );

    // A bad upgrade: the API server refuses an object of the new chart; the error is
    // Helm's, with the server's reason, and the release is marked failed.
    static BROKEN: &[(&str, &str)] = &[("proxy.enabled", "false"), ("broken", "true")];
    let bad = Component {
        version: "0.14.8",
        values: BROKEN,
        ..capsule
    };
    package(&scratch.0, bad.chart, bad.version);
    let err = install_and_wait(
        &helm,
        &client,
        &bad,
        Duration::from_millis(200),
        Duration::from_secs(30),
    )
    .await
    .unwrap_err();
    let ComponentError::Helm {
        release, stderr, ..
    } = &err
    else {
        panic!("expected a helm failure, got {err:?}");
    };
    assert_eq!(release, "capsule");
    assert!(stderr.contains("UPGRADE FAILED"), "{stderr}");
    assert!(stderr.contains("port"), "{stderr}");
    assert_eq!(
        revisions(&client, &capsule)
            .await
            .get(&4)
            .map(String::as_str),
        Some("failed")
    );

    // The runbook's rollback: pin the previous version again.
    install_and_wait(
        &helm,
        &client,
        &bumped,
        Duration::from_millis(200),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(
        version_label(&client, &bumped, "capsule-controller-manager").await,
        "0.14.7"
    );
    let revs = revisions(&client, &capsule).await;
    assert_eq!(
        revs.get(&5).map(String::as_str),
        Some("deployed"),
        "{revs:?}"
    );
    assert_eq!(
        revs.values().filter(|s| *s == "deployed").count(),
        1,
        "{revs:?}"
    );
    assert!(observe_capabilities(&client).await.unwrap().capsule);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_helm_wait_that_times_out_is_the_components_failed_state() {
    if !helm_ready() {
        return;
    }
    // No simulated rollouts: the Deployments never become ready, so `helm --wait` fails.
    let (cluster, _scratch, mut helm) = setup(false).await;
    helm.timeout = Duration::from_secs(3);
    let client = cluster.client().unwrap();
    let mut seen = Vec::new();
    let states = install_in_order(&helm, &client, &[], Duration::from_secs(10), |s| {
        seen.push((s.name.clone(), s.phase))
    })
    .await
    .unwrap();
    // The sequence stops at the first component, which reports Helm's error.
    assert_eq!(states.len(), 1, "{states:?}");
    let s = &states[0];
    assert_eq!(s.name, "cert-manager");
    assert_eq!(s.phase, ComponentPhase::Failed);
    assert!(
        s.message.contains("helm cert-manager failed"),
        "{}",
        s.message
    );
    assert!(s.message.contains("not ready"), "{}", s.message);
    assert_eq!(
        seen,
        [
            ("cert-manager".to_owned(), ComponentPhase::Installing),
            ("cert-manager".to_owned(), ComponentPhase::Failed)
        ]
    );
    let cm = component("cert-manager").unwrap();
    assert_eq!(revisions(&client, cm).await, statuses(&[(1, "failed")]));
    assert!(!observe_capabilities(&client).await.unwrap().cert_manager);
    cluster.shutdown().await;
}
