//! The operator's install manifests as typed `k8s-openapi` objects: its Namespace,
//! ServiceAccount, least-privilege RBAC (a ClusterRole for the Nova objects and what they
//! generate, a namespaced Role for its leader-election Lease, the static ClusterRole
//! [`APP_DEPLOYER_ROLE`] it binds to each project's app identity), the
//! ValidatingAdmissionPolicy that fences what the operator may write whatever its RBAC
//! allows ([`admission_policy`], module `admission`) and the Deployment.
//!
//! The manager's bootstrap applies [`operator_manifests`] with server-side apply; the
//! committed `deploy/operator/rbac.yaml`, `deploy/operator/admission-policy.yaml` and
//! `deploy/operator/deployment.yaml` are
//! generated from the same function with the default [`OperatorParams`] (a drift test in
//! `bins/kubenova-operator/tests/manifests.rs` keeps them equal; regenerate with
//! `KUBENOVA_BLESS=1 cargo test -p kubenova-operator --test manifests`).
//!
//! **Helm installer identity (opt-in).** The operator's own rights cannot install the
//! component charts (they create CRDs, ClusterRoles and webhooks). With
//! [`OperatorParams::helm_installer`] the output also carries [`InstallerManifests`]: a
//! ServiceAccount [`INSTALLER_NAME`] bound to `cluster-admin`, which no pod runs as, and a
//! Role letting the operator only `create` short-lived tokens for that one ServiceAccount
//! (TokenRequest); the operator then runs `helm` with such a token (see
//! [`crate::components::InstallerIdentity`]). Off by default: the default bootstrap stays
//! least-privilege.
//!
//! ```
//! use kubenova_reconcile::manifests::{OperatorParams, operator_manifests};
//! let params = OperatorParams {
//!     image: "registry.example.com/kubenova-operator:0.1.0".into(),
//!     manager_url: Some("https://kubenova.example.com".into()),
//!     ..OperatorParams::default()
//! };
//! let m = operator_manifests(&params);
//! let pod = m.deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
//! assert_eq!(pod.containers[0].image.as_deref(), Some("registry.example.com/kubenova-operator:0.1.0"));
//! // Apply order: the namespace first, the Deployment last.
//! let kinds: Vec<String> = m.to_values().unwrap().iter().map(|o| o["kind"].as_str().unwrap().to_owned()).collect();
//! assert_eq!(kinds.first().map(String::as_str), Some("Namespace"));
//! assert_eq!(kinds.last().map(String::as_str), Some("Deployment"));
//! ```

use std::collections::BTreeMap;

mod admission;

pub use admission::{
    ADMISSION_POLICY_NAME, ROLE_BINDING_PREFIX, admission_policy, admission_policy_binding,
    operator_username, platform_namespaces,
};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, Namespace, ObjectFieldSelector, PodAffinityTerm, PodAntiAffinity,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretKeySelector, SecurityContext, ServiceAccount, Volume, VolumeMount,
    WeightedPodAffinityTerm,
};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kubenova_api::agent::{AGENT_SECRET, AGENT_SECRET_TOKEN_KEY, AGENT_SECRET_URL_KEY};
use serde_json::Value;

/// Name of the operator's ServiceAccount, ClusterRole, Role, bindings and Deployment.
pub const OPERATOR_NAME: &str = "kubenova-operator";
/// Namespace the operator is installed in by default.
pub const OPERATOR_NAMESPACE: &str = "kubenova-system";
/// Default name of the leader-election Lease.
pub const LEASE_NAME: &str = "kubenova-operator";
/// Port of `/healthz`, `/readyz` and `/metrics`.
pub const HTTP_PORT: u16 = 8080;
/// Image repository of the operator.
pub const IMAGE_REPOSITORY: &str = "ghcr.io/kubenova/kubenova-operator";
/// Name of the opt-in Helm installer ServiceAccount (bound to `cluster-admin`; see
/// [`OperatorParams::helm_installer`]) and of its ClusterRoleBinding.
pub const INSTALLER_NAME: &str = "kubenova-installer";
/// Name of the Role (and RoleBinding) letting the operator request tokens for
/// [`INSTALLER_NAME`].
pub const INSTALLER_TOKEN_ROLE: &str = "kubenova-operator-installer-token";
/// Operator environment variable naming the installer ServiceAccount (set in the
/// Deployment in installer mode; read by the operator's `--installer-service-account`).
pub const ENV_INSTALLER_SERVICE_ACCOUNT: &str = "KUBENOVA_INSTALLER_SERVICE_ACCOUNT";
/// Name of the per-project app identity: the ServiceAccount the operator creates in every
/// project namespace and impersonates (`system:serviceaccount:<project-ns>:kubenova-app`)
/// to apply the project's KubeVela Applications, and the name of its RoleBinding to
/// `edit` in that namespace.
pub const APP_SERVICE_ACCOUNT: &str = "kubenova-app";
/// The static ClusterRole bound to [`APP_SERVICE_ACCOUNT`] in each project namespace (a
/// RoleBinding of the same name): what it needs to create and update its KubeVela
/// Applications there ([`app_deployer_rules`]).
pub const APP_DEPLOYER_ROLE: &str = "kubenova-app-deployer";
/// The ClusterRoles project RoleBindings may refer to (the operator may `bind` exactly
/// these): the access roles `admin`, `edit`, `view` and [`APP_DEPLOYER_ROLE`].
pub const PROJECT_CLUSTER_ROLES: [&str; 4] = ["admin", "edit", "view", APP_DEPLOYER_ROLE];

