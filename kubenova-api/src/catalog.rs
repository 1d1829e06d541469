//! The plans and policysets catalog.
//!
//! A [`Plan`] is what a tenant subscribes to: its ResourceQuota (`tenantQuotas`), the
//! number of namespaces it may own, the LimitRange defaults applied to its containers,
//! its hourly prices, the KubeVela definition types its apps may use
//! ([`AllowedDefinitions`]) and the [`PolicySet`]s enforced for it. A policyset is a named
//! list of [`PolicyRule`]s: network isolation, Pod Security admission level, allowed image
//! registries, and KubeVela traits and policies added to every app of the tenant. Every
//! rule is enforced (see [`crate::apprules`] for the app rules); a rule a plan could not
//! enforce (a KubeVela type the plan does not allow) makes the catalog fail to load.
//!
//! [`Catalog::builtin`] ships `baseline`, `gold` and `platinum`. Operators can add or
//! override plans and policysets by name with a JSON or YAML [`CatalogFile`]:
//!
//! ```yaml
//! plans:
//!   - name: gold
//!     description: Gold with more pods
//!     tenantQuotas: { requests.cpu: "8", limits.cpu: "8", pods: 300 }
//!     namespaceQuota: 10
//!     prices: { currency: EUR, cpuCoreHour: "0.04", memoryGibHour: "0.005",
//!               storageGibHour: "0.0002", loadBalancerHour: "0.025" }
//!     policysets: [tenant-isolation, pod-security-baseline]
//! policysets: []
//! ```
//!
//! Every error names the file, the JSON path of the offending field and why, e.g.
//! `catalog.json: plans[1].tenantQuotas."requests.cpu": invalid quantity "4 cores": must
//! not contain whitespace (line 9, column 33)` or `plan "gold" references unknown
//! policyset "gold-tier2"`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use regex::Regex;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::quantity::Quantity;

/// The built-in catalog source, a [`CatalogFile`] in JSON.
const BUILTIN_JSON: &str = include_str!("../catalog/builtin.json");

/// Name used for the built-in catalog in error messages.
const BUILTIN_ORIGIN: &str = "builtin.json";

/// Name used in error messages for catalogs parsed from a string.
const INLINE_ORIGIN: &str = "<inline catalog>";

/// Longest accepted description, in bytes.
const MAX_DESCRIPTION_LEN: usize = 1024;

/// Most entries accepted in one resource map (quotas, limit range section).
const MAX_RESOURCE_ENTRIES: usize = 64;

static BUILTIN: LazyLock<Catalog> = LazyLock::new(|| {
    Catalog::parse_standalone(BUILTIN_JSON, Format::Json, BUILTIN_ORIGIN)
        .expect("builtin catalog is valid; tested")
});

/// A tenant plan: quotas, namespace count, container defaults, prices and policysets.
///
/// ```
/// use kubenova_api::catalog::Plan;
///
/// let plan: Plan = serde_json::from_value(serde_json::json!({
///     "name": "small",
///     "description": "Two cores",
///     "tenantQuotas": { "requests.cpu": "2", "requests.memory": "4096Mi", "pods": 20 },
///     "namespaceQuota": 2,
///     "limitRange": { "default": { "cpu": "500m", "memory": "512Mi" } },
///     "prices": { "currency": "USD", "cpuCoreHour": "0.04", "memoryGibHour": "0.005",
///                 "storageGibHour": "0.00014", "loadBalancerHour": "0.025" },
///     "policysets": ["tenant-isolation"]
/// }))?;
/// assert_eq!(plan.tenant_quotas["requests.memory"].as_str(), "4Gi");
/// assert_eq!(plan.prices.cpu_core_hour.to_string(), "0.04");
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({
    "name": "gold",
    "description": "Production workloads",
    "tenantQuotas": {
        "requests.cpu": "6", "limits.cpu": "6", "requests.memory": "10Gi",
        "limits.memory": "10Gi", "requests.storage": "200Gi", "pods": "200",
        "services.loadbalancers": "5"
    },
    "namespaceQuota": 10,
    "limitRange": {
        "defaultRequest": { "cpu": "250m", "memory": "256Mi" },
        "default": { "cpu": "1", "memory": "1Gi" },
        "max": { "cpu": "4", "memory": "8Gi" }
    },
    "prices": {
        "currency": "USD", "cpuCoreHour": "0.045", "memoryGibHour": "0.0056",
        "storageGibHour": "0.00016", "loadBalancerHour": "0.028"
    },
    "policysets": ["tenant-isolation", "pod-security-baseline", "gold-tier"]
}))]
#[schema(
    description = "A tenant plan: ResourceQuota (tenantQuotas), namespace count, container LimitRange defaults, hourly prices and the policysets enforced for its tenants."
)]
pub struct Plan {
    /// Plan name, a DNS-1123 label (`gold`).
    pub name: String,
    /// Human readable description.
    #[serde(default)]
    pub description: String,
    /// ResourceQuota `hard` limits for the tenant, keyed by quota resource name
    /// (`requests.cpu`, `limits.memory`, `requests.storage`, `pods`,
    /// `services.loadbalancers`, `persistentvolumeclaims`, `count/<resource>.<group>`...).
    #[serde(default)]
    pub tenant_quotas: BTreeMap<String, Quantity>,
    /// Maximum number of namespaces the tenant may own (at least 1); unlimited if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub namespace_quota: Option<u32>,
    /// LimitRange defaults and maxima for each container.
    #[serde(default)]
    pub limit_range: LimitRangeDefaults,
    /// Hourly prices.
    pub prices: Prices,
    /// Names of the policysets enforced for tenants on this plan.
    #[serde(default)]
    pub policysets: Vec<String>,
    /// The KubeVela definition types the apps of this plan's tenants may use; a list left
    /// out takes its default (see [`AllowedDefinitions`]).
    #[serde(default)]
    pub definitions: AllowedDefinitions,
}

/// The KubeVela definition types (by name) an app may use, per kind. Anything not listed
/// is refused (KN-422 naming the field) by the manager and by the operator.
///
/// The defaults are stock KubeVela definitions that only create objects in the app's own
/// namespace: no raw objects (`k8s-objects`, `apply-object`), no references to other
/// namespaces or clusters (`ref-objects`, `topology`, `read-object`, `depends-on-app`),
/// no outbound requests from the KubeVela controller (`webhook`, `notification`,
/// `request`), no trait that creates RBAC (`service-account`) or patches the workload
/// blindly (`json-patch`, `json-merge-patch`).
///
/// ```
/// use kubenova_api::catalog::AllowedDefinitions;
///
/// let d: AllowedDefinitions = serde_json::from_str(r#"{"components": ["webservice"]}"#)?;
/// assert_eq!(d.components, ["webservice"]);
/// assert!(d.traits.iter().any(|t| t == "scaler")); // left out: the default list
/// assert!(!AllowedDefinitions::default().components.iter().any(|c| c == "k8s-objects"));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({
    "components": ["cron-task", "task", "webservice", "worker"],
    "traits": ["scaler", "gateway", "env"],
    "policies": ["apply-once", "garbage-collect", "read-only"],
    "workflowSteps": ["apply-component", "deploy", "suspend"]
}))]
#[schema(
    description = "The KubeVela definition types (ComponentDefinition, TraitDefinition, PolicyDefinition, WorkflowStepDefinition names) the apps of a plan may use; a list left out takes its default."
)]
pub struct AllowedDefinitions {
    /// ComponentDefinition names.
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    /// TraitDefinition names.
    #[serde(default = "default_traits")]
    pub traits: Vec<String>,
    /// PolicyDefinition names.
    #[serde(default = "default_policies")]
    pub policies: Vec<String>,
    /// WorkflowStepDefinition names.
    #[serde(default = "default_workflow_steps")]
    pub workflow_steps: Vec<String>,
}

impl Default for AllowedDefinitions {
    fn default() -> Self {
        AllowedDefinitions {
            components: default_components(),
            traits: default_traits(),
            policies: default_policies(),
            workflow_steps: default_workflow_steps(),
        }
    }
}

impl AllowedDefinitions {
    /// The allowed names of one kind: `components`, `traits`, `policies` or `workflowSteps`.
    pub fn of(&self, kind: DefinitionKind) -> &[String] {
        match kind {
            DefinitionKind::Component => &self.components,
            DefinitionKind::Trait => &self.traits,
            DefinitionKind::Policy => &self.policies,
            DefinitionKind::WorkflowStep => &self.workflow_steps,
        }
    }

    /// Whether `name` is allowed for `kind`.
    pub fn allows(&self, kind: DefinitionKind, name: &str) -> bool {
        self.of(kind).iter().any(|n| n == name)
    }
}

/// The four kinds of KubeVela definitions an app refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DefinitionKind {
    /// A ComponentDefinition (`components[].type`).
    Component,
    /// A TraitDefinition (`traits[].type`).
    Trait,
    /// A PolicyDefinition (`policies[].type`).
    Policy,
    /// A WorkflowStepDefinition (`workflow.steps[].type`).
    WorkflowStep,
}

impl DefinitionKind {
    /// Name of the [`AllowedDefinitions`] list (`components`, `traits`, ...).
    pub fn list_name(self) -> &'static str {
        match self {
            DefinitionKind::Component => "components",
            DefinitionKind::Trait => "traits",
            DefinitionKind::Policy => "policies",
            DefinitionKind::WorkflowStep => "workflowSteps",
        }
    }

    /// What one of them is called in messages (`component type`, ...).
    pub fn noun(self) -> &'static str {
        match self {
            DefinitionKind::Component => "component type",
            DefinitionKind::Trait => "trait type",
            DefinitionKind::Policy => "policy type",
            DefinitionKind::WorkflowStep => "workflow step type",
        }
    }
}

