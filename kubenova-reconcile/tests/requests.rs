//! How many API round trips the controllers need (testkit request counters): a converged
//! tenant that is reconciled again costs no GET and no apply; creating one costs the
//! finalizer patch, one apply per generated object and the status writes.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kubenova_api::catalog::Catalog;
use kubenova_api::crd::{NovaPhase, NovaProject, NovaTenant};
use kubenova_reconcile::controller::{self, Ctx, Metrics, RunOptions};
use kubenova_testkit::TestCluster;
use serde_json::json;

const OPERATOR: &str = "system:serviceaccount:kubenova-system:kubenova-operator";

async fn operator_client(cluster: &TestCluster, admin: &Client) -> Client {
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "kubenova-system"}})).unwrap();
    Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "kubenova-system");
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "kubenova-operator"}})).unwrap();
    sas.create(&PostParams::default(), &sa).await.unwrap();
    let req: TokenRequest = serde_json::from_value(json!({"spec": {}})).unwrap();
    let token = sas
        .create_token_request("kubenova-operator", &PostParams::default(), &req)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
        .unwrap();
    cluster.client_with_token(&token).unwrap()
}

async fn ready(api: &Api<NovaTenant>, name: &str) -> bool {
    api.get(name).await.unwrap().status.and_then(|s| s.phase) == Some(NovaPhase::Ready)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converged_objects_cost_no_round_trips() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let cluster = TestCluster::builder()
        .with_upstream_crds(true)
        .simulate_capsule(true)
        .simulate_kubevela(true)
        .start()
        .await
        .unwrap();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    for entry in std::fs::read_dir(dir).unwrap() {
        cluster
            .register_crd_yaml(&std::fs::read_to_string(entry.unwrap().path()).unwrap())
            .unwrap();
    }
    let admin = cluster.client().unwrap();
    let op = operator_client(&cluster, &admin).await;
    let ctx = Arc::new(Ctx::new(
        op,
        Arc::new(Catalog::builtin()),
        Arc::new(Metrics::default()),
    ));
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(controller::run(ctx, RunOptions { concurrency: 4 }, rx));
    // Watches started.
    for _ in 0..100 {
        if cluster.faults().counts_for(OPERATOR).verb("watch") >= 9 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let start = cluster.faults().counts_for(OPERATOR);

    let tenants: Api<NovaTenant> = Api::all(admin.clone());
    let nt: NovaTenant = serde_json::from_value(json!({
        "apiVersion": "kubenova.io/v1alpha1", "kind": "NovaTenant",
        "metadata": {"name": "acme"}, "spec": {"plan": "gold", "owners": ["alice@example.com"]}
    }))
    .unwrap();
    tenants.create(&PostParams::default(), &nt).await.unwrap();
    for _ in 0..200 {
        if ready(&tenants, "acme").await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready(&tenants, "acme").await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let created = cluster.faults().counts_for(OPERATOR).since(&start);
    // Finalizer, Tenant + 2 namespaces, at most two status writes (Reconciling, Ready);
    // no GETs (the caches answer).
    assert_eq!(created.verb("get"), 0, "{created}");
    // The Tenant: one apply (the testkit applies the CRD defaults, e.g.
    // `owners[].clusterRoles`, on create as the API server does, so Capsule's status
    // write does not change the content and nothing is applied again).
    assert_eq!(
        created.get("patch", "tenants.capsule.clastix.io"),
        1,
        "{created}"
    );
    // The two namespaces are created (never applied over an existing one).
    assert_eq!(created.get("create", "namespaces"), 2, "{created}");
    assert_eq!(created.get("patch", "namespaces"), 0, "{created}");
    assert_eq!(
        created.get("patch", "novatenants.kubenova.io"),
        1,
        "{created}"
    );
    assert!(
        created.get("patch", "novatenants.kubenova.io/status") <= 2,
        "{created}"
    );

    // A reconcile of the converged tenant (any change to it triggers one) costs nothing.
    let before = cluster.faults().counts_for(OPERATOR);
    tenants
        .patch(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"touch": "1"}}})),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = cluster.faults().counts_for(OPERATOR).since(&before);
    assert_eq!(again.writes(), 0, "{again}");
    assert_eq!(again.verb("get"), 0, "{again}");

    // Drift is still repaired: an edited namespace label is applied back (one patch).
    Api::<Namespace>::all(admin.clone())
        .patch(
            "acme-apps",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "privileged"}}}),
            ),
        )
        .await
        .unwrap();
    let mut repaired = false;
    for _ in 0..100 {
        let ns = Api::<Namespace>::all(admin.clone())
            .get("acme-apps")
            .await
            .unwrap();
        if ns.metadata.labels.unwrap()["pod-security.kubernetes.io/enforce"] != "privileged" {
            repaired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(repaired, "label drift repaired");

    // A converged project reconciled again costs nothing either: its NovaTenant (for the
    // Pod Security level) and its namespace's ownership come from the caches.
    let projects: Api<NovaProject> = Api::namespaced(admin.clone(), "acme-owner");
    let np: NovaProject = serde_json::from_value(json!({
        "apiVersion": "kubenova.io/v1alpha1", "kind": "NovaProject",
        "metadata": {"name": "web", "namespace": "acme-owner"},
        "spec": {"tenant": "acme", "access": ["bob@example.com"]}
    }))
    .unwrap();
    projects.create(&PostParams::default(), &np).await.unwrap();
    let project_ready = || async {
        projects
            .get("web")
            .await
            .unwrap()
            .status
            .and_then(|s| s.phase)
            == Some(NovaPhase::Ready)
    };
    for _ in 0..200 {
        if project_ready().await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(project_ready().await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = cluster.faults().counts_for(OPERATOR);
    projects
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"touch": "1"}}})),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = cluster.faults().counts_for(OPERATOR).since(&before);
    assert_eq!(again.writes(), 0, "{again}");
    assert_eq!(again.verb("get"), 0, "{again}");
    stop.send(true).unwrap();
    task.await.unwrap();
    cluster.shutdown().await;
}
