//! The desired-state loop: long-poll, apply, prune, delete.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{StreamExt, stream};
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions};
use kube::core::ApiResource;
use kubenova_api::agent::{
    AGENT_FIELD_MANAGER, DesiredObject, DesiredState, LABEL_ID, LABEL_SOURCE, ObjectKind,
    ObjectRef, SOURCE_MANAGER,
};
use kubenova_api::crd::{NovaApp, NovaProject, NovaTenant};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::leader::{Fence, Fenced};

use super::{
    ANNOTATION_DESIRED_REVISION, AgentConfig, AgentError, AgentMetrics, RetryClass, Shared,
};

/// Concurrent applies within one kind.
const APPLY_CONCURRENCY: usize = 8;
/// Largest `waitSeconds` the manager accepts.
const MAX_WAIT_SECONDS: u64 = 60;
/// Page size of the prune lists.
const LIST_PAGE: u32 = 500;

fn kind_name(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Tenant => "tenant",
        ObjectKind::Project => "project",
        ObjectKind::App => "app",
    }
}

fn api_resource(kind: ObjectKind) -> ApiResource {
    match kind {
        ObjectKind::Tenant => ApiResource::erase::<NovaTenant>(&()),
        ObjectKind::Project => ApiResource::erase::<NovaProject>(&()),
        ObjectKind::App => ApiResource::erase::<NovaApp>(&()),
    }
}

/// Label selector of every manager-sourced Nova object.
pub(super) fn manager_selector() -> String {
    format!("{LABEL_SOURCE}={SOURCE_MANAGER}")
}

/// Why one object was not applied.
#[derive(Debug)]
enum ApplyError {
    /// Its namespace (or its CRD) is not there yet: retry it later, alone.
    NotYet(String),
    /// The object itself is wrong (invalid, rejected by the schema): log, skip.
    Invalid(String),
    /// The cluster API failed: retry the whole answer with the same cursor.
    Transient(kube::Error),
}

/// A fenced write as the API error type of the loop: the answer is abandoned with its
/// cursor unchanged (the loop then stops, see [`run`]).
fn fenced(f: Fenced) -> kube::Error {
    kube::Error::Service(Box::new(f))
}

fn classify(e: kube::Error) -> ApplyError {
    match &e {
        kube::Error::Api(s) if s.code == 404 => ApplyError::NotYet(s.message.clone()),
        kube::Error::Api(s) if s.code == 403 && s.message.contains("terminat") => {
            ApplyError::NotYet(s.message.clone())
        }
        kube::Error::Api(s) if matches!(s.code, 400 | 422) => {
            ApplyError::Invalid(format!("{} ({})", s.message, s.code))
        }
        _ => ApplyError::Transient(e),
    }
}

/// The object as applied: labels forced to the record id, revision annotation, and no
/// server-owned fields.
fn apply_body(obj: &DesiredObject, revision: i64) -> Result<(ObjectRef, Value), String> {
    let r = obj.object_ref();
    let (v, namespaced) = match obj {
        DesiredObject::Tenant { object, .. } => (serde_json::to_value(object), false),
        DesiredObject::Project { object, .. } => (serde_json::to_value(object), true),
        DesiredObject::App { object, .. } => (serde_json::to_value(object), true),
    };
    let mut v = v.map_err(|e| format!("serializing: {e}"))?;
    let Some(top) = v.as_object_mut() else {
        return Err("not an object".into());
    };
    top.remove("status");
    let meta = top
        .entry("metadata")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or("metadata is not an object")?;
    for k in [
        "resourceVersion",
        "uid",
        "managedFields",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "finalizers",
        "ownerReferences",
        "selfLink",
    ] {
        meta.remove(k);
    }
    if meta
        .get("name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err("metadata.name is missing".into());
    }
    let has_ns = meta
        .get("namespace")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty());
    if namespaced && !has_ns {
        return Err("metadata.namespace is missing".into());
    }
    if !namespaced {
        meta.remove("namespace");
    }
    let labels = meta
        .entry("labels")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or("metadata.labels is not an object")?;
    labels.insert(LABEL_ID.into(), json!(r.id.to_string()));
    labels.insert(LABEL_SOURCE.into(), json!(SOURCE_MANAGER));
    let annotations = meta
        .entry("annotations")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or("metadata.annotations is not an object")?;
    annotations.insert(
        ANNOTATION_DESIRED_REVISION.into(),
        json!(revision.to_string()),
    );
    Ok((r, v))
}

