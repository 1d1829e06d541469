//! The agent channel: wire types shared by the manager (server) and the operator
//! (client), and the translation of manager records into the Nova objects the operator
//! applies.
//!
//! The operator talks to the manager outbound-only, authenticated by its per-cluster
//! agent credential (`Authorization: Bearer kna_...`). The credential alone decides the
//! cluster: no agent route takes a cluster id, so an agent of cluster A has no way to
//! name anything of cluster B.
//!
//! | route | body → reply |
//! |---|---|
//! | `POST /api/v1/agent/heartbeat` | [`Heartbeat`] → [`HeartbeatReply`] (the first one is the hello) |
//! | `GET /api/v1/agent/desired?cursor=N&waitSeconds=S` | → [`DesiredState`] (long-poll) |
//! | `POST /api/v1/agent/status` | [`StatusReport`] → [`StatusReply`] |
//! | `POST /api/v1/agent/usage` | `[UsageRecord]` → 204 |
//!
//! ```
//! use kubenova_api::agent::{DesiredState, ObjectRef};
//! use kubenova_api::model::COMPONENTS;
//! // A delta that deletes one tenant: the operator finds the object by its id label.
//! let d: DesiredState = serde_json::from_str(
//!     r#"{"revision": 7, "snapshot": false, "deleted": [{"kind": "tenant", "id": "0190d7a0-0000-7000-8000-000000000001"}]}"#,
//! ).unwrap();
//! assert_eq!(d.deleted.len(), 1);
//! assert!(d.objects.is_empty());
//! # let _ = COMPONENTS;
//! ```

use crate::catalog::Catalog;
use crate::crd::{
    ContainerLimits, NovaApp, NovaAppComponent, NovaAppPolicy, NovaAppSpec, NovaAppTrait,
    NovaProject, NovaProjectSpec, NovaTenant, NovaTenantSpec, NovaWorkflow, NovaWorkflowStep,
};
use crate::model::{
    App, AppComponent, AppTrait, Capabilities, ClusterStatus, ComponentState, ObjectStatus,
    Project, ProxyEndpoint, Tenant,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Prefix of every agent credential; the rest is `<cluster id (simple)>_<secret>`.
pub const AGENT_TOKEN_PREFIX: &str = "kna_";
/// Label carrying the manager's record id on every Nova object the agent applies.
pub const LABEL_ID: &str = "kubenova.io/id";
/// Label marking Nova objects owned by the manager (pruned when the manager drops them).
pub const LABEL_SOURCE: &str = "kubenova.io/source";
/// Value of [`LABEL_SOURCE`].
pub const SOURCE_MANAGER: &str = "manager";
/// Field manager of the agent's server-side applies of Nova objects.
pub const AGENT_FIELD_MANAGER: &str = "kubenova-agent";
/// Name of the Secret (in `kubenova-system`) holding the agent credential and manager URL.
pub const AGENT_SECRET: &str = "kubenova-agent";
/// Key of the credential in [`AGENT_SECRET`].
pub const AGENT_SECRET_TOKEN_KEY: &str = "token";
/// Key of the manager URL in [`AGENT_SECRET`].
pub const AGENT_SECRET_URL_KEY: &str = "managerUrl";
/// Key of the manager CA bundle (PEM, optional) in [`AGENT_SECRET`].
pub const AGENT_SECRET_CA_KEY: &str = "managerCa";
/// ConfigMap (in `kubenova-system`) where the operator publishes the Capsule Proxy
/// endpoint when the manager cannot be reached.
pub const PROXY_CONFIGMAP: &str = "kubenova-capsule-proxy";

/// Kind of a desired object.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    /// NovaTenant.
    Tenant,
    /// NovaProject.
    Project,
    /// NovaApp.
    App,
}

/// Identifies a manager record (and through [`LABEL_ID`] its Nova object).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// Kind.
    pub kind: ObjectKind,
    /// Manager record id.
    pub id: Uuid,
}

/// The operator's hello and heartbeat (same body; the first one after start is the hello).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Heartbeat {
    /// Operator version.
    pub operator_version: String,
    /// Kubernetes server version (`gitVersion`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
    /// What is really served in the cluster.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// Install state of each component.
    #[serde(default)]
    pub components: Vec<ComponentState>,
    /// Capsule Proxy endpoint and CA, once Capsule Proxy is up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyEndpoint>,
    /// How the operator found the Capsule Proxy endpoint and its CA, or exactly why it
    /// could not (the manager shows it as the cluster's `CapsuleProxyDiscovered`
    /// condition and in the kubeconfig readiness of its capabilities).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_discovery: Option<ProxyDiscovery>,
    /// Last desired-state revision fully applied.
    #[serde(default)]
    pub applied_revision: i64,
}

