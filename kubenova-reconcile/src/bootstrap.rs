//! Bootstrap of a cluster by the manager: the one time the manager talks to a cluster's
//! API server (with the kubeconfig it stores). Everything afterwards is outbound from the
//! operator over the agent channel.
//!
//! [`bootstrap`] applies, with server-side apply (field manager [`FIELD_MANAGER`], forced):
//!
//! 1. the namespace `kubenova-system`;
//! 2. the Nova CRDs ([`crate::crds::crds`]);
//! 3. the operator's least-privilege ServiceAccount, ClusterRole, ClusterRoleBinding and
//!    leader-election Role/RoleBinding ([`crate::manifests::operator_manifests`]), the
//!    ClusterRole [`crate::manifests::APP_DEPLOYER_ROLE`] of the per-project app identity,
//!    the ValidatingAdmissionPolicy fencing the operator's writes and its binding
//!    ([`crate::manifests::admission_policy`]), and, only with
//!    [`BootstrapParams::helm_installer`], the Helm installer identity
//!    ([`crate::manifests::InstallerManifests`]);
//! 4. the Secret [`AGENT_SECRET`] with the agent credential, the manager URL and optional CA;
//! 5. the operator Deployment ([`operator_deployment`]: the one of
//!    [`crate::manifests`], whose environment comes from that Secret).
//!
//! Re-running is idempotent (apply), and a new credential rolls the operator pods (the
//! pod template carries a fingerprint of the credential, never the credential).
//!
//! Failures are classified ([`BootstrapError`]) so the manager can set a cluster
//! condition that says what went wrong; no message ever contains the kubeconfig or the
//! credential.
//!
//! ```
//! use kubenova_reconcile::bootstrap::{BootstrapParams, operator_deployment};
//! let p = BootstrapParams::new("ghcr.io/kubenova/kubenova-operator:0.1.0", "https://kubenova.example.com", "kna_x");
//! let d = operator_deployment(&p);
//! assert_eq!(d.metadata.namespace.as_deref(), Some("kubenova-system"));
//! ```

use crate::manifests::{OperatorParams, operator_manifests};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{EnvVar, Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use kubenova_api::agent::{
    AGENT_SECRET, AGENT_SECRET_CA_KEY, AGENT_SECRET_TOKEN_KEY, AGENT_SECRET_URL_KEY,
};
use std::collections::BTreeMap;
use std::time::Duration;

/// Field manager of the manager's bootstrap applies.
pub const FIELD_MANAGER: &str = "kubenova-manager";
/// Namespace of the operator.
pub const NAMESPACE: &str = "kubenova-system";
pub use crate::manifests::OPERATOR_NAME;
/// Environment variable of the operator holding the agent credential (from [`AGENT_SECRET`]).
pub const ENV_AGENT_TOKEN: &str = "KUBENOVA_AGENT_TOKEN";
/// Environment variable of the operator holding the manager URL (from [`AGENT_SECRET`]).
pub const ENV_MANAGER_URL: &str = "KUBENOVA_MANAGER_URL";
/// Pod-template annotation carrying a fingerprint of the credential (rolls pods on rotation).
pub const CREDENTIAL_ANNOTATION: &str = "kubenova.io/agent-credential-fingerprint";

const APP_LABEL: &str = "app.kubernetes.io/name";

/// What to install.
#[derive(Clone)]
pub struct BootstrapParams {
    /// Namespace of the operator (default [`NAMESPACE`]).
    pub namespace: String,
    /// Operator image.
    pub image: String,
    /// URL under which the operator reaches the manager.
    pub manager_url: String,
    /// CA bundle (PEM) of the manager's serving certificate, when not publicly trusted.
    pub manager_ca: Option<String>,
    /// The agent credential (a secret: never logged, only written into the Secret).
    pub agent_token: String,
    /// Extra environment variables of the operator container.
    pub env: Vec<(String, String)>,
    /// Also apply the opt-in Helm installer identity
    /// ([`OperatorParams::helm_installer`]); default `false`.
    pub helm_installer: bool,
    /// Timeout of connecting to the API server.
    pub connect_timeout: Duration,
    /// Timeout of each API call.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for BootstrapParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapParams")
            .field("namespace", &self.namespace)
            .field("image", &self.image)
            .field("manager_url", &self.manager_url)
            .field("manager_ca", &self.manager_ca.is_some())
            .field("agent_token", &"<redacted>")
            .field("env", &self.env)
            .field("helm_installer", &self.helm_installer)
            .finish()
    }
}

