//! The `kubenova-demo` binary as a process: its command line, and `--keep`, which leaves
//! the stack running until Ctrl-C.
//!
//! The manager, operator and testkit binaries are found next to this test (`cargo test
//! --workspace` builds them); without them the `--keep` test is skipped loudly, and
//! `KUBENOVA_REQUIRE_E2E=1` makes that a failure.
#![allow(clippy::unwrap_used, missing_docs)]

use kubenova_demo::Binaries;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn demo() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubenova-demo"));
    cmd.env_remove("DATABASE_URL");
    cmd
}

#[test]
fn help_and_version_answer_without_running_the_demo() {
    let out = demo().arg("--help").output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Usage: kubenova-demo"), "{stdout}");
    assert!(stdout.contains("--keep"), "{stdout}");
    assert!(!stdout.contains("[1]"), "the demo ran:\n{stdout}");

    let out = demo().arg("--version").output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert_eq!(
        stdout.trim(),
        format!("kubenova-demo {}", env!("CARGO_PKG_VERSION"))
    );

    let out = demo().arg("--kep").output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unexpected argument '--kep'"), "{stderr}");
    assert!(out.stdout.is_empty());
}

/// The demo process; interrupted (like Ctrl-C) and reaped if the test fails half-way, so
/// that no stack is left running.
struct Running(Option<std::process::Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            for _ in 0..200 {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `name: value` printed by the demo on one of its lines.
fn field(lines: &[String], name: &str) -> String {
    let prefix = format!("{name}:");
    lines
        .iter()
        .find_map(|l| l.trim().strip_prefix(&prefix))
        .map(|v| v.split_whitespace().next().unwrap_or_default().to_string())
        .unwrap_or_else(|| panic!("no `{name}:` line in:\n{}", lines.join("\n")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_leaves_the_stack_running_until_ctrl_c() {
    if let Err(e) = Binaries::locate() {
        assert!(
            std::env::var("KUBENOVA_REQUIRE_E2E").as_deref() != Ok("1"),
            "KUBENOVA_REQUIRE_E2E=1 but {e}"
        );
        eprintln!("!!! DEMO --keep SKIPPED: {e} !!!");
        return;
    }
    let mut running = Running(Some(
        demo()
            .arg("--keep")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    ));
    let stdout = running.0.as_mut().unwrap().stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    // Until the demo says it waits for Ctrl-C (or ends, or takes far too long).
    let mut lines = Vec::new();
    let waiting = tokio::task::spawn_blocking(move || {
        loop {
            match rx.recv_timeout(Duration::from_secs(300)) {
                Ok(line) => {
                    let done = line.contains("Ctrl-C");
                    lines.push(line);
                    if done {
                        return (lines, rx);
                    }
                }
                Err(_) => panic!("the demo did not get to waiting:\n{}", lines.join("\n")),
            }
        }
    });
    let (mut lines, rx) = waiting.await.unwrap();

    // Conditions are readable lines, not JSON.
    let text = lines.join("\n");
    assert!(
        lines.iter().any(|l| l.trim().starts_with("Ready=True  ")),
        "{text}"
    );
    assert!(!text.contains("\"lastTransitionTime\""), "{text}");

    // What it printed works: the manager answers the token, the kubeconfig reaches the
    // emulated cluster, and the tenant made by the demo is there to explore.
    let manager = field(&lines, "manager");
    let token = field(&lines, "admin token");
    let kubeconfig = std::path::PathBuf::from(field(&lines, "kubeconfig"));
    let http = reqwest::Client::new();
    let me: serde_json::Value = http
        .get(format!("{manager}/api/v1/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["roles"][0], "admin", "{me}");
    let client = kubenova_demo::client_from(&kubeconfig).await.unwrap();
    let tenants: kube::Api<kube::api::DynamicObject> = kube::Api::all_with(
        client,
        &kube::core::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk("capsule.clastix.io", "v1beta2", "Tenant"),
            "tenants",
        ),
    );
    assert!(tenants.get_opt("acme").await.unwrap().is_some());

    // Ctrl-C: everything stops, cleanly, and the scratch folder goes.
    let mut child = running.0.take().unwrap();
    assert!(
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    assert!(status.success(), "{status:?}:\n{}", lines.join("\n"));
    assert!(
        lines.iter().any(|l| l.contains("stopped")),
        "{}",
        lines.join("\n")
    );
    assert!(
        http.get(format!("{manager}/api/v1/healthz"))
            .send()
            .await
            .is_err(),
        "the manager still answers"
    );
    assert!(!kubeconfig.exists(), "the scratch folder is left behind");
}
