//! The binary as a process: its command line and its logs.
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::Command;

const TENANT: &str = "0190f5a4-0000-7000-8000-000000000001";

fn token_against_a_closed_port() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubenova"));
    cmd.env("KUBENOVA_TOKEN", "not-a-real-token")
        .env_remove("KUBENOVA_TOKEN_FILE")
        .env_remove("KUBENOVA_CA_FILE")
        .args([
            "auth",
            "token",
            "--manager",
            "http://127.0.0.1:1",
            "--tenant",
            TENANT,
            "--role",
            "viewer",
        ]);
    cmd
}

#[test]
fn logs_follow_the_convention() {
    // At debug the CLI logs the request it makes; the request then fails (closed port).
    kubenova_telemetry::test_support::assert_log_convention(
        "kubenova",
        "debug",
        &token_against_a_closed_port,
    );
}

#[test]
fn a_failure_is_one_plain_line_and_no_log_by_default() {
    let mut cmd = token_against_a_closed_port();
    for var in ["KUBENOVA_LOG", "RUST_LOG", "KUBENOVA_LOG_FORMAT"] {
        cmd.env_remove(var);
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    // kubectl shows the exec plugin's stderr to the user: only the error.
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("kubenova: cannot reach the manager at http://127.0.0.1:1"),
        "{err}"
    );
}

#[test]
fn options_on_the_wrong_level_are_refused_naming_the_right_one() {
    let out = Command::new(env!("CARGO_BIN_EXE_kubenova"))
        .args(["auth", "--manager", "http://127.0.0.1:1", "token"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("'token --manager' exists"), "{err}");
}

/// The options a `--help` text lists (the lines that start with one).
fn options_in_help(args: &[&str]) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_kubenova"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    help.lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| {
            l.split([' ', ',', '='])
                .find(|w| w.starts_with("--") && w.len() > 2)
        })
        .filter(|w| *w != "--help" && *w != "--version")
        .map(str::to_string)
        .collect()
}

#[test]
fn every_command_and_option_is_documented() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/src/configuration.md"),
    )
    .unwrap();
    let mut missing = Vec::new();
    for cmd in [&["auth", "token"][..], &["login"], &["logout"]] {
        let name = format!("`kubenova {}`", cmd.join(" "));
        if !doc.contains(&name) {
            missing.push(name);
        }
        let mut help = cmd.to_vec();
        help.push("--help");
        for opt in options_in_help(&help) {
            if !doc.contains(&format!("`{opt}")) {
                missing.push(opt);
            }
        }
    }
    for var in ["KUBENOVA_TOKEN", "KUBENOVA_TOKEN_FILE", "KUBENOVA_CA_FILE"] {
        if !doc.contains(&format!("`{var}`")) {
            missing.push(var.to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "not in docs/src/configuration.md: {missing:?}"
    );
}
