//! The kube-runtime controllers for [`NovaTenant`], [`NovaProject`] and [`NovaApp`].
//!
//! Each reconciler (`reconcile(Arc<K>, Arc<Ctx>) -> Result<Action, Error>`) runs under the
//! [`finalizer`](kube::runtime::finalizer()) helper and
//!
//! 1. translates the object with the pure functions of this crate; an invalid object
//!    (unknown plan, wrong namespace, ...) gets `Degraded` with the error's reason and
//!    **nothing is created**;
//! 2. checks every target name: an existing object that KubeNova did not generate for
//!    this very Nova object is a `NameClash` (`Degraded`, nothing created); a namespace
//!    counts as generated only when field manager [`FIELD_MANAGER`] owns its
//!    `kubenova.io/owner` annotation with the expected value and no other Capsule Tenant
//!    owns it (labels alone prove nothing);
//! 3. server-side applies every translated object (field manager [`FIELD_MANAGER`],
//!    `force`), so drift is repaired on the next reconcile; the generated objects are
//!    watched, so an edit or a delete triggers that reconcile. Reads come from in-memory
//!    caches fed by those same watches (one per kind, compact: no `managedFields`, content
//!    reduced to a digest), and an apply whose result is provably already live (same
//!    desired object as last applied, unchanged content digest, our labels, annotations
//!    and owner references present) is skipped, so a converged object costs no round
//!    trip when it is reconciled again;
//! 4. maps what Capsule / KubeVela / the namespace report back to the status, written
//!    through the status subresource only when [`next_status`] says it changed.
//!
//! On delete, the cleanup deletes exactly the objects the translation names, and only
//! when they were generated for this Nova object (their labels, and for a namespace the
//! same ownership check as above; read with a GET, not from the cache, so a lagging
//! cache cannot leak an object).
//!
//! Errors are retried with a per-object exponential backoff ([`Ctx::backoff`]) and
//! reported as `Warning` Events.
//!
//! [`FIELD_MANAGER`]: crate::FIELD_MANAGER

mod app;
mod cache;
mod project;
mod statuses;
mod stored;
mod tenant;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource};
use kubenova_api::catalog::Catalog;
use kubenova_api::crd::{NovaApp, NovaProject, NovaStatus, NovaTenant};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use thiserror::Error;
use tracing::Instrument as _;

pub use app::reconcile_app;
pub use project::reconcile_project;
pub use tenant::reconcile_tenant;

use crate::meta::{
    ANNOTATION_OWNER, LABEL_MANAGED_BY, LABEL_PROJECT, LABEL_TENANT, MANAGED_BY,
    project_owner_annotation, tenant_owner_annotation,
};
use crate::status::{Verdict, next_status};
use crate::{FIELD_MANAGER, TranslateError};
use stored::{Nova, Stored};

/// Finalizer the controllers put on every Nova object.
pub const FINALIZER: &str = "kubenova.io/cleanup";

/// Name the controllers report Events as.
pub const REPORTER: &str = "kubenova-operator";

/// Why a reconcile failed (retried with backoff by [`error_policy`]).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The finalizer helper failed (adding/removing the finalizer, or apply/cleanup).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// An object could not be (de)serialized.
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
    /// A generated object has a kind the controllers do not know (a bug).
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// CamelCase reason for Events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "ApiError",
            Error::Finalizer(_) => "FinalizerError",
            Error::Serialization(_) => "SerializationError",
            Error::Internal(_) => "InternalError",
        }
    }
}

/// Backoff of [`error_policy`]: `base * 2^(attempt-1)`, at most `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay.
    pub base: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// Delay before retry number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
        self.base.saturating_mul(factor).min(self.max)
    }
}

type Labels = Vec<(String, String)>;

/// Prometheus metrics of the controllers.
#[derive(Debug)]
pub struct Metrics {
    /// `kubenova_reconcile_total{controller,result}` (`result`: `ok` / `error`).
    pub reconciles: Family<Labels, Counter>,
    /// `kubenova_reconcile_errors_total{controller,reason}`.
    pub errors: Family<Labels, Counter>,
    /// `kubenova_status_writes_total{controller}`: status subresource writes.
    pub status_writes: Family<Labels, Counter>,
    /// `kubenova_reconcile_duration_seconds{controller}`.
    pub duration: Family<Labels, Histogram, fn() -> Histogram>,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconciles: Family::default(),
            errors: Family::default(),
            status_writes: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
        }
    }
}

impl Metrics {
    /// Registers every metric in `registry` (prefix `kubenova_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kubenova_reconcile",
            "Reconciliations by controller and result",
            self.reconciles.clone(),
        );
        registry.register(
            "kubenova_reconcile_errors",
            "Failed reconciliations by controller and reason",
            self.errors.clone(),
        );
        registry.register(
            "kubenova_status_writes",
            "Status subresource writes by controller",
            self.status_writes.clone(),
        );
        registry.register(
            "kubenova_reconcile_duration_seconds",
            "Reconcile duration by controller",
            self.duration.clone(),
        );
    }

    fn labels(controller: &str, key: &str, value: &str) -> Labels {
        vec![
            ("controller".to_owned(), controller.to_owned()),
            (key.to_owned(), value.to_owned()),
        ]
    }
}

