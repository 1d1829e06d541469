//! Domain and wire types: clusters, tenants, projects, apps, usage and audit.
//!
//! Request types (`*Spec`) are what clients send; record types (`Cluster`, `Tenant`,
//! ...) are what KubeNova stores and returns. All JSON is camelCase. Records carry a
//! `version` that increases on every change (the ETag), and `createdAt`/`updatedAt`.

use crate::ids::{AppId, AuditId, ClusterId, ProjectId, RunId, TenantId};
use crate::quantity::Quantity;
use crate::validate::{DESCRIPTION_MAX, Validate, ValidationError, Validator, quote_key};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// Maximum length of a tenant name (its namespaces append `-owner` / `-apps`, and a
/// namespace is a DNS-1123 label of at most 63 characters).
pub const TENANT_NAME_MAX: usize = 50;
/// Maximum number of owners of a tenant, or access entries of a project.
pub const SUBJECTS_MAX: usize = 100;
/// Maximum number of components in one app.
pub const COMPONENTS_MAX: usize = 50;
/// Maximum number of traits, policies or workflow steps in one app.
pub const APP_ITEMS_MAX: usize = 50;
/// Maximum size of a subject (user, group or service account name).
pub const SUBJECT_MAX: usize = 253;

// ---------------------------------------------------------------------------------
// Shared status pieces
// ---------------------------------------------------------------------------------

/// Status of a condition, as in Kubernetes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Not known yet.
    Unknown,
}

/// A standard condition (`Ready`, `Reconciling`, `Degraded`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"type": "Ready", "status": "True", "reason": "Reconciled", "message": "all objects applied", "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 3}))]
pub struct Condition {
    /// Condition type, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// Machine-readable CamelCase reason.
    #[serde(default)]
    pub reason: String,
    /// Human-readable message.
    #[serde(default)]
    pub message: String,
    /// When the status last changed.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub last_transition_time: OffsetDateTime,
    /// The generation/revision the condition was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Lifecycle phase of a tenant, project or app as reported by the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// Recorded by the manager; the operator has not reported yet.
    #[default]
    Pending,
    /// The operator is applying it.
    Reconciling,
    /// Applied and healthy in the cluster.
    Ready,
    /// Applied with problems (see conditions).
    Degraded,
    /// Being removed from the cluster.
    Deleting,
}

/// Observed status of a tenant, project or app (written from operator reports).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"phase": "ready", "conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}], "observedRevision": 12}))]
pub struct ObjectStatus {
    /// Overall phase.
    pub phase: Phase,
    /// Conditions as reported by the operator.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The desired-state revision the operator last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_revision: Option<i64>,
    /// Short human summary.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

// ---------------------------------------------------------------------------------
// Clusters
// ---------------------------------------------------------------------------------

/// Lifecycle status of a registered cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClusterStatus {
    /// Registered; the operator has not been bootstrapped.
    PendingBootstrap,
    /// Bootstrap applied; waiting for the operator's first hello.
    Bootstrapping,
    /// The operator is heartbeating.
    Connected,
    /// Bootstrap or install failed; see conditions.
    Error,
    /// Heartbeats stopped for three intervals.
    Stale,
}

impl ClusterStatus {
    /// Wire spelling, e.g. `pending_bootstrap`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ClusterStatus::PendingBootstrap => "pending_bootstrap",
            ClusterStatus::Bootstrapping => "bootstrapping",
            ClusterStatus::Connected => "connected",
            ClusterStatus::Error => "error",
            ClusterStatus::Stale => "stale",
        }
    }
}

/// What the operator observed to be really installed and served in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"certManager": true, "capsule": true, "capsuleProxy": false, "kubeVela": true}))]
pub struct Capabilities {
    /// cert-manager CRDs served and its deployments available.
    #[serde(default)]
    pub cert_manager: bool,
    /// Capsule Tenant CRD served and the controller available.
    #[serde(default)]
    pub capsule: bool,
    /// Capsule Proxy deployed and its endpoint reported.
    #[serde(default)]
    pub capsule_proxy: bool,
    /// KubeVela Application CRD served and the controller available.
    #[serde(default)]
    pub kube_vela: bool,
}

/// Install state of one component in a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum ComponentPhase {
    /// Requested but not started.
    Requested,
    /// Being installed.
    Installing,
    /// Installed and ready.
    Ready,
    /// Install failed.
    Failed,
    /// Not installed.
    Absent,
}

/// A component the operator manages (cert-manager, capsule, capsule-proxy, kubevela, operator).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"name": "capsule", "version": "0.14.6", "phase": "ready"}))]
pub struct ComponentState {
    /// Component name.
    pub name: String,
    /// Installed (or requested) chart/app version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Install state.
    pub phase: ComponentPhase,
    /// Detail, e.g. the failure reason.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Id of the (re)install request the manager keeps for this component until the
    /// operator acknowledges it (set on stored states only; operators leave it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<uuid::Uuid>,
}

/// The components KubeNova can install, in install order.
pub const COMPONENTS: &[&str] = &[
    "cert-manager",
    "capsule",
    "capsule-proxy",
    "kubevela",
    "operator",
];

/// Capsule Proxy endpoint of a cluster, as reported by its operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"url": "https://capsule-proxy.example.com:9001", "caData": "LS0tLS1CRUdJTi..."}))]
pub struct ProxyEndpoint {
    /// HTTPS URL of Capsule Proxy.
    pub url: String,
    /// Base64 PEM of the CA that signs the proxy's serving certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_data: Option<String>,
}

/// Request to register a cluster (`POST /api/v1/clusters`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"name": "prod-eu-1", "datacenter": "eu-west", "labels": {"env": "prod"}, "kubeconfig": "YXBpVmVyc2lvbjogdjEK..."}))]
pub struct ClusterSpec {
    /// Unique cluster name (DNS-1123 label).
    pub name: String,
    /// Free-form datacenter/region name.
    #[serde(default)]
    pub datacenter: String,
    /// Labels for selection.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The cluster's kubeconfig, base64 or raw YAML. Stored envelope-encrypted, never returned.
    pub kubeconfig: String,
    /// Optional Capsule Proxy base URL, if known before the operator reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capsule_proxy_endpoint: Option<String>,
}

impl Validate for ClusterSpec {
    fn validate(&self) -> Result<(), ValidationError> {
        let mut v = Validator::new();
        v.dns_label("name", &self.name);
        v.max_len("datacenter", &self.datacenter, 63);
        v.labels("labels", &self.labels);
        if self.kubeconfig.trim().is_empty() {
            v.push(
                "kubeconfig",
                "must not be empty: send the cluster's kubeconfig (base64 or YAML)",
            );
        } else if self.kubeconfig.len() > 512 * 1024 {
            v.push("kubeconfig", "must be at most 512 KiB");
        }
        if let Some(url) = &self.capsule_proxy_endpoint {
            check_https_url(&mut v, "capsuleProxyEndpoint", url);
        }
        v.finish()
    }
}

fn check_https_url(v: &mut Validator, field: &str, url: &str) {
    if !url.starts_with("https://") || url.len() <= "https://".len() {
        v.push(field, format!("{url:?} must be an https:// URL"));
    } else {
        v.max_len(field, url, 2048);
    }
}

/// A registered cluster. The kubeconfig is never part of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "id": "11111111-1111-1111-1111-111111111111", "name": "prod-eu-1", "datacenter": "eu-west",
    "labels": {"env": "prod"}, "status": "connected",
    "capabilities": {"certManager": true, "capsule": true, "capsuleProxy": true, "kubeVela": true},
    "components": [], "conditions": [], "version": 3,
    "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:05:00Z"}))]
