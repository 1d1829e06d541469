//! The set of served resource types: built-in kinds and registered CRDs.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::error::{ApiError, ApiResult, Cause};

/// How objects of a resource type are validated.
#[derive(Debug, Clone)]
pub enum SchemaSource {
    /// No validation beyond metadata checks.
    None,
    /// One of the embedded Kubernetes strict JSON schema files (file name).
    Builtin(&'static str),
    /// A definition of the embedded `_definitions.json` (its `$defs` key), for built-in
    /// kinds without a kind file of their own. The definitions are as strict as the kind
    /// files (`additionalProperties: false`, `apiVersion` and `kind` pinned by `enum`).
    BuiltinDefinition(&'static str),
    /// A CRD `openAPIV3Schema`.
    Crd(Arc<Value>),
}

/// A served resource type (one group/version/plural).
#[derive(Debug, Clone)]
pub struct ResourceType {
    /// API group, empty for core.
    pub group: String,
    /// Version.
    pub version: String,
    /// Kind.
    pub kind: String,
    /// Plural resource name.
    pub plural: String,
    /// Singular resource name.
    pub singular: String,
    /// Namespaced or cluster scoped.
    pub namespaced: bool,
    /// Short names.
    pub short_names: Vec<String>,
    /// Has a `status` subresource.
    pub status_subresource: bool,
    /// Validation.
    pub schema: SchemaSource,
    /// Is this a CRD-defined type.
    pub custom: bool,
    /// Storage version (objects are stored once per group/plural).
    pub storage_version: String,
}

impl ResourceType {
    /// `group/version` or `version` for core.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Verbs served for the main resource.
    pub fn verbs(&self) -> Vec<&'static str> {
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    namespaced: bool,
    short: &[&str],
    status: bool,
    schema: Option<&'static str>,
) -> ResourceType {
    ResourceType {
        group: group.into(),
        version: version.into(),
        kind: kind.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        namespaced,
        short_names: short.iter().map(|s| (*s).to_owned()).collect(),
        status_subresource: status,
        schema: schema.map_or(SchemaSource::None, SchemaSource::Builtin),
        custom: false,
        storage_version: version.into(),
    }
}

/// `t` validated against the `_definitions.json` definition `name`.
fn definition(t: ResourceType, name: &'static str) -> ResourceType {
    ResourceType {
        schema: SchemaSource::BuiltinDefinition(name),
        ..t
    }
}

/// The built-in kinds served by the emulator.
pub fn builtins() -> Vec<ResourceType> {
    vec![
        builtin(
            "",
            "v1",
            "Namespace",
            "namespaces",
            false,
            &["ns"],
            true,
            Some("namespace-v1.json"),
        ),
        builtin("", "v1", "Node", "nodes", false, &["no"], true, None),
        builtin(
            "",
            "v1",
            "ServiceAccount",
            "serviceaccounts",
            true,
            &["sa"],
            false,
            Some("serviceaccount-v1.json"),
        ),
        builtin(
            "",
            "v1",
            "Secret",
            "secrets",
            true,
            &[],
            false,
            Some("secret-v1.json"),
        ),
        definition(
            builtin(
                "",
                "v1",
                "ConfigMap",
                "configmaps",
                true,
                &["cm"],
                false,
                None,
            ),
            "io.k8s.api.core.v1.ConfigMap",
        ),
        builtin(
            "",
            "v1",
            "ResourceQuota",
            "resourcequotas",
            true,
            &["quota"],
            true,
            Some("resourcequota-v1.json"),
        ),
        builtin(
            "",
            "v1",
            "LimitRange",
            "limitranges",
            true,
            &["limits"],
            false,
            Some("limitrange-v1.json"),
        ),
        builtin("", "v1", "Event", "events", true, &["ev"], false, None),
        definition(
            builtin("", "v1", "Service", "services", true, &["svc"], true, None),
            "io.k8s.api.core.v1.Service",
        ),
        builtin("", "v1", "Pod", "pods", true, &["po"], true, None),
        definition(
            builtin(
                "",
                "v1",
                "PersistentVolumeClaim",
                "persistentvolumeclaims",
                true,
                &["pvc"],
                true,
                None,
            ),
            "io.k8s.api.core.v1.PersistentVolumeClaim",
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "Role",
            "roles",
            true,
            &[],
            false,
            Some("role-rbac-v1.json"),
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            true,
            &[],
            false,
            Some("rolebinding-rbac-v1.json"),
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            false,
            &[],
            false,
            Some("clusterrole-rbac-v1.json"),
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            false,
            &[],
            false,
            Some("clusterrolebinding-rbac-v1.json"),
        ),
        builtin(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
            true,
            &["netpol"],
            false,
            Some("networkpolicy-networking-v1.json"),
        ),
        // Kinds Helm charts commonly carry, validated against the 1.36 definitions.
        definition(
            builtin(
                "policy",
                "v1",
                "PodDisruptionBudget",
                "poddisruptionbudgets",
                true,
                &["pdb"],
                true,
                None,
            ),
            "io.k8s.api.policy.v1.PodDisruptionBudget",
        ),
        definition(
            builtin(
                "autoscaling",
                "v2",
                "HorizontalPodAutoscaler",
                "horizontalpodautoscalers",
                true,
                &["hpa"],
                true,
                None,
            ),
            "io.k8s.api.autoscaling.v2.HorizontalPodAutoscaler",
        ),
        definition(
            builtin("batch", "v1", "Job", "jobs", true, &[], true, None),
            "io.k8s.api.batch.v1.Job",
        ),
        definition(
            builtin(
                "apps",
                "v1",
                "ReplicaSet",
                "replicasets",
                true,
                &["rs"],
                true,
                None,
            ),
            "io.k8s.api.apps.v1.ReplicaSet",
        ),
        definition(
            builtin(
                "apps",
                "v1",
                "StatefulSet",
                "statefulsets",
                true,
                &["sts"],
                true,
                None,
            ),
            "io.k8s.api.apps.v1.StatefulSet",
        ),
        definition(
            builtin(
                "networking.k8s.io",
                "v1",
                "Ingress",
                "ingresses",
                true,
                &["ing"],
                true,
                None,
            ),
            "io.k8s.api.networking.v1.Ingress",
        ),
        builtin(
            "apps",
            "v1",
            "Deployment",
            "deployments",
            true,
            &["deploy"],
            true,
            Some("deployment-apps-v1.json"),
        ),
        builtin(
            "coordination.k8s.io",
            "v1",
            "Lease",
            "leases",
            true,
            &[],
            false,
            Some("lease-coordination-v1.json"),
        ),
        builtin(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
            &["crd", "crds"],
            true,
            None,
        ),
        definition(
            builtin(
                "admissionregistration.k8s.io",
                "v1",
                "ValidatingAdmissionPolicy",
                "validatingadmissionpolicies",
                false,
                &[],
                true,
                None,
            ),
            "io.k8s.api.admissionregistration.v1.ValidatingAdmissionPolicy",
        ),
        definition(
            builtin(
                "admissionregistration.k8s.io",
                "v1",
                "ValidatingAdmissionPolicyBinding",
                "validatingadmissionpolicybindings",
                false,
                &[],
                false,
                None,
            ),
            "io.k8s.api.admissionregistration.v1.ValidatingAdmissionPolicyBinding",
        ),
        builtin(
            "events.k8s.io",
            "v1",
            "Event",
            "events",
            true,
            &["ev"],
            false,
            None,
        ),
    ]
}

/// All served types, indexed by (group, version, plural).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    types: BTreeMap<(String, String, String), Arc<ResourceType>>,
    /// Group preferred version, in registration order of versions.
    groups: BTreeMap<String, Vec<String>>,
}

impl Registry {
    /// Registry with the built-in kinds.
    pub fn with_builtins() -> Self {
        let mut r = Self::default();
        for t in builtins() {
            r.insert(t);
        }
        r
    }

