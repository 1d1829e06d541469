//! # kubenova-reconcile
//!
//! The in-cluster half of KubeNova. Today: **pure, sans-IO translations** of the Nova
//! custom resources ([`kubenova_api::crd`]) into the objects the operator applies, the
//! status mapping back, the generated CRD manifests and an offline [`render`].
//!
//! | input | output |
//! |---|---|
//! | [`NovaTenant`] + [`Catalog`] | Capsule `Tenant` (`capsule.clastix.io/v1beta2`) and the owner/apps `Namespace`s ([`translate_tenant`]) |
//! | [`NovaProject`] + its tenant's [`PodSecurity`] ([`tenant_pod_security`]) | its `Namespace`, the app `ServiceAccount` ([`APP_SERVICE_ACCOUNT`]) and its two `RoleBinding`s, one `RoleBinding` per role, optional `ResourceQuota` ([`translate_project`]) |
//! | [`NovaApp`] | KubeVela `Application` (`core.oam.dev/v1beta1`) ([`translate_app`]) |
//! | Capsule / KubeVela status | [`Verdict`] → [`NovaStatus`] without timestamp churn ([`next_status`]) |
//!
//! The translations do not talk to a cluster: every function takes values and returns
//! values, and refuses invalid input as a whole ([`TranslateError`]) so that a bad object
//! never reaches a half-applied state. The kube-runtime controllers that apply them live
//! in [`controller`].
//!
//! ```
//! use kubenova_api::catalog::Catalog;
//! let yaml = "apiVersion: kubenova.io/v1alpha1\nkind: NovaTenant\nmetadata: {name: acme}\nspec: {plan: gold, owners: [alice@example.com]}\n";
//! let out = kubenova_reconcile::render(yaml, Catalog::builtin_ref()).unwrap();
//! assert!(out.contains("kind: Tenant"));
//! assert!(out.contains("name: acme-owner"));
//! ```
//!
//! [`NovaTenant`]: kubenova_api::crd::NovaTenant
//! [`NovaProject`]: kubenova_api::crd::NovaProject
//! [`NovaApp`]: kubenova_api::crd::NovaApp
//! [`NovaStatus`]: kubenova_api::crd::NovaStatus
//! [`Catalog`]: kubenova_api::catalog::Catalog

pub mod agent;
mod app;
pub mod bootstrap;
pub mod components;
pub mod controller;
pub mod crds;
mod error;
pub mod leader;
pub mod manifests;
mod meta;
mod project;
mod render;
pub mod status;
mod tenant;
pub mod usage;

pub use app::{SUSPEND_STEP, app_identity, app_rules, translate_app};
pub use error::TranslateError;
pub use kubenova_api::model::{project_namespace, tenant_namespaces};
pub use manifests::{APP_DEPLOYER_ROLE, APP_SERVICE_ACCOUNT};
pub use meta::*;
pub use project::{ProjectObjects, translate_project};
pub use render::{RenderError, render};
pub use status::{Verdict, merge_conditions, next_status};
pub use tenant::{PodSecurity, TenantObjects, tenant_pod_security, translate_tenant};

/// Field manager used for every server-side apply KubeNova performs.
pub const FIELD_MANAGER: &str = "kubenova-operator";