fn names(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn default_components() -> Vec<String> {
    names(&["cron-task", "task", "webservice", "worker"])
}

fn default_traits() -> Vec<String> {
    names(&[
        "annotations",
        "command",
        "container-image",
        "container-ports",
        "cpuscaler",
        "env",
        "expose",
        "gateway",
        "hpa",
        "init-container",
        "k8s-update-strategy",
        "labels",
        "lifecycle",
        "resource",
        "scaler",
        "securitycontext",
        "sidecar",
        "startup-probe",
        "storage",
    ])
}

fn default_policies() -> Vec<String> {
    names(&["apply-once", "garbage-collect", "read-only"])
}

fn default_workflow_steps() -> Vec<String> {
    names(&[
        "apply-component",
        "deploy",
        "print-message-in-status",
        "suspend",
    ])
}

/// Per-container LimitRange settings, keyed by container resource name (`cpu`,
/// `memory`, `ephemeral-storage`, `hugepages-2Mi`, `nvidia.com/gpu`).
///
/// Must satisfy `defaultRequest <= default <= max` for each resource present in both.
///
/// ```
/// use kubenova_api::catalog::LimitRangeDefaults;
///
/// let lr: LimitRangeDefaults = serde_saphyr::from_str("default: { cpu: 500m }\nmax: { cpu: 2 }")?;
/// assert!(lr.default_request.is_empty());
/// assert!(lr.default["cpu"] < lr.max["cpu"]);
/// # Ok::<(), serde_saphyr::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({
    "defaultRequest": { "cpu": "100m", "memory": "128Mi" },
    "default": { "cpu": "500m", "memory": "512Mi" },
    "max": { "cpu": "2", "memory": "4Gi" }
}))]
#[schema(
    description = "Per-container LimitRange settings keyed by container resource name (cpu, memory, ephemeral-storage, hugepages-<size>, <domain>/<name>); defaultRequest <= default <= max."
)]
pub struct LimitRangeDefaults {
    /// Requests given to containers that set none.
    #[serde(default)]
    pub default_request: BTreeMap<String, Quantity>,
    /// Limits given to containers that set none.
    #[serde(default)]
    pub default: BTreeMap<String, Quantity>,
    /// Largest limit a single container may set.
    #[serde(default)]
    pub max: BTreeMap<String, Quantity>,
}

/// Hourly prices of a plan. Amounts are exact decimals, serialized as strings
/// (`"0.045"`); plain JSON/YAML numbers are accepted on input.
///
/// ```
/// use kubenova_api::catalog::Prices;
///
/// let p: Prices = serde_json::from_str(r#"{"currency": "USD", "cpuCoreHour": "0.04",
///     "memoryGibHour": 0.005, "storageGibHour": "0.00014", "loadBalancerHour": "0.025"}"#)?;
/// assert_eq!(p.memory_gib_hour.to_string(), "0.005");
/// assert_eq!(serde_json::to_value(&p)?["memoryGibHour"], "0.005");
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({
    "currency": "USD", "cpuCoreHour": "0.04", "memoryGibHour": "0.005",
    "storageGibHour": "0.00014", "loadBalancerHour": "0.025"
}))]
#[schema(
    description = "Hourly prices of a plan; amounts are exact decimals serialized as strings."
)]
pub struct Prices {
    /// ISO-4217 currency code, three uppercase letters (`USD`).
    #[schema(pattern = "^[A-Z]{3}$", example = "USD")]
    pub currency: String,
    /// Price of one CPU core (requested) for one hour.
    #[serde(with = "decimal_string")]
    #[schema(value_type = String, pattern = r"^[0-9]+(\.[0-9]+)?$", example = "0.04")]
    pub cpu_core_hour: Decimal,
    /// Price of one GiB of memory (requested) for one hour.
    #[serde(with = "decimal_string")]
    #[schema(value_type = String, pattern = r"^[0-9]+(\.[0-9]+)?$", example = "0.005")]
    pub memory_gib_hour: Decimal,
    /// Price of one GiB of persistent storage (requested) for one hour.
    #[serde(with = "decimal_string")]
    #[schema(value_type = String, pattern = r"^[0-9]+(\.[0-9]+)?$", example = "0.00014")]
    pub storage_gib_hour: Decimal,
    /// Price of one `LoadBalancer` service for one hour.
    #[serde(with = "decimal_string")]
    #[schema(value_type = String, pattern = r"^[0-9]+(\.[0-9]+)?$", example = "0.025")]
    pub load_balancer_hour: Decimal,
}

/// A named set of policy rules enforced in a tenant's namespaces.
///
/// ```
/// use kubenova_api::catalog::{PolicyRule, PolicySet, PodSecurityLevel};
///
/// let ps: PolicySet = serde_json::from_value(serde_json::json!({
///     "name": "pod-security-restricted",
///     "description": "Restricted Pod Security Standard",
///     "rules": [{ "kind": "podSecurity", "level": "restricted" }]
/// }))?;
/// assert_eq!(ps.rules[0], PolicyRule::PodSecurity {
///     level: PodSecurityLevel::Restricted,
///     version: "latest".to_owned(),
/// });
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({
    "name": "tenant-isolation",
    "description": "Deny traffic from other tenants",
    "rules": [{
        "kind": "networkIsolation", "allowSameTenant": true, "allowDns": true,
        "allowFromNamespaceLabels": [], "denyEgressToInternet": false
    }]
}))]
#[schema(description = "A named set of policy rules enforced in a tenant's namespaces.")]
pub struct PolicySet {
    /// Policyset name, a DNS-1123 label.
    pub name: String,
    /// Human readable description.
    #[serde(default)]
    pub description: String,
    /// The rules, applied in order.
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
}

/// Pod Security Standards level enforced through Pod Security admission.
///
/// Ordered from least to most strict.
///
/// ```
/// use kubenova_api::catalog::PodSecurityLevel;
///
/// assert!(PodSecurityLevel::Restricted > PodSecurityLevel::Baseline);
/// assert_eq!(PodSecurityLevel::Baseline.as_str(), "baseline");
/// ```
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
#[schema(description = "Pod Security Standards level enforced through Pod Security admission.")]
pub enum PodSecurityLevel {
    /// Unrestricted.
    Privileged,
    /// Prevents known privilege escalations.
    Baseline,
    /// Current pod hardening best practices.
    Restricted,
}

impl PodSecurityLevel {
    /// The label value used by Pod Security admission (`pod-security.kubernetes.io/enforce`).
    pub fn as_str(self) -> &'static str {
        match self {
            PodSecurityLevel::Privileged => "privileged",
            PodSecurityLevel::Baseline => "baseline",
            PodSecurityLevel::Restricted => "restricted",
        }
    }
}

impl fmt::Display for PodSecurityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rule of a [`PolicySet`], tagged by `kind`.
///
/// The KubeNova 0.9 spellings `vela.policy` and `vela.trait` are accepted for
/// `velaPolicy` and `velaTrait`.
///
/// ```
/// use kubenova_api::catalog::PolicyRule;
///
/// let old: PolicyRule = serde_json::from_str(
///     r#"{"kind": "vela.trait", "traitType": "scaler", "spec": {"replicas": 3}}"#)?;
/// assert_eq!(old.kind(), "velaTrait");
/// assert_eq!(serde_json::to_value(&old)?["kind"], "velaTrait");
///
/// let net: PolicyRule = serde_json::from_str(r#"{"kind": "networkIsolation"}"#)?;
/// assert!(matches!(net, PolicyRule::NetworkIsolation { allow_same_tenant: true, allow_dns: true, .. }));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"kind": "podSecurity", "level": "baseline", "version": "latest"}))]
#[schema(
    description = "One rule of a policyset, tagged by kind. The 0.9 spellings vela.policy and vela.trait are accepted for velaPolicy and velaTrait."
)]
pub enum PolicyRule {
    /// Default-deny NetworkPolicies around the tenant's namespaces.
    #[serde(rename_all = "camelCase")]
    NetworkIsolation {
        /// Allow traffic between the tenant's own namespaces (default `true`).
        #[serde(default = "default_true")]
        allow_same_tenant: bool,
        /// Allow DNS egress to the cluster DNS (default `true`).
        #[serde(default = "default_true")]
        allow_dns: bool,
        /// Also allow ingress from namespaces matching any of these label selectors
        /// (e.g. `{"kubernetes.io/metadata.name": "ingress-nginx"}`).
        #[serde(default)]
        allow_from_namespace_labels: Vec<BTreeMap<String, String>>,
        /// Deny egress to addresses outside the cluster (default `false`).
        #[serde(default)]
        deny_egress_to_internet: bool,
    },
    /// Pod Security admission labels on the tenant's namespaces.
    #[serde(rename_all = "camelCase")]
    PodSecurity {
        /// Level to enforce.
        level: PodSecurityLevel,
        /// Pod Security Standards version: `latest` (default) or `v1.<minor>`.
        #[serde(default = "default_psa_version")]
        version: String,
    },
    /// A KubeVela policy added to every app of the tenant, named `kubenova-<policyType>`.
    /// Its type must be one of the plan's allowed policy types.
    #[serde(rename_all = "camelCase", alias = "vela.policy")]
    VelaPolicy {
        /// PolicyDefinition name (`garbage-collect`, `apply-once`...).
        policy_type: String,
        /// The policy's properties.
        #[schema(value_type = Object)]
        spec: serde_json::Value,
    },
    /// A KubeVela trait added to every component (of `componentTypes`, when given) that
    /// has no trait of that type itself. Its type must be one of the plan's allowed trait
    /// types.
    #[serde(rename_all = "camelCase", alias = "vela.trait")]
    VelaTrait {
        /// TraitDefinition name (`scaler`, `securitycontext`...).
        trait_type: String,
        /// The trait's properties.
        #[schema(value_type = Object)]
        spec: serde_json::Value,
        /// Component types the trait is added to (the trait definition must apply to
        /// their workloads); empty: every component.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        component_types: Vec<String>,
    },
    /// Container images of the tenant's apps must come from one of these registries or
    /// repository prefixes (`docker.io`, `ghcr.io/acme`). Checked by the manager and the
    /// operator on every image an app names, and in the cluster by Capsule (registry host
    /// only) for every pod in the tenant's namespaces. With several such rules, an image
    /// must satisfy each.
    #[serde(rename_all = "camelCase")]
    ImageRegistries {
        /// Registry hosts (`docker.io`, `registry.example.com:5000`) or repository
        /// prefixes (`ghcr.io/acme`).
        allowed: Vec<String>,
    },
}

