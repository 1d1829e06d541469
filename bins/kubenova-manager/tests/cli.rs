//! The real binary as a process.
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kubenova-manager"))
}

#[test]
fn migrate_creates_the_embedded_database_and_a_private_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .env_remove("KUBENOVA_KEKS")
        .arg("migrate")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["store"]["backend"], "sqlite");
    assert_eq!(v["store"]["migrationsCurrent"], true);
    assert!(dir.path().join("kubenova.db").exists());
    let key = dir.path().join("data/kek.keys");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The key material never reaches the logs.
    let keyline = std::fs::read_to_string(&key).unwrap();
    let secret = keyline
        .lines()
        .find(|l| !l.starts_with('#') && l.contains(':'))
        .unwrap()
        .split(':')
        .nth(1)
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains(secret.trim()));

    // Second run reuses the key and the database; rotation adds a key and re-wraps.
    let out = bin()
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .env_remove("KUBENOVA_KEKS")
        .arg("rotate-keys")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rewrapped"], 0);
    assert_eq!(
        std::fs::read_to_string(&key)
            .unwrap()
            .lines()
            .filter(|l| l.contains(':') && !l.starts_with('#'))
            .count(),
        2
    );
}

#[test]
fn bad_database_url_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .current_dir(dir.path())
        .env("DATABASE_URL", "mysql://x@y/z")
        .arg("migrate")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unsupported scheme"), "{err}");
}

#[test]
fn unreachable_postgres_is_unavailable_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .current_dir(dir.path())
        .env("DATABASE_URL", "postgres://nobody:pw@127.0.0.1:1/none")
        .arg("migrate")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("database unavailable"), "{err}");
    assert!(!err.contains("pw@"), "password must be redacted: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn store_options_work_before_and_after_the_subcommand() {
    for before in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("here.db");
        let url = format!("sqlite://{}", db.display());
        let data = dir.path().join("state");
        let store = [
            "--database-url",
            url.as_str(),
            "--data-dir",
            data.to_str().unwrap(),
        ];
        let mut cmd = bin();
        cmd.current_dir(dir.path())
            .env_remove("DATABASE_URL")
            .env_remove("KUBENOVA_DATA_DIR")
            .env_remove("KUBENOVA_KEKS")
            .env_remove("KUBENOVA_KEK_FILE");
        if before {
            cmd.args(store).arg("migrate");
        } else {
            cmd.arg("migrate").args(store);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "before={before}: {err}");
        assert!(
            db.exists(),
            "before={before}: the database given was not used"
        );
        assert!(data.join("kek.keys").exists(), "before={before}: {err}");
        assert!(!dir.path().join("kubenova.db").exists());
    }
}

#[test]
fn serve_options_before_serve_are_refused_naming_serve() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .current_dir(dir.path())
        .args(["--listen", "127.0.0.1:0", "serve"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("'serve --listen' exists"), "{err}");
    assert!(!dir.path().join("kubenova.db").exists());
}

#[test]
fn logs_follow_the_convention() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("kn.db").display());
    let data = dir.path().join("data");
    kubenova_telemetry::test_support::assert_log_convention("kubenova-manager", "info", &|| {
        let mut cmd = bin();
        cmd.current_dir(dir.path())
            .env("DATABASE_URL", &url)
            .env("KUBENOVA_DATA_DIR", &data)
            .env_remove("KUBENOVA_KEKS")
            .env_remove("KUBENOVA_KEK_FILE")
            .arg("migrate");
        cmd
    });
}

#[test]
fn admin_token_refuses_what_is_not_a_managers_data_changing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let admin_token = || {
        let out = bin()
            .current_dir(dir.path())
            .env_remove("DATABASE_URL")
            .env_remove("KUBENOVA_DATA_DIR")
            .env_remove("KUBENOVA_KEKS")
            .env_remove("KUBENOVA_KEK_FILE")
            .env_remove("KUBENOVA_JWT_SECRET")
            .arg("admin-token")
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(out.stdout.is_empty());
        String::from_utf8(out.stderr).unwrap()
    };
    // An empty folder: no secret, no keys, no database; nothing is created.
    let err = admin_token();
    assert!(
        err.contains("no token signing secret at ./data/jwt.secret: point --data-dir"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // A database that no manager ever served (no bootstrap token was issued).
    let out = bin()
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .env_remove("KUBENOVA_DATA_DIR")
        .env_remove("KUBENOVA_KEKS")
        .env_remove("KUBENOVA_KEK_FILE")
        .arg("migrate")
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(dir.path().join("data/jwt.secret"), "x".repeat(40)).unwrap();
    let err = admin_token();
    assert!(err.contains("this database was never served"), "{err}");
    assert!(!dir.path().join("data/admin.token").exists());
}

/// Every subcommand and option, and every variable an option reads, named in
/// `configuration.md`.
fn undocumented(cmd: &clap::Command, doc: &str, path: &str, out: &mut Vec<String>) {
    for arg in cmd.get_arguments() {
        if let Some(long) = arg.get_long()
            && !["help", "version"].contains(&long)
            && !doc.contains(&format!("`--{long}"))
        {
            out.push(format!("{path} --{long}"));
        }
        if let Some(env) = arg.get_env()
            && !doc.contains(&format!("`{}`", env.to_string_lossy()))
        {
            out.push(format!("{path} ${}", env.to_string_lossy()));
        }
    }
    for sub in cmd.get_subcommands() {
        let name = sub.get_name();
        if name == "help" {
            continue;
        }
        if !doc.contains(&format!("`{name}`")) {
            out.push(format!("{path} {name}"));
        }
        undocumented(sub, doc, &format!("{path} {name}"), out);
    }
}

#[test]
fn every_command_and_option_is_documented() {
    use clap::CommandFactory as _;
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/src/configuration.md"),
    )
    .unwrap();
    let mut missing = Vec::new();
    undocumented(
        &kubenova_manager::Cli::command(),
        &doc,
        "kubenova-manager",
        &mut missing,
    );
    assert!(
        missing.is_empty(),
        "not in docs/src/configuration.md: {missing:?}"
    );
}
