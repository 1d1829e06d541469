//! End to end with the three real binaries as processes: `kubenova-testkit serve`
//! (upstream CRDs, simulated Capsule/KubeVela), `kubenova-manager serve` on Postgres (a
//! fresh database; SQLite when Postgres is not configured, loudly, and a failure when
//! `KUBENOVA_REQUIRE_POSTGRES=1`), and `kubenova-operator` started from the Deployment
//! the bootstrap applied.
//!
//! The binaries are found next to this test (`cargo test --workspace` builds them).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{database, drop_database};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use kubenova_demo::flow::{Flow, HEARTBEAT_SECONDS, STEP_TIMEOUT, create_tenancy};
use kubenova_demo::{Binaries, wait_for};
use serde_json::json;
use std::time::Duration;

fn dynamic(
    client: &kube::Client,
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural),
    )
}

async fn names(api: &Api<DynamicObject>) -> Vec<String> {
    let mut n: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|o| o.metadata.name)
        .collect();
    n.sort();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbook_with_updates_deletes_restarts_and_outages() {
    let Some(bins) = common::binaries() else {
        return;
    };
    let (url, pg) = database().await;
    let dir = tempfile::tempdir().unwrap();
    let result = runbook(bins, dir.path(), &url).await;
    drop_database(pg).await;
    if let Err(e) = result {
        panic!("{e:?}");
    }
}

async fn runbook(bins: Binaries, dir: &std::path::Path, url: &str) -> anyhow::Result<()> {
    let mut flow = Flow::start(bins, dir, url).await?;
    let r = steps(&mut flow).await;
    r.map_err(|e| e.context(flow.diagnostics()))
}