/// How the operator discovered the Capsule Proxy endpoint and its CA.
///
/// ```
/// use kubenova_api::agent::ProxyDiscovery;
/// let d = ProxyDiscovery {
///     url_source: Some("Ingress capsule-system/capsule-proxy".into()),
///     ca_source: None,
///     problem: Some("Secret capsule-system/capsule-proxy has no CA".into()),
///     note: None,
/// };
/// let json = serde_json::to_value(&d).unwrap();
/// assert_eq!(json["urlSource"], "Ingress capsule-system/capsule-proxy");
/// assert!(json.get("caSource").is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyDiscovery {
    /// Where the URL came from, e.g. `Ingress capsule-system/capsule-proxy (host proxy.example.com)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_source: Option<String>,
    /// Where the CA came from, e.g. `Secret capsule-system/capsule-proxy key ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_source: Option<String>,
    /// Why no endpoint, or no CA, could be reported, and what to do about it; absent when
    /// both were found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// A caveat about an endpoint that was found, e.g. an in-cluster address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The manager's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatReply {
    /// The agent's cluster.
    pub cluster_id: Uuid,
    /// Cluster status after this heartbeat (`connected`).
    pub status: ClusterStatus,
    /// Send the next heartbeat within this many seconds; three missed intervals make
    /// the cluster `stale`.
    pub interval_seconds: u32,
    /// Current desired-state revision (a hint: long-poll if ahead of the agent's cursor).
    pub revision: i64,
}

/// One desired Nova object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DesiredObject {
    /// A NovaTenant.
    Tenant {
        /// Manager record id.
        id: Uuid,
        /// The object to apply.
        #[schema(value_type = Object)]
        object: Box<NovaTenant>,
    },
    /// A NovaProject.
    Project {
        /// Manager record id.
        id: Uuid,
        /// The object to apply.
        #[schema(value_type = Object)]
        object: Box<NovaProject>,
    },
    /// A NovaApp.
    App {
        /// Manager record id.
        id: Uuid,
        /// The object to apply.
        #[schema(value_type = Object)]
        object: Box<NovaApp>,
    },
}

impl DesiredObject {
    /// Kind and id.
    pub fn object_ref(&self) -> ObjectRef {
        match self {
            DesiredObject::Tenant { id, .. } => ObjectRef {
                kind: ObjectKind::Tenant,
                id: *id,
            },
            DesiredObject::Project { id, .. } => ObjectRef {
                kind: ObjectKind::Project,
                id: *id,
            },
            DesiredObject::App { id, .. } => ObjectRef {
                kind: ObjectKind::App,
                id: *id,
            },
        }
    }
}

/// A component (re)install the manager asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentRequest {
    /// One of [`crate::model::COMPONENTS`].
    pub component: String,
    /// Chart/app version to install, if pinned by the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Answer of the desired-state long-poll.
///
/// With `snapshot: true`, `objects` is the complete desired set at `revision`: the agent
/// applies it and prunes every manager-sourced Nova object not in it. Otherwise
/// `objects` and `deleted` are the changes after the agent's cursor. Either way the
/// agent's next cursor is `revision`. An answer with no objects, no deletions and the
/// same revision means the wait timed out without a change.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DesiredState {
    /// Revision this answer brings the agent to.
    pub revision: i64,
    /// Whether `objects` is the complete set.
    #[serde(default)]
    pub snapshot: bool,
    /// Objects to apply (tenants before projects before apps).
    #[serde(default)]
    pub objects: Vec<DesiredObject>,
    /// Records deleted since the cursor.
    #[serde(default)]
    pub deleted: Vec<ObjectRef>,
    /// Components the manager wants (re)installed.
    #[serde(default)]
    pub components: Vec<ComponentRequest>,
}

/// Observed status of one object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectReport {
    /// Kind.
    pub kind: ObjectKind,
    /// Manager record id (from [`LABEL_ID`]).
    pub id: Uuid,
    /// Phase, conditions and the desired revision the object reflects
    /// (`observedRevision`); a report older than the stored one is ignored.
    pub status: ObjectStatus,
    /// KubeVela `status.status` of an app's Application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vela_phase: Option<String>,
}

/// A batch of status reports.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatusReport {
    /// Reports, at most 1000 per batch.
    pub items: Vec<ObjectReport>,
}

/// What the manager did with a [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusReply {
    /// Reports stored.
    pub applied: u32,
    /// Reports ignored: unchanged, older than what is stored, or for records that no
    /// longer exist (deleted in the meantime).
    pub ignored: u32,
}

// ---------------------------------------------------------------------------------
// Records → Nova objects
// ---------------------------------------------------------------------------------

fn labels(id: Uuid) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_ID.to_string(), id.to_string()),
        (LABEL_SOURCE.to_string(), SOURCE_MANAGER.to_string()),
    ])
}

