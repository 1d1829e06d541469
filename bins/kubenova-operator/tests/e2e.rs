//! End to end: the `kubenova-operator` **binary** against the `kubenova-testkit` **binary**
//! (`serve --with-upstream-crds --simulate capsule,kubevela`).
//!
//! The testkit binary is found next to this test's executable (`target/<profile>/`);
//! `cargo test --workspace` builds it. When it is missing (e.g. `cargo test -p
//! kubenova-operator` on a clean target) the test is skipped with a loud message; build it
//! with `cargo build -p kubenova-testkit`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kubenova_api::crd::{NovaPhase, NovaTenant};
use serde_json::json;

/// Kills the child when dropped (test failures included).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn testkit_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/deps/e2e-<hash> → target/<profile>/kubenova-testkit
    let dir = exe.parent()?.parent()?;
    let bin = dir.join(format!("kubenova-testkit{}", std::env::consts::EXE_SUFFIX));
    bin.exists().then_some(bin)
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET path` on 127.0.0.1:port → (status code, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Some((code, body))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn client(kubeconfig: &Path) -> kube::Client {
    let kc = Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_binary_against_testkit_binary() {
    let Some(testkit) = testkit_binary() else {
        eprintln!(
            "\n!!! SKIPPED operator_binary_against_testkit_binary: the kubenova-testkit binary \
             is not built next to {:?}.\n!!! Run `cargo build -p kubenova-testkit` (or `cargo \
             test --workspace`) first.\n",
            std::env::current_exe().ok()
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig.yaml");
    let _apiserver = Guard(
        Command::new(&testkit)
            .args(["serve", "--port", "0", "--kubeconfig"])
            .arg(&kubeconfig)
            .args(["--with-upstream-crds", "--simulate", "capsule,kubevela"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("the testkit kubeconfig", Duration::from_secs(30), || {
        kubeconfig.exists()
    });
    let client = client(&kubeconfig).await;

    // The testkit binary knows the upstream CRDs; install ours as a user would.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in kubenova_reconcile::crds::crds() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }

    let port = free_port();
    let log = std::fs::File::create(dir.path().join("operator.log")).unwrap();
    let operator = Command::new(env!("CARGO_BIN_EXE_kubenova-operator"))
        .env("KUBENOVA_KUBECONFIG", &kubeconfig)
        .env("KUBENOVA_LISTEN", format!("127.0.0.1:{port}"))
        .env("KUBENOVA_CONCURRENCY", "4")
        .env("KUBENOVA_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut operator = Guard(operator);
    let log_text = || std::fs::read_to_string(dir.path().join("operator.log")).unwrap_or_default();

    wait_until("/readyz", Duration::from_secs(30), || {
        if let Ok(Some(status)) = operator.0.try_wait() {
            panic!("operator exited early ({status}):\n{}", log_text());
        }
        http_get(port, "/readyz").is_some_and(|(c, _)| c == 200)
    });
    assert_eq!(http_get(port, "/healthz").unwrap().0, 200);

    let tenants: Api<NovaTenant> = Api::all(client.clone());
    let nt: NovaTenant = serde_json::from_value(json!({
        "apiVersion": "kubenova.io/v1alpha1", "kind": "NovaTenant",
        "metadata": {"name": "e2e"},
        "spec": {"plan": "gold", "owners": ["alice@example.com"]}
    }))
    .unwrap();
    tenants.create(&PostParams::default(), &nt).await.unwrap();

    let capsule: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("capsule.clastix.io", "v1beta2", "Tenant"),
            "tenants",
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tenant = capsule.get_opt("e2e").await.unwrap();
        let phase = tenants
            .get("e2e")
            .await
            .unwrap()
            .status
            .and_then(|s| s.phase);
        if tenant.is_some() && phase == Some(NovaPhase::Ready) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "NovaTenant not Ready (phase {phase:?}, Capsule Tenant {}):\n{}",
            tenant.is_some(),
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (code, body) = http_get(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        body.contains("kubenova_reconcile_total{"),
        "metrics:\n{body}"
    );
    // The tenant gauges are declared by default (they get series from the usage samples
    // of the agent, which this operator without a manager does not run).
    assert!(
        body.contains("# TYPE kubenova_tenant_cpu_requests_cores gauge"),
        "metrics:\n{body}"
    );

    // Graceful shutdown on SIGTERM.
    #[cfg(unix)]
    {
        let pid = operator.0.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(s) = operator.0.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "operator ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(status.success(), "exit {status}:\n{}", log_text());
        assert!(log_text().contains("stopped"));
    }
}
