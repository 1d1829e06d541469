//! KubeNova's Kubernetes custom resources in `kubenova.io/v1alpha1` (feature `crd`).
//!
//! | kind | scope | name | where |
//! |---|---|---|---|
//! | [`NovaTenant`] (`ntn`) | cluster | the tenant name (DNS-1123 label, at most 50 characters) | - |
//! | [`NovaProject`] (`npj`) | namespaced | the project name | the tenant's owner namespace `<tenant>-owner` |
//! | [`NovaApp`] (`napp`) | namespaced | the app name | the project's namespace [`project_namespace`] |
//!
//! Names can never collide across tenants or projects: a tenant name is unique per cluster
//! (cluster-scoped object); two tenants' projects of the same name live in two different
//! owner namespaces; an app lives in a namespace that belongs to exactly one
//! (tenant, project) pair. `spec.tenant` / `spec.project` repeat the parent names so
//! that a reader never has to parse namespace names; they are immutable (CEL
//! `self == oldSelf`) and the reconciler refuses an object whose namespace does not
//! match them (`kubenova-reconcile` reports `Degraded` and creates nothing).
//!
//! Specs mirror [`crate::model`]: the tenant carries its plan and its *effective*
//! quotas/limits/policysets (absent = the plan's), projects their access entries,
//! apps their components/traits/policies/workflow plus `suspended` and `revision`.
//! Subjects and access entries keep the model's string forms (`group:ops`,
//! `viewer:serviceaccount:ci:deployer`).
//!
//! ```
//! use kube::CustomResourceExt;
//! use kubenova_api::crd::{NovaApp, NovaProject, NovaTenant};
//! assert_eq!(NovaTenant::crd_name(), "novatenants.kubenova.io");
//! assert_eq!(NovaProject::crd().spec.scope, "Namespaced");
//! assert_eq!(NovaApp::crd().spec.names.short_names, Some(vec!["napp".to_string()]));
//! ```
//!
//! [`project_namespace`]: crate::model::project_namespace

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::quantity::Quantity;

/// API group of the KubeNova CRDs.
pub const GROUP: &str = "kubenova.io";
/// API version of the KubeNova CRDs.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of the KubeNova CRDs.
pub const API_VERSION: &str = "kubenova.io/v1alpha1";

/// Condition type: everything is applied and healthy.
pub const CONDITION_READY: &str = "Ready";
/// Condition type: the operator (or Capsule/KubeVela) is still working on it.
pub const CONDITION_RECONCILING: &str = "Reconciling";
/// Condition type: something is wrong; see reason and message.
pub const CONDITION_DEGRADED: &str = "Degraded";

/// DNS-1123 label.
pub const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// DNS-1123 subdomain.
pub const DNS_SUBDOMAIN_PATTERN: &str =
    "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A Kubernetes quantity (`500m`, `4Gi`, `1e3`).
pub const QUANTITY_PATTERN: &str = "^(\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))))?$";
/// A resource name as used in ResourceQuota `hard` / LimitRange keys
/// (`requests.cpu`, `count/deployments.apps`, `nvidia.com/gpu`).
pub const RESOURCE_NAME_PATTERN: &str =
    "^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$";

const SA_FORM: &str = "serviceaccount:[a-z0-9]([-a-z0-9]*[a-z0-9])?:[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

// ---------------------------------------------------------------------------------
// Status (shared)
// ---------------------------------------------------------------------------------

/// Phase of a Nova object, CamelCase as usual for Kubernetes status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum NovaPhase {
    /// Not reconciled yet.
    #[default]
    Pending,
    /// Being applied, or Capsule/KubeVela are still working.
    Reconciling,
    /// Applied and healthy.
    Ready,
    /// Applied with problems, or refused (see the `Degraded` condition).
    Degraded,
    /// An app whose workflow is suspended (`spec.suspended`, or a `suspend` step).
    Suspended,
    /// Being removed.
    Deleting,
}

impl NovaPhase {
    /// The wire spelling (`Ready`).
    pub fn as_str(self) -> &'static str {
        match self {
            NovaPhase::Pending => "Pending",
            NovaPhase::Reconciling => "Reconciling",
            NovaPhase::Ready => "Ready",
            NovaPhase::Degraded => "Degraded",
            NovaPhase::Suspended => "Suspended",
            NovaPhase::Deleting => "Deleting",
        }
    }

    /// The manager's [`crate::model::Phase`] for this phase (a suspended app is reported
    /// as `reconciling`: it is applied but its workflow waits).
    pub fn to_model(self) -> crate::model::Phase {
        use crate::model::Phase;
        match self {
            NovaPhase::Pending => Phase::Pending,
            NovaPhase::Reconciling | NovaPhase::Suspended => Phase::Reconciling,
            NovaPhase::Ready => Phase::Ready,
            NovaPhase::Degraded => Phase::Degraded,
            NovaPhase::Deleting => Phase::Deleting,
        }
    }
}

