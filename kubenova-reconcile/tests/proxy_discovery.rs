//! Capsule Proxy discovery (`kubenova_reconcile::agent::discover_proxy`) against a testkit
//! cluster holding the objects the Capsule Proxy chart (0.14, release `capsule-proxy` in
//! `capsule-system`, as `kubenova_reconcile::components` installs it) creates: the
//! Service, the Deployment mounting its serving-certificate Secret at `--ssl-cert-path`,
//! that Secret as cert-manager writes it (`ca.crt`, the chart's default) or as the
//! chart's certgen job writes it (`ca`), and, with `ingress.enabled`, the Ingress.
#![allow(clippy::unwrap_used, missing_docs)]

use base64::Engine as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kubenova_reconcile::agent::{self, discover_proxy};
use kubenova_testkit::TestCluster;
use serde_json::{Value, json};

const NS: &str = "capsule-system";
const IN_CLUSTER: &str = "https://capsule-proxy.capsule-system.svc:9001";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn pp() -> PatchParams {
    PatchParams::apply("helm").force()
}

async fn apply<K>(client: &Client, name: &str, object: Value)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    Api::<K>::namespaced(client.clone(), NS)
        .patch(name, &pp(), &Patch::Apply(object))
        .await
        .unwrap_or_else(|e| panic!("applying {name}: {e}"));
}

fn labels() -> Value {
    json!({"app.kubernetes.io/component": "proxy", "app.kubernetes.io/name": "capsule-proxy",
        "app.kubernetes.io/instance": "capsule-proxy", "app.kubernetes.io/managed-by": "Helm",
        "helm.sh/chart": "capsule-proxy-0.14.1"})
}

/// The Service and the Deployment of the chart (`options.enableSSL`, the default, with
/// `certificate_secret` as `options.certificateVolumeName` or the default).
async fn install_chart(client: &Client, enable_ssl: bool, certificate_secret: &str) {
    Api::<Namespace>::all(client.clone())
        .patch(
            NS,
            &pp(),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
            ),
        )
        .await
        .unwrap();
    apply::<Service>(
        client,
        "capsule-proxy",
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "capsule-proxy", "namespace": NS, "labels": labels()},
            "spec": {"type": "ClusterIP",
                "ports": [{"name": "proxy", "port": 9001, "protocol": "TCP", "targetPort": 9001}],
                "selector": {"app.kubernetes.io/component": "proxy", "app.kubernetes.io/name": "capsule-proxy",
                    "app.kubernetes.io/instance": "capsule-proxy"}}}),
    )
    .await;
    let mut args = vec![
        "--listening-port=9001".to_string(),
        "--capsule-configuration-name=default".into(),
        "--zap-log-level=4".into(),
        format!("--enable-ssl={enable_ssl}"),
        "--oidc-username-claim=preferred_username".into(),
    ];
    let mut volumes = vec![];
    let mut mounts = vec![];
    if enable_ssl {
        args.push("--ssl-cert-path=/opt/capsule-proxy/tls.crt".into());
        args.push("--ssl-key-path=/opt/capsule-proxy/tls.key".into());
        volumes.push(json!({"name": "certs", "secret": {"secretName": certificate_secret, "defaultMode": 420}}));
        mounts.push(json!({"mountPath": "/opt/capsule-proxy", "name": "certs"}));
    }
    apply::<Deployment>(
        client,
        "capsule-proxy",
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "capsule-proxy", "namespace": NS, "labels": labels()},
            "spec": {"replicas": 1, "strategy": {"type": "RollingUpdate"},
                "selector": {"matchLabels": {"app.kubernetes.io/component": "proxy",
                    "app.kubernetes.io/name": "capsule-proxy", "app.kubernetes.io/instance": "capsule-proxy"}},
                "template": {"metadata": {"labels": {"app.kubernetes.io/component": "proxy",
                        "app.kubernetes.io/name": "capsule-proxy", "app.kubernetes.io/instance": "capsule-proxy"}},
                    "spec": {"serviceAccountName": "capsule-proxy", "volumes": volumes,
                        "containers": [{"name": "capsule-proxy", "image": "ghcr.io/projectcapsule/capsule-proxy:v0.14.1",
                            "args": args, "volumeMounts": mounts,
                            "ports": [{"name": "proxy", "protocol": "TCP", "containerPort": 9001}]}]}}}}),
    )
    .await;
}