/// The NovaTenant for a tenant record: the effective quotas, limits and policysets are
/// spelled out (the plan's container request defaults and maxima come from `catalog`),
/// so the operator enforces exactly what the manager resolved.
pub fn nova_tenant(t: &Tenant, catalog: &Catalog) -> NovaTenant {
    let plan = catalog.plan(&t.plan);
    let limits = ContainerLimits {
        default: t.limits.clone(),
        default_request: plan
            .map(|p| p.limit_range.default_request.clone())
            .unwrap_or_default(),
        max: plan.map(|p| p.limit_range.max.clone()).unwrap_or_default(),
    };
    let mut o = NovaTenant::new(
        &t.name,
        NovaTenantSpec {
            plan: t.plan.clone(),
            owners: t.owners.clone(),
            labels: t.labels.clone(),
            quotas: Some(t.quotas.clone()),
            limits: Some(limits),
            policysets: Some(t.network_policies.clone()),
            ..NovaTenantSpec::default()
        },
    );
    o.metadata.labels = Some(labels(t.id.uuid()));
    o
}

/// The NovaProject for a project record, in its tenant's owner namespace.
pub fn nova_project(p: &Project, tenant: &Tenant) -> NovaProject {
    let mut o = NovaProject::new(
        &p.name,
        NovaProjectSpec {
            tenant: tenant.name.clone(),
            description: p.description.clone(),
            labels: p.labels.clone(),
            access: p.access.clone(),
            quota: None,
        },
    );
    o.metadata.namespace = Some(tenant.owner_namespace.clone());
    o.metadata.labels = Some(labels(p.id.uuid()));
    o
}

fn nova_trait(t: &AppTrait) -> NovaAppTrait {
    NovaAppTrait {
        type_: t.type_.clone(),
        properties: t.properties.clone(),
    }
}

fn nova_component(c: &AppComponent) -> NovaAppComponent {
    NovaAppComponent {
        name: c.name.clone(),
        type_: c.type_.clone(),
        properties: c.properties.clone(),
        traits: c.traits.iter().map(nova_trait).collect(),
        depends_on: c.depends_on.clone(),
    }
}

/// The NovaApp for an app record, in its project's namespace. The spec is the deployed
/// revision's when the app has been deployed, and `revision` asks the operator to run
/// that revision's workflow.
pub fn nova_app(a: &App, project: &Project, tenant: &Tenant) -> NovaApp {
    let spec = &a.spec;
    let mut o = NovaApp::new(
        &a.name,
        NovaAppSpec {
            tenant: tenant.name.clone(),
            project: project.name.clone(),
            description: spec.description.clone(),
            components: spec
                .effective_components()
                .iter()
                .map(nova_component)
                .collect(),
            traits: spec.traits.iter().map(nova_trait).collect(),
            policies: spec
                .policies
                .iter()
                .map(|p| NovaAppPolicy {
                    name: p.name.clone(),
                    type_: p.type_.clone(),
                    properties: p.properties.clone(),
                })
                .collect(),
            workflow: spec.workflow.as_ref().map(|w| NovaWorkflow {
                steps: w
                    .steps
                    .iter()
                    .map(|s| NovaWorkflowStep {
                        name: s.name.clone(),
                        type_: s.type_.clone(),
                        properties: s.properties.clone(),
                    })
                    .collect(),
            }),
            suspended: a.suspended,
            revision: a.deployed_revision.or(Some(a.revision)),
        },
    );
    o.metadata.namespace = Some(project.namespace.clone());
    o.metadata.labels = Some(labels(a.id.uuid()));
    o
}

/// Splits an agent credential `kna_<cluster id, 32 hex>_<secret>` into the cluster id
/// and the whole token; `None` when it does not have that shape.
pub fn parse_agent_token(token: &str) -> Option<Uuid> {
    let rest = token.strip_prefix(AGENT_TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    if id.len() != 32 || secret.len() < 32 {
        return None;
    }
    Uuid::try_parse(id).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn agent_tokens_name_their_cluster() {
        let id = Uuid::now_v7();
        let token = format!("{AGENT_TOKEN_PREFIX}{}_{}", id.simple(), "a".repeat(43));
        assert_eq!(parse_agent_token(&token), Some(id));
        assert_eq!(parse_agent_token("kna_short_x"), None);
        assert_eq!(
            parse_agent_token(&format!("knx_{}_{}", id.simple(), "a".repeat(43))),
            None
        );
        assert_eq!(
            parse_agent_token(&format!("kna_{}_{}", id.simple(), "a".repeat(5))),
            None
        );
    }

    #[test]
    fn desired_objects_round_trip_with_their_kind() {
        let o = DesiredObject::Tenant {
            id: Uuid::nil(),
            object: Box::new(NovaTenant::new(
                "acme",
                NovaTenantSpec {
                    plan: "gold".into(),
                    ..Default::default()
                },
            )),
        };
        let v = serde_json::to_value(&o).unwrap();
        assert_eq!(v["kind"], "tenant");
        assert_eq!(v["object"]["kind"], "NovaTenant");
        let back: DesiredObject = serde_json::from_value(v).unwrap();
        assert_eq!(back, o);
        assert_eq!(
            back.object_ref(),
            ObjectRef {
                kind: ObjectKind::Tenant,
                id: Uuid::nil()
            }
        );
    }
}
