//! `deploy/operator/{rbac,admission-policy,deployment}.yaml` are generated from
//! `kubenova_reconcile::manifests::operator_manifests` (default parameters), and they
//! validate against the Kubernetes 1.36 strict schemas (server-side applied in a testkit
//! cluster, which validates built-ins against the embedded upstream schemas).
//!
//! Regenerate with `KUBENOVA_BLESS=1 cargo test -p kubenova-operator --test manifests`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;

use clap::CommandFactory as _;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kubenova_reconcile::manifests::{
    self, ADMISSION_POLICY_NAME, OperatorParams, operator_manifests,
};
use serde_json::{Value, json};

const RBAC_HEADER: &str = "\
Least-privilege RBAC of kubenova-operator (bins/kubenova-operator).
GENERATED from kubenova_reconcile::manifests::operator_manifests (default parameters): do not
edit; regenerate with `KUBENOVA_BLESS=1 cargo test -p kubenova-operator --test manifests`.
Every rule names its API groups, resources and verbs; nothing is `*`. Why each rule exists is
written next to it in kubenova-reconcile/src/manifests.rs (cluster_rules, lease_rules,
app_deployer_rules). The Lease rules are a Role in the operator's namespace only (leader
election). The ClusterRole kubenova-app-deployer is granted to no one here: the operator binds
it, in each project namespace only, to that project's app identity (ServiceAccount kubenova-app).
Checked by bins/kubenova-operator/tests/rbac.rs and tests/manifests.rs.";

const ADMISSION_HEADER: &str = "\
ValidatingAdmissionPolicy fencing what kubenova-operator may write, whatever its RBAC allows.
GENERATED from kubenova_reconcile::manifests::operator_manifests (default parameters): do not
edit; regenerate with `KUBENOVA_BLESS=1 cargo test -p kubenova-operator --test manifests`.
It matches only requests of the ServiceAccount kubenova-system/kubenova-operator on Namespaces,
ServiceAccounts and RoleBindings, and denies (failurePolicy Fail, validationActions Deny) every
write outside KubeNova's tenant and project namespaces; see
kubenova-reconcile/src/manifests/admission.rs. The expressions are evaluated in
bins/kubenova-operator/tests/admission_policy.rs. Needs Kubernetes 1.30 or later.";

const DEPLOYMENT_HEADER: &str = "\
The kubenova-operator Deployment (2 replicas, leader election) and its namespace.
GENERATED from kubenova_reconcile::manifests::operator_manifests (default parameters): do not
edit; regenerate with `KUBENOVA_BLESS=1 cargo test -p kubenova-operator --test manifests`.
Install: kubectl apply -f deploy/crds/ && kubectl apply -f deploy/operator/
(this file first: the namespace; the pods start once rbac.yaml created their ServiceAccount).
Optional: a Secret `kubenova-agent` in kubenova-system with `token` and `managerUrl`.";

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/operator")
}

fn generated() -> Vec<(&'static str, String)> {
    let m = operator_manifests(&OperatorParams::default());
    let values = m.to_values().unwrap();
    let rbac = manifests::to_yaml(RBAC_HEADER, &m.rbac_values().unwrap()).unwrap();
    let deployment = manifests::to_yaml(
        DEPLOYMENT_HEADER,
        &[values[0].clone(), values[values.len() - 1].clone()],
    )
    .unwrap();
    let admission = manifests::to_yaml(ADMISSION_HEADER, &m.admission_values().unwrap()).unwrap();
    vec![
        ("rbac.yaml", rbac),
        ("admission-policy.yaml", admission),
        ("deployment.yaml", deployment),
    ]
}

