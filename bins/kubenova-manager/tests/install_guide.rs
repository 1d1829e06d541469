//! The install guide's commands are the tested ones: every `helm install`, `upgrade`,
//! `rollback` and `uninstall` line of the `sh` blocks of `docs/src/install.md` runs, in
//! the guide's order, with the real Helm engine (helm-python-sdk, `KUBENOVA_HELM_PYTHON`;
//! skipped loudly without it, a failure with `KUBENOVA_REQUIRE_HELM=1`) against an emulated
//! cluster. The CLI's flags are translated by `deploy/helm/tests/charts.py cli`, which
//! fails on any flag it does not know, so the guide cannot use one the test does not run.
//! The values files the commands name (`-f my-values.yaml`) are the guide's `yaml` blocks
//! whose first line is `# <file name>`. The guide's `kubectl` lines run in order with them,
//! through bash with the real kubectl (`KUBENOVA_KUBECTL` or the `PATH`; required on CI),
//! except `kubectl exec` (the emulated cluster runs no pods).
#![allow(clippy::unwrap_used, clippy::print_stderr, missing_docs)]

#[path = "../../../deploy/helm/tests/harness.rs"]
mod harness;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

/// The agent credential the guide's operator commands pass as `$AGENT_TOKEN`.
const AGENT_TOKEN: &str = "kn-agent-test-token";

/// The guide's commands and files.
struct Guide {
    /// `helm ...` command lines (continuations joined), in the guide's order.
    helm: Vec<String>,
    /// `helm ...` and `kubectl ...` command lines, in the guide's order.
    steps: Vec<String>,
    /// Values files: name -> YAML text.
    files: BTreeMap<String, String>,
}

fn guide() -> Guide {
    let text = std::fs::read_to_string(harness::repo().join("docs/src/install.md")).unwrap();
    let mut helm = Vec::new();
    let mut steps = Vec::new();
    let mut files = BTreeMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(lang) = line.strip_prefix("```") else {
            continue;
        };
        let lang = lang.trim().to_owned();
        let block: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect();
        match lang.as_str() {
            "sh" => {
                let mut joined = String::new();
                for l in block {
                    match l.trim_end().strip_suffix('\\') {
                        Some(head) => joined.push_str(head),
                        None => {
                            joined.push_str(l);
                            let cmd = joined.split_whitespace().collect::<Vec<_>>().join(" ");
                            if cmd.starts_with("helm ") {
                                helm.push(cmd.clone());
                            }
                            if cmd.starts_with("helm ") || cmd.starts_with("kubectl ") {
                                steps.push(cmd);
                            }
                            joined.clear();
                        }
                    }
                }
            }
            "yaml" => {
                if let Some(name) = block.first().and_then(|l| l.strip_prefix("# ")) {
                    files.insert(name.trim().to_owned(), block[1..].join("\n"));
                }
            }
            _ => {}
        }
    }
    Guide { helm, steps, files }
}

/// The guide's helm commands cover both charts and every release action (so this test
/// cannot pass on a guide that lost them), and each `-f` file is in the guide.
#[test]
fn the_guide_documents_every_release_action() {
    let g = guide();
    for want in [
        "helm install kn deploy/helm/kubenova-manager",
        "helm install ops deploy/helm/kubenova-operator",
        "helm upgrade kn deploy/helm/kubenova-manager",
        "helm upgrade ops deploy/helm/kubenova-operator",
        "helm rollback kn",
        "helm uninstall ops",
        "helm uninstall kn",
    ] {
        assert!(
            g.helm.iter().any(|c| c.starts_with(want)),
            "docs/src/install.md has no `{want} ...` in an sh block: {:#?}",
            g.helm
        );
    }
    for c in &g.helm {
        let words: Vec<&str> = c.split_whitespace().collect();
        for w in words.windows(2) {
            if ["-f", "--values"].contains(&w[0]) {
                assert!(
                    g.files.contains_key(w[1]),
                    "`{c}` names {}, but the guide has no ```yaml block starting `# {}`",
                    w[1],
                    w[1]
                );
            }
        }
    }
}

