//! # kubenova-api
//!
//! The KubeNova API model: the wire and domain types shared by the manager, the
//! operator, the store and the Python bindings; the KN error catalog; input
//! validation (DNS-1123 names, Kubernetes quantities, labels, bounded sizes); label
//! selectors; and the plans/policysets catalog.
//!
//! This crate has no database, HTTP server or cluster client in its dependencies, so it
//! can be embedded anywhere.
//!
//! ```
//! use kubenova_api::model::TenantSpec;
//! use kubenova_api::validate::Validate;
//!
//! let spec: TenantSpec = serde_json::from_value(serde_json::json!({
//!     "name": "acme",
//!     "owners": ["alice@example.com"],
//!     "plan": "baseline"
//! })).unwrap();
//! assert!(spec.validate().is_ok());
//! ```

#[cfg(feature = "crd")]
pub mod agent;
pub mod apprules;
pub mod catalog;
#[cfg(feature = "crd")]
pub mod crd;
pub mod error;
pub mod identity;
pub mod ids;
pub mod model;
pub mod quantity;
pub mod selector;
pub mod validate;

pub use error::{ErrorBody, ErrorCode, KnError};
pub use ids::{AppId, AuditId, ClusterId, ProjectId, RunId, TenantId};
pub use quantity::Quantity;
