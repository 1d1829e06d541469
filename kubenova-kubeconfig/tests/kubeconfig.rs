//! Kubeconfig building: names, CA data, context namespace, credentials, bad input.
#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use kube::config::{ExecInteractiveMode, Kubeconfig};
use kubenova_api::error::ErrorCode;
use kubenova_api::model::AccessRole;
use kubenova_kubeconfig::{Credential, Error, KubeconfigExt, KubeconfigRequest, ProxyCa};

const CA: &str = include_str!("fixtures/proxy-ca.pem");

fn request(credential: Credential) -> KubeconfigRequest {
    KubeconfigRequest {
        cluster_name: "prod-eu".into(),
        tenant: "acme".into(),
        project: Some("web".into()),
        role: AccessRole::Developer,
        proxy_url: "https://capsule-proxy.prod-eu.example.com:9001".into(),
        proxy_ca: ProxyCa::from_pem(CA).unwrap(),
        namespace: "acme-web".into(),
        credential,
    }
}

fn token_request() -> KubeconfigRequest {
    request(Credential::Token("eyJhbGciOiJFUzI1NiJ9.e30.sig".into()))
}

fn exec_request() -> KubeconfigRequest {
    request(Credential::Exec {
        manager_url: "https://manager.example.com".into(),
        tenant: "acme".into(),
        project: Some("web".into()),
        role: AccessRole::Developer,
    })
}

#[test]
fn token_kubeconfig_round_trips_through_kube_from_yaml() {
    let kc = token_request().build().unwrap();
    let yaml = kc.to_yaml().unwrap();
    assert!(!yaml.contains("insecure"), "{yaml}");
    let back = Kubeconfig::from_yaml(&yaml).unwrap();
    assert!(!back.is_insecure());

    let name = "prod-eu-acme-web-developer";
    assert_eq!(back.current_context.as_deref(), Some(name));
    assert_eq!(back.clusters.len(), 1);
    assert_eq!(back.auth_infos.len(), 1);
    assert_eq!(back.contexts.len(), 1);
    let cluster = back.clusters[0].cluster.as_ref().unwrap();
    assert_eq!(back.clusters[0].name, name);
    assert_eq!(
        cluster.server.as_deref(),
        Some("https://capsule-proxy.prod-eu.example.com:9001")
    );
    assert_eq!(cluster.insecure_skip_tls_verify, None);
    let ca = base64::engine::general_purpose::STANDARD
        .decode(cluster.certificate_authority_data.as_deref().unwrap())
        .unwrap();
    assert_eq!(ca, CA.as_bytes());
    let ctx = back.contexts[0].context.as_ref().unwrap();
    assert_eq!(ctx.cluster, name);
    assert_eq!(ctx.user.as_deref(), Some(name));
    assert_eq!(ctx.namespace.as_deref(), Some("acme-web"));
    assert_eq!(back.auth_infos[0].name, name);
    assert!(
        yaml.contains("token: eyJhbGciOiJFUzI1NiJ9.e30.sig"),
        "{yaml}"
    );
    assert!(yaml.contains("apiVersion: v1") && yaml.contains("kind: Config"));
}

#[test]
fn long_values_stay_plain_scalars_as_kubectl_writes_them() {
    // A real token and the CA data are far longer than a YAML line: they must stay on
    // one line as plain scalars (no folded `>-` blocks), so `grep`/`sed` on a downloaded
    // kubeconfig and diffs against kubectl's output keep working.
    let token = format!("eyJhbGciOiJFUzI1NiJ9.{}.sig", "e30".repeat(200));
    let kc = request(Credential::Token(token.clone())).build().unwrap();
    let yaml = kc.to_yaml().unwrap();
    assert!(yaml.contains(&format!("\n    token: {token}\n")), "{yaml}");
    assert!(
        yaml.contains("\n    certificate-authority-data: LS0t"),
        "{yaml}"
    );
    assert!(!yaml.contains('>') && !yaml.contains('|'), "{yaml}");
    let back = Kubeconfig::from_yaml(&yaml).unwrap();
    assert_eq!(
        serde_json::to_value(&back).unwrap(),
        serde_json::to_value(&kc).unwrap()
    );
}

#[test]
fn json_form_is_the_same_kubeconfig() {
    let kc = token_request().build().unwrap();
    let json = kc.to_json().unwrap();
    assert!(!json.contains("insecure"));
    // JSON is YAML: kube's own loader must accept it.
    let back = Kubeconfig::from_yaml(&json).unwrap();
    assert_eq!(back.current_context, kc.current_context);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v["clusters"][0]["cluster"]["certificate-authority-data"].is_string());
    assert_eq!(v["users"][0]["name"], "prod-eu-acme-web-developer");
}

#[test]
fn tenant_scoped_names_have_no_project_part() {
    let mut r = token_request();
    r.project = None;
    r.role = AccessRole::Owner;
    r.namespace = "acme-apps".into();
    let kc = r.build().unwrap();
    assert_eq!(kc.current_context.as_deref(), Some("prod-eu-acme-owner"));
}

