//! The usage loop: samples the cluster, integrates each UTC hour ([`crate::usage`]) and
//! uploads the hourly records through the agent channel.
//!
//! - Every [`AgentConfig::usage_sample_interval`] (and on demand) the loop lists
//!   namespaces, Nova tenants and projects, pods, PVCs, Services, ResourceQuotas and
//!   KubeVela Applications (paged; each object reduced to what the sample reads as its
//!   page arrives) and adds a [`Sample`](crate::usage::Sample), with its time, to
//!   the hour's accumulator (a time-weighted integral).
//! - When a UTC hour ends, its records go to the **outbox**; so does the hour so far on
//!   demand ([`UsageTrigger::collect_now`]), every
//!   [`AgentConfig::usage_report_interval`] when set, and at shutdown. A later record of
//!   the same (tenant, project, hour) replaces the earlier one in the outbox, as it does
//!   in the manager.
//! - The outbox is sent oldest hour first in batches of at most [`USAGE_BATCH`] records
//!   (`POST /api/v1/agent/usage`). Unreachable manager, 5xx, 429 and refused credentials
//!   keep everything and retry with backoff; a batch the manager rejects (4xx) is split
//!   in halves until the rejected records are isolated, and only those are dropped (an
//!   error log each, `kubenova_agent_usage_dropped_total`).
//! - What is not sent yet is kept in the ConfigMap [`USAGE_CONFIGMAP`] of the operator's
//!   namespace, so that it survives a restart, bounded by
//!   [`AgentConfig::usage_buffer_max_bytes`]: when over, the oldest hours are dropped
//!   first (error log, counted).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kubenova_api::agent::{AGENT_FIELD_MANAGER, USAGE_CONFIGMAP, USAGE_CONFIGMAP_KEY};
use kubenova_api::ids::{ProjectId, TenantId};
use kubenova_api::model::UsageRecord;
use serde::de::DeserializeOwned;
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::client::AgentError;
use super::desired::log_error;
use super::{RetryClass, Shared, stopped};
use crate::meta::{LABEL_MANAGED_BY, MANAGED_BY};
use crate::usage::{HourAccumulator, Inventory, hour_of, sample, trim};

/// Most records in one upload.
pub const USAGE_BATCH: usize = 500;
/// Page size of the inventory lists.
const LIST_PAGE: u32 = 500;

/// Asks the usage loop for a collection now: a sample is taken and the hour so far is
/// reported (it is replaced by the hour's final record later). Requests made while one is
/// running coalesce.
///
/// ```
/// let t = kubenova_reconcile::agent::UsageTrigger::default();
/// t.collect_now();
/// ```
#[derive(Debug, Clone, Default)]
pub struct UsageTrigger(Arc<Notify>);

impl UsageTrigger {
    /// Requests a collection and report now.
    pub fn collect_now(&self) {
        self.0.notify_one();
    }
}

/// Lists what a usage sample is taken from (every namespace; paged), each object reduced
/// to the fields the sample reads as its page arrives ([`trim`]): at 10,000 pods the
/// objects as listed would take hundreds of MiB at once. KubeVela Applications count as
/// none while their CRD is not served.
pub async fn collect_inventory(client: &Client) -> Result<Inventory, kube::Error> {
    let vela = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "core.oam.dev",
        "v1beta1",
        "Application",
    ));
    let apps = Api::<DynamicObject>::all_with(client.clone(), &vela);
    let applications = match list_all(apps, |a| trim::meta(a.metadata, false)).await {
        Ok(apps) => apps,
        Err(kube::Error::Api(s)) if s.code == 404 => Vec::new(),
        Err(e) => return Err(e),
    };
    // Listed first: a pod scheduled to a Node added after this list counts as pending
    // (on top of the capacity), never the other way round.
    let nodes = match list_all(Api::<Node>::all(client.clone()), trim::node).await {
        Ok(nodes) => Some(nodes),
        Err(kube::Error::Api(s)) if s.code == 403 => {
            tracing::warn!(
                "usage: listing Nodes is forbidden, so no cluster capacity is reported with the usage (grant `list` on nodes: apply the current deploy/operator/rbac.yaml)"
            );
            None
        }
        Err(e) => return Err(e),
    };
    Ok(Inventory {
        namespaces: list_all(Api::all(client.clone()), trim::namespace).await?,
        tenants: list_all(Api::all(client.clone()), trim::tenant).await?,
        projects: list_all(Api::all(client.clone()), trim::project).await?,
        pods: list_all(Api::all(client.clone()), trim::pod).await?,
        pvcs: list_all(Api::all(client.clone()), trim::pvc).await?,
        services: list_all(Api::all(client.clone()), trim::service).await?,
        quotas: list_all(Api::all(client.clone()), trim::quota).await?,
        applications,
        nodes,
    })
}

