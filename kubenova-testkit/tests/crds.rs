//! CRD registration and openAPIV3Schema validation, the unmodified upstream Capsule /
//! capsule-proxy / KubeVela CRDs, the simulated controllers, and the embedded copies.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::core::Status;
use kube::{Discovery, ResourceExt};
use kubenova_testkit::TestCluster;
use serde_json::{Value, json};

const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1, maximum: 10}
              color: {type: string, enum: [red, blue]}
              name: {type: string, pattern: '^[a-z]+$', maxLength: 8}
              tags: {type: array, maxItems: 2, items: {type: string}}
              port: {x-kubernetes-int-or-string: true, anyOf: [{type: integer}, {type: string}]}
              note: {type: string, nullable: true}
              extra: {type: object, x-kubernetes-preserve-unknown-fields: true}
              mode: {type: string, default: fast}
          status:
            type: object
            properties:
              ready: {type: boolean}
"#;

fn api_err<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> Status {
    match r.expect_err("expected an error") {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn dynamic(
    cluster: &TestCluster,
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    ns: Option<&str>,
) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
    match ns {
        Some(n) => Api::namespaced_with(cluster.client().unwrap(), n, &ar),
        None => Api::all_with(cluster.client().unwrap(), &ar),
    }
}

fn obj(v: Value) -> DynamicObject {
    serde_json::from_value(v).unwrap()
}

#[tokio::test]
async fn crd_via_api_validation_and_status() {
    let cluster = TestCluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_saphyr::from_str(WIDGET_CRD).unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let got = crds.get("widgets.example.com").await.unwrap();
    let conds = got.status.unwrap().conditions.unwrap();
    assert!(
        conds
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    );
    let d = Discovery::new(client.clone()).run().await.unwrap();
    assert!(d.get("example.com").is_some());

    let widgets = dynamic(
        &cluster,
        "example.com",
        "v1",
        "Widget",
        "widgets",
        Some("default"),
    );
    let ok = widgets
        .create(&PostParams::default(), &obj(json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w1"},
            "spec": {"size": 3, "color": "red", "name": "abc", "tags": ["a"], "port": "http", "note": null, "extra": {"any": {"thing": 1}}},
            "status": {"ready": true}})))
        .await
        .unwrap();
    assert_eq!(ok.data["spec"]["mode"], "fast", "defaults are applied");
    assert!(
        ok.data.get("status").is_none(),
        "status ignored on create with status subresource"
    );
    assert_eq!(ok.metadata.generation, Some(1));

    // Every kind of schema violation is reported with its field path.
    let e = api_err(
        widgets
            .create(&PostParams::default(), &obj(json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "bad"},
                "spec": {"size": 0, "color": "green", "name": "ABC123456", "tags": ["a", "b", "c"], "port": 1.5}})))
            .await,
    );
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    let fields: Vec<String> = e
        .details
        .unwrap()
        .causes
        .iter()
        .map(|c| c.field.clone())
        .collect();
    for f in [
        "spec.size",
        "spec.color",
        "spec.name",
        "spec.tags",
        "spec.port",
    ] {
        assert!(fields.iter().any(|x| x == f), "{f} missing in {fields:?}");
    }
    let e = api_err(
        widgets
            .create(&PostParams::default(), &obj(json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "bad"}, "spec": {}})))
            .await,
    );
    assert_eq!(e.details.unwrap().causes[0].field, "spec.size");
    // Unknown fields are rejected (strict), at any depth.
    let e = api_err(
        widgets
            .create(&PostParams::default(), &obj(json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "bad"}, "spec": {"size": 1, "colour": "red"}})))
            .await,
    );
    assert_eq!((e.code, e.reason.as_str()), (400, "BadRequest"));
    assert!(
        e.message.contains("unknown field \"spec.colour\""),
        "{}",
        e.message
    );
    assert!(
        widgets.get_opt("bad").await.unwrap().is_none(),
        "nothing is stored on error"
    );

    // fieldValidation=Ignore prunes unknown fields instead of rejecting them.
    let req = http::Request::post(
        "/apis/example.com/v1/namespaces/default/widgets?fieldValidation=Ignore",
    )
    .header("content-type", "application/json")
    .body(
        serde_json::to_vec(
            &json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "lax"},
                "spec": {"size": 1, "colour": "red"}}),
        )
        .unwrap(),
    )
    .unwrap();
    let lax: Value = client.request(req).await.unwrap();
    assert!(lax["spec"].get("colour").is_none());
    assert_eq!(lax["spec"]["size"], 1);

    // A CRD whose name is not <plural>.<group> is invalid.
    let mut wrong: CustomResourceDefinition = serde_saphyr::from_str(WIDGET_CRD).unwrap();
    wrong.metadata.name = Some("gadgets.example.com".into());
    let e = api_err(crds.create(&PostParams::default(), &wrong).await);
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert_eq!(e.details.unwrap().causes[0].field, "metadata.name");

    // Status subresource: main-resource writes ignore status; /status only changes status.
    let pp = PatchParams::default();
    let out = widgets
        .patch("w1", &pp, &Patch::Merge(json!({"status": {"ready": true}})))
        .await
        .unwrap();
    assert!(out.data.get("status").is_none());
    let out = widgets
        .patch_status(
            "w1",
            &pp,
            &Patch::Merge(json!({"status": {"ready": true}, "spec": {"size": 9}})),
        )
        .await
        .unwrap();
    assert_eq!(out.data["status"]["ready"], true);
    assert_eq!(out.data["spec"]["size"], 3);
    assert_eq!(out.metadata.generation, Some(1));
    let e = api_err(
        widgets
            .patch_status(
                "w1",
                &pp,
                &Patch::Merge(json!({"status": {"ready": "yes"}})),
            )
            .await,
    );
    assert_eq!(e.code, 422);
    let out = widgets
        .patch("w1", &pp, &Patch::Merge(json!({"spec": {"size": 4}})))
        .await
        .unwrap();
    assert_eq!(out.metadata.generation, Some(2));
    // Strategic merge patch is not supported for custom resources.
    let e = api_err(
        widgets
            .patch("w1", &pp, &Patch::Strategic(json!({"spec": {"size": 5}})))
            .await,
    );
    assert_eq!(e.code, 415);

    // Deleting the CRD removes the type and its objects.
    crds.delete("widgets.example.com", &Default::default())
        .await
        .unwrap();
    let e = api_err(widgets.get("w1").await);
    assert_eq!(e.code, 404);
}