/// The default image: [`IMAGE_REPOSITORY`] tagged with this crate's version.
pub fn default_image() -> String {
    format!("{IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION"))
}

/// What [`operator_manifests`] is parameterised by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorParams {
    /// Namespace of the operator (and of its Lease); default [`OPERATOR_NAMESPACE`].
    pub namespace: String,
    /// Container image; default [`default_image`].
    pub image: String,
    /// Replicas (leader election keeps exactly one active); default 2.
    pub replicas: i32,
    /// `KUBENOVA_MANAGER_URL`: the manager's URL. `None` (default) takes it from the
    /// agent Secret's `managerUrl` key.
    pub manager_url: Option<String>,
    /// Name of the Secret (in [`namespace`](Self::namespace)) with the agent credential
    /// (`token`) and the manager URL (`managerUrl`); default
    /// [`kubenova_api::agent::AGENT_SECRET`]. The keys are optional, so the operator also
    /// starts (without the agent channel) before the Secret exists.
    pub agent_secret: String,
    /// Name of the leader-election Lease; default [`LEASE_NAME`].
    pub lease_name: String,
    /// Opt-in Helm installer identity (default `false`): adds [`InstallerManifests`] (the
    /// [`INSTALLER_NAME`] ServiceAccount bound to `cluster-admin`, and a Role letting the
    /// operator `create` tokens for that ServiceAccount only) and makes the Deployment run
    /// `helm` with such tokens (env [`ENV_INSTALLER_SERVICE_ACCOUNT`], an in-memory `/tmp`
    /// for the short-lived kubeconfig and helm's caches).
    pub helm_installer: bool,
}

impl Default for OperatorParams {
    fn default() -> Self {
        OperatorParams {
            namespace: OPERATOR_NAMESPACE.to_owned(),
            image: default_image(),
            replicas: 2,
            manager_url: None,
            agent_secret: AGENT_SECRET.to_owned(),
            lease_name: LEASE_NAME.to_owned(),
            helm_installer: false,
        }
    }
}

/// The operator's install objects, typed. See [`OperatorManifests::to_values`] for the
/// apply order.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorManifests {
    /// The operator's namespace.
    pub namespace: Namespace,
    /// Its ServiceAccount.
    pub service_account: ServiceAccount,
    /// Cluster-wide rules: the Nova objects and the objects they generate.
    pub cluster_role: ClusterRole,
    /// Binds [`cluster_role`](Self::cluster_role) to the ServiceAccount.
    pub cluster_role_binding: ClusterRoleBinding,
    /// Namespaced rules: the leader-election Lease only.
    pub lease_role: Role,
    /// Binds [`lease_role`](Self::lease_role) to the ServiceAccount.
    pub lease_role_binding: RoleBinding,
    /// The static ClusterRole [`APP_DEPLOYER_ROLE`] ([`app_deployer_rules`]); bound by the
    /// operator, in each project namespace, to that project's [`APP_SERVICE_ACCOUNT`].
    pub app_deployer_role: ClusterRole,
    /// The ValidatingAdmissionPolicy [`ADMISSION_POLICY_NAME`] fencing what the operator's
    /// ServiceAccount may write ([`admission_policy`]).
    pub admission_policy: ValidatingAdmissionPolicy,
    /// Its binding (`validationActions: [Deny]`).
    pub admission_policy_binding: ValidatingAdmissionPolicyBinding,
    /// The Deployment.
    pub deployment: Deployment,
    /// The Helm installer identity, only with [`OperatorParams::helm_installer`].
    pub installer: Option<InstallerManifests>,
}

