//! The operator's **agent loop**: the outbound-only channel from the cluster to the
//! manager (`../shared/design.md` §3, wire types in [`kubenova_api::agent`]).
//!
//! [`run`] drives five concurrent loops until shutdown:
//!
//! | loop | what it does |
//! |---|---|
//! | desired state | long-polls `GET /api/v1/agent/desired?cursor=N` and server-side applies the NovaTenant/NovaProject/NovaApp it gets (field manager [`AGENT_FIELD_MANAGER`], forced; tenants, then projects, then apps), labelled [`LABEL_ID`] + [`LABEL_SOURCE`]`=manager` and annotated [`ANNOTATION_DESIRED_REVISION`]. A snapshot prunes every manager-sourced Nova object it does not name (never an object without `kubenova.io/source=manager`); a delta deletes what it lists, found by its id label (apps, then projects, then tenants). An object whose namespace does not exist yet (a NovaProject before its tenant's `<tenant>-owner`) is kept **pending** and retried, without holding back the rest. |
//! | status | watches the manager-sourced Nova objects (and the KubeVela Applications of apps) and posts [`ObjectReport`]s: phase, conditions, message and `observedRevision` (the annotation above, so it survives restarts). Only changes are sent, debounced (~200 ms) and batched (≤ 1000); unsent reports are kept while the manager is unreachable and sent on reconnect. After a restart the current state is sent once. |
//! | requests | long-polls `GET /api/v1/agent/requests` for the logs and events of apps the manager's users ask for, reads them in the app's project namespace only (after checking that it holds the app's NovaApp) and posts the answers (`POST /api/v1/agent/answers`); a followed log streams chunks of new lines until it ends, its time passes, or the manager no longer wants it. Everything is bounded at the source (see [`answer_request`]). |
//! | heartbeat | posts a [`Heartbeat`] (the first is the hello) at the interval the manager returns: operator and Kubernetes versions, capabilities and component states observed in the cluster ([`crate::components`]), the Capsule Proxy endpoint + CA, the last fully applied revision. When the manager cannot be reached, the proxy endpoint is published in the ConfigMap [`PROXY_CONFIGMAP`] instead. |
//! | usage | samples what every tenant and project uses ([`crate::usage`]) every [`AgentConfig::usage_sample_interval`] and posts each UTC hour's records (`POST /api/v1/agent/usage`), idempotent per (cluster, tenant, project, hour); unsent hours are kept, bounded, in the ConfigMap [`USAGE_CONFIGMAP`] across restarts; [`UsageTrigger`] collects and reports on demand. |
//!
//! Failures are retried with exponential backoff and jitter ([`AgentConfig::backoff_min`]
//! to [`AgentConfig::backoff_max`]); a refused credential (401/403) is logged as such and
//! retried every [`AgentConfig::auth_retry`]. The desired loop keeps its cursor on any
//! error, so nothing is skipped; nothing in the cluster is deleted because the manager is
//! unreachable, and the controllers keep reconciling what is there. Re-applying a
//! snapshot is idempotent (server-side apply by name), so a restart (cursor 0) or a
//! reconnect never creates duplicates. Every [`AgentConfig::resync_interval`] the loop
//! asks for a full snapshot again, which repairs drift and prunes leftovers.
//!
//! ```no_run
//! # async fn demo(client: kube::Client) -> Result<(), kubenova_reconcile::agent::AgentError> {
//! use kubenova_reconcile::agent::{self, AgentConfig};
//! let config = AgentConfig::from_secret(&client, agent::DEFAULT_NAMESPACE).await?;
//! let (stop, shutdown) = tokio::sync::watch::channel(false);
//! let task = tokio::spawn(agent::run(client, config, shutdown));
//! // ... on SIGTERM:
//! stop.send(true).ok();
//! task.await.ok();
//! # Ok(()) }
//! ```
//!
//! [`ObjectReport`]: kubenova_api::agent::ObjectReport
//! [`Heartbeat`]: kubenova_api::agent::Heartbeat
//! [`AGENT_FIELD_MANAGER`]: kubenova_api::agent::AGENT_FIELD_MANAGER
//! [`LABEL_ID`]: kubenova_api::agent::LABEL_ID
//! [`LABEL_SOURCE`]: kubenova_api::agent::LABEL_SOURCE
//! [`PROXY_CONFIGMAP`]: kubenova_api::agent::PROXY_CONFIGMAP
//! [`USAGE_CONFIGMAP`]: kubenova_api::agent::USAGE_CONFIGMAP

