//! The metrics the service-level objectives and alerts of `deploy/monitoring/` are built
//! on, beyond the per-request ones of [`super::middleware`] (each documented in
//! `docs/src/observability.md`):
//!
//! - `kubenova_clusters{status}` and `kubenova_cluster_heartbeat_age_seconds{cluster_id,name}`,
//!   set by the periodic stale sweep ([`super::agent::spawn_stale_task`]) from the
//!   clusters it lists anyway;
//! - `kubenova_cluster_usage_upload_age_seconds{cluster_id,name}`: per connected cluster,
//!   the time since this replica last accepted a usage upload from it (or since this
//!   replica started); the minimum over replicas is the cluster's real age;
//! - `kubenova_signing_key_age_seconds` and `kubenova_signing_keys_readable`: the active
//!   kubeconfig signing key, read from the store by the sweep;
//! - `kubenova_store_backend_info{backend}`: 1 for the backend in use (with
//!   `kubenova_store_cache_enabled` it makes "record cache disabled on Postgres" an alert);
//! - `kubenova_agent_sync_lag_seconds{kind}`: from the API write of a tenant, project or
//!   app to the manager receiving the operator's first `ready` report covering it
//!   ([`SloMetrics::observe_sync_lag`]);
//! - `kubenova_cluster_sweep_timestamp_seconds`: when the sweep last completed.
//!
//! Label sets are bounded: statuses and kinds are fixed lists, and the per-cluster gauges
//! carry one series per registered cluster (removed when the cluster is deleted).

use super::AppState;
use kubenova_api::ids::ClusterId;
use kubenova_api::model::{Cluster, ClusterStatus};
use kubenova_kubeconfig::KeySet;
use kubenova_store::{Store, StoreError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use time::OffsetDateTime;

/// Every cluster status, so each has a series (0 when no cluster has it).
pub const CLUSTER_STATUSES: [ClusterStatus; 5] = [
    ClusterStatus::PendingBootstrap,
    ClusterStatus::Bootstrapping,
    ClusterStatus::Connected,
    ClusterStatus::Error,
    ClusterStatus::Stale,
];

/// Label of `kubenova_clusters`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// Cluster status (`pending_bootstrap`, `bootstrapping`, `connected`, `error`, `stale`).
    pub status: &'static str,
}

/// Labels of the per-cluster gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    /// Cluster id.
    pub cluster_id: String,
    /// Cluster name.
    pub name: String,
}

/// Label of `kubenova_store_backend_info`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    /// `postgres` or `sqlite`.
    pub backend: &'static str,
}

/// Label of `kubenova_agent_sync_lag_seconds`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `tenant`, `project` or `app`.
    pub kind: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Upper bounds of `kubenova_agent_sync_lag_seconds` (the SLO threshold, 60 s, is one).
pub const SYNC_LAG_BUCKETS: [f64; 13] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

fn sync_lag_histogram() -> Histogram {
    Histogram::new(SYNC_LAG_BUCKETS)
}

/// The SLO metrics (see the module documentation).
pub struct SloMetrics {
    /// `kubenova_clusters{status}`.
    pub clusters: Family<StatusLabel, Gauge>,
    /// `kubenova_cluster_heartbeat_age_seconds{cluster_id,name}`.
    pub heartbeat_age: Family<ClusterLabels, FloatGauge>,
    /// `kubenova_cluster_usage_upload_age_seconds{cluster_id,name}`.
    pub usage_upload_age: Family<ClusterLabels, FloatGauge>,
    /// `kubenova_signing_key_age_seconds`.
    pub signing_key_age: FloatGauge,
    /// `kubenova_signing_keys_readable`.
    pub signing_keys_readable: Gauge,
    /// `kubenova_store_backend_info{backend}`.
    pub store_backend: Family<BackendLabel, Gauge>,
    /// `kubenova_agent_sync_lag_seconds{kind}`.
    pub sync_lag: Family<KindLabel, Histogram, fn() -> Histogram>,
    /// `kubenova_cluster_sweep_timestamp_seconds`.
    pub sweep_timestamp: FloatGauge,
    /// When this replica last accepted a usage upload, per cluster.
    usage_uploads: Mutex<HashMap<ClusterId, OffsetDateTime>>,
    /// The per-cluster series set by the last sweep (to remove deleted clusters' series).
    cluster_series: Mutex<HashSet<ClusterLabels>>,
    started: OffsetDateTime,
}

