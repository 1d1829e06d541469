//! ServiceAccount mode against the in-process testkit API server (real HTTPS, real kube::Client).
#![allow(clippy::unwrap_used)]

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kubenova_api::error::ErrorCode;
use kubenova_kubeconfig::{
    Error, KubeconfigExt, ServiceAccountKubeconfigRequest, service_account_kubeconfig,
};
use kubenova_testkit::TestCluster;
use time::OffsetDateTime;

async fn cluster_with_sa(ns: &str, sa: &str) -> TestCluster {
    let cluster = TestCluster::builder().start().await.unwrap();
    let client = cluster.client().unwrap();
    let mut n = Namespace::default();
    n.metadata.name = Some(ns.into());
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &n)
        .await
        .unwrap();
    let mut s = ServiceAccount::default();
    s.metadata.name = Some(sa.into());
    Api::<ServiceAccount>::namespaced(client, ns)
        .create(&PostParams::default(), &s)
        .await
        .unwrap();
    cluster
}

fn request(
    cluster: &TestCluster,
    ns: &str,
    sa: &str,
    secs: i64,
) -> ServiceAccountKubeconfigRequest {
    ServiceAccountKubeconfigRequest {
        cluster_name: "testkit".into(),
        namespace: ns.into(),
        service_account: sa.into(),
        expiration_seconds: secs,
        server_url: cluster.url().into(),
        ca_pem: cluster.ca_pem().into(),
        audiences: Vec::new(),
    }
}

async fn review(
    cluster: &TestCluster,
    token: &str,
) -> k8s_openapi::api::authentication::v1::TokenReviewStatus {
    let tr = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_owned(),
            ..TokenReviewSpec::default()
        },
        ..TokenReview::default()
    };
    Api::<TokenReview>::all(cluster.client().unwrap())
        .create(&PostParams::default(), &tr)
        .await
        .unwrap()
        .status
        .unwrap()
}

#[tokio::test]
async fn token_request_kubeconfig_authenticates_as_the_service_account() {
    let cluster = cluster_with_sa("ci", "builder").await;
    let before = OffsetDateTime::now_utc();
    let out = service_account_kubeconfig(
        &cluster.client().unwrap(),
        &request(&cluster, "ci", "builder", 1200),
    )
    .await
    .unwrap();

    // Bounded lifetime as requested.
    let lifetime = (out.expires_at - before).whole_seconds();
    assert!((1190..=1210).contains(&lifetime), "{lifetime}");

    // Typed kubeconfig: CA data, no insecure flag, namespace context, loads in kube.
    let yaml = out.kubeconfig.to_yaml().unwrap();
    assert!(!yaml.contains("insecure"));
    let kc = Kubeconfig::from_yaml(&yaml).unwrap();
    assert!(!kc.is_insecure());
    assert_eq!(kc.current_context.as_deref(), Some("testkit-sa-ci-builder"));
    assert_eq!(
        kc.contexts[0]
            .context
            .as_ref()
            .unwrap()
            .namespace
            .as_deref(),
        Some("ci")
    );

    // The token is the ServiceAccount's, per TokenReview.
    let token = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .unwrap()
        .to_owned();
    let status = review(&cluster, &token).await;
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    assert_eq!(
        status.user.unwrap().username.as_deref(),
        Some("system:serviceaccount:ci:builder")
    );
    assert!(review(&cluster, "not-a-token").await.authenticated != Some(true));

    // And a kube::Client built from the kubeconfig alone (CA verified) talks to the server.
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    assert_eq!(config.default_namespace, "ci");
    let client = kube::Client::try_from(config).unwrap();
    let sas = Api::<ServiceAccount>::default_namespaced(client)
        .list(&Default::default())
        .await
        .unwrap();
    assert_eq!(sas.items.len(), 1);
    // A bogus token is refused by the same server.
    let bad = cluster.client_with_token("not-a-token").unwrap();
    assert!(
        Api::<ServiceAccount>::namespaced(bad, "ci")
            .list(&Default::default())
            .await
            .is_err()
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn expiration_bounds_and_missing_service_account() {
    let cluster = cluster_with_sa("ci", "builder").await;
    let client = cluster.client().unwrap();
    for secs in [0, 599, 86_401] {
        let e = service_account_kubeconfig(&client, &request(&cluster, "ci", "builder", secs))
            .await
            .unwrap_err();
        assert!(
            matches!(e, Error::ExpirationOutOfRange { .. }),
            "{secs}: {e}"
        );
        assert_eq!(e.code(), ErrorCode::Validation);
    }
    for secs in [600, 86_400] {
        service_account_kubeconfig(&client, &request(&cluster, "ci", "builder", secs))
            .await
            .unwrap();
    }
    let e = service_account_kubeconfig(&client, &request(&cluster, "ci", "nobody", 600))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Kube(_)), "{e}");

    let mut r = request(&cluster, "ci", "builder", 600);
    r.server_url = cluster.url().replace("https://", "http://");
    assert!(matches!(
        service_account_kubeconfig(&client, &r).await.unwrap_err(),
        Error::InsecureUrl { .. }
    ));
    let mut r = request(&cluster, "ci", "builder", 600);
    r.ca_pem = String::new();
    assert!(matches!(
        service_account_kubeconfig(&client, &r).await.unwrap_err(),
        Error::MissingCa(_)
    ));
    cluster.shutdown().await;
}

#[tokio::test]
async fn audiences_are_passed_through() {
    let cluster = cluster_with_sa("ci", "builder").await;
    let mut r = request(&cluster, "ci", "builder", 600);
    r.audiences = vec!["kubenova-ci".into()];
    let out = service_account_kubeconfig(&cluster.client().unwrap(), &r)
        .await
        .unwrap();
    let yaml = out.kubeconfig.to_yaml().unwrap();
    let token = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .unwrap()
        .to_owned();
    let status = review(&cluster, &token).await;
    assert_eq!(status.authenticated, Some(true));
    assert_eq!(status.audiences, Some(vec!["kubenova-ci".to_owned()]));
    cluster.shutdown().await;
}