/// The span of one object's apply: part of the trace of the API write that produced it
/// (the object's [`ANNOTATION_TRACEPARENT`]), when there is one.
/// Returns the span and the sampling decision to run the apply under.
fn apply_span(o: &DesiredObject, revision: i64) -> (tracing::Span, Option<bool>) {
    let r = o.object_ref();
    let remote = o
        .traceparent()
        .and_then(kubenova_telemetry::propagation::context_from_traceparent);
    kubenova_telemetry::propagation::unit_span(remote, || {
        tracing::info_span!(
            "agent apply",
            otel.name = match r.kind {
                ObjectKind::Tenant => "agent apply NovaTenant",
                ObjectKind::Project => "agent apply NovaProject",
                ObjectKind::App => "agent apply NovaApp",
            },
            kind = kind_name(r.kind),
            id = %r.id,
            revision,
        )
    })
}

async fn apply_one(
    kube: &Client,
    fence: &Fence,
    body: &Value,
    kind: ObjectKind,
) -> Result<(), ApplyError> {
    let ar = api_resource(kind);
    let name = body
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let api: Api<DynamicObject> = match body.pointer("/metadata/namespace").and_then(Value::as_str)
    {
        Some(ns) => Api::namespaced_with(kube.clone(), ns, &ar),
        None => Api::all_with(kube.clone(), &ar),
    };
    // Checked last thing before the request: a deposed leader's forced apply would
    // revert what the new leader applied since.
    fence
        .check()
        .map_err(|f| ApplyError::Transient(fenced(f)))?;
    let applied = api
        .patch(
            name,
            &PatchParams::apply(AGENT_FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map_err(classify)?;
    // The name belongs to an object that is going away (a record deleted and re-created
    // under the same name while the old object finalizes): the apply landed on it and
    // would vanish with it. Wait until it is gone, then create the object afresh.
    if applied.metadata.deletion_timestamp.is_some() {
        return Err(ApplyError::NotYet(format!(
            "{name} is still being deleted; applied again once it is gone"
        )));
    }
    Ok(())
}

/// Every object of `kind` matching `selector`, in all namespaces (paged).
async fn list_all(
    kube: &Client,
    kind: ObjectKind,
    selector: &str,
) -> Result<Vec<DynamicObject>, kube::Error> {
    let api: Api<DynamicObject> = Api::all_with(kube.clone(), &api_resource(kind));
    let mut out = Vec::new();
    let mut lp = ListParams::default().labels(selector).limit(LIST_PAGE);
    loop {
        let page = api.list(&lp).await?;
        out.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => return Ok(out),
        }
    }
}

/// Deletes one listed object unless it is already going away. 404 = already gone.
async fn delete_obj(
    kube: &Client,
    fence: &Fence,
    kind: ObjectKind,
    obj: &DynamicObject,
) -> Result<bool, kube::Error> {
    if obj.metadata.deletion_timestamp.is_some() {
        return Ok(false);
    }
    let ar = api_resource(kind);
    let name = obj.metadata.name.clone().unwrap_or_default();
    let api: Api<DynamicObject> = match obj.metadata.namespace.as_deref() {
        Some(ns) => Api::namespaced_with(kube.clone(), ns, &ar),
        None => Api::all_with(kube.clone(), &ar),
    };
    // Only the object that was listed: a new object that took the name since (a record
    // re-created under the same name) is not this deletion's to make.
    let mut params = DeleteParams::background();
    params.preconditions = obj.metadata.uid.clone().map(|uid| Preconditions {
        uid: Some(uid),
        resource_version: None,
    });
    fence.check().map_err(fenced)?;
    match api.delete(&name, &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

fn id_of(obj: &DynamicObject) -> Option<Uuid> {
    obj.metadata
        .labels
        .as_ref()?
        .get(LABEL_ID)
        .and_then(|v| Uuid::try_parse(v).ok())
}

/// Whether a JSON value means "nothing" (absent, `null`, `false`, `[]`, `{}`): a server
/// default of that kind or a field the spec omits.
fn is_zero(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => true,
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        _ => false,
    }
}

/// Equality of two specs, where an absent field equals a zero one ([`is_zero`]).
fn equivalent(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.keys()
                .chain(y.keys())
                .all(|k| match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => equivalent(p, q),
                    (p, q) => is_zero(p) && is_zero(q),
                })
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| equivalent(p, q))
        }
        _ => a == b,
    }
}