mod client;
mod desired;
mod heartbeat;
mod requests;
mod status;
mod usage;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use kubenova_api::agent::{
    AGENT_SECRET, AGENT_SECRET_CA_KEY, AGENT_SECRET_TOKEN_KEY, AGENT_SECRET_URL_KEY,
    ComponentRequest, MAX_STATUS_MESSAGE_BYTES, bound_text,
};
use kubenova_api::model::ComponentState;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rand::Rng as _;
use tokio::sync::{Notify, mpsc, watch};

pub use crate::leader::Fence;

pub use client::{AgentClient, AgentError, RetryClass};
pub use heartbeat::{PROXY_CONFIGMAP_CA_KEY, PROXY_CONFIGMAP_URL_KEY, ProxyFound, discover_proxy};
pub use requests::{
    ANNOTATION_DEFAULT_CONTAINER, LABEL_APP_COMPONENT, LABEL_APP_NAME, answer_request,
};
pub use status::object_report;
pub use usage::{USAGE_BATCH, UsageTrigger, collect_inventory};

/// Namespace of the operator, its agent Secret and the proxy ConfigMap.
pub const DEFAULT_NAMESPACE: &str = "kubenova-system";
/// Annotation the agent puts on every Nova object it applies: the desired-state revision
/// of that apply, reported back as `observedRevision`.
pub const ANNOTATION_DESIRED_REVISION: &str = "kubenova.io/desired-revision";
/// Namespace of Capsule Proxy's Service and CA Secret.
pub const CAPSULE_PROXY_NAMESPACE: &str = "capsule-system";
/// Name of Capsule Proxy's Service.
pub const CAPSULE_PROXY_SERVICE: &str = "capsule-proxy";
/// Name of the Secret holding Capsule Proxy's serving certificate and its CA (key
/// `ca.crt` from cert-manager, or `ca` from the chart's certgen job): the chart's default,
/// and the only Secret the operator may read there.
pub const CAPSULE_PROXY_SECRET: &str = "capsule-proxy";
/// Port of Capsule Proxy when its Service names none.
pub const CAPSULE_PROXY_PORT: i32 = 9001;
/// Annotation on the `capsule-proxy` Service giving its externally reachable URL.
pub const ANNOTATION_PROXY_URL: &str = "kubenova.io/proxy-url";
/// Largest status batch per request.
pub const MAX_BATCH: usize = 1000;

/// Install states the operator knows better than observation can tell (`installing`,
/// `failed` with a message, `requested`); shared with the component installer, which
/// calls [`ComponentStates::set`]. Ready / absent are always observed. Also holds the ids
/// of the component requests the installer has taken ([`ComponentStates::acknowledge`]),
/// which the heartbeat acknowledges to the manager.
///
/// ```
/// use kubenova_api::model::{ComponentPhase, ComponentState};
/// use kubenova_reconcile::agent::ComponentStates;
/// let states = ComponentStates::default();
/// states.set(ComponentState { name: "capsule".into(), version: None, phase: ComponentPhase::Installing, message: String::new(), request_id: None });
/// assert_eq!(states.get("capsule").unwrap().phase, ComponentPhase::Installing);
/// let id = uuid::Uuid::new_v4();
/// states.acknowledge(id);
/// assert_eq!(states.acknowledged(), vec![id]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ComponentStates {
    states: Arc<Mutex<BTreeMap<String, ComponentState>>>,
    acks: Arc<Mutex<std::collections::VecDeque<uuid::Uuid>>>,
}

