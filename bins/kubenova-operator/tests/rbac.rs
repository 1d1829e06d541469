//! `deploy/operator/rbac.yaml`: every rule is explicit (no `*`), it covers what the
//! controllers call, and the objects validate (created in a testkit cluster).
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, PostParams};
use serde::Deserialize as _;
use serde_json::{Value, json};

fn documents() -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/operator/rbac.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
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
    let role = of_kind("ClusterRole");
    let rules = role["rules"].as_array().unwrap();
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
                ["get", "list", "watch", "create", "patch", "delete", "bind"].contains(&verb),
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
        for v in ["get", "list", "watch", "patch"] {
            assert!(allowed("kubenova.io", r, v), "{v} {r}");
        }
        assert!(allowed("kubenova.io", &format!("{r}/status"), "patch"));
        // The operator never creates or deletes Nova objects.
        assert!(!allowed("kubenova.io", r, "create") && !allowed("kubenova.io", r, "delete"));
    }
    assert!(allowed("events.k8s.io", "events", "create"));
    assert!(allowed("rbac.authorization.k8s.io", "clusterroles", "bind"));
    // Secrets are never touched.
    assert!(
        !rules
            .iter()
            .any(|r| strings(&r["resources"]).contains(&"secrets"))
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
    cluster.shutdown().await;
}