/// Status of every Nova object: phase, the standard `Ready` / `Reconciling` / `Degraded`
/// conditions (each with `observedGeneration`) and the generation last reconciled.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NovaStatus {
    /// Overall phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<NovaPhase>,
    /// Standard conditions: `Ready`, `Reconciling`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// `metadata.generation` of the spec these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Namespaces created for the object (tenant: owner + apps; project: its namespace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Short human summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl NovaStatus {
    /// The condition of type `type_`, if present.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

// ---------------------------------------------------------------------------------
// Schema helpers
// ---------------------------------------------------------------------------------

fn quantity_value_schema() -> serde_json::Value {
    serde_json::json!({
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": QUANTITY_PATTERN,
        "x-kubernetes-int-or-string": true
    })
}

fn resource_map_schema(description: &str) -> Schema {
    json_schema!({
        "type": "object",
        "description": description,
        "maxProperties": 64,
        "additionalProperties": quantity_value_schema(),
        "x-kubernetes-validations": [{
            "rule": format!("self.all(k, k.matches('{RESOURCE_NAME_PATTERN}'))"),
            "message": "keys must be Kubernetes resource names such as requests.cpu, pods or count/deployments.apps"
        }]
    })
}

fn quota_map(_: &mut SchemaGenerator) -> Schema {
    resource_map_schema(
        "ResourceQuota `hard` values keyed by resource name (requests.cpu, limits.memory, pods, ...)",
    )
}

fn container_map(_: &mut SchemaGenerator) -> Schema {
    resource_map_schema("Per-container values keyed by resource name (cpu, memory, ...)")
}

fn free_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "description": "Free-form properties, checked by the KubeVela definition",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

fn string_map(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": {"type": "string", "maxLength": 63}
    })
}

/// Labels a user adds to the generated namespaces: valid keys and values, none of them
/// reserved ([`crate::validate::RESERVED_DOMAINS`], the manager's rule too).
fn label_map(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "description": "Labels added to the generated namespaces",
        "maxProperties": 64,
        "additionalProperties": {"type": "string", "maxLength": 63},
        "x-kubernetes-validations": [{
            "rule": "self.all(k, k.size() <= 253 && k.matches('^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$') && (self[k] == '' || self[k].matches('^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$')))",
            "message": "keys and values must be valid Kubernetes label keys and values"
        }, {
            "rule": format!("self.all(k, !k.matches('{}'))", crate::validate::reserved_key_pattern()),
            "message": format!(
                "label keys under {} (and their subdomains) are reserved for the platform; use a prefix of your own",
                crate::validate::RESERVED_DOMAINS.join(", ")
            )
        }]
    })
}

// ---------------------------------------------------------------------------------
// NovaTenant
// ---------------------------------------------------------------------------------

/// Container LimitRange settings of a tenant (mirrors the catalog's LimitRangeDefaults).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerLimits {
    /// Requests given to containers that set none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "container_map")]
    pub default_request: BTreeMap<String, Quantity>,
    /// Limits given to containers that set none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "container_map")]
    pub default: BTreeMap<String, Quantity>,
    /// Largest limit a single container may set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "container_map")]
    pub max: BTreeMap<String, Quantity>,
}

impl From<&crate::catalog::LimitRangeDefaults> for ContainerLimits {
    fn from(l: &crate::catalog::LimitRangeDefaults) -> Self {
        ContainerLimits {
            default_request: l.default_request.clone(),
            default: l.default.clone(),
            max: l.max.clone(),
        }
    }
}

/// Which classes (storage, ingress) a tenant may use, and the default.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.default) || self.allowed.size() == 0 || self.default in self.allowed",
    "message": "default must be one of allowed"
}]))]
pub struct ClassSelection {
    /// Allowed class names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed: Vec<String>,
    /// Default class for the tenant's namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub default: Option<String>,
}

