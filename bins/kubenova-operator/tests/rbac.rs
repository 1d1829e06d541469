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

/// The object of `kind` named `name`.
fn named(kind: &str, name: &str) -> Value {
    documents()
        .into_iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in rbac.yaml"))
}

/// The operator's own ClusterRole.
fn operator_role() -> Value {
    named("ClusterRole", "kubenova-operator")
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn every_rule_is_explicit() {
    let mut rules = operator_role()["rules"].as_array().unwrap().clone();
    rules.extend(of_kind("Role")["rules"].as_array().unwrap().clone());
    rules.extend(
        named("ClusterRole", "kubenova-app-deployer")["rules"]
            .as_array()
            .unwrap()
            .clone(),
    );
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
                    "get",
                    "list",
                    "watch",
                    "create",
                    "update",
                    "patch",
                    "delete",
                    "bind",
                    "impersonate"
                ]
                .contains(&verb),
                "rule {i}: unexpected verb {verb}"
            );
        }
        // `bind` and `impersonate` are always limited by name.
        if strings(&rule["verbs"])
            .iter()
            .any(|v| ["bind", "impersonate"].contains(v))
        {
            assert!(
                !strings(&rule["resourceNames"]).is_empty(),
                "rule {i}: bind/impersonate without resourceNames"
            );
        }
    }
}