#[tokio::test]
async fn upstream_crds_load_and_tenant_validation() {
    let cluster = TestCluster::builder()
        .with_upstream_crds(true)
        .start()
        .await
        .unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client().unwrap());
    let names: Vec<String> = crds
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|c| c.name_any())
        .collect();
    for n in [
        "tenants.capsule.clastix.io",
        "capsuleconfigurations.capsule.clastix.io",
        "tenantresources.capsule.clastix.io",
        "globaltenantresources.capsule.clastix.io",
        "proxysettings.capsule.clastix.io",
        "globalproxysettings.capsule.clastix.io",
        "applications.core.oam.dev",
        "componentdefinitions.core.oam.dev",
        "traitdefinitions.core.oam.dev",
        "workflowstepdefinitions.core.oam.dev",
        "packages.cue.oam.dev",
    ] {
        assert!(names.contains(&n.to_owned()), "{n} not loaded");
    }
    assert_eq!(names.len(), kubenova_testkit::upstream::UPSTREAM_CRDS.len());
    let tenants = dynamic(
        &cluster,
        "capsule.clastix.io",
        "v1beta2",
        "Tenant",
        "tenants",
        None,
    );
    let tenant: DynamicObject = serde_saphyr::from_str(
        r#"
apiVersion: capsule.clastix.io/v1beta2
kind: Tenant
metadata: {name: acme}
spec:
  owners: [{kind: User, name: alice}, {kind: Group, name: acme-admins}]
  namespaceOptions: {quota: 5}
  resourceQuotas: {scope: Tenant, items: [{hard: {limits.cpu: "8", limits.memory: 16Gi, pods: 20}}]}
  limitRanges: {items: [{limits: [{type: Container, default: {cpu: 500m}, defaultRequest: {cpu: 100m}}]}]}
  networkPolicies: {items: [{policyTypes: [Ingress], podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {capsule.clastix.io/tenant: acme}}}]}]}]}
  additionalRoleBindings: [{clusterRoleName: view, subjects: [{kind: Group, name: auditors, apiGroup: rbac.authorization.k8s.io}]}]
  ingressOptions: {allowedClasses: {allowed: [nginx]}, allowedHostnames: {allowedRegex: '.*\.acme\.com'}, hostnameCollisionScope: Tenant}
  storageClasses: {allowed: [standard], default: standard}
  nodeSelector: {pool: acme}