pub struct Cluster {
    /// Id.
    pub id: ClusterId,
    /// Unique name.
    pub name: String,
    /// Datacenter/region.
    #[serde(default)]
    pub datacenter: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Lifecycle status.
    pub status: ClusterStatus,
    /// What is really installed, as observed by the operator.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// Component install states.
    #[serde(default)]
    pub components: Vec<ComponentState>,
    /// Capsule Proxy endpoint (configured or reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyEndpoint>,
    /// Conditions, e.g. `Bootstrapped`, `AgentConnected`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Last agent heartbeat.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_heartbeat_at: Option<OffsetDateTime>,
    /// Version reported by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_version: Option<String>,
    /// Record version (ETag).
    pub version: i64,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

// ---------------------------------------------------------------------------------
// Subjects
// ---------------------------------------------------------------------------------

/// Kind of an RBAC subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum SubjectKind {
    /// A user (e.g. an email from the identity provider).
    User,
    /// A group.
    Group,
    /// A Kubernetes service account.
    ServiceAccount,
}

/// A subject parsed from its string form: `alice@example.com` (User),
/// `group:platform-admins` (Group), `user:bob` (User) or
/// `serviceaccount:<namespace>:<name>` (ServiceAccount).
///
/// ```
/// use kubenova_api::model::{Subject, SubjectKind};
/// let s = Subject::parse("group:platform-admins").unwrap();
/// assert_eq!(s.kind, SubjectKind::Group);
/// assert_eq!(s.name, "platform-admins");
/// assert!(Subject::parse("group:").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subject {
    /// Kind.
    pub kind: SubjectKind,
    /// Name as Kubernetes sees it (for service accounts `system:serviceaccount:ns:name`).
    pub name: String,
}

impl Subject {
    /// Parses the string form; the error says what is accepted.
    pub fn parse(s: &str) -> Result<Subject, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        if s.len() > SUBJECT_MAX {
            return Err(format!("must be at most {SUBJECT_MAX} characters"));
        }
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("must not contain whitespace or control characters".into());
        }
        let (kind, name) = if let Some(rest) = s.strip_prefix("group:") {
            (SubjectKind::Group, rest.to_string())
        } else if let Some(rest) = s.strip_prefix("user:") {
            (SubjectKind::User, rest.to_string())
        } else if let Some(rest) = s.strip_prefix("serviceaccount:") {
            let Some((ns, name)) = rest.split_once(':') else {
                return Err(
                    "a service account is written serviceaccount:<namespace>:<name>".into(),
                );
            };
            if crate::validate::dns_label_problem(ns).is_some()
                || crate::validate::dns_label_problem(name).is_some()
            {
                return Err("service account namespace and name must be DNS-1123 labels".into());
            }
            (
                SubjectKind::ServiceAccount,
                format!("system:serviceaccount:{ns}:{name}"),
            )
        } else {
            (SubjectKind::User, s.to_string())
        };
        if name.is_empty() {
            return Err("the name after the kind prefix must not be empty".into());
        }
        Ok(Subject { kind, name })
    }
}

fn check_subjects(v: &mut Validator, field: &str, items: &[String]) {
    v.max_items(field, items, SUBJECTS_MAX);
    let mut seen = std::collections::BTreeSet::new();
    for (i, s) in items.iter().enumerate() {
        match Subject::parse(s) {
            Ok(sub) => {
                if !seen.insert((sub.kind as u8, sub.name)) {
                    v.push(format!("{field}[{i}]"), format!("duplicate subject {s:?}"));
                }
            }
            Err(e) => v.push(format!("{field}[{i}]"), format!("{s:?}: {e}")),
        }
    }
}

// ---------------------------------------------------------------------------------
// Tenants
// ---------------------------------------------------------------------------------

/// Request to create a tenant. `plan` defaults to the manager's configured default
/// plan; `quotas`, `limits` and `networkPolicies` override the plan per field.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"name": "acme", "owners": ["alice@example.com", "group:acme-admins"], "plan": "baseline", "labels": {"tier": "gold"}, "quotas": {"requests.cpu": "4"}}))]
pub struct TenantSpec {
    /// Tenant name: a DNS-1123 label of at most 50 characters, unique per cluster.
    pub name: String,
    /// Owners: `alice@example.com`, `user:bob`, `group:ops`, `serviceaccount:ns:name`.
    #[serde(default)]
    pub owners: Vec<String>,
    /// Plan name from the catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// ResourceQuota `hard` overrides (e.g. `requests.cpu: "4"`).
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, String>)]
    pub quotas: BTreeMap<String, Quantity>,
    /// Container default limit overrides for the LimitRange (e.g. `cpu: 500m`).
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, String>)]
    pub limits: BTreeMap<String, Quantity>,
    /// Policyset names; when set, replaces the plan's policysets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policies: Option<Vec<String>>,
}

fn check_resource_map(v: &mut Validator, field: &str, map: &BTreeMap<String, Quantity>) {
    if map.len() > 64 {
        v.push(field, "must have at most 64 entries");
    }
    for k in map.keys() {
        v.label_key(&format!("{field}.{}", quote_key(k)), k);
    }
}

fn check_names(v: &mut Validator, field: &str, names: &[String]) {
    v.max_items(field, names, 64);
    for (i, n) in names.iter().enumerate() {
        v.dns_label(&format!("{field}[{i}]"), n);
    }
}

impl Validate for TenantSpec {
    fn validate(&self) -> Result<(), ValidationError> {
        let mut v = Validator::new();
        if v.dns_label("name", &self.name) && self.name.len() > TENANT_NAME_MAX {
            v.push("name", format!("must be at most {TENANT_NAME_MAX} characters (its namespaces append -owner/-apps)"));
        }
        check_subjects(&mut v, "owners", &self.owners);
        if let Some(p) = &self.plan {
            v.dns_label("plan", p);
        }
        v.labels("labels", &self.labels);
        check_resource_map(&mut v, "quotas", &self.quotas);
        check_resource_map(&mut v, "limits", &self.limits);
        if let Some(np) = &self.network_policies {
            check_names(&mut v, "networkPolicies", np);
        }
        v.finish()
    }
}

/// Per-field overrides a tenant keeps on top of its plan (so a plan change re-resolves).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"quotas": {"requests.cpu": "4"}, "limits": {}, "networkPolicies": ["tenant-isolation"]}))]
pub struct TenantOverrides {
    /// Quota overrides.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, String>)]
    pub quotas: BTreeMap<String, Quantity>,
    /// Limit overrides.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, String>)]
    pub limits: BTreeMap<String, Quantity>,
    /// Policyset override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policies: Option<Vec<String>>,
}

/// A tenant with its effective (plan + overrides) quotas, limits and policysets:
/// exactly what the operator enforces in the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "id": "22222222-2222-2222-2222-222222222222", "clusterId": "11111111-1111-1111-1111-111111111111",
    "name": "acme", "owners": ["alice@example.com"], "plan": "baseline", "labels": {},
    "quotas": {"requests.cpu": "2", "limits.cpu": "2", "pods": "50"},
    "limits": {"cpu": "500m", "memory": "512Mi"}, "networkPolicies": ["tenant-isolation"],
    "ownerNamespace": "acme-owner", "appsNamespace": "acme-apps",
    "overrides": {"quotas": {}, "limits": {}}, "status": {"phase": "ready", "conditions": []},
    "version": 1, "createdAt": "2026-01-01T00:05:00Z", "updatedAt": "2026-01-01T00:05:00Z"}))]
