//! Two `kubenova-operator` **binaries** with leader election against the `kubenova-testkit`
//! binary: exactly one leads (runs the controllers); when it stops, the other takes over
//! within the lease duration and reconciles.
//!
//! Skipped loudly when the testkit binary is not built (see tests/e2e.rs).
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kubenova_api::crd::{NovaPhase, NovaTenant};
use serde_json::json;

const LEASE_SECONDS: u64 = 3;

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn testkit_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?;
    let bin = dir.join(format!("kubenova-testkit{}", std::env::consts::EXE_SUFFIX));
    bin.exists().then_some(bin)
}

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

struct Operator {
    child: Guard,
    port: u16,
    log: PathBuf,
}

impl Operator {
    fn start(dir: &Path, kubeconfig: &Path, name: &str) -> Operator {
        let port = free_port();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_kubenova-operator"))
            .env("KUBENOVA_KUBECONFIG", kubeconfig)
            .env("KUBENOVA_LISTEN", format!("127.0.0.1:{port}"))
            .env("KUBENOVA_LEADER_ELECTION", "true")
            .env("KUBENOVA_LEASE_DURATION", LEASE_SECONDS.to_string())
            .env("POD_NAME", name)
            .env("KUBENOVA_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Operator {
            child: Guard(child),
            port,
            log,
        }
    }

    fn code(&self, path: &str) -> Option<u16> {
        http_get(self.port, path).map(|(c, _)| c)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

async fn wait_ready(tenants: &Api<NovaTenant>, name: &str, ops: &[&Operator]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let phase = tenants
            .get(name)
            .await
            .unwrap()
            .status
            .and_then(|s| s.phase);
        if phase == Some(NovaPhase::Ready) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} not Ready ({phase:?}); logs:\n{}",
            ops.iter()
                .map(|o| o.log())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tenant(name: &str) -> NovaTenant {
    serde_json::from_value(json!({
        "apiVersion": "kubenova.io/v1alpha1", "kind": "NovaTenant",
        "metadata": {"name": name}, "spec": {"plan": "gold", "owners": ["alice@example.com"]}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_one_leader_and_failover() {
    let Some(testkit) = testkit_binary() else {
        eprintln!(
            "\n!!! SKIPPED two_operators_one_leader_and_failover: the kubenova-testkit binary is \
             not built. Run `cargo build -p kubenova-testkit` first.\n"
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
    let deadline = Instant::now() + Duration::from_secs(30);
    while !kubeconfig.exists() {
        assert!(Instant::now() < deadline, "testkit kubeconfig");
        std::thread::sleep(Duration::from_millis(100));
    }
    let client = client(&kubeconfig).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in kubenova_reconcile::crds::crds() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "kubenova-system"}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();

    let a = Operator::start(dir.path(), &kubeconfig, "op-a");
    let b = Operator::start(dir.path(), &kubeconfig, "op-b");
    // Both ready (leader or standby), exactly one leader, at every sample.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = [a.code("/readyz"), b.code("/readyz")];
        let leaders = [a.code("/leader"), b.code("/leader")];
        if ready == [Some(200), Some(200)] && leaders.contains(&Some(200)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready {ready:?} {leaders:?}\n{}\n---\n{}",
            a.log(),
            b.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..20 {
        let leaders = [a.code("/leader"), b.code("/leader")];
        assert_eq!(
            leaders.iter().filter(|c| **c == Some(200)).count(),
            1,
            "{leaders:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (leader, standby) = if a.code("/leader") == Some(200) {
        (a, b)
    } else {
        (b, a)
    };
    let (_, body) = http_get(standby.port, "/readyz").unwrap();
    assert!(body.contains("standby"), "{body}");
    let (_, metrics) = http_get(leader.port, "/metrics").unwrap();
    assert!(metrics.contains("kubenova_leader 1"), "{metrics}");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kubenova-system");
    let holder = leases
        .get("kubenova-operator")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    assert!(leader.log().contains("leading: starting the controllers"));
    assert!(!standby.log().contains("leading: starting the controllers"));

    let tenants: Api<NovaTenant> = Api::all(client.clone());
    tenants
        .create(&PostParams::default(), &tenant("first"))
        .await
        .unwrap();
    wait_ready(&tenants, "first", &[&leader, &standby]).await;

    // The leader stops (SIGTERM: releases the Lease): the standby takes over within the
    // lease duration and reconciles.
    let mut leader = leader;
    let stopped = Instant::now();
    #[cfg(unix)]
    assert!(
        Command::new("kill")
            .args(["-TERM", &leader.child.0.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    #[cfg(not(unix))]
    let _ = leader.child.0.kill();
    let status = leader.child.0.wait().unwrap();
    assert!(status.success() || cfg!(not(unix)), "{}", leader.log());
    loop {
        if standby.code("/leader") == Some(200) {
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(LEASE_SECONDS),
            "no takeover within the lease duration\n{}",
            standby.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let new_holder = leases
        .get("kubenova-operator")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    assert_ne!(new_holder, holder);
    tenants
        .create(&PostParams::default(), &tenant("second"))
        .await
        .unwrap();
    wait_ready(&tenants, "second", &[&standby]).await;
}