fn documents(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(dir().join(file)).unwrap();
    serde_saphyr::from_str_multiple::<Value, Vec<Value>>(&text)
        .unwrap()
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn committed_manifests_match_the_function() {
    let bless = std::env::var("KUBENOVA_BLESS").is_ok_and(|v| v == "1");
    let mut drift = Vec::new();
    for (file, text) in generated() {
        let path = dir().join(file);
        if bless {
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        if std::fs::read_to_string(&path).unwrap_or_default() != text {
            drift.push(path.display().to_string());
        }
    }
    assert!(
        drift.is_empty(),
        "generated operator manifests differ from {drift:?}; run `KUBENOVA_BLESS=1 cargo test -p kubenova-operator --test manifests` and commit the result"
    );
}

#[test]
fn deployment_is_hardened_and_uses_leader_election() {
    let docs = documents("deployment.yaml");
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Namespace", "Deployment"]);
    let d = &docs[1];
    assert_eq!(d["metadata"]["namespace"], "kubenova-system");
    assert_eq!(d["spec"]["replicas"], 2);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "kubenova-operator");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    assert_eq!(
        c["image"],
        format!(
            "ghcr.io/kubenova/kubenova-operator:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    for k in ["requests", "limits"] {
        assert!(c["resources"][k]["memory"].is_string(), "{k}");
        assert!(c["resources"][k]["cpu"].is_string(), "{k}");
    }
    let env: Vec<&str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for want in [
        "POD_NAME",
        "KUBENOVA_LEADER_ELECTION",
        "KUBENOVA_LEASE_NAMESPACE",
        "KUBENOVA_LEASE_NAME",
        "KUBENOVA_MANAGER_URL",
        "KUBENOVA_AGENT_TOKEN",
    ] {
        assert!(env.contains(&want), "{want} missing from {env:?}");
    }
    // The env the Deployment sets is what the operator's CLI reads.
    let cli: Vec<String> = kubenova_operator::Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    for name in [
        "KUBENOVA_LISTEN",
        "KUBENOVA_LEADER_ELECTION",
        "KUBENOVA_LEASE_NAMESPACE",
        "KUBENOVA_LEASE_NAME",
    ] {
        assert!(
            cli.contains(&name.to_owned()),
            "operator does not read {name}"
        );
    }
}

fn api_for(client: &kube::Client, obj: &Value) -> Api<DynamicObject> {
    let api_version = obj["apiVersion"].as_str().unwrap();
    let kind = obj["kind"].as_str().unwrap();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = match kind {
        "Namespace" => "namespaces",
        "ServiceAccount" => "serviceaccounts",
        "ClusterRole" => "clusterroles",
        "ClusterRoleBinding" => "clusterrolebindings",
        "Role" => "roles",
        "RoleBinding" => "rolebindings",
        "Deployment" => "deployments",
        "ValidatingAdmissionPolicy" => "validatingadmissionpolicies",
        "ValidatingAdmissionPolicyBinding" => "validatingadmissionpolicybindings",
        other => panic!("unexpected kind {other}"),
    };
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

/// What the manager's bootstrap does: server-side apply of every object, in order.
#[tokio::test]
async fn manifests_validate_against_the_strict_schemas() {
    let cluster = kubenova_testkit::TestCluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    let pp = PatchParams::apply("kubenova-bootstrap");
    let mut docs = documents("deployment.yaml");
    let mut middle = documents("rbac.yaml");
    middle.extend(documents("admission-policy.yaml"));
    docs.splice(1..1, middle);
    assert_eq!(docs.len(), 10);
    assert_eq!(
        docs.iter()
            .map(|d| d["kind"].as_str().unwrap())
            .collect::<Vec<_>>(),
        operator_manifests(&OperatorParams::default())
            .to_values()
            .unwrap()
            .iter()
            .map(|d| d["kind"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>(),
        "the committed files hold every object, in apply order"
    );
    for obj in &docs {
        let name = obj["metadata"]["name"].as_str().unwrap();
        api_for(&client, obj)
            .patch(name, &pp, &Patch::Apply(obj))
            .await
            .unwrap_or_else(|e| panic!("{} {name}: {e}", obj["kind"]));
    }
    // Re-applying is a no-op (idempotent bootstrap).
    for obj in &docs {
        let name = obj["metadata"]["name"].as_str().unwrap();
        api_for(&client, obj)
            .patch(name, &pp, &Patch::Apply(obj))
            .await
            .unwrap();
    }

    // The testkit really validates: the same Deployment with a misspelt field or a
    // wrong type is refused.
    let mut bad = docs.last().unwrap().clone();
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] =
        json!(true);
    let err = api_for(&client, &bad)
        .patch("kubenova-operator", &pp, &Patch::Apply(&bad))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("readOnlyRootFileSystem"), "{err}");
    let mut bad = docs.last().unwrap().clone();
    bad["spec"]["replicas"] = json!("two");
    assert!(
        api_for(&client, &bad)
            .patch("kubenova-operator", &pp, &Patch::Apply(&bad))
            .await
            .is_err()
    );

    // The testkit validates the policy strictly too: a misspelt field is refused.
    let mut bad = documents("admission-policy.yaml")[0].clone();
    bad["spec"]["validations"][0]["messageExpresion"] = json!("'x'");
    let err = api_for(&client, &bad)
        .patch(ADMISSION_POLICY_NAME, &pp, &Patch::Apply(&bad))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("messageExpresion"), "{err}");

    // Other parameters produce valid objects too (what the bootstrap passes).
    let params = OperatorParams {
        namespace: "kubenova-custom".into(),
        image: "registry.example.com/kubenova/operator:1.2.3".into(),
        replicas: 1,
        manager_url: Some("https://kubenova.example.com".into()),
        agent_secret: "agent-credential".into(),
        lease_name: "operator-lease".into(),
        // Installer mode: its extra objects, volume and env validate too.
        helm_installer: true,
    };
    for obj in operator_manifests(&params).to_values().unwrap() {
        let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
        api_for(&client, &obj)
            .patch(&name, &pp, &Patch::Apply(&obj))
            .await
            .unwrap_or_else(|e| panic!("{} {name}: {e}", obj["kind"]));
    }
    cluster.shutdown().await;
}

fn no_wildcard_rules(m: &manifests::OperatorManifests) {
    let rules = m
        .cluster_role
        .rules
        .iter()
        .flatten()
        .chain(m.lease_role.rules.iter().flatten())
        .chain(
            m.installer
                .iter()
                .flat_map(|i| i.token_role.rules.iter().flatten()),
        );
    for r in rules {
        let mut words = r.verbs.clone();
        words.extend(r.api_groups.clone().unwrap_or_default());
        words.extend(r.resources.clone().unwrap_or_default());
        assert!(words.iter().all(|w| !w.contains('*')), "{words:?}");
    }
}

fn name_kind(v: &Value) -> (String, String) {
    (
        v["kind"].as_str().unwrap().to_owned(),
        v["metadata"]["name"].as_str().unwrap().to_owned(),
    )
}

/// The Helm installer identity is opt-in: absent by default (least privilege, never `*`
/// on `*`, nothing bound to cluster-admin), and installer mode adds exactly its
/// ServiceAccount, the cluster-admin binding and the token Role (with its binding) while
/// the operator's own rules stay as they were.
#[test]
fn the_installer_identity_is_opt_in_and_narrow() {
    let default = operator_manifests(&OperatorParams::default());
    assert!(default.installer.is_none());
    no_wildcard_rules(&default);
    let text = serde_json::to_string(&default.to_values().unwrap()).unwrap();
    for absent in [
        "kubenova-installer",
        "cluster-admin",
        "serviceaccounts/token",
        "KUBENOVA_INSTALLER_SERVICE_ACCOUNT",
    ] {
        assert!(!text.contains(absent), "default output mentions {absent}");
    }

    let on = operator_manifests(&OperatorParams {
        helm_installer: true,
        ..OperatorParams::default()
    });
    no_wildcard_rules(&on);
    assert_eq!(
        on.cluster_role, default.cluster_role,
        "no new cluster-wide rights"
    );
    assert_eq!(on.lease_role, default.lease_role);
    assert_eq!(on.service_account, default.service_account);
    let before: Vec<_> = default
        .rbac_values()
        .unwrap()
        .iter()
        .map(name_kind)
        .collect();
    let after: Vec<_> = on.rbac_values().unwrap().iter().map(name_kind).collect();
    assert_eq!(after[..before.len()], before[..]);
    let added: Vec<(&str, &str)> = after[before.len()..]
        .iter()
        .map(|(k, n)| (k.as_str(), n.as_str()))
        .collect();
    assert_eq!(
        added,
        [
            ("ServiceAccount", "kubenova-installer"),
            ("ClusterRoleBinding", "kubenova-installer"),
            ("Role", "kubenova-operator-installer-token"),
            ("RoleBinding", "kubenova-operator-installer-token"),
        ]
    );
    let i = on.installer.as_ref().unwrap();
    assert_eq!(
        i.service_account.metadata.namespace.as_deref(),
        Some("kubenova-system")
    );
    assert_eq!(
        i.service_account.automount_service_account_token,
        Some(false)
    );
    // cluster-admin goes to the installer ServiceAccount only.
    assert_eq!(i.cluster_role_binding.role_ref.kind, "ClusterRole");
    assert_eq!(i.cluster_role_binding.role_ref.name, "cluster-admin");
    let subjects = i.cluster_role_binding.subjects.as_ref().unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(
        (
            subjects[0].kind.as_str(),
            subjects[0].name.as_str(),
            subjects[0].namespace.as_deref()
        ),
        (
            "ServiceAccount",
            "kubenova-installer",
            Some("kubenova-system")
        )
    );
    // The operator gains one thing: `create` on serviceaccounts/token of that one
    // ServiceAccount, in its own namespace.
    assert_eq!(
        i.token_role.metadata.namespace.as_deref(),
        Some("kubenova-system")
    );
    let rules = i.token_role.rules.as_ref().unwrap();
    assert_eq!(rules.len(), 1);
    let r = &rules[0];
    assert_eq!(r.api_groups, Some(vec![String::new()]));
    assert_eq!(r.resources, Some(vec!["serviceaccounts/token".to_owned()]));
    assert_eq!(r.verbs, ["create"]);
    assert_eq!(
        r.resource_names,
        Some(vec!["kubenova-installer".to_owned()])
    );
    assert_eq!(i.token_role_binding.role_ref.kind, "Role");
    assert_eq!(
        i.token_role_binding.role_ref.name,
        "kubenova-operator-installer-token"
    );
    let subjects = i.token_role_binding.subjects.as_ref().unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].name, "kubenova-operator");

    // The Deployment names the installer for the operator's CLI, and gives it an
    // in-memory /tmp for the kubeconfig (the root filesystem stays read-only).
    let v = serde_json::to_value(&on.deployment).unwrap();
    let pod = &v["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let env = |name: &str| {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    assert_eq!(
        env("KUBENOVA_INSTALLER_SERVICE_ACCOUNT"),
        Some(json!("kubenova-installer"))
    );
    assert_eq!(env("KUBENOVA_COMPONENT_DRIVER"), Some(json!("helm")));
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/tmp");
    assert_eq!(pod["volumes"][0]["emptyDir"]["medium"], "Memory");
    assert_eq!(pod["serviceAccountName"], "kubenova-operator");
    let cli: Vec<String> = kubenova_operator::Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    for name in [
        "KUBENOVA_INSTALLER_SERVICE_ACCOUNT",
        "KUBENOVA_COMPONENT_DRIVER",
    ] {
        assert!(
            cli.contains(&name.to_owned()),
            "operator does not read {name}"
        );
    }
}
