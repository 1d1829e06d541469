//! Component installs with the simulated driver against `kubenova-testkit`: CRDs are
//! registered through the API, Deployments appear available, capabilities follow what is
//! really served, and the install order and failure handling hold. The Helm driver with
//! the opt-in installer identity runs a stand-in `helm` script that records what it got.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Role, RoleBinding};
use kube::api::Api;
use kube::config::Kubeconfig;
use kubenova_api::model::{Capabilities, ComponentPhase};
use kubenova_reconcile::components::{
    ApiEndpoint, Component, ComponentDriver, ComponentError, HelmCli, InstallerIdentity,
    SimulatedDriver, component, install_in_order, observe_capabilities,
};
use kubenova_reconcile::manifests::{
    INSTALLER_NAME, INSTALLER_TOKEN_ROLE, OPERATOR_NAMESPACE, OperatorParams, operator_manifests,
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

// ---- Helm driver with the opt-in installer identity -------------------------------------

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let p =
            std::env::temp_dir().join(format!("kn-fake-helm-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A stand-in `helm` that records its arguments, and a copy of the kubeconfig it was
/// handed with its and its directory's modes, under `<dir>/record.*`.
fn fake_helm(dir: &std::path::Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let out = dir.join("record");
    let script = format!(
        r#"#!/bin/sh
set -eu
out='{}'
printf '%s\n' "$@" > "$out.args"
kc=""
prev=""
for a in "$@"; do
  if [ "$prev" = "--kubeconfig" ]; then kc="$a"; fi
  prev="$a"
done
if [ -n "$kc" ]; then
  stat -c '%a' "$kc" > "$out.mode"
  stat -c '%a' "$(dirname "$kc")" > "$out.dirmode"
  cp "$kc" "$out.kubeconfig"
fi
"#,
        out.display()
    );
    let path = dir.join("helm");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A testkit cluster with the installer objects of `operator_manifests` (installer mode).
async fn cluster_with_installer() -> TestCluster {
    use kube::api::{Patch, PatchParams};
    let c = cluster().await;
    let client = c.client().unwrap();
    let m = operator_manifests(&OperatorParams {
        helm_installer: true,
        ..OperatorParams::default()
    });
    let pp = PatchParams::apply("test").force();
    Api::<Namespace>::all(client.clone())
        .patch(OPERATOR_NAMESPACE, &pp, &Patch::Apply(&m.namespace))
        .await
        .unwrap();
    let i = m.installer.unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), OPERATOR_NAMESPACE)
        .patch(INSTALLER_NAME, &pp, &Patch::Apply(&i.service_account))
        .await
        .unwrap();
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(INSTALLER_NAME, &pp, &Patch::Apply(&i.cluster_role_binding))
        .await
        .unwrap();
    Api::<Role>::namespaced(client.clone(), OPERATOR_NAMESPACE)
        .patch(INSTALLER_TOKEN_ROLE, &pp, &Patch::Apply(&i.token_role))
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), OPERATOR_NAMESPACE)
        .patch(
            INSTALLER_TOKEN_ROLE,
            &pp,
            &Patch::Apply(&i.token_role_binding),
        )
        .await
        .unwrap();
    c
}

fn installer(c: &TestCluster, service_account: &str) -> InstallerIdentity {
    InstallerIdentity {
        service_account: service_account.into(),
        endpoint: Some(ApiEndpoint {
            server_url: c.url().into(),
            ca_pem: c.ca_pem().into(),
        }),
        ..InstallerIdentity::new(c.client().unwrap(), OPERATOR_NAMESPACE)
    }
}

async fn review(c: &TestCluster, token: &str) -> TokenReviewStatus {
    let tr = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_owned(),
            ..TokenReviewSpec::default()
        },
        ..TokenReview::default()
    };
    Api::<TokenReview>::all(c.client().unwrap())
        .create(&Default::default(), &tr)
        .await
        .unwrap()
        .status
        .unwrap()
}