/// How many acknowledged request ids the heartbeat repeats (the newest). The manager
/// needs an id only once; a few are kept so a lost heartbeat does not lose the ack.
pub const MAX_ACKNOWLEDGED: usize = 64;

impl ComponentStates {
    /// Records the latest state of a component.
    pub fn set(&self, mut state: ComponentState) {
        // Messages come from installer output: keep them within the heartbeat's bound.
        if state.message.len() > MAX_STATUS_MESSAGE_BYTES {
            state.message = bound_text(&state.message, MAX_STATUS_MESSAGE_BYTES);
        }
        // Request ids are the manager's; the operator never reports one.
        state.request_id = None;
        let mut m = self.states.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(state.name.clone(), state);
    }

    /// The latest recorded state of `name`.
    pub fn get(&self, name: &str) -> Option<ComponentState> {
        let m = self.states.lock().unwrap_or_else(|e| e.into_inner());
        m.get(name).cloned()
    }

    /// Records that the component request `id` has been taken (its state is recorded
    /// first, so the acknowledging heartbeat also carries it). Keeps the newest
    /// [`MAX_ACKNOWLEDGED`].
    pub fn acknowledge(&self, id: uuid::Uuid) {
        let mut a = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        if !a.contains(&id) {
            a.push_back(id);
        }
        while a.len() > MAX_ACKNOWLEDGED {
            a.pop_front();
        }
    }

    /// Whether the request `id` has been taken.
    pub fn is_acknowledged(&self, id: uuid::Uuid) -> bool {
        let a = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        a.contains(&id)
    }

    /// The acknowledged request ids, oldest first.
    pub fn acknowledged(&self) -> Vec<uuid::Uuid> {
        let a = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        a.iter().copied().collect()
    }
}

/// Configuration of the agent loop.
///
/// ```
/// use std::time::Duration;
/// use kubenova_reconcile::agent::AgentConfig;
/// let mut c = AgentConfig::new("https://manager.example.com", "kna_secret");
/// c.poll_wait = Duration::from_secs(10);
/// assert_eq!(c.namespace, "kubenova-system");
/// assert!(!format!("{c:?}").contains("kna_secret"));
/// ```
#[derive(Clone)]
pub struct AgentConfig {
    /// Manager base URL (`https://...`; `http://` only for loopback).
    pub manager_url: String,
    /// The per-cluster agent credential (never logged).
    pub token: String,
    /// Extra CA (PEM) trusted for the manager, on top of the public roots.
    pub ca_pem: Option<String>,
    /// Namespace of the operator (`kubenova-system`): where the proxy ConfigMap goes.
    pub namespace: String,
    /// Externally reachable Capsule Proxy URL; overrides the Service annotation
    /// [`ANNOTATION_PROXY_URL`] and the in-cluster URL.
    pub proxy_url: Option<String>,
    /// `waitSeconds` of the desired-state long-poll (whole seconds, 1 to 60).
    pub poll_wait: Duration,
    /// First retry delay.
    pub backoff_min: Duration,
    /// Largest retry delay (before jitter).
    pub backoff_max: Duration,
    /// Retry delay after the manager refused the credential (401/403).
    pub auth_retry: Duration,
    /// Heartbeat interval until the manager names one.
    pub heartbeat_interval: Duration,
    /// How long status changes are collected before a report is sent.
    pub status_debounce: Duration,
    /// First retry delay of a pending object (doubles up to `backoff_max`).
    pub pending_retry: Duration,
    /// How often a full snapshot is requested again (drift repair, pruning).
    pub resync_interval: Duration,
    /// Version of the operator, sent in the heartbeat.
    pub operator_version: String,
    /// Install states from the component installer.
    pub component_states: ComponentStates,
    /// Where component (re)install requests from the manager go; `None` = logged and
    /// ignored.
    pub component_requests: Option<mpsc::UnboundedSender<ComponentRequest>>,
    /// Counters.
    pub metrics: Arc<AgentMetrics>,
    /// How often usage is sampled (default 5 minutes); zero turns usage collection off.
    pub usage_sample_interval: Duration,
    /// When set, the hour so far is also reported at this interval (each report is
    /// replaced by the next and by the hour's final record); default: only ended hours
    /// (and on demand).
    pub usage_report_interval: Option<Duration>,
    /// Most bytes of unsent usage kept in the ConfigMap
    /// [`USAGE_CONFIGMAP`](kubenova_api::agent::USAGE_CONFIGMAP) (default 900 KiB, under
    /// the 1 MiB limit of a ConfigMap); the oldest hours are dropped first.
    pub usage_buffer_max_bytes: usize,
    /// Collects and reports usage on demand.
    pub usage_trigger: UsageTrigger,
    /// Leader-only writes stop when this closes: the operator passes
    /// [`Fence::leading`] of its elector, so a deposed leader sends no new Nova object
    /// apply or delete and no ConfigMap write (default: [`Fence::open`], never closes).
    /// The desired-state loop also treats the shutdown signal of [`run`] as closing it.
    pub fence: Fence,
}

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("manager_url", &self.manager_url)
            .field("token", &"<redacted>")
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .field("namespace", &self.namespace)
            .field("proxy_url", &self.proxy_url)
            .field("poll_wait", &self.poll_wait)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("auth_retry", &self.auth_retry)
            .field("resync_interval", &self.resync_interval)
            .field("operator_version", &self.operator_version)
            .finish_non_exhaustive()
    }
}