async fn steps(flow: &mut Flow) -> anyhow::Result<()> {
    let k = flow.testkit.client.clone();

    // Bootstrap applies everything once, with the stored kubeconfig.
    let c = flow.bootstrap().await?;
    assert_eq!(c["clusterStatus"], "bootstrapping", "{c}");
    let ns: Api<Namespace> = Api::all(k.clone());
    assert!(ns.get_opt("kubenova-system").await?.is_some());
    let crds = dynamic(
        &k,
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
    );
    let crd_names = names(&crds).await;
    for n in [
        "novaapps.kubenova.io",
        "novaprojects.kubenova.io",
        "novatenants.kubenova.io",
    ] {
        assert!(
            crd_names.contains(&n.to_string()),
            "{n} missing: {crd_names:?}"
        );
    }
    let secret: Api<Secret> = Api::namespaced(k.clone(), "kubenova-system");
    let s = secret.get("kubenova-agent").await?;
    let token = String::from_utf8(s.data.unwrap()["token"].0.clone())?;
    assert!(token.starts_with("kna_"));
    let dep: Api<Deployment> = Api::namespaced(k.clone(), "kubenova-system");
    assert!(dep.get_opt("kubenova-operator").await?.is_some());
    // The cluster's kubeconfig never comes back, and the agent token is not in the manager's log.
    let cluster = flow.api().get(&flow.cluster_path("")).await?;
    assert!(cluster.get("kubeconfig").is_none());

    // The operator's hello makes the cluster connected; components come through the agent.
    flow.start_operator().await?;
    flow.wait_cluster_status("connected", STEP_TIMEOUT).await?;
    flow.install_components().await?;

    // Two tenants, each with project `web` and app `site`: Ready through the REST API.
    let acme = create_tenancy(flow, "acme").await?;
    let beta = create_tenancy(flow, "beta").await?;
    for t in [&acme, &beta] {
        flow.wait_phase(&t.tenant_path, "ready").await?;
        flow.wait_phase(&t.project_path, "ready").await?;
        flow.wait_phase(&t.app_path, "ready").await?;
    }
    let tenants = dynamic(&k, "capsule.clastix.io", "v1beta2", "Tenant", "tenants");
    assert_eq!(names(&tenants).await, ["acme", "beta"]);
    let apps = dynamic(&k, "core.oam.dev", "v1beta1", "Application", "applications");
    assert_eq!(
        names(&apps).await,
        ["site", "site"],
        "one Application per project, no duplicates"
    );

    // The operator measures acme's pods (run as KubeVela would) and uploads the hour; the
    // manager prices it at the plan in force (the demo's step 6).
    let usage = flow.measure_usage(&acme).await?;
    let last = usage["records"]
        .as_array()
        .and_then(|r| r.last())
        .cloned()
        .unwrap_or_default();
    assert!(last["pods"].as_i64() >= Some(1), "{usage}");
    assert!(last["cpuMillicores"].as_i64() > Some(0), "{usage}");
    assert_eq!(last["loadBalancers"], 1, "{usage}");
    assert_eq!(usage["costByPlan"][0]["plan"], "gold", "{usage}");
    assert!(
        usage["totalCost"].as_str().is_some_and(|c| c != "0.000000"),
        "{usage}"
    );
    let beta_id = beta.tenant_path.rsplit('/').next().unwrap_or_default();
    let beta_usage = flow
        .api()
        .get(&format!("/api/v1/tenants/{beta_id}/usage"))
        .await?;
    assert!(
        beta_usage["records"]
            .as_array()
            .is_some_and(|r| r.iter().all(|r| r["pods"] == 0 && r["loadBalancers"] == 0)),
        "acme's pods are not beta's: {beta_usage}"
    );

    // Updates at each level reach the cluster.
    flow.api()
        .ok(
            "PUT",
            &format!("{}/quotas", acme.tenant_path),
            Some(&json!({"requests.cpu": "3"})),
        )
        .await?;
    wait_for("acme's Capsule Tenant quota", STEP_TIMEOUT, || {
        let tenants = tenants.clone();
        async move {
            let t = tenants.get("acme").await?;
            let quotas = t.data["spec"]["resourceQuotas"]["items"].to_string();
            Ok(quotas.contains("\"requests.cpu\":\"3\"").then_some(()))
        }
    })
    .await?;
    let project = flow.api().get(&acme.project_path).await?;
    let project_ns = project["namespace"].as_str().unwrap().to_string();
    flow.api()
        .ok(
            "PUT",
            &format!("{}/access", acme.project_path),
            Some(&json!({"access": ["developer:dev@acme.example", "viewer:audit@acme.example"]})),
        )
        .await?;
    let rbs: Api<RoleBinding> = Api::namespaced(k.clone(), &project_ns);
    wait_for("the viewer RoleBinding", STEP_TIMEOUT, || {
        let rbs = rbs.clone();
        async move {
            let all = rbs.list(&ListParams::default()).await?;
            Ok(all
                .items
                .iter()
                .any(|rb| {
                    rb.subjects
                        .iter()
                        .flatten()
                        .any(|s| s.name == "audit@acme.example")
                })
                .then_some(()))
        }
    })
    .await?;
    let app_before = flow.api().get(&acme.app_path).await?;
    flow.api()
        .ok(
            "PUT",
            &acme.app_path,
            Some(&json!({"name": "site", "image": "nginx:1.28", "spec": {"ports": [{"port": 80, "expose": true}]}})),
        )
        .await?;
    flow.api()
        .ok(
            "POST",
            &format!("{}:deploy", acme.app_path),
            Some(&json!({})),
        )
        .await?;
    let app_api = Api::<DynamicObject>::namespaced_with(
        k.clone(),
        &project_ns,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("core.oam.dev", "v1beta1", "Application"),
            "applications",
        ),
    );
    wait_for("the new image in the Application", STEP_TIMEOUT, || {
        let app_api = app_api.clone();
        async move {
            let a = app_api.get("site").await?;
            Ok(a.data["spec"]
                .to_string()
                .contains("nginx:1.28")
                .then_some(()))
        }
    })
    .await?;
    let app_after = flow.wait_phase(&acme.app_path, "ready").await?;
    assert!(app_after["revision"].as_i64() > app_before["revision"].as_i64());

    // The operator stops: the cluster goes stale, a change made meanwhile is picked up after
    // the restart without duplicates.
    let mut logs = flow.operator.as_ref().unwrap().log();
    flow.operator.as_mut().unwrap().stop();
    flow.wait_cluster_status("stale", Duration::from_secs(HEARTBEAT_SECONDS * 3 + 30))
        .await?;
    let gamma = create_tenancy(flow, "gamma").await?;
    flow.start_operator().await?;
    flow.wait_cluster_status("connected", STEP_TIMEOUT).await?;
    flow.wait_phase(&gamma.app_path, "ready").await?;
    assert_eq!(names(&tenants).await, ["acme", "beta", "gamma"]);
    assert_eq!(names(&apps).await.len(), 3);

    // The manager stops: the operator keeps reconciling (drift is repaired), then resyncs.
    logs.push_str(&flow.manager.proc.log());
    flow.stop_manager();
    app_api.delete("site", &Default::default()).await?;
    wait_for(
        "the Application repaired while the manager is down",
        STEP_TIMEOUT,
        || {
            let app_api = app_api.clone();
            async move { Ok(app_api.get_opt("site").await?.map(|_| ())) }
        },
    )
    .await?;
    flow.restart_manager().await?;
    flow.wait_cluster_status("connected", STEP_TIMEOUT).await?;
    assert_eq!(names(&tenants).await, ["acme", "beta", "gamma"]);

    // Deletes at each level leave nothing behind.
    flow.api().ok("DELETE", &beta.app_path, None).await?;
    let beta_project = flow.api().get(&beta.project_path).await?;
    let beta_ns = beta_project["namespace"].as_str().unwrap().to_string();
    let beta_apps = Api::<DynamicObject>::namespaced_with(
        k.clone(),
        &beta_ns,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("core.oam.dev", "v1beta1", "Application"),
            "applications",
        ),
    );
    wait_for("beta's Application gone", STEP_TIMEOUT, || {
        let a = beta_apps.clone();
        async move { Ok(a.get_opt("site").await?.is_none().then_some(())) }
    })
    .await?;
    flow.api().ok("DELETE", &beta.project_path, None).await?;
    wait_for("beta's project namespace gone", STEP_TIMEOUT, || {
        let ns = ns.clone();
        let n = beta_ns.clone();
        async move { Ok(ns.get_opt(&n).await?.is_none().then_some(())) }
    })
    .await?;
    flow.api().ok("DELETE", &beta.tenant_path, None).await?;
    wait_for("beta's Capsule Tenant gone", STEP_TIMEOUT, || {
        let t = tenants.clone();
        async move { Ok((!names(&t).await.contains(&"beta".to_string())).then_some(())) }
    })
    .await?;
    assert_eq!(names(&tenants).await, ["acme", "gamma"]);

    // Secrets stay out of logs.
    logs.push_str(&flow.manager.proc.log());
    logs.push_str(&flow.operator.as_ref().unwrap().log());
    assert!(!logs.contains(&token), "the agent token appeared in a log");
    Ok(())
}