impl BootstrapParams {
    /// Parameters with the default namespace and timeouts (5 s connect, 30 s per call).
    pub fn new(image: &str, manager_url: &str, agent_token: &str) -> Self {
        Self {
            namespace: NAMESPACE.to_string(),
            image: image.to_string(),
            manager_url: manager_url.to_string(),
            manager_ca: None,
            agent_token: agent_token.to_string(),
            env: Vec::new(),
            helm_installer: false,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        }
    }

    /// The credential's fingerprint on the pod template ([`CREDENTIAL_ANNOTATION`]): the
    /// first 16 hex digits of its SHA-256 (64 bits are enough to roll pods on rotation and
    /// reveal nothing usable about a 256-bit random credential). The operator chart
    /// computes the same (`sha256sum | trunc 16`), so chart and bootstrap objects agree.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(self.agent_token.as_bytes());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Why a bootstrap failed. `Display` is safe to show and store (no secrets).
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The stored kubeconfig cannot be used to build a client.
    #[error("the cluster's kubeconfig cannot be used: {0}; replace it with a valid kubeconfig")]
    InvalidKubeconfig(String),
    /// The API server could not be reached (connection refused, DNS, TLS, timeout).
    #[error(
        "the cluster's API server is unreachable: {0}; check the server URL and that the manager can reach it"
    )]
    Unreachable(String),
    /// The API server rejected the kubeconfig's credentials (401).
    #[error(
        "the cluster's API server rejected the kubeconfig's credentials (401 Unauthorized) while applying {object}; replace the cluster's kubeconfig with one holding a valid token or client certificate"
    )]
    Unauthorized {
        /// The object being applied.
        object: String,
    },
    /// The kubeconfig's identity may not create the objects (403).
    #[error(
        "the kubeconfig's identity may not apply {object} (403 Forbidden: {message}); bootstrap needs cluster-admin rights once"
    )]
    Forbidden {
        /// The object being applied.
        object: String,
        /// The API server's message.
        message: String,
    },
    /// The API server refused an object (invalid, conflict, ...).
    #[error("the API server refused {object} ({code} {reason}: {message})")]
    Rejected {
        /// The object being applied.
        object: String,
        /// HTTP status.
        code: u16,
        /// Kubernetes reason.
        reason: String,
        /// The API server's message.
        message: String,
    },
    /// A bundled manifest is broken (a build defect).
    #[error("a bundled manifest is invalid: {0}")]
    Manifest(String),
}

impl BootstrapError {
    /// CamelCase reason for a cluster condition (`Unreachable`, `Forbidden`, ...).
    pub fn reason(&self) -> &'static str {
        match self {
            BootstrapError::InvalidKubeconfig(_) => "InvalidKubeconfig",
            BootstrapError::Unreachable(_) => "Unreachable",
            BootstrapError::Unauthorized { .. } => "Unauthorized",
            BootstrapError::Forbidden { .. } => "Forbidden",
            BootstrapError::Rejected { .. } => "Rejected",
            BootstrapError::Manifest(_) => "InvalidManifest",
        }
    }

    fn from_kube(object: &str, e: kube::Error) -> Self {
        match e {
            kube::Error::Api(s) => match s.code {
                401 => BootstrapError::Unauthorized {
                    object: object.to_string(),
                },
                403 => BootstrapError::Forbidden {
                    object: object.to_string(),
                    message: clip(&s.message),
                },
                code => BootstrapError::Rejected {
                    object: object.to_string(),
                    code,
                    reason: s.reason.clone(),
                    message: clip(&s.message),
                },
            },
            other => BootstrapError::Unreachable(clip(&error_chain(&other))),
        }
    }
}

fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(400).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// Builds a client from a kubeconfig (its current context), with the timeouts of `p`.
/// Only `certificate-authority-data` is trusted; errors never echo the kubeconfig.
pub async fn client_from_kubeconfig(
    kubeconfig: &[u8],
    p: &BootstrapParams,
) -> Result<kube::Client, BootstrapError> {
    let text = std::str::from_utf8(kubeconfig)
        .map_err(|_| BootstrapError::InvalidKubeconfig("it is not UTF-8 text".into()))?;
    let kc = kube::config::Kubeconfig::from_yaml(text).map_err(|_| {
        BootstrapError::InvalidKubeconfig("it does not parse as a kubeconfig".into())
    })?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| BootstrapError::InvalidKubeconfig(clip(&e.to_string())))?;
    if config.accept_invalid_certs {
        return Err(BootstrapError::InvalidKubeconfig(
            "it sets insecure-skip-tls-verify; embed the cluster CA instead".into(),
        ));
    }
    config.connect_timeout = Some(p.connect_timeout);
    config.read_timeout = Some(p.request_timeout);
    config.write_timeout = Some(p.request_timeout);
    kube::Client::try_from(config)
        .map_err(|e| BootstrapError::InvalidKubeconfig(clip(&error_chain(&e))))
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        (APP_LABEL.to_string(), OPERATOR_NAME.to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            FIELD_MANAGER.to_string(),
        ),
    ])
}