impl AgentConfig {
    /// A configuration with the defaults: namespace `kubenova-system`, 30 s long-poll,
    /// backoff 500 ms → 30 s, credential retry 60 s, 200 ms debounce, resync every 15 min.
    pub fn new(manager_url: impl Into<String>, token: impl Into<String>) -> AgentConfig {
        AgentConfig {
            manager_url: manager_url.into(),
            token: token.into(),
            ca_pem: None,
            namespace: DEFAULT_NAMESPACE.into(),
            proxy_url: None,
            poll_wait: Duration::from_secs(30),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            auth_retry: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(30),
            status_debounce: Duration::from_millis(200),
            pending_retry: Duration::from_secs(1),
            resync_interval: Duration::from_secs(15 * 60),
            operator_version: env!("CARGO_PKG_VERSION").into(),
            component_states: ComponentStates::default(),
            component_requests: None,
            metrics: Arc::new(AgentMetrics::default()),
            usage_sample_interval: Duration::from_secs(300),
            usage_report_interval: None,
            usage_buffer_max_bytes: 900 * 1024,
            usage_trigger: UsageTrigger::default(),
            fence: Fence::open(),
        }
    }

    /// Reads the manager URL, the credential and the optional CA from the Secret
    /// [`AGENT_SECRET`] in `namespace` (keys [`AGENT_SECRET_URL_KEY`],
    /// [`AGENT_SECRET_TOKEN_KEY`], [`AGENT_SECRET_CA_KEY`]); everything else defaults as
    /// in [`AgentConfig::new`].
    pub async fn from_secret(client: &Client, namespace: &str) -> Result<AgentConfig, AgentError> {
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let secret = api
            .get_opt(AGENT_SECRET)
            .await
            .map_err(|e| {
                AgentError::Config(format!(
                    "reading Secret {namespace}/{AGENT_SECRET}: {e}"
                ))
            })?
            .ok_or_else(|| {
                AgentError::Config(format!(
                    "Secret {namespace}/{AGENT_SECRET} does not exist; run the operator bootstrap from the manager"
                ))
            })?;
        let data = secret.data.unwrap_or_default();
        let get = |key: &str| -> Result<Option<String>, AgentError> {
            match data.get(key) {
                None => Ok(None),
                Some(v) => String::from_utf8(v.0.clone()).map(Some).map_err(|_| {
                    AgentError::Config(format!(
                        "Secret {namespace}/{AGENT_SECRET} key {key} is not UTF-8"
                    ))
                }),
            }
        };
        let need = |key: &str| -> Result<String, AgentError> {
            get(key)?
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| {
                    AgentError::Config(format!(
                        "Secret {namespace}/{AGENT_SECRET} has no key {key}; re-run the operator bootstrap"
                    ))
                })
        };
        let mut config = AgentConfig::new(
            need(AGENT_SECRET_URL_KEY)?.trim(),
            need(AGENT_SECRET_TOKEN_KEY)?.trim(),
        );
        config.ca_pem = get(AGENT_SECRET_CA_KEY)?.filter(|v| !v.trim().is_empty());
        config.namespace = namespace.into();
        Ok(config)
    }

    /// Delay before retry number `attempt` (1-based) of a failure of class `class`:
    /// `backoff_min * 2^(attempt-1)` capped at `backoff_max`, with "equal jitter"
    /// (uniform in [d/2, d]); [`RetryClass::Credential`] waits `auth_retry`,
    /// [`RetryClass::Permanent`] the cap.
    ///
    /// ```
    /// use std::time::Duration;
    /// use kubenova_reconcile::agent::{AgentConfig, RetryClass};
    /// let c = AgentConfig::new("https://m", "t");
    /// let d = c.retry_delay(RetryClass::Transient, 100);
    /// assert!(d >= Duration::from_secs(15) && d <= Duration::from_secs(30));
    /// ```
    pub fn retry_delay(&self, class: RetryClass, attempt: u32) -> Duration {
        let d = match class {
            RetryClass::Transient => {
                let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
                self.backoff_min
                    .saturating_mul(factor)
                    .min(self.backoff_max)
            }
            RetryClass::Credential => self.auth_retry,
            RetryClass::Permanent => self.backoff_max,
        };
        jitter(d)
    }
}

