//! Label, annotation and naming conventions shared by the translations.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;

/// Capsule's tenant label on namespaces.
pub const LABEL_CAPSULE_TENANT: &str = "capsule.clastix.io/tenant";
/// KubeNova's tenant label.
pub const LABEL_TENANT: &str = "kubenova.io/tenant";
/// KubeNova's project label.
pub const LABEL_PROJECT: &str = "kubenova.io/project";
/// KubeNova's app label.
pub const LABEL_APP: &str = "kubenova.io/app";
/// Role of a tenant namespace: `owner`, `apps` or `project`.
pub const LABEL_NAMESPACE_ROLE: &str = "kubenova.io/namespace-role";
/// Standard managed-by label.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`].
pub const MANAGED_BY: &str = "kubenova-operator";
/// Pod Security admission: enforced level.
pub const LABEL_PSA_ENFORCE: &str = "pod-security.kubernetes.io/enforce";
/// Pod Security admission: version of the enforced level.
pub const LABEL_PSA_ENFORCE_VERSION: &str = "pod-security.kubernetes.io/enforce-version";
/// Annotation naming the Nova object that owns a generated object when an owner
/// reference is impossible (cross-namespace or namespaced → cluster-scoped). Every
/// namespace the operator creates carries it, written by server-side apply as field
/// manager [`FIELD_MANAGER`](crate::FIELD_MANAGER): an existing namespace is adopted only
/// when that manager owns this annotation with the expected value (and no other Capsule
/// Tenant owns the namespace), never on labels alone.
pub const ANNOTATION_OWNER: &str = "kubenova.io/owner";
/// Annotation carrying the app revision.
pub const ANNOTATION_REVISION: &str = "kubenova.io/revision";
/// Annotation marking a suspended app.
pub const ANNOTATION_SUSPENDED: &str = "kubenova.io/suspended";
/// KubeVela's publish-version annotation: the workflow re-runs only when it changes.
pub const ANNOTATION_VELA_PUBLISH_VERSION: &str = "app.oam.dev/publishVersion";
/// API group of the RBAC subjects `User` and `Group`.
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// The [`ANNOTATION_OWNER`] value of a tenant's namespaces, e.g.
/// `novatenants.kubenova.io/acme`.
pub fn tenant_owner_annotation(tenant: &str) -> String {
    format!("novatenants.kubenova.io/{tenant}")
}

/// The [`ANNOTATION_OWNER`] value of a project's objects (its namespace among them), e.g.
/// `novaprojects.kubenova.io/acme-owner/web` (the NovaProject's namespace and name).
pub fn project_owner_annotation(tenant: &str, project: &str) -> String {
    format!(
        "novaprojects.kubenova.io/{}/{project}",
        kubenova_api::model::tenant_namespaces(tenant).0
    )
}

/// The group a tenant-scoped credential carries, e.g. `kubenova:tenant:acme:owner`
/// (same format as `kubenova_kubeconfig::tenant_group`).
pub fn tenant_group(tenant: &str, role: &str) -> String {
    format!("kubenova:tenant:{tenant}:{role}")
}

/// The group a project-scoped credential carries, e.g. `kubenova:project:acme:web:viewer`
/// (same format as `kubenova_kubeconfig::project_group`).
pub fn project_group(tenant: &str, project: &str, role: &str) -> String {
    format!("kubenova:project:{tenant}:{project}:{role}")
}

/// An owner reference to `owner`, or `None` when it has no uid yet (offline render).
pub(crate) fn owner_ref<K: Resource<DynamicType = ()>>(
    owner: &K,
    controller: bool,
) -> Option<OwnerReference> {
    let meta = owner.meta();
    Some(OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: meta.name.clone()?,
        uid: meta.uid.clone()?,
        controller: Some(controller),
        block_owner_deletion: Some(true),
    })
}