/// Whether `live` already is the desired `body` (same name, namespace, id, spec, labels
/// and annotations, revision annotation present, not being deleted).
fn unchanged(body: &Value, id: Uuid, live: &DynamicObject) -> bool {
    let m = &live.metadata;
    let str_at = |p: &str| body.pointer(p).and_then(Value::as_str);
    if m.deletion_timestamp.is_some()
        || id_of(live) != Some(id)
        || m.name.as_deref() != str_at("/metadata/name")
        || m.namespace.as_deref() != str_at("/metadata/namespace")
    {
        return false;
    }
    let subset = |want: Option<&Value>, have: Option<&BTreeMap<String, String>>| {
        want.and_then(Value::as_object).is_none_or(|w| {
            w.iter().all(|(k, v)| {
                k == ANNOTATION_DESIRED_REVISION
                    || have.and_then(|h| h.get(k)).map(String::as_str) == v.as_str()
            })
        })
    };
    let has_revision = m
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(ANNOTATION_DESIRED_REVISION));
    has_revision
        && subset(body.pointer("/metadata/labels"), m.labels.as_ref())
        && subset(
            body.pointer("/metadata/annotations"),
            m.annotations.as_ref(),
        )
        && equivalent(
            body.get("spec").unwrap_or(&Value::Null),
            live.data.get("spec").unwrap_or(&Value::Null),
        )
}

/// Delay before attempt `attempts + 1` of a pending object: `pending_retry` doubling up
/// to `backoff_max`.
fn pending_delay(c: &AgentConfig, attempts: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(20));
    c.pending_retry.saturating_mul(factor).min(c.backoff_max)
}

/// An object waiting for its namespace.
#[derive(Debug)]
struct Pending {
    object: DesiredObject,
    revision: i64,
    attempts: u32,
    next: Instant,
}

/// State of the desired loop.
struct DesiredLoop {
    sh: Arc<Shared>,
    /// Closed on step-down or shutdown: checked before every write.
    fence: Fence,
    /// Next cursor (the last revision applied).
    cursor: i64,
    pending: BTreeMap<ObjectRef, Pending>,
    /// When the last snapshot was applied.
    last_snapshot: Option<Instant>,
    /// Component request ids handed to the installer: the manager re-sends a request
    /// until a heartbeat acknowledges it, and a re-sent one is not queued twice.
    queued_requests: std::collections::BTreeSet<uuid::Uuid>,
}

impl DesiredLoop {
    fn metrics(&self) -> &AgentMetrics {
        self.sh.metrics()
    }

    fn mark_applied(&self) {
        if self.pending.is_empty() {
            self.sh
                .applied_revision
                .store(self.cursor, Ordering::Relaxed);
        }
    }