pub struct Tenant {
    /// Id.
    pub id: TenantId,
    /// Cluster the tenant lives in.
    pub cluster_id: ClusterId,
    /// Name (unique per cluster).
    pub name: String,
    /// Owners (string form, see [`Subject`]).
    pub owners: Vec<String>,
    /// Assigned plan.
    pub plan: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Effective ResourceQuota `hard` values.
    #[schema(value_type = BTreeMap<String, String>)]
    pub quotas: BTreeMap<String, Quantity>,
    /// Effective container default limits.
    #[schema(value_type = BTreeMap<String, String>)]
    pub limits: BTreeMap<String, Quantity>,
    /// Effective policysets.
    pub network_policies: Vec<String>,
    /// Namespace for the tenant's owners.
    pub owner_namespace: String,
    /// Default namespace for apps.
    pub apps_namespace: String,
    /// What the client asked to override on top of the plan.
    #[serde(default)]
    pub overrides: TenantOverrides,
    /// Observed status.
    #[serde(default)]
    pub status: ObjectStatus,
    /// Record version (ETag).
    pub version: i64,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

/// Namespace names derived from a tenant name; collision-free because tenant names are
/// unique per cluster and the suffixes differ from project namespaces' hash suffix.
pub fn tenant_namespaces(tenant: &str) -> (String, String) {
    (format!("{tenant}-owner"), format!("{tenant}-apps"))
}

/// Namespace of a project: `<tenant>-<project>` (truncated) plus an 8-hex-digit hash
/// of the pair, so `a`/`b-c` and `a-b`/`c` never collide.
///
/// ```
/// use kubenova_api::model::project_namespace;
/// assert_ne!(project_namespace("a", "b-c"), project_namespace("a-b", "c"));
/// assert!(project_namespace(&"t".repeat(50), &"p".repeat(63)).len() <= 63);
/// ```
pub fn project_namespace(tenant: &str, project: &str) -> String {
    let hash = fnv1a64(format!("{tenant}/{project}").as_bytes());
    let mut base = format!("{tenant}-{project}");
    base.truncate(54);
    let base = base.trim_end_matches('-');
    format!("{base}-{:08x}", (hash >> 32) as u32)
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

// ---------------------------------------------------------------------------------
// Projects
// ---------------------------------------------------------------------------------

/// Role of a subject in a project (or tenant kubeconfig).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum AccessRole {
    /// Full control (admin ClusterRole).
    Owner,
    /// Edit ClusterRole.
    Developer,
    /// View ClusterRole.
    Viewer,
}

impl AccessRole {
    /// Wire spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            AccessRole::Owner => "owner",
            AccessRole::Developer => "developer",
            AccessRole::Viewer => "viewer",
        }
    }
}

/// An access entry in string form: `[owner:|developer:|viewer:]<subject>`; without a role
/// prefix the subject is a developer.
///
/// ```
/// use kubenova_api::model::{AccessEntry, AccessRole, SubjectKind};
/// let e = AccessEntry::parse("viewer:group:qa").unwrap();
/// assert_eq!(e.role, AccessRole::Viewer);
/// assert_eq!(e.subject.kind, SubjectKind::Group);
/// assert_eq!(AccessEntry::parse("alice@example.com").unwrap().role, AccessRole::Developer);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessEntry {
    /// Role granted.
    pub role: AccessRole,
    /// Who gets it.
    pub subject: Subject,
}

impl AccessEntry {
    /// Parses the string form.
    pub fn parse(s: &str) -> Result<AccessEntry, String> {
        let s = s.trim();
        let (role, rest) = if let Some(r) = s.strip_prefix("owner:") {
            (AccessRole::Owner, r)
        } else if let Some(r) = s.strip_prefix("developer:") {
            (AccessRole::Developer, r)
        } else if let Some(r) = s.strip_prefix("viewer:") {
            (AccessRole::Viewer, r)
        } else {
            (AccessRole::Developer, s)
        };
        Ok(AccessEntry {
            role,
            subject: Subject::parse(rest)?,
        })
    }
}

fn check_access(v: &mut Validator, field: &str, items: &[String]) {
    v.max_items(field, items, SUBJECTS_MAX);
    let mut seen = std::collections::BTreeSet::new();
    for (i, s) in items.iter().enumerate() {
        match AccessEntry::parse(s) {
            Ok(e) => {
                if !seen.insert((e.subject.kind as u8, e.subject.name)) {
                    v.push(
                        format!("{field}[{i}]"),
                        format!("subject of {s:?} is listed twice"),
                    );
                }
            }
            Err(e) => v.push(format!("{field}[{i}]"), format!("{s:?}: {e}")),
        }
    }
}

/// Request to create or update a project.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"name": "payments", "description": "Payment services", "access": ["alice@example.com", "viewer:group:auditors"]}))]
pub struct ProjectSpec {
    /// Project name (DNS-1123 label), unique per tenant.
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Access entries (`[role:]subject`).
    #[serde(default)]
    pub access: Vec<String>,
}

impl Validate for ProjectSpec {
    fn validate(&self) -> Result<(), ValidationError> {
        let mut v = Validator::new();
        v.dns_label("name", &self.name);
        v.max_len("description", &self.description, DESCRIPTION_MAX);
        v.labels("labels", &self.labels);
        check_access(&mut v, "access", &self.access);
        v.finish()
    }
}

/// A project: a namespace of a tenant with its own access list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "id": "33333333-3333-3333-3333-333333333333", "clusterId": "11111111-1111-1111-1111-111111111111",
    "tenantId": "22222222-2222-2222-2222-222222222222", "name": "payments", "description": "Payment services",
    "labels": {}, "access": ["alice@example.com"], "namespace": "acme-payments-1a2b3c4d",
    "status": {"phase": "pending", "conditions": []}, "version": 1,
    "createdAt": "2026-01-01T00:10:00Z", "updatedAt": "2026-01-01T00:10:00Z"}))]
