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
//! | `GET /api/v1/agent/requests?waitSeconds=S` | → [`AgentRequests`] (long-poll of the logs and events requests) |
//! | `POST /api/v1/agent/answers` | [`AgentAnswer`] → [`AnswerReply`] |
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
    App, AppComponent, AppEvent, AppTrait, Capabilities, ClusterStatus, ComponentState, LogLine,
    ObjectStatus, PodLog, Project, ProxyEndpoint, Tenant,
};
use crate::validate::{ValidationError, Validator};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Prefix of every agent credential; the rest is `<cluster id (simple)>_<secret>`.
pub const AGENT_TOKEN_PREFIX: &str = "kna_";
/// Label carrying the manager's record id on every Nova object the agent applies.
pub const LABEL_ID: &str = "kubenova.io/id";
/// Annotation on a desired Nova object holding the W3C `traceparent` of the API write
/// that produced it (when the manager exports traces): the operator's apply and reconcile
/// of that object continue the same trace.
pub const ANNOTATION_TRACEPARENT: &str = "kubenova.io/traceparent";
/// Longest `traceparent` value carried (version 00 is 55 bytes; later versions may add
/// fields).
pub const MAX_TRACEPARENT_BYTES: usize = 128;
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
/// ConfigMap (in `kubenova-system`) where the operator keeps the usage hours it could not
/// send yet, so that they survive a restart (key [`USAGE_CONFIGMAP_KEY`], a JSON array of
/// [`UsageRecord`](crate::model::UsageRecord)s).
pub const USAGE_CONFIGMAP: &str = "kubenova-usage-buffer";
/// Key of the buffered records in [`USAGE_CONFIGMAP`].
pub const USAGE_CONFIGMAP_KEY: &str = "records.json";

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
    /// Ids of the component requests ([`ComponentRequest::id`]) the operator has taken
    /// (handed to its installer). The manager keeps a request, and its `requested` /
    /// `installing` state, until its id is listed here. Left out by operators that do not
    /// acknowledge: their report then replaces a delivered request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_requests: Option<Vec<Uuid>>,
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

/// The trace annotation ([`ANNOTATION_TRACEPARENT`]) of a Nova object's metadata, if any.
pub fn traceparent_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<&str> {
    meta.annotations
        .as_ref()?
        .get(ANNOTATION_TRACEPARENT)
        .map(String::as_str)
}

impl DesiredObject {
    /// Marks the object with the trace of the write that produced it
    /// ([`ANNOTATION_TRACEPARENT`]); a value that is not a plausible W3C `traceparent`
    /// (printable ASCII, at most [`MAX_TRACEPARENT_BYTES`]) is not carried.
    ///
    /// ```
    /// use kubenova_api::agent::{ANNOTATION_TRACEPARENT, DesiredObject};
    /// use kubenova_api::crd::{NovaTenant, NovaTenantSpec};
    /// let mut o = DesiredObject::Tenant {
    ///     id: uuid::Uuid::nil(),
    ///     object: Box::new(NovaTenant::new("acme", NovaTenantSpec::default())),
    /// };
    /// let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    /// o.set_traceparent(tp);
    /// assert_eq!(o.traceparent(), Some(tp));
    /// o.set_traceparent("not\na traceparent");
    /// assert_eq!(o.traceparent(), Some(tp));
    /// ```
    pub fn set_traceparent(&mut self, traceparent: &str) {
        if traceparent.is_empty()
            || traceparent.len() > MAX_TRACEPARENT_BYTES
            || !traceparent.bytes().all(|b| b.is_ascii_graphic())
        {
            return;
        }
        self.meta_mut()
            .annotations
            .get_or_insert_with(Default::default)
            .insert(ANNOTATION_TRACEPARENT.to_string(), traceparent.to_string());
    }

    /// The trace annotation ([`ANNOTATION_TRACEPARENT`]), if any.
    pub fn traceparent(&self) -> Option<&str> {
        traceparent_of(match self {
            DesiredObject::Tenant { object, .. } => &object.metadata,
            DesiredObject::Project { object, .. } => &object.metadata,
            DesiredObject::App { object, .. } => &object.metadata,
        })
    }

    fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            DesiredObject::Tenant { object, .. } => &mut object.metadata,
            DesiredObject::Project { object, .. } => &mut object.metadata,
            DesiredObject::App { object, .. } => &mut object.metadata,
        }
    }

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
    /// Request id. The manager sends the request on every desired answer until a
    /// heartbeat lists this id in `acknowledgedRequests`; absent from older managers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
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

/// Largest status or condition message, and component message, in bytes. Longer text is
/// cut with [`bound_text`]: by the operator before it sends, and again by the manager
/// when it stores, so one verbose object never holds back the reports of the others.
pub const MAX_STATUS_MESSAGE_BYTES: usize = 4096;
/// Largest condition reason or type, and `velaPhase`, in bytes.
pub const MAX_STATUS_WORD_BYTES: usize = 128;
/// Most conditions kept per reported object.
pub const MAX_CONDITIONS: usize = 64;

impl ObjectReport {
    /// The report within the bounds the manager stores: messages cut to
    /// [`MAX_STATUS_MESSAGE_BYTES`], reasons, types and `velaPhase` to
    /// [`MAX_STATUS_WORD_BYTES`], at most [`MAX_CONDITIONS`] conditions. Returns whether
    /// anything was cut.
    ///
    /// ```
    /// use kubenova_api::agent::{ObjectKind, ObjectReport, MAX_STATUS_MESSAGE_BYTES};
    /// use kubenova_api::model::{ObjectStatus, Phase};
    /// let mut r = ObjectReport {
    ///     kind: ObjectKind::App,
    ///     id: uuid::Uuid::nil(),
    ///     status: ObjectStatus { phase: Phase::Degraded, conditions: vec![], observed_revision: Some(3), message: "x".repeat(100_000) },
    ///     vela_phase: None,
    /// };
    /// assert!(r.bound());
    /// assert!(r.status.message.len() <= MAX_STATUS_MESSAGE_BYTES);
    /// assert!(!r.bound(), "bounding twice changes nothing");
    /// ```
    pub fn bound(&mut self) -> bool {
        let mut cut = false;
        let mut clip = |text: &mut String, max: usize| {
            if text.len() > max {
                *text = bound_text(text, max);
                cut = true;
            }
        };
        clip(&mut self.status.message, MAX_STATUS_MESSAGE_BYTES);
        if let Some(p) = &mut self.vela_phase {
            clip(p, MAX_STATUS_WORD_BYTES);
        }
        for c in &mut self.status.conditions {
            clip(&mut c.message, MAX_STATUS_MESSAGE_BYTES);
            clip(&mut c.reason, MAX_STATUS_WORD_BYTES);
            clip(&mut c.type_, MAX_STATUS_WORD_BYTES);
        }
        if self.status.conditions.len() > MAX_CONDITIONS {
            self.status.conditions.truncate(MAX_CONDITIONS);
            cut = true;
        }
        cut
    }
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
// Logs and events through the channel
// ---------------------------------------------------------------------------------

/// Default `tailLines` of a logs request that names neither `tailLines` nor `sinceSeconds`.
pub const DEFAULT_TAIL_LINES: u32 = 100;
/// Largest `tailLines` (per pod).
pub const MAX_TAIL_LINES: u32 = 5000;
/// Largest `sinceSeconds` (7 days).
pub const MAX_SINCE_SECONDS: u64 = 7 * 24 * 3600;
/// Largest log line text, in bytes; longer lines are cut at the source ([`bound_text`]).
pub const MAX_LOG_LINE_BYTES: usize = 8 * 1024;
/// Most lines in one answer (the newest are kept).
pub const MAX_ANSWER_LINES: usize = 5000;
/// Most pods whose logs one request reads (the oldest pods first, by creation).
pub const MAX_LOG_PODS: usize = 10;
/// Most events in one answer (the newest are kept).
pub const MAX_EVENTS: usize = 500;
/// Largest event message, in bytes (cut at the source).
pub const MAX_EVENT_MESSAGE_BYTES: usize = 2048;
/// Largest short text of an answer (reason, source, kind, message, error), in bytes.
pub const MAX_ANSWER_TEXT_BYTES: usize = 4096;
/// Largest serialized answer (one `POST /api/v1/agent/answers` body), in bytes: under the
/// manager's default body limit of 1 MiB. The operator drops the oldest lines or events
/// of an answer until it fits.
pub const MAX_ANSWER_BYTES: usize = 768 * 1024;
/// How long a followed log streams at most.
pub const FOLLOW_SECONDS: u32 = 300;
/// Most answer bytes (serialized) one followed log carries over its whole life.
pub const MAX_FOLLOW_BYTES: usize = 8 * 1024 * 1024;
/// Longest Kubernetes name carried in an answer (pods, containers, objects).
pub const MAX_NAME_BYTES: usize = 253;

/// What a relayed request asks the operator for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum AgentRequestKind {
    /// The log of a component's pods ([`LogQuery`]).
    Logs,
    /// The Kubernetes Events of the app's pods, workloads, Application and NovaApp.
    Events,
}