/// Every object of `api`, page by page, each reduced by `keep`.
async fn list_all<K, T>(api: Api<K>, keep: impl Fn(K) -> T) -> Result<Vec<T>, kube::Error>
where
    K: Clone + DeserializeOwned + Debug,
{
    let mut out = Vec::new();
    let mut lp = ListParams::default().limit(LIST_PAGE);
    loop {
        let page = api.list(&lp).await?;
        out.extend(page.items.into_iter().map(&keep));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => return Ok(out),
        }
    }
}

type Key = (OffsetDateTime, TenantId, Option<ProjectId>);

/// The records not sent yet, oldest hour first, and what the ConfigMap holds.
struct Outbox {
    records: BTreeMap<Key, UsageRecord>,
    /// The JSON last written to the ConfigMap (`None`: never written, or empty).
    written: Option<String>,
}

impl Outbox {
    fn put(&mut self, records: Vec<UsageRecord>) {
        for r in records {
            self.records.insert((r.hour, r.tenant_id, r.project_id), r);
        }
    }

    /// Loads what a previous run left in the ConfigMap.
    async fn load(sh: &Shared) -> Outbox {
        let mut out = Outbox {
            records: BTreeMap::new(),
            written: None,
        };
        let api: Api<ConfigMap> = Api::namespaced(sh.kube.clone(), &sh.config.namespace);
        match api.get_opt(USAGE_CONFIGMAP).await {
            Ok(Some(cm)) => {
                let text = cm
                    .data
                    .and_then(|mut d| d.remove(USAGE_CONFIGMAP_KEY))
                    .unwrap_or_default();
                if text.is_empty() {
                    return out;
                }
                match serde_json::from_str::<Vec<UsageRecord>>(&text) {
                    Ok(records) => {
                        tracing::info!(
                            records = records.len(),
                            configmap = USAGE_CONFIGMAP,
                            "usage: hours not sent before the restart loaded"
                        );
                        out.put(records);
                        out.written = Some(text);
                    }
                    Err(e) => tracing::error!(
                        error = %e,
                        configmap = USAGE_CONFIGMAP,
                        "usage: the buffered hours cannot be read and are dropped"
                    ),
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, configmap = USAGE_CONFIGMAP, "usage: reading the buffer")
            }
        }
        out
    }

    /// Drops the oldest hours until the serialized outbox fits `max_bytes`; returns it.
    fn bounded_json(&mut self, sh: &Shared) -> String {
        loop {
            let records: Vec<&UsageRecord> = self.records.values().collect();
            let text = serde_json::to_string(&records).unwrap_or_else(|_| "[]".into());
            if text.len() <= sh.config.usage_buffer_max_bytes || self.records.is_empty() {
                return text;
            }
            let Some(oldest) = self.records.keys().next().map(|k| k.0) else {
                return text;
            };
            let before = self.records.len();
            self.records.retain(|k, _| k.0 != oldest);
            let dropped = before - self.records.len();
            sh.metrics().usage_dropped.inc_by(dropped as u64);
            tracing::error!(
                hour = %oldest,
                records = dropped,
                max_bytes = sh.config.usage_buffer_max_bytes,
                "usage: the buffer of unsent hours is full; the oldest hour is dropped"
            );
        }
    }