/// A tenant: a Capsule Tenant with its owner and apps namespaces, quotas, limits and
/// policysets. The object name is the tenant name.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubenova.io",
    version = "v1alpha1",
    kind = "NovaTenant",
    plural = "novatenants",
    singular = "novatenant",
    shortname = "ntn",
    category = "kubenova",
    status = "NovaStatus",
    derive = "PartialEq",
    doc = "A KubeNova tenant (cluster-scoped; the name is the tenant name).",
    printcolumn(name = "Plan", type_ = "string", json_path = ".spec.plan"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = ::kube::core::Rule::new("self.metadata.name.size() <= 50 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("a tenant name must be a DNS-1123 label of at most 50 characters (its namespaces append -owner/-apps)")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NovaTenantSpec {
    /// Plan name from the catalog (`baseline`, `gold`, `platinum`).
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub plan: String,
    /// Owners: `alice@example.com`, `user:bob`, `group:ops`, `serviceaccount:<ns>:<name>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 100),
        inner(length(min = 1, max = 253), regex(pattern = r"^\S+$"))
    )]
    #[schemars(extend(
        "x-kubernetes-list-type" = "set",
        "x-kubernetes-validations" = [{
            "rule": format!("self.all(s, !s.startsWith('serviceaccount:') || s.matches('^{SA_FORM}'))"),
            "message": "a service account is written serviceaccount:<namespace>:<name>"
        }, {
            "rule": "self.all(s, !(s in ['group:', 'user:']))",
            "message": "the name after group: or user: must not be empty"
        }]
    ))]
    pub owners: Vec<String>,
    /// Extra subjects with read-only access to every tenant namespace (ClusterRole `view`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 100),
        inner(length(min = 1, max = 253), regex(pattern = r"^\S+$"))
    )]
    #[schemars(extend(
        "x-kubernetes-list-type" = "set",
        "x-kubernetes-validations" = [{
            "rule": format!("self.all(s, !s.startsWith('serviceaccount:') || s.matches('^{SA_FORM}'))"),
            "message": "a service account is written serviceaccount:<namespace>:<name>"
        }]
    ))]
    pub viewers: Vec<String>,
    /// Labels added to the tenant's namespaces.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "label_map")]
    pub labels: BTreeMap<String, String>,
    /// Effective ResourceQuota `hard` values for the whole tenant; absent = the plan's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "quota_map")]
    pub quotas: Option<BTreeMap<String, Quantity>>,
    /// Effective container LimitRange; absent = the plan's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ContainerLimits>,
    /// Effective policyset names; absent = the plan's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub policysets: Option<Vec<String>>,
    /// Maximum number of namespaces; absent = the plan's (unlimited if the plan has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub namespace_quota: Option<i32>,
    /// Node selector applied to every pod of the tenant.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "string_map")]
    pub node_selector: BTreeMap<String, String>,
    /// Storage classes the tenant may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_classes: Option<ClassSelection>,
    /// Ingress classes the tenant may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_classes: Option<ClassSelection>,
}

// ---------------------------------------------------------------------------------
// NovaProject
// ---------------------------------------------------------------------------------

/// A project of a tenant: one namespace with its own access list. Lives in the tenant's
/// owner namespace `<tenant>-owner`; the object name is the project name.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubenova.io",
    version = "v1alpha1",
    kind = "NovaProject",
    plural = "novaprojects",
    singular = "novaproject",
    shortname = "npj",
    category = "kubenova",
    namespaced,
    status = "NovaStatus",
    derive = "PartialEq",
    doc = "A KubeNova project (namespaced, in its tenant's `<tenant>-owner` namespace).",
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenant"),
    printcolumn(name = "Namespace", type_ = "string", json_path = ".status.namespaces[0]", priority = 1),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = ::kube::core::Rule::new("self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("a project name must be a DNS-1123 label")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NovaProjectSpec {
    /// The tenant (immutable; must match the object's namespace `<tenant>-owner`).
    #[schemars(length(min = 1, max = 50), regex(pattern = DNS_LABEL_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "tenant is immutable"}]))]
    pub tenant: String,
    /// Description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024))]
    pub description: String,
    /// Labels added to the project namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "label_map")]
    pub labels: BTreeMap<String, String>,
    /// Access entries `[owner:|developer:|viewer:]<subject>` (no prefix = developer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 100),
        inner(length(min = 1, max = 263), regex(pattern = r"^\S+$"))
    )]
    #[schemars(extend(
        "x-kubernetes-list-type" = "set",
        "x-kubernetes-validations" = [{
            "rule": format!("self.all(s, !s.matches('^((owner|developer|viewer):)?serviceaccount:') || s.matches('^((owner|developer|viewer):)?{SA_FORM}'))"),
            "message": "a service account is written [role:]serviceaccount:<namespace>:<name>"
        }]
    ))]
    pub access: Vec<String>,
    /// Optional ResourceQuota `hard` values for the project namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "quota_map")]
    pub quota: Option<BTreeMap<String, Quantity>>,
}

