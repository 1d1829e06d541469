//! Component installs with the simulated driver against `kubenova-testkit`: CRDs are
//! registered through the API, Deployments appear available, capabilities follow what is
//! really served, and the install order and failure handling hold.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use kubenova_api::model::{Capabilities, ComponentPhase};
use kubenova_reconcile::components::{
    Component, ComponentDriver, ComponentError, SimulatedDriver, component, install_in_order,
    observe_capabilities,
};
use kubenova_testkit::TestCluster;

fn crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kubenova-testkit/upstream")
}

async fn cluster() -> TestCluster {
    TestCluster::builder()
        .with_upstream_crds(false)
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn simulated_install_registers_crds_and_capabilities_follow() {
    let c = cluster().await;
    let client = c.client().unwrap();
    assert_eq!(
        observe_capabilities(&client).await.unwrap(),
        Capabilities::default(),
        "nothing is installed yet, so nothing may be claimed"
    );
    let driver = SimulatedDriver {
        client: client.clone(),
        crds_dir: crds_dir(),
        proxy_ca: Some(c.ca_pem().to_string()),
    };
    let mut seen = Vec::new();
    let states = install_in_order(
        &driver,
        &client,
        &["capsule".to_string(), "kubevela".to_string()],
        Duration::from_secs(10),
        |s| seen.push((s.name.clone(), s.phase)),
    )
    .await
    .unwrap();
    assert_eq!(
        seen,
        [
            ("capsule".to_string(), ComponentPhase::Installing),
            ("capsule".to_string(), ComponentPhase::Ready),
            ("kubevela".to_string(), ComponentPhase::Installing),
            ("kubevela".to_string(), ComponentPhase::Ready),
        ]
    );
    assert!(states.iter().all(|s| s.phase == ComponentPhase::Ready));
    let caps = observe_capabilities(&client).await.unwrap();
    assert_eq!(
        caps,
        Capabilities {
            cert_manager: false,
            capsule: true,
            capsule_proxy: false,
            kube_vela: true
        }
    );
    // The Capsule Tenant CRD is really served now: a Tenant can be created.
    let tenants = kube::api::Api::<kube::api::DynamicObject>::all_with(
        client.clone(),
        &kube::core::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk("capsule.clastix.io", "v1beta2", "Tenant"),
            "tenants",
        ),
    );
    let t: kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant", "metadata": {"name": "acme"}, "spec": {}
    }))
    .unwrap();
    tenants.create(&Default::default(), &t).await.unwrap();

    // The rest; re-running what is installed is idempotent.
    let states = install_in_order(&driver, &client, &[], Duration::from_secs(10), |_| {})
        .await
        .unwrap();
    assert_eq!(
        states.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["cert-manager", "capsule", "capsule-proxy", "kubevela"]
    );
    let caps = observe_capabilities(&client).await.unwrap();
    assert!(caps.cert_manager && caps.capsule && caps.capsule_proxy && caps.kube_vela);
    let svc: Api<Service> = Api::namespaced(client.clone(), "capsule-system");
    assert!(svc.get_opt("capsule-proxy").await.unwrap().is_some());

    // A component whose Deployment goes away loses its capability.
    let d: Api<Deployment> = Api::namespaced(client.clone(), "vela-system");
    d.delete("kubevela-vela-core", &Default::default())
        .await
        .unwrap();
    assert!(!observe_capabilities(&client).await.unwrap().kube_vela);
}

/// A driver that installs nothing: readiness never comes.
struct Broken(Arc<Mutex<Vec<String>>>);

#[async_trait]
impl ComponentDriver for Broken {
    async fn install(&self, c: &Component) -> Result<String, ComponentError> {
        self.0.lock().unwrap().push(c.name.to_string());
        Ok(c.version.to_string())
    }
}

#[tokio::test]
async fn a_component_that_never_gets_ready_stops_the_sequence() {
    let c = cluster().await;
    let client = c.client().unwrap();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let states = install_in_order(
        &Broken(calls.clone()),
        &client,
        &[],
        Duration::from_millis(300),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(states.len(), 1, "{states:?}");
    assert_eq!(states[0].phase, ComponentPhase::Failed);
    assert!(
        states[0]
            .message
            .contains("deployment cert-manager/cert-manager not available"),
        "{}",
        states[0].message
    );
    assert_eq!(
        *calls.lock().unwrap(),
        ["cert-manager"],
        "capsule must wait for cert-manager"
    );
    let err = install_in_order(
        &Broken(calls),
        &client,
        &["mysql".to_string()],
        Duration::from_millis(10),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("unknown component \"mysql\""),
        "{err}"
    );
    assert!(component("operator").is_none());
}
