//! # kubenova-reconcile
//!
//! The in-cluster half of KubeNova: pure translations of NovaTenant / NovaProject /
//! NovaApp into Capsule Tenants, namespaces, RBAC and KubeVela Applications, the
//! kube-runtime controllers that apply them, the bootstrap installer and the usage
//! collector.
//!
//! This crate is being built (see `docs/src/status.md`); today it holds the shared
//! naming rules that keep generated object names collision-free.

pub use kubenova_api::model::{project_namespace, tenant_namespaces};

/// Field manager used for every server-side apply KubeNova performs.
pub const FIELD_MANAGER: &str = "kubenova-operator";