pub struct Project {
    /// Id.
    pub id: ProjectId,
    /// Cluster.
    pub cluster_id: ClusterId,
    /// Tenant.
    pub tenant_id: TenantId,
    /// Name (unique per tenant).
    pub name: String,
    /// Description.
    pub description: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Access entries.
    pub access: Vec<String>,
    /// The project's namespace (see [`project_namespace`]).
    pub namespace: String,
    /// Observed status.
    #[serde(default)]
    pub status: ObjectStatus,
    /// Record version (ETag).
    pub version: i64,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

// ---------------------------------------------------------------------------------
// Apps
// ---------------------------------------------------------------------------------

/// A KubeVela trait attached to a component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"type": "scaler", "properties": {"replicas": 2}}))]
pub struct AppTrait {
    /// TraitDefinition name, e.g. `scaler`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Free-form properties checked by the definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub properties: Option<serde_json::Value>,
}

/// A KubeVela policy of the app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"name": "gc", "type": "garbage-collect", "properties": {"keepLegacyResource": false}}))]
pub struct AppPolicy {
    /// Policy name (defaults to the type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// PolicyDefinition name.
    #[serde(rename = "type")]
    pub type_: String,
    /// Free-form properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub properties: Option<serde_json::Value>,
}

/// One component of an app (becomes a KubeVela component).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"name": "web", "type": "webservice", "properties": {"image": "nginx:1.27", "port": 80}, "traits": [{"type": "scaler", "properties": {"replicas": 2}}]}))]
pub struct AppComponent {
    /// Component name (DNS-1123 label), unique in the app.
    pub name: String,
    /// ComponentDefinition name, e.g. `webservice`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Free-form properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub properties: Option<serde_json::Value>,
    /// Traits of this component.
    #[serde(default)]
    pub traits: Vec<AppTrait>,
    /// Names of components this one depends on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
}

/// One workflow step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"name": "deploy", "type": "deploy"}))]
pub struct WorkflowStep {
    /// Step name.
    pub name: String,
    /// WorkflowStepDefinition name, e.g. `deploy`, `suspend`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Free-form properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub properties: Option<serde_json::Value>,
}

/// The app's delivery workflow.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"steps": [{"name": "deploy", "type": "deploy"}]}))]
pub struct Workflow {
    /// Steps, run in order.
    #[serde(default)]
    pub steps: Vec<WorkflowStep>,
}

/// Request to create or update an app. Either `components` or the 0.1.3 shorthand
/// (`component` type + `image` + `spec` properties) describes what runs; `traits`
/// apply to every component.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"name": "web", "description": "storefront", "component": "webservice", "image": "nginx:1.27", "spec": {"port": 80}, "traits": [{"type": "scaler", "properties": {"replicas": 2}}]}))]
pub struct AppSpec {
    /// App name (DNS-1123 label), unique per project.
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Shorthand: component type of a single-component app (default `webservice`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// Shorthand: container image of a single-component app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Shorthand: properties of a single-component app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub spec: Option<serde_json::Value>,
    /// Components (full form).
    #[serde(default)]
    pub components: Vec<AppComponent>,
    /// Traits applied to every component.
    #[serde(default)]
    pub traits: Vec<AppTrait>,
    /// Policies.
    #[serde(default)]
    pub policies: Vec<AppPolicy>,
    /// Workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<Workflow>,
}

impl AppSpec {
    /// The components this spec describes, with the shorthand expanded.
    pub fn effective_components(&self) -> Vec<AppComponent> {
        if !self.components.is_empty() {
            return self.components.clone();
        }
        let mut props = match &self.spec {
            Some(serde_json::Value::Object(m)) => m.clone(),
            _ => serde_json::Map::new(),
        };
        if let Some(image) = &self.image {
            props.insert("image".into(), serde_json::Value::String(image.clone()));
        }
        vec![AppComponent {
            name: self.name.clone(),
            type_: self
                .component
                .clone()
                .unwrap_or_else(|| "webservice".into()),
            properties: Some(serde_json::Value::Object(props)),
            traits: Vec::new(),
            depends_on: Vec::new(),
        }]
    }
}

impl Validate for AppSpec {
    fn validate(&self) -> Result<(), ValidationError> {
        let mut v = Validator::new();
        v.dns_label("name", &self.name);
        v.max_len("description", &self.description, DESCRIPTION_MAX);
        let shorthand = self.component.is_some() || self.image.is_some() || self.spec.is_some();
        if shorthand && !self.components.is_empty() {
            v.push(
                "components",
                "use either components or the component/image/spec shorthand, not both",
            );
        }
        if !shorthand && self.components.is_empty() {
            v.push(
                "components",
                "an app needs at least one component (or component/image/spec)",
            );
        }
        if let Some(c) = &self.component {
            v.dns_subdomain("component", c);
        }
        if let Some(i) = &self.image {
            if i.trim().is_empty() || i.chars().any(char::is_whitespace) {
                v.push("image", format!("{i:?} is not a container image reference"));
            } else {
                v.max_len("image", i, 512);
            }
        }
        if let Some(s) = &self.spec {
            if !s.is_object() {
                v.push("spec", "must be a JSON object of component properties");
            } else {
                check_props(&mut v, "spec", Some(s));
            }
        }
        v.max_items("components", &self.components, COMPONENTS_MAX);
        let mut names = std::collections::BTreeSet::new();
        for (i, c) in self.components.iter().enumerate() {
            let f = format!("components[{i}]");
            if v.dns_label(&format!("{f}.name"), &c.name) && !names.insert(c.name.as_str()) {
                v.push(
                    format!("{f}.name"),
                    format!("duplicate component name {:?}", c.name),
                );
            }
            v.dns_subdomain(&format!("{f}.type"), &c.type_);
            check_props(&mut v, &format!("{f}.properties"), c.properties.as_ref());
            check_traits(&mut v, &format!("{f}.traits"), &c.traits);
        }
        for (i, c) in self.components.iter().enumerate() {
            for (j, d) in c.depends_on.iter().enumerate() {
                if !names.contains(d.as_str()) || d == &c.name {
                    v.push(
                        format!("components[{i}].dependsOn[{j}]"),
                        format!("{d:?} is not another component of this app"),
                    );
                }
            }
        }
        check_traits(&mut v, "traits", &self.traits);
        v.max_items("policies", &self.policies, APP_ITEMS_MAX);
        for (i, p) in self.policies.iter().enumerate() {
            v.dns_subdomain(&format!("policies[{i}].type"), &p.type_);
            let name = p.name.as_deref().unwrap_or(&p.type_);
            if let Some(n) = &p.name {
                v.dns_label(&format!("policies[{i}].name"), n);
            }
            check_not_reserved(&mut v, &format!("policies[{i}].name"), name);
            check_props(
                &mut v,
                &format!("policies[{i}].properties"),
                p.properties.as_ref(),
            );
        }
        if let Some(w) = &self.workflow {
            v.max_items("workflow.steps", &w.steps, APP_ITEMS_MAX);
            for (i, s) in w.steps.iter().enumerate() {
                v.dns_label(&format!("workflow.steps[{i}].name"), &s.name);
                check_not_reserved(&mut v, &format!("workflow.steps[{i}].name"), &s.name);
                v.dns_subdomain(&format!("workflow.steps[{i}].type"), &s.type_);
                check_props(
                    &mut v,
                    &format!("workflow.steps[{i}].properties"),
                    s.properties.as_ref(),
                );
            }
        }
        v.finish()
    }
}

fn check_traits(v: &mut Validator, field: &str, traits: &[AppTrait]) {
    v.max_items(field, traits, APP_ITEMS_MAX);
    for (i, t) in traits.iter().enumerate() {
        v.dns_subdomain(&format!("{field}[{i}].type"), &t.type_);
        check_props(
            v,
            &format!("{field}[{i}].properties"),
            t.properties.as_ref(),
        );
    }
}

fn check_props(v: &mut Validator, field: &str, props: Option<&serde_json::Value>) {
    if let Some(p) = props {
        if !p.is_object() {
            v.push(field, "must be a JSON object");
        } else if let Some(reason) = crate::validate::json_text_problem(p) {
            v.push(field, reason);
        } else if let Some((path, reason)) = crate::apprules::retargeting_problem(field, p) {
            v.push(path, reason);
        }
    }
}

/// Policy and workflow-step names starting with `kubenova-` are KubeNova's own.
fn check_not_reserved(v: &mut Validator, field: &str, name: &str) {
    if name.starts_with(crate::apprules::RESERVED_NAME_PREFIX) {
        v.push(
            field,
            format!(
                "{name:?}: names starting with {:?} are reserved for what KubeNova adds to an app; choose another name",
                crate::apprules::RESERVED_NAME_PREFIX
            ),
        );
    }
}

/// A snapshot of an app's spec at one revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"number": 2, "spec": {"name": "web", "image": "nginx:1.27"}, "createdBy": "alice@example.com", "createdAt": "2026-01-01T00:20:00Z"}))]
pub struct AppRevision {
    /// Revision number, starting at 1.
    pub number: i64,
    /// The spec at that revision.
    pub spec: AppSpec,
    /// Who made the change.
    #[serde(default)]
    pub created_by: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

/// An application and its delivery state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"id": "44444444-4444-4444-4444-444444444444", "clusterId": "11111111-1111-1111-1111-111111111111", "tenantId": "22222222-2222-2222-2222-222222222222", "projectId": "33333333-3333-3333-3333-333333333333", "name": "web", "spec": {"name": "web", "image": "nginx:1.27"}, "revision": 2, "deployedRevision": 2, "suspended": false, "status": {"phase": "ready", "conditions": []}, "velaPhase": "running", "version": 4, "createdAt": "2026-01-01T00:15:00Z", "updatedAt": "2026-01-01T00:20:00Z"}))]
pub struct App {
    /// Id.
    pub id: AppId,
    /// Cluster.
    pub cluster_id: ClusterId,
    /// Tenant.
    pub tenant_id: TenantId,
    /// Project.
    pub project_id: ProjectId,
    /// Name (unique per project).
    pub name: String,
    /// The current spec (latest revision).
    pub spec: AppSpec,
    /// Latest revision number.
    pub revision: i64,
    /// The revision the client asked to run (set by deploy/rollback); `None` until deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed_revision: Option<i64>,
    /// Suspended apps keep their spec but their workflow is paused.
    pub suspended: bool,
    /// Observed status (phase mirrors KubeVela's `status.status`).
    #[serde(default)]
    pub status: ObjectStatus,
    /// KubeVela application phase as reported (`running`, `workflowFailed`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vela_phase: Option<String>,
    /// Record version (ETag).
    pub version: i64,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

/// State of a workflow run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum RunStatus {
    /// Recorded, waiting for the operator.
    Requested,
    /// Running in the cluster.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Failed.
    Failed,
}

/// One requested workflow run of an app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"id": "55555555-5555-5555-5555-555555555555", "appId": "44444444-4444-4444-4444-444444444444", "status": "requested", "inputs": {"action": "smoke-test"}, "startedAt": "2026-01-01T00:30:00Z"}))]
pub struct WorkflowRun {
    /// Id.
    pub id: RunId,
    /// App.
    pub app_id: AppId,
    /// State.
    pub status: RunStatus,
    /// Inputs given by the client.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub inputs: serde_json::Value,
    /// Result reported by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// When requested.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: OffsetDateTime,
    /// When finished.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ended_at: Option<OffsetDateTime>,
}

// ---------------------------------------------------------------------------------
// Usage and audit
// ---------------------------------------------------------------------------------

/// Hourly usage of a tenant (or one of its projects) in a cluster. Ingestion is
/// idempotent per (cluster, tenant, project, hour): a re-sent hour replaces the old one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"clusterId": "11111111-1111-1111-1111-111111111111", "tenantId": "22222222-2222-2222-2222-222222222222", "hour": "2026-01-01T10:00:00Z", "cpuMillicores": 1500, "memoryBytes": 2147483648_i64, "storageBytes": 10737418240_i64, "loadBalancers": 1, "namespaces": 3, "pods": 12, "apps": 2}))]
pub struct UsageRecord {
    /// Cluster.
    pub cluster_id: ClusterId,
    /// Tenant.
    pub tenant_id: TenantId,
    /// Project, or `None` for the tenant-level total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<ProjectId>,
    /// Start of the hour (UTC, minutes and seconds zero).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub hour: OffsetDateTime,
    /// Sum of CPU requests, in millicores.
    pub cpu_millicores: i64,
    /// Sum of memory requests, in bytes.
    pub memory_bytes: i64,
    /// Sum of PVC capacity, in bytes.
    pub storage_bytes: i64,
    /// LoadBalancer services.
    pub load_balancers: i64,
    /// Namespaces.
    pub namespaces: i64,
    /// Pods.
    pub pods: i64,
    /// KubeVela applications.
    pub apps: i64,
    /// Sum of CPU limits, in millicores (a container without a CPU limit adds nothing).
    #[serde(default)]
    pub cpu_limit_millicores: i64,
    /// Sum of memory limits, in bytes (a container without a memory limit adds nothing).
    #[serde(default)]
    pub memory_limit_bytes: i64,
    /// Capacity of bound PVCs by storage class, in bytes (`""`: claims without a class).
    /// When present, its values add up to `storageBytes`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub storage_by_class: BTreeMap<String, i64>,
    /// Quota use against the hard limits, from the ResourceQuotas' status at the last
    /// sample of the hour (at most [`USAGE_QUOTAS_MAX`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<QuotaUse>,
    /// What the cluster could hold over the same hour, as the operator measured it at
    /// the same samples (sent by operators that list Nodes; checked on ingestion and
    /// not stored, so never present in reads). See [`ClusterCapacity`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_capacity: Option<ClusterCapacity>,
}

/// The capacity of a cluster over one hour, integrated over the same samples as the
/// [`UsageRecord`] it comes with (each value the time-weighted mean of the samples, like
/// the record's), so Nodes added or removed within the hour weigh only the time they
/// existed.
///
/// Only requests are bounded by it: the requests of pods **running on a Node** cannot
/// exceed that Node's `status.allocatable` (the kubelet admits a pod only when its
/// requests fit), while limits can (overcommit) and pods not running on a listed Node
/// (unscheduled, waiting for the kubelet, or on a Node that is gone) can request
/// anything. A record's `cpuMillicores` must therefore not exceed
/// `cpuMillicores + pendingCpuMillicores` of its capacity (memory alike), plus
/// [`USAGE_CAPACITY_TOLERANCE_PERCENT`].
///
/// ```
/// use kubenova_api::model::ClusterCapacity;
/// let c = ClusterCapacity { nodes: 3, cpu_millicores: 12_000, memory_bytes: 48 << 30,
///     pending_cpu_millicores: 500, pending_memory_bytes: 1 << 30 };
/// assert_eq!(c.cpu_bound(), (12_000 + 500) * 105 / 100 + 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"nodes": 3, "cpuMillicores": 12000, "memoryBytes": 51539607552_i64, "pendingCpuMillicores": 500, "pendingMemoryBytes": 1073741824}))]
pub struct ClusterCapacity {
    /// Nodes listed (time-weighted mean over the hour, rounded).
    pub nodes: i64,
    /// Sum of the Nodes' `status.allocatable` CPU, in millicores.
    pub cpu_millicores: i64,
    /// Sum of the Nodes' `status.allocatable` memory, in bytes.
    pub memory_bytes: i64,
    /// CPU requests of non-terminated pods not running on a listed Node (their requests
    /// are not bounded by any Node's allocatable), in millicores.
    pub pending_cpu_millicores: i64,
    /// Memory requests of the same pods, in bytes.
    pub pending_memory_bytes: i64,
}

/// How far (in percent) a record's requests may exceed its [`ClusterCapacity`] (plus
/// one unit for rounding): the lists of one sample are not one snapshot (a Node or pod
/// can change between them) and a Node's allocatable can be lowered after its pods were
/// admitted. A unit error of a collector (cores for millicores, KiB for bytes) is far
/// beyond it.
pub const USAGE_CAPACITY_TOLERANCE_PERCENT: i64 = 5;

impl ClusterCapacity {
    fn bound(allocatable: i64, pending: i64) -> i64 {
        let sum = i128::from(allocatable) + i128::from(pending);
        let b = sum * i128::from(100 + USAGE_CAPACITY_TOLERANCE_PERCENT) / 100 + 1;
        i64::try_from(b).unwrap_or(i64::MAX)
    }