#[test]
fn exec_kubeconfig_has_the_plugin_stanza() {
    let kc = exec_request().build().unwrap();
    let yaml = kc.to_yaml().unwrap();
    let back = Kubeconfig::from_yaml(&yaml).unwrap();
    let auth = back.auth_infos[0].auth_info.as_ref().unwrap();
    assert!(auth.token.is_none());
    let exec = auth.exec.as_ref().unwrap();
    assert_eq!(
        exec.api_version.as_deref(),
        Some("client.authentication.k8s.io/v1")
    );
    assert_eq!(exec.command.as_deref(), Some("kubenova"));
    assert_eq!(
        exec.args.clone().unwrap(),
        [
            "auth",
            "token",
            "--manager",
            "https://manager.example.com",
            "--tenant",
            "acme",
            "--project",
            "web",
            "--role",
            "developer"
        ]
    );
    assert_eq!(exec.interactive_mode, Some(ExecInteractiveMode::Never));
    assert!(yaml.contains("interactiveMode: Never"), "{yaml}");
    assert!(!yaml.contains("insecure"));
}

#[test]
fn exec_scope_must_match_the_request() {
    let mut r = exec_request();
    r.credential = Credential::Exec {
        manager_url: "https://manager.example.com".into(),
        tenant: "other".into(),
        project: Some("web".into()),
        role: AccessRole::Developer,
    };
    let e = r.build().unwrap_err();
    assert!(matches!(e, Error::ScopeMismatch { .. }), "{e}");
    assert_eq!(e.code(), ErrorCode::Validation);
}

#[test]
fn exec_manager_url_must_be_https_except_loopback() {
    for (url, ok) in [
        ("http://manager.example.com", false),
        ("http://127.0.0.1:8080", true),
        ("https://manager.example.com/base", true),
    ] {
        let mut r = exec_request();
        if let Credential::Exec { manager_url, .. } = &mut r.credential {
            *manager_url = url.into();
        }
        assert_eq!(r.build().is_ok(), ok, "{url}");
    }
}

#[test]
fn non_https_proxy_is_rejected() {
    for url in [
        "http://capsule-proxy.example.com:9001",
        "capsule-proxy.example.com:9001",
        "ftp://capsule-proxy.example.com",
        "http://127.0.0.1:9001",
    ] {
        let mut r = token_request();
        r.proxy_url = url.into();
        let e = r.build().unwrap_err();
        assert!(matches!(e, Error::InsecureUrl { .. }), "{url}: {e}");
    }
}

#[test]
fn missing_proxy_is_kn_409_not_reported_yet() {
    let mut r = token_request();
    r.proxy_url = String::new();
    let e = r.build().unwrap_err();
    assert!(matches!(e, Error::ProxyNotReported));
    assert_eq!(e.code(), ErrorCode::Conflict);
    assert!(e.to_string().contains("not reported yet"));
}

#[test]
fn missing_or_bogus_ca_is_rejected() {
    assert!(matches!(ProxyCa::from_pem(""), Err(Error::MissingCa(_))));
    assert!(matches!(
        ProxyCa::from_ca_data(" "),
        Err(Error::MissingCa(_))
    ));
    assert!(matches!(
        ProxyCa::from_pem("hello"),
        Err(Error::InvalidCa { .. })
    ));
    // Base64 of something that is not a PEM certificate, and text that is neither.
    let not_a_cert = base64::engine::general_purpose::STANDARD.encode("hello");
    assert!(matches!(
        ProxyCa::from_ca_data(&not_a_cert),
        Err(Error::InvalidCa { .. })
    ));
    assert!(matches!(
        ProxyCa::from_ca_data("%%%"),
        Err(Error::InvalidCa { .. })
    ));
    // Both forms of a good CA give the same value, and the kubeconfig carries it.
    let b64 = base64::engine::general_purpose::STANDARD.encode(CA);
    let wrapped: String = b64
        .as_bytes()
        .chunks(64)
        .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
        .collect();
    let ca = ProxyCa::from_ca_data(&wrapped).unwrap();
    assert_eq!(ca, ProxyCa::from_ca_data(CA).unwrap());
    assert_eq!((ca.pem(), ca.data()), (CA, b64.as_str()));
}

#[test]
fn names_must_be_dns_labels() {
    // A ':' in a tenant name could forge another group; '/' or spaces break entry names.
    for (field, value) in [
        ("tenant", "acme:owner"),
        ("tenant", ""),
        ("project", "Web"),
        ("cluster_name", "prod eu"),
        ("namespace", "a/b"),
    ] {
        let mut r = token_request();
        match field {
            "tenant" => r.tenant = value.into(),
            "project" => r.project = Some(value.into()),
            "cluster_name" => r.cluster_name = value.into(),
            _ => r.namespace = value.into(),
        }
        match r.build().unwrap_err() {
            Error::InvalidName { field: f, .. } => assert_eq!(f, field),
            e => panic!("{field}={value:?}: {e}"),
        }
    }
}

#[test]
fn empty_token_is_rejected() {
    let r = request(Credential::Token(" ".into()));
    assert!(r.build().is_err());
}

#[test]
fn insecure_detection_catches_foreign_kubeconfigs() {
    let yaml = "apiVersion: v1\nkind: Config\nclusters:\n- name: x\n  cluster:\n    server: https://x\n    insecure-skip-tls-verify: true\n";
    assert!(Kubeconfig::from_yaml(yaml).unwrap().is_insecure());
}