/// The agent Secret: credential, manager URL and optional manager CA.
pub fn agent_secret(p: &BootstrapParams) -> Secret {
    let mut data = BTreeMap::from([
        (
            AGENT_SECRET_TOKEN_KEY.to_string(),
            ByteString(p.agent_token.as_bytes().to_vec()),
        ),
        (
            AGENT_SECRET_URL_KEY.to_string(),
            ByteString(p.manager_url.as_bytes().to_vec()),
        ),
    ]);
    if let Some(ca) = &p.manager_ca {
        data.insert(
            AGENT_SECRET_CA_KEY.to_string(),
            ByteString(ca.as_bytes().to_vec()),
        );
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(AGENT_SECRET.to_string()),
            namespace: Some(p.namespace.clone()),
            labels: Some(labels()),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    }
}

fn manifest_params(p: &BootstrapParams) -> OperatorParams {
    OperatorParams {
        namespace: p.namespace.clone(),
        image: p.image.clone(),
        helm_installer: p.helm_installer,
        ..OperatorParams::default()
    }
}

/// The operator Deployment of [`crate::manifests`] for `p`, with a fingerprint of the
/// credential on the pod template so that a rotated credential rolls the pods.
pub fn operator_deployment(p: &BootstrapParams) -> Deployment {
    let mut d = operator_manifests(&manifest_params(p)).deployment;
    if let Some(spec) = d.spec.as_mut() {
        let meta = spec.template.metadata.get_or_insert_with(Default::default);
        meta.annotations
            .get_or_insert_with(Default::default)
            .insert(CREDENTIAL_ANNOTATION.to_string(), p.fingerprint());
        for c in spec
            .template
            .spec
            .iter_mut()
            .flat_map(|s| s.containers.iter_mut())
        {
            let env = c.env.get_or_insert_with(Vec::new);
            env.extend(p.env.iter().map(|(k, v)| EnvVar {
                name: k.clone(),
                value: Some(v.clone()),
                ..Default::default()
            }));
        }
    }
    d
}

/// What [`bootstrap`] applied, as `Kind/name` (or `Kind/namespace/name`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootstrapReport {
    /// The applied objects, in order.
    pub applied: Vec<String>,
}

async fn apply<K>(
    api: Api<K>,
    name: &str,
    label: String,
    obj: &K,
    report: &mut BootstrapReport,
) -> Result<(), BootstrapError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(name, &pp, &Patch::Apply(obj))
        .await
        .map_err(|e| BootstrapError::from_kube(&label, e))?;
    report.applied.push(label);
    Ok(())
}