impl AgentRequestKind {
    /// `logs` or `events`.
    pub fn as_str(&self) -> &'static str {
        match self {
            AgentRequestKind::Logs => "logs",
            AgentRequestKind::Events => "events",
        }
    }
}

/// What to read of a component's log (the parameters of `pods/log`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogQuery {
    /// The component (pods labelled `app.oam.dev/component=<component>`).
    pub component: String,
    /// The container; default: the pod's `kubectl.kubernetes.io/default-container`, else
    /// its first container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Lines from the end of each pod's log (at most [`MAX_TAIL_LINES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail_lines: Option<u32>,
    /// Only lines of the last this many seconds (at most [`MAX_SINCE_SECONDS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_seconds: Option<u64>,
    /// The previous (terminated) instance of the container.
    #[serde(default)]
    pub previous: bool,
    /// Keep streaming new lines for `followSeconds`.
    #[serde(default)]
    pub follow: bool,
    /// How long a follow streams at most (set by the manager, at most [`FOLLOW_SECONDS`]).
    #[serde(default)]
    pub follow_seconds: u32,
}

/// A request the manager relays to a cluster's operator. Everything that says *where* to
/// read comes from the manager's records: the namespace is the app's project namespace,
/// never anything a user sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"id": "77777777-7777-4777-8777-777777777777", "kind": "logs",
    "appId": "44444444-4444-4444-4444-444444444444", "app": "web", "namespace": "acme-shop-1a2b3c4d",
    "components": ["web"], "logs": {"component": "web", "tailLines": 100, "previous": false, "follow": false, "followSeconds": 0}}))]
pub struct AgentRequest {
    /// Request id (random); the answer names it.
    pub id: Uuid,
    /// What is asked for.
    pub kind: AgentRequestKind,
    /// The app's record id: its NovaApp carries it in [`LABEL_ID`].
    pub app_id: Uuid,
    /// The app's name: its NovaApp and KubeVela Application are named so, and KubeVela
    /// labels its workloads and pods `app.oam.dev/name=<app>`.
    pub app: String,
    /// The app's project namespace, from the manager's project record.
    pub namespace: String,
    /// The app's component names (KubeVela names each workload after its component).
    #[serde(default)]
    pub components: Vec<String>,
    /// For [`AgentRequestKind::Logs`]: what to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<LogQuery>,
}

/// Answer of the requests long-poll: the requests of the agent's cluster not handed over
/// yet (each is handed over once).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentRequests {
    /// The requests, oldest first.
    pub requests: Vec<AgentRequest>,
}

/// An answer that could not be given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnswerError {
    /// The request parameter that was wrong (`container`), when the request itself was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What went wrong.
    pub message: String,
}

/// Why a followed log ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum FollowEnd {
    /// Every followed container stopped (or its pod went away).
    Ended,
    /// `followSeconds` passed.
    Deadline,
    /// [`MAX_FOLLOW_BYTES`] were sent.
    Limit,
    /// The cluster failed (the message says how).
    Error,
}

