//! Shared by the chart tests of both binaries (`bins/kubenova-manager/tests/helm_chart.rs`,
//! `bins/kubenova-operator/tests/helm_chart.rs`), included with `#[path]`: runs
//! `deploy/helm/tests/charts.py` with the helm-python-sdk interpreter of
//! `scripts/helm_python.sh` (`KUBENOVA_HELM_PYTHON`) and returns its JSON answer.
//!
//! Without `KUBENOVA_HELM_PYTHON` the Helm checks are skipped loudly; with
//! `KUBENOVA_REQUIRE_HELM=1` (CI) that is a failure.
#![allow(dead_code, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A chart folder under `deploy/helm`.
pub fn chart(name: &str) -> PathBuf {
    repo().join("deploy/helm").join(name)
}

/// The Helm runner, or `None` (after a loud skip notice) when it is not configured.
pub fn helm() -> Option<Helm> {
    match std::env::var("KUBENOVA_HELM_PYTHON") {
        Ok(py) if !py.is_empty() => Some(Helm { python: py.into() }),
        _ => {
            if std::env::var("KUBENOVA_REQUIRE_HELM").as_deref() == Ok("1") {
                panic!(
                    "KUBENOVA_REQUIRE_HELM=1 but KUBENOVA_HELM_PYTHON is not set: run \
                     `export KUBENOVA_HELM_PYTHON=$(scripts/helm_python.sh)`"
                );
            }
            eprintln!(
                "!!! HELM CHART CHECKS SKIPPED: set KUBENOVA_HELM_PYTHON=$(scripts/helm_python.sh) !!!"
            );
            None
        }
    }
}

/// One rendered object and the template it came from.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// e.g. `kubenova-operator/templates/deployment.yaml`.
    pub template: String,
    /// The object.
    pub object: Value,
}

/// The Helm engine (helm-python-sdk) behind `charts.py`.
pub struct Helm {
    python: PathBuf,
}

impl Helm {
    /// The runner of `KUBENOVA_HELM_PYTHON` (call [`helm`] first: it skips or fails when unset).
    pub fn from_env() -> Helm {
        Helm {
            python: std::env::var("KUBENOVA_HELM_PYTHON").unwrap().into(),
        }
    }

    fn run(&self, args: &[&str]) -> Value {
        let script = repo().join("deploy/helm/tests/charts.py");
        let out = Command::new(&self.python)
            .arg(&script)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.python.display()));
        assert!(
            out.status.success(),
            "charts.py {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "charts.py {args:?} printed no JSON ({e}):\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    fn values_file(values: &Value) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), serde_json::to_vec(values).unwrap()).unwrap();
        f
    }

    /// `helm lint --strict` (Kubernetes 1.36) with `values` in `namespace`: the messages
    /// of severity warning or error.
    pub fn lint(&self, chart: &Path, values: &Value, namespace: &str) -> Vec<String> {
        let f = Self::values_file(values);
        let report = self.run(&[
            "lint",
            &chart.to_string_lossy(),
            &f.path().to_string_lossy(),
            namespace,
        ]);
        let mut out: Vec<String> = report["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["severity"].as_i64().unwrap_or(3) >= 2)
            .map(|m| format!("{}: {}", m["path"], m["error"]))
            .collect();
        out.extend(
            report["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e.to_string()),
        );
        out
    }

    /// Validates `values` against the schema and renders the chart as release `name` in
    /// `namespace`: the objects, or the error Helm gave.
    pub fn render(
        &self,
        chart: &Path,
        values: &Value,
        name: &str,
        namespace: &str,
    ) -> Result<(Vec<Rendered>, String), String> {
        let f = Self::values_file(values);
        let out = self.run(&[
            "render",
            &chart.to_string_lossy(),
            &f.path().to_string_lossy(),
            name,
            namespace,
        ]);
        if out["ok"] != Value::Bool(true) {
            return Err(out["error"].as_str().unwrap_or("").to_owned());
        }
        let objects = out["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| Rendered {
                template: o["template"].as_str().unwrap().to_owned(),
                object: o["object"].clone(),
            })
            .collect();
        Ok((objects, out["notes"].as_str().unwrap_or("").to_owned()))
    }

    /// Validates every object strictly (unknown fields refused) against the Kubernetes
    /// `version` JSON schemas of kubernetes-validate: the failures, as `Kind/name: error`.
    /// Kinds without a schema there (CRDs of other projects) fail too: filter them first.
    pub fn validate(&self, objects: &[Value], version: &str) -> Vec<String> {
        let f = Self::values_file(&Value::Array(objects.to_vec()));
        self.run(&["validate", &f.path().to_string_lossy(), version])
            .as_array()
            .unwrap()
            .iter()
            .map(|e| format!("{}: {}", e["object"], e["error"]))
            .collect()
    }
}

