//! `/openapi/v2` and `/openapi/v3` over HTTPS: built-in kinds with their merge keys, the
//! PATCH `fieldValidation` parameter kubectl checks, CRDs appearing and disappearing with
//! the CRD, and 406 for a protobuf-only Accept.
#![allow(clippy::unwrap_used, missing_docs)]

use kube::Client;
use kubenova_testkit::TestCluster;
use serde_json::Value;

const WIDGETS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer, minimum: 1}
"#;

async fn get(client: &Client, path: &str, accept: &str) -> Result<Value, kube::Error> {
    let req = http::Request::get(path)
        .header("accept", accept)
        .body(vec![])
        .unwrap();
    client.request::<Value>(req).await
}

fn patch_params(doc: &Value, path: &str) -> Vec<String> {
    doc["paths"][path]["patch"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn openapi_documents_follow_the_registry() {
    let cluster = TestCluster::start().await.unwrap();
    let client = cluster.client().unwrap();

    let index = get(&client, "/openapi/v3", "application/json")
        .await
        .unwrap();
    let core = index["paths"]["api/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(core.starts_with("/openapi/v3/api/v1?hash="), "{core}");
    assert!(index["paths"]["apis/example.com/v1"].is_null());
    let apps = get(&client, "/openapi/v3/apis/apps/v1", "application/json")
        .await
        .unwrap();
    let path = "/apis/apps/v1/namespaces/{namespace}/deployments/{name}";
    assert!(patch_params(&apps, path).contains(&"fieldValidation".to_owned()));
    assert_eq!(
        apps["paths"][path]["patch"]["x-kubernetes-group-version-kind"]["kind"],
        "Deployment"
    );
    let schemas = &apps["components"]["schemas"];
    let containers = &schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
    assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
    assert_eq!(
        containers["items"]["$ref"],
        "#/components/schemas/io.k8s.api.core.v1.Container"
    );
    assert_eq!(
        schemas["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"][0]["kind"],
        "Deployment"
    );

    // A CRD shows up in both documents, with its schema, and the index hash is new.
    cluster.register_crd_yaml(WIDGETS).unwrap();
    let index = get(&client, "/openapi/v3", "application/json")
        .await
        .unwrap();
    let url = index["paths"]["apis/example.com/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_owned();
    let doc = get(&client, &url, "application/json").await.unwrap();
    let widget = &doc["components"]["schemas"]["com.example.v1.Widget"];
    assert_eq!(
        widget["properties"]["spec"]["properties"]["size"]["minimum"],
        1
    );
    assert_eq!(
        widget["properties"]["metadata"]["$ref"],
        "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    );
    assert!(
        patch_params(
            &doc,
            "/apis/example.com/v1/namespaces/{namespace}/widgets/{name}"
        )
        .contains(&"fieldValidation".to_owned())
    );
    let v2 = get(&client, "/openapi/v2", "application/json")
        .await
        .unwrap();
    assert_eq!(v2["swagger"], "2.0");
    assert!(v2["definitions"]["com.example.v1.Widget"].is_object());
    assert!(v2["definitions"]["io.k8s.api.core.v1.Secret"].is_object());
    assert_eq!(
        v2["definitions"]["io.k8s.api.core.v1.Secret"]["properties"]["metadata"]["$ref"],
        "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    );

    // Deleting the CRD removes it again.
    let req = http::Request::delete(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com",
    )
    .body(vec![])
    .unwrap();
    client.request::<Value>(req).await.unwrap();
    let index = get(&client, "/openapi/v3", "application/json")
        .await
        .unwrap();
    assert!(index["paths"]["apis/example.com/v1"].is_null());
    let e = get(
        &client,
        "/openapi/v3/apis/example.com/v1",
        "application/json",
    )
    .await
    .unwrap_err();
    assert!(matches!(e, kube::Error::Api(s) if s.code == 404));

    // Only JSON is produced: a protobuf-only Accept is 406, a list with JSON is fine.
    let e = get(
        &client,
        "/openapi/v2",
        "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
    )
    .await
    .unwrap_err();
    assert!(matches!(e, kube::Error::Api(s) if s.code == 406 && s.reason == "NotAcceptable"));
    get(
        &client,
        "/openapi/v2",
        "application/com.github.proto-openapi.spec.v2@v1.0+protobuf, application/json",
    )
    .await
    .unwrap();
    cluster.shutdown().await;
}
