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