fn default_true() -> bool {
    true
}

fn default_psa_version() -> String {
    "latest".to_owned()
}

impl PolicyRule {
    /// The `kind` tag (`networkIsolation`, `podSecurity`, `velaPolicy`, `velaTrait`,
    /// `imageRegistries`).
    pub fn kind(&self) -> &'static str {
        match self {
            PolicyRule::NetworkIsolation { .. } => "networkIsolation",
            PolicyRule::PodSecurity { .. } => "podSecurity",
            PolicyRule::VelaPolicy { .. } => "velaPolicy",
            PolicyRule::VelaTrait { .. } => "velaTrait",
            PolicyRule::ImageRegistries { .. } => "imageRegistries",
        }
    }
}

/// A catalog file as written by operators: lists of plans and policysets that add to,
/// or replace by name, those of the catalog it is merged into.
///
/// ```
/// use kubenova_api::catalog::{Catalog, CatalogFile, Format};
///
/// let overlay = CatalogFile::from_str_with_format(r#"
/// plans:
///   - name: gold
///     description: Gold, more pods
///     tenantQuotas: { pods: 500 }
///     prices: { currency: USD, cpuCoreHour: "0.05", memoryGibHour: "0.006",
///               storageGibHour: "0.0002", loadBalancerHour: "0.03" }
///     policysets: [tenant-isolation]
/// "#, Format::Yaml)?;
/// let catalog = Catalog::builtin().merged_with(overlay)?;
/// assert_eq!(catalog.plan("gold").map(|p| p.tenant_quotas["pods"].value()), Some(500));
/// # Ok::<(), kubenova_api::catalog::CatalogError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(
    description = "A catalog file: plans and policysets that add to, or replace by name, those of the catalog it is merged into."
)]
pub struct CatalogFile {
    /// Plans to add or replace.
    #[serde(default)]
    pub plans: Vec<Plan>,
    /// Policysets to add or replace.
    #[serde(default)]
    pub policysets: Vec<PolicySet>,
}

/// A validated set of plans and policysets, keyed by name.
///
/// ```
/// use kubenova_api::catalog::{Catalog, PolicyRule};
///
/// let catalog = Catalog::builtin();
/// let names: Vec<_> = catalog.plans().map(|p| p.name.as_str()).collect();
/// assert_eq!(names, ["baseline", "gold", "platinum"]);
///
/// let gold = catalog.plan("gold").expect("built in");
/// assert_eq!(gold.tenant_quotas["requests.cpu"].as_str(), "6");
/// assert_eq!(gold.tenant_quotas["limits.memory"].as_str(), "10Gi");
///
/// let rules = catalog.policysets_of("platinum").expect("built in");
/// assert!(rules.iter().any(|ps| ps.name == "pod-security-restricted"));
/// assert!(catalog.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(description = "A validated set of plans and policysets, keyed by name.")]
pub struct Catalog {
    /// Plans by name.
    #[serde(default)]
    pub plans: BTreeMap<String, Plan>,
    /// Policysets by name.
    #[serde(default)]
    pub policysets: BTreeMap<String, PolicySet>,
}

/// Syntax of a catalog file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// JSON (`.json`).
    Json,
    /// YAML (`.yaml`, `.yml`).
    Yaml,
}

impl Format {
    /// The format implied by a file extension (case-insensitive), if any.
    ///
    /// ```
    /// use kubenova_api::catalog::Format;
    ///
    /// assert_eq!(Format::from_path("plans.YML".as_ref()), Some(Format::Yaml));
    /// assert_eq!(Format::from_path("plans.toml".as_ref()), None);
    /// ```
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "json" => Some(Format::Json),
            "yaml" | "yml" => Some(Format::Yaml),
            _ => None,
        }
    }
}

/// Why a catalog could not be loaded.
///
/// Messages start with the file (or `<inline catalog>`), then the JSON path of the bad
/// field, then the reason.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// The file could not be read.
    #[error("{}: cannot read catalog file: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file extension is not `.json`, `.yaml` or `.yml`.
    #[error(
        "{}: unsupported catalog file extension (use .json, .yaml or .yml)",
        path.display()
    )]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
    },
    /// The text is not valid JSON/YAML, or does not match the catalog schema.
    #[error("{origin}: {}{message}{}", field_prefix(field.as_deref()), location_suffix(*line, *column))]
    Parse {
        /// The file, or `<inline catalog>`.
        origin: String,
        /// JSON path of the offending field (`plans[1].tenantQuotas."requests.cpu"`),
        /// when known.
        field: Option<String>,
        /// Why.
        message: String,
        /// 1-based line, when known.
        line: Option<usize>,
        /// 1-based column, when known.
        column: Option<usize>,
    },
    /// The catalog parsed but is inconsistent or has invalid values.
    #[error("{}", invalid_message(origin.as_deref(), problems))]
    Invalid {
        /// The file, when the problems come from one.
        origin: Option<String>,
        /// Every problem found, e.g. `plan "gold" references unknown policyset "x"`.
        problems: Vec<String>,
    },
}

fn field_prefix(field: Option<&str>) -> String {
    field.map(|f| format!("{f}: ")).unwrap_or_default()
}

fn location_suffix(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" (line {l}, column {c})"),
        (Some(l), None) => format!(" (line {l})"),
        _ => String::new(),
    }
}

fn invalid_message(origin: Option<&str>, problems: &[String]) -> String {
    let prefix = origin.map(|o| format!("{o}: ")).unwrap_or_default();
    match problems {
        [one] => format!("{prefix}{one}"),
        many => format!("{prefix}{} problems: {}", many.len(), many.join("; ")),
    }
}

impl CatalogError {
    fn with_origin(self, origin: &str) -> Self {
        match self {
            CatalogError::Invalid {
                origin: None,
                problems,
            } => CatalogError::Invalid {
                origin: Some(origin.to_owned()),
                problems,
            },
            other => other,
        }
    }
}

impl CatalogFile {
    /// Reads a catalog file; the format is chosen by extension (`.json`, `.yaml`,
    /// `.yml`). Only syntax and schema are checked here; references and values are
    /// checked when it is merged into a [`Catalog`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<CatalogFile, CatalogError> {
        let path = path.as_ref();
        let format = Format::from_path(path).ok_or_else(|| CatalogError::UnsupportedFormat {
            path: path.to_owned(),
        })?;
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
            path: path.to_owned(),
            source,
        })?;
        parse_file(&text, format, &path.display().to_string())
    }

    /// Parses a catalog file from a string (errors name it `<inline catalog>`).
    pub fn from_str_with_format(s: &str, format: Format) -> Result<CatalogFile, CatalogError> {
        parse_file(s, format, INLINE_ORIGIN)
    }

    /// Problems with names repeated within this file.
    fn duplicate_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut seen = BTreeMap::new();
        for (i, p) in self.plans.iter().enumerate() {
            if let Some(first) = seen.insert(p.name.as_str(), i) {
                problems.push(format!(
                    "duplicate plan name {:?} (plans[{first}] and plans[{i}])",
                    p.name
                ));
            }
        }
        let mut seen = BTreeMap::new();
        for (i, p) in self.policysets.iter().enumerate() {
            if let Some(first) = seen.insert(p.name.as_str(), i) {
                problems.push(format!(
                    "duplicate policyset name {:?} (policysets[{first}] and policysets[{i}])",
                    p.name
                ));
            }
        }
        problems
    }
}

impl From<Catalog> for CatalogFile {
    fn from(catalog: Catalog) -> Self {
        CatalogFile {
            plans: catalog.plans.into_values().collect(),
            policysets: catalog.policysets.into_values().collect(),
        }
    }
}

impl Catalog {
    /// The built-in catalog (`baseline`, `gold`, `platinum` and their policysets).
    pub fn builtin() -> Catalog {
        BUILTIN.clone()
    }