    /// Writes the outbox to the ConfigMap when it differs from what was written.
    async fn persist(&mut self, sh: &Shared) {
        let text = if self.records.is_empty() {
            None
        } else {
            Some(self.bounded_json(sh))
        };
        if text == self.written {
            return;
        }
        let ns = &sh.config.namespace;
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": USAGE_CONFIGMAP, "namespace": ns, "labels": {LABEL_MANAGED_BY: MANAGED_BY}},
            "data": {USAGE_CONFIGMAP_KEY: text.as_deref().unwrap_or("")},
        });
        // A deposed leader must not overwrite the buffer the new leader keeps.
        if sh.config.fence.check().is_err() {
            tracing::debug!(
                configmap = USAGE_CONFIGMAP,
                "usage: not the leader any more; buffer not written"
            );
            return;
        }
        let res = Api::<ConfigMap>::namespaced(sh.kube.clone(), ns)
            .patch(
                USAGE_CONFIGMAP,
                &PatchParams::apply(AGENT_FIELD_MANAGER).force(),
                &Patch::Apply(&cm),
            )
            .await;
        match res {
            Ok(_) => self.written = text,
            Err(e) => {
                tracing::warn!(error = %e, configmap = USAGE_CONFIGMAP, "usage: writing the buffer of unsent hours")
            }
        }
    }

    /// Sends everything, oldest first. Stops at the first failure that a retry can fix
    /// (returning it); records the manager rejects are isolated and dropped.
    async fn send(&mut self, sh: &Shared) -> Result<(), AgentError> {
        while !self.records.is_empty() {
            let batch: Vec<UsageRecord> =
                self.records.values().take(USAGE_BATCH).cloned().collect();
            let mut stack = vec![batch];
            while let Some(part) = stack.pop() {
                let res = sh.client.upload_usage(&part).await;
                sh.metrics().request("usage", &res);
                match res {
                    Ok(()) => {
                        sh.metrics().usage_records.inc_by(part.len() as u64);
                        for r in &part {
                            self.records.remove(&(r.hour, r.tenant_id, r.project_id));
                        }
                    }
                    Err(e) if e.class() == RetryClass::Permanent => {
                        if part.len() > 1 {
                            let mut first = part;
                            let second = first.split_off(first.len() / 2);
                            stack.push(second);
                            stack.push(first);
                        } else {
                            for r in &part {
                                self.records.remove(&(r.hour, r.tenant_id, r.project_id));
                                sh.metrics().usage_dropped.inc();
                                tracing::error!(error = %e, tenant = %r.tenant_id, project = ?r.project_id, hour = %r.hour,
                                    "usage: the manager rejected this record; dropped");
                            }
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

/// The usage loop (see the module docs). Off when the sample interval is zero.
pub(super) async fn run(sh: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let every = sh.config.usage_sample_interval;
    if every.is_zero() {
        tracing::info!("usage collection off");
        return;
    }
    let tenant_metrics = sh.metrics().tenants.publisher();
    let mut outbox = Outbox::load(&sh).await;
    let mut acc = HourAccumulator::new(OffsetDateTime::now_utc());
    // Hours that ended before the manager told us the cluster id.
    let mut closed: Vec<HourAccumulator> = Vec::new();
    let mut next_sample = Instant::now();
    let report_every = sh.config.usage_report_interval;
    let mut next_report = report_every.map(|d| Instant::now() + d);
    let mut next_send: Option<Instant> = None;
    let mut attempt: u32 = 0;
    let trigger = sh.config.usage_trigger.0.clone();
    // A report of the hour so far is due (kept until the cluster id is known).
    let mut report_due = false;
    loop {
        let mut wake = next_sample;
        if (report_due || !closed.is_empty()) && sh.cluster_id().is_none() {
            // Waiting for the first heartbeat reply to name the cluster.
            wake = wake.min(Instant::now() + std::time::Duration::from_secs(1));
        }
        if let Some(t) = next_report {
            wake = wake.min(t);
        }
        if !outbox.records.is_empty()
            && let Some(t) = next_send
        {
            wake = wake.min(t);
        }
        let forced = tokio::select! {
            _ = tokio::time::sleep_until(wake) => false,
            _ = trigger.notified() => true,
            _ = sh.reconnected.notified() => {
                next_send = None;
                false
            }
            _ = stopped(&mut shutdown) => break,
        };
        let now = Instant::now();
        report_due |= forced;
        if forced || now >= next_sample {
            let wall = OffsetDateTime::now_utc();
            if hour_of(wall) != acc.hour() {
                // The next hour starts from the last state when it follows at once; after
                // a longer gap nothing is carried over (nothing was observed).
                let next = if acc.end() == hour_of(wall) {
                    acc.next_hour()
                } else {
                    HourAccumulator::new(wall)
                };
                closed.push(std::mem::replace(&mut acc, next));
            }
            match collect_inventory(&sh.kube).await {
                Ok(inv) => {
                    let s = sample(&inv);
                    if !s.unattributed_namespaces.is_empty() {
                        tracing::debug!(namespaces = ?s.unattributed_namespaces, "usage: namespaces labelled for a tenant the manager does not know");
                    }
                    if !s.bad_quantities.is_empty() {
                        tracing::warn!(quantities = ?s.bad_quantities, "usage: unparsable quantities counted as zero");
                    }
                    sh.metrics().usage_samples.inc();
                    tenant_metrics.observe(&s, wall);
                    acc.add(&s, wall);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "usage: listing the cluster failed; this sample is skipped")
                }
            }
            next_sample = now + every;
        }
        if let (Some(t), Some(d)) = (next_report, report_every)
            && now >= t
        {
            report_due = true;
            next_report = Some(now + d);
        }
        let cluster = sh.cluster_id();
        if let Some(cluster) = cluster {
            for a in closed.drain(..) {
                outbox.put(a.records(cluster, a.end()));
            }
            if report_due {
                outbox.put(acc.records(cluster, OffsetDateTime::now_utc()));
                report_due = false;
                next_send = None;
            }
        } else if closed.len() > 24 * 7 {
            // A week without ever reaching the manager: keep the last week.
            closed.remove(0);
        }
        if !outbox.records.is_empty() && next_send.is_none_or(|t| now >= t) {
            match outbox.send(&sh).await {
                Ok(()) => {
                    attempt = 0;
                    next_send = None;
                }
                Err(e) => {
                    log_error("usage", &e);
                    attempt = attempt.saturating_add(1);
                    next_send = Some(Instant::now() + sh.config.retry_delay(e.class(), attempt));
                }
            }
        }
        outbox.persist(&sh).await;
    }
    // The hour so far is kept for the next start (which replaces it when it reports the
    // same hour again).
    if let Some(cluster) = sh.cluster_id() {
        for a in closed.drain(..) {
            outbox.put(a.records(cluster, a.end()));
        }
        outbox.put(acc.records(cluster, OffsetDateTime::now_utc()));
    }
    outbox.persist(&sh).await;
}