/// The opt-in Helm installer identity (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq)]
pub struct InstallerManifests {
    /// ServiceAccount [`INSTALLER_NAME`]; no pod runs as it and it mounts no token.
    pub service_account: ServiceAccount,
    /// Binds `cluster-admin` to [`service_account`](Self::service_account): charts
    /// create CRDs, ClusterRoles, webhooks and namespaces.
    pub cluster_role_binding: ClusterRoleBinding,
    /// Role [`INSTALLER_TOKEN_ROLE`] in the operator's namespace: `create` on
    /// `serviceaccounts/token` for [`INSTALLER_NAME`] only.
    pub token_role: Role,
    /// Binds [`token_role`](Self::token_role) to the operator's ServiceAccount.
    pub token_role_binding: RoleBinding,
}

impl InstallerManifests {
    /// The objects as JSON, in apply order (ServiceAccount, ClusterRoleBinding, Role,
    /// RoleBinding).
    pub fn to_values(&self) -> Result<Vec<Value>, serde_json::Error> {
        Ok(vec![
            serde_json::to_value(&self.service_account)?,
            serde_json::to_value(&self.cluster_role_binding)?,
            serde_json::to_value(&self.token_role)?,
            serde_json::to_value(&self.token_role_binding)?,
        ])
    }
}

impl OperatorManifests {
    /// The RBAC objects (ServiceAccount, ClusterRole, ClusterRoleBinding, Role,
    /// RoleBinding, the app deployer ClusterRole, then the [`installer`](Self::installer)
    /// objects if any) as JSON, in apply order.
    pub fn rbac_values(&self) -> Result<Vec<Value>, serde_json::Error> {
        let mut out = vec![
            serde_json::to_value(&self.service_account)?,
            serde_json::to_value(&self.cluster_role)?,
            serde_json::to_value(&self.cluster_role_binding)?,
            serde_json::to_value(&self.lease_role)?,
            serde_json::to_value(&self.lease_role_binding)?,
            serde_json::to_value(&self.app_deployer_role)?,
        ];
        if let Some(installer) = &self.installer {
            out.extend(installer.to_values()?);
        }
        Ok(out)
    }

    /// The admission objects (the ValidatingAdmissionPolicy, then its binding) as JSON, in
    /// apply order.
    pub fn admission_values(&self) -> Result<Vec<Value>, serde_json::Error> {
        Ok(vec![
            serde_json::to_value(&self.admission_policy)?,
            serde_json::to_value(&self.admission_policy_binding)?,
        ])
    }

    /// Every object as JSON with `apiVersion` and `kind`, in apply order: Namespace,
    /// the RBAC objects, the admission policy and its binding (in force before the
    /// operator starts), then the Deployment (so its pods find their ServiceAccount).
    pub fn to_values(&self) -> Result<Vec<Value>, serde_json::Error> {
        let mut out = vec![serde_json::to_value(&self.namespace)?];
        out.extend(self.rbac_values()?);
        out.extend(self.admission_values()?);
        out.push(serde_json::to_value(&self.deployment)?);
        Ok(out)
    }
}

fn labels(component: Option<&str>) -> BTreeMap<String, String> {
    let mut m = BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            OPERATOR_NAME.to_owned(),
        ),
        (
            "app.kubernetes.io/part-of".to_owned(),
            "kubenova".to_owned(),
        ),
    ]);
    if let Some(c) = component {
        m.insert("app.kubernetes.io/component".to_owned(), c.to_owned());
    }
    m
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(labels(None)),
        ..ObjectMeta::default()
    }
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let v = |xs: &[&str]| Some(xs.iter().map(|s| (*s).to_owned()).collect());
    PolicyRule {
        api_groups: v(groups),
        resources: v(resources),
        verbs: verbs.iter().map(|s| (*s).to_owned()).collect(),
        ..PolicyRule::default()
    }
}

