//! `deploy/operator/rbac.yaml`: every rule is explicit (no `*`), it covers what the
//! controllers call, and the objects validate (created in a testkit cluster).
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

fn documents() -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/operator/rbac.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_str_multiple::<Value, Vec<Value>>(&text)
        .unwrap()
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

fn of_kind(kind: &str) -> Value {
    documents()
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in rbac.yaml"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn every_rule_is_explicit() {
    let mut rules = of_kind("ClusterRole")["rules"].as_array().unwrap().clone();
    rules.extend(of_kind("Role")["rules"].as_array().unwrap().clone());
    assert!(!rules.is_empty());
    for (i, rule) in rules.iter().enumerate() {
        for field in ["apiGroups", "resources", "verbs"] {
            let items = strings(&rule[field]);
            assert!(!items.is_empty(), "rule {i}: {field} is empty");
            assert!(
                items.iter().all(|s| !s.contains('*')),
                "rule {i}: {field} has a wildcard: {items:?}"
            );
        }
        assert!(
            rule.get("nonResourceURLs").is_none(),
            "rule {i}: no non-resource URLs"
        );
        for verb in strings(&rule["verbs"]) {
            assert!(
                [
                    "get", "list", "watch", "create", "update", "patch", "delete", "bind"
                ]
                .contains(&verb),
                "rule {i}: unexpected verb {verb}"
            );
        }
    }
}

/// What the controllers call (kubenova_reconcile::controller) is granted.
#[test]
fn covers_what_the_controllers_use() {
    let role = of_kind("ClusterRole");
    let rules = role["rules"].as_array().unwrap();
    let allowed = |group: &str, resource: &str, verb: &str| {
        rules.iter().any(|r| {
            strings(&r["apiGroups"]).contains(&group)
                && strings(&r["resources"]).contains(&resource)
                && strings(&r["verbs"]).contains(&verb)
        })
    };
    let owned = [
        ("capsule.clastix.io", "tenants"),
        ("", "namespaces"),
        ("", "resourcequotas"),
        ("rbac.authorization.k8s.io", "rolebindings"),
        ("core.oam.dev", "applications"),
    ];
    for (g, r) in owned {
        for v in ["get", "list", "watch", "create", "patch", "delete"] {
            assert!(allowed(g, r, v), "{v} {g}/{r}");
        }
    }
    for r in ["novatenants", "novaprojects", "novaapps"] {
        // The agent loop applies (creates) and prunes (deletes) the manager's Nova objects.
        for v in ["get", "list", "watch", "create", "patch", "delete"] {
            assert!(allowed("kubenova.io", r, v), "{v} {r}");
        }
        assert!(allowed("kubenova.io", &format!("{r}/status"), "patch"));
    }
    assert!(allowed("events.k8s.io", "events", "create"));
    assert!(allowed("rbac.authorization.k8s.io", "clusterroles", "bind"));
    // Capabilities: read-only.
    assert!(allowed(
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "get"
    ));
    assert!(allowed("apps", "deployments", "get"));
    assert!(!allowed("apps", "deployments", "patch"));
    // Secrets: only the Capsule Proxy CA, read by name; never cluster-wide.
    for r in rules
        .iter()
        .filter(|r| strings(&r["resources"]).contains(&"secrets"))
    {
        assert_eq!(strings(&r["verbs"]), ["get"], "{r}");
        assert_eq!(strings(&r["resourceNames"]), ["capsule-proxy"], "{r}");
    }
}

/// Leader election: get/create/update on Leases, in kubenova-system only (a Role, not a
/// ClusterRole), get/update limited to the operator's Lease.
#[test]
fn lease_access_is_namespaced() {
    let role = of_kind("Role");
    assert_eq!(role["metadata"]["namespace"], "kubenova-system");
    let rules = role["rules"].as_array().unwrap();
    let grants = |verb: &str| {
        rules.iter().any(|r| {
            strings(&r["apiGroups"]) == ["coordination.k8s.io"]
                && strings(&r["resources"]) == ["leases"]
                && strings(&r["verbs"]).contains(&verb)
        })
    };
    for v in ["get", "create", "update"] {
        assert!(grants(v), "{v} leases");
    }
    for v in ["delete", "list", "watch", "patch"] {
        assert!(!grants(v), "{v} leases is not needed");
    }
    // Everything but `create` is limited by name: the Lease, the agent Secret (get only)
    // and the Capsule Proxy fallback ConfigMap.
    for r in rules {
        if strings(&r["verbs"]).iter().any(|v| *v != "create") {
            let expected: &[&str] = match strings(&r["resources"])[..] {
                ["leases"] => &["kubenova-operator"],
                ["secrets"] => &["kubenova-agent"],
                ["configmaps"] => &["kubenova-capsule-proxy"],
                _ => panic!("unexpected namespaced rule {r}"),
            };
            assert_eq!(strings(&r["resourceNames"]), expected, "{r}");
        }
        if strings(&r["resources"]) == ["secrets"] {
            assert_eq!(strings(&r["verbs"]), ["get"], "{r}");
        }
    }
    let binding = of_kind("RoleBinding");
    assert_eq!(binding["roleRef"]["kind"], "Role");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["name"], "kubenova-operator");
    assert_eq!(binding["subjects"][0]["namespace"], "kubenova-system");
    // No cluster-wide access to Leases.
    let cluster = of_kind("ClusterRole");
    assert!(
        !cluster["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| strings(&r["resources"]).contains(&"leases"))
    );
}

#[tokio::test]
async fn manifests_validate_in_the_testkit() {
    let cluster = kubenova_testkit::TestCluster::builder()
        .start()
        .await
        .unwrap();
    let client = cluster.client().unwrap();
    let pp = PostParams::default();
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "kubenova-system"}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&pp, &ns)
        .await
        .unwrap();
    let sa: ServiceAccount = serde_json::from_value(of_kind("ServiceAccount")).unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), "kubenova-system")
        .create(&pp, &sa)
        .await
        .unwrap();
    let role: ClusterRole = serde_json::from_value(of_kind("ClusterRole")).unwrap();
    let created = Api::<ClusterRole>::all(client.clone())
        .create(&pp, &role)
        .await
        .unwrap();
    assert_eq!(created.rules, role.rules);
    let binding: ClusterRoleBinding =
        serde_json::from_value(of_kind("ClusterRoleBinding")).unwrap();
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&pp, &binding)
        .await
        .unwrap();
    assert_eq!(binding.role_ref.name, "kubenova-operator");
    let role: Role = serde_json::from_value(of_kind("Role")).unwrap();
    Api::<Role>::namespaced(client.clone(), "kubenova-system")
        .create(&pp, &role)
        .await
        .unwrap();
    let rb: RoleBinding = serde_json::from_value(of_kind("RoleBinding")).unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), "kubenova-system")
        .create(&pp, &rb)
        .await
        .unwrap();
    cluster.shutdown().await;
}

/// The opt-in Helm installer identity is not part of the default RBAC: nothing is bound
/// to cluster-admin and the operator may not request ServiceAccount tokens.
#[test]
fn the_default_has_no_installer_identity() {
    let docs = documents();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding"
        ]
    );
    for d in &docs {
        assert_ne!(d["metadata"]["name"], "kubenova-installer", "{d}");
        assert_ne!(d["roleRef"]["name"], "cluster-admin", "{d}");
        for r in d["rules"].as_array().into_iter().flatten() {
            assert!(
                !strings(&r["resources"]).contains(&"serviceaccounts/token"),
                "{r}"
            );
        }
    }
}