"#,
    )
    .unwrap();
    tenants
        .create(&PostParams::default(), &tenant)
        .await
        .unwrap();
    // v1beta1 is served as well.
    let v1beta1 = dynamic(
        &cluster,
        "capsule.clastix.io",
        "v1beta1",
        "Tenant",
        "tenants",
        None,
    );
    assert_eq!(v1beta1.get("acme").await.unwrap().name_any(), "acme");

    let bad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant", "metadata": {"name": "broken"},
        "spec": {"owners": [{"kind": "Robot"}], "namespaceOptions": {"quota": 0}}
    }))
    .unwrap();
    let e = api_err(tenants.create(&PostParams::default(), &bad).await);
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    let causes = e.details.unwrap().causes;
    let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
    assert!(fields.contains(&"spec.owners[0].kind"), "{fields:?}");
    assert!(fields.contains(&"spec.owners[0].name"), "{fields:?}");
    assert!(
        fields.contains(&"spec.namespaceOptions.quota"),
        "{fields:?}"
    );
    let typo: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant", "metadata": {"name": "typo"},
        "spec": {"ownerz": []}
    }))
    .unwrap();
    assert_eq!(
        api_err(tenants.create(&PostParams::default(), &typo).await).code,
        400
    );

    // KubeVela Application from NOTES.md is accepted; one without components is not.
    let ns_api: Api<Namespace> = Api::all(cluster.client().unwrap());
    ns_api
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "acme-dev"}})).unwrap(),
        )
        .await
        .unwrap();
    let apps = dynamic(
        &cluster,
        "core.oam.dev",
        "v1beta1",
        "Application",
        "applications",
        Some("acme-dev"),
    );
    let app: DynamicObject = serde_saphyr::from_str(
        r#"
apiVersion: core.oam.dev/v1beta1
kind: Application
metadata: {name: web, namespace: acme-dev}
spec:
  components:
  - name: web
    type: webservice
    properties: {image: nginx, port: 80}
    traits: [{type: scaler, properties: {replicas: 2}}]
  policies: [{name: topo, type: topology, properties: {clusters: [local]}}]
  workflow: {steps: [{name: deploy, type: deploy, properties: {policies: [topo]}}]}
"#,
    )
    .unwrap();
    apps.create(&PostParams::default(), &app).await.unwrap();
    let bad_app: DynamicObject = serde_json::from_value(json!({"apiVersion": "core.oam.dev/v1beta1", "kind": "Application", "metadata": {"name": "x"}, "spec": {}})).unwrap();
    let e = api_err(apps.create(&PostParams::default(), &bad_app).await);
    assert_eq!(e.details.unwrap().causes[0].field, "spec.components");
}

async fn wait_for<F: Fn(&DynamicObject) -> bool>(
    api: &Api<DynamicObject>,
    name: &str,
    f: F,
) -> DynamicObject {
    for _ in 0..100 {
        if let Some(o) = api.get_opt(name).await.unwrap()
            && f(&o)
        {
            return o;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {name}");
}

#[tokio::test]
async fn simulated_capsule_and_kubevela() {
    let cluster = TestCluster::builder()
        .with_upstream_crds(true)
        .simulate_capsule(true)
        .simulate_kubevela(true)
        .start()
        .await
        .unwrap();
    let client = cluster.client().unwrap();
    let tenants = dynamic(
        &cluster,
        "capsule.clastix.io",
        "v1beta2",
        "Tenant",
        "tenants",
        None,
    );
    tenants
        .create(&PostParams::default(), &obj(json!({"apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant", "metadata": {"name": "acme"}, "spec": {"owners": [{"kind": "User", "name": "alice"}]}})))
        .await
        .unwrap();
    let t = wait_for(&tenants, "acme", |t| t.data["status"]["state"] == "Active").await;
    assert_eq!(t.data["status"]["size"], 0);
    assert_eq!(t.data["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(t.data["status"]["conditions"][0]["status"], "True");
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "acme-dev", "labels": {"capsule.clastix.io/tenant": "acme"}}})).unwrap(),
    )
    .await
    .unwrap();
    let t = wait_for(&tenants, "acme", |t| t.data["status"]["size"] == 1).await;
    assert_eq!(t.data["status"]["namespaces"], json!(["acme-dev"]));
    let ns = nss.get("acme-dev").await.unwrap();
    assert_eq!(
        ns.labels()
            .get("projectcapsule.dev/tenant")
            .map(String::as_str),
        Some("acme")
    );
    assert_eq!(ns.owner_references()[0].kind, "Tenant");

    let apps = dynamic(
        &cluster,
        "core.oam.dev",
        "v1beta1",
        "Application",
        "applications",
        Some("acme-dev"),
    );
    apps.create(
        &PostParams::default(),
        &obj(json!({"apiVersion": "core.oam.dev/v1beta1", "kind": "Application", "metadata": {"name": "web"},
            "spec": {"components": [{"name": "web", "type": "webservice", "properties": {"image": "nginx"}}]}})),
    )
    .await
    .unwrap();
    let app = wait_for(&apps, "web", |a| a.data["status"]["status"] == "running").await;
    assert_eq!(app.data["status"]["services"][0]["name"], "web");
    assert_eq!(app.data["status"]["services"][0]["healthy"], true);
    assert!(
        app.data["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Ready")
    );
    // A spec change is observed again.
    apps.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"components": [{"name": "web", "type": "webservice", "properties": {"image": "nginx:2"}}]}})))
        .await
        .unwrap();
    wait_for(&apps, "web", |a| {
        a.data["status"]["observedGeneration"] == 2
    })
    .await;
}

#[test]
fn embedded_copies_are_byte_identical_to_shared() {
    let shared =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/upstream-schemas");
    if !shared.exists() {
        eprintln!("skipping: {} not present", shared.display());
        return;
    }
    for (rel, text) in kubenova_testkit::upstream::UPSTREAM_CRDS {
        let on_disk = std::fs::read(shared.join(rel)).unwrap();
        assert_eq!(on_disk, text.as_bytes(), "{rel} differs from shared/");
    }
    for (file, text) in kubenova_testkit::upstream::K8S_SCHEMAS {
        let on_disk =
            std::fs::read(shared.join("kubernetes/v1.36.0-local-strict").join(file)).unwrap();
        assert_eq!(on_disk, text.as_bytes(), "{file} differs from shared/");
    }
}
