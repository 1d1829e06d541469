//! The committed CRD manifests match the Rust types, register in the testkit, and the
//! schema rejects invalid NovaTenants.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;

use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;

fn crd_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds")
}

#[test]
fn committed_crds_match_the_types() {
    let bless = std::env::var("KUBENOVA_BLESS").is_ok_and(|v| v == "1");
    let mut drift = Vec::new();
    for (file, yaml) in kubenova_reconcile::crds::crd_files().unwrap() {
        let path = crd_dir().join(&file);
        if bless {
            std::fs::create_dir_all(crd_dir()).unwrap();
            std::fs::write(&path, &yaml).unwrap();
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != yaml {
            drift.push(path.display().to_string());
        }
    }
    assert!(
        drift.is_empty(),
        "generated CRDs differ from {drift:?}; run `KUBENOVA_BLESS=1 cargo test -p kubenova-reconcile` and commit the result"
    );
}

#[test]
fn crds_have_names_columns_and_status() {
    let crds = kubenova_reconcile::crds::crds();
    let want = [
        ("novatenants.kubenova.io", "Cluster", "ntn"),
        ("novaprojects.kubenova.io", "Namespaced", "npj"),
        ("novaapps.kubenova.io", "Namespaced", "napp"),
    ];
    for (crd, (name, scope, short)) in crds.iter().zip(want) {
        assert_eq!(crd.metadata.name.as_deref(), Some(name));
        assert_eq!(crd.spec.scope, scope);
        assert_eq!(crd.spec.names.short_names, Some(vec![short.to_owned()]));
        let v = &crd.spec.versions[0];
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        let cols: Vec<&str> = v
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        for c in ["Ready", "Phase", "Age"] {
            assert!(cols.contains(&c), "{name}: {cols:?}");
        }
        let text = serde_json::to_string(&v.schema).unwrap();
        assert!(text.contains("x-kubernetes-validations"), "{name}");
        assert!(text.contains("observedGeneration"), "{name}");
    }
    // Name-derived parents are immutable.
    let project = serde_json::to_value(&crds[1]).unwrap();
    let tenant_field = project
        .pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/tenant")
        .unwrap();
    assert_eq!(
        tenant_field["x-kubernetes-validations"][0]["rule"],
        "self == oldSelf"
    );
}

fn nova_tenant_api(client: kube::Client) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubenova.io", "v1alpha1", "NovaTenant"),
        "novatenants",
    );
    Api::all_with(client, &ar)
}

async fn create_code(api: &Api<DynamicObject>, obj: serde_json::Value) -> (u16, String) {
    let obj: DynamicObject = serde_json::from_value(obj).unwrap();
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => (201, String::new()),
        Err(kube::Error::Api(s)) => (s.code, s.message.clone()),
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test]
async fn committed_crds_register_and_reject_invalid_tenants() {
    let cluster = kubenova_testkit::TestCluster::start().await.unwrap();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(crd_dir()).unwrap() {
        let yaml = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        names.extend(cluster.register_crd_yaml(&yaml).unwrap());
    }
    names.sort();
    assert_eq!(
        names,
        [
            "novaapps.kubenova.io",
            "novaprojects.kubenova.io",
            "novatenants.kubenova.io"
        ]
    );
    let api = nova_tenant_api(cluster.client().unwrap());
    let tenant = |name: &str, spec: serde_json::Value| json!({"apiVersion": "kubenova.io/v1alpha1", "kind": "NovaTenant", "metadata": {"name": name}, "spec": spec});
    let ok = create_code(
        &api,
        tenant(
            "acme",
            json!({"plan": "gold", "owners": ["alice@example.com"]}),
        ),
    )
    .await;
    assert_eq!(ok.0, 201, "{}", ok.1);
    let cases = [
        (
            tenant("Bad_Name", json!({"plan": "gold"})),
            422,
            "metadata.name",
        ),
        (
            tenant("typo", json!({"plan": "gold", "plna": "x"})),
            400,
            "plna",
        ),
        (
            tenant("badplan", json!({"plan": "Gold!"})),
            422,
            "spec.plan",
        ),
        (tenant("noplan", json!({"owners": ["a"]})), 422, "spec.plan"),
        (
            tenant("zero", json!({"plan": "gold", "namespaceQuota": 0})),
            422,
            "spec.namespaceQuota",
        ),
        (
            tenant("badq", json!({"plan": "gold", "quotas": {"pods": "lots"}})),
            422,
            "spec.quotas",
        ),
        (
            tenant("space", json!({"plan": "gold", "owners": ["a b"]})),
            422,
            "spec.owners",
        ),
    ];
    for (obj, code, needle) in cases {
        let (got, msg) = create_code(&api, obj.clone()).await;
        assert_eq!(got, code, "{obj}: {msg}");
        assert!(
            msg.contains(needle),
            "{obj}: {msg:?} should mention {needle}"
        );
    }
    cluster.shutdown().await;
}

/// The `spec.labels` rules of a committed CRD.
fn label_rules(file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(crd_dir().join(file)).unwrap();
    let crd: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    crd.pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/labels/x-kubernetes-validations")
        .and_then(|v| v.as_array())
        .map(|rules| {
            rules
                .iter()
                .map(|r| r["rule"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A NovaTenant or NovaProject created directly in the cluster cannot carry a reserved
/// label: the CRDs' CEL rule on `spec.labels` refuses every key the manager refuses. The
/// testkit does not evaluate CEL, so the rule is read from the committed CRDs and its
/// regular expression (RE2 syntax, which the `regex` crate shares) applied to keys.
#[test]
fn label_maps_refuse_reserved_keys() {
    for file in [
        "novatenants.kubenova.io.yaml",
        "novaprojects.kubenova.io.yaml",
    ] {
        let rules = label_rules(file);
        let reserved: Vec<&String> = rules
            .iter()
            .filter(|r| r.starts_with("self.all(k, !k.matches('"))
            .collect();
        assert_eq!(reserved.len(), 1, "{file}: {rules:?}");
        let pattern = reserved[0]
            .strip_prefix("self.all(k, !k.matches('")
            .and_then(|r| r.strip_suffix("'))"))
            .unwrap();
        assert!(
            !pattern.contains('\\') && !pattern.contains('\''),
            "{pattern}"
        );
        let re = regex::Regex::new(pattern).unwrap();
        for key in [
            "pod-security.kubernetes.io/enforce",
            "kubernetes.io/metadata.name",
            "node-role.k8s.io/x",
            "capsule.clastix.io/tenant",
            "projectcapsule.dev/tenant",
            "kubenova.io/tenant",
            "app.oam.dev/x",
        ] {
            assert!(re.is_match(key), "{file}: {key} must be refused");
        }
        for key in ["tier", "example.com/team", "kubernetes.io.example.com/x"] {
            assert!(!re.is_match(key), "{file}: {key} must be accepted");
        }
    }
}