    /// Applies `objects` (already sorted by kind) at `revision`. Per-object outcomes go
    /// to `pending` / logs; a transient API failure aborts.
    async fn apply_objects(
        &mut self,
        objects: Vec<DesiredObject>,
        revision: i64,
    ) -> Result<(), kube::Error> {
        let kube = self.sh.kube.clone();
        let fence = &self.fence;
        for kind in [ObjectKind::Tenant, ObjectKind::Project, ObjectKind::App] {
            let batch: Vec<DesiredObject> = objects
                .iter()
                .filter(|o| o.object_ref().kind == kind)
                .cloned()
                .collect();
            if batch.is_empty() {
                continue;
            }
            let results: Vec<(DesiredObject, Result<(), ApplyError>)> =
                stream::iter(batch.into_iter().map(|o| {
                    let kube = kube.clone();
                    let (span, unit) = apply_span(&o, revision);
                    let apply = async move {
                        let res = match apply_body(&o, revision) {
                            Ok((r, body)) => apply_one(&kube, fence, &body, r.kind).await,
                            Err(e) => Err(ApplyError::Invalid(e)),
                        };
                        (o, res)
                    };
                    kubenova_telemetry::propagation::run_unit(unit, apply.instrument(span))
                }))
                .buffer_unordered(APPLY_CONCURRENCY)
                .collect()
                .await;
            let mut transient = None;
            for (o, res) in results {
                let r = o.object_ref();
                let outcome = match res {
                    Ok(()) => {
                        self.pending.remove(&r);
                        "ok"
                    }
                    Err(ApplyError::NotYet(why)) => {
                        // `retry_pending` counts the attempts of objects already pending.
                        let attempts = self.pending.get(&r).map_or(1, |p| p.attempts);
                        let next = Instant::now() + pending_delay(&self.sh.config, attempts);
                        tracing::debug!(kind = kind_name(kind), id = %r.id, reason = %why, "not applicable yet; pending");
                        self.pending.insert(
                            r,
                            Pending {
                                object: o,
                                revision,
                                attempts,
                                next,
                            },
                        );
                        "pending"
                    }
                    Err(ApplyError::Invalid(why)) => {
                        self.pending.remove(&r);
                        tracing::error!(kind = kind_name(kind), id = %r.id, error = %why, "desired object refused; skipped");
                        "invalid"
                    }
                    Err(ApplyError::Transient(e)) => {
                        transient.get_or_insert(e);
                        "error"
                    }
                };
                AgentMetrics::count(
                    &self.metrics().applies,
                    ("kind", kind_name(kind)),
                    ("result", outcome),
                );
            }
            if let Some(e) = transient {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Deletes the objects of `refs` (apps, then projects, then tenants).
    async fn delete_refs(&mut self, refs: &[ObjectRef]) -> Result<(), kube::Error> {
        let mut refs = refs.to_vec();
        refs.sort_by_key(|r| std::cmp::Reverse(r.kind));
        for r in refs {
            self.pending.remove(&r);
            let selector = format!("{},{LABEL_ID}={}", manager_selector(), r.id);
            for obj in list_all(&self.sh.kube, r.kind, &selector).await? {
                if delete_obj(&self.sh.kube, &self.fence, r.kind, &obj).await? {
                    tracing::info!(kind = kind_name(r.kind), id = %r.id, name = ?obj.metadata.name, "deleted");
                    AgentMetrics::count(
                        &self.metrics().deletes,
                        ("kind", kind_name(r.kind)),
                        ("reason", "deleted"),
                    );
                }
            }
        }
        Ok(())
    }

    /// Every manager-sourced Nova object, by kind.
    async fn list_live(&self) -> Result<BTreeMap<ObjectKind, Vec<DynamicObject>>, kube::Error> {
        let mut live = BTreeMap::new();
        for kind in [ObjectKind::Tenant, ObjectKind::Project, ObjectKind::App] {
            live.insert(
                kind,
                list_all(&self.sh.kube, kind, &manager_selector()).await?,
            );
        }
        Ok(live)
    }

    /// Deletes every object of `live` not in `keep`.
    async fn prune(
        &mut self,
        keep: &BTreeSet<ObjectRef>,
        live: &BTreeMap<ObjectKind, Vec<DynamicObject>>,
    ) -> Result<(), kube::Error> {
        self.pending.retain(|r, _| keep.contains(r));
        for kind in [ObjectKind::App, ObjectKind::Project, ObjectKind::Tenant] {
            for obj in live.get(&kind).into_iter().flatten() {
                let wanted = id_of(obj).is_some_and(|id| keep.contains(&ObjectRef { kind, id }));
                if !wanted && delete_obj(&self.sh.kube, &self.fence, kind, obj).await? {
                    tracing::info!(kind = kind_name(kind), name = ?obj.metadata.name, namespace = ?obj.metadata.namespace, "pruned: not in the desired snapshot");
                    AgentMetrics::count(
                        &self.metrics().deletes,
                        ("kind", kind_name(kind)),
                        ("reason", "pruned"),
                    );
                }
            }
        }
        Ok(())
    }

    /// Drops from a snapshot the objects that the cluster already holds exactly as
    /// desired (see [`unchanged`]): a resync or a restart then writes nothing and
    /// churns no status, and those objects keep the revision they were applied at.
    fn skip_unchanged(
        &mut self,
        objects: Vec<DesiredObject>,
        live: &BTreeMap<ObjectKind, Vec<DynamicObject>>,
    ) -> Vec<DesiredObject> {
        let mut out = Vec::with_capacity(objects.len());
        for o in objects {
            let r = o.object_ref();
            let same = apply_body(&o, 0).is_ok_and(|(_, body)| {
                live.get(&r.kind)
                    .into_iter()
                    .flatten()
                    .any(|l| unchanged(&body, r.id, l))
            });
            if same {
                self.pending.remove(&r);
                AgentMetrics::count(
                    &self.metrics().applies,
                    ("kind", kind_name(r.kind)),
                    ("result", "unchanged"),
                );
            } else {
                out.push(o);
            }
        }
        out
    }

    /// Applies one answer of the long-poll. On error the cursor is unchanged.
    async fn handle(&mut self, d: DesiredState) -> Result<(), kube::Error> {
        let empty = d.objects.is_empty() && d.deleted.is_empty() && d.components.is_empty();
        if !d.snapshot && empty && d.revision == self.cursor {
            return Ok(()); // the wait timed out
        }
        tracing::debug!(
            revision = d.revision,
            snapshot = d.snapshot,
            objects = d.objects.len(),
            deleted = d.deleted.len(),
            "desired state"
        );
        let keep: BTreeSet<ObjectRef> = d.objects.iter().map(DesiredObject::object_ref).collect();
        let live = if d.snapshot {
            Some(self.list_live().await?)
        } else {
            None
        };
        let objects = match &live {
            Some(live) => self.skip_unchanged(d.objects, live),
            None => d.objects,
        };
        let applied_any = !objects.is_empty();
        self.apply_objects(objects, d.revision).await?;
        self.delete_refs(&d.deleted).await?;
        if let Some(live) = live {
            // Prune from what is there after the applies: the list read before them still
            // shows an object under its old record id that an apply has since taken over
            // for a record re-created under the same name.
            let live = if applied_any {
                self.list_live().await?
            } else {
                live
            };
            self.prune(&keep, &live).await?;
            self.last_snapshot = Some(Instant::now());
        }
        for c in d.components {
            if let Some(id) = c.id
                && (self.queued_requests.contains(&id)
                    || self.sh.config.component_states.is_acknowledged(id))
            {
                continue;
            }
            match &self.sh.config.component_requests {
                Some(tx) => {
                    // Not acknowledged here: the installer acknowledges once it takes
                    // the request, so a request lost before that is sent again.
                    if tx.send(c.clone()).is_err() {
                        tracing::warn!(component = %c.component, "component installer gone; the manager will send the request again");
                    } else if let Some(id) = c.id {
                        self.queued_requests.insert(id);
                    }
                }
                None => {
                    tracing::info!(component = %c.component, "component install requested; no installer configured")
                }
            }
        }
        self.cursor = d.revision;
        self.mark_applied();
        Ok(())
    }

    /// Retries the pending objects that are due.
    async fn retry_pending(&mut self) -> Result<(), kube::Error> {
        let now = Instant::now();
        let mut due: Vec<(DesiredObject, i64)> = Vec::new();
        for p in self.pending.values_mut().filter(|p| p.next <= now) {
            // Pushed back before the attempt, so that a failing API cannot make this a
            // busy loop.
            p.attempts = p.attempts.saturating_add(1);
            p.next = now + pending_delay(&self.sh.config, p.attempts);
            due.push((p.object.clone(), p.revision));
        }
        let mut by_rev: BTreeMap<i64, Vec<DesiredObject>> = BTreeMap::new();
        for (o, rev) in due {
            by_rev.entry(rev).or_default().push(o);
        }
        for (rev, objs) in by_rev {
            self.apply_objects(objs, rev).await?;
        }
        self.mark_applied();
        Ok(())
    }

    fn next_pending(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.next).min()
    }

    fn cursor_for_poll(&self) -> i64 {
        match self.last_snapshot {
            Some(t) if t.elapsed() < self.sh.config.resync_interval => self.cursor,
            _ => 0,
        }
    }
}

/// The desired-state loop. It writes only while the fence of the configuration
/// ([`AgentConfig::fence`]) is open and `shutdown` is `false`: every write is checked
/// against both just before it is sent, and the answer being applied is abandoned (not
/// finished) the moment either closes, after which the loop returns. The cursor is not
/// advanced by an abandoned answer; whoever leads next applies the desired state afresh.
pub(super) async fn run(sh: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let fence = sh.config.fence.clone().or_stopped(shutdown.clone());
    let mut st = DesiredLoop {
        fence: fence.clone(),
        sh: sh.clone(),
        cursor: 0,
        pending: BTreeMap::new(),
        last_snapshot: None,
        queued_requests: Default::default(),
    };
    let wait = Duration::from_secs(sh.config.poll_wait.as_secs().clamp(1, MAX_WAIT_SECONDS));
    let mut attempt: u32 = 0;
    loop {
        let cursor = st.cursor_for_poll();
        let res = {
            let poll = sh.client.desired(cursor, wait);
            tokio::pin!(poll);
            loop {
                let next = st.next_pending();
                tokio::select! {
                    r = &mut poll => break Some(r),
                    _ = super::stopped(&mut shutdown) => break None,
                    () = fence.closed() => break None,
                    _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                        let retried = tokio::select! {
                            r = st.retry_pending() => Some(r),
                            () = fence.closed() => None,
                        };
                        match retried {
                            Some(Ok(())) => {}
                            Some(Err(e)) => tracing::warn!(error = %e, "retrying pending objects failed"),
                            None => break None,
                        }
                    }
                }
            }
        };
        let Some(res) = res else {
            log_fenced(&fence);
            return;
        };
        sh.metrics().request("desired", &res);
        let class = match res {
            Ok(d) => {
                sh.manager_reached(true);
                // Raced against the fence: on step-down the answer is abandoned at once,
                // its requests still waiting for a reply are dropped.
                let handled = tokio::select! {
                    r = st.handle(d) => r,
                    () = fence.closed() => {
                        log_fenced(&fence);
                        return;
                    }
                };
                match handled {
                    Ok(()) => {
                        attempt = 0;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, cursor = st.cursor, "applying the desired state failed; retrying with the same cursor");
                        RetryClass::Transient
                    }
                }
            }
            Err(e) => {
                log_error("desired-state poll", &e);
                if e.manager_down() {
                    sh.manager_reached(false);
                }
                e.class()
            }
        };
        attempt = attempt.saturating_add(1);
        if super::sleep_or_stop(sh.config.retry_delay(class, attempt), &mut shutdown).await {
            return;
        }
    }
}