/// Applies everything the operator needs (see the module docs), in dependency order.
pub async fn bootstrap(
    client: &kube::Client,
    p: &BootstrapParams,
) -> Result<BootstrapReport, BootstrapError> {
    let mut report = BootstrapReport::default();
    let m = operator_manifests(&manifest_params(p));
    let ns = p.namespace.as_str();
    let c = || client.clone();
    apply(
        Api::<Namespace>::all(c()),
        ns,
        format!("Namespace/{ns}"),
        &m.namespace,
        &mut report,
    )
    .await?;
    for crd in crate::crds::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        apply(
            Api::<CustomResourceDefinition>::all(c()),
            &name,
            format!("CustomResourceDefinition/{name}"),
            &crd,
            &mut report,
        )
        .await?;
    }
    let name_of = |meta: &ObjectMeta| meta.name.clone().unwrap_or_default();
    let sa = name_of(&m.service_account.metadata);
    apply(
        Api::<ServiceAccount>::namespaced(c(), ns),
        &sa,
        format!("ServiceAccount/{ns}/{sa}"),
        &m.service_account,
        &mut report,
    )
    .await?;
    let cr = name_of(&m.cluster_role.metadata);
    apply(
        Api::<ClusterRole>::all(c()),
        &cr,
        format!("ClusterRole/{cr}"),
        &m.cluster_role,
        &mut report,
    )
    .await?;
    let crb = name_of(&m.cluster_role_binding.metadata);
    apply(
        Api::<ClusterRoleBinding>::all(c()),
        &crb,
        format!("ClusterRoleBinding/{crb}"),
        &m.cluster_role_binding,
        &mut report,
    )
    .await?;
    let role = name_of(&m.lease_role.metadata);
    apply(
        Api::<Role>::namespaced(c(), ns),
        &role,
        format!("Role/{ns}/{role}"),
        &m.lease_role,
        &mut report,
    )
    .await?;
    let rb = name_of(&m.lease_role_binding.metadata);
    apply(
        Api::<RoleBinding>::namespaced(c(), ns),
        &rb,
        format!("RoleBinding/{ns}/{rb}"),
        &m.lease_role_binding,
        &mut report,
    )
    .await?;
    let deployer = name_of(&m.app_deployer_role.metadata);
    apply(
        Api::<ClusterRole>::all(c()),
        &deployer,
        format!("ClusterRole/{deployer}"),
        &m.app_deployer_role,
        &mut report,
    )
    .await?;
    // The admission policy is in force before the operator starts.
    let policy = name_of(&m.admission_policy.metadata);
    apply(
        Api::<ValidatingAdmissionPolicy>::all(c()),
        &policy,
        format!("ValidatingAdmissionPolicy/{policy}"),
        &m.admission_policy,
        &mut report,
    )
    .await?;
    let binding = name_of(&m.admission_policy_binding.metadata);
    apply(
        Api::<ValidatingAdmissionPolicyBinding>::all(c()),
        &binding,
        format!("ValidatingAdmissionPolicyBinding/{binding}"),
        &m.admission_policy_binding,
        &mut report,
    )
    .await?;
    if let Some(installer) = &m.installer {
        let sa = name_of(&installer.service_account.metadata);
        apply(
            Api::<ServiceAccount>::namespaced(c(), ns),
            &sa,
            format!("ServiceAccount/{ns}/{sa}"),
            &installer.service_account,
            &mut report,
        )
        .await?;
        let crb = name_of(&installer.cluster_role_binding.metadata);
        apply(
            Api::<ClusterRoleBinding>::all(c()),
            &crb,
            format!("ClusterRoleBinding/{crb}"),
            &installer.cluster_role_binding,
            &mut report,
        )
        .await?;
        let role = name_of(&installer.token_role.metadata);
        apply(
            Api::<Role>::namespaced(c(), ns),
            &role,
            format!("Role/{ns}/{role}"),
            &installer.token_role,
            &mut report,
        )
        .await?;
        let rb = name_of(&installer.token_role_binding.metadata);
        apply(
            Api::<RoleBinding>::namespaced(c(), ns),
            &rb,
            format!("RoleBinding/{ns}/{rb}"),
            &installer.token_role_binding,
            &mut report,
        )
        .await?;
    }
    apply(
        Api::<Secret>::namespaced(c(), ns),
        AGENT_SECRET,
        format!("Secret/{ns}/{AGENT_SECRET}"),
        &agent_secret(p),
        &mut report,
    )
    .await?;
    let d = operator_deployment(p);
    let dn = name_of(&d.metadata);
    apply(
        Api::<Deployment>::namespaced(c(), ns),
        &dn,
        format!("Deployment/{ns}/{dn}"),
        &d,
        &mut report,
    )
    .await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_deployment_is_the_manifests_one_with_a_fingerprint() {
        let mut p = BootstrapParams::new("img:2", "https://m", "kna_secret");
        p.namespace = "other".into();
        p.env.push(("EXTRA".into(), "1".into()));
        let d = operator_deployment(&p);
        assert_eq!(d.metadata.namespace.as_deref(), Some("other"));
        let t = d.spec.unwrap().template;
        assert!(
            t.metadata
                .unwrap()
                .annotations
                .unwrap()
                .contains_key(CREDENTIAL_ANNOTATION)
        );
        let c = &t.spec.unwrap().containers[0];
        assert_eq!(c.image.as_deref(), Some("img:2"));
        assert!(c.env.as_ref().unwrap().iter().any(|e| e.name == "EXTRA"));
        assert!(
            c.env
                .as_ref()
                .unwrap()
                .iter()
                .any(|e| e.name == ENV_AGENT_TOKEN)
        );
    }

    #[test]
    fn the_token_appears_only_in_the_secret() {
        let p = BootstrapParams::new("img:1", "https://m", "kna_supersecret");
        let d = serde_json::to_string(&operator_deployment(&p)).unwrap();
        assert!(!d.contains("supersecret"));
        assert!(d.contains(ENV_AGENT_TOKEN));
        assert!(!format!("{p:?}").contains("supersecret"));
        let s = agent_secret(&p);
        assert_eq!(
            s.data.unwrap()[AGENT_SECRET_TOKEN_KEY].0,
            b"kna_supersecret"
        );
        let q = BootstrapParams::new("img:1", "https://m", "kna_other");
        assert_ne!(p.fingerprint(), q.fingerprint());
    }
}
