//! The `kubenova-testkit` binary as a process: its logs.
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::Command;

#[test]
fn logs_follow_the_convention() {
    // `serve` logs the emulated cluster's start, then fails writing the kubeconfig into a
    // folder that does not exist.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("missing-folder/kubeconfig");
    kubenova_telemetry::test_support::assert_log_convention("kubenova-testkit", "info", &|| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubenova-testkit"));
        cmd.args(["serve", "--port", "0", "--kubeconfig"])
            .arg(&kubeconfig);
        cmd
    });
}