    /// A shared reference to the built-in catalog, without cloning it.
    pub fn builtin_ref() -> &'static Catalog {
        &BUILTIN
    }

    /// Reads a complete, self-contained catalog from a JSON or YAML file (format by
    /// extension) and validates it. To add to the built-ins instead, use
    /// [`Catalog::builtin_with_overlay_file`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Catalog, CatalogError> {
        let path = path.as_ref();
        let file = CatalogFile::from_file(path)?;
        Catalog::default()
            .merged_with(file)
            .map_err(|e| e.with_origin(&path.display().to_string()))
    }

    /// Parses and validates a complete, self-contained catalog from a string.
    pub fn from_str_with_format(s: &str, format: Format) -> Result<Catalog, CatalogError> {
        Catalog::parse_standalone(s, format, INLINE_ORIGIN)
    }

    fn parse_standalone(s: &str, format: Format, origin: &str) -> Result<Catalog, CatalogError> {
        let file = parse_file(s, format, origin)?;
        Catalog::default()
            .merged_with(file)
            .map_err(|e| e.with_origin(origin))
    }

    /// The built-in catalog with the plans and policysets of `path` added or replaced
    /// by name. Problems are reported against `path`.
    pub fn builtin_with_overlay_file(path: impl AsRef<Path>) -> Result<Catalog, CatalogError> {
        let path = path.as_ref();
        let file = CatalogFile::from_file(path)?;
        Catalog::builtin()
            .merged_with(file)
            .map_err(|e| e.with_origin(&path.display().to_string()))
    }

    /// Adds the overlay's plans and policysets, replacing those with the same name, then
    /// validates the result (duplicate names within the overlay are an error).
    pub fn merged_with(mut self, overlay: CatalogFile) -> Result<Catalog, CatalogError> {
        let mut problems = overlay.duplicate_problems();
        for plan in overlay.plans {
            self.plans.insert(plan.name.clone(), plan);
        }
        for ps in overlay.policysets {
            self.policysets.insert(ps.name.clone(), ps);
        }
        problems.extend(self.problems());
        if problems.is_empty() {
            Ok(self)
        } else {
            Err(CatalogError::Invalid {
                origin: None,
                problems,
            })
        }
    }

    /// The plan called `name`.
    pub fn plan(&self, name: &str) -> Option<&Plan> {
        self.plans.get(name)
    }

    /// The policyset called `name`.
    pub fn policyset(&self, name: &str) -> Option<&PolicySet> {
        self.policysets.get(name)
    }

    /// All plans, sorted by name.
    pub fn plans(&self) -> impl ExactSizeIterator<Item = &Plan> + '_ {
        self.plans.values()
    }

    /// All policysets, sorted by name.
    pub fn policysets(&self) -> impl ExactSizeIterator<Item = &PolicySet> + '_ {
        self.policysets.values()
    }

    /// The policysets of plan `plan`, in the plan's order, or `None` if there is no such
    /// plan. Unknown policyset names (only possible in an unvalidated catalog) are
    /// skipped.
    pub fn policysets_of(&self, plan: &str) -> Option<Vec<&PolicySet>> {
        let plan = self.plan(plan)?;
        Some(
            plan.policysets
                .iter()
                .filter_map(|n| self.policysets.get(n))
                .collect(),
        )
    }

    /// Checks the whole catalog: names are DNS-1123 labels and match their keys, every
    /// referenced policyset exists, quota and container resource names are valid,
    /// quantities are non-negative (and whole for object counts), LimitRange
    /// `defaultRequest <= default <= max`, `namespaceQuota >= 1`, prices are
    /// non-negative with an ISO-4217 currency, and policy rules are well formed.
    /// Reports every problem at once.
    pub fn validate(&self) -> Result<(), CatalogError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(CatalogError::Invalid {
                origin: None,
                problems,
            })
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (key, ps) in &self.policysets {
            if *key != ps.name {
                out.push(format!(
                    "policysets key {key:?} does not match policyset name {:?}",
                    ps.name
                ));
            }
            check_policyset(ps, &mut out);
        }
        for (key, plan) in &self.plans {
            if *key != plan.name {
                out.push(format!(
                    "plans key {key:?} does not match plan name {:?}",
                    plan.name
                ));
            }
            check_plan(plan, self, &mut out);
        }
        out
    }
}

// ---------------------------------------------------------------------------------
// Parsing with precise error locations.

fn parse_file(text: &str, format: Format, origin: &str) -> Result<CatalogFile, CatalogError> {
    match format {
        Format::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            let file: CatalogFile = serde_path_to_error::deserialize(&mut de)
                .map_err(|e| json_error(origin, json_path(e.path()), e.inner()))?;
            de.end().map_err(|e| json_error(origin, None, &e))?;
            Ok(file)
        }
        Format::Yaml => {
            // serde-saphyr (already in the build: kube-client parses kubeconfigs with it)
            // instead of the deprecated serde_yaml; the path comes from
            // serde_path_to_error, the position from the parser.
            let mut path = None;
            let opts = serde_saphyr::options! { with_snippet: false };
            serde_saphyr::with_deserializer_from_str_with_options(text, opts, |de| {
                serde_path_to_error::deserialize(de).map_err(|e| {
                    path = Some(e.path().clone());
                    e.into_inner()
                })
            })
            .map_err(|e| yaml_error(origin, path.as_ref(), &e))
        }
    }
}

fn json_error(origin: &str, field: Option<String>, err: &serde_json::Error) -> CatalogError {
    let (line, column) = if err.line() == 0 {
        (None, None)
    } else {
        (Some(err.line()), Some(err.column()))
    };
    let message = err.to_string();
    let message = match (line, column) {
        (Some(l), Some(c)) => message
            .strip_suffix(&format!(" at line {l} column {c}"))
            .map(str::to_owned)
            .unwrap_or(message),
        _ => message,
    };
    CatalogError::Parse {
        origin: origin.to_owned(),
        field,
        message,
        line,
        column,
    }
}

fn yaml_error(
    origin: &str,
    path: Option<&serde_path_to_error::Path>,
    err: &serde_saphyr::Error,
) -> CatalogError {
    let mut message = err.to_string();
    let (mut line, mut column) = (None, None);
    if let Some(loc) = err.location().filter(|l| l.line() > 0) {
        // The position is printed once, in our own format.
        let suffix = format!(" at line {}, column {}", loc.line(), loc.column());
        if let Some(stripped) = message.strip_suffix(&suffix) {
            message = stripped.to_owned();
        }
        line = usize::try_from(loc.line()).ok();
        column = usize::try_from(loc.column()).ok();
    }
    CatalogError::Parse {
        origin: origin.to_owned(),
        field: path.and_then(json_path),
        message,
        line,
        column,
    }
}

/// `plans[1].tenantQuotas."requests.cpu"`, or `None` at the root.
fn json_path(path: &serde_path_to_error::Path) -> Option<String> {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&map_key(key));
            }
            Segment::Enum { .. } => {}
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

// ---------------------------------------------------------------------------------
// Validation.

const DNS_LABEL_RULE: &str = "must be a DNS-1123 label (at most 63 lowercase letters, digits \
                              and '-', starting and ending with a letter or digit)";

fn is_dns_label(s: &str) -> bool {
    static RE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$").expect("static regex"));
    s.len() <= 63 && RE.is_match(s)
}

fn is_dns_subdomain(s: &str) -> bool {
    static RE: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
            .expect("static regex")
    });
    s.len() <= 253 && RE.is_match(s)
}

/// Kubernetes "qualified name" part (label key name, resource name after the prefix).
fn is_qualified_name_part(s: &str) -> bool {
    static RE: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$").expect("static regex")
    });
    s.len() <= 63 && RE.is_match(s)
}

/// `[prefix/]name` with a DNS-subdomain prefix.
fn is_qualified_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_qualified_name_part(name),
        None => is_qualified_name_part(s),
    }
}

fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_qualified_name_part(s)
}

/// Quota resources counting objects; their values must be whole numbers.
const COUNT_QUOTA_RESOURCES: [&str; 9] = [
    "pods",
    "services",
    "replicationcontrollers",
    "resourcequotas",
    "secrets",
    "configmaps",
    "persistentvolumeclaims",
    "services.nodeports",
    "services.loadbalancers",
];

/// Compute and storage quota resources.
const COMPUTE_QUOTA_RESOURCES: [&str; 10] = [
    "cpu",
    "memory",
    "ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.storage",
    "requests.ephemeral-storage",
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
];

fn is_hugepages(name: &str) -> bool {
    name.strip_prefix("hugepages-")
        .is_some_and(|size| Quantity::parse(size).is_ok_and(|q| q.value_nanos() > 0))
}

/// What kind of value a quota resource takes.
enum QuotaKind {
    /// Object count: whole numbers only.
    Count,
    /// Amount of a resource.
    Amount,
}

/// Classifies a ResourceQuota `hard` key, as Kubernetes' quota validation would accept it.
fn quota_resource_kind(name: &str) -> Result<QuotaKind, String> {
    if COUNT_QUOTA_RESOURCES.contains(&name) {
        return Ok(QuotaKind::Count);
    }
    if COMPUTE_QUOTA_RESOURCES.contains(&name) {
        return Ok(QuotaKind::Amount);
    }
    if let Some(object) = name.strip_prefix("count/") {
        return if is_dns_subdomain(object) {
            Ok(QuotaKind::Count)
        } else {
            Err(
                "count/ must be followed by <resource>[.<group>] in lowercase, e.g. count/deployments.apps"
                    .to_owned(),
            )
        };
    }
    if is_hugepages(name) || name.strip_prefix("requests.").is_some_and(is_hugepages) {
        return Ok(QuotaKind::Amount);
    }
    if name.contains('/') && is_qualified_name(name) {
        return Ok(if name.ends_with("/persistentvolumeclaims") {
            QuotaKind::Count
        } else {
            QuotaKind::Amount
        });
    }
    let hint = if name == "storage" {
        Some("requests.storage".to_owned())
    } else if let Some(rest) = name.strip_prefix("request.") {
        Some(format!("requests.{rest}"))
    } else if let Some(rest) = name.strip_prefix("limit.") {
        Some(format!("limits.{rest}"))
    } else if matches!(
        name,
        "loadbalancers" | "services.loadbalancer" | "service.loadbalancers"
    ) {
        Some("services.loadbalancers".to_owned())
    } else if matches!(name, "pvc" | "pvcs" | "persistentvolumeclaim") {
        Some("persistentvolumeclaims".to_owned())
    } else {
        None
    };
    let mut why = "not a valid ResourceQuota resource name (use e.g. requests.cpu, limits.cpu, \
                   requests.memory, limits.memory, requests.storage, pods, \
                   services.loadbalancers, persistentvolumeclaims, count/<resource>.<group> or a \
                   qualified <domain>/<name>)"
        .to_owned();
    if let Some(hint) = hint {
        why.push_str(&format!("; did you mean {hint:?}?"));
    }
    Err(why)
}

/// Checks a LimitRange container resource name.
fn check_container_resource(name: &str) -> Result<(), String> {
    if matches!(name, "cpu" | "memory" | "ephemeral-storage") || is_hugepages(name) {
        return Ok(());
    }
    if name.contains('/') && is_qualified_name(name) {
        return Ok(());
    }
    let mut why = "not a valid container resource name (use cpu, memory, ephemeral-storage, \
                   hugepages-<size> or a qualified <domain>/<name>)"
        .to_owned();
    if let Some(rest) = name
        .strip_prefix("requests.")
        .or_else(|| name.strip_prefix("limits."))
    {
        why.push_str(&format!(
            "; LimitRange keys are per-container resources, did you mean {rest:?}?"
        ));
    }
    Err(why)
}