/// What the controllers call (kubenova_reconcile::controller) is granted.
#[test]
fn covers_what_the_controllers_use() {
    let role = operator_role();
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
        // The per-project app identity `kubenova-app`.
        ("", "serviceaccounts"),
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
    assert!(allowed("", "serviceaccounts", "impersonate"));
    // Capabilities: read-only.
    assert!(allowed(
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "get"
    ));
    assert!(allowed("apps", "deployments", "get"));
    assert!(!allowed("apps", "deployments", "patch"));
    // Ingresses: only Capsule Proxy's (its URL), read by name.
    let ingresses: Vec<_> = rules
        .iter()
        .filter(|r| strings(&r["resources"]).contains(&"ingresses"))
        .collect();
    assert_eq!(ingresses.len(), 1, "{ingresses:?}");
    assert_eq!(strings(&ingresses[0]["apiGroups"]), ["networking.k8s.io"]);
    assert_eq!(strings(&ingresses[0]["verbs"]), ["get"]);
    assert_eq!(strings(&ingresses[0]["resourceNames"]), ["capsule-proxy"]);
    // The logs and events of apps (agent requests): what the requests loop calls.
    assert!(allowed("", "pods", "list"));
    assert!(allowed("", "pods", "get"));
    assert!(allowed("", "pods/log", "get"));
    assert!(allowed("", "events", "list"));
    assert!(allowed("apps", "deployments", "list"));
    assert!(allowed("kubenova.io", "novaapps", "get"));
    // Usage: what a sample lists, the Nodes (the cluster's capacity) included, read only.
    for r in [
        "pods",
        "persistentvolumeclaims",
        "services",
        "resourcequotas",
        "nodes",
    ] {
        assert!(allowed("", r, "list"), "list {r}");
    }
    for v in ["get", "watch", "create", "patch", "delete"] {
        assert!(!allowed("", "nodes", v), "{v} nodes is not needed");
    }
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
    // Everything but `create` is limited by name: the Lease, the agent Secret (get only),
    // the Capsule Proxy fallback ConfigMap and the usage buffer ConfigMap.
    for r in rules {
        if strings(&r["verbs"]).iter().any(|v| *v != "create") {
            let expected: &[&str] = match strings(&r["resources"])[..] {
                ["leases"] => &["kubenova-operator"],
                ["secrets"] => &["kubenova-agent"],
                ["configmaps"] => &["kubenova-capsule-proxy", "kubenova-usage-buffer"],
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
    let cluster = operator_role();
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
    for name in ["kubenova-operator", "kubenova-app-deployer"] {
        let role: ClusterRole = serde_json::from_value(named("ClusterRole", name)).unwrap();
        let created = Api::<ClusterRole>::all(client.clone())
            .create(&pp, &role)
            .await
            .unwrap();
        assert_eq!(created.rules, role.rules);
    }
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
            "RoleBinding",
            "ClusterRole"
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

/// `bind` names exactly the ClusterRoles the project RoleBindings refer to.
#[test]
fn bind_is_limited_to_the_project_roles() {
    let role = operator_role();
    let binds: Vec<&Value> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| strings(&r["verbs"]).contains(&"bind"))
        .collect();
    assert_eq!(binds.len(), 1, "{binds:?}");
    let r = binds[0];
    assert_eq!(strings(&r["verbs"]), ["bind"]);
    assert_eq!(strings(&r["apiGroups"]), ["rbac.authorization.k8s.io"]);
    assert_eq!(strings(&r["resources"]), ["clusterroles"]);
    assert_eq!(
        strings(&r["resourceNames"]),
        ["admin", "edit", "view", "kubenova-app-deployer"]
    );
}

/// The operator impersonates only the per-project app identity: ServiceAccounts named
/// `kubenova-app`, never users, groups or other ServiceAccounts.
#[test]
fn impersonation_is_limited_to_the_app_identity() {
    let role = operator_role();
    let rules: Vec<&Value> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| strings(&r["verbs"]).contains(&"impersonate"))
        .collect();
    assert_eq!(rules.len(), 1, "{rules:?}");
    let r = rules[0];
    assert_eq!(strings(&r["verbs"]), ["impersonate"]);
    assert_eq!(strings(&r["apiGroups"]), [""]);
    assert_eq!(strings(&r["resources"]), ["serviceaccounts"]);
    assert_eq!(strings(&r["resourceNames"]), ["kubenova-app"]);
    // The ServiceAccount rule itself is not cluster-wide read of tokens or secrets.
    for r in role["rules"].as_array().unwrap() {
        assert!(
            !strings(&r["resources"]).contains(&"serviceaccounts/token"),
            "{r}"
        );
        for forbidden in ["users", "groups", "userextras", "uids"] {
            assert!(!strings(&r["resources"]).contains(&forbidden), "{r}");
        }
    }
}

/// What a project's app identity gets cluster-wide through its RoleBinding (which limits
/// it to its own namespace): KubeVela Applications, nothing else.
#[test]
fn the_app_deployer_role_only_touches_applications() {
    let role = named("ClusterRole", "kubenova-app-deployer");
    let rules = role["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "{rules:?}");
    let r = &rules[0];
    assert_eq!(strings(&r["apiGroups"]), ["core.oam.dev"]);
    assert_eq!(strings(&r["resources"]), ["applications"]);
    assert_eq!(
        strings(&r["verbs"]),
        [
            "get", "list", "watch", "create", "patch", "update", "delete"
        ]
    );
    assert!(r.get("resourceNames").is_none());
    assert!(role.get("aggregationRule").is_none());
}

/// Pods, their logs and core Events are read only: the operator never creates, changes,
/// deletes or execs into pods, and never writes core Events (its own Events go through
/// events.k8s.io).
#[test]
fn pods_logs_and_events_are_read_only() {
    let role = operator_role();
    for r in role["rules"].as_array().unwrap() {
        if !strings(&r["apiGroups"]).contains(&"") {
            continue;
        }
        let resources = strings(&r["resources"]);
        let verbs = strings(&r["verbs"]);
        for res in ["pods", "pods/log", "events"] {
            if resources.contains(&res) {
                assert!(
                    verbs.iter().all(|v| ["get", "list"].contains(v)),
                    "{res}: {verbs:?}"
                );
            }
        }
        for res in [
            "pods/exec",
            "pods/attach",
            "pods/portforward",
            "pods/ephemeralcontainers",
        ] {
            assert!(!resources.contains(&res), "{res} granted");
        }
        if resources.contains(&"pods/log") {
            assert_eq!(verbs, ["get"]);
        }
        if resources.contains(&"events") {
            assert_eq!(verbs, ["list"], "core events: list only");
        }
    }
}