/// The ClusterRole's rules: exactly what the controllers call (never `*`).
pub fn cluster_rules() -> Vec<PolicyRule> {
    const OWNED: [&str; 6] = ["get", "list", "watch", "create", "patch", "delete"];
    let mut bind = rule(&["rbac.authorization.k8s.io"], &["clusterroles"], &["bind"]);
    let mut proxy_read = rule(&[""], &["services", "secrets"], &["get"]);
    proxy_read.resource_names = Some(vec!["capsule-proxy".into()]);
    let mut proxy_ingress = rule(&["networking.k8s.io"], &["ingresses"], &["get"]);
    proxy_ingress.resource_names = Some(vec!["capsule-proxy".into()]);
    bind.resource_names = Some(PROJECT_CLUSTER_ROLES.map(str::to_owned).to_vec());
    let mut impersonate = rule(&[""], &["serviceaccounts"], &["impersonate"]);
    impersonate.resource_names = Some(vec![APP_SERVICE_ACCOUNT.to_owned()]);
    vec![
        // The Nova objects: watched, finalizer added/removed with a JSON patch; the agent
        // loop server-side applies the manager's desired set (creating what is absent)
        // and deletes what the manager dropped.
        rule(
            &["kubenova.io"],
            &["novatenants", "novaprojects", "novaapps"],
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        // Status written through the status subresource, only when it changes.
        rule(
            &["kubenova.io"],
            &[
                "novatenants/status",
                "novaprojects/status",
                "novaapps/status",
            ],
            &["get", "patch"],
        ),
        // Generated objects: server-side apply (patch; creates when absent), watched for
        // drift and name clashes, deleted by the finalizers.
        rule(&["capsule.clastix.io"], &["tenants"], &OWNED),
        rule(&[""], &["namespaces", "resourcequotas"], &OWNED),
        rule(&["rbac.authorization.k8s.io"], &["rolebindings"], &OWNED),
        rule(&["core.oam.dev"], &["applications"], &OWNED),
        // The per-project app identity (ServiceAccount `kubenova-app`).
        rule(&[""], &["serviceaccounts"], &OWNED),
        // Project RoleBindings grant these ClusterRoles; `bind` lets the operator do so
        // without holding every permission they contain (RBAC escalation check).
        bind,
        // KubeVela Applications are applied as the project's app identity, so that
        // KubeVela (application authentication on) records it and deploys with exactly
        // its rights. Only ServiceAccounts of that name can be impersonated: no users,
        // no groups, no other ServiceAccount.
        impersonate,
        // Warning Events for failures (kube::runtime::events::Recorder).
        rule(&["events.k8s.io"], &["events"], &["create", "patch"]),
        // Capabilities are derived from what is served: CRDs and component Deployments
        // (read only).
        rule(
            &["apiextensions.k8s.io"],
            &["customresourcedefinitions"],
            &["get", "list"],
        ),
        rule(&["apps"], &["deployments"], &["get", "list"]),
        // The Capsule Proxy endpoint and CA reported to the manager (read only, by name):
        // its Service, its serving-certificate Secret and its Ingress (the URL, when the
        // chart exposes it with one). Its Deployment (which Secret it serves) is read
        // with the rule above.
        proxy_read,
        proxy_ingress,
        // The logs and Events of an app that the manager relays to its users (agent
        // requests), read only: the pods of the app, their logs, and the Events of its
        // project namespace (the namespace comes from the manager's records, checked
        // against the app's NovaApp; its Deployments are read with the rule above).
        rule(&[""], &["pods"], &["get", "list"]),
        rule(&[""], &["pods/log"], &["get"]),
        rule(&[""], &["events"], &["list"]),
        // Hourly usage (module `usage`): pods (above), bound PVCs, LoadBalancer Services,
        // ResourceQuotas' status and KubeVela Applications are listed, read only (the
        // quotas and Applications with the rules above).
        rule(&[""], &["persistentvolumeclaims", "services"], &["list"]),
        // The cluster's capacity reported with the usage (Nodes' allocatable), read only.
        rule(&[""], &["nodes"], &["list"]),
    ]
}

/// The rules of the static ClusterRole [`APP_DEPLOYER_ROLE`]: what a project's app
/// identity needs to create, update and delete its KubeVela Applications. The operator
/// binds it with a RoleBinding in the project namespace only, so it never applies
/// cluster-wide.
pub fn app_deployer_rules() -> Vec<PolicyRule> {
    vec![rule(
        &["core.oam.dev"],
        &["applications"],
        &[
            "get", "list", "watch", "create", "patch", "update", "delete",
        ],
    )]
}

/// The Role's rules in the operator's namespace beyond the Lease: the agent Secret (read,
/// by name), the Capsule Proxy fallback ConfigMap (written when the manager cannot be
/// reached) and the usage buffer ConfigMap (the hours not sent yet).
pub fn agent_rules(agent_secret: &str) -> Vec<PolicyRule> {
    let mut secret = rule(&[""], &["secrets"], &["get"]);
    secret.resource_names = Some(vec![agent_secret.to_owned()]);
    let mut cm = rule(&[""], &["configmaps"], &["get", "patch"]);
    cm.resource_names = Some(vec![
        kubenova_api::agent::PROXY_CONFIGMAP.to_owned(),
        kubenova_api::agent::USAGE_CONFIGMAP.to_owned(),
    ]);
    vec![
        secret,
        cm,
        // `create` cannot be limited by name (server-side apply of an absent ConfigMap).
        rule(&[""], &["configmaps"], &["create"]),
    ]
}

/// The installer token Role's one rule: `create` on `serviceaccounts/token` for the
/// installer ServiceAccount only (a TokenRequest names its ServiceAccount, so unlike a
/// plain `create` this can be limited by name).
pub fn installer_token_rules() -> Vec<PolicyRule> {
    let mut token = rule(&[""], &["serviceaccounts/token"], &["create"]);
    token.resource_names = Some(vec![INSTALLER_NAME.to_owned()]);
    vec![token]
}

/// The Role's rules: the leader-election Lease, in the operator's namespace only.
/// `create` cannot be limited by name (the name is not known at authorization time).
pub fn lease_rules(lease_name: &str) -> Vec<PolicyRule> {
    let mut named = rule(&["coordination.k8s.io"], &["leases"], &["get", "update"]);
    named.resource_names = Some(vec![lease_name.to_owned()]);
    vec![
        named,
        rule(&["coordination.k8s.io"], &["leases"], &["create"]),
    ]
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    }
}