impl std::fmt::Debug for SloMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SloMetrics").finish_non_exhaustive()
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn seconds(d: time::Duration) -> f64 {
    d.as_seconds_f64().max(0.0)
}

impl SloMetrics {
    /// Creates the metrics and registers them (the registry's prefix is `kubenova`).
    pub fn new(registry: &mut Registry) -> Self {
        let m = SloMetrics {
            clusters: Family::default(),
            heartbeat_age: Family::default(),
            usage_upload_age: Family::default(),
            signing_key_age: FloatGauge::default(),
            signing_keys_readable: Gauge::default(),
            store_backend: Family::default(),
            sync_lag: Family::new_with_constructor(sync_lag_histogram),
            sweep_timestamp: FloatGauge::default(),
            usage_uploads: Mutex::default(),
            cluster_series: Mutex::default(),
            started: OffsetDateTime::now_utc(),
        };
        registry.register(
            "clusters",
            "Registered clusters by status, as of the last stale sweep",
            m.clusters.clone(),
        );
        registry.register(
            "cluster_heartbeat_age_seconds",
            "Seconds since the cluster's operator last heartbeated, as of the last stale sweep (clusters that heartbeated at least once)",
            m.heartbeat_age.clone(),
        );
        registry.register(
            "cluster_usage_upload_age_seconds",
            "Per connected cluster: seconds since this replica last accepted its usage upload, or since this replica started (take the minimum over replicas)",
            m.usage_upload_age.clone(),
        );
        registry.register(
            "signing_key_age_seconds",
            "Age of the active kubeconfig signing key, as read from the store by the last sweep",
            m.signing_key_age.clone(),
        );
        registry.register(
            "signing_keys_readable",
            "1 when the last sweep could read and decrypt the kubeconfig signing keys from the store, else 0",
            m.signing_keys_readable.clone(),
        );
        registry.register(
            "store_backend_info",
            "1 for the store backend this manager uses (postgres, sqlite)",
            m.store_backend.clone(),
        );
        registry.register(
            "agent_sync_lag_seconds",
            "Time from the API write of a tenant, project or app to the operator's first ready report covering it, by kind",
            m.sync_lag.clone(),
        );
        registry.register(
            "cluster_sweep_timestamp_seconds",
            "Unix time the last stale sweep (cluster census, signing keys, store backend) completed",
            m.sweep_timestamp.clone(),
        );
        m
    }

    /// Notes an accepted usage upload of `cluster` (for `kubenova_cluster_usage_upload_age_seconds`).
    pub fn record_usage_upload(&self, cluster: ClusterId) {
        locked(&self.usage_uploads).insert(cluster, OffsetDateTime::now_utc());
    }