/// The chart's `values.yaml`, parsed.
pub fn default_values(chart_dir: &Path) -> Value {
    let text = std::fs::read_to_string(chart_dir.join("values.yaml")).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

/// Dotted paths of the leaves of `v` (a scalar, an empty map or any list is a leaf).
pub fn leaf_paths(v: &Value) -> Vec<String> {
    fn walk(v: &Value, prefix: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, child) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(child, &p, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }
    let mut out = Vec::new();
    walk(v, "", &mut out);
    out
}

/// The value at dotted `path`, if any.
pub fn get_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

/// Leaves of `values.yaml` without documentation: a `#` comment right above their key
/// or above one of its parents (`resources:` documents its limits and requests).
pub fn undocumented_keys(chart_dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(chart_dir.join("values.yaml")).unwrap();
    let leaves = leaf_paths(&default_values(chart_dir));
    let lines: Vec<&str> = text.lines().collect();
    // (column, key, documented here or above)
    let mut stack: Vec<(usize, String, bool)> = Vec::new();
    let mut missing = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("- ") {
            continue;
        }
        let Some((key, _)) = trimmed.split_once(':') else {
            continue;
        };
        let col = line.len() - trimmed.len();
        while stack.last().is_some_and(|(c, _, _)| *c >= col) {
            stack.pop();
        }
        let above = lines[..i].iter().rev().find(|l| !l.trim().is_empty());
        let documented = above.is_some_and(|l| l.trim_start().starts_with('#'))
            || stack.last().is_some_and(|(_, _, d)| *d);
        let path = stack
            .iter()
            .map(|(_, k, _)| k.as_str())
            .chain([key])
            .collect::<Vec<_>>()
            .join(".");
        stack.push((col, key.to_owned(), documented));
        if leaves.contains(&path) && !documented {
            missing.push(path);
        }
    }
    missing
}

/// The documented options no case of `matrix` sets to something other than its default.
pub fn uncovered_options(defaults: &Value, matrix: &[(&str, Value)]) -> Vec<String> {
    leaf_paths(defaults)
        .into_iter()
        .filter(|path| {
            let default = get_path(defaults, path);
            !matrix
                .iter()
                .any(|(_, values)| get_path(values, path).is_some_and(|v| Some(v) != default))
        })
        .collect()
}

/// Violations of the `restricted` Pod Security Standard in a pod spec (`what` names it).
pub fn restricted_violations(what: &str, pod: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let psc = &pod["securityContext"];
    if psc["seccompProfile"]["type"] != "RuntimeDefault" {
        out.push(format!("{what}: pod seccompProfile is not RuntimeDefault"));
    }
    let pod_non_root = psc["runAsNonRoot"] == Value::Bool(true);
    if pod["hostNetwork"] == Value::Bool(true) || pod["hostPID"] == Value::Bool(true) {
        out.push(format!("{what}: host namespaces"));
    }
    let containers = pod["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(pod["initContainers"].as_array().into_iter().flatten());
    for c in containers {
        let name = format!("{what}/{}", c["name"].as_str().unwrap_or("?"));
        let sc = &c["securityContext"];
        if sc["allowPrivilegeEscalation"] != Value::Bool(false) {
            out.push(format!("{name}: allowPrivilegeEscalation is not false"));
        }
        if sc["privileged"] == Value::Bool(true) {
            out.push(format!("{name}: privileged"));
        }
        if sc["capabilities"]["drop"] != serde_json::json!(["ALL"]) {
            out.push(format!("{name}: capabilities do not drop ALL"));
        }
        if sc["capabilities"]["add"].is_array() {
            out.push(format!("{name}: adds capabilities"));
        }
        if sc["readOnlyRootFilesystem"] != Value::Bool(true) {
            out.push(format!("{name}: root filesystem is writable"));
        }
        if !(pod_non_root || sc["runAsNonRoot"] == Value::Bool(true)) {
            out.push(format!("{name}: may run as root"));
        }
        if sc["runAsUser"] == serde_json::json!(0) || psc["runAsUser"] == serde_json::json!(0) {
            out.push(format!("{name}: runs as uid 0"));
        }
        if c["resources"]["limits"]["memory"].is_null() {
            out.push(format!("{name}: no memory limit"));
        }
    }
    out
}

/// The pod spec of a Deployment or a Pod, if `o` is one.
pub fn pod_spec(o: &Value) -> Option<&Value> {
    match o["kind"].as_str()? {
        "Deployment" => Some(&o["spec"]["template"]["spec"]),
        "Pod" => Some(&o["spec"]),
        _ => None,
    }
}

/// RBAC rules with a `*` (verbs, groups or resources) in any Role or ClusterRole.
pub fn wildcard_rules(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .filter(|o| matches!(o["kind"].as_str(), Some("Role" | "ClusterRole")))
        .flat_map(|o| {
            o["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| {
                    ["verbs", "apiGroups", "resources"].iter().any(|k| {
                        r[*k]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|w| w.as_str().is_some_and(|w| w.contains('*')))
                    })
                })
                .map(move |r| format!("{} {}: {r}", o["kind"], o["metadata"]["name"]))
        })
        .collect()
}