#[tokio::test]
async fn helm_runs_with_a_short_lived_installer_token() {
    let c = cluster_with_installer().await;
    let dir = Scratch::new();
    let helm = HelmCli {
        binary: fake_helm(dir.path()),
        use_remote: true,
        timeout: Duration::from_secs(30),
        installer: Some(installer(&c, INSTALLER_NAME)),
        ..HelmCli::default()
    };
    let capsule = component("capsule").unwrap();
    let debug = format!("{helm:?}");
    assert!(debug.contains("kubenova-installer"), "{debug}");
    assert_eq!(helm.install(capsule).await.unwrap(), "0.14.6");

    // helm got `--kubeconfig <private temp file>`, removed once helm exited.
    let args: Vec<String> = std::fs::read_to_string(dir.path().join("record.args"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let at = args.iter().position(|a| a == "--kubeconfig").unwrap();
    assert_eq!(
        args.iter().filter(|a| *a == "--kubeconfig").count(),
        1,
        "{args:?}"
    );
    let path = PathBuf::from(&args[at + 1]);
    assert!(path.starts_with(std::env::temp_dir()), "{}", path.display());
    assert!(!path.exists(), "the kubeconfig outlived helm");
    assert!(!path.parent().unwrap().exists(), "its directory too");
    let mode = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
    assert_eq!(mode("record.mode").trim(), "600");
    assert_eq!(mode("record.dirmode").trim(), "700");

    // The kubeconfig's user is the installer ServiceAccount (per TokenReview), pointing at
    // the cluster with its CA; the token is nowhere on the command line.
    let yaml = std::fs::read_to_string(dir.path().join("record.kubeconfig")).unwrap();
    let kc = Kubeconfig::from_yaml(&yaml).unwrap();
    let cluster = kc.clusters[0].cluster.as_ref().unwrap();
    assert_eq!(cluster.server.as_deref(), Some(c.url()));
    assert!(cluster.certificate_authority_data.is_some());
    assert_ne!(cluster.insecure_skip_tls_verify, Some(true));
    let token = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    assert!(token.len() > 20);
    assert!(args.iter().all(|a| !a.contains(&token)));
    let status = review(&c, &token).await;
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    assert_eq!(
        status.user.unwrap().username.as_deref(),
        Some("system:serviceaccount:kubenova-system:kubenova-installer")
    );

    // Bounded lifetime: the helm timeout plus a minute, at least the API server's 10 min.
    assert_eq!(helm.installer_token_seconds(), 600);
    let long = HelmCli {
        timeout: Duration::from_secs(900),
        ..helm.clone()
    };
    assert_eq!(long.installer_token_seconds(), 960);
    let huge = HelmCli {
        timeout: Duration::from_secs(24 * 3600),
        ..helm.clone()
    };
    assert_eq!(huge.installer_token_seconds(), 3600);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let k = installer(&c, INSTALLER_NAME)
        .kubeconfig_file(helm.installer_token_seconds())
        .await
        .unwrap();
    let lifetime = k.expires_at_unix() - before;
    assert!((590..=610).contains(&lifetime), "{lifetime}");
    let kept = k.path().to_owned();
    assert!(kept.exists());
    drop(k);
    assert!(!kept.exists());
    c.shutdown().await;
}

#[tokio::test]
async fn without_the_installer_helm_gets_no_kubeconfig_and_a_missing_one_fails_first() {
    let c = cluster_with_installer().await;
    let dir = Scratch::new();
    let capsule = component("capsule").unwrap();

    // Default: helm runs with the operator's own identity (no --kubeconfig at all).
    let plain = HelmCli {
        binary: fake_helm(dir.path()),
        use_remote: true,
        ..HelmCli::default()
    };
    plain.install(capsule).await.unwrap();
    let args = std::fs::read_to_string(dir.path().join("record.args")).unwrap();
    assert!(!args.contains("--kubeconfig"), "{args}");
    std::fs::remove_file(dir.path().join("record.args")).unwrap();

    // An installer ServiceAccount that does not exist: a clear error, helm never runs.
    let missing = HelmCli {
        installer: Some(installer(&c, "nobody")),
        ..plain.clone()
    };
    let err = missing.install(capsule).await.unwrap_err();
    assert!(
        matches!(&err, ComponentError::Installer { service_account, .. } if service_account == "nobody"),
        "{err}"
    );
    assert!(
        err.to_string().contains("--operator-helm-installer"),
        "{err}"
    );
    assert!(!dir.path().join("record.args").exists(), "helm ran");

    // A chart that is not baked: no token is requested for an install that cannot start.
    let baked = HelmCli {
        use_remote: false,
        charts_dir: dir.path().join("no-charts"),
        installer: Some(installer(&c, "nobody")),
        ..plain.clone()
    };
    assert!(matches!(
        baked.install(capsule).await,
        Err(ComponentError::ChartMissing(_))
    ));
    c.shutdown().await;
}

/// The manager's bootstrap applies the installer identity only when asked, and then the
/// operator can get installer tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_applies_the_installer_identity_only_when_asked() {
    use kubenova_reconcile::bootstrap::{BootstrapParams, bootstrap, client_from_kubeconfig};
    let c = TestCluster::start().await.unwrap();
    let mut p = BootstrapParams::new(
        "ghcr.io/kubenova/kubenova-operator:0.1.0",
        "https://kubenova.example.com",
        "kna_x_0123456789012345678901234567890123456789",
    );
    let client = client_from_kubeconfig(c.kubeconfig_yaml().as_bytes(), &p)
        .await
        .unwrap();
    let plain = bootstrap(&client, &p).await.unwrap();
    assert!(
        plain
            .applied
            .iter()
            .all(|a| !a.contains("installer") && !a.contains("kubenova-operator-installer")),
        "{:?}",
        plain.applied
    );
    let admin = c.client().unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), OPERATOR_NAMESPACE);
    assert!(sas.get_opt(INSTALLER_NAME).await.unwrap().is_none());

    p.helm_installer = true;
    let with = bootstrap(&client, &p).await.unwrap();
    let added: Vec<&String> = with
        .applied
        .iter()
        .filter(|a| !plain.applied.contains(a))
        .collect();
    assert_eq!(
        added,
        [
            "ServiceAccount/kubenova-system/kubenova-installer",
            "ClusterRoleBinding/kubenova-installer",
            "Role/kubenova-system/kubenova-operator-installer-token",
            "RoleBinding/kubenova-system/kubenova-operator-installer-token",
        ]
    );
    assert!(sas.get_opt(INSTALLER_NAME).await.unwrap().is_some());
    let d = Api::<Deployment>::namespaced(admin.clone(), OPERATOR_NAMESPACE)
        .get("kubenova-operator")
        .await
        .unwrap();
    let env = d.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    assert!(
        env.iter()
            .any(|e| e.name == "KUBENOVA_INSTALLER_SERVICE_ACCOUNT"
                && e.value.as_deref() == Some(INSTALLER_NAME))
    );
    let k = installer(&c, INSTALLER_NAME)
        .kubeconfig_file(600)
        .await
        .unwrap();
    assert!(k.path().exists());
    c.shutdown().await;
}