    /// Inserts (or replaces) a type.
    pub fn insert(&mut self, t: ResourceType) {
        let versions = self.groups.entry(t.group.clone()).or_default();
        if !versions.contains(&t.version) {
            versions.push(t.version.clone());
        }
        self.types.insert(
            (t.group.clone(), t.version.clone(), t.plural.clone()),
            Arc::new(t),
        );
    }

    /// Removes all versions of `group/plural`.
    pub fn remove(&mut self, group: &str, plural: &str) {
        self.types
            .retain(|(g, _, p), _| !(g == group && p == plural));
        let remaining: Vec<String> = self
            .types
            .keys()
            .filter(|(g, _, _)| g == group)
            .map(|(_, v, _)| v.clone())
            .collect();
        if remaining.is_empty() {
            self.groups.remove(group);
        } else if let Some(vs) = self.groups.get_mut(group) {
            vs.retain(|v| remaining.contains(v));
        }
    }

    /// Looks a type up.
    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types
            .get(&(group.to_owned(), version.to_owned(), plural.to_owned()))
            .cloned()
    }

    /// Looks a type up by group + kind (any version; first match).
    pub fn by_kind(&self, group: &str, version: &str, kind: &str) -> Option<Arc<ResourceType>> {
        self.types
            .values()
            .find(|t| t.group == group && t.version == version && t.kind == kind)
            .cloned()
    }

