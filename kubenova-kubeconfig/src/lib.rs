//! # kubenova-kubeconfig
//!
//! Kubeconfig model and issuance for KubeNova: typed kubeconfigs pointing at a cluster's
//! Capsule Proxy with its CA (never `insecure-skip-tls-verify`), manager-signed ES256
//! tokens carrying exactly one tenant or project group (and, bounded, the subject's other
//! groups, never a `system:` or `kubenova:` one), exec-credential refresh and
//! ServiceAccount TokenRequest mode. The crate does no HTTP serving and keeps no state
//! besides the in-memory [`KeySet`]; the manager stores keys (envelope-encrypted), serves
//! the discovery documents and records issuances.
//!
//! ```
//! use kubenova_api::model::AccessRole;
//! use kubenova_kubeconfig::{Claims, KeySet, TokenSpec};
//! use time::{Duration, OffsetDateTime};
//!
//! let now = OffsetDateTime::now_utc();
//! let keys = KeySet::generate(now)?;
//! let spec = TokenSpec {
//!     issuer: "https://manager.example.com".into(),
//!     audience: "kubenova:cluster:prod".into(),
//!     subject: "alice@example.com".into(),
//!     tenant: "acme".into(),
//!     project: None,
//!     role: AccessRole::Owner,
//!     ttl: Duration::hours(1),
//!     extra_groups: vec!["acme-admins".into()],
//! };
//! let claims = Claims::new(&spec, now, Duration::hours(24))?;
//! let token = keys.issue(&claims)?;
//! let back = keys.verify(&token, "kubenova:cluster:prod")?;
//! assert_eq!(back.groups, ["kubenova:tenant:acme:owner", "acme-admins"]);
//! # Ok::<(), kubenova_kubeconfig::Error>(())
//! ```

mod error;
mod exec;
mod kubeconfig;
mod service_account;
mod token;

pub use error::{Error, Result};
pub use exec::{ExecCredential, ExecCredentialStatus};
pub use kubeconfig::{
    Credential, EXEC_API_VERSION, EXEC_COMMAND, KubeconfigExt, KubeconfigRequest, ProxyCa,
    entry_name, exec_config, exec_config_for_cluster,
};
pub use service_account::{
    MAX_EXPIRATION_SECONDS, MIN_EXPIRATION_SECONDS, ServiceAccountKubeconfig,
    ServiceAccountKubeconfigRequest, service_account_kubeconfig,
};
pub use token::{
    ALGORITHM, CarriedGroups, Claims, DEFAULT_TTL, JWKS_PATH, KeySet, MAX_EXTRA_GROUPS,
    MAX_EXTRA_GROUPS_BYTES, MAX_GROUP_LEN, OPENID_CONFIGURATION_PATH, OpenIdConfiguration,
    SigningKey, TokenSpec, carried_groups, openid_configuration,
    openid_configuration_with_jwks_path,
};

/// Re-exported so callers name the same types this crate builds.
pub use kube::config::Kubeconfig;

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