    /// Sets the cluster census from the clusters as they stand after a stale sweep
    /// (statuses as clients see them), and removes the series of deleted clusters.
    pub fn observe_clusters(&self, clusters: &[Cluster], now: OffsetDateTime) {
        let mut counts = [0i64; CLUSTER_STATUSES.len()];
        let mut seen = HashSet::with_capacity(clusters.len());
        let uploads = locked(&self.usage_uploads).clone();
        for c in clusters {
            if let Some(i) = CLUSTER_STATUSES.iter().position(|s| *s == c.status) {
                counts[i] += 1;
            }
            let labels = ClusterLabels {
                cluster_id: c.id.to_string(),
                name: c.name.clone(),
            };
            if let Some(t) = c.last_heartbeat_at {
                self.heartbeat_age
                    .get_or_create(&labels)
                    .set(seconds(now - t));
            } else {
                self.heartbeat_age.remove(&labels);
            }
            if c.status == ClusterStatus::Connected {
                let since = uploads
                    .get(&c.id)
                    .copied()
                    .map_or(self.started, |t| t.max(self.started));
                self.usage_upload_age
                    .get_or_create(&labels)
                    .set(seconds(now - since));
            } else {
                self.usage_upload_age.remove(&labels);
            }
            seen.insert(labels);
        }
        for (status, n) in CLUSTER_STATUSES.iter().zip(counts) {
            self.clusters
                .get_or_create(&StatusLabel {
                    status: status.as_str(),
                })
                .set(n);
        }
        let mut previous = locked(&self.cluster_series);
        for gone in previous.difference(&seen) {
            self.heartbeat_age.remove(gone);
            self.usage_upload_age.remove(gone);
        }
        *previous = seen;
        let ids: HashSet<ClusterId> = clusters.iter().map(|c| c.id).collect();
        locked(&self.usage_uploads).retain(|id, _| ids.contains(id));
    }

    /// Records the sync lag of one object: `written_at` is its last API write.
    pub fn observe_sync_lag(&self, kind: &'static str, written_at: OffsetDateTime) {
        self.sync_lag
            .get_or_create(&KindLabel { kind })
            .observe(seconds(OffsetDateTime::now_utc() - written_at));
    }
}

/// Reads and decrypts the stored kubeconfig signing keys without creating them (the
/// manager creates them at start, so their absence afterwards means they were lost). The
/// error is client-safe (readiness is public): it says what is wrong and what to do, and
/// the store's own error goes to the log.
pub async fn read_signing_keys(store: &dyn Store) -> Result<KeySet, String> {
    let bytes = store
        .get_secret(
            super::kubeconfigs::SIGNING_KEYS_OWNER,
            super::kubeconfigs::SIGNING_KEYS_PURPOSE,
        )
        .await
        .map_err(|e| match e {
            StoreError::NotFound { .. } => {
                "the kubeconfig signing keys are missing from the store; restore them from a backup or restart a manager to generate new ones (see the lost signing key runbook)".to_string()
            }
            StoreError::Crypto(e) => {
                tracing::warn!(error = %e, "the kubeconfig signing keys cannot be decrypted");
                "the kubeconfig signing keys cannot be decrypted: give this replica the KEK that wrapped them (see the key management runbook)".to_string()
            }
            e => {
                tracing::warn!(error = %e, "reading the kubeconfig signing keys failed");
                "the kubeconfig signing keys cannot be read from the store; see the manager log".to_string()
            }
        })?;
    KeySet::from_bytes(&bytes).map_err(|e| {
        tracing::warn!(error = %e, "the stored kubeconfig signing keys are unusable");
        "the stored kubeconfig signing keys are unusable; restore them from a backup or rotate them (see the lost signing key runbook)".to_string()
    })
}

/// The store and key part of a sweep: the backend in use and the signing key's age.
pub async fn observe_store(st: &AppState) {
    let m = &st.runtime.slo;
    match st.store.ping().await {
        Ok(h) => {
            m.store_backend
                .get_or_create(&BackendLabel { backend: h.backend })
                .set(1);
        }
        Err(e) => tracing::warn!(error = %e, "sweep: store ping failed"),
    }
    match read_signing_keys(st.store.as_ref()).await {
        Ok(keys) => {
            m.signing_keys_readable.set(1);
            m.signing_key_age.set(seconds(
                OffsetDateTime::now_utc() - keys.active().created_at(),
            ));
        }
        Err(e) => {
            m.signing_keys_readable.set(0);
            tracing::warn!(error = %e, "sweep: signing keys unreadable");
        }
    }
    m.sweep_timestamp
        .set(OffsetDateTime::now_utc().unix_timestamp_nanos() as f64 / 1e9);
}
