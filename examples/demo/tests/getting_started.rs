//! `docs/src/getting-started.md`, run as written: every `sh` block of the page, in order,
//! in one `bash -euo pipefail` session, in a fresh directory (with the repository's
//! `kubenova-testkit/upstream` CRDs reachable as on the page), with the real binaries on
//! `PATH` and no `KUBENOVA_*` variable set.
//!
//! One thing differs from a terminal, because tests of several engineers share one
//! machine: the manager's port 8080 and the operator's 9090 become free ports (the page's
//! `localhost:8080` and `127.0.0.1:9090` are rewritten, and `KUBENOVA_LISTEN` points the
//! manager there).
//!
//! Needs the three binaries built next to this test, `curl` (with `--json`) and `jq`;
//! skipped loudly without them, a failure when `KUBENOVA_REQUIRE_E2E=1`.
#![allow(clippy::unwrap_used, missing_docs)]

use kubenova_demo::{Binaries, free_port};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PAGE: &str = include_str!("../../../docs/src/getting-started.md");

/// The page's `sh` blocks, in order.
fn blocks() -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in PAGE.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(b), "```") => {
                out.push(std::mem::take(b));
                current = None;
            }
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    out
}

fn skip_or_fail(why: &str) {
    assert!(
        std::env::var("KUBENOVA_REQUIRE_E2E").as_deref() != Ok("1"),
        "KUBENOVA_REQUIRE_E2E=1 but {why}"
    );
    eprintln!("!!! GETTING STARTED SKIPPED: {why} !!!");
}

fn have(tool: &str, probe: &[&str]) -> bool {
    Command::new(tool)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn the_getting_started_page_runs_as_written() {
    let bins = match Binaries::locate() {
        Ok(b) => b,
        Err(e) => return skip_or_fail(&e.to_string()),
    };
    for (tool, probe) in [
        ("bash", &["--version"][..]),
        ("jq", &["--version"][..]),
        ("curl", &["--json", "{}", "--version"][..]),
    ] {
        if !have(tool, probe) {
            return skip_or_fail(&format!("{tool} is not installed (or too old)"));
        }
    }
    let blocks = blocks();
    for step in [
        "/bootstrap/operator",
        "/tenants",
        "/apps",
        "kubeconfig",
        "/usage",
        "/audit",
    ] {
        assert!(
            blocks.iter().any(|b| b.contains(step)),
            "the page has a step with {step}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::os::unix::fs::symlink(
        repo.join("kubenova-testkit").canonicalize().unwrap(),
        dir.path().join("kubenova-testkit"),
    )
    .unwrap();
    let (manager_port, operator_port) = (free_port().unwrap(), free_port().unwrap());
    let script = blocks
        .join("\n")
        .replace("localhost:8080", &format!("localhost:{manager_port}"))
        .replace("127.0.0.1:9090", &format!("127.0.0.1:{operator_port}"));
    let bin_dir = bins.manager.parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("KUBENOVA_LISTEN", format!("127.0.0.1:{manager_port}"))
        .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
        // Its own process group: the programs it starts in the background are stopped
        // with it, whatever happens.
        .process_group(0);
    for (k, _) in std::env::vars() {
        if k.starts_with("KUBENOVA_") || k == "DATABASE_URL" || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.env("KUBENOVA_LISTEN", format!("127.0.0.1:{manager_port}"));
    let mut child = cmd.spawn().unwrap();
    let group = child.id();
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = Command::new("kill")
        .args(["-TERM", "--", &format!("-{group}")])
        .status();
    let _ = child.wait();
    let stdout = std::fs::read_to_string(dir.path().join("stdout")).unwrap_or_default();
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
    let report = format!("--- script:\n{script}\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}");
    match status {
        Some(s) => assert!(s.success(), "the page's commands failed ({s}):\n{report}"),
        None => panic!("the page's commands did not finish in 240 s:\n{report}"),
    }

    // What the page shows at each step.
    let squeezed: String = stdout.split_whitespace().collect();
    for expected in [
        r#""name":"lab","status":"pending_bootstrap""#,
        r#""status":"applied""#,
        r#""certManager":true,"capsule":true,"capsuleProxy":true,"kubeVela":true"#,
        r#""name":"shop","status":"ready""#,
        r#""plan":"gold","currency":"USD""#,
        "tenant.createsuccess201",
        "project.createsuccess201",
        "app.deploysuccess202",
    ] {
        assert!(
            squeezed.contains(expected),
            "{expected:?} missing:\n{report}"
        );
    }
    assert!(
        stdout.contains("server: https://") && stdout.contains("namespace: acme-apps"),
        "the kubeconfig points at Capsule Proxy and the tenant's namespace:\n{report}"
    );
    let kubeconfig = std::fs::read_to_string(dir.path().join("acme.kubeconfig")).unwrap();
    assert!(
        kubeconfig.contains("certificate-authority-data:"),
        "{kubeconfig}"
    );
    assert!(
        !kubeconfig.contains("insecure-skip-tls-verify"),
        "{kubeconfig}"
    );
}
