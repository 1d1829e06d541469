//! `Impersonate-User` and the emulated KubeVela Application webhook, through the real
//! `kube::Client`.
#![allow(clippy::unwrap_used, missing_docs)]

use kube::Resource as _;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kubenova_testkit::TestCluster;
use kubenova_testkit::server::KUBEVELA_USERNAME_ANNOTATION;
use serde_json::json;

fn applications() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("core.oam.dev", "v1beta1", "Application"),
        "applications",
    )
}

fn username(o: &DynamicObject) -> Option<&str> {
    o.metadata
        .annotations
        .as_ref()?
        .get(KUBEVELA_USERNAME_ANNOTATION)
        .map(String::as_str)
}

#[tokio::test]
async fn applications_record_the_requesting_or_impersonated_user() {
    let cluster = TestCluster::builder()
        .with_upstream_crds(true)
        .simulate_kubevela(true)
        .start()
        .await
        .unwrap();
    let client = cluster.client().unwrap();
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    ns.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap(),
    )
    .await
    .unwrap();
    let apps: Api<DynamicObject> = Api::namespaced_with(client.clone(), "team", &applications());
    let app = |name: &str| {
        json!({"apiVersion": "core.oam.dev/v1beta1", "kind": "Application",
               "metadata": {"name": name, "namespace": "team"},
               "spec": {"components": [{"name": "web", "type": "webservice"}]}})
    };
    // Written as the admin: the admin is recorded.
    let created = apps
        .create(
            &PostParams::default(),
            &serde_json::from_value(app("a")).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(username(&created), Some("kubernetes-admin"));

    // A server-side apply while impersonating a service account records that account,
    // in the object the apply returns, and counts the request as that user's.
    let sa = "system:serviceaccount:team:deployer";
    let url = DynamicObject::url_path(&applications(), Some("team"));
    let mut req = kube::core::Request::new(url)
        .patch(
            "b",
            &PatchParams::apply("test").force(),
            &Patch::Apply(app("b")),
        )
        .unwrap();
    req.headers_mut()
        .insert("Impersonate-User", sa.parse().unwrap());
    let applied: DynamicObject = client.request(req).await.unwrap();
    assert_eq!(username(&applied), Some(sa));
    assert_eq!(username(&apps.get("b").await.unwrap()), Some(sa));
    assert_eq!(cluster.faults().counts_for(sa).total, 1);

    // Another write without impersonation records the writer again.
    let again = apps
        .patch(
            "b",
            &PatchParams::apply("test").force(),
            &Patch::Apply(app("b")),
        )
        .await
        .unwrap();
    assert_eq!(username(&again), Some("kubernetes-admin"));
}