/// Shared state of the three controllers.
pub struct Ctx {
    /// Kubernetes client.
    pub client: Client,
    /// Plans and policysets.
    pub catalog: Arc<Catalog>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Event recorder.
    pub recorder: Recorder,
    /// Retry backoff.
    pub backoff: Backoff,
    /// Failed attempts per object since its last success, with the last failure's time.
    attempts: Mutex<Retries>,
    /// Read caches while [`run`] runs (`None`: every read is a GET).
    caches: Mutex<Option<cache::Caches>>,
    /// Last status written per object: digest of what it says, and when.
    statuses: Mutex<HashMap<u64, (u64, Instant)>>,
}

/// Failed attempts per object, and when entries of objects no longer failing were last
/// pruned.
struct Retries {
    by_key: HashMap<String, (u32, Instant)>,
    pruned: Instant,
}

impl Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl Ctx {
    /// A context with the default backoff and a recorder reporting as [`REPORTER`].
    pub fn new(client: Client, catalog: Arc<Catalog>, metrics: Arc<Metrics>) -> Ctx {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: REPORTER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        Ctx {
            client,
            catalog,
            metrics,
            recorder,
            backoff: Backoff::default(),
            attempts: Mutex::new(Retries {
                by_key: HashMap::new(),
                pruned: Instant::now(),
            }),
            caches: Mutex::new(None),
            statuses: Mutex::new(HashMap::new()),
        }
    }

    /// Replaces the backoff.
    pub fn with_backoff(mut self, backoff: Backoff) -> Ctx {
        self.backoff = backoff;
        self
    }

    /// Records one more failed attempt for `key` and returns the delay before the retry.
    ///
    /// An object that is still failing is retried within [`Backoff::max`], which refreshes
    /// its entry; entries older than twice that belong to objects that were deleted (or
    /// fixed by a path that never reported success) and are pruned (at most once per such
    /// period, and only past 1,024 entries), so the table stays bounded by the objects
    /// failing now.
    pub fn backoff(&self, key: &str) -> Duration {
        let mut attempts = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        let keep = self.backoff.max.saturating_mul(2);
        if attempts.by_key.len() >= 1024 && attempts.pruned.elapsed() >= keep {
            attempts.by_key.retain(|_, (_, at)| at.elapsed() < keep);
            attempts.pruned = Instant::now();
        }
        let (n, at) = attempts
            .by_key
            .entry(key.to_owned())
            .or_insert((0, Instant::now()));
        *n = n.saturating_add(1);
        *at = Instant::now();
        self.backoff.delay(*n)
    }

    /// Failed attempts recorded for `key` since its last success.
    pub fn attempts(&self, key: &str) -> u32 {
        let attempts = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        attempts.by_key.get(key).map_or(0, |(n, _)| *n)
    }

    /// How many objects have failed attempts recorded (bounded: see [`Ctx::backoff`]).
    pub fn failing_objects(&self) -> usize {
        self.attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_key
            .len()
    }

    /// The caches once every store has its initial list; until then (or when a watch
    /// cannot list, e.g. a CRD is missing) every read is a GET and every apply is sent.
    fn caches(&self) -> Option<cache::Caches> {
        self.caches_raw().filter(cache::Caches::is_ready)
    }

