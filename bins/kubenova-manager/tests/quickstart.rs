//! The README's quick start, run as written: every `sh` block of its "Quick start"
//! section, in order, in a fresh directory with no `KUBENOVA_*` variable set. A block
//! that starts a program (`cargo run -p <binary> -- <args>`) starts that binary (built
//! next to this test) with those arguments and waits until it serves; every other block
//! runs in `bash -euo pipefail`, except `open` lines (they open a browser).
//!
//! Two things differ from a terminal, both because tests of several engineers share one
//! machine: the manager listens on a free loopback port (`KUBENOVA_LISTEN`, the variable
//! of `--listen`) instead of 8080, and the blocks' `localhost:8080` / `127.0.0.1:8080` name
//! that port.
//!
//! Needs `kubenova-testkit` built next to this test (`cargo build -p kubenova-testkit
//! --bins`), `curl` and `jq`; skipped loudly without them, a failure when
//! `KUBENOVA_REQUIRE_E2E=1`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const README: &str = include_str!("../../../README.md");

/// The `sh` blocks of the README's "Quick start" section.
fn quick_start_blocks() -> Vec<String> {
    let start = README
        .find("\n## Quick start")
        .expect("the README has a Quick start section");
    let rest = &README[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    let section = &rest[..end];
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in section.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(std::mem::take(b));
                current = None;
            }
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

fn skip_or_fail(why: &str) {
    assert!(
        std::env::var("KUBENOVA_REQUIRE_E2E").as_deref() != Ok("1"),
        "KUBENOVA_REQUIRE_E2E=1 but {why}"
    );
    eprintln!("!!! QUICK START SKIPPED: {why} !!!");
}

/// A binary next to this test (`target/<profile>/`).
fn binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join(&file))
        .find(|p| p.exists())
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A started program, killed when dropped; its stderr goes to a file.
struct Started {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Started {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command with the environment of a fresh terminal: no KubeNova variable, no database.
fn clean(program: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("KUBENOVA_") || k == "DATABASE_URL" || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn wait_until(what: &str, started: &mut [Started], mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        for s in started.iter_mut() {
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("{} exited ({status}) before {what}:\n{}", s.name, s.log());
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_ok(port: u16, path: &str) -> bool {
    Command::new("curl")
        .args([
            "-fsS",
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{port}{path}"),
        ])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn the_readme_quick_start_registers_and_bootstraps_a_cluster() {
    let manager = PathBuf::from(env!("CARGO_BIN_EXE_kubenova-manager"));
    let Some(testkit) = binary("kubenova-testkit") else {
        return skip_or_fail(
            "kubenova-testkit is not built next to this test (cargo build -p kubenova-testkit --bins)",
        );
    };
    for tool in ["curl", "jq", "bash"] {
        if !have(tool) {
            return skip_or_fail(&format!("{tool} is not installed"));
        }
    }
    let blocks = quick_start_blocks();
    assert!(
        blocks.iter().any(|b| b.contains("/bootstrap/operator")),
        "the quick start bootstraps a cluster: {blocks:#?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut started: Vec<Started> = Vec::new();
    let mut outputs = Vec::new();
    for block in &blocks {
        let first = block.lines().next().unwrap_or_default();
        if let Some(rest) = first.strip_prefix("cargo run -p ") {
            let (bin, args) = rest
                .split_once(" -- ")
                .unwrap_or_else(|| panic!("unexpected command {first:?}"));
            let args: Vec<&str> = args.split_whitespace().collect();
            let (program, ready): (&Path, Box<dyn Fn() -> bool>) = match bin.trim() {
                "kubenova-manager" => (
                    manager.as_path(),
                    Box::new(move || http_ok(port, "/api/v1/readyz")),
                ),
                "kubenova-testkit" => {
                    let pos = args
                        .iter()
                        .position(|a| *a == "--kubeconfig")
                        .expect("the testkit writes a kubeconfig");
                    let file = dir.path().join(args[pos + 1]);
                    (testkit.as_path(), Box::new(move || file.exists()))
                }
                other => panic!("the quick start starts {other}, which this test does not know"),
            };
            let log = dir.path().join(format!("{}.log", bin.trim()));
            let mut cmd = clean(program, dir.path());
            cmd.args(&args)
                .env("KUBENOVA_LISTEN", format!("127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap());
            started.push(Started {
                name: bin.trim().to_string(),
                child: cmd.spawn().unwrap(),
                log,
            });
            wait_until(&format!("{bin} to serve"), &mut started, ready);
            continue;
        }
        let script: String = block
            .lines()
            .filter(|l| !l.trim_start().starts_with("open "))
            .map(|l| {
                l.replace("localhost:8080", &format!("localhost:{port}"))
                    .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
            })
            .collect::<Vec<_>>()
            .join("\n");
        let out = clean(Path::new("bash"), dir.path())
            .args(["-euo", "pipefail", "-c", &script])
            .output()
            .unwrap();
        let logs: Vec<String> = started
            .iter()
            .map(|s| format!("--- {}:\n{}", s.name, s.log()))
            .collect();
        assert!(
            out.status.success(),
            "{script}\nfailed: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            logs.join("\n")
        );
        outputs.push(String::from_utf8_lossy(&out.stdout).to_string());
    }

    // The last block bootstraps: its jq summary says applied, and names the URL the
    // operator was told (the manager's own loopback address) and why.
    let last = outputs.last().unwrap();
    let answer: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("the bootstrap answer is not JSON ({e}): {last}"));
    assert_eq!(answer["status"], "applied", "{answer}");
    let url = format!("http://127.0.0.1:{port}");
    assert_eq!(answer["agentManagerUrl"], url.as_str(), "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("--listen") && message.contains("--agent-manager-url"),
        "{message}"
    );
    // The manager logged where agents are sent.
    let manager_log = started[0].log();
    assert!(
        manager_log
            .lines()
            .any(|l| l.contains(&url) && l.contains("agent")),
        "{manager_log}"
    );
}