    /// The most CPU requests (millicores) a record of this hour can hold: allocatable
    /// plus pending requests, plus the tolerance.
    pub fn cpu_bound(&self) -> i64 {
        Self::bound(self.cpu_millicores, self.pending_cpu_millicores)
    }

    /// The most memory requests (bytes) a record of this hour can hold.
    pub fn memory_bound(&self) -> i64 {
        Self::bound(self.memory_bytes, self.pending_memory_bytes)
    }
}

impl UsageRecord {
    /// Header line of the CSV form of usage records (see [`UsageRecord::write_csv_row`]).
    pub const CSV_HEADER: &'static str = "hour,clusterId,tenantId,projectId,cpuMillicores,memoryBytes,storageBytes,\
loadBalancers,namespaces,pods,apps,cpuLimitMillicores,memoryLimitBytes\n";

    /// Appends this record as one CSV line under [`UsageRecord::CSV_HEADER`]: the hour in
    /// RFC 3339, ids, then the integer columns (an empty `projectId` for a tenant-level
    /// record). Storage by class and quota use are not part of the CSV form.
    ///
    /// ```
    /// use kubenova_api::ids::{ClusterId, TenantId};
    /// use kubenova_api::model::UsageRecord;
    ///
    /// let r = UsageRecord {
    ///     cluster_id: ClusterId(uuid::Uuid::nil()),
    ///     tenant_id: TenantId(uuid::Uuid::max()),
    ///     project_id: None,
    ///     hour: time::macros::datetime!(2026-01-01 10:00 UTC),
    ///     cpu_millicores: 1500,
    ///     memory_bytes: 1024,
    ///     storage_bytes: 0,
    ///     load_balancers: 1,
    ///     namespaces: 2,
    ///     pods: 3,
    ///     apps: 1,
    ///     cpu_limit_millicores: 3000,
    ///     memory_limit_bytes: 2048,
    ///     storage_by_class: Default::default(),
    ///     quotas: vec![],
    ///     cluster_capacity: None,
    /// };
    /// let mut out = String::from(UsageRecord::CSV_HEADER);
    /// r.write_csv_row(&mut out);
    /// assert!(out.ends_with(
    ///     "2026-01-01T10:00:00Z,00000000-0000-0000-0000-000000000000,ffffffff-ffff-ffff-ffff-ffffffffffff,,1500,1024,0,1,2,3,1,3000,2048\n"
    /// ));
    /// ```
    pub fn write_csv_row(&self, out: &mut String) {
        use std::fmt::Write as _;
        let hour = self
            .hour
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let project = self.project_id.map(|p| p.to_string()).unwrap_or_default();
        // Writing into a String cannot fail.
        let _ = writeln!(
            out,
            "{hour},{},{},{project},{},{},{},{},{},{},{},{},{}",
            self.cluster_id,
            self.tenant_id,
            self.cpu_millicores,
            self.memory_bytes,
            self.storage_bytes,
            self.load_balancers,
            self.namespaces,
            self.pods,
            self.apps,
            self.cpu_limit_millicores,
            self.memory_limit_bytes
        );
    }