    fn caches_raw(&self) -> Option<cache::Caches> {
        self.caches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_caches(&self, caches: Option<cache::Caches>) {
        *self.caches.lock().unwrap_or_else(|e| e.into_inner()) = caches;
    }

    /// Server-side applies `obj` unless the cache shows that it would change nothing
    /// (see `cache`); returns the live object (compact when it came from the cache: metadata
    /// and the status fields the status mapping reads).
    pub(crate) async fn apply(&self, obj: &Value) -> Result<Value, Error> {
        self.apply_as(obj, obj).await
    }

    /// Like [`apply`](Self::apply), but decides whether anything changed on `ours` (what
    /// the translation wants) while sending `body` (`ours` plus what must be kept from the
    /// live object, e.g. Capsule's owner reference on a tenant namespace).
    ///
    /// A Namespace that is not known to exist is created, not applied: one that someone
    /// else made after the clash check (or that the cache has not seen yet) makes the
    /// create fail with `AlreadyExists`, and the retry reports the clash, instead of a
    /// server-side apply taking it over.
    pub(crate) async fn apply_as(&self, ours: &Value, body: &Value) -> Result<Value, Error> {
        let caches = self.caches();
        if let Some(c) = &caches
            && let Some(live) = c.unchanged(ours)
        {
            return Ok(live);
        }
        let name = str_at(ours, "/metadata/name");
        let live = if str_at(ours, "/kind") == "Namespace"
            && self.lookup("Namespace", None, name).await?.is_none()
        {
            create(&self.client, body).await?
        } else {
            apply(&self.client, body).await?
        };
        if let Some(c) = &caches {
            c.record(ours, &live);
        }
        Ok(live)
    }

    /// The object from the cache, or a GET without caches; `None` when absent.
    pub(crate) async fn lookup(
        &self,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, Error> {
        if let Some(c) = self.caches()
            && let Some(kc) = c.of(kind)
        {
            return Ok(kc.get(namespace, name));
        }
        get(&self.client, kind, namespace, name).await
    }

    /// The NovaTenant (from its store, or a GET without caches); `None` when absent.
    pub(crate) async fn nova_tenant(&self, name: &str) -> Result<Option<NovaTenant>, Error> {
        if let Some(c) = self.caches() {
            return Ok(c.nova_tenant(name)?);
        }
        Ok(Api::<NovaTenant>::all(self.client.clone())
            .get_opt(name)
            .await?)
    }

    /// Has the project controller reconcile every NovaProject of `tenant` (while [`run`]
    /// runs; without it nothing is queued).
    pub(crate) fn requeue_projects(&self, tenant: &str) {
        if let Some(c) = self.caches_raw() {
            c.requeue_projects(tenant);
        }
    }

    /// Like [`apply`](Self::apply), but the apply is sent as `user` (an `Impersonate-User`
    /// request), so that admission sees that user as the writer. KubeVela, with its
    /// application authentication on, records the writer of an Application and deploys
    /// with that identity's rights.
    pub(crate) async fn apply_impersonating(
        &self,
        obj: &Value,
        user: &str,
    ) -> Result<Value, Error> {
        let caches = self.caches();
        if let Some(c) = &caches
            && let Some(live) = c.unchanged(obj)
        {
            return Ok(live);
        }
        let live = apply_as_user(&self.client, obj, Some(user)).await?;
        if let Some(c) = &caches {
            c.record(obj, &live);
        }
        Ok(live)
    }

    /// Whether this process wrote a status saying `said` for `key` in the last few
    /// seconds (the object it reconciles may not show it yet).
    fn recently_written(&self, key: &str, said: u64) -> bool {
        let statuses = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        statuses
            .get(&cache::key_hash(key))
            .is_some_and(|(d, at)| *d == said && at.elapsed() < Duration::from_secs(10))
    }

    fn written(&self, key: &str, said: u64) {
        let mut statuses = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        // Only the last 10 s matter: prune instead of growing the table.
        if statuses.len() >= 1024 && statuses.len() >= statuses.capacity() {
            statuses.retain(|_, (_, at)| at.elapsed() < Duration::from_secs(10));
        }
        statuses.insert(cache::key_hash(key), (said, Instant::now()));
    }

    fn reset(&self, key: &str) {
        let mut attempts = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        attempts.by_key.remove(key);
    }

    async fn warn(
        &self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        reason: &str,
        note: String,
    ) {
        let ev = KubeEvent {
            type_: EventType::Warning,
            reason: reason.to_owned(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, reference).await {
            tracing::warn!(error = %e, reason, "could not publish event");
        }
    }
}

/// Key of an object for the backoff bookkeeping: `Kind/namespace/name`.
pub fn object_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

/// The `error_policy` of the three controllers: exponential backoff per object.
pub fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    err: &Error,
    ctx: Arc<Ctx>,
) -> Action {
    let key = object_key(obj.as_ref());
    let delay = ctx.backoff(&key);
    tracing::warn!(object = %key, error = %err, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Runs a reconcile body with the bookkeeping shared by the controllers: metrics, backoff
/// reset on success, a `Warning` Event on failure.
/// The span of one reconcile. A reconcile of a spec generation not reconciled yet
/// continues the trace of the API write that produced it (the object's
/// `kubenova.io/traceparent`, set by the agent's apply); later reconciles of the same
/// generation (resyncs, requeues) are traces of their own.
fn reconcile_span<K: Nova>(controller: &'static str, obj: &K) -> (tracing::Span, Option<bool>) {
    let meta = obj.meta();
    let observed = obj.nova_status().and_then(|s| s.observed_generation);
    let remote = kubenova_api::agent::traceparent_of(meta)
        .filter(|_| meta.generation.is_some() && observed != meta.generation)
        .and_then(kubenova_telemetry::propagation::context_from_traceparent);
    kubenova_telemetry::propagation::unit_span(remote, || {
        tracing::info_span!(
            "reconcile",
            otel.name = format!("reconcile {}", K::kind(&())),
            otel.status_code = tracing::field::Empty,
            controller,
            name = meta.name.as_deref().unwrap_or_default(),
            namespace = meta.namespace.as_deref().unwrap_or_default(),
            generation = meta.generation,
        )
    })
}

async fn instrumented<K, F>(
    controller: &'static str,
    obj: &K,
    ctx: &Ctx,
    body: F,
) -> Result<Action, Error>
where
    K: Nova,
    F: Future<Output = Result<Action, Error>>,
{
    let (span, unit) = reconcile_span(controller, obj);
    let start = Instant::now();
    let res = kubenova_telemetry::propagation::run_unit(unit, body.instrument(span.clone())).await;
    if res.is_err() {
        span.record("otel.status_code", "ERROR");
    }
    ctx.metrics
        .duration
        .get_or_create(&vec![("controller".to_owned(), controller.to_owned())])
        .observe(start.elapsed().as_secs_f64());
    let key = object_key(obj);
    match &res {
        Ok(_) => {
            ctx.reset(&key);
            ctx.metrics
                .reconciles
                .get_or_create(&Metrics::labels(controller, "result", "ok"))
                .inc();
        }
        Err(e) => {
            ctx.metrics
                .reconciles
                .get_or_create(&Metrics::labels(controller, "result", "error"))
                .inc();
            ctx.metrics
                .errors
                .get_or_create(&Metrics::labels(controller, "reason", e.reason()))
                .inc();
            ctx.warn(&obj.object_ref(&()), e.reason(), e.to_string())
                .await;
        }
    }
    res
}

// ---------------------------------------------------------------------------------
// Generic object helpers (the generated objects are handled as JSON)
// ---------------------------------------------------------------------------------

/// Where a generated kind is served.
pub(crate) fn api_resource(kind: &str) -> Option<(ApiResource, bool)> {
    let (group, version, plural, namespaced) = match kind {
        "Namespace" => ("", "v1", "namespaces", false),
        "ResourceQuota" => ("", "v1", "resourcequotas", true),
        "RoleBinding" => ("rbac.authorization.k8s.io", "v1", "rolebindings", true),
        "ServiceAccount" => ("", "v1", "serviceaccounts", true),
        "Tenant" => ("capsule.clastix.io", "v1beta2", "tenants", false),
        "Application" => ("core.oam.dev", "v1beta1", "applications", true),
        _ => return None,
    };
    Some((
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural),
        namespaced,
    ))
}

fn dynamic_api(
    client: &Client,
    kind: &str,
    namespace: Option<&str>,
) -> Result<Api<DynamicObject>, Error> {
    let (ar, namespaced) =
        api_resource(kind).ok_or_else(|| Error::Internal(format!("unknown kind {kind}")))?;
    Ok(match (namespaced, namespace) {
        (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
        (true, None) => return Err(Error::Internal(format!("{kind} needs a namespace"))),
        (false, _) => Api::all_with(client.clone(), &ar),
    })
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Server-side applies `obj` (forced, field manager [`FIELD_MANAGER`]) and returns the
/// stored object.
pub(crate) async fn apply(client: &Client, obj: &Value) -> Result<Value, Error> {
    apply_as_user(client, obj, None).await
}

/// [`apply`], sent as `user` (`Impersonate-User`) when given.
async fn apply_as_user(client: &Client, obj: &Value, user: Option<&str>) -> Result<Value, Error> {
    let kind = str_at(obj, "/kind");
    let name = str_at(obj, "/metadata/name");
    let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let out = match user {
        None => {
            dynamic_api(client, kind, ns)?
                .patch(name, &params, &Patch::Apply(obj))
                .await?
        }
        Some(user) => {
            use kube::Resource as _;
            let (ar, _) = api_resource(kind)
                .ok_or_else(|| Error::Internal(format!("unknown kind {kind}")))?;
            let url = DynamicObject::url_path(&ar, ns);
            let mut req = kube::core::Request::new(url)
                .patch(name, &params, &Patch::Apply(obj))
                .map_err(kube::Error::BuildRequest)?;
            let user = user
                .parse()
                .map_err(|_| Error::Internal(format!("user {user:?} is not a header value")))?;
            req.headers_mut().insert("Impersonate-User", user);
            client.request::<DynamicObject>(req).await?
        }
    };
    Ok(serde_json::to_value(out)?)
}

/// Creates `obj` (field manager [`FIELD_MANAGER`]) and returns the stored object; an
/// existing object of that name is an error (`AlreadyExists`), never changed.
async fn create(client: &Client, obj: &Value) -> Result<Value, Error> {
    let kind = str_at(obj, "/kind");
    let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str);
    let api = dynamic_api(client, kind, ns)?;
    let params = kube::api::PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..kube::api::PostParams::default()
    };
    let out = api
        .create(
            &params,
            &serde_json::from_value::<DynamicObject>(obj.clone())?,
        )
        .await?;
    Ok(serde_json::to_value(out)?)
}

/// GET, `None` when absent.
pub(crate) async fn get(
    client: &Client,
    kind: &str,
    namespace: Option<&str>,
    name: &str,
) -> Result<Option<Value>, Error> {
    let api = dynamic_api(client, kind, namespace)?;
    Ok(match api.get_opt(name).await? {
        Some(o) => Some(serde_json::to_value(o)?),
        None => None,
    })
}

/// Whether `obj` carries every label of `want`.
pub(crate) fn has_labels(obj: &Value, want: &BTreeMap<&'static str, &str>) -> bool {
    want.iter().all(|(k, v)| {
        obj.pointer("/metadata/labels")
            .and_then(|l| l.get(*k))
            .and_then(Value::as_str)
            == Some(*v)
    })
}

/// Labels that mark an object generated for a tenant (and project).
pub(crate) fn ours(tenant: &str, project: Option<&str>) -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::from([
        (LABEL_MANAGED_BY, MANAGED_BY.to_owned()),
        (LABEL_TENANT, tenant.to_owned()),
    ]);
    if let Some(p) = project {
        m.insert(LABEL_PROJECT, p.to_owned());
    }
    m
}

fn as_refs<'a>(m: &'a BTreeMap<&'static str, String>) -> BTreeMap<&'static str, &'a str> {
    m.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Whether a `managedFields` entry's `fieldsV1` owns the [`ANNOTATION_OWNER`] annotation.
pub(crate) fn owns_owner_annotation(fields_v1: &Value) -> bool {
    fields_v1
        .get("f:metadata")
        .and_then(|m| m.get("f:annotations"))
        .and_then(|a| a.get(format!("f:{ANNOTATION_OWNER}")))
        .is_some()
}

/// Why an existing namespace is not the operator's to adopt for the Nova object whose
/// [`ANNOTATION_OWNER`] value is `owner` (tenant `tenant`), or `None` when it is: the
/// annotation must say `owner` and be owned by field manager [`FIELD_MANAGER`] in
/// `metadata.managedFields` (the operator wrote it when it created the namespace; labels
/// prove nothing, a tenant owner can set them), and a Capsule owner (an owner reference
/// of kind `Tenant` in `capsule.clastix.io`) must be absent or `tenant`.
///
/// The compact namespace cache keeps exactly the `managedFields` fact read here.
pub(crate) fn foreign_namespace(live: &Value, owner: &str, tenant: &str) -> Option<String> {
    let capsule_owner = live
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|r| {
            str_at(r, "/kind") == "Tenant"
                && str_at(r, "/apiVersion").starts_with("capsule.clastix.io/")
        })
        .map(|r| str_at(r, "/name"))
        .find(|n| *n != tenant);
    if let Some(other) = capsule_owner {
        return Some(format!("belongs to Capsule Tenant {other}"));
    }
    let annotated = live
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(ANNOTATION_OWNER))
        .and_then(Value::as_str)
        == Some(owner);
    let ours = live
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|e| {
            str_at(e, "/manager") == FIELD_MANAGER
                && e.get("fieldsV1").is_some_and(owns_owner_annotation)
        });
    if annotated && ours {
        return None;
    }
    Some(format!(
        "was not created by KubeNova for {owner} (its {ANNOTATION_OWNER} annotation is not {owner:?} as written by {FIELD_MANAGER})"
    ))
}

