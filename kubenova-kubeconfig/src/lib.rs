//! # kubenova-kubeconfig
//!
//! Kubeconfig model and issuance: typed kubeconfigs pointing at a cluster's Capsule
//! Proxy with its CA (never `insecure-skip-tls-verify`), manager-signed ES256 tokens
//! with tenant/project groups, exec-credential refresh and ServiceAccount TokenRequest
//! mode.
//!
//! This crate is being built (see `docs/src/status.md`); today it holds the group
//! naming scheme shared by the manager and the operator.

use kubenova_api::model::AccessRole;

/// The group a tenant-scoped credential carries, e.g. `kubenova:tenant:acme:owner`.
///
/// ```
/// use kubenova_api::model::AccessRole;
/// assert_eq!(kubenova_kubeconfig::tenant_group("acme", AccessRole::Owner), "kubenova:tenant:acme:owner");
/// ```
pub fn tenant_group(tenant: &str, role: AccessRole) -> String {
    format!("kubenova:tenant:{tenant}:{}", role.as_str())
}

/// The group a project-scoped credential carries, e.g. `kubenova:project:acme:web:developer`.
///
/// ```
/// use kubenova_api::model::AccessRole;
/// assert_eq!(
///     kubenova_kubeconfig::project_group("acme", "web", AccessRole::Viewer),
///     "kubenova:project:acme:web:viewer"
/// );
/// ```
pub fn project_group(tenant: &str, project: &str, role: AccessRole) -> String {
    format!("kubenova:project:{tenant}:{project}:{}", role.as_str())
}