/// The committed rendering of the chart with default values (`deploy/helm/rendered/`):
/// compared, or written with `KUBENOVA_BLESS=1`. `mask` hides what differs per render
/// (generated secrets).
pub fn check_rendered(file: &str, objects: &[Rendered], mask: impl Fn(&mut Value)) {
    let mut text = format!(
        "# GENERATED: `helm template` of deploy/helm/{} with its default values (generated keys\n\
         # masked). Regenerate with KUBENOVA_BLESS=1 and the chart's helm_chart test.\n",
        file.trim_end_matches(".yaml")
    );
    for r in objects {
        let mut o = r.object.clone();
        mask(&mut o);
        text.push_str(&format!("---\n# Source: {}\n", r.template));
        text.push_str(&serde_saphyr::to_string(&o).unwrap());
    }
    let path = repo().join("deploy/helm/rendered").join(file);
    if std::env::var("KUBENOVA_BLESS").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "{} differs from the chart's rendering: run the chart test with KUBENOVA_BLESS=1 and commit the result",
        path.display()
    );
}

impl Helm {
    /// As [`Helm::render`], as an upgrade: `lookup` reads the cluster of `kubeconfig`.
    pub fn render_live(
        &self,
        chart: &Path,
        values: &Value,
        name: &str,
        namespace: &str,
        kubeconfig: &Path,
    ) -> Result<Vec<Rendered>, String> {
        let f = Self::values_file(values);
        let out = self.run(&[
            "render-live",
            &chart.to_string_lossy(),
            &f.path().to_string_lossy(),
            name,
            namespace,
            &kubeconfig.to_string_lossy(),
        ]);
        if out["ok"] != Value::Bool(true) {
            return Err(out["error"].as_str().unwrap_or("").to_owned());
        }
        Ok(out["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| Rendered {
                template: o["template"].as_str().unwrap().to_owned(),
                object: o["object"].clone(),
            })
            .collect())
    }
}

impl Helm {
    /// A release action (`install`, `upgrade`, `rollback`, `uninstall`) of `chart` as
    /// `name` in `namespace` of the cluster of `kubeconfig`, with the real Helm engine.
    pub fn release(
        &self,
        action: &str,
        chart: &Path,
        values: &Value,
        name: &str,
        namespace: &str,
        kubeconfig: &Path,
    ) -> Result<Value, String> {
        let f = Self::values_file(values);
        let out = self.run(&[
            "release",
            action,
            &chart.to_string_lossy(),
            &f.path().to_string_lossy(),
            name,
            namespace,
            &kubeconfig.to_string_lossy(),
        ]);
        if out["ok"] != Value::Bool(true) {
            return Err(out["error"].as_str().unwrap_or("").to_owned());
        }
        Ok(out["release"].clone())
    }
}