/// The [`ANNOTATION_OWNER`] value and tenant of the namespaces generated for the Nova
/// object whose labels ([`ours`]) are `labels`.
fn namespace_owner<'a>(labels: &'a BTreeMap<&'static str, String>) -> (String, &'a str) {
    let tenant = labels
        .get(LABEL_TENANT)
        .map(String::as_str)
        .unwrap_or_default();
    let owner = match labels.get(LABEL_PROJECT) {
        Some(project) => project_owner_annotation(tenant, project),
        None => tenant_owner_annotation(tenant),
    };
    (owner, tenant)
}

/// Why `live` (of `kind`) is not the object generated for the Nova object with `labels`,
/// or `None` when it is. A namespace must pass [`foreign_namespace`]; other kinds (all of
/// them inside such a namespace, or the cluster-scoped Capsule Tenant) must carry the
/// labels.
fn not_ours(kind: &str, live: &Value, labels: &BTreeMap<&'static str, String>) -> Option<String> {
    if kind == "Namespace" {
        let (owner, tenant) = namespace_owner(labels);
        return foreign_namespace(live, &owner, tenant);
    }
    (!has_labels(live, &as_refs(labels))).then(|| "is not labelled as generated for it".into())
}

/// The first target that exists and was not generated for this Nova object, as a
/// `NameClash` verdict message.
pub(crate) async fn find_clash(
    ctx: &Ctx,
    targets: &[(&str, Option<&str>, &str)],
    labels: &BTreeMap<&'static str, String>,
    owner: &str,
) -> Result<Option<String>, Error> {
    for (kind, ns, name) in targets {
        if let Some(live) = ctx.lookup(kind, *ns, name).await?
            && let Some(why) = not_ours(kind, &live, labels)
        {
            let at = ns.map(|n| format!(" in namespace {n}")).unwrap_or_default();
            return Ok(Some(format!(
                "{kind} {name}{at} already exists and is not managed by {owner}: it {why}; nothing was created"
            )));
        }
    }
    Ok(None)
}

