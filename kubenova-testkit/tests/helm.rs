//! Real Helm (helm-python-sdk: Helm v4 as a library) against a started testkit: install
//! with `--wait`, `helm test`, upgrade with changed values, roll back, uninstall, and a failed install,
//! of the local chart `tests/charts/webapp` (Deployment, Service, ServiceAccount, Secret,
//! ConfigMap, Role/RoleBinding, PodDisruptionBudget, NetworkPolicy, PVC, a pre-install hook
//! Job and a `helm test` Pod).
//!
//! The interpreter of the venv made by `scripts/helm_python.sh` comes from
//! `KUBENOVA_HELM_PYTHON` (scripts/test.sh exports it). Without it the test is skipped
//! loudly; `KUBENOVA_REQUIRE_HELM=1` (set under CI) makes that a failure.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use kubenova_testkit::TestCluster;
use serde_json::{Value, json};

fn helm_python() -> Option<PathBuf> {
    match std::env::var("KUBENOVA_HELM_PYTHON") {
        Ok(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            assert!(
                std::env::var("KUBENOVA_REQUIRE_HELM").as_deref() != Ok("1"),
                "KUBENOVA_REQUIRE_HELM=1 but KUBENOVA_HELM_PYTHON is not set (run scripts/helm_python.sh)"
            );
            eprintln!(
                "!!! HELM TEST SKIPPED: set KUBENOVA_HELM_PYTHON=$(scripts/helm_python.sh) !!!"
            );
            None
        }
    }
}

struct Helm {
    python: PathBuf,
    kubeconfig: PathBuf,
}

impl Helm {
    /// Runs one action through tests/helm/helm_action.py; returns `{"ok": .., ...}`.
    async fn run(&self, mut req: Value) -> Value {
        req["kubeconfig"] = json!(self.kubeconfig);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helm/helm_action.py");
        let python = self.python.clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(python)
                .arg(script)
                .arg(req.to_string())
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "helm_action.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "helm_action.py printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    async fn ok(&self, req: Value) -> Value {
        let action = req["action"].clone();
        let out = self.run(req).await;
        assert_eq!(out["ok"], true, "helm {action} failed: {out}");
        out["result"].clone()
    }
}

fn chart() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/charts/webapp")
        .to_string_lossy()
        .into_owned()
}