/// Whether a failed first install failed only because the emulated cluster serves no
/// OpenAPI document (Helm validates the objects against it; kubenova-testkit serves
/// `/openapi/v2` and `/v3`, so this guards a regression): then the install tests are
/// skipped loudly, and `KUBENOVA_REQUIRE_HELM_INSTALL=1` (CI) makes that a failure. Any
/// other failure is a failure.
pub fn testkit_lacks_openapi(install_error: &str) -> bool {
    let lacks = install_error.contains("failed to download openapi");
    if lacks && std::env::var("KUBENOVA_REQUIRE_HELM_INSTALL").as_deref() == Ok("1") {
        panic!(
            "KUBENOVA_REQUIRE_HELM_INSTALL=1 but Helm cannot install into the testkit: {install_error}"
        );
    }
    if lacks {
        eprintln!(
            "!!! HELM INSTALL TEST SKIPPED: the testkit served no OpenAPI document, which Helm \
             needs to install ({install_error}) !!!"
        );
    }
    lacks
}

impl Helm {
    /// Runs one `helm` command line of the install guide (`charts.py cli`: the CLI's flags
    /// translated to the engine's options; an untranslated flag fails the test) against
    /// the cluster of `kubeconfig`, with `-f` files read from `workdir` and `$VARS` from
    /// `env`: the release, or the error Helm gave.
    pub fn cli(
        &self,
        line: &str,
        workdir: &Path,
        kubeconfig: &Path,
        env: &[(&str, &str)],
    ) -> Result<Value, String> {
        let script = repo().join("deploy/helm/tests/charts.py");
        let out = Command::new(&self.python)
            .arg(&script)
            .arg("cli")
            .arg(line)
            .arg(repo())
            .arg(workdir)
            .arg(kubeconfig)
            .envs(env.iter().copied())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.python.display()));
        assert!(
            out.status.success(),
            "charts.py cli {line:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "charts.py cli {line:?} printed no JSON ({e}):\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        if out["ok"] != Value::Bool(true) {
            return Err(out["error"].as_str().unwrap_or("").to_owned());
        }
        Ok(out)
    }
}

/// An emulated cluster for a real Helm release: started, its kubeconfig written to
/// `dir/kubeconfig` (Helm and kubectl read it from a file), and `namespace` created.
/// Returns the cluster, the kubeconfig's path and a client.
pub async fn release_cluster(
    dir: &Path,
    namespace: &str,
) -> (kubenova_testkit::TestCluster, PathBuf, kube::Client) {
    let cluster = kubenova_testkit::TestCluster::start().await.unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, cluster.kubeconfig_yaml()).unwrap();
    let client = cluster.client().unwrap();
    create_namespace(&client, namespace).await;
    (cluster, kubeconfig, client)
}

/// Creates `name` (the `kubectl create namespace` a user runs before `helm install`).
pub async fn create_namespace(client: &kube::Client, name: &str) {
    kube::api::Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(
            &kube::api::PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap(),
        )
        .await
        .unwrap();
}

/// Every object of the kinds the charts make in `namespace` ("Kind/name", sorted): what an
/// uninstall left behind. A namespace's own `default` ServiceAccount and
/// `kube-root-ca.crt` ConfigMap, which no chart makes, are not listed.
pub async fn namespaced_objects(client: &kube::Client, namespace: &str) -> Vec<String> {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{
        ConfigMap, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
    };
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    use kube::api::{Api, ListParams};

    async fn names<K>(client: &kube::Client, namespace: &str, kind: &str) -> Vec<String>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::<K>::namespaced(client.clone(), namespace)
            .list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("listing {kind} in {namespace}: {e}"))
            .items
            .iter()
            .filter_map(|o| o.meta().name.clone())
            .filter(|n| {
                !(kind == "ServiceAccount" && n == "default"
                    || kind == "ConfigMap" && n == "kube-root-ca.crt")
            })
            .map(|n| format!("{kind}/{n}"))
            .collect()
    }
    let mut out = Vec::new();
    out.extend(names::<Deployment>(client, namespace, "Deployment").await);
    out.extend(names::<Pod>(client, namespace, "Pod").await);
    out.extend(names::<Service>(client, namespace, "Service").await);
    out.extend(names::<ServiceAccount>(client, namespace, "ServiceAccount").await);
    out.extend(names::<Secret>(client, namespace, "Secret").await);
    out.extend(names::<ConfigMap>(client, namespace, "ConfigMap").await);
    out.extend(names::<PersistentVolumeClaim>(client, namespace, "PersistentVolumeClaim").await);
    out.extend(names::<Role>(client, namespace, "Role").await);
    out.extend(names::<RoleBinding>(client, namespace, "RoleBinding").await);
    out.sort();
    out
}
