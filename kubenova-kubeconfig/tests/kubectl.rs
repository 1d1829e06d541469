//! Issued kubeconfigs as a real client sees them: `kubectl config view --minify --raw`, and
//! a ServiceAccount kubeconfig used by kubectl against the testkit API server over HTTPS.
//! Skipped with a notice when kubectl is not installed.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use kubenova_api::model::AccessRole;
use kubenova_kubeconfig::{
    Credential, KubeconfigExt, KubeconfigRequest, ProxyCa, ServiceAccountKubeconfigRequest,
    service_account_kubeconfig,
};

const CA: &str = include_str!("fixtures/proxy-ca.pem");

fn kubectl_present() -> bool {
    let ok = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("NOTICE: kubectl not installed; skipping the kubectl checks");
    }
    ok
}

fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn kubectl_config_view_accepts_token_and_exec_kubeconfigs() {
    if !kubectl_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for credential in [
        Credential::Token("header.claims.signature".into()),
        Credential::Exec {
            manager_url: "https://manager.example.com".into(),
            tenant: "acme".into(),
            project: None,
            role: AccessRole::Viewer,
        },
    ] {
        let req = KubeconfigRequest {
            cluster_name: "prod-eu".into(),
            tenant: "acme".into(),
            project: None,
            role: AccessRole::Viewer,
            proxy_url: "https://capsule-proxy.example.com:9001".into(),
            proxy_ca: ProxyCa::from_pem(CA).unwrap(),
            namespace: "acme-apps".into(),
            credential,
        };
        for (ext, text) in [
            ("yaml", req.build().unwrap().to_yaml().unwrap()),
            ("json", req.build().unwrap().to_json().unwrap()),
        ] {
            let path = dir.path().join(format!("kc.{ext}"));
            std::fs::write(&path, &text).unwrap();
            let (ok, out, err) = kubectl(
                &path,
                &["config", "view", "--minify", "--raw", "-o", "json"],
            );
            assert!(ok, "kubectl rejected the {ext} kubeconfig: {err}\n{text}");
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["current-context"], "prod-eu-acme-viewer");
            assert_eq!(v["contexts"][0]["context"]["namespace"], "acme-apps");
            assert_eq!(
                v["clusters"][0]["cluster"]["server"],
                "https://capsule-proxy.example.com:9001"
            );
            assert!(v["clusters"][0]["cluster"]["certificate-authority-data"].is_string());
            assert!(v["clusters"][0]["cluster"]["insecure-skip-tls-verify"].is_null());
        }
    }
}

#[tokio::test]
async fn kubectl_uses_a_service_account_kubeconfig_against_the_testkit() {
    if !kubectl_present() {
        return;
    }
    let cluster = kubenova_testkit::TestCluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    let mut n = Namespace::default();
    n.metadata.name = Some("ci".into());
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &n)
        .await
        .unwrap();
    let mut s = ServiceAccount::default();
    s.metadata.name = Some("builder".into());
    Api::<ServiceAccount>::namespaced(client.clone(), "ci")
        .create(&PostParams::default(), &s)
        .await
        .unwrap();
    let out = service_account_kubeconfig(
        &client,
        &ServiceAccountKubeconfigRequest {
            cluster_name: "testkit".into(),
            namespace: "ci".into(),
            service_account: "builder".into(),
            expiration_seconds: 600,
            server_url: cluster.url().into(),
            ca_pem: cluster.ca_pem().into(),
            audiences: Vec::new(),
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sa.yaml");
    std::fs::write(&path, out.kubeconfig.to_yaml().unwrap()).unwrap();
    // kubectl runs as a child process; keep the runtime free to serve it. Listing needs an
    // authenticated user (only /version and health are public) and uses the context
    // namespace.
    let (ok, stdout, err) = tokio::task::spawn_blocking(move || {
        kubectl(
            &path,
            &[
                "get",
                "serviceaccounts",
                "-o",
                "name",
                "--request-timeout=20s",
            ],
        )
    })
    .await
    .unwrap();
    assert!(
        ok,
        "kubectl failed over verified TLS with the SA token: {err}"
    );
    assert_eq!(stdout.trim(), "serviceaccount/builder");
    cluster.shutdown().await;
}