/// A map key as it appears in a JSON path: bare when it is an identifier, quoted
/// otherwise (`storage`, `"requests.cpu"`).
fn map_key(key: &str) -> String {
    static IDENT: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^[A-Za-z_][A-Za-z0-9_]*$").expect("static regex"));
    if IDENT.is_match(key) {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

fn check_description(what: &str, description: &str, out: &mut Vec<String>) {
    if description.len() > MAX_DESCRIPTION_LEN {
        out.push(format!(
            "{what}: description is {} bytes long; at most {MAX_DESCRIPTION_LEN} are allowed",
            description.len()
        ));
    }
}

fn check_plan(plan: &Plan, catalog: &Catalog, out: &mut Vec<String>) {
    let what = format!("plan {:?}", plan.name);
    if !is_dns_label(&plan.name) {
        out.push(format!("{what}: name {DNS_LABEL_RULE}"));
    }
    check_description(&what, &plan.description, out);

    if plan.tenant_quotas.len() > MAX_RESOURCE_ENTRIES {
        out.push(format!(
            "{what}: tenantQuotas has {} entries; at most {MAX_RESOURCE_ENTRIES} are allowed",
            plan.tenant_quotas.len()
        ));
    }
    for (key, value) in &plan.tenant_quotas {
        let field = format!("{what}: tenantQuotas.{}", map_key(key));
        match quota_resource_kind(key) {
            Err(why) => out.push(format!("{field}: {why}")),
            Ok(kind) => {
                if value.is_negative() {
                    out.push(format!("{field}: must not be negative (got {value})"));
                } else if matches!(kind, QuotaKind::Count) && !value.is_integer() {
                    out.push(format!(
                        "{field}: counts objects, so it must be a whole number (got {value})"
                    ));
                }
            }
        }
    }

    if plan.namespace_quota == Some(0) {
        out.push(format!("{what}: namespaceQuota must be at least 1"));
    }

    let lr = &plan.limit_range;
    for (section, map) in [
        ("defaultRequest", &lr.default_request),
        ("default", &lr.default),
        ("max", &lr.max),
    ] {
        if map.len() > MAX_RESOURCE_ENTRIES {
            out.push(format!(
                "{what}: limitRange.{section} has {} entries; at most {MAX_RESOURCE_ENTRIES} are allowed",
                map.len()
            ));
        }
        for (key, value) in map {
            let field = format!("{what}: limitRange.{section}.{}", map_key(key));
            if let Err(why) = check_container_resource(key) {
                out.push(format!("{field}: {why}"));
            } else if value.is_negative() {
                out.push(format!("{field}: must not be negative (got {value})"));
            }
        }
    }
    for (lower_name, lower, upper_name, upper) in [
        (
            "defaultRequest",
            &lr.default_request,
            "default",
            &lr.default,
        ),
        ("default", &lr.default, "max", &lr.max),
        ("defaultRequest", &lr.default_request, "max", &lr.max),
    ] {
        for (key, low) in lower {
            if let Some(high) = upper.get(key)
                && low > high
            {
                let k = map_key(key);
                out.push(format!(
                    "{what}: limitRange.{lower_name}.{k} ({low}) exceeds limitRange.{upper_name}.{k} ({high})"
                ));
            }
        }
    }

    let prices = &plan.prices;
    static CURRENCY: LazyLock<Regex> =
        LazyLock::new(|| Regex::new("^[A-Z]{3}$").expect("static regex"));
    if !CURRENCY.is_match(&prices.currency) {
        out.push(format!(
            "{what}: prices.currency {:?} must be an ISO-4217 code of 3 uppercase letters, e.g. \"USD\"",
            prices.currency
        ));
    }
    for (field, amount) in [
        ("cpuCoreHour", prices.cpu_core_hour),
        ("memoryGibHour", prices.memory_gib_hour),
        ("storageGibHour", prices.storage_gib_hour),
        ("loadBalancerHour", prices.load_balancer_hour),
    ] {
        if amount.is_sign_negative() && !amount.is_zero() {
            out.push(format!(
                "{what}: prices.{field} must not be negative (got {amount})"
            ));
        }
    }

    check_definitions(&what, &plan.definitions, out);
    let mut seen = BTreeSet::new();
    let mut pod_security: Option<(&str, PodSecurityLevel)> = None;
    for name in &plan.policysets {
        if !seen.insert(name.as_str()) {
            out.push(format!("{what} lists policyset {name:?} more than once"));
            continue;
        }
        let Some(ps) = catalog.policysets.get(name) else {
            out.push(format!("{what} references unknown policyset {name:?}"));
            continue;
        };
        out.extend(crate::apprules::rule_problems(
            &plan.definitions,
            &plan.name,
            &ps.name,
            &ps.rules,
        ));
        for rule in &ps.rules {
            if let PolicyRule::PodSecurity { level, .. } = rule {
                match pod_security {
                    Some((other, other_level)) if other_level != *level => out.push(format!(
                        "{what} has conflicting Pod Security levels: {other_level} from policyset {other:?} and {level} from policyset {name:?}"
                    )),
                    Some(_) => {}
                    None => pod_security = Some((name.as_str(), *level)),
                }
            }
        }
    }
}

fn check_policyset(ps: &PolicySet, out: &mut Vec<String>) {
    let what = format!("policyset {:?}", ps.name);
    if !is_dns_label(&ps.name) {
        out.push(format!("{what}: name {DNS_LABEL_RULE}"));
    }
    check_description(&what, &ps.description, out);
    static PSA_VERSION: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^(latest|v1\.[0-9]+)$").expect("static regex"));
    for (i, rule) in ps.rules.iter().enumerate() {
        let field = format!("{what}: rules[{i}] ({})", rule.kind());
        match rule {
            PolicyRule::NetworkIsolation {
                allow_from_namespace_labels,
                ..
            } => {
                for (j, selector) in allow_from_namespace_labels.iter().enumerate() {
                    let at = format!("{field}: allowFromNamespaceLabels[{j}]");
                    if selector.is_empty() {
                        out.push(format!(
                            "{at}: an empty selector would allow every namespace; remove it"
                        ));
                    }
                    for (k, v) in selector {
                        if !is_qualified_name(k) {
                            out.push(format!(
                                "{at}: {k:?} is not a valid label key ([<dns-subdomain>/]<name>, name at most 63 characters)"
                            ));
                        }
                        if !is_label_value(v) {
                            out.push(format!(
                                "{at}.{}: {v:?} is not a valid label value (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)",
                                map_key(k)
                            ));
                        }
                    }
                }
            }
            PolicyRule::PodSecurity { version, .. } => {
                if !PSA_VERSION.is_match(version) {
                    out.push(format!(
                        "{field}: version {version:?} must be \"latest\" or \"v1.<minor>\", e.g. \"v1.30\""
                    ));
                }
            }
            PolicyRule::VelaPolicy { policy_type, spec } => {
                check_vela(&field, "policyType", policy_type, spec, out);
            }
            PolicyRule::VelaTrait {
                trait_type,
                spec,
                component_types,
            } => {
                check_vela(&field, "traitType", trait_type, spec, out);
                for (j, c) in component_types.iter().enumerate() {
                    if !is_dns_subdomain(c) {
                        out.push(format!(
                            "{field}: componentTypes[{j}] {c:?} must be a component type name (a DNS-1123 subdomain)"
                        ));
                    }
                }
            }
            PolicyRule::ImageRegistries { allowed } => {
                if allowed.is_empty() {
                    out.push(format!(
                        "{field}: allowed must list at least one registry (an empty list would refuse every image)"
                    ));
                }
                if allowed.len() > MAX_RESOURCE_ENTRIES {
                    out.push(format!(
                        "{field}: allowed has {} entries; at most {MAX_RESOURCE_ENTRIES} are allowed",
                        allowed.len()
                    ));
                }
                for (j, entry) in allowed.iter().enumerate() {
                    if let Some(problem) = crate::apprules::registry_entry_problem(entry) {
                        out.push(format!("{field}: allowed[{j}] {problem}"));
                    }
                }
            }
        }
    }
}

fn check_vela(
    field: &str,
    type_field: &str,
    type_name: &str,
    spec: &serde_json::Value,
    out: &mut Vec<String>,
) {
    if !is_dns_label(type_name) {
        out.push(format!(
            "{field}: {type_field} {type_name:?} {DNS_LABEL_RULE}"
        ));
    }
    if !spec.is_object() {
        out.push(format!(
            "{field}: spec must be a JSON object (the properties of the {type_field})"
        ));
    } else if let Some((path, why)) = crate::apprules::retargeting_problem("spec", spec) {
        out.push(format!("{field}: {path}: {why}"));
    }
}

fn check_definitions(what: &str, d: &AllowedDefinitions, out: &mut Vec<String>) {
    for kind in [
        DefinitionKind::Component,
        DefinitionKind::Trait,
        DefinitionKind::Policy,
        DefinitionKind::WorkflowStep,
    ] {
        let list = d.of(kind);
        let at = format!("{what}: definitions.{}", kind.list_name());
        if list.len() > MAX_RESOURCE_ENTRIES {
            out.push(format!(
                "{at} has {} entries; at most {MAX_RESOURCE_ENTRIES} are allowed",
                list.len()
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, name) in list.iter().enumerate() {
            if !is_dns_subdomain(name) {
                out.push(format!(
                    "{at}[{i}] {name:?} must be a KubeVela definition name (a DNS-1123 subdomain)"
                ));
            } else if !seen.insert(name.as_str()) {
                out.push(format!("{at} lists {name:?} more than once"));
            }
        }
    }
}

/// Serde helpers for prices: a [`Decimal`] written as a string, read from a string or a
/// number.
mod decimal_string {
    use std::fmt;
    use std::str::FromStr;

    use rust_decimal::Decimal;
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&d.to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        d.deserialize_any(DecimalVisitor)
    }

    struct DecimalVisitor;

    fn parse<E: de::Error>(s: &str) -> Result<Decimal, E> {
        let valid = !s.is_empty()
            && s.bytes()
                .enumerate()
                .all(|(i, b)| b.is_ascii_digit() || b == b'.' || (i == 0 && b == b'-'));
        if !valid {
            return Err(E::custom(format!(
                "invalid decimal {s:?}: expected digits with an optional decimal point, e.g. \"0.04\""
            )));
        }
        Decimal::from_str_exact(s).map_err(|e| E::custom(format!("invalid decimal {s:?}: {e}")))
    }

    impl Visitor<'_> for DecimalVisitor {
        type Value = Decimal;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a decimal amount such as \"0.04\"")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Decimal, E> {
            parse(v)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Decimal, E> {
            Ok(Decimal::from(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Decimal, E> {
            Ok(Decimal::from(v))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Decimal, E> {
            // Shortest round-trip text of the number the user wrote: exact for 0.04.
            let text = format!("{v}");
            if !v.is_finite() {
                return Err(E::custom(format!("invalid decimal {text:?}")));
            }
            Decimal::from_str(&text)
                .map_err(|e| E::custom(format!("invalid decimal {text:?}: {e}")))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::Write;

    fn invalid_problems(err: CatalogError) -> Vec<String> {
        match err {
            CatalogError::Invalid { problems, .. } => problems,
            other => panic!("expected Invalid, got {other:?}: {other}"),
        }
    }

    const PRICES_YAML: &str = "{ currency: USD, cpuCoreHour: \"0.04\", memoryGibHour: \
                               \"0.005\", storageGibHour: \"0.0001\", loadBalancerHour: \
                               \"0.025\" }";

    fn prices_json() -> serde_json::Value {
        json!({"currency": "USD", "cpuCoreHour": "0.04", "memoryGibHour": "0.005",
               "storageGibHour": "0.0001", "loadBalancerHour": "0.025"})
    }

    fn temp_file(name: &str, contents: &str) -> (tempdir::Dir, PathBuf) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(contents.as_bytes()).unwrap();
        (dir, path)
    }

    /// Minimal self-cleaning temporary directory (no extra dev-dependency).
    mod tempdir {
        use std::path::PathBuf;
        use std::sync::atomic::{AtomicU32, Ordering};

        pub(super) struct Dir(pub(super) PathBuf);

        impl Dir {
            pub(super) fn new() -> Dir {
                static N: AtomicU32 = AtomicU32::new(0);
                let path = std::env::temp_dir().join(format!(
                    "kubenova-catalog-test-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::SeqCst)
                ));
                std::fs::create_dir_all(&path).unwrap();
                Dir(path)
            }
        }

        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn builtin_parses_and_validates() {
        let catalog = Catalog::parse_standalone(BUILTIN_JSON, Format::Json, BUILTIN_ORIGIN)
            .expect("catalog/builtin.json must parse and validate");
        catalog.validate().expect("builtin catalog validates");
        assert_eq!(catalog, Catalog::builtin());
        assert_eq!(
            catalog.plans.keys().collect::<Vec<_>>(),
            ["baseline", "gold", "platinum"]
        );
        for name in [
            "tenant-isolation",
            "pod-security-baseline",
            "pod-security-restricted",
            "baseline",
            "baseline-security",
            "gold-tier",
            "gold-observability",
            "bluegreen-rollout",
        ] {
            assert!(catalog.policyset(name).is_some(), "policyset {name}");
        }
    }

    #[test]
    fn builtin_keeps_the_0_9_quotas_as_resourcequota_keys() {
        let c = Catalog::builtin_ref();
        let check = |plan: &str, cpu: &str, mem: &str, pods: &str, storage: &str, lbs: &str| {
            let q = &c.plan(plan).unwrap().tenant_quotas;
            assert_eq!(q["requests.cpu"].as_str(), cpu, "{plan}");
            assert_eq!(q["limits.cpu"].as_str(), cpu, "{plan}");
            assert_eq!(q["requests.memory"].as_str(), mem, "{plan}");
            assert_eq!(q["limits.memory"].as_str(), mem, "{plan}");
            assert_eq!(q["pods"].as_str(), pods, "{plan}");
            assert_eq!(q["requests.storage"].as_str(), storage, "{plan}");
            assert_eq!(q["services.loadbalancers"].as_str(), lbs, "{plan}");
        };
        check("baseline", "2", "4Gi", "50", "20Gi", "1");
        check("gold", "6", "10Gi", "200", "200Gi", "5");
        let gold = c.plan("gold").unwrap();
        let platinum = c.plan("platinum").unwrap();
        for (k, v) in &gold.tenant_quotas {
            assert!(platinum.tenant_quotas[k] > *v, "platinum is larger for {k}");
        }
        for plan in c.plans() {
            assert_eq!(plan.prices.currency, "USD");
            assert!(plan.namespace_quota.is_some());
            assert!(!plan.limit_range.default.is_empty());
        }
        assert_eq!(
            c.plan("baseline").unwrap().policysets,
            ["tenant-isolation", "pod-security-baseline", "baseline"]
        );
        for ps in [
            "baseline",
            "baseline-security",
            "gold-tier",
            "gold-observability",
            "bluegreen-rollout",
        ] {
            assert!(gold.policysets.iter().any(|p| p == ps), "gold has {ps}");
        }
        assert!(
            platinum
                .policysets
                .iter()
                .any(|p| p == "pod-security-restricted")
        );
        assert!(
            !platinum
                .policysets
                .iter()
                .any(|p| p == "pod-security-baseline")
        );
        // Every KubeVela rule of the built-in catalog names a stock KubeVela definition
        // that its plans allow, so it is really added to the tenants' apps.
        let gold_tier = c.policyset("gold-tier").unwrap();
        assert_eq!(
            gold_tier.rules[0],
            PolicyRule::VelaTrait {
                trait_type: "scaler".into(),
                spec: json!({"replicas": 3}),
                component_types: vec!["webservice".into(), "worker".into()],
            }
        );
        let registries = c.policyset("baseline-security").unwrap();
        assert!(
            matches!(&registries.rules[0], PolicyRule::ImageRegistries { allowed } if allowed.iter().any(|r| r == "docker.io"))
        );
    }

    #[test]
    fn the_0_9_policysets_parse_with_old_kind_spellings_and_are_refused_unless_allowed() {
        // The KubeNova 0.9 policysets named KubeVela types that stock KubeVela does not
        // have (`health-check`, `logging`, ...). They still parse, but a plan that uses
        // them must allow their types, or the catalog is refused at load: nothing the
        // catalog promises is silently ignored.
        let inline = r#"[{"name": "baseline", "description": "Base guardrails", "rules": [
             {"kind": "vela.policy", "policyType": "health-check",
              "spec": {"type": "health", "properties": {"probe": "http"}}},
             {"kind": "vela.trait", "traitType": "logging", "spec": {"provider": "stdout"}}]}]"#;
        let sets: Vec<PolicySet> = serde_json::from_str(inline).unwrap();
        assert_eq!(sets[0].rules[0].kind(), "velaPolicy");
        assert_eq!(sets[0].rules[1].kind(), "velaTrait");

        let overlay = CatalogFile {
            plans: vec![],
            policysets: sets.clone(),
        };
        let problems = invalid_problems(Catalog::builtin().merged_with(overlay).unwrap_err());
        for plan in ["baseline", "gold", "platinum"] {
            assert!(
                problems.iter().any(|p| p.starts_with(&format!("plan {plan:?}: policyset \"baseline\" rules[0] (velaPolicy) adds policy type \"health-check\", which the plan does not allow"))),
                "{problems:#?}"
            );
            assert!(
                problems.iter().any(|p| p.contains(&format!("plan {plan:?}: policyset \"baseline\" rules[1] (velaTrait) adds trait type \"logging\""))),
                "{problems:#?}"
            );
        }

        // A plan that allows the types accepts the rules: they are added to its apps.
        let mut plan = Catalog::builtin_ref().plan("baseline").unwrap().clone();
        plan.definitions.policies.push("health-check".into());
        plan.definitions.traits.push("logging".into());
        let overlay = CatalogFile {
            plans: vec![plan],
            policysets: sets,
        };
        let err = Catalog::builtin().merged_with(overlay).unwrap_err();
        let problems = invalid_problems(err);
        assert!(
            problems.iter().all(|p| !p.starts_with("plan \"baseline\"")),
            "{problems:#?}"
        );
    }

    #[test]
    fn kubevela_rules_are_checked_at_load() {
        let file = |rules: serde_json::Value, definitions: serde_json::Value| {
            let text = json!({
                "plans": [{"name": "p", "prices": prices_json(), "policysets": ["s"],
                           "definitions": definitions}],
                "policysets": [{"name": "s", "rules": rules}]
            });
            Catalog::from_str_with_format(&text.to_string(), Format::Json)
        };
        // Allowed by the defaults: fine.
        file(
            json!([{"kind": "velaTrait", "traitType": "scaler", "spec": {"replicas": 2}, "componentTypes": ["webservice"]},
                   {"kind": "velaPolicy", "policyType": "garbage-collect", "spec": {}},
                   {"kind": "imageRegistries", "allowed": ["docker.io", "ghcr.io/acme"]}]),
            json!({}),
        )
        .unwrap();
        let problems = invalid_problems(
            file(
                json!([{"kind": "velaPolicy", "policyType": "topology", "spec": {"clusters": ["other"]}},
                       {"kind": "velaTrait", "traitType": "scaler", "spec": {}, "componentTypes": ["k8s-objects"]},
                       {"kind": "imageRegistries", "allowed": []},
                       {"kind": "imageRegistries", "allowed": ["https://docker.io", "nginx", "ghcr.io/acme:1.0"]}]),
                json!({"traits": ["scaler", "scaler"], "components": ["Web Service"]}),
            )
            .unwrap_err(),
        );
        let expect = [
            "policyset \"s\": rules[0] (velaPolicy): spec.clusters: \"clusters\" would send objects to another namespace or cluster",
            "policyset \"s\": rules[2] (imageRegistries): allowed must list at least one registry",
            "policyset \"s\": rules[3] (imageRegistries): allowed[0] \"https://docker.io\": give the registry without a scheme",
            "policyset \"s\": rules[3] (imageRegistries): allowed[1] \"nginx\": must start with a registry host",
            "policyset \"s\": rules[3] (imageRegistries): allowed[2] \"ghcr.io/acme:1.0\": give a registry or repository prefix without tag or digest",
            "plan \"p\": definitions.traits lists \"scaler\" more than once",
            "plan \"p\": definitions.components[0] \"Web Service\" must be a KubeVela definition name",
            "plan \"p\": policyset \"s\" rules[0] (velaPolicy) adds policy type \"topology\", which the plan does not allow",
            "plan \"p\": policyset \"s\" rules[1] (velaTrait): componentTypes names \"k8s-objects\", which the plan does not allow",
        ];
        for e in expect {
            assert!(
                problems.iter().any(|p| p.starts_with(e)),
                "missing {e:?} in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), expect.len(), "{problems:#?}");
    }

    #[test]
    fn serialization_round_trips() {
        let c = Catalog::builtin();
        let file = CatalogFile::from(c.clone());
        let text = serde_json::to_string_pretty(&file).unwrap();
        let back = Catalog::from_str_with_format(&text, Format::Json).unwrap();
        assert_eq!(back, c);
        let yaml = serde_saphyr::to_string(&file).unwrap();
        let back = Catalog::from_str_with_format(&yaml, Format::Yaml).unwrap();
        assert_eq!(back, c);
        let v = serde_json::to_value(c.plan("gold").unwrap()).unwrap();
        assert_eq!(v["prices"]["cpuCoreHour"], "0.045");
        assert_eq!(v["tenantQuotas"]["limits.memory"], "10Gi");
        let v = serde_json::to_value(c.policyset("tenant-isolation").unwrap()).unwrap();
        assert_eq!(v["rules"][0]["kind"], "networkIsolation");
        assert_eq!(v["rules"][0]["allowDns"], true);
    }

    #[test]
    fn overlay_overrides_by_name_and_adds() {
        let overlay = CatalogFile::from_str_with_format(
            &format!(
                "plans:\n\
                 - name: gold\n  description: custom gold\n  tenantQuotas: {{ pods: 300 }}\n  prices: {PRICES_YAML}\n  policysets: [tenant-isolation, custom]\n\
                 - name: silver\n  tenantQuotas: {{ requests.cpu: 4, requests.memory: 8Gi }}\n  namespaceQuota: 4\n  prices: {PRICES_YAML}\n\
                 policysets:\n\
                 - name: custom\n  rules:\n  - kind: podSecurity\n    level: baseline\n    version: v1.30\n"
            ),
            Format::Yaml,
        )
        .unwrap();
        let merged = Catalog::builtin().merged_with(overlay).unwrap();
        let names: Vec<_> = merged.plans().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["baseline", "gold", "platinum", "silver"]);
        let gold = merged.plan("gold").unwrap();
        assert_eq!(gold.description, "custom gold");
        assert_eq!(
            gold.tenant_quotas.len(),
            1,
            "replaced whole, not merged field by field"
        );
        assert_eq!(
            merged.plan("silver").unwrap().tenant_quotas["requests.memory"].as_str(),
            "8Gi"
        );
        assert_eq!(
            merged.plan("baseline"),
            Catalog::builtin_ref().plan("baseline")
        );
        let sets: Vec<_> = merged
            .policysets_of("gold")
            .unwrap()
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(sets, ["tenant-isolation", "custom"]);
        assert!(merged.policysets_of("nope").is_none());
        assert_eq!(merged.policysets().len(), 9);
    }

    #[test]
    fn files_pick_format_by_extension() {
        let yaml = format!(
            "plans:\n- name: mini\n  tenantQuotas: {{ pods: 5 }}\n  prices: {PRICES_YAML}\n  policysets: [tenant-isolation]\n"
        );
        for name in ["extra.yaml", "extra.YML"] {
            let (_dir, path) = temp_file(name, &yaml);
            let c = Catalog::builtin_with_overlay_file(&path).unwrap();
            assert!(c.plan("mini").is_some(), "{name}");
        }
        let json = json!({"plans": [{"name": "mini", "prices": prices_json()}]}).to_string();
        let (_dir, path) = temp_file("extra.json", &json);
        let c = Catalog::from_file(&path).unwrap();
        assert_eq!(c.plans().len(), 1);
        assert_eq!(c.policysets().len(), 0);

        // YAML content in a .json file is a JSON syntax error, with the file named.
        let (_dir, path) = temp_file("wrong.json", &yaml);
        let msg = Catalog::from_file(&path).unwrap_err().to_string();
        assert!(msg.starts_with(&format!("{}: ", path.display())), "{msg}");
        assert!(msg.contains("line 1, column 1"), "{msg}");

        let (_dir, path) = temp_file("extra.toml", "plans = []");
        let msg = Catalog::from_file(&path).unwrap_err().to_string();
        assert!(
            msg.ends_with("unsupported catalog file extension (use .json, .yaml or .yml)"),
            "{msg}"
        );

        let missing = std::env::temp_dir().join("kubenova-no-such-catalog.yaml");
        let err = Catalog::from_file(&missing).unwrap_err();
        assert!(matches!(err, CatalogError::Read { .. }), "{err}");
        assert!(
            err.to_string().contains("cannot read catalog file"),
            "{err}"
        );
    }

    #[test]
    fn bad_quantity_names_file_path_field_and_reason() {
        let json = r#"{
  "plans": [
    { "name": "a", "prices": PRICES },
    {
      "name": "b",
      "tenantQuotas": { "requests.cpu": "4 cores" },
      "prices": PRICES
    }
  ]
}"#
        .replace("PRICES", &prices_json().to_string());
        let (_dir, path) = temp_file("catalog.json", &json);
        let err = Catalog::builtin_with_overlay_file(&path).unwrap_err();
        let msg = err.to_string();
        assert_eq!(
            msg,
            format!(
                "{}: plans[1].tenantQuotas.\"requests.cpu\": invalid quantity \"4 cores\": must not contain whitespace (line 6, column 49)",
                path.display()
            )
        );
        match err {
            CatalogError::Parse { field, line, .. } => {
                assert_eq!(
                    field.as_deref(),
                    Some("plans[1].tenantQuotas.\"requests.cpu\"")
                );
                assert_eq!(line, Some(6));
            }
            other => panic!("{other:?}"),
        }

        // Same in YAML, with YAML's line numbers.
        let yaml = format!(
            "plans:\n- name: a\n  prices: {PRICES_YAML}\n- name: b\n  tenantQuotas:\n    requests.cpu: 4GB\n  prices: {PRICES_YAML}\n"
        );
        let msg = CatalogFile::from_str_with_format(&yaml, Format::Yaml)
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "<inline catalog>: plans[1].tenantQuotas.\"requests.cpu\": invalid quantity \"4GB\": unknown suffix \"GB\" (use Ki, Mi, Gi, Ti, Pi, Ei or n, u, m, k, M, G, T, P, E) (line 6, column 19)"
        );
    }

    #[test]
    fn unknown_policyset_is_reported_by_name() {
        let overlay = CatalogFile {
            plans: vec![Plan {
                policysets: vec!["tenant-isolation".into(), "gold-tier2".into()],
                ..Catalog::builtin_ref().plan("gold").unwrap().clone()
            }],
            policysets: vec![],
        };
        let err = Catalog::builtin().merged_with(overlay).unwrap_err();
        assert_eq!(
            err.to_string(),
            "plan \"gold\" references unknown policyset \"gold-tier2\""
        );
        let json = json!({"plans": [{"name": "gold", "prices": prices_json(),
                                     "policysets": ["gold-tier2"]}]})
        .to_string();
        let (_dir, path) = temp_file("catalog.json", &json);
        let msg = Catalog::builtin_with_overlay_file(&path)
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            format!(
                "{}: plan \"gold\" references unknown policyset \"gold-tier2\"",
                path.display()
            )
        );
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_path() {
        let cases = [
            (
                json!({"plans": [{"name": "a", "prices": prices_json(), "tenantQuota": {}}]}),
                "plans[0].tenantQuota: unknown field `tenantQuota`, expected one of",
            ),
            (json!({"plan": []}), "unknown field `plan`, expected "),
            (
                json!({"plans": [{"name": "a", "prices": {"currency": "USD", "cpuCoreHour": "1",
                    "memoryGibHour": "1", "storageGibHour": "1", "loadBalancerHour": "1", "tax": "1"}}]}),
                "plans[0].prices.tax: unknown field `tax`",
            ),
            (
                json!({"policysets": [{"name": "x", "rules": [{"kind": "networkIsolation", "allowDNS": true}]}]}),
                "policysets[0].rules[0]: unknown field `allowDNS`",
            ),
            (
                json!({"policysets": [{"name": "x", "rules": [{"kind": "firewall"}]}]}),
                "policysets[0].rules[0].kind: unknown variant `firewall`, expected one of ",
            ),
            (
                json!({"plans": [{"name": "a"}]}),
                "plans[0]: missing field `prices`",
            ),
            (
                json!({"plans": [{"name": "a", "prices": prices_json(), "namespaceQuota": -1}]}),
                "plans[0].namespaceQuota: invalid ",
            ),
            (
                json!({"plans": [{"name": "a", "prices": {"currency": "USD", "cpuCoreHour": "cheap",
                    "memoryGibHour": "1", "storageGibHour": "1", "loadBalancerHour": "1"}}]}),
                "plans[0].prices.cpuCoreHour: invalid decimal \"cheap\"",
            ),
        ];
        for (doc, want) in cases {
            let msg = Catalog::from_str_with_format(&doc.to_string(), Format::Json)
                .unwrap_err()
                .to_string();
            assert!(msg.starts_with("<inline catalog>: "), "{msg}");
            assert!(msg.contains(want), "{msg:?} should contain {want:?}");
            let yaml = serde_saphyr::to_string(&doc).unwrap();
            let msg = Catalog::from_str_with_format(&yaml, Format::Yaml)
                .unwrap_err()
                .to_string();
            assert!(msg.contains(want), "YAML: {msg:?} should contain {want:?}");
            if !want.starts_with("unknown field `plan`") {
                assert!(msg.contains("(line "), "YAML errors carry a line: {msg}");
            }
        }
    }

    #[test]
    fn bad_yaml_is_a_syntax_error_with_position() {
        let err = CatalogFile::from_str_with_format(
            "plans:\n  - name: a\n\tdescription: tab\n",
            Format::Yaml,
        )
        .unwrap_err();
        assert!(matches!(err, CatalogError::Parse { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.starts_with("<inline catalog>: "), "{msg}");
        // The parser stops where the tab breaks the scalar it was reading.
        assert!(msg.contains("found a tab (line 2, column 11)"), "{msg}");
        let msg = CatalogFile::from_str_with_format("plans: 5", Format::Yaml)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("plans: expected sequence start (line 1, column 8)"),
            "{msg}"
        );
        let msg = CatalogFile::from_str_with_format("{\"plans\": [] } x", Format::Json)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("trailing characters (line 1, column 16)"),
            "{msg}"
        );
    }

    #[test]
    fn validation_reports_every_problem_precisely() {
        let bad_plan = json!({
            "name": "Gold_Plan",
            "tenantQuotas": {
                "storage": "10Gi", "request.cpu": "1", "pods": "1500m",
                "requests.memory": "-1Gi", "count/deployments.apps": "10",
                "gold.storageclass.storage.k8s.io/requests.storage": "1Ti",
                "requests.nvidia.com/gpu": "2", "requests.hugepages-2Mi": "1Gi"
            },
            "namespaceQuota": 0,
            "limitRange": {
                "defaultRequest": { "cpu": "2" },
                "default": { "cpu": "1", "requests.memory": "1Gi" },
                "max": { "cpu": "500m" }
            },
            "prices": { "currency": "usd", "cpuCoreHour": "-0.01", "memoryGibHour": "0",
                        "storageGibHour": "0", "loadBalancerHour": "0" },
            "policysets": ["a", "a", "pod-security-baseline", "strict"]
        });
        let doc = json!({
            "plans": [bad_plan, {"name": "ok", "prices": prices_json()},
                      {"name": "ok", "prices": prices_json()}],
            "policysets": [
                {"name": "a", "rules": [
                    {"kind": "networkIsolation", "allowFromNamespaceLabels": [{}, {"bad key!": "x", "team": "no spaces"}]},
                    {"kind": "podSecurity", "level": "baseline", "version": "1.30"},
                    {"kind": "velaPolicy", "policyType": "Rollout", "spec": 3}
                ]},
                {"name": "strict", "rules": [{"kind": "podSecurity", "level": "restricted"}]}
            ]
        });
        let err = Catalog::builtin()
            .merged_with(serde_json::from_value(doc).unwrap())
            .unwrap_err();
        let problems = invalid_problems(err);
        let expected = [
            "duplicate plan name \"ok\" (plans[1] and plans[2])",
            "policyset \"a\": rules[0] (networkIsolation): allowFromNamespaceLabels[0]: an empty selector would allow every namespace; remove it",
            "policyset \"a\": rules[0] (networkIsolation): allowFromNamespaceLabels[1]: \"bad key!\" is not a valid label key",
            "policyset \"a\": rules[0] (networkIsolation): allowFromNamespaceLabels[1].team: \"no spaces\" is not a valid label value",
            "policyset \"a\": rules[1] (podSecurity): version \"1.30\" must be \"latest\" or \"v1.<minor>\", e.g. \"v1.30\"",
            "policyset \"a\": rules[2] (velaPolicy): policyType \"Rollout\" must be a DNS-1123 label",
            "policyset \"a\": rules[2] (velaPolicy): spec must be a JSON object",
            "plan \"Gold_Plan\": name must be a DNS-1123 label",
            "plan \"Gold_Plan\": tenantQuotas.pods: counts objects, so it must be a whole number (got 1500m)",
            "plan \"Gold_Plan\": tenantQuotas.\"request.cpu\": not a valid ResourceQuota resource name",
            "did you mean \"requests.cpu\"?",
            "plan \"Gold_Plan\": tenantQuotas.\"requests.memory\": must not be negative (got -1Gi)",
            "plan \"Gold_Plan\": tenantQuotas.storage: not a valid ResourceQuota resource name",
            "did you mean \"requests.storage\"?",
            "plan \"Gold_Plan\": namespaceQuota must be at least 1",
            "plan \"Gold_Plan\": limitRange.default.\"requests.memory\": not a valid container resource name",
            "LimitRange keys are per-container resources, did you mean \"memory\"?",
            "plan \"Gold_Plan\": limitRange.defaultRequest.cpu (2) exceeds limitRange.default.cpu (1)",
            "plan \"Gold_Plan\": limitRange.default.cpu (1) exceeds limitRange.max.cpu (500m)",
            "plan \"Gold_Plan\": limitRange.defaultRequest.cpu (2) exceeds limitRange.max.cpu (500m)",
            "plan \"Gold_Plan\": prices.currency \"usd\" must be an ISO-4217 code of 3 uppercase letters, e.g. \"USD\"",
            "plan \"Gold_Plan\": prices.cpuCoreHour must not be negative (got -0.01)",
            "plan \"Gold_Plan\": policyset \"a\" rules[2] (velaPolicy) adds policy type \"Rollout\", which the plan does not allow",
            "plan \"Gold_Plan\" lists policyset \"a\" more than once",
            "plan \"Gold_Plan\" has conflicting Pod Security levels: baseline from policyset \"a\" and restricted from policyset \"strict\"",
        ];
        for want in expected {
            assert!(
                problems.iter().any(|p| p.contains(want)),
                "missing {want:?} in:\n{}",
                problems.join("\n")
            );
        }
        // Nothing else: the valid quota keys above were accepted.
        assert_eq!(
            problems.len(),
            expected.len() - 3,
            "{}",
            problems.join("\n")
        );
    }

    #[test]
    fn module_doc_example_is_a_valid_overlay() {
        let doc = include_str!("catalog.rs");
        let start = doc.find("//! ```yaml\n").unwrap();
        let yaml: String = doc[start..]
            .lines()
            .skip(1)
            .take_while(|l| *l != "//! ```")
            .map(|l| format!("{}\n", l.strip_prefix("//! ").unwrap_or("")))
            .collect();
        let overlay = CatalogFile::from_str_with_format(&yaml, Format::Yaml).unwrap();
        let merged = Catalog::builtin().merged_with(overlay).unwrap();
        assert_eq!(merged.plan("gold").unwrap().prices.currency, "EUR");
    }

    #[test]
    fn catalog_map_keys_must_match_names() {
        let mut c = Catalog::builtin();
        let gold = c.plans.remove("gold").unwrap();
        c.plans.insert("golden".into(), gold);
        let problems = invalid_problems(c.validate().unwrap_err());
        assert_eq!(
            problems,
            ["plans key \"golden\" does not match plan name \"gold\""]
        );
    }

    #[test]
    fn error_display_with_several_problems() {
        let err = CatalogError::Invalid {
            origin: Some("x.yaml".into()),
            problems: vec!["one".into(), "two".into()],
        };
        assert_eq!(err.to_string(), "x.yaml: 2 problems: one; two");
    }

    #[test]
    fn numbers_are_accepted_for_quantities_and_prices() {
        let yaml = "plans:\n- name: n\n  tenantQuotas: { pods: 20, requests.cpu: 1.5 }\n  prices: { currency: USD, cpuCoreHour: 0.04, memoryGibHour: 1, storageGibHour: 0.0001, loadBalancerHour: 0.025 }\n";
        let c = Catalog::from_str_with_format(yaml, Format::Yaml).unwrap();
        let n = c.plan("n").unwrap();
        assert_eq!(n.tenant_quotas["requests.cpu"].as_str(), "1500m");
        assert_eq!(n.prices.cpu_core_hour.to_string(), "0.04");
        assert_eq!(n.prices.storage_gib_hour.to_string(), "0.0001");
    }

    #[test]
    fn openapi_schemas_have_examples() {
        use utoipa::PartialSchema;
        for schema in [
            Plan::schema(),
            PolicySet::schema(),
            Prices::schema(),
            LimitRangeDefaults::schema(),
        ] {
            let v = serde_json::to_value(schema).unwrap();
            assert!(
                v.get("example").is_some() || v.get("examples").is_some(),
                "{v}"
            );
        }
        let plan = serde_json::to_value(Plan::schema()).unwrap();
        assert_eq!(
            plan["properties"]["tenantQuotas"]["additionalProperties"]["$ref"],
            "#/components/schemas/Quantity"
        );
        assert_eq!(
            plan["properties"]["prices"]["$ref"],
            "#/components/schemas/Prices"
        );
        let prices = serde_json::to_value(Prices::schema()).unwrap();
        assert_eq!(prices["properties"]["cpuCoreHour"]["type"], "string");
        for schema in [
            Plan::schema(),
            PolicySet::schema(),
            PolicyRule::schema(),
            Prices::schema(),
            LimitRangeDefaults::schema(),
            PodSecurityLevel::schema(),
            Catalog::schema(),
            CatalogFile::schema(),
        ] {
            let v = serde_json::to_value(schema).unwrap();
            let d = v["description"].as_str().unwrap_or_default();
            assert!(
                !d.is_empty() && !d.contains("```"),
                "doc examples leak: {d}"
            );
        }
        // The schema example is itself a valid plan.
        let example: Plan = serde_json::from_value(plan["example"].clone()).unwrap();
        assert_eq!(example.name, "gold");
    }
}