/// The real kubectl (`KUBENOVA_KUBECTL` or the `PATH`), or `None` after a loud notice; a
/// failure under `CI=true` or `KUBENOVA_REQUIRE_KUBECTL=1`.
fn kubectl() -> Option<std::path::PathBuf> {
    let found = std::env::var("KUBENOVA_KUBECTL")
        .ok()
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("kubectl"))
                    .find(|p| p.is_file())
            })
        });
    if found.is_none() {
        if std::env::var("CI").as_deref() == Ok("true")
            || std::env::var("KUBENOVA_REQUIRE_KUBECTL").as_deref() == Ok("1")
        {
            panic!(
                "kubectl is required (CI) for the install guide's kubectl lines: set KUBENOVA_KUBECTL=$(scripts/kubectl.sh)"
            );
        }
        eprintln!(
            "!!! THE INSTALL GUIDE'S KUBECTL LINES SKIPPED: no kubectl (set KUBENOVA_KUBECTL) !!!"
        );
    }
    found
}

fn log_level(d: &k8s_openapi::api::apps::v1::Deployment) -> Value {
    serde_json::to_value(d).unwrap()["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "KUBENOVA_LOG")
        .unwrap()["value"]
        .clone()
}

/// Runs every documented helm command in order against an emulated cluster. Alternatives
/// the guide offers (SQLite, then Postgres: a second `helm install` of the same release)
/// run one after the other: the earlier one is uninstalled first. `helm test` needs the
/// release's pods to run, which the emulated cluster does not, so it is reported and not
/// run. Afterwards only the documented leftovers remain: the manager's keys Secret and its
/// SQLite PersistentVolumeClaim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_helm_commands_install_upgrade_roll_back_and_uninstall() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, PostParams};

    let Some(_) = harness::helm() else { return };
    let g = guide();
    let cluster = kubenova_testkit::TestCluster::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, cluster.kubeconfig_yaml()).unwrap();
    for (name, text) in &g.files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let client = cluster.client().unwrap();
    let kubectl = kubectl();
    if kubectl.is_none() {
        // The guide's first step, `kubectl create namespace kubenova`, without kubectl.
        harness::create_namespace(&client, "kubenova").await;
    }
    // `kubectl` on the PATH of the guide's shell lines is the real one.
    let bin = dir.path().join("bin");
    if let Some(k) = &kubectl {
        std::fs::create_dir(&bin).unwrap();
        std::os::unix::fs::symlink(k, bin.join("kubectl")).unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The guide's Ingress example asks cert-manager for a Certificate: a cluster using it
    // has cert-manager's CRD (its schema is not vendored here; the kind is what matters).
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "certificates.cert-manager.io"},
                "spec": {
                    "group": "cert-manager.io",
                    "scope": "Namespaced",
                    "names": {"plural": "certificates", "singular": "certificate",
                              "kind": "Certificate", "listKind": "CertificateList"},
                    "versions": [{"name": "v1", "served": true, "storage": true,
                        "schema": {"openAPIV3Schema": {"type": "object",
                            "x-kubernetes-preserve-unknown-fields": true}}}]
                }
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let manager = "kn-kubenova-manager";
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "kubenova");
    let run = |line: String| {
        let (dir, kc) = (dir.path().to_owned(), kubeconfig.clone());
        tokio::task::spawn_blocking(move || {
            harness::Helm::from_env().cli(&line, &dir, &kc, &[("AGENT_TOKEN", AGENT_TOKEN)])
        })
    };
    let namespace_of = |c: &str| {
        let w: Vec<&str> = c.split_whitespace().collect();
        w.windows(2)
            .find(|p| ["-n", "--namespace"].contains(&p[0]))
            .map_or("default".to_owned(), |p| p[1].to_owned())
    };
    let mut installed: BTreeSet<(String, String)> = BTreeSet::new();
    // The manager's log level before each of its upgrades (a rollback returns to it).
    let mut levels: Vec<Value> = Vec::new();
    let mut ran = 0;
    let mut kubectl_ran = 0;
    for c in &g.steps {
        let w: Vec<&str> = c.split_whitespace().collect();
        if w[0] == "kubectl" {
            if kubectl.is_none() {
                continue;
            }
            if w.contains(&"exec") {
                eprintln!("!!! `{c}` NOT RUN: the emulated cluster runs no pods !!!");
                continue;
            }
            // The guide's shell line as a user's shell runs it ($(openssl ...) included).
            let out = std::process::Command::new("bash")
                .args(["-euo", "pipefail", "-c", c])
                .current_dir(dir.path())
                .env("PATH", &path)
                .env("KUBECONFIG", &kubeconfig)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "`{c}` failed against the emulated cluster:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            eprintln!("ran `{c}`");
            kubectl_ran += 1;
            continue;
        }
        if w[1] == "test" {
            eprintln!("!!! `{c}` NOT RUN: the emulated cluster runs no pods !!!");
            continue;
        }
        let name = w[2..]
            .iter()
            .find(|a| !a.starts_with('-'))
            .unwrap()
            .to_string();
        let ns = namespace_of(c);
        if w[1] == "install" && installed.contains(&(name.clone(), ns.clone())) {
            // A documented alternative to the earlier install of the same release.
            run(format!("helm uninstall {name} -n {ns}"))
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("uninstalling {name} before `{c}`: {e}"));
            installed.remove(&(name.clone(), ns.clone()));
        }
        if name == "kn"
            && w[1] == "upgrade"
            && let Some(d) = deployments.get_opt(manager).await.unwrap()
        {
            levels.push(log_level(&d));
        }
        let out = run(c.clone())
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("`{c}` failed against the emulated cluster: {e}"));
        ran += 1;
        eprintln!("ran `{c}` ({})", out["action"]);
        match w[1] {
            "install" | "upgrade" => {
                installed.insert((name.clone(), ns.clone()));
            }
            "uninstall" => {
                installed.remove(&(name.clone(), ns.clone()));
            }
            _ => {}
        }
        if name == "kn" && w[1] != "uninstall" {
            let d = deployments.get(manager).await.unwrap();
            let level = log_level(&d);
            if c.contains("-f my-values.yaml") {
                let file: Value = serde_saphyr::from_str(&g.files["my-values.yaml"]).unwrap();
                assert_eq!(level, file["logLevel"], "`{c}` did not apply the file");
            }
            if w[1] == "rollback" {
                assert_eq!(
                    Some(&level),
                    levels.last(),
                    "`{c}` did not return to the previous revision"
                );
            }
        }
        if name == "ops" && w[1] != "uninstall" {
            let agent = Api::<Secret>::namespaced(client.clone(), "kubenova-system")
                .get("kubenova-agent")
                .await
                .unwrap();
            let token = agent.data.unwrap()["token"].0.clone();
            assert_eq!(token, AGENT_TOKEN.as_bytes(), "`{c}` lost the agent token");
        }
    }
    assert!(ran >= 7, "only {ran} helm commands ran: {:#?}", g.helm);
    if kubectl.is_some() {
        assert!(
            kubectl_ran >= 4,
            "only {kubectl_ran} kubectl lines ran: {:#?}",
            g.steps
        );
    }
    assert!(
        installed.is_empty(),
        "the guide leaves {installed:?} installed"
    );

    // What stays on purpose (the guide's Uninstall section), and nothing else.
    // The Secrets the guide's kubectl lines made are the user's, not the chart's.
    let users = ["kubenova-db", "kubenova-jwt", "kubenova-kek"];
    let left: Vec<String> = harness::namespaced_objects(&client, "kubenova")
        .await
        .into_iter()
        .filter(|o| kubectl.is_none() || !users.iter().any(|u| *o == format!("Secret/{u}")))
        .collect();
    assert_eq!(
        left,
        [
            format!("PersistentVolumeClaim/{manager}-data"),
            format!("Secret/{manager}-keys")
        ],
        "the guide's uninstall left more than the documented PVC and keys Secret"
    );
    assert_eq!(
        harness::namespaced_objects(&client, "kubenova-system").await,
        Vec::<String>::new(),
        "the guide's uninstall left objects in kubenova-system"
    );
    cluster.shutdown().await;
}