fn pdb_api(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("policy", "v1", "PodDisruptionBudget"),
        "poddisruptionbudgets",
    );
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// The release Secrets Helm keeps: revision → `status` label.
async fn release_secrets(secrets: &Api<Secret>, name: &str) -> BTreeMap<String, String> {
    let list = secrets
        .list(&ListParams::default().labels(&format!("owner=helm,name={name}")))
        .await
        .unwrap();
    list.items
        .into_iter()
        .map(|s| {
            let labels = s.metadata.labels.unwrap_or_default();
            assert_eq!(s.type_.as_deref(), Some("helm.sh/release.v1"));
            (labels["version"].clone(), labels["status"].clone())
        })
        .collect()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_upgrade_rollback_uninstall() {
    let Some(python) = helm_python() else { return };
    let cluster = TestCluster::builder()
        .simulate_workloads(true)
        .start()
        .await
        .unwrap();
    let client = cluster.client().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, cluster.kubeconfig_yaml()).unwrap();
    let helm = Helm { python, kubeconfig };
    let ns = "shop";
    let base =
        json!({"name": "web", "namespace": ns, "chart": chart(), "wait": "watcher", "timeout": 60});
    let with = |extra: Value| {
        let mut r = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            r[k] = v.clone();
        }
        r
    };

    // install --create-namespace --wait
    let rel = helm.ok(with(json!({"action": "install"}))).await;
    assert_eq!(rel["status"], "deployed");
    assert_eq!(rel["revision"], 1);
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let d = deploys.get("web").await.unwrap();
    let spec = d.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.unwrap();
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("registry.example/webapp:1.0.0")
    );
    // --wait returned because the (simulated) rollout finished.
    assert_eq!(d.status.unwrap().ready_replicas, Some(2));
    let annotations = d.metadata.annotations.unwrap();
    assert_eq!(annotations["meta.helm.sh/release-name"], "web");
    Api::<Service>::namespaced(client.clone(), ns)
        .get("web")
        .await
        .unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .get("web")
        .await
        .unwrap();
    Api::<Role>::namespaced(client.clone(), ns)
        .get("web")
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .get("web")
        .await
        .unwrap();
    Api::<NetworkPolicy>::namespaced(client.clone(), ns)
        .get("web")
        .await
        .unwrap();
    pdb_api(&client, ns).get("web").await.unwrap();
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .get("web-data")
        .await
        .unwrap();
    assert_eq!(pvc.status.unwrap().phase.as_deref(), Some("Bound"));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    assert_eq!(
        cms.get("web-settings").await.unwrap().data.unwrap()["greeting"],
        "hello"
    );
    // The pre-install hook Job ran to completion before the release was deployed.
    let job = Api::<Job>::namespaced(client.clone(), ns)
        .get("web-migrate")
        .await
        .unwrap();
    assert_eq!(job.status.unwrap().succeeded, Some(1));
    // helm test: the test hook Pod succeeds (simulated), and is cleaned up.
    let tested = helm.ok(with(json!({"action": "test"}))).await;
    assert_eq!(tested["release"]["status"], "deployed", "{tested}");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let key = secrets.get("web-key").await.unwrap().data.unwrap()["key"].clone();
    assert_eq!(key.0.len(), 32);
    assert_eq!(
        release_secrets(&secrets, "web").await,
        map(&[("1", "deployed")])
    );

    // upgrade with changed values: objects follow, the generated key is kept (lookup).
    let rel = helm
        .ok(with(json!({"action": "upgrade",
            "values": {"replicas": 3, "greeting": "hi", "pdb": false, "tag": "2.0.0"}})))
        .await;
    assert_eq!(rel["revision"], 2);
    let spec = deploys.get("web").await.unwrap().spec.unwrap();
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(
        spec.template.spec.unwrap().containers[0].image.as_deref(),
        Some("registry.example/webapp:2.0.0")
    );
    assert_eq!(
        cms.get("web-settings").await.unwrap().data.unwrap()["greeting"],
        "hi"
    );
    assert!(pdb_api(&client, ns).get_opt("web").await.unwrap().is_none());
    assert_eq!(
        secrets.get("web-key").await.unwrap().data.unwrap()["key"],
        key
    );
    assert_eq!(
        release_secrets(&secrets, "web").await,
        map(&[("1", "superseded"), ("2", "deployed")])
    );

    // rollback to revision 1: a new revision 3 with revision 1's objects.
    helm.ok(with(json!({"action": "rollback", "version": 1})))
        .await;
    let spec = deploys.get("web").await.unwrap().spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(
        spec.template.spec.unwrap().containers[0].image.as_deref(),
        Some("registry.example/webapp:1.0.0")
    );
    assert_eq!(
        cms.get("web-settings").await.unwrap().data.unwrap()["greeting"],
        "hello"
    );
    pdb_api(&client, ns).get("web").await.unwrap();
    assert_eq!(
        release_secrets(&secrets, "web").await,
        map(&[("1", "superseded"), ("2", "superseded"), ("3", "deployed")])
    );
    let history = helm.ok(with(json!({"action": "history"}))).await;
    let revisions: Vec<(i64, &str)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["revision"].as_i64().unwrap(),
                r["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        revisions,
        [(1, "superseded"), (2, "superseded"), (3, "deployed")]
    );

    // A failed install: the server's validation error reaches Helm, and the release is
    // recorded as failed.
    let bad = helm
        .run(
            json!({"action": "install", "name": "broken", "namespace": ns, "chart": chart(),
            "values": {"replicas": "many"}, "timeout": 30}),
        )
        .await;
    assert_eq!(bad["ok"], false, "{bad}");
    let err = bad["error"].as_str().unwrap();
    assert!(err.contains("replicas"), "{err}");
    assert_eq!(
        release_secrets(&secrets, "broken").await,
        map(&[("1", "failed")])
    );
    helm.ok(json!({"action": "uninstall", "name": "broken", "namespace": ns}))
        .await;

    // uninstall: everything goes but the PVC the chart keeps (helm.sh/resource-policy).
    let out = helm.ok(with(json!({"action": "uninstall"}))).await;
    assert!(out["info"].as_str().unwrap().contains("web-data"), "{out}");
    assert!(deploys.get_opt("web").await.unwrap().is_none());
    assert!(cms.get_opt("web-settings").await.unwrap().is_none());
    assert!(secrets.get_opt("web-key").await.unwrap().is_none());
    assert!(
        Api::<Service>::namespaced(client.clone(), ns)
            .get_opt("web")
            .await
            .unwrap()
            .is_none()
    );
    assert!(pdb_api(&client, ns).get_opt("web").await.unwrap().is_none());
    assert!(release_secrets(&secrets, "web").await.is_empty());
    assert!(
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
            .get_opt("web-data")
            .await
            .unwrap()
            .is_some()
    );
    cluster.shutdown().await;
}