/// One answer (or, for a followed log, one chunk of the answer) to an [`AgentRequest`].
///
/// A request that is not followed gets one answer with `done: true`. A followed log gets
/// chunks numbered from 0 (`seq`): the first one names the pods, the following ones carry
/// the new lines, and the last one has `done: true` and `end`. A chunk with nothing in it
/// and `done: false` only asks whether the request is still wanted.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"requestId": "77777777-7777-4777-8777-777777777777", "seq": 0, "done": true,
    "pods": [{"pod": "web-6d8f7c9b5-x2x7q", "container": "web", "lines": 1}],
    "lines": [{"time": "2026-01-01T00:00:01.5Z", "pod": "web-6d8f7c9b5-x2x7q", "container": "web", "text": "listening on :8080"}],
    "truncated": false}))]
pub struct AgentAnswer {
    /// The request answered.
    pub request_id: Uuid,
    /// Chunk number, from 0.
    #[serde(default)]
    pub seq: u32,
    /// The last chunk.
    #[serde(default)]
    pub done: bool,
    /// Logs: the pods read (in the first chunk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<Vec<PodLog>>,
    /// Logs: lines, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<LogLine>,
    /// Events: the events, oldest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<AppEvent>>,
    /// Whether something was left out to keep the answer bounded.
    #[serde(default)]
    pub truncated: bool,
    /// A remark for the user (e.g. that there are no pods).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Why there is no answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<AnswerError>,
    /// Followed logs, with `done`: why the stream ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<FollowEnd>,
}

impl AgentAnswer {
    /// An empty answer (chunk `seq`) to `request`.
    pub fn new(request: Uuid, seq: u32) -> Self {
        Self {
            request_id: request,
            seq,
            ..Self::default()
        }
    }

    /// Whether the chunk carries nothing but its number (a "still wanted?" probe).
    pub fn is_probe(&self) -> bool {
        !self.done
            && self.pods.is_none()
            && self.lines.is_empty()
            && self.events.is_none()
            && self.message.is_empty()
            && self.error.is_none()
            && self.end.is_none()
    }

    /// Checks the bounds the manager holds every answer to (what the operator bounds at
    /// the source): lines, pods, events and every text. Nothing of an answer that fails
    /// is stored.
    ///
    /// ```
    /// use kubenova_api::agent::{AgentAnswer, MAX_LOG_LINE_BYTES};
    /// use kubenova_api::model::LogLine;
    /// let mut a = AgentAnswer::new(uuid::Uuid::nil(), 0);
    /// a.lines.push(LogLine { time: None, pod: "web-1".into(), container: "web".into(), text: "x".repeat(MAX_LOG_LINE_BYTES + 1) });
    /// let err = a.check().unwrap_err();
    /// assert_eq!(err.violations[0].field, "lines[0].text");
    /// ```
    pub fn check(&self) -> Result<(), ValidationError> {
        let mut v = Validator::new();
        let bytes = |v: &mut Validator, field: String, s: &str, max: usize| {
            if s.len() > max {
                v.push(
                    field,
                    format!("must be at most {max} bytes (got {})", s.len()),
                );
            }
        };
        if self.lines.len() > MAX_ANSWER_LINES {
            v.push(
                "lines",
                format!(
                    "must contain at most {MAX_ANSWER_LINES} lines (got {})",
                    self.lines.len()
                ),
            );
        } else {
            for (i, l) in self.lines.iter().enumerate() {
                bytes(
                    &mut v,
                    format!("lines[{i}].text"),
                    &l.text,
                    MAX_LOG_LINE_BYTES,
                );
                bytes(&mut v, format!("lines[{i}].pod"), &l.pod, MAX_NAME_BYTES);
                bytes(
                    &mut v,
                    format!("lines[{i}].container"),
                    &l.container,
                    MAX_NAME_BYTES,
                );
            }
        }
        if let Some(pods) = &self.pods {
            if pods.len() > MAX_LOG_PODS {
                v.push(
                    "pods",
                    format!(
                        "must contain at most {MAX_LOG_PODS} pods (got {})",
                        pods.len()
                    ),
                );
            } else {
                for (i, p) in pods.iter().enumerate() {
                    bytes(&mut v, format!("pods[{i}].pod"), &p.pod, MAX_NAME_BYTES);
                    bytes(
                        &mut v,
                        format!("pods[{i}].container"),
                        &p.container,
                        MAX_NAME_BYTES,
                    );
                    if let Some(e) = &p.error {
                        bytes(&mut v, format!("pods[{i}].error"), e, MAX_ANSWER_TEXT_BYTES);
                    }
                }
            }
        }
        if let Some(events) = &self.events {
            if events.len() > MAX_EVENTS {
                v.push(
                    "events",
                    format!(
                        "must contain at most {MAX_EVENTS} events (got {})",
                        events.len()
                    ),
                );
            } else {
                for (i, e) in events.iter().enumerate() {
                    bytes(
                        &mut v,
                        format!("events[{i}].message"),
                        &e.message,
                        MAX_EVENT_MESSAGE_BYTES,
                    );
                    for (f, s) in [
                        ("type", &e.type_),
                        ("reason", &e.reason),
                        ("source", &e.source),
                    ] {
                        bytes(&mut v, format!("events[{i}].{f}"), s, MAX_NAME_BYTES);
                    }
                    bytes(
                        &mut v,
                        format!("events[{i}].object.kind"),
                        &e.object.kind,
                        MAX_NAME_BYTES,
                    );
                    bytes(
                        &mut v,
                        format!("events[{i}].object.name"),
                        &e.object.name,
                        MAX_NAME_BYTES,
                    );
                }
            }
        }
        bytes(
            &mut v,
            "message".into(),
            &self.message,
            MAX_ANSWER_TEXT_BYTES,
        );
        if let Some(e) = &self.error {
            bytes(
                &mut v,
                "error.message".into(),
                &e.message,
                MAX_ANSWER_TEXT_BYTES,
            );
            if let Some(f) = &e.field {
                bytes(&mut v, "error.field".into(), f, 64);
            }
        }
        v.finish()
    }
}