/// Deletes the object if it exists and was generated for the Nova object with `labels`
/// (it carries them; a namespace must also pass [`foreign_namespace`]). Returns whether
/// it deleted. Reads the live object (a GET, never the cache: a stale cache must not leak
/// objects).
pub(crate) async fn delete_if_ours(
    ctx: &Ctx,
    kind: &str,
    namespace: Option<&str>,
    name: &str,
    labels: &BTreeMap<&'static str, String>,
) -> Result<bool, Error> {
    if let Some(c) = ctx.caches() {
        c.forget(kind, namespace, name);
    }
    let client = &ctx.client;
    let Some(live) = get(client, kind, namespace, name).await? else {
        return Ok(false);
    };
    if !has_labels(&live, &as_refs(labels)) || not_ours(kind, &live, labels).is_some() {
        tracing::info!(
            kind,
            name,
            "not deleting: not generated by KubeNova for this object"
        );
        return Ok(false);
    }
    if live.pointer("/metadata/deletionTimestamp").is_some() {
        return Ok(true);
    }
    let api = dynamic_api(client, kind, namespace)?;
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Writes `status` through the status subresource when [`next_status`] says it changed.
/// Returns whether it wrote; publishes a `Warning` Event when it becomes `Degraded`.
pub(crate) async fn write_status<K>(
    ctx: &Ctx,
    controller: &'static str,
    api: &Api<K>,
    obj: &K,
    old: Option<&NovaStatus>,
    verdict: &Verdict,
    namespaces: Vec<String>,
) -> Result<bool, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    // What this status says, without timestamps: written already (the watch has not
    // delivered our own write yet) means nothing to do.
    let said = cache::value_digest(&json!([
        format!("{:?}", verdict.phase),
        verdict.reason,
        verdict.message,
        obj.meta().generation,
        namespaces,
        obj.meta().uid,
    ]));
    let key = object_key(obj);
    let Some(next) = next_status(old, verdict, obj.meta().generation, namespaces, &now) else {
        return Ok(false);
    };
    if ctx.caches().is_some() && ctx.recently_written(&key, said) {
        return Ok(false);
    }
    let name = obj.meta().name.clone().unwrap_or_default();
    // A merge patch keeps keys it does not mention: name every field, `null` = remove
    // (e.g. `namespaces` when a Ready tenant becomes Degraded).
    let mut body = serde_json::to_value(&next)?;
    if let Some(m) = body.as_object_mut() {
        for key in [
            "phase",
            "conditions",
            "observedGeneration",
            "namespaces",
            "message",
        ] {
            m.entry(key).or_insert(Value::Null);
        }
    }
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": body })),
    )
    .await?;
    ctx.written(&key, said);
    ctx.metrics
        .status_writes
        .get_or_create(&vec![("controller".to_owned(), controller.to_owned())])
        .inc();
    let was_degraded = old.and_then(|o| o.phase) == Some(kubenova_api::crd::NovaPhase::Degraded)
        && old.and_then(|o| o.message.as_deref()) == Some(verdict.message.as_str());
    if verdict.phase == kubenova_api::crd::NovaPhase::Degraded && !was_degraded {
        ctx.warn(
            &obj.object_ref(&()),
            &verdict.reason,
            verdict.message.clone(),
        )
        .await;
    }
    Ok(true)
}

