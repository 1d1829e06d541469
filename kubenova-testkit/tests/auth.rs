//! TokenRequest / TokenReview, service-account bearer auth, the kubeconfig, and the binary.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenReview};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use kubenova_testkit::TestCluster;
use serde_json::json;

fn status_of(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn token_request_review_and_bearer_auth() {
    let cluster = TestCluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "robot"}})).unwrap(),
    )
    .await
    .unwrap();
    let tr: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": ["kubenova"], "expirationSeconds": 1200}
    }))
    .unwrap();
    let issued = sas
        .create_token_request("robot", &PostParams::default(), &tr)
        .await
        .unwrap();
    assert_eq!(issued.spec.as_ref().unwrap().expiration_seconds, Some(1200));
    let token = issued.status.unwrap().token.unwrap();
    assert_eq!(token.split('.').count(), 3, "a JWT");

    // Too short an expiry is rejected like Kubernetes does.
    let short: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 60}}))
            .unwrap();
    let e = status_of(
        sas.create_token_request("robot", &PostParams::default(), &short)
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    // Unknown service account -> 404.
    let e = status_of(
        sas.create_token_request("ghost", &PostParams::default(), &tr)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 404);
    // Only create is served on the token subresource.
    let req = http::Request::get("/api/v1/namespaces/default/serviceaccounts/robot/token")
        .body(vec![])
        .unwrap();
    let e = status_of(client.request::<serde_json::Value>(req).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (405, "MethodNotAllowed"));
    // Default expiry is 3600.
    let dflt: TokenRequest = serde_json::from_value(json!({"spec": {"audiences": []}})).unwrap();
    let d = sas
        .create_token_request("robot", &PostParams::default(), &dflt)
        .await
        .unwrap();
    assert_eq!(d.spec.unwrap().expiration_seconds, Some(3600));

    // TokenReview of the SA token, the admin token and garbage.
    let reviews: Api<TokenReview> = Api::all(client.clone());
    let review = |t: &str| -> TokenReview {
        serde_json::from_value(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": t}})).unwrap()
    };
    let r = reviews
        .create(&PostParams::default(), &review(&token))
        .await
        .unwrap();
    let st = r.status.unwrap();
    assert_eq!(st.authenticated, Some(true));
    assert_eq!(
        st.user.unwrap().username.as_deref(),
        Some("system:serviceaccount:default:robot")
    );
    let r = reviews
        .create(&PostParams::default(), &review(cluster.admin_token()))
        .await
        .unwrap();
    assert_eq!(r.status.unwrap().authenticated, Some(true));
    let r = reviews
        .create(&PostParams::default(), &review("nope"))
        .await
        .unwrap();
    assert_eq!(r.status.unwrap().authenticated, Some(false));

    // The SA token works as a bearer token...
    let robot = cluster.client_with_token(&token).unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(robot, "default");
    cms.list(&ListParams::default()).await.unwrap();
    // ...until the service account is deleted.
    sas.delete("robot", &Default::default()).await.unwrap();
    let e = status_of(cms.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(e.code, 401);
}

#[tokio::test]
async fn kubeconfig_has_ca_and_no_insecure_flag() {
    let cluster = TestCluster::start().await.unwrap();
    let yaml = cluster.kubeconfig_yaml();
    assert!(yaml.contains("certificate-authority-data"));
    assert!(!yaml.contains("insecure-skip-tls-verify"));
    let kc = cluster.kubeconfig();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let nss: Api<Namespace> = Api::all(client);
    let names: Vec<String> = nss
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.contains(&"default".to_owned()));
    // A client that does not trust the CA cannot connect.
    let mut untrusting = kube::Config::new(cluster.url().parse().unwrap());
    untrusting.auth_info =
        serde_saphyr::from_str(&format!("token: {}", cluster.admin_token())).unwrap();
    let c = kube::Client::try_from(untrusting).unwrap();
    assert!(
        Api::<Namespace>::all(c)
            .list(&ListParams::default())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn binary_serves_and_writes_kubeconfig() {
    let dir = tempfile::tempdir().unwrap();
    let kc_path = dir.path().join("kubeconfig.yaml");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kubenova-testkit"))
        .args([
            "serve",
            "--port",
            "0",
            "--with-upstream-crds",
            "--simulate",
            "capsule,kubevela",
            "--kubeconfig",
        ])
        .arg(&kc_path)
        .spawn()
        .unwrap();
    let mut text = String::new();
    for _ in 0..200 {
        if let Ok(t) = std::fs::read_to_string(&kc_path) {
            text = t;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!text.is_empty(), "kubeconfig was not written");
    let kc = kube::config::Kubeconfig::from_yaml(&text).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> = Api::all(client.clone());
    assert!(crds.get("tenants.capsule.clastix.io").await.is_ok());
    // Graceful SIGTERM.
    let pid = child.id();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let mut exit = None;
    for _ in 0..200 {
        if let Some(st) = child.try_wait().unwrap() {
            exit = Some(st);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some(status) = exit else {
        child.kill().unwrap();
        panic!("binary did not exit on SIGTERM");
    };
    assert!(status.success(), "exit status {status:?}");
}
