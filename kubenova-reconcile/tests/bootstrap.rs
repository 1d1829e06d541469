//! The manager's one-time bootstrap against the testkit API server (HTTPS, its own CA,
//! strict validation against the Kubernetes 1.36 schemas): everything is applied with
//! server-side apply, re-running is idempotent, and failures are classified.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kubenova_reconcile::bootstrap::{
    BootstrapError, BootstrapParams, CREDENTIAL_ANNOTATION, ENV_AGENT_TOKEN, NAMESPACE,
    OPERATOR_NAME, bootstrap, client_from_kubeconfig,
};
use kubenova_reconcile::manifests::{
    ADMISSION_POLICY_NAME, APP_DEPLOYER_ROLE, admission_policy, app_deployer_rules,
};

fn params(token: &str) -> BootstrapParams {
    let mut p = BootstrapParams::new(
        "ghcr.io/kubenova/kubenova-operator:0.1.0",
        "https://kubenova.example.com",
        token,
    );
    p.manager_ca = Some("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into());
    p
}

fn secret_value(s: &Secret, key: &str) -> String {
    let bytes = &s.data.as_ref().unwrap()[key].0;
    String::from_utf8(bytes.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_applies_everything_and_is_idempotent() {
    let cluster = kubenova_testkit::TestCluster::start().await.unwrap();
    let p = params("kna_first_0123456789012345678901234567890123456789");
    let client = client_from_kubeconfig(cluster.kubeconfig_yaml().as_bytes(), &p)
        .await
        .unwrap();
    let report = bootstrap(&client, &p).await.unwrap();
    assert_eq!(report.applied.first().unwrap(), "Namespace/kubenova-system");
    assert_eq!(
        report.applied.last().unwrap(),
        "Deployment/kubenova-system/kubenova-operator"
    );

    let admin = cluster.client().unwrap();
    Api::<Namespace>::all(admin.clone())
        .get(NAMESPACE)
        .await
        .unwrap();
    for crd in [
        "novatenants.kubenova.io",
        "novaprojects.kubenova.io",
        "novaapps.kubenova.io",
    ] {
        Api::<CustomResourceDefinition>::all(admin.clone())
            .get(crd)
            .await
            .unwrap();
    }
    Api::<ServiceAccount>::namespaced(admin.clone(), NAMESPACE)
        .get(OPERATOR_NAME)
        .await
        .unwrap();
    let role = Api::<ClusterRole>::all(admin.clone())
        .get(OPERATOR_NAME)
        .await
        .unwrap();
    for rule in role.rules.unwrap() {
        assert!(!rule.verbs.contains(&"*".to_string()), "least privilege");
    }
    // The static ClusterRole the operator binds to each project's app identity.
    let deployer = Api::<ClusterRole>::all(admin.clone())
        .get(APP_DEPLOYER_ROLE)
        .await
        .unwrap();
    assert_eq!(deployer.rules, Some(app_deployer_rules()));
    // The admission policy fencing the operator's writes, for the operator's namespace,
    // and its binding.
    let policy = Api::<ValidatingAdmissionPolicy>::all(admin.clone())
        .get(ADMISSION_POLICY_NAME)
        .await
        .unwrap();
    assert_eq!(policy.spec, admission_policy(NAMESPACE).spec);
    let policy_binding = Api::<ValidatingAdmissionPolicyBinding>::all(admin.clone())
        .get(ADMISSION_POLICY_NAME)
        .await
        .unwrap();
    assert_eq!(policy_binding.spec.policy_name, ADMISSION_POLICY_NAME);
    let applied_at = |label: &str| report.applied.iter().position(|a| a == label).unwrap();
    assert!(
        applied_at(&format!(
            "ValidatingAdmissionPolicyBinding/{ADMISSION_POLICY_NAME}"
        )) < applied_at("Deployment/kubenova-system/kubenova-operator"),
        "the policy is in force before the operator starts: {:?}",
        report.applied
    );
    let binding = Api::<ClusterRoleBinding>::all(admin.clone())
        .get(OPERATOR_NAME)
        .await
        .unwrap();
    assert_eq!(
        binding.subjects.unwrap()[0].namespace.as_deref(),
        Some(NAMESPACE)
    );
    let secrets = Api::<Secret>::namespaced(admin.clone(), NAMESPACE);
    let s = secrets.get("kubenova-agent").await.unwrap();
    assert_eq!(
        secret_value(&s, "token"),
        "kna_first_0123456789012345678901234567890123456789"
    );
    assert_eq!(
        secret_value(&s, "managerUrl"),
        "https://kubenova.example.com"
    );
    assert!(secret_value(&s, "managerCa").contains("BEGIN CERTIFICATE"));
    let deployments = Api::<Deployment>::namespaced(admin.clone(), NAMESPACE);
    let d = deployments.get(OPERATOR_NAME).await.unwrap();
    let spec = d.spec.unwrap().template;
    let container = &spec.spec.as_ref().unwrap().containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some("ghcr.io/kubenova/kubenova-operator:0.1.0")
    );
    let env = container.env.as_ref().unwrap();
    let token_env = env.iter().find(|e| e.name == ENV_AGENT_TOKEN).unwrap();
    assert!(token_env.value.is_none(), "the token comes from the Secret");
    let fp1 = spec.metadata.unwrap().annotations.unwrap()[CREDENTIAL_ANNOTATION].clone();
    let managers: Vec<String> = d
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        managers.contains(&"kubenova-manager".to_string()),
        "{managers:?}"
    );

    // Idempotent; a new credential replaces the old one and rolls the pods.
    let p2 = params("kna_second_012345678901234567890123456789012345678");
    let again = bootstrap(&client, &p2).await.unwrap();
    assert_eq!(again.applied, report.applied);
    let s = secrets.get("kubenova-agent").await.unwrap();
    assert_eq!(
        secret_value(&s, "token"),
        "kna_second_012345678901234567890123456789012345678"
    );
    let d = deployments.get(OPERATOR_NAME).await.unwrap();
    let fp2 = d
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap()[CREDENTIAL_ANNOTATION]
        .clone();
    assert_ne!(fp1, fp2);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_classified_without_leaking_secrets() {
    let cluster = kubenova_testkit::TestCluster::start().await.unwrap();
    let yaml = cluster.kubeconfig_yaml();
    let p = params("kna_x_0123456789012345678901234567890123456789012");

    // Wrong credentials: 401 from the API server.
    let bad = yaml.replace(cluster.admin_token(), "not-the-token");
    assert_ne!(bad, yaml);
    let client = client_from_kubeconfig(bad.as_bytes(), &p).await.unwrap();
    let err = bootstrap(&client, &p).await.unwrap_err();
    assert!(
        matches!(err, BootstrapError::Unauthorized { .. }),
        "{err:?}"
    );
    assert_eq!(err.reason(), "Unauthorized");
    assert!(!err.to_string().contains("not-the-token"));

    // Nobody listening: unreachable, quickly.
    let url = cluster.url().to_string();
    cluster.shutdown().await;
    let client = client_from_kubeconfig(yaml.as_bytes(), &p).await.unwrap();
    let started = std::time::Instant::now();
    let err = bootstrap(&client, &p).await.unwrap_err();
    assert!(matches!(err, BootstrapError::Unreachable(_)), "{err:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert!(err.to_string().contains("unreachable"), "{err}");
    let _ = url;

    // Not a kubeconfig, or one that skips TLS verification.
    let err = client_from_kubeconfig(b"::: not yaml", &p)
        .await
        .err()
        .expect("not a kubeconfig");
    assert_eq!(err.reason(), "InvalidKubeconfig");
    let insecure = yaml.replace(
        "certificate-authority-data:",
        "insecure-skip-tls-verify: true\n    certificate-authority-data:",
    );
    if insecure != yaml {
        let err = client_from_kubeconfig(insecure.as_bytes(), &p)
            .await
            .err()
            .expect("insecure kubeconfig refused");
        assert_eq!(err.reason(), "InvalidKubeconfig");
    }
}