    /// All types of a group/version.
    pub fn resources(&self, group: &str, version: &str) -> Vec<Arc<ResourceType>> {
        self.types
            .values()
            .filter(|t| t.group == group && t.version == version)
            .cloned()
            .collect()
    }

    /// Groups (excluding core) and their versions; the first version is preferred.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        self.groups
            .iter()
            .filter(|(g, _)| !g.is_empty())
            .map(|(g, vs)| (g.clone(), vs.clone()))
            .collect()
    }

    /// Whether group/version is served at all.
    pub fn has_group_version(&self, group: &str, version: &str) -> bool {
        self.groups
            .get(group)
            .is_some_and(|vs| vs.iter().any(|v| v == version))
    }

    /// All types.
    pub fn all(&self) -> Vec<Arc<ResourceType>> {
        self.types.values().cloned().collect()
    }
}

/// Parses a `CustomResourceDefinition` object into the served types it defines.
pub fn types_from_crd(crd: &Value) -> ApiResult<Vec<ResourceType>> {
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let invalid = |field: &str, msg: &str| {
        ApiError::invalid(
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            &name,
            vec![Cause::new("FieldValueRequired", msg, field)],
        )
    };
    let spec = crd
        .get("spec")
        .ok_or_else(|| invalid("spec", "Required value"))?;
    let s = |p: &str| {
        spec.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let group = s("/group");
    let plural = s("/names/plural");
    let kind = s("/names/kind");
    if group.is_empty() {
        return Err(invalid("spec.group", "Required value"));
    }
    if plural.is_empty() {
        return Err(invalid("spec.names.plural", "Required value"));
    }
    if kind.is_empty() {
        return Err(invalid("spec.names.kind", "Required value"));
    }
    if name != format!("{plural}.{group}") {
        return Err(ApiError::invalid(
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            &name,
            vec![Cause::new(
                "FieldValueInvalid",
                format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
                "metadata.name",
            )],
        ));
    }
    let singular = {
        let v = s("/names/singular");
        if v.is_empty() { kind.to_lowercase() } else { v }
    };
    let namespaced = s("/scope") != "Cluster";
    let short_names: Vec<String> = spec
        .pointer("/names/shortNames")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            invalid(
                "spec.versions",
                "Required value: must have exactly one version marked as storage version",
            )
        })?;
    let storage_version = versions
        .iter()
        .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .and_then(|v| v.get("name").and_then(Value::as_str))
        .unwrap_or_default()
        .to_owned();
    let mut out = Vec::new();
    for v in versions {
        if v.get("served").and_then(Value::as_bool) != Some(true) {
            continue;
        }
        let vname = v.get("name").and_then(Value::as_str).unwrap_or_default();
        let status_subresource = v.pointer("/subresources/status").is_some()
            || spec.pointer("/subresources/status").is_some();
        let schema = v
            .pointer("/schema/openAPIV3Schema")
            .or_else(|| spec.pointer("/validation/openAPIV3Schema"))
            .cloned()
            .map_or(SchemaSource::None, |s| SchemaSource::Crd(Arc::new(s)));
        out.push(ResourceType {
            group: group.clone(),
            version: vname.to_owned(),
            kind: kind.clone(),
            plural: plural.clone(),
            singular: singular.clone(),
            namespaced,
            short_names: short_names.clone(),
            status_subresource,
            schema,
            custom: true,
            storage_version: if storage_version.is_empty() {
                vname.to_owned()
            } else {
                storage_version.clone()
            },
        });
    }
    Ok(out)
}