/// `Degraded` verdict for an object that cannot be translated.
pub(crate) fn refused(err: &TranslateError) -> Verdict {
    Verdict::from_error(err)
}

/// `Degraded` verdict for a name clash.
pub(crate) fn clash(message: String) -> Verdict {
    Verdict::new(kubenova_api::crd::NovaPhase::Degraded, "NameClash", message)
}

/// When to look at the object again without a watch event: a not-yet-ready object after
/// 60 s; a Ready one only on an event. Every generated kind is watched (an edit or delete
/// of a generated object, a Capsule / KubeVela status change and a watch relist all
/// trigger a reconcile), and a periodic requeue of every Ready object would keep one
/// scheduler entry per Nova object alive forever (≈ 12 MiB at 10,000 tenants).
pub(crate) fn requeue_after(verdict: &Verdict) -> Action {
    match verdict.phase {
        kubenova_api::crd::NovaPhase::Ready => Action::await_change(),
        _ => Action::requeue(Duration::from_secs(60)),
    }
}

// ---------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------

/// How the controllers run.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Concurrent reconciles per controller (0 = unbounded).
    pub concurrency: u16,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { concurrency: 16 }
    }
}

fn managed_by() -> watcher::Config {
    watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"))
}

fn label<'a>(meta: &'a kube::api::ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