/// Logs why the loop stops writing.
fn log_fenced(fence: &Fence) {
    if !fence.is_open() {
        tracing::info!(
            "desired-state loop stopped (leadership lost or shutting down); applies in progress were abandoned"
        );
    }
}

/// Logs a manager failure at the level its class deserves.
pub(super) fn log_error(what: &str, e: &AgentError) {
    match e.class() {
        RetryClass::Transient => {
            tracing::warn!(error = %e, "{what}: manager unavailable; retrying")
        }
        RetryClass::Credential => {
            tracing::error!(error = %e, "{what}: the agent credential was refused; retrying slowly")
        }
        RetryClass::Permanent => tracing::error!(error = %e, "{what}: request rejected; retrying"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kubenova_api::crd::{NovaProjectSpec, NovaTenantSpec};

    #[test]
    fn bodies_carry_id_source_and_revision() {
        let id = Uuid::now_v7();
        let mut t = NovaTenant::new(
            "acme",
            NovaTenantSpec {
                plan: "gold".into(),
                ..Default::default()
            },
        );
        t.metadata.resource_version = Some("12".into());
        t.metadata.namespace = Some("ignored".into());
        let (r, v) = apply_body(
            &DesiredObject::Tenant {
                id,
                object: Box::new(t),
            },
            42,
        )
        .unwrap();
        assert_eq!(r.kind, ObjectKind::Tenant);
        assert_eq!(v["metadata"]["labels"][LABEL_ID], json!(id.to_string()));
        assert_eq!(v["metadata"]["labels"][LABEL_SOURCE], json!("manager"));
        assert_eq!(
            v["metadata"]["annotations"][ANNOTATION_DESIRED_REVISION],
            json!("42")
        );
        assert!(v["metadata"].get("resourceVersion").is_none());
        assert!(v["metadata"].get("namespace").is_none());
        assert_eq!(v["kind"], json!("NovaTenant"));

        let p = NovaProject::new(
            "web",
            NovaProjectSpec {
                tenant: "acme".into(),
                ..Default::default()
            },
        );
        let err = apply_body(
            &DesiredObject::Project {
                id,
                object: Box::new(p),
            },
            1,
        )
        .unwrap_err();
        assert!(err.contains("namespace"), "{err}");
    }

    #[test]
    fn specs_compare_modulo_zero_values() {
        let a = json!({"plan": "gold", "owners": ["a"], "suspended": false, "steps": []});
        assert!(equivalent(&a, &json!({"plan": "gold", "owners": ["a"]})));
        assert!(equivalent(&json!({"plan": "gold", "owners": ["a"]}), &a));
        assert!(!equivalent(
            &a,
            &json!({"plan": "gold", "owners": ["a", "b"]})
        ));
        assert!(!equivalent(&a, &json!({"plan": "gold"})), "owners dropped");
        assert!(!equivalent(
            &json!({"plan": "gold"}),
            &json!({"plan": "gold", "quotas": {"pods": "10"}})
        ));
        assert!(!equivalent(&json!({"suspended": true}), &json!({})));
    }

    #[test]
    fn unchanged_needs_same_identity_spec_and_revision() {
        let id = Uuid::now_v7();
        let o = DesiredObject::Tenant {
            id,
            object: Box::new(NovaTenant::new(
                "acme",
                NovaTenantSpec {
                    plan: "gold".into(),
                    ..Default::default()
                },
            )),
        };
        let (_, body) = apply_body(&o, 3).unwrap();
        let live = |rev: Option<&str>, plan: &str, lid: Uuid| -> DynamicObject {
            let mut meta = json!({"name": "acme", "labels": {LABEL_ID: lid.to_string(), LABEL_SOURCE: "manager"}});
            if let Some(rev) = rev {
                meta["annotations"] = json!({ANNOTATION_DESIRED_REVISION: rev});
            }
            serde_json::from_value(json!({
                "apiVersion": "kubenova.io/v1alpha1", "kind": "NovaTenant",
                "metadata": meta, "spec": {"plan": plan}, "status": {"phase": "Ready"}
            }))
            .unwrap()
        };
        assert!(unchanged(&body, id, &live(Some("1"), "gold", id)));
        assert!(!unchanged(&body, id, &live(None, "gold", id)));
        assert!(!unchanged(&body, id, &live(Some("1"), "platinum", id)));
        assert!(!unchanged(
            &body,
            id,
            &live(Some("1"), "gold", Uuid::now_v7())
        ));
    }
}
