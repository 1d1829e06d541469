//! Every translated object is created through `kube::Client` in a testkit cluster that has
//! the unmodified upstream Capsule/KubeVela CRDs, the Kubernetes strict schemas and our
//! generated Nova CRDs: unknown fields (400) and schema violations (422) fail the test.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;

use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kubenova_api::catalog::Catalog;
use kubenova_api::crd::{NovaApp, NovaProject, NovaTenant};
use kubenova_reconcile::{
    app_rules, project_namespace, translate_app, translate_project, translate_tenant,
};
use kubenova_testkit::TestCluster;
use serde_json::{Value, json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

async fn cluster() -> TestCluster {
    let c = TestCluster::builder()
        .with_upstream_crds(true)
        .start()
        .await
        .unwrap();
    for entry in std::fs::read_dir(repo().join("deploy/crds")).unwrap() {
        c.register_crd_yaml(&std::fs::read_to_string(entry.unwrap().path()).unwrap())
            .unwrap();
    }
    c
}

fn resource_of(kind: &str) -> (&'static str, &'static str, bool) {
    match kind {
        "Namespace" => ("", "namespaces", false),
        "RoleBinding" => ("rbac.authorization.k8s.io", "rolebindings", true),
        "ServiceAccount" => ("", "serviceaccounts", true),
        "ResourceQuota" => ("", "resourcequotas", true),
        "Tenant" => ("capsule.clastix.io", "tenants", false),
        "Application" => ("core.oam.dev", "applications", true),
        "NovaTenant" => ("kubenova.io", "novatenants", false),
        "NovaProject" => ("kubenova.io", "novaprojects", true),
        "NovaApp" => ("kubenova.io", "novaapps", true),
        other => panic!("unexpected kind {other}"),
    }
}

/// Creates `obj` and returns the stored object (with uid).
async fn create(client: &kube::Client, obj: &Value) -> Value {
    let kind = obj["kind"].as_str().unwrap();
    let api_version = obj["apiVersion"].as_str().unwrap();
    let (group, plural, namespaced) = resource_of(kind);
    let version = api_version.rsplit('/').next().unwrap();
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    let api: Api<DynamicObject> = if namespaced {
        Api::namespaced_with(
            client.clone(),
            obj["metadata"]["namespace"].as_str().unwrap(),
            &ar,
        )
    } else {
        Api::all_with(client.clone(), &ar)
    };
    let dynamic: DynamicObject = serde_json::from_value(obj.clone()).unwrap();
    match api.create(&PostParams::default(), &dynamic).await {
        Ok(o) => serde_json::to_value(o).unwrap(),
        Err(e) => panic!(
            "creating {kind} {}: {e}\n{}",
            obj["metadata"]["name"],
            serde_json::to_string_pretty(obj).unwrap()
        ),
    }
}

fn tenant(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "kubenova.io/v1alpha1", "kind": "NovaTenant", "metadata": {"name": name}, "spec": spec})
}

fn project(tenant: &str, name: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["tenant"] = json!(tenant);
    json!({"apiVersion": "kubenova.io/v1alpha1", "kind": "NovaProject",
           "metadata": {"name": name, "namespace": format!("{tenant}-owner")}, "spec": spec})
}

fn app(tenant: &str, project: &str, name: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["tenant"] = json!(tenant);
    spec["project"] = json!(project);
    json!({"apiVersion": "kubenova.io/v1alpha1", "kind": "NovaApp",
           "metadata": {"name": name, "namespace": project_namespace(tenant, project)}, "spec": spec})
}

fn examples() -> Vec<Value> {
    ["novatenant.yaml", "novaproject.yaml", "novaapp.yaml"]
        .iter()
        .map(|f| {
            serde_saphyr::from_str(
                &std::fs::read_to_string(repo().join("examples/crds").join(f)).unwrap(),
            )
            .unwrap()
        })
        .collect()
}

/// Representative inputs: every plan including the largest (`platinum`), owners of every
/// subject kind, every optional field, and two tenants with a project of the same name.
fn table() -> (Vec<Value>, Vec<Value>, Vec<Value>) {
    let mut ex = examples();
    let ex_app = ex.pop().unwrap();
    let ex_project = ex.pop().unwrap();
    let ex_tenant = ex.pop().unwrap();
    let tenants = vec![
        ex_tenant,
        tenant("small", json!({"plan": "baseline", "owners": ["user:bob"]})),
        tenant("bare", json!({"plan": "baseline"})),
        tenant(
            "goldie",
            json!({
                "plan": "gold",
                "owners": ["group:gold-team", "serviceaccount:ops:robot", "carol@example.com"],
                "viewers": ["serviceaccount:monitoring:prometheus", "user:dave"],
                "policysets": ["tenant-isolation", "pod-security-restricted", "gold-tier"],
                "limits": {"defaultRequest": {"cpu": "2"}, "default": {"cpu": "1", "memory": "1Gi"}, "max": {"cpu": "500m"}},
                "namespaceQuota": 12,
                "storageClasses": {"allowed": ["ssd"]},
            }),
        ),
        tenant(
            "open",
            json!({"plan": "platinum", "policysets": [], "quotas": {}, "limits": {}}),
        ),
        tenant("a", json!({"plan": "platinum", "owners": ["group:a"]})),
        tenant("a-b", json!({"plan": "gold", "owners": ["group:a-b"]})),
    ];
    let projects = vec![
        ex_project,
        project("small", "web", json!({})),
        project(
            "goldie",
            "web",
            json!({"access": ["viewer:serviceaccount:ci:reader", "owner:group:leads"], "quota": {"pods": 10}}),
        ),
        project("a", "b-c", json!({"access": ["x@example.com"]})),
        project("a-b", "c", json!({"access": ["y@example.com"]})),
        project("a", "web", json!({})),
        project("a-b", "web", json!({})),
    ];
    let apps = vec![
        ex_app,
        app(
            "small",
            "web",
            "site",
            json!({"components": [{"name": "site", "type": "webservice", "properties": {"image": "nginx"}}]}),
        ),
        app(
            "goldie",
            "web",
            "paused",
            json!({
                "suspended": true, "revision": 7,
                "components": [{"name": "api", "type": "webservice"}],
                "policies": [{"name": "once", "type": "apply-once"}, {"name": "gc", "type": "garbage-collect"}],
            }),
        ),
        app(
            "goldie",
            "web",
            "paused-flow",
            json!({
                "suspended": true,
                "components": [{"name": "api", "type": "webservice"}],
                "workflow": {"steps": [{"name": "deploy", "type": "deploy"}]},
            }),
        ),
        app(
            "a",
            "web",
            "web",
            json!({"components": [{"name": "web", "type": "webservice"}], "traits": [{"type": "scaler", "properties": {"replicas": 2}}]}),
        ),
        app(
            "a-b",
            "web",
            "web",
            json!({"components": [{"name": "web", "type": "webservice"}]}),
        ),
    ];
    (tenants, projects, apps)
}