fn env_from(name: &str, source: EnvVarSource) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(source),
    }
}

fn field_ref(path: &str) -> EnvVarSource {
    EnvVarSource {
        field_ref: Some(ObjectFieldSelector {
            api_version: Some("v1".to_owned()),
            field_path: path.to_owned(),
        }),
        ..EnvVarSource::default()
    }
}

fn secret_key(secret: &str, key: &str) -> EnvVarSource {
    EnvVarSource {
        secret_key_ref: Some(SecretKeySelector {
            name: secret.to_owned(),
            key: key.to_owned(),
            optional: Some(true),
        }),
        ..EnvVarSource::default()
    }
}

fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".to_owned()),
            scheme: Some("HTTP".to_owned()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(5),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn quantities(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, Quantity>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
            .collect(),
    )
}

fn deployment(p: &OperatorParams) -> Deployment {
    let selector = BTreeMap::from([(
        "app.kubernetes.io/name".to_owned(),
        OPERATOR_NAME.to_owned(),
    )]);
    let mut envs = vec![
        env_from("POD_NAME", field_ref("metadata.name")),
        env_from("POD_NAMESPACE", field_ref("metadata.namespace")),
        env("KUBENOVA_LISTEN", &format!("0.0.0.0:{HTTP_PORT}")),
        env("KUBENOVA_LEADER_ELECTION", "true"),
        env("KUBENOVA_LEASE_NAMESPACE", &p.namespace),
        env("KUBENOVA_LEASE_NAME", &p.lease_name),
        env("KUBENOVA_AGENT_SECRET", &p.agent_secret),
    ];
    match &p.manager_url {
        Some(url) => envs.push(env("KUBENOVA_MANAGER_URL", url)),
        None => envs.push(env_from(
            "KUBENOVA_MANAGER_URL",
            secret_key(&p.agent_secret, AGENT_SECRET_URL_KEY),
        )),
    }
    envs.push(env_from(
        "KUBENOVA_AGENT_TOKEN",
        secret_key(&p.agent_secret, AGENT_SECRET_TOKEN_KEY),
    ));
    if p.helm_installer {
        // Helm runs as the installer ServiceAccount; its kubeconfig (with a short-lived
        // token) and helm's caches live in an in-memory /tmp (the root filesystem is
        // read-only).
        envs.push(env("KUBENOVA_COMPONENT_DRIVER", "helm"));
        envs.push(env(ENV_INSTALLER_SERVICE_ACCOUNT, INSTALLER_NAME));
        envs.push(env("TMPDIR", "/tmp"));
        envs.push(env("HELM_CACHE_HOME", "/tmp/helm/cache"));
        envs.push(env("HELM_CONFIG_HOME", "/tmp/helm/config"));
        envs.push(env("HELM_DATA_HOME", "/tmp/helm/data"));
    }
    envs.push(env("KUBENOVA_LOG", "info"));
    let (volumes, mounts) = if p.helm_installer {
        (
            Some(vec![Volume {
                name: "tmp".to_owned(),
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: Some("Memory".to_owned()),
                    size_limit: Some(Quantity("64Mi".to_owned())),
                }),
                ..Volume::default()
            }]),
            Some(vec![VolumeMount {
                name: "tmp".to_owned(),
                mount_path: "/tmp".to_owned(),
                ..VolumeMount::default()
            }]),
        )
    } else {
        (None, None)
    };
    let container = Container {
        name: "operator".to_owned(),
        image: Some(p.image.clone()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        args: Some(vec!["run".to_owned()]),
        env: Some(envs),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: i32::from(HTTP_PORT),
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        resources: Some(ResourceRequirements {
            requests: quantities(&[("cpu", "100m"), ("memory", "128Mi")]),
            limits: quantities(&[("cpu", "1"), ("memory", "256Mi")]),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        volume_mounts: mounts,
        ..Container::default()
    };
    let mut template_labels = labels(Some("operator"));
    template_labels.extend(selector.clone());
    Deployment {
        metadata: ObjectMeta {
            labels: Some(labels(Some("operator"))),
            ..meta(OPERATOR_NAME, Some(&p.namespace))
        },
        spec: Some(DeploymentSpec {
            replicas: Some(p.replicas),
            revision_history_limit: Some(5),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                match_expressions: None,
            },
            // One extra pod during a rollout, never fewer than `replicas` ready ones (the
            // standby is ready too: /readyz is about being able to take over, see
            // kubenova-operator's docs).
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(template_labels),
                    annotations: Some(BTreeMap::from([(
                        "kubectl.kubernetes.io/default-container".to_owned(),
                        "operator".to_owned(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(OPERATOR_NAME.to_owned()),
                    automount_service_account_token: Some(true),
                    termination_grace_period_seconds: Some(30),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        run_as_group: Some(65532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_owned(),
                            localhost_profile: None,
                        }),
                        ..PodSecurityContext::default()
                    }),
                    // Spread the replicas over nodes when there are several.
                    affinity: Some(Affinity {
                        pod_anti_affinity: Some(PodAntiAffinity {
                            preferred_during_scheduling_ignored_during_execution: Some(vec![
                                WeightedPodAffinityTerm {
                                    weight: 100,
                                    pod_affinity_term: PodAffinityTerm {
                                        label_selector: Some(LabelSelector {
                                            match_labels: Some(selector),
                                            match_expressions: None,
                                        }),
                                        topology_key: "kubernetes.io/hostname".to_owned(),
                                        ..PodAffinityTerm::default()
                                    },
                                },
                            ]),
                            ..PodAntiAffinity::default()
                        }),
                        ..Affinity::default()
                    }),
                    containers: vec![container],
                    volumes,
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The operator's install objects for `params` (see the [module docs](self)).
pub fn operator_manifests(params: &OperatorParams) -> OperatorManifests {
    let ns = params.namespace.as_str();
    let subject = Subject {
        kind: "ServiceAccount".to_owned(),
        name: OPERATOR_NAME.to_owned(),
        namespace: Some(ns.to_owned()),
        api_group: None,
    };
    let mut namespace_labels = labels(None);
    // The operator itself runs under the restricted Pod Security level.
    namespace_labels.insert(
        "pod-security.kubernetes.io/enforce".to_owned(),
        "restricted".to_owned(),
    );
    let installer = params
        .helm_installer
        .then(|| installer_manifests(ns, &subject));
    OperatorManifests {
        namespace: Namespace {
            metadata: ObjectMeta {
                labels: Some(namespace_labels),
                ..meta(ns, None)
            },
            ..Namespace::default()
        },
        service_account: ServiceAccount {
            metadata: meta(OPERATOR_NAME, Some(ns)),
            ..ServiceAccount::default()
        },
        cluster_role: ClusterRole {
            metadata: meta(OPERATOR_NAME, None),
            rules: Some(cluster_rules()),
            aggregation_rule: None,
        },
        cluster_role_binding: ClusterRoleBinding {
            metadata: meta(OPERATOR_NAME, None),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".to_owned()),
                kind: "ClusterRole".to_owned(),
                name: OPERATOR_NAME.to_owned(),
            },
            subjects: Some(vec![subject.clone()]),
        },
        lease_role: Role {
            metadata: meta(&format!("{OPERATOR_NAME}-leader-election"), Some(ns)),
            // The namespaced Role also carries the agent's Secret/ConfigMap rules.
            rules: Some(
                lease_rules(&params.lease_name)
                    .into_iter()
                    .chain(agent_rules(&params.agent_secret))
                    .collect(),
            ),
        },
        lease_role_binding: RoleBinding {
            metadata: meta(&format!("{OPERATOR_NAME}-leader-election"), Some(ns)),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".to_owned()),
                kind: "Role".to_owned(),
                name: format!("{OPERATOR_NAME}-leader-election"),
            },
            subjects: Some(vec![subject]),
        },
        app_deployer_role: ClusterRole {
            metadata: meta(APP_DEPLOYER_ROLE, None),
            rules: Some(app_deployer_rules()),
            aggregation_rule: None,
        },
        admission_policy: admission_policy(ns),
        admission_policy_binding: admission_policy_binding(),
        deployment: deployment(params),
        installer,
    }
}

/// The installer identity of [`InstallerManifests`] in namespace `ns`; `operator` is the
/// operator's ServiceAccount subject (granted the token Role).
fn installer_manifests(ns: &str, operator: &Subject) -> InstallerManifests {
    let mut sa_meta = meta(INSTALLER_NAME, Some(ns));
    sa_meta.labels.get_or_insert_with(BTreeMap::new).insert(
        "app.kubernetes.io/component".to_owned(),
        "installer".to_owned(),
    );
    InstallerManifests {
        service_account: ServiceAccount {
            metadata: sa_meta,
            // Tokens exist only when the operator requests one (TokenRequest).
            automount_service_account_token: Some(false),
            ..ServiceAccount::default()
        },
        cluster_role_binding: ClusterRoleBinding {
            metadata: meta(INSTALLER_NAME, None),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".to_owned()),
                kind: "ClusterRole".to_owned(),
                name: "cluster-admin".to_owned(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".to_owned(),
                name: INSTALLER_NAME.to_owned(),
                namespace: Some(ns.to_owned()),
                api_group: None,
            }]),
        },
        token_role: Role {
            metadata: meta(INSTALLER_TOKEN_ROLE, Some(ns)),
            rules: Some(installer_token_rules()),
        },
        token_role_binding: RoleBinding {
            metadata: meta(INSTALLER_TOKEN_ROLE, Some(ns)),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".to_owned()),
                kind: "Role".to_owned(),
                name: INSTALLER_TOKEN_ROLE.to_owned(),
            },
            subjects: Some(vec![operator.clone()]),
        },
    }
}

/// Parser options for manifest files we ship or install (CRDs, chart manifests): the
/// defaults of `serde-saphyr`, with room for the deep nesting of CRD schemas (an
/// OpenAPI schema nests two YAML levels per field level).
///
/// ```
/// use kubenova_reconcile::manifests::yaml_file_options;
///
/// let docs: Vec<serde_json::Value> =
///     serde_saphyr::from_str_multiple_with_options("a: 1\n---\nb: 2\n", yaml_file_options())?;
/// assert_eq!(docs.len(), 2);
/// # Ok::<(), serde_saphyr::Error>(())
/// ```
pub fn yaml_file_options() -> serde_saphyr::Options {
    serde_saphyr::options! { budget: serde_saphyr::budget! { max_depth: 512 }, with_snippet: false }
}

/// YAML text of one object as we write manifests: long lines stay one line (no folded
/// `>-` blocks, so CEL rules and patterns read as they are), multi-line text is a literal
/// `|` block, and quoting is YAML 1.1-safe for kubectl and client-go.
///
/// ```
/// use kubenova_reconcile::manifests::yaml_text;
///
/// let text = yaml_text(&serde_json::json!({"enabled": "on", "rule": "self.a || self.b"}))?;
/// // `on` would be a boolean to a YAML 1.1 reader such as kubectl: it is quoted.
/// assert_eq!(text, "enabled: \"on\"\nrule: self.a || self.b\n");
/// # Ok::<(), serde_saphyr::SerializeError>(())
/// ```
pub fn yaml_text<T: serde::Serialize>(value: &T) -> Result<String, serde_saphyr::SerializeError> {
    let options = serde_saphyr::ser_options! { folded_wrap_chars: usize::MAX };
    serde_saphyr::to_string_with_options(value, options)
}

/// Renders objects as a multi-document YAML stream (each document starts with `---`),
/// after a `#`-comment `header` (may be empty).
pub fn to_yaml(header: &str, objects: &[Value]) -> Result<String, serde_saphyr::SerializeError> {
    let mut out = String::new();
    for line in header.lines() {
        out.push_str("# ");
        out.push_str(line);
        out.push('\n');
    }
    for o in objects {
        out.push_str("---\n");
        out.push_str(&yaml_text(o)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parameters_reach_the_objects() {
        let p = OperatorParams {
            namespace: "ops".into(),
            image: "example.com/op:1".into(),
            replicas: 3,
            manager_url: Some("https://manager.example.com".into()),
            agent_secret: "agent".into(),
            lease_name: "lead".into(),
            helm_installer: false,
        };
        let m = operator_manifests(&p);
        assert_eq!(m.namespace.metadata.name.as_deref(), Some("ops"));
        for ns in [
            &m.service_account.metadata.namespace,
            &m.lease_role.metadata.namespace,
            &m.lease_role_binding.metadata.namespace,
            &m.deployment.metadata.namespace,
        ] {
            assert_eq!(ns.as_deref(), Some("ops"));
        }
        assert_eq!(
            m.cluster_role_binding.subjects.as_ref().unwrap()[0]
                .namespace
                .as_deref(),
            Some("ops")
        );
        let spec = m.deployment.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        let c = &spec.template.spec.as_ref().unwrap().containers[0];
        assert_eq!(c.image.as_deref(), Some("example.com/op:1"));
        let env: BTreeMap<&str, &EnvVar> = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.as_str(), e))
            .collect();
        assert_eq!(
            env["KUBENOVA_MANAGER_URL"].value.as_deref(),
            Some("https://manager.example.com")
        );
        assert_eq!(
            env["KUBENOVA_LEASE_NAMESPACE"].value.as_deref(),
            Some("ops")
        );
        assert_eq!(env["KUBENOVA_LEASE_NAME"].value.as_deref(), Some("lead"));
        let token = env["KUBENOVA_AGENT_TOKEN"].value_from.as_ref().unwrap();
        assert_eq!(token.secret_key_ref.as_ref().unwrap().name, "agent");
        let rules = m.lease_role.rules.as_ref().unwrap();
        assert_eq!(rules[0].resource_names, Some(vec!["lead".to_owned()]));
        // The admission policy matches the operator of that namespace and protects it.
        let policy = m.admission_policy.spec.as_ref().unwrap();
        assert_eq!(
            policy.match_conditions.as_ref().unwrap()[0].expression,
            "request.userInfo.username == 'system:serviceaccount:ops:kubenova-operator'"
        );
        assert!(
            policy.validations.as_ref().unwrap()[0]
                .expression
                .contains("'ops'")
        );
        assert_eq!(
            m.admission_policy_binding.spec.policy_name,
            ADMISSION_POLICY_NAME
        );

        // Without a URL, it comes from the agent Secret.
        let m = operator_manifests(&OperatorParams::default());
        let c = &m.deployment.spec.unwrap().template.spec.unwrap().containers[0];
        let url = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "KUBENOVA_MANAGER_URL")
            .unwrap();
        let key = url
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (key.name.as_str(), key.key.as_str()),
            (AGENT_SECRET, "managerUrl")
        );
    }

    #[test]
    fn hardened_pod() {
        let m = operator_manifests(&OperatorParams::default());
        let pod = m.deployment.spec.unwrap().template.spec.unwrap();
        let psc = pod.security_context.unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let c = &pod.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop,
            Some(vec!["ALL".to_owned()])
        );
        let res = c.resources.as_ref().unwrap();
        assert!(res.requests.as_ref().unwrap().contains_key("memory"));
        assert!(res.limits.as_ref().unwrap().contains_key("memory"));
        assert_eq!(
            c.liveness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/healthz")
        );
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/readyz")
        );
    }

    #[test]
    fn no_wildcards() {
        let m = operator_manifests(&OperatorParams::default());
        let all = m
            .cluster_role
            .rules
            .unwrap()
            .into_iter()
            .chain(m.lease_role.rules.unwrap())
            .chain(m.app_deployer_role.rules.unwrap());
        for r in all {
            let mut words = r.verbs.clone();
            words.extend(r.api_groups.unwrap_or_default());
            words.extend(r.resources.unwrap_or_default());
            assert!(words.iter().all(|w| !w.contains('*')), "{words:?}");
        }
    }
}