    /// The CSV form of `records`: [`UsageRecord::CSV_HEADER`] and one line each.
    pub fn to_csv(records: &[UsageRecord]) -> String {
        let mut out = String::with_capacity(Self::CSV_HEADER.len() + records.len() * 160);
        out.push_str(Self::CSV_HEADER);
        for r in records {
            r.write_csv_row(&mut out);
        }
        out
    }
}

/// Most [`QuotaUse`] entries in one [`UsageRecord`].
pub const USAGE_QUOTAS_MAX: usize = 1000;
/// Most storage classes in one [`UsageRecord::storage_by_class`].
pub const USAGE_STORAGE_CLASSES_MAX: usize = 100;
/// Largest value a usage counter may carry (`pods`, `namespaces`, `apps`, `loadBalancers`):
/// a higher number is a broken collector, not a cluster.
pub const USAGE_COUNT_MAX: i64 = 10_000_000;
/// Largest CPU value (requests or limits) of one record, in millicores: ten million cores.
pub const USAGE_CPU_MAX: i64 = 10_000_000_000;
/// Largest memory or storage value of one record, in bytes: 1 EiB.
pub const USAGE_BYTES_MAX: i64 = 1 << 60;

/// One resource of a ResourceQuota: what is used against its hard limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"namespace": "acme-apps", "name": "capsule-acme-0", "resource": "requests.cpu", "used": "1500m", "hard": "2"}))]
pub struct QuotaUse {
    /// Namespace of the ResourceQuota.
    pub namespace: String,
    /// Name of the ResourceQuota.
    pub name: String,
    /// Resource (`requests.cpu`, `pods`, `count/services.loadbalancers`, ...).
    pub resource: String,
    /// `status.used` of the resource.
    #[schema(value_type = String)]
    pub used: Quantity,
    /// `status.hard` of the resource.
    #[schema(value_type = String)]
    pub hard: Quantity,
}

impl QuotaUse {
    /// Whether the use is over the hard limit (possible when the quota was lowered after
    /// the objects were admitted).
    ///
    /// ```
    /// use kubenova_api::model::QuotaUse;
    /// let q = |used: &str, hard: &str| QuotaUse { namespace: "a".into(), name: "q".into(),
    ///     resource: "pods".into(), used: used.parse().unwrap(), hard: hard.parse().unwrap() };
    /// assert!(q("11", "10").exceeded());
    /// assert!(!q("10", "10").exceeded());
    /// ```
    pub fn exceeded(&self) -> bool {
        self.used > self.hard
    }
}

impl Validate for UsageRecord {
    fn validate(&self) -> Result<(), ValidationError> {
        let mut v = Validator::new();
        if self.hour.minute() != 0 || self.hour.second() != 0 || self.hour.nanosecond() != 0 {
            v.push(
                "hour",
                "must be the start of an hour (minutes, seconds and fractions zero)",
            );
        }
        if self.hour.offset() != time::UtcOffset::UTC {
            v.push("hour", "must be in UTC");
        }
        for (f, n) in [
            ("cpuMillicores", self.cpu_millicores),
            ("memoryBytes", self.memory_bytes),
            ("storageBytes", self.storage_bytes),
            ("loadBalancers", self.load_balancers),
            ("namespaces", self.namespaces),
            ("pods", self.pods),
            ("apps", self.apps),
        ] {
            if n < 0 {
                v.push(f, format!("must not be negative (got {n})"));
            }
        }
        for (f, n, max) in [
            ("cpuMillicores", self.cpu_millicores, USAGE_CPU_MAX),
            (
                "cpuLimitMillicores",
                self.cpu_limit_millicores,
                USAGE_CPU_MAX,
            ),
            ("memoryBytes", self.memory_bytes, USAGE_BYTES_MAX),
            ("memoryLimitBytes", self.memory_limit_bytes, USAGE_BYTES_MAX),
            ("storageBytes", self.storage_bytes, USAGE_BYTES_MAX),
            ("loadBalancers", self.load_balancers, USAGE_COUNT_MAX),
            ("namespaces", self.namespaces, USAGE_COUNT_MAX),
            ("pods", self.pods, USAGE_COUNT_MAX),
            ("apps", self.apps, USAGE_COUNT_MAX),
        ] {
            if n < 0 && matches!(f, "cpuLimitMillicores" | "memoryLimitBytes") {
                v.push(f, format!("must not be negative (got {n})"));
            } else if n > max {
                v.push(
                    f,
                    format!("{n} is beyond any cluster (at most {max}); the collector is broken"),
                );
            }
        }
        if self.storage_by_class.len() > USAGE_STORAGE_CLASSES_MAX {
            v.push(
                "storageByClass",
                format!(
                    "must name at most {USAGE_STORAGE_CLASSES_MAX} storage classes (got {})",
                    self.storage_by_class.len()
                ),
            );
        } else if !self.storage_by_class.is_empty() {
            let mut sum: i128 = 0;
            for (class, n) in &self.storage_by_class {
                if *n < 0 || *n > USAGE_BYTES_MAX {
                    v.push(
                        format!("storageByClass[{}]", quote_key(class)),
                        format!("must be between 0 and {USAGE_BYTES_MAX} (got {n})"),
                    );
                }
                sum += i128::from(*n);
            }
            if sum != i128::from(self.storage_bytes) {
                v.push(
                    "storageByClass",
                    format!(
                        "adds up to {sum} bytes but storageBytes is {}; they must agree",
                        self.storage_bytes
                    ),
                );
            }
        }
        if self.quotas.len() > USAGE_QUOTAS_MAX {
            v.push(
                "quotas",
                format!(
                    "must hold at most {USAGE_QUOTAS_MAX} entries (got {})",
                    self.quotas.len()
                ),
            );
        }
        for (i, q) in self.quotas.iter().enumerate().take(USAGE_QUOTAS_MAX) {
            for (f, s) in [
                ("namespace", &q.namespace),
                ("name", &q.name),
                ("resource", &q.resource),
            ] {
                if s.is_empty() || s.len() > 253 {
                    v.push(
                        format!("quotas[{i}].{f}"),
                        "must be 1 to 253 characters long",
                    );
                }
            }
            if q.used.is_negative() || q.hard.is_negative() {
                v.push(format!("quotas[{i}]"), "used and hard must not be negative");
            }
        }
        if let Some(c) = &self.cluster_capacity {
            let mut sound = true;
            for (f, n, max) in [
                ("nodes", c.nodes, USAGE_COUNT_MAX),
                ("cpuMillicores", c.cpu_millicores, USAGE_CPU_MAX),
                ("memoryBytes", c.memory_bytes, USAGE_BYTES_MAX),
                (
                    "pendingCpuMillicores",
                    c.pending_cpu_millicores,
                    USAGE_CPU_MAX,
                ),
                (
                    "pendingMemoryBytes",
                    c.pending_memory_bytes,
                    USAGE_BYTES_MAX,
                ),
            ] {
                if !(0..=max).contains(&n) {
                    sound = false;
                    v.push(
                        format!("clusterCapacity.{f}"),
                        format!("must be between 0 and {max} (got {n})"),
                    );
                }
            }
            // Requests only: limits can exceed allocatable (overcommit).
            for (f, n, allocatable, pending, bound, unit) in [
                (
                    "cpuMillicores",
                    self.cpu_millicores,
                    c.cpu_millicores,
                    c.pending_cpu_millicores,
                    c.cpu_bound(),
                    "millicores",
                ),
                (
                    "memoryBytes",
                    self.memory_bytes,
                    c.memory_bytes,
                    c.pending_memory_bytes,
                    c.memory_bound(),
                    "bytes",
                ),
            ] {
                if sound && n > bound {
                    v.push(
                        f,
                        format!(
                            "{n} {unit} of requests is more than the cluster can hold in this hour: \
                             {allocatable} allocatable on {} nodes plus {pending} requested by pods \
                             not running on a node, {USAGE_CAPACITY_TOLERANCE_PERCENT}% tolerance \
                             (at most {bound}); the collector is broken",
                            c.nodes
                        ),
                    );
                }
            }
        }
        v.finish()
    }
}

/// Outcome of an audited call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum AuditOutcome {
    /// The change was made.
    Success,
    /// Refused by authorization.
    Denied,
    /// Failed (validation, conflict, server error).
    Failed,
}

/// One audit event: who did what to which resource, with which outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"id": "66666666-6666-6666-6666-666666666666", "at": "2026-01-01T00:05:00Z", "actor": "admin", "roles": ["admin"], "action": "tenant.create", "resourceKind": "tenant", "resourceId": "22222222-2222-2222-2222-222222222222", "outcome": "success", "httpStatus": 201, "requestId": "req-1", "sourceIp": "127.0.0.1"}))]
pub struct AuditEvent {
    /// Id (time-ordered).
    pub id: AuditId,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    /// The authenticated subject.
    pub actor: String,
    /// The actor's roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Action, e.g. `tenant.create`.
    pub action: String,
    /// Resource kind, e.g. `tenant`.
    pub resource_kind: String,
    /// Resource id or name.
    #[serde(default)]
    pub resource_id: String,
    /// Outcome.
    pub outcome: AuditOutcome,
    /// HTTP status returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// Request id.
    #[serde(default)]
    pub request_id: String,
    /// Source IP.
    #[serde(default)]
    pub source_ip: String,
    /// Extra structured facts (never secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

// ---------------------------------------------------------------------------------
// Logs and events of an app (read through the cluster's operator)
// ---------------------------------------------------------------------------------

/// One log line of a container of an app, as the cluster's operator read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"time": "2026-01-01T00:00:01.5Z", "pod": "web-6d8f7c9b5-x2x7q", "container": "web", "text": "listening on :8080"}))]
pub struct LogLine {
    /// When the container wrote the line (the container runtime's timestamp), if known.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub time: Option<OffsetDateTime>,
    /// The pod.
    pub pod: String,
    /// The container.
    pub container: String,
    /// The line without its newline, cut to at most
    /// [`crate::agent::MAX_LOG_LINE_BYTES`] bytes (a cut line ends with `… [N bytes cut]`).
    pub text: String,
}

/// A pod whose log was read for an answer, or could not be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"pod": "web-6d8f7c9b5-x2x7q", "container": "web", "lines": 2}))]
pub struct PodLog {
    /// The pod.
    pub pod: String,
    /// The container whose log was read.
    pub container: String,
    /// How many of the answer's lines come from it.
    #[serde(default)]
    pub lines: u32,
    /// Why its log could not be read (the API server's words), if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The log lines of one component of an app (`GET …/apps/{appID}/logs/{component}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppLogs {
    /// The app.
    pub app_id: AppId,
    /// The component.
    pub component: String,
    /// The pods read (at most [`crate::agent::MAX_LOG_PODS`]).
    pub pods: Vec<PodLog>,
    /// The lines, oldest first.
    pub lines: Vec<LogLine>,
    /// Whether lines, pods or bytes were left out to keep the answer bounded.
    pub truncated: bool,
    /// What the operator has to say about the answer (e.g. that the component has no pods).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// The object a Kubernetes Event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventObject {
    /// Kind, e.g. `Pod`, `ReplicaSet`, `Application`.
    pub kind: String,
    /// Name.
    pub name: String,
}

/// One Kubernetes Event about an app's pods, workloads, KubeVela Application or NovaApp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"type": "Warning", "reason": "FailedCreate", "message": "pods \"web-6d8f7c9b5-\" is forbidden: exceeded quota", "object": {"kind": "ReplicaSet", "name": "web-6d8f7c9b5"}, "count": 4, "firstTime": "2026-01-01T00:00:00Z", "lastTime": "2026-01-01T00:02:00Z", "source": "replicaset-controller"}))]
pub struct AppEvent {
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Machine-readable CamelCase reason, e.g. `BackOff`.
    pub reason: String,
    /// What happened, cut to at most [`crate::agent::MAX_EVENT_MESSAGE_BYTES`] bytes.
    pub message: String,
    /// The object it is about.
    pub object: EventObject,
    /// How many times it happened.
    pub count: u32,
    /// First time it happened, if known.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub first_time: Option<OffsetDateTime>,
    /// Last time it happened, if known.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_time: Option<OffsetDateTime>,
    /// The component that reported it, e.g. `kubelet`.
    #[serde(default)]
    pub source: String,
}

/// The Kubernetes Events of an app (`GET …/apps/{appID}/events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppEvents {
    /// The app.
    pub app_id: AppId,
    /// The events, oldest (by last time) first.
    pub events: Vec<AppEvent>,
    /// Whether older events were left out to keep the answer bounded.
    pub truncated: bool,
    /// What the operator has to say about the answer.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn tenant_spec_reports_every_bad_field() {
        let spec: TenantSpec = serde_json::from_value(json!({
            "name": "Bad_Name",
            "owners": ["", "group:", "alice@example.com", "alice@example.com"],
            "labels": {"ok": "-bad"},
            "quotas": {"requests.cpu": "2"},
            "networkPolicies": ["Nope"]
        }))
        .unwrap();
        let err = spec.validate().unwrap_err();
        let fields: Vec<_> = err.violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "name",
                "owners[0]",
                "owners[1]",
                "owners[3]",
                "labels.ok",
                "networkPolicies[0]"
            ]
        );
    }

    #[test]
    fn tenant_spec_rejects_bad_quantity_and_unknown_fields() {
        let err = serde_json::from_value::<TenantSpec>(
            json!({"name": "a", "quotas": {"cpu": "4 cores"}}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("4 cores"), "{err}");
        let err =
            serde_json::from_value::<TenantSpec>(json!({"name": "a", "plna": "gold"})).unwrap_err();
        assert!(err.to_string().contains("plna"), "{err}");
    }

    #[test]
    fn long_tenant_names_are_refused() {
        let spec = TenantSpec {
            name: "a".repeat(51),
            ..Default::default()
        };
        assert!(
            spec.validate()
                .unwrap_err()
                .to_string()
                .contains("at most 50")
        );
    }

    #[test]
    fn app_shorthand_expands() {
        let spec: AppSpec = serde_json::from_value(
            json!({"name": "web", "image": "nginx:1.27", "spec": {"port": 80}}),
        )
        .unwrap();
        spec.validate().unwrap();
        let c = spec.effective_components();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].type_, "webservice");
        assert_eq!(
            c[0].properties,
            Some(json!({"port": 80, "image": "nginx:1.27"}))
        );
    }

    #[test]
    fn app_validation() {
        let spec: AppSpec = serde_json::from_value(json!({
            "name": "web",
            "components": [
                {"name": "a", "type": "webservice", "dependsOn": ["zz"]},
                {"name": "a", "type": "Bad Type", "properties": 3}
            ],
            "workflow": {"steps": [{"name": "deploy", "type": "deploy"}]}
        }))
        .unwrap();
        let err = spec.validate().unwrap_err();
        let fields: Vec<_> = err.violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "components[1].name",
                "components[1].type",
                "components[1].properties",
                "components[0].dependsOn[0]"
            ]
        );
        let empty = AppSpec {
            name: "x".into(),
            ..Default::default()
        };
        assert!(empty.validate().is_err());
    }

    #[test]
    fn project_namespaces_do_not_collide() {
        assert_ne!(project_namespace("a", "b-c"), project_namespace("a-b", "c"));
        let ns = project_namespace(&"t".repeat(50), &"p".repeat(63));
        assert!(crate::validate::dns_label_problem(&ns).is_none(), "{ns}");
        let (o, a) = tenant_namespaces(&"t".repeat(50));
        assert!(crate::validate::dns_label_problem(&o).is_none());
        assert!(crate::validate::dns_label_problem(&a).is_none());
    }

    #[test]
    fn usage_hour_must_be_whole() {
        let mut r = UsageRecord {
            cluster_id: ClusterId::new(),
            tenant_id: TenantId::new(),
            project_id: None,
            hour: time::macros::datetime!(2026-01-01 10:00 UTC),
            cpu_millicores: 1,
            memory_bytes: 1,
            storage_bytes: 0,
            load_balancers: 0,
            namespaces: 1,
            pods: 1,
            apps: 0,
            cpu_limit_millicores: 0,
            memory_limit_bytes: 0,
            storage_by_class: BTreeMap::new(),
            quotas: Vec::new(),
            cluster_capacity: None,
        };
        r.validate().unwrap();
        r.hour = time::macros::datetime!(2026-01-01 10:30 UTC);
        r.pods = -1;
        assert_eq!(r.validate().unwrap_err().violations.len(), 2);
    }

    #[test]
    fn usage_bounds_storage_classes_and_quotas() {
        let mut r = UsageRecord {
            cluster_id: ClusterId::new(),
            tenant_id: TenantId::new(),
            project_id: None,
            hour: time::macros::datetime!(2026-01-01 10:00 UTC),
            cpu_millicores: 1,
            memory_bytes: 1,
            storage_bytes: 30,
            load_balancers: 0,
            namespaces: 1,
            pods: 1,
            apps: 0,
            cpu_limit_millicores: 2,
            memory_limit_bytes: 2,
            storage_by_class: BTreeMap::from([("fast".into(), 10), (String::new(), 20)]),
            quotas: vec![QuotaUse {
                namespace: "acme-apps".into(),
                name: "q".into(),
                resource: "pods".into(),
                used: Quantity::parse("3").unwrap(),
                hard: Quantity::parse("2").unwrap(),
            }],
            cluster_capacity: None,
        };
        r.validate().unwrap();
        assert!(r.quotas[0].exceeded());
        r.storage_bytes = 31;
        let e = r.validate().unwrap_err();
        assert_eq!(e.violations[0].field, "storageByClass", "{e:?}");
        r.storage_bytes = 30;
        r.cpu_millicores = USAGE_CPU_MAX + 1;
        r.memory_limit_bytes = -1;
        r.quotas[0].resource = String::new();
        let e = r.validate().unwrap_err();
        let fields: Vec<_> = e.violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            ["cpuMillicores", "memoryLimitBytes", "quotas[0].resource"],
            "{e:?}"
        );
        // Old clients' records (without the new fields) still parse.
        let old: UsageRecord = serde_json::from_value(serde_json::json!({
            "clusterId": ClusterId::new(), "tenantId": TenantId::new(), "hour": "2026-01-01T10:00:00Z",
            "cpuMillicores": 1, "memoryBytes": 1, "storageBytes": 0, "loadBalancers": 0,
            "namespaces": 1, "pods": 1, "apps": 0}))
        .unwrap();
        assert!(old.quotas.is_empty() && old.cpu_limit_millicores == 0);
        assert!(old.cluster_capacity.is_none());
    }

    #[test]
    fn usage_requests_are_bounded_by_the_reported_capacity() {
        let capacity = ClusterCapacity {
            nodes: 2,
            cpu_millicores: 8_000,
            memory_bytes: 16 << 30,
            pending_cpu_millicores: 1_000,
            pending_memory_bytes: 0,
        };
        let mut r = UsageRecord {
            cluster_id: ClusterId::new(),
            tenant_id: TenantId::new(),
            project_id: None,
            hour: time::macros::datetime!(2026-01-01 10:00 UTC),
            cpu_millicores: 9_000 * 105 / 100 + 1,
            memory_bytes: 16 << 30,
            storage_bytes: 0,
            load_balancers: 0,
            namespaces: 1,
            pods: 1,
            apps: 0,
            // Limits are overcommitted freely: never checked against the capacity.
            cpu_limit_millicores: 1_000_000,
            memory_limit_bytes: 1 << 40,
            storage_by_class: BTreeMap::new(),
            quotas: Vec::new(),
            cluster_capacity: Some(capacity),
        };
        r.validate().unwrap();
        r.cpu_millicores += 1;
        r.memory_bytes = 1 << 40;
        let e = r.validate().unwrap_err();
        let fields: Vec<_> = e.violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["cpuMillicores", "memoryBytes"], "{e:?}");
        assert!(
            e.violations[0]
                .reason
                .contains("8000 allocatable on 2 nodes"),
            "{e:?}"
        );
        // Without a capacity (an older operator) only the fixed bounds apply.
        r.cluster_capacity = None;
        r.validate().unwrap();
        // A capacity that is itself absurd is refused, not used.
        r.cluster_capacity = Some(ClusterCapacity {
            nodes: -1,
            ..capacity
        });
        let e = r.validate().unwrap_err();
        assert_eq!(e.violations.len(), 1, "{e:?}");
        assert_eq!(e.violations[0].field, "clusterCapacity.nodes");
        let json = serde_json::to_value(ClusterCapacity {
            nodes: 1,
            ..capacity
        })
        .unwrap();
        assert_eq!(json["pendingCpuMillicores"], 1_000);
    }

    #[test]
    fn cluster_status_wire_names() {
        assert_eq!(
            serde_json::to_value(ClusterStatus::PendingBootstrap).unwrap(),
            "pending_bootstrap"
        );
        assert_eq!(ClusterStatus::Stale.as_str(), "stale");
    }
}