// ---------------------------------------------------------------------------------
// NovaApp
// ---------------------------------------------------------------------------------

/// A KubeVela trait (mirrors the model's AppTrait).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NovaAppTrait {
    /// TraitDefinition name, e.g. `scaler`.
    #[serde(rename = "type")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub type_: String,
    /// Free-form properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_object")]
    pub properties: Option<serde_json::Value>,
}

/// A KubeVela policy (mirrors the model's AppPolicy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NovaAppPolicy {
    /// Policy name (defaults to the type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub name: Option<String>,
    /// PolicyDefinition name, e.g. `garbage-collect`.
    #[serde(rename = "type")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub type_: String,
    /// Free-form properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_object")]
    pub properties: Option<serde_json::Value>,
}

/// A component (mirrors the model's AppComponent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NovaAppComponent {
    /// Component name, unique in the app.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub name: String,
    /// ComponentDefinition name, e.g. `webservice`.
    #[serde(rename = "type")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub type_: String,
    /// Free-form properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_object")]
    pub properties: Option<serde_json::Value>,
    /// Traits of this component.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub traits: Vec<NovaAppTrait>,
    /// Names of other components of the app this one depends on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50), inner(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN)))]
    pub depends_on: Vec<String>,
}

/// A workflow step (mirrors the model's WorkflowStep).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NovaWorkflowStep {
    /// Step name.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub name: String,
    /// WorkflowStepDefinition name, e.g. `deploy`, `suspend`.
    #[serde(rename = "type")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub type_: String,
    /// Free-form properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_object")]
    pub properties: Option<serde_json::Value>,
}

/// The delivery workflow (mirrors the model's Workflow).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NovaWorkflow {
    /// Steps, run in order.
    #[serde(default)]
    #[schemars(length(max = 50))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.all(s, self.exists_one(o, o.name == s.name))",
        "message": "workflow step names must be unique"
    }]))]
    pub steps: Vec<NovaWorkflowStep>,
}

/// An application of a project, delivered as a KubeVela Application of the same name in
/// the project's namespace.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubenova.io",
    version = "v1alpha1",
    kind = "NovaApp",
    plural = "novaapps",
    singular = "novaapp",
    shortname = "napp",
    category = "kubenova",
    namespaced,
    status = "NovaStatus",
    derive = "PartialEq",
    doc = "A KubeNova app (namespaced, in its project's namespace).",
    printcolumn(name = "Project", type_ = "string", json_path = ".spec.project"),
    printcolumn(name = "Revision", type_ = "integer", json_path = ".spec.revision", priority = 1),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = ::kube::core::Rule::new("self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("an app name must be a DNS-1123 label")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NovaAppSpec {
    /// The tenant (immutable).
    #[schemars(length(min = 1, max = 50), regex(pattern = DNS_LABEL_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "tenant is immutable"}]))]
    pub tenant: String,
    /// The project (immutable; the object's namespace must be the project's namespace).
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "project is immutable"}]))]
    pub project: String,
    /// Description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024))]
    pub description: String,
    /// Components (at least one).
    #[schemars(length(min = 1, max = 50))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.all(c, self.exists_one(o, o.name == c.name))",
        "message": "component names must be unique"
    }, {
        "rule": "self.all(c, !has(c.dependsOn) || c.dependsOn.all(d, d != c.name && self.exists(o, o.name == d)))",
        "message": "dependsOn must name other components of this app"
    }]))]
    pub components: Vec<NovaAppComponent>,
    /// Traits applied to every component (a component's own trait of the same type wins).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub traits: Vec<NovaAppTrait>,
    /// Policies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub policies: Vec<NovaAppPolicy>,
    /// Workflow; absent = KubeVela's default (deploy every component).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<NovaWorkflow>,
    /// Suspended apps keep their spec, but their workflow waits before deploying.
    #[serde(default)]
    pub suspended: bool,
    /// Revision the manager asked to run; a new number re-runs the workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub revision: Option<i64>,
}