/// The serving-certificate Secret as cert-manager writes it for the chart's Certificate
/// `capsule-proxy-serving-cert` (CA from the chart's Issuer `capsule-proxy-ca-issuer`).
async fn cert_manager_secret(client: &Client, name: &str, ca: Option<&str>) {
    let mut data = json!({"tls.crt": b64("leaf certificate"), "tls.key": b64("leaf key")});
    if let Some(ca) = ca {
        data["ca.crt"] = json!(b64(ca));
    }
    apply::<Secret>(
        client,
        name,
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": NS, "annotations": {
                "cert-manager.io/certificate-name": "capsule-proxy-serving-cert",
                "cert-manager.io/issuer-kind": "Issuer", "cert-manager.io/issuer-name": "capsule-proxy-ca-issuer"}},
            "data": data}),
    )
    .await;
}

/// The serving-certificate Secret as the chart's certgen job (`kube-webhook-certgen
/// create --cert-name=tls.crt --key-name=tls.key`) writes it: the CA under `ca`.
async fn certgen_secret(client: &Client, ca: &str) {
    apply::<Secret>(
        client,
        "capsule-proxy",
        json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "capsule-proxy", "namespace": NS},
            "data": {"ca": b64(ca), "tls.crt": b64("leaf certificate"), "tls.key": b64("leaf key")}}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovers_the_endpoint_and_ca_the_chart_creates() {
    let cluster = TestCluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    let ca = cluster.ca_pem().to_string();

    // Nothing installed: no endpoint, and why.
    let found = discover_proxy(&client, None).await;
    assert_eq!(found.endpoint, None);
    let problem = found.discovery.problem.unwrap();
    assert!(
        problem.contains("Service capsule-system/capsule-proxy not found"),
        "{problem}"
    );

    // The chart installed, cert-manager has not issued the certificate yet: the in-cluster
    // URL, no CA, and exactly why.
    install_chart(&client, true, "capsule-proxy").await;
    let found = discover_proxy(&client, None).await;
    let endpoint = found.endpoint.unwrap();
    assert_eq!(endpoint.url, IN_CLUSTER);
    assert_eq!(endpoint.ca_data, None);
    let problem = found.discovery.problem.unwrap();
    assert!(
        problem.contains("Secret capsule-system/capsule-proxy")
            && problem.contains("does not exist"),
        "{problem}"
    );
    assert!(
        found.discovery.note.unwrap().contains("inside the cluster"),
        "the in-cluster address is called what it is"
    );

    // cert-manager's Secret: the CA of the serving certificate, from ca.crt.
    cert_manager_secret(&client, "capsule-proxy", Some(&ca)).await;
    let found = discover_proxy(&client, None).await;
    let endpoint = found.endpoint.unwrap();
    assert_eq!(endpoint.url, IN_CLUSTER);
    assert_eq!(endpoint.ca_data.as_deref(), Some(b64(&ca).as_str()));
    assert_eq!(found.discovery.problem, None);
    let source = found.discovery.ca_source.unwrap();
    assert!(
        source.contains("Secret capsule-system/capsule-proxy")
            && source.contains("ca.crt")
            && source.contains("Deployment capsule-system/capsule-proxy"),
        "{source}"
    );

    // The chart's Ingress (ingress.enabled): its host is the URL.
    apply::<Ingress>(
        &client,
        "capsule-proxy",
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "capsule-proxy", "namespace": NS, "labels": labels(),
                "annotations": {"nginx.ingress.kubernetes.io/ssl-passthrough": "true"}},
            "spec": {"ingressClassName": "nginx", "rules": [{"host": "capsule-proxy.example.com", "http": {"paths": [
                {"path": "/", "pathType": "ImplementationSpecific",
                 "backend": {"service": {"name": "capsule-proxy", "port": {"number": 9001}}}}]}}]}}),
    )
    .await;
    let found = discover_proxy(&client, None).await;
    let endpoint = found.endpoint.unwrap();
    assert_eq!(endpoint.url, "https://capsule-proxy.example.com");
    assert_eq!(endpoint.ca_data.as_deref(), Some(b64(&ca).as_str()));
    assert!(
        found
            .discovery
            .url_source
            .unwrap()
            .contains("Ingress capsule-system/capsule-proxy")
    );
    // The Service annotation wins over the Ingress, the operator's setting over both.
    Api::<Service>::namespaced(client.clone(), NS)
        .patch(
            "capsule-proxy",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {agent::ANNOTATION_PROXY_URL: "https://proxy.example.net:9443"}}})),
        )
        .await
        .unwrap();
    let found = discover_proxy(&client, None).await;
    assert_eq!(
        found.endpoint.unwrap().url,
        "https://proxy.example.net:9443"
    );
    let found = discover_proxy(&client, Some("https://configured.example.org")).await;
    assert_eq!(
        found.endpoint.unwrap().url,
        "https://configured.example.org"
    );
    Api::<Ingress>::namespaced(client.clone(), NS)
        .delete("capsule-proxy", &DeleteParams::default())
        .await
        .unwrap();
    Api::<Service>::namespaced(client.clone(), NS)
        .patch(
            "capsule-proxy",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {agent::ANNOTATION_PROXY_URL: null}}}),
            ),
        )
        .await
        .unwrap();

    // A LoadBalancer Service with an address (service.type=LoadBalancer).
    Api::<Service>::namespaced(client.clone(), NS)
        .patch(
            "capsule-proxy",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "LoadBalancer"}})),
        )
        .await
        .unwrap();
    Api::<Service>::namespaced(client.clone(), NS)
        .patch_status(
            "capsule-proxy",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}}),
            ),
        )
        .await
        .unwrap();
    let found = discover_proxy(&client, None).await;
    assert_eq!(found.endpoint.unwrap().url, "https://203.0.113.10:9001");

    // A certificate without a CA (e.g. from a public ACME issuer): the URL, no CA, why.
    cert_manager_secret(&client, "capsule-proxy", None).await;
    let found = discover_proxy(&client, None).await;
    assert_eq!(found.endpoint.unwrap().ca_data, None);
    let problem = found.discovery.problem.unwrap();
    assert!(
        problem.contains("neither ca.crt")
            && problem.contains("Secret capsule-system/capsule-proxy"),
        "{problem}"
    );

    // The certgen job's Secret (options.generateCertificates, what KubeNova sets): `ca`.
    Api::<Secret>::namespaced(client.clone(), NS)
        .delete("capsule-proxy", &DeleteParams::default())
        .await
        .unwrap();
    certgen_secret(&client, &ca).await;
    let found = discover_proxy(&client, None).await;
    assert_eq!(
        found.endpoint.unwrap().ca_data.as_deref(),
        Some(b64(&ca).as_str())
    );
    assert!(found.discovery.ca_source.unwrap().contains("key ca "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn says_why_when_the_chart_is_installed_in_a_way_that_cannot_give_a_kubeconfig() {
    let cluster = TestCluster::start().await.unwrap();
    let client = cluster.client().unwrap();
    let ca = cluster.ca_pem().to_string();

    // options.certificateVolumeName: the certificate is in a Secret the operator may not
    // read (it reads Secret capsule-proxy only); the Secret is there but not read.
    install_chart(&client, true, "my-proxy-cert").await;
    cert_manager_secret(&client, "my-proxy-cert", Some(&ca)).await;
    let found = discover_proxy(&client, None).await;
    assert_eq!(found.endpoint.unwrap().ca_data, None);
    let problem = found.discovery.problem.unwrap();
    assert!(
        problem.contains("Secret capsule-system/my-proxy-cert")
            && problem.contains("options.certificateVolumeName"),
        "{problem}"
    );

    // options.enableSSL=false: plain HTTP, which kubeconfigs cannot use: no endpoint.
    install_chart(&client, false, "capsule-proxy").await;
    let found = discover_proxy(&client, None).await;
    assert_eq!(found.endpoint, None);
    let problem = found.discovery.problem.unwrap();
    assert!(problem.contains("--enable-ssl=false"), "{problem}");
}