#[tokio::test]
async fn translated_objects_validate_against_upstream_schemas() {
    let cluster = cluster().await;
    let client = cluster.client().unwrap();
    let catalog = Catalog::builtin_ref();
    let (tenants, projects, apps) = table();
    let mut created = 0;
    let mut rules = std::collections::BTreeMap::new();
    for t in &tenants {
        let stored: NovaTenant = serde_json::from_value(create(&client, t).await).unwrap();
        rules.insert(
            stored.metadata.name.clone().unwrap(),
            app_rules(&stored.spec, catalog).unwrap(),
        );
        assert!(stored.metadata.uid.is_some());
        let objs = translate_tenant(&stored, catalog).unwrap();
        for o in objs.to_values() {
            let got = create(&client, &o).await;
            assert_eq!(
                got["metadata"]["ownerReferences"][0]["uid"].as_str(),
                stored.metadata.uid.as_deref()
            );
            created += 1;
        }
    }
    let mut namespaces = std::collections::BTreeSet::new();
    for p in &projects {
        let stored: NovaProject = serde_json::from_value(create(&client, p).await).unwrap();
        let objs = translate_project(&stored, None).unwrap();
        assert!(
            namespaces.insert(objs.namespace.metadata.name.clone().unwrap()),
            "namespace clash"
        );
        for o in objs.to_values() {
            create(&client, &o).await;
            created += 1;
        }
    }
    for a in &apps {
        let stored: NovaApp = serde_json::from_value(create(&client, a).await).unwrap();
        let o = translate_app(&stored, &rules[&stored.spec.tenant]).unwrap();
        let got = create(&client, &o).await;
        assert_eq!(got["metadata"]["ownerReferences"][0]["kind"], "NovaApp");
        created += 1;
    }
    // 7 tenants x (Tenant + 2 namespaces) + 7 projects x (ns + ServiceAccount + 3 access
    // RoleBindings + 2 app RoleBindings) + 2 quotas + 6 apps.
    assert_eq!(created, 7 * 3 + 7 * 7 + 2 + 6);
    cluster.shutdown().await;
}

#[tokio::test]
async fn rendered_examples_validate_too() {
    let cluster = cluster().await;
    let client = cluster.client().unwrap();
    let docs: String = ["novatenant.yaml", "novaproject.yaml", "novaapp.yaml"]
        .iter()
        .map(|f| std::fs::read_to_string(repo().join("examples/crds").join(f)).unwrap())
        .collect::<Vec<_>>()
        .join("---\n");
    let out = kubenova_reconcile::render(&docs, Catalog::builtin_ref()).unwrap();
    let mut kinds = Vec::new();
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(&out).unwrap();
    for v in docs {
        kinds.push(v["kind"].as_str().unwrap().to_owned());
        create(&client, &v).await;
    }
    assert_eq!(
        kinds,
        [
            "Tenant",
            "Namespace",
            "Namespace",
            "Namespace",
            "ServiceAccount",
            "RoleBinding",
            "RoleBinding",
            "RoleBinding",
            "RoleBinding",
            "RoleBinding",
            "ResourceQuota",
            "Application"
        ]
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn the_harness_rejects_what_upstream_rejects() {
    // Negative control: the same path refuses unknown fields and schema violations.
    let cluster = cluster().await;
    let client = cluster.client().unwrap();
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("capsule.clastix.io", "v1beta2", "Tenant"),
        "tenants",
    );
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    for (spec, code) in [
        (json!({"owners": [{"kind": "Robot", "name": "x"}]}), 422),
        (json!({"namespaceOptions": {"quota": 0}}), 422),
        (
            json!({"resourceQuotas": {"scope": "Tenant", "itemz": []}}),
            400,
        ),
    ] {
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant", "metadata": {"name": "neg"}, "spec": spec
        }))
        .unwrap();
        match api.create(&PostParams::default(), &obj).await {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, code, "{}", s.message),
            other => panic!("expected {code}, got {other:?}"),
        }
    }
    cluster.shutdown().await;
}
