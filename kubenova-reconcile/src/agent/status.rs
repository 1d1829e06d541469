//! The status reporter: watch the manager-sourced Nova objects, send what changed.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::{BoxStream, select_all};
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind, ObjectMeta};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use kubenova_api::agent::{
    LABEL_ID, ObjectKind, ObjectRef, ObjectReport, StatusReport, traceparent_of,
};
use kubenova_api::crd::{NovaApp, NovaProject, NovaStatus, NovaTenant};
use kubenova_api::model::{Condition, ObjectStatus, Phase};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument as _;
use uuid::Uuid;

use super::desired::{log_error, manager_selector};
use super::{ANNOTATION_DESIRED_REVISION, MAX_BATCH, Shared};
use crate::meta::{LABEL_MANAGED_BY, MANAGED_BY};

/// The report of one manager-sourced Nova object, from its metadata and status; `None`
/// when it has no valid [`LABEL_ID`].
///
/// - `observedRevision` is the [`ANNOTATION_DESIRED_REVISION`] the agent applied;
/// - the phase is `deleting` once the object is being deleted, and `reconciling` while
///   the status describes an older generation than the spec (so a new revision is never
///   reported `ready` on the strength of the previous spec's status);
/// - conditions are the object's `Ready` / `Reconciling` / `Degraded`.
///
/// ```
/// use kube::api::ObjectMeta;
/// use kubenova_api::agent::ObjectKind;
/// use kubenova_api::crd::{NovaPhase, NovaStatus};
/// use kubenova_api::model::Phase;
/// use kubenova_reconcile::agent::object_report;
/// let meta = ObjectMeta {
///     generation: Some(2),
///     labels: Some([("kubenova.io/id".to_string(), "0190d7a0-0000-7000-8000-000000000001".to_string())].into()),
///     annotations: Some([("kubenova.io/desired-revision".to_string(), "7".to_string())].into()),
///     ..Default::default()
/// };
/// let status = NovaStatus { phase: Some(NovaPhase::Ready), observed_generation: Some(2), ..Default::default() };
/// let r = object_report(ObjectKind::Tenant, &meta, Some(&status), None).unwrap();
/// assert_eq!(r.status.phase, Phase::Ready);
/// assert_eq!(r.status.observed_revision, Some(7));
/// let stale = NovaStatus { observed_generation: Some(1), ..status };
/// assert_eq!(object_report(ObjectKind::Tenant, &meta, Some(&stale), None).unwrap().status.phase, Phase::Reconciling);
/// ```
pub fn object_report(
    kind: ObjectKind,
    meta: &ObjectMeta,
    status: Option<&NovaStatus>,
    vela_phase: Option<String>,
) -> Option<ObjectReport> {
    let id = Uuid::try_parse(meta.labels.as_ref()?.get(LABEL_ID)?).ok()?;
    let observed_revision = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_DESIRED_REVISION))
        .and_then(|v| v.parse::<i64>().ok());
    let stale = status.is_some_and(|s| {
        s.observed_generation.is_some() && s.observed_generation != meta.generation
    });
    let phase = if meta.deletion_timestamp.is_some() {
        Phase::Deleting
    } else {
        match status.and_then(|s| s.phase) {
            Some(_) if stale => Phase::Reconciling,
            Some(p) => p.to_model(),
            None => Phase::Pending,
        }
    };
    let conditions = status
        .map(|s| {
            s.conditions
                .iter()
                .filter_map(|c| {
                    serde_json::to_value(c)
                        .ok()
                        .and_then(|v| serde_json::from_value::<Condition>(v).ok())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut report = ObjectReport {
        kind,
        id,
        status: ObjectStatus {
            phase,
            conditions,
            observed_revision,
            message: status.and_then(|s| s.message.clone()).unwrap_or_default(),
        },
        vela_phase: if kind == ObjectKind::App {
            vela_phase
        } else {
            None
        },
    };
    // The object's status may have been written by someone else (or an older
    // operator): send it within the bounds the manager stores.
    report.bound();
    Some(report)
}

/// `(namespace, name)` of a namespaced object.
type Key = (String, String);

fn key_of(meta: &ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// What the watches say.
enum Msg {
    /// A Nova object exists in this state.
    Upsert {
        kind: ObjectKind,
        meta: ObjectMeta,
        status: Option<NovaStatus>,
    },
    /// A Nova object is gone.
    Gone { kind: ObjectKind, meta: ObjectMeta },
    /// A KubeVela Application's `status.status` (None = gone).
    Vela { key: Key, phase: Option<String> },
    /// A watch failed (it retries by itself).
    WatchError(String),
}

fn nova_stream<K>(client: &Client, kind: ObjectKind) -> BoxStream<'static, Msg>
where
    K: Resource<DynamicType = ()>
        + kube::core::object::HasStatus<Status = NovaStatus>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + 'static,
{
    let api: Api<K> = Api::all(client.clone());
    watcher(api, watcher::Config::default().labels(&manager_selector()))
        .default_backoff()
        .flat_map(move |r| {
            let out = match r {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => Some(Msg::Upsert {
                    kind,
                    status: o.status().cloned(),
                    meta: o.meta().clone(),
                }),
                Ok(watcher::Event::Delete(o)) => Some(Msg::Gone {
                    kind,
                    meta: o.meta().clone(),
                }),
                Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
                Err(e) => Some(Msg::WatchError(e.to_string())),
            };
            futures::stream::iter(out)
        })
        .boxed()
}

fn vela_stream(client: &Client) -> BoxStream<'static, Msg> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("core.oam.dev", "v1beta1", "Application"),
        "applications",
    );
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let phase = |o: &DynamicObject| {
        o.data
            .pointer("/status/status")
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    watcher(
        api,
        watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}")),
    )
    .default_backoff()
    .map(move |r| match r {
        Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => Some(Msg::Vela {
            key: key_of(&o.metadata),
            phase: phase(&o),
        }),
        Ok(watcher::Event::Delete(o)) => Some(Msg::Vela {
            key: key_of(&o.metadata),
            phase: None,
        }),
        Ok(_) => None,
        // KubeVela may not be installed: not worth more than a debug line.
        Err(e) => {
            tracing::debug!(error = %e, "Application watch");
            None
        }
    })
    .filter_map(futures::future::ready)
    .boxed()
}

/// State of the reporter.
#[derive(Default)]
struct Reporter {
    /// Latest report per object that differs from what the manager has.
    dirty: BTreeMap<ObjectRef, ObjectReport>,
    /// What the manager has (accepted reports).
    sent: HashMap<ObjectRef, ObjectReport>,
    /// Current report per object (to re-evaluate apps when their Application changes).
    current: HashMap<ObjectRef, ObjectReport>,
    /// App object → its ref.
    apps: HashMap<Key, ObjectRef>,
    /// Application `status.status` by key.
    vela: HashMap<Key, String>,
    /// The trace of the write each object reflects (its `kubenova.io/traceparent`): the
    /// report that carries its status links to it.
    traces: HashMap<ObjectRef, String>,
}

impl Reporter {
    fn update(&mut self, r: ObjectReport) {
        let key = ObjectRef {
            kind: r.kind,
            id: r.id,
        };
        if self.sent.get(&key) == Some(&r) {
            self.dirty.remove(&key);
        } else {
            self.dirty.insert(key, r.clone());
        }
        self.current.insert(key, r);
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Upsert { kind, meta, status } => {
                let key = key_of(&meta);
                let vela = if kind == ObjectKind::App {
                    self.vela.get(&key).cloned()
                } else {
                    None
                };
                if let Some(r) = object_report(kind, &meta, status.as_ref(), vela) {
                    let oref = ObjectRef { kind, id: r.id };
                    if kind == ObjectKind::App {
                        self.apps.insert(key, oref);
                    }
                    match traceparent_of(&meta) {
                        Some(tp) => self.traces.insert(oref, tp.to_owned()),
                        None => self.traces.remove(&oref),
                    };
                    self.update(r);
                }
            }
            Msg::Gone { kind, meta } => {
                let Some(id) = meta
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_ID))
                    .and_then(|v| Uuid::try_parse(v).ok())
                else {
                    return;
                };
                let r = ObjectRef { kind, id };
                self.dirty.remove(&r);
                self.sent.remove(&r);
                self.current.remove(&r);
                self.traces.remove(&r);
                if kind == ObjectKind::App {
                    self.apps.remove(&key_of(&meta));
                }
            }
            Msg::Vela { key, phase } => {
                match &phase {
                    Some(p) => self.vela.insert(key.clone(), p.clone()),
                    None => self.vela.remove(&key),
                };
                if let Some(r) = self.apps.get(&key)
                    && let Some(cur) = self.current.get(r)
                    && cur.vela_phase != phase
                {
                    let mut next = cur.clone();
                    next.vela_phase = phase;
                    self.update(next);
                }
            }
            Msg::WatchError(e) => tracing::warn!(error = %e, "Nova object watch failed; retrying"),
        }
    }

    /// Sends up to [`MAX_BATCH`] dirty reports.
    async fn flush(&mut self, sh: &Shared) -> Result<(), super::AgentError> {
        let items: Vec<ObjectReport> = self.dirty.values().take(MAX_BATCH).cloned().collect();
        let n = items.len();
        // One span per batch, linked to the trace of every write whose outcome it reports.
        let span = tracing::info_span!("agent report", objects = n);
        if kubenova_telemetry::propagation::is_active() {
            let mut linked = std::collections::HashSet::new();
            for r in &items {
                let key = ObjectRef {
                    kind: r.kind,
                    id: r.id,
                };
                if let Some(tp) = self.traces.get(&key)
                    && linked.insert(tp.as_str())
                {
                    kubenova_telemetry::propagation::link_to(&span, tp);
                }
            }
        }
        let res = sh
            .client
            .report_status(&StatusReport { items })
            .instrument(span)
            .await;
        sh.metrics().request("status", &res);
        let reply = res?;
        let keys: Vec<ObjectRef> = self.dirty.keys().take(n).copied().collect();
        for k in keys {
            if let Some(r) = self.dirty.remove(&k) {
                self.sent.insert(k, r);
            }
        }
        sh.metrics().reports.inc_by(n as u64);
        tracing::debug!(
            sent = n,
            applied = reply.applied,
            ignored = reply.ignored,
            "status reported"
        );
        Ok(())
    }
}