/// Uniform in `[d/2, d]`.
fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    let extra = rand::thread_rng().gen_range(0..=half.as_millis().min(u64::MAX as u128) as u64);
    half + Duration::from_millis(extra)
}

type Labels = Vec<(String, String)>;

/// Prometheus counters of the agent loop.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    /// `kubenova_agent_requests_total{route,result}` (`result`: `ok` or the
    /// [`AgentError::label`]).
    pub requests: Family<Labels, Counter>,
    /// `kubenova_agent_applies_total{kind,result}` (`ok`, `pending`, `invalid`, `error`).
    pub applies: Family<Labels, Counter>,
    /// `kubenova_agent_deletes_total{kind,reason}` (`deleted`, `pruned`).
    pub deletes: Family<Labels, Counter>,
    /// `kubenova_agent_reports_total`: object reports accepted by the manager.
    pub reports: Counter,
    /// `kubenova_agent_usage_samples_total`: usage samples taken.
    pub usage_samples: Counter,
    /// `kubenova_agent_usage_records_total`: hourly usage records accepted by the manager.
    pub usage_records: Counter,
    /// `kubenova_agent_usage_dropped_total`: usage records dropped (rejected by the
    /// manager, or the oldest of a full buffer).
    pub usage_dropped: Counter,
    /// `kubenova_tenant_*`: the latest usage sample per tenant, set by the usage loop.
    pub tenants: crate::usage::TenantMetrics,
}

impl AgentMetrics {
    /// Registers every counter in `registry` (prefix `kubenova_agent_`), and the tenant
    /// gauges (prefix `kubenova_tenant_`) when they are on.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kubenova_agent_requests",
            "Agent requests to the manager by route and result",
            self.requests.clone(),
        );
        registry.register(
            "kubenova_agent_applies",
            "Nova objects applied from the desired state by kind and result",
            self.applies.clone(),
        );
        registry.register(
            "kubenova_agent_deletes",
            "Nova objects deleted or pruned from the desired state",
            self.deletes.clone(),
        );
        registry.register(
            "kubenova_agent_reports",
            "Object status reports accepted by the manager",
            self.reports.clone(),
        );
        registry.register(
            "kubenova_agent_usage_samples",
            "Usage samples taken",
            self.usage_samples.clone(),
        );
        registry.register(
            "kubenova_agent_usage_records",
            "Hourly usage records accepted by the manager",
            self.usage_records.clone(),
        );
        registry.register(
            "kubenova_agent_usage_dropped",
            "Usage records dropped: rejected by the manager, or the oldest of a full buffer",
            self.usage_dropped.clone(),
        );
        self.tenants.register(registry);
    }

    fn request<T>(&self, route: &str, res: &Result<T, AgentError>) {
        let result = match res {
            Ok(_) => "ok",
            Err(e) => e.label(),
        };
        self.requests
            .get_or_create(&vec![
                ("route".to_owned(), route.to_owned()),
                ("result".to_owned(), result.to_owned()),
            ])
            .inc();
    }

    fn count(family: &Family<Labels, Counter>, a: (&str, &str), b: (&str, &str)) {
        family
            .get_or_create(&vec![
                (a.0.to_owned(), a.1.to_owned()),
                (b.0.to_owned(), b.1.to_owned()),
            ])
            .inc();
    }
}