/// The translation refuses what it does not know (a flag, a subcommand, an unset `$VAR`)
/// with exit code 2 and the reason, before touching any cluster: a guide using such a
/// command fails the test above instead of running something else.
#[test]
fn untranslated_commands_are_refused() {
    let Some(_) = harness::helm() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (line, reason) in [
        (
            "helm install kn deploy/helm/kubenova-manager -n kubenova --wait",
            "flag --wait",
        ),
        (
            "helm upgrade kn deploy/helm/kubenova-manager --atomic",
            "flag --atomic",
        ),
        (
            "helm template kn deploy/helm/kubenova-manager",
            "subcommand",
        ),
        (
            "helm install kn deploy/helm/kubenova-manager --set a=$UNSET_IN_THIS_TEST",
            "$UNSET_IN_THIS_TEST",
        ),
    ] {
        let out = std::process::Command::new(std::env::var("KUBENOVA_HELM_PYTHON").unwrap())
            .arg(harness::repo().join("deploy/helm/tests/charts.py"))
            .args(["cli", line])
            .arg(harness::repo())
            .arg(dir.path())
            .arg(dir.path().join("no-kubeconfig"))
            .env_remove("UNSET_IN_THIS_TEST")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "`{line}` was not refused: {stderr}"
        );
        assert!(stderr.contains(reason), "`{line}`: {stderr}");
    }
}