/// The status-reporter loop.
pub(super) async fn run(sh: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let client = sh.kube.clone();
    let mut events = select_all(vec![
        nova_stream::<NovaTenant>(&client, ObjectKind::Tenant),
        nova_stream::<NovaProject>(&client, ObjectKind::Project),
        nova_stream::<NovaApp>(&client, ObjectKind::App),
        vela_stream(&client),
    ]);
    let mut rep = Reporter::default();
    let mut flush_at: Option<Instant> = None;
    let mut attempt: u32 = 0;
    loop {
        tokio::select! {
            _ = super::stopped(&mut shutdown) => return,
            msg = events.next() => {
                let Some(msg) = msg else { return };
                rep.handle(msg);
                if rep.dirty.is_empty() {
                    flush_at = None;
                } else if flush_at.is_none() {
                    flush_at = Some(Instant::now() + sh.config.status_debounce);
                }
            }
            _ = tokio::time::sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => {
                match rep.flush(&sh).await {
                    Ok(()) => {
                        attempt = 0;
                        sh.manager_reached(true);
                        flush_at = (!rep.dirty.is_empty()).then(Instant::now);
                    }
                    Err(e) => {
                        log_error("status report", &e);
                        if e.manager_down() {
                            sh.manager_reached(false);
                        }
                        attempt = attempt.saturating_add(1);
                        flush_at = Some(Instant::now() + sh.config.retry_delay(e.class(), attempt));
                    }
                }
            }
            _ = sh.reconnected.notified() => {
                if !rep.dirty.is_empty() {
                    attempt = 0;
                    flush_at = Some(Instant::now());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kubenova_api::crd::NovaPhase;

    fn meta(id: Uuid, rev: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some("web".into()),
            namespace: Some("ns".into()),
            generation: Some(1),
            labels: Some([(LABEL_ID.to_string(), id.to_string())].into()),
            annotations: Some([(ANNOTATION_DESIRED_REVISION.to_string(), rev.to_string())].into()),
            ..Default::default()
        }
    }

    fn ready() -> NovaStatus {
        NovaStatus {
            phase: Some(NovaPhase::Ready),
            observed_generation: Some(1),
            ..Default::default()
        }
    }

    #[test]
    fn only_changes_are_dirty() {
        let id = Uuid::now_v7();
        let mut rep = Reporter::default();
        let up = |rev: &str| Msg::Upsert {
            kind: ObjectKind::App,
            meta: meta(id, rev),
            status: Some(ready()),
        };
        rep.handle(up("1"));
        assert_eq!(rep.dirty.len(), 1);
        // Pretend it was sent.
        let (k, r) = rep.dirty.pop_first().unwrap();
        rep.sent.insert(k, r);
        rep.handle(up("1"));
        assert!(rep.dirty.is_empty(), "same state again is not a change");
        rep.handle(Msg::Vela {
            key: ("ns".into(), "web".into()),
            phase: Some("running".into()),
        });
        assert_eq!(
            rep.dirty.values().next().unwrap().vela_phase.as_deref(),
            Some("running")
        );
        rep.handle(Msg::Vela {
            key: ("ns".into(), "web".into()),
            phase: None,
        });
        assert!(rep.dirty.is_empty(), "back to what was sent");
        rep.handle(up("2"));
        assert_eq!(
            rep.dirty.values().next().unwrap().status.observed_revision,
            Some(2)
        );
        rep.handle(Msg::Gone {
            kind: ObjectKind::App,
            meta: meta(id, "2"),
        });
        assert!(rep.dirty.is_empty() && rep.sent.is_empty());
    }

    #[test]
    fn no_id_no_report() {
        let m = ObjectMeta::default();
        assert!(object_report(ObjectKind::Tenant, &m, None, None).is_none());
        let mut m = meta(Uuid::nil(), "x");
        m.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        let r = object_report(ObjectKind::Tenant, &m, None, Some("running".into())).unwrap();
        assert_eq!(r.status.phase, Phase::Deleting);
        assert_eq!(r.status.observed_revision, None);
        assert_eq!(r.vela_phase, None, "only apps carry a vela phase");
    }
}