/// State shared by the loops.
struct Shared {
    config: AgentConfig,
    client: AgentClient,
    kube: Client,
    /// Last desired revision fully applied (nothing pending).
    applied_revision: AtomicI64,
    /// Whether the last heartbeat reached the manager.
    connected: AtomicBool,
    /// Signalled when the manager becomes reachable again.
    reconnected: Notify,
    /// The cluster id the manager named in its heartbeat reply.
    cluster_id: Mutex<Option<kubenova_api::ids::ClusterId>>,
}

impl Shared {
    fn metrics(&self) -> &AgentMetrics {
        &self.config.metrics
    }

    fn cluster_id(&self) -> Option<kubenova_api::ids::ClusterId> {
        *self.cluster_id.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_cluster_id(&self, id: uuid::Uuid) {
        *self.cluster_id.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(kubenova_api::ids::ClusterId(id));
    }

    fn applied_revision(&self) -> i64 {
        self.applied_revision.load(Ordering::Relaxed)
    }

    /// Records whether the manager answered; wakes the status reporter when it answers
    /// again after a failure (to send what was buffered).
    fn manager_reached(&self, ok: bool) {
        let was = self.connected.swap(ok, Ordering::Relaxed);
        if ok && !was {
            self.reconnected.notify_waiters();
        }
    }
}

/// Resolves once `shutdown` is `true` (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// Sleeps `d`; returns `true` if shutdown was requested meanwhile.
async fn sleep_or_stop(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stopped(shutdown) => true,
    }
}

/// Runs the agent loop (desired state, status reports, heartbeat, logs and events
/// requests) until `shutdown` becomes `true`. Fails only when the configuration cannot
/// work (see
/// [`AgentClient::new`]); every runtime failure is retried.
pub async fn run(
    client: Client,
    config: AgentConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let agent = AgentClient::new(&config.manager_url, &config.token, config.ca_pem.as_deref())?;
    tracing::info!(manager = %agent.base_url(), "agent loop starting");
    let shared = Arc::new(Shared {
        config,
        client: agent,
        kube: client,
        applied_revision: AtomicI64::new(0),
        connected: AtomicBool::new(false),
        reconnected: Notify::new(),
        cluster_id: Mutex::new(None),
    });
    tokio::join!(
        desired::run(shared.clone(), shutdown.clone()),
        status::run(shared.clone(), shutdown.clone()),
        heartbeat::run(shared.clone(), shutdown.clone()),
        requests::run(shared.clone(), shutdown.clone()),
        usage::run(shared.clone(), shutdown),
    );
    tracing::info!("agent loop stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut c = AgentConfig::new("https://m", "t");
        c.backoff_min = Duration::from_millis(100);
        c.backoff_max = Duration::from_secs(2);
        c.auth_retry = Duration::from_secs(7);
        for _ in 0..50 {
            let d1 = c.retry_delay(RetryClass::Transient, 1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d3 = c.retry_delay(RetryClass::Transient, 3);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            let big = c.retry_delay(RetryClass::Transient, u32::MAX);
            assert!(big >= Duration::from_secs(1) && big <= Duration::from_secs(2));
            let auth = c.retry_delay(RetryClass::Credential, 1);
            assert!(auth >= Duration::from_millis(3500) && auth <= Duration::from_secs(7));
        }
    }
}