/// What the manager did with an [`AgentAnswer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnswerReply {
    /// Whether the chunk was new (a resent chunk is acknowledged, not stored again).
    pub stored: bool,
    /// Stop following: the request reached [`MAX_FOLLOW_BYTES`] (the stream is ended).
    pub stop: bool,
}

/// Marker appended to text cut by [`bound_text`].
fn cut_marker(cut: usize) -> String {
    format!("… [{cut} bytes cut]")
}

/// `text` cut to at most `max` bytes (on a character boundary), ending with
/// `… [N bytes cut]` when something was cut; unchanged when it fits.
///
/// ```
/// use kubenova_api::agent::bound_text;
/// assert_eq!(bound_text("short", 100), "short");
/// let cut = bound_text(&"é".repeat(100), 40);
/// assert!(cut.len() <= 40 && cut.ends_with("bytes cut]"));
/// ```
pub fn bound_text(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    bound_parts(text, text.len(), max)
}

/// Like [`bound_text`] for a text of which only the first part is at hand: `head` is the
/// beginning of a text of `total` bytes (a log line read without keeping all of it).
pub fn bound_parts(head: &str, total: usize, max: usize) -> String {
    let total = total.max(head.len());
    if total <= max {
        return head.to_string();
    }
    // The marker's length depends on the count it shows; size it for the largest.
    let room = max.saturating_sub(cut_marker(total).len());
    let mut end = room.min(head.len());
    while end > 0 && !head.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = head[..end].to_string();
    out.push_str(&cut_marker(total - end));
    if out.len() > max {
        // `max` is smaller than the marker itself: keep what fits of the marker.
        let mut end = max;
        while end > 0 && !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
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
    #[test]
    fn bound_text_cuts_on_character_boundaries_and_says_how_much() {
        assert_eq!(bound_text("", 10), "");
        assert_eq!(bound_text("exactly10!", 10), "exactly10!");
        for max in [0, 1, 5, 19, 20, 21, 40, 100, 1000] {
            for text in ["a".repeat(5000), "é".repeat(3000), "日本".repeat(900)] {
                let out = bound_text(&text, max);
                assert!(out.len() <= max, "{max}: {} bytes", out.len());
                if max >= 40 {
                    let cut = text.len() - out.find('…').unwrap();
                    assert!(out.ends_with(&format!("… [{cut} bytes cut]")), "{out}");
                    assert!(text.starts_with(&out[..out.find('…').unwrap()]));
                }
            }
        }
        // Only the head of a long line was kept: the count is of the whole line.
        let out = bound_parts(&"x".repeat(100), 1_000_000, 60);
        assert!(out.len() <= 60);
        assert!(out.ends_with("bytes cut]"), "{out}");
        let kept = out.find('…').unwrap();
        assert!(out.contains(&format!("[{} bytes cut]", 1_000_000 - kept)));
        assert_eq!(bound_parts("abc", 3, 10), "abc");
    }

    fn line(text: &str) -> LogLine {
        LogLine {
            time: None,
            pod: "web-1".into(),
            container: "web".into(),
            text: text.into(),
        }
    }

    #[test]
    fn answers_are_held_to_their_bounds() {
        let id = Uuid::nil();
        let mut ok = AgentAnswer::new(id, 0);
        ok.lines = vec![line(&"x".repeat(MAX_LOG_LINE_BYTES)); MAX_ANSWER_LINES];
        ok.pods = Some(vec![
            PodLog {
                pod: "p".repeat(MAX_NAME_BYTES),
                container: "web".into(),
                lines: 1,
                error: Some("e".repeat(MAX_ANSWER_TEXT_BYTES)),
            };
            MAX_LOG_PODS
        ]);
        assert!(ok.check().is_ok());
        assert!(!ok.is_probe());
        assert!(AgentAnswer::new(id, 3).is_probe());

        let fields = |a: &AgentAnswer| -> Vec<String> {
            a.check()
                .unwrap_err()
                .violations
                .into_iter()
                .map(|v| v.field)
                .collect()
        };
        let mut a = AgentAnswer::new(id, 0);
        a.lines = vec![line("x"); MAX_ANSWER_LINES + 1];
        assert_eq!(fields(&a), ["lines"]);
        let mut a = AgentAnswer::new(id, 0);
        a.lines = vec![line("ok"), line(&"x".repeat(MAX_LOG_LINE_BYTES + 1))];
        assert_eq!(fields(&a), ["lines[1].text"]);
        let mut a = AgentAnswer::new(id, 0);
        a.pods = Some(vec![
            PodLog {
                pod: "p".into(),
                container: "c".into(),
                lines: 0,
                error: None
            };
            MAX_LOG_PODS + 1
        ]);
        assert_eq!(fields(&a), ["pods"]);
        let event = AppEvent {
            type_: "Warning".into(),
            reason: "BackOff".into(),
            message: "m".repeat(MAX_EVENT_MESSAGE_BYTES + 1),
            object: crate::model::EventObject {
                kind: "Pod".into(),
                name: "web-1".into(),
            },
            count: 1,
            first_time: None,
            last_time: None,
            source: "kubelet".into(),
        };
        let mut a = AgentAnswer::new(id, 0);
        a.events = Some(vec![event.clone()]);
        assert_eq!(fields(&a), ["events[0].message"]);
        a.events = Some(vec![
            AppEvent {
                message: "fine".into(),
                ..event
            };
            MAX_EVENTS + 1
        ]);
        assert_eq!(fields(&a), ["events"]);
        let mut a = AgentAnswer::new(id, 0);
        a.message = "m".repeat(MAX_ANSWER_TEXT_BYTES + 1);
        a.error = Some(AnswerError {
            field: Some("f".repeat(65)),
            message: "e".repeat(MAX_ANSWER_TEXT_BYTES + 1),
        });
        assert_eq!(fields(&a), ["message", "error.message", "error.field"]);
    }

    #[test]
    fn requests_and_answers_round_trip() {
        let r = AgentRequest {
            id: Uuid::new_v4(),
            kind: AgentRequestKind::Logs,
            app_id: Uuid::nil(),
            app: "web".into(),
            namespace: "acme-shop-1a2b3c4d".into(),
            components: vec!["web".into()],
            logs: Some(LogQuery {
                component: "web".into(),
                tail_lines: Some(10),
                ..LogQuery::default()
            }),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["kind"], "logs");
        assert_eq!(v["logs"]["tailLines"], 10);
        assert_eq!(serde_json::from_value::<AgentRequest>(v).unwrap(), r);
        let mut a = AgentAnswer::new(r.id, 2);
        a.done = true;
        a.end = Some(FollowEnd::Deadline);
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(v["end"], "deadline");
        assert!(v.get("lines").is_none());
        assert_eq!(serde_json::from_value::<AgentAnswer>(v).unwrap(), a);
    }
}