/// The endpoint of a client configuration (what the operator infers in a pod) is the
/// API server URL and its CA as PEM, and serves an installer kubeconfig.
#[tokio::test]
async fn the_endpoint_comes_from_the_client_configuration() {
    let c = cluster_with_installer().await;
    let kc = Kubeconfig::from_yaml(&c.kubeconfig_yaml()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let endpoint = ApiEndpoint::from_config(&config).unwrap();
    assert_eq!(endpoint.server_url, c.url().trim_end_matches('/'));
    let body = |pem: &str| -> String {
        pem.lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>()
    };
    assert!(endpoint.ca_pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
    assert_eq!(body(&endpoint.ca_pem), body(c.ca_pem()));
    let identity = InstallerIdentity {
        endpoint: Some(endpoint),
        ..InstallerIdentity::new(c.client().unwrap(), OPERATOR_NAMESPACE)
    };
    let k = identity.kubeconfig_file(600).await.unwrap();
    let written = Kubeconfig::read_from(k.path()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(written, &Default::default())
        .await
        .unwrap();
    // The written kubeconfig works on its own (CA verified) as the installer.
    let client = kube::Client::try_from(config).unwrap();
    Api::<ServiceAccount>::namespaced(client, OPERATOR_NAMESPACE)
        .get(INSTALLER_NAME)
        .await
        .unwrap();
    c.shutdown().await;
}