/// NovaTenant of a generated cluster-scoped object (Capsule Tenant, tenant namespace).
fn tenant_of(meta: &kube::api::ObjectMeta) -> Option<ObjectRef<Stored<NovaTenant>>> {
    if label(meta, crate::meta::LABEL_NAMESPACE_ROLE) == Some("project") {
        return None;
    }
    Some(ObjectRef::new(label(meta, LABEL_TENANT)?))
}

/// NovaProject of a generated project object (namespace, ServiceAccount, RoleBinding,
/// ResourceQuota).
fn project_of(meta: &kube::api::ObjectMeta) -> Option<ObjectRef<Stored<NovaProject>>> {
    let tenant = label(meta, LABEL_TENANT)?;
    let project = label(meta, LABEL_PROJECT)?;
    Some(ObjectRef::new(project).within(&crate::tenant_namespaces(tenant).0))
}

/// A future that completes once `shutdown` becomes `true` (or its sender is dropped).
async fn until(mut shutdown: tokio::sync::watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
}

async fn log_result<K, E>(controller: &'static str, res: Result<(ObjectRef<K>, Action), E>)
where
    K: Resource<DynamicType = ()>,
    E: std::fmt::Display,
{
    match res {
        Ok((o, _)) => tracing::debug!(controller, object = %o, "reconciled"),
        Err(e) => tracing::debug!(controller, error = %e, "controller error"),
    }
}

/// The NovaApp that owns a generated object (its `kubenova.io/app` label, in the same
/// namespace).
fn app_of(meta: &kube::api::ObjectMeta) -> Option<ObjectRef<Stored<NovaApp>>> {
    Some(ObjectRef::new(label(meta, crate::meta::LABEL_APP)?).within(meta.namespace.as_deref()?))
}

/// Runs `reconcile` on the typed object rebuilt from the one in the store (see `stored`).
async fn expanded<K, F, Fut>(
    obj: Arc<Stored<K>>,
    ctx: Arc<Ctx>,
    reconcile: F,
) -> Result<Action, Error>
where
    K: Nova,
    F: FnOnce(Arc<K>, Arc<Ctx>) -> Fut,
    Fut: Future<Output = Result<Action, Error>>,
{
    let statuses = ctx
        .caches_raw()
        .map(|c| c.nova_statuses)
        .unwrap_or_default();
    let typed = obj.expand(&statuses)?;
    reconcile(Arc::new(typed), ctx).await
}

/// Runs the three controllers until `shutdown` becomes `true`; in-flight reconciles
/// finish first (graceful shutdown).
///
/// One watch per kind feeds both the controllers' triggers and the read caches (module
/// `cache`): Capsule Tenants, Namespaces and KubeVela Applications (all of them, so name
/// clashes are seen), RoleBindings, ServiceAccounts and ResourceQuotas (those labelled as
/// generated by KubeNova), and the three Nova kinds (kept lean: metadata without `managedFields`, the
/// spec as JSON text, the status in a compact side table; module `stored`).
pub async fn run(ctx: Arc<Ctx>, opts: RunOptions, shutdown: tokio::sync::watch::Receiver<bool>) {
    use futures::channel::mpsc::unbounded;
    let client = ctx.client.clone();
    let config = ControllerConfig::default().concurrency(opts.concurrency);
    let (Some(tenants_c), Some(ns_c), Some(rb_c), Some(sa_c), Some(rq_c), Some(apps_c)) = (
        cache::store("Tenant"),
        cache::store("Namespace"),
        cache::store("RoleBinding"),
        cache::store("ServiceAccount"),
        cache::store("ResourceQuota"),
        cache::store("Application"),
    ) else {
        return;
    };
    // Generated object → the Nova object to reconcile.
    let (tenant_tx, tenant_rx) = unbounded::<ObjectRef<Stored<NovaTenant>>>();
    let (project_tx, project_rx) = unbounded::<ObjectRef<Stored<NovaProject>>>();
    let (app_tx, app_rx) = unbounded::<ObjectRef<Stored<NovaApp>>>();

    let statuses = statuses::Statuses::default();
    let (nt_store, nt_stream) = cache::nova_stream::<NovaTenant>(&client, statuses.clone());
    let (np_store, np_stream) = cache::nova_stream::<NovaProject>(&client, statuses.clone());
    let (na_store, na_stream) = cache::nova_stream::<NovaApp>(&client, statuses.clone());
    ctx.set_caches(Some(cache::Caches::new(
        vec![
            tenants_c.clone(),
            ns_c.clone(),
            rb_c.clone(),
            sa_c.clone(),
            rq_c.clone(),
            apps_c.clone(),
        ],
        cache::NovaStores {
            tenants: nt_store.clone(),
            projects: np_store.clone(),
            statuses,
            project_trigger: project_tx.clone(),
        },
    )));
    let to_tenant = {
        let tx = tenant_tx.clone();
        move |o: &DynamicObject| {
            if let Some(r) = tenant_of(&o.metadata) {
                let _ = tx.unbounded_send(r);
            }
        }
    };
    let ns_route = {
        let (ttx, ptx) = (tenant_tx, project_tx.clone());
        move |o: &DynamicObject| {
            if let Some(r) = tenant_of(&o.metadata) {
                let _ = ttx.unbounded_send(r);
            }
            if let Some(r) = project_of(&o.metadata) {
                let _ = ptx.unbounded_send(r);
            }
        }
    };
    let to_project =
        |tx: futures::channel::mpsc::UnboundedSender<ObjectRef<Stored<NovaProject>>>| {
            move |o: &DynamicObject| {
                if let Some(r) = project_of(&o.metadata) {
                    let _ = tx.unbounded_send(r);
                }
            }
        };
    let to_app = move |o: &DynamicObject| {
        if let Some(r) = app_of(&o.metadata) {
            let _ = app_tx.unbounded_send(r);
        }
    };
    let all = watcher::Config::default;
    let applied = ctx.caches_raw().map(|c| c.applied()).unwrap_or_default();
    let drivers = futures::future::join_all(
        [
            cache::drive(
                &client,
                "Tenant",
                all(),
                tenants_c,
                applied.clone(),
                to_tenant,
            )
            .map(|d| d.boxed()),
            cache::drive(&client, "Namespace", all(), ns_c, applied.clone(), ns_route)
                .map(|d| d.boxed()),
            cache::drive(
                &client,
                "RoleBinding",
                managed_by(),
                rb_c,
                applied.clone(),
                to_project(project_tx.clone()),
            )
            .map(|d| d.boxed()),
            cache::drive(
                &client,
                "ServiceAccount",
                managed_by(),
                sa_c,
                applied.clone(),
                to_project(project_tx.clone()),
            )
            .map(|d| d.boxed()),
            cache::drive(
                &client,
                "ResourceQuota",
                managed_by(),
                rq_c,
                applied.clone(),
                to_project(project_tx),
            )
            .map(|d| d.boxed()),
            cache::drive(
                &client,
                "Application",
                all(),
                apps_c,
                applied.clone(),
                to_app,
            )
            .map(|d| d.boxed()),
        ]
        .into_iter()
        .flatten()
        .map(|d| d.for_each(|_| futures::future::ready(()))),
    );

    let tenants = Controller::for_stream(nt_stream, nt_store)
        .reconcile_on(tenant_rx)
        .with_config(config.clone())
        .graceful_shutdown_on(until(shutdown.clone()))
        .run(
            |o, ctx| expanded(o, ctx, reconcile_tenant),
            error_policy,
            ctx.clone(),
        )
        .for_each(|r| log_result("novatenant", r));

    let projects = Controller::for_stream(np_stream, np_store)
        .reconcile_on(project_rx)
        .with_config(config.clone())
        .graceful_shutdown_on(until(shutdown.clone()))
        .run(
            |o, ctx| expanded(o, ctx, reconcile_project),
            error_policy,
            ctx.clone(),
        )
        .for_each(|r| log_result("novaproject", r));

    let apps = Controller::for_stream(na_stream, na_store)
        .reconcile_on(app_rx)
        .with_config(config)
        .graceful_shutdown_on(until(shutdown))
        .run(
            |o, ctx| expanded(o, ctx, reconcile_app),
            error_policy,
            ctx.clone(),
        )
        .for_each(|r| log_result("novaapp", r));

    tracing::info!("controllers started");
    let controllers = async {
        futures::join!(tenants, projects, apps);
    };
    tokio::select! {
        _ = controllers => {}
        _ = drivers => tracing::warn!("watches ended"),
    }
    ctx.set_caches(None);
    tracing::info!("controllers stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_exponential_and_capped() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(200));
        assert_eq!(b.delay(4), Duration::from_millis(800));
        assert_eq!(b.delay(5), Duration::from_secs(1));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn generated_kinds_are_known() {
        for k in [
            "Namespace",
            "ResourceQuota",
            "RoleBinding",
            "ServiceAccount",
            "Tenant",
            "Application",
        ] {
            assert!(api_resource(k).is_some(), "{k}");
        }
        assert!(api_resource("Secret").is_none());
    }

    #[test]
    fn label_check() {
        let obj =
            json!({"metadata": {"labels": {LABEL_TENANT: "a", LABEL_MANAGED_BY: MANAGED_BY}}});
        assert!(has_labels(&obj, &as_refs(&ours("a", None))));
        assert!(!has_labels(&obj, &as_refs(&ours("b", None))));
        assert!(!has_labels(&obj, &as_refs(&ours("a", Some("web")))));
        assert!(!has_labels(
            &json!({"metadata": {}}),
            &as_refs(&ours("a", None))
        ));
    }
}
