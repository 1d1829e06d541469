//! The offline subcommands of the binary: `render -f` and `crds`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn operator(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kubenova-operator"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn render_several_documents() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("all.yaml");
    let docs: Vec<String> = ["novatenant.yaml", "novaproject.yaml", "novaapp.yaml"]
        .iter()
        .map(|f| std::fs::read_to_string(repo().join("examples/crds").join(f)).unwrap())
        .collect();
    std::fs::write(&input, docs.join("\n---\n")).unwrap();
    let (ok, stdout, stderr) = operator(&["render", "-f", input.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let expected = kubenova_reconcile::render(
        &docs.join("\n---\n"),
        kubenova_api::catalog::Catalog::builtin_ref(),
    )
    .unwrap();
    assert_eq!(stdout, expected);
    for kind in [
        "kind: Tenant",
        "kind: Namespace",
        "kind: RoleBinding",
        "kind: Application",
    ] {
        assert!(stdout.contains(kind), "{kind} missing");
    }
}

#[test]
fn render_refuses_an_unknown_plan() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.yaml");
    std::fs::write(
        &input,
        "apiVersion: kubenova.io/v1alpha1\nkind: NovaTenant\nmetadata: {name: x}\nspec: {plan: diamond}\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = operator(&["render", "-f", input.to_str().unwrap()]);
    assert!(!ok);
    assert!(stdout.is_empty());
    assert!(stderr.contains("unknown plan \"diamond\""), "{stderr}");
}

#[test]
fn crds_match_the_committed_manifests() {
    let (ok, stdout, stderr) = operator(&["crds"]);
    assert!(ok, "{stderr}");
    for (file, yaml) in kubenova_reconcile::crds::crd_files().unwrap() {
        let committed = std::fs::read_to_string(repo().join("deploy/crds").join(&file)).unwrap();
        assert_eq!(yaml, committed, "{file} drifted");
        assert!(stdout.contains(&committed), "{file} missing from `crds`");
    }
}

/// The operator with a clean environment: no inherited kubeconfig or `KUBENOVA_*`
/// variable decides what the command line means.
fn operator_clean(args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubenova-operator"));
    for (k, _) in std::env::vars() {
        if k.starts_with("KUBENOVA_") || k == "KUBECONFIG" || k == "POD_NAME" {
            cmd.env_remove(k);
        }
    }
    let out = cmd.args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn run_options_work_before_and_after_run() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such.kubeconfig");
    let missing = missing.to_str().unwrap();
    for args in [
        vec!["--kubeconfig", missing, "run", "--listen", "127.0.0.1:0"],
        vec!["run", "--kubeconfig", missing, "--listen", "127.0.0.1:0"],
        vec!["--kubeconfig", missing, "--listen", "127.0.0.1:0"],
    ] {
        let (ok, _, stderr) = operator_clean(&args);
        assert!(!ok, "{args:?}: {stderr}");
        // The kubeconfig given is the one read: never a silent fallback to ~/.kube/config.
        assert!(
            stderr.contains(&format!("reading kubeconfig {missing}")),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn catalog_works_before_and_after_render() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("t.yaml");
    std::fs::copy(repo().join("examples/crds/novatenant.yaml"), &input).unwrap();
    let missing = dir.path().join("no-such-catalog.yaml");
    for args in [
        vec![
            "--catalog",
            missing.to_str().unwrap(),
            "render",
            "-f",
            input.to_str().unwrap(),
        ],
        vec![
            "render",
            "-f",
            input.to_str().unwrap(),
            "--catalog",
            missing.to_str().unwrap(),
        ],
    ] {
        let (ok, stdout, stderr) = operator_clean(&args);
        assert!(!ok, "{args:?}: the catalog was ignored:\n{stdout}");
        assert!(
            stderr.contains(&format!("loading catalog {}", missing.display())),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn run_options_with_another_command_are_refused() {
    for args in [
        vec!["--listen", "127.0.0.1:1", "crds"],
        vec!["crds", "--concurrency", "3"],
        vec!["--kubeconfig", "/x", "render", "-f", "-"],
    ] {
        let (ok, stdout, stderr) = operator_clean(&args);
        assert!(!ok, "{args:?} was accepted:\n{stdout}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert!(stderr.contains("only used by `run`"), "{args:?}: {stderr}");
    }
    // The same options as environment variables are the Deployment's way to configure
    // `run`: they never stop `crds`.
    let out = Command::new(env!("CARGO_BIN_EXE_kubenova-operator"))
        .env("KUBENOVA_LISTEN", "127.0.0.1:1")
        .env("KUBENOVA_CONCURRENCY", "3")
        .arg("crds")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn logs_follow_the_convention() {
    // A kubeconfig naming a closed port: `run` logs that it serves its health endpoints,
    // then fails reaching the API server.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("closed.kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: c\n  cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}\nusers:\n- name: u\n  user: {token: t}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\n",
    )
    .unwrap();
    kubenova_telemetry::test_support::assert_log_convention("kubenova-operator", "info", &|| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubenova-operator"));
        for (k, _) in std::env::vars() {
            if k.starts_with("KUBENOVA_") || k == "KUBECONFIG" {
                cmd.env_remove(k);
            }
        }
        cmd.arg("run").arg("--kubeconfig").arg(&kubeconfig).args([
            "--listen",
            "127.0.0.1:0",
            "--leader-election=false",
            "--no-agent",
        ]);
        cmd
    });
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
    let doc = std::fs::read_to_string(repo().join("docs/src/configuration.md")).unwrap();
    let mut missing = Vec::new();
    undocumented(
        &kubenova_operator::Cli::command(),
        &doc,
        "kubenova-operator",
        &mut missing,
    );
    assert!(
        missing.is_empty(),
        "not in docs/src/configuration.md: {missing:?}"
    );
}
