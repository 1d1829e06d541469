//! Per-tenant Prometheus gauges of the **latest usage sample** ([`TenantMetrics`]).
//!
//! Each gauge is what the last [`Sample`] measured for a tenant as a whole (its projects'
//! namespaces included), the instant it was taken: not an hourly mean (that is the usage
//! record), and not updated between samples (every [`AgentConfig::usage_sample_interval`],
//! 5 minutes by default, and on demand). The label `tenant` is the NovaTenant's name,
//! which is the tenant's name in the manager's API.
//!
//! `kubenova_tenant_objects{tenant,kind,phase}` counts the tenant's NovaTenant and
//! NovaProjects by phase ([`Sample::phases`]), as the sample listed them (NovaApps are not
//! listed by a sample).
//!
//! A tenant's series exist while it is in the samples: every NovaTenant with a manager id
//! (zero when it has no namespace yet). The series of a tenant missing from a sample, and
//! of a storage class or quota resource a tenant no longer has, are removed by that
//! sample; all of them when the usage loop stops (this replica is no longer the leader,
//! or shuts down), so a standby replica exposes none.
//!
//! Cardinality: one series per tenant of the cluster for each metric, plus one per
//! storage class, quota resource and (kind, phase) the tenant has. [`TenantMetrics::new`] with
//! `false` turns them off (the operator's `--tenant-metrics false`).
//!
//! [`AgentConfig::usage_sample_interval`]: crate::agent::AgentConfig::usage_sample_interval

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use time::OffsetDateTime;

use super::Sample;

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// The gauges of the latest usage sample per tenant (see the [module docs](self)).
///
/// ```
/// use kubenova_reconcile::usage::{Sample, TenantMetrics};
/// let metrics = TenantMetrics::default();
/// let mut registry = prometheus_client::registry::Registry::default();
/// metrics.register(&mut registry);
/// metrics.observe(&Sample::default(), time::OffsetDateTime::now_utc());
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
/// assert!(text.contains("# TYPE kubenova_tenant_pods gauge"));
/// ```
#[derive(Debug)]
pub struct TenantMetrics {
    enabled: bool,
    /// `kubenova_tenant_cpu_requests_cores{tenant}`.
    cpu_requests: Family<Labels, FloatGauge>,
    /// `kubenova_tenant_cpu_limits_cores{tenant}`.
    cpu_limits: Family<Labels, FloatGauge>,
    /// `kubenova_tenant_memory_requests_bytes{tenant}`.
    memory_requests: Family<Labels, Gauge>,
    /// `kubenova_tenant_memory_limits_bytes{tenant}`.
    memory_limits: Family<Labels, Gauge>,
    /// `kubenova_tenant_storage_bytes{tenant,storage_class}`.
    storage: Family<Labels, Gauge>,
    /// `kubenova_tenant_pods{tenant}`.
    pods: Family<Labels, Gauge>,
    /// `kubenova_tenant_apps{tenant}`.
    apps: Family<Labels, Gauge>,
    /// `kubenova_tenant_namespaces{tenant}`.
    namespaces: Family<Labels, Gauge>,
    /// `kubenova_tenant_load_balancers{tenant}`.
    load_balancers: Family<Labels, Gauge>,
    /// `kubenova_tenant_quota_used_ratio{tenant,resource}`.
    quota_ratio: Family<Labels, FloatGauge>,
    /// `kubenova_tenant_quotas_exceeded{tenant}`.
    quotas_exceeded: Family<Labels, Gauge>,
    /// `kubenova_tenant_usage_sample_timestamp_seconds{tenant}`.
    sampled_at: Family<Labels, FloatGauge>,
    /// `kubenova_tenant_objects{tenant,kind,phase}`.
    objects: Family<Labels, Gauge>,
    /// The label sets of the storage, quota and object series set by the last sample,
    /// and its tenants, to remove what the next one no longer has.
    present: Mutex<Present>,
}

#[derive(Debug, Default)]
struct Present {
    tenants: BTreeSet<String>,
    storage: BTreeSet<Labels>,
    quota: BTreeSet<Labels>,
    objects: BTreeSet<Labels>,
}

impl Default for TenantMetrics {
    fn default() -> Self {
        TenantMetrics::new(true)
    }
}

fn tenant_labels(tenant: &str) -> Labels {
    vec![("tenant".to_owned(), tenant.to_owned())]
}

fn labels2(tenant: &str, key: &str, value: &str) -> Labels {
    vec![
        ("tenant".to_owned(), tenant.to_owned()),
        (key.to_owned(), value.to_owned()),
    ]
}

fn int(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

impl TenantMetrics {
    /// Gauges that are registered and set when `enabled`; otherwise [`register`](Self::register)
    /// and [`observe`](Self::observe) do nothing.
    pub fn new(enabled: bool) -> TenantMetrics {
        TenantMetrics {
            enabled,
            cpu_requests: Family::default(),
            cpu_limits: Family::default(),
            memory_requests: Family::default(),
            memory_limits: Family::default(),
            storage: Family::default(),
            pods: Family::default(),
            apps: Family::default(),
            namespaces: Family::default(),
            load_balancers: Family::default(),
            quota_ratio: Family::default(),
            quotas_exceeded: Family::default(),
            sampled_at: Family::default(),
            objects: Family::default(),
            present: Mutex::new(Present::default()),
        }
    }

    /// Whether the gauges are on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Registers every gauge in `registry` (prefix `kubenova_tenant_`); nothing when off.
    pub fn register(&self, registry: &mut Registry) {
        if !self.enabled {
            return;
        }
        registry.register(
            "kubenova_tenant_cpu_requests_cores",
            "CPU requests of the tenant's non-terminated pods at the latest usage sample",
            self.cpu_requests.clone(),
        );
        registry.register(
            "kubenova_tenant_cpu_limits_cores",
            "CPU limits of the tenant's non-terminated pods at the latest usage sample",
            self.cpu_limits.clone(),
        );
        registry.register(
            "kubenova_tenant_memory_requests_bytes",
            "Memory requests of the tenant's non-terminated pods at the latest usage sample",
            self.memory_requests.clone(),
        );
        registry.register(
            "kubenova_tenant_memory_limits_bytes",
            "Memory limits of the tenant's non-terminated pods at the latest usage sample",
            self.memory_limits.clone(),
        );
        registry.register(
            "kubenova_tenant_storage_bytes",
            "Capacity of the tenant's Bound PVCs by storage class at the latest usage sample",
            self.storage.clone(),
        );
        registry.register(
            "kubenova_tenant_pods",
            "The tenant's non-terminated pods at the latest usage sample",
            self.pods.clone(),
        );
        registry.register(
            "kubenova_tenant_apps",
            "The tenant's KubeVela Applications at the latest usage sample",
            self.apps.clone(),
        );
        registry.register(
            "kubenova_tenant_namespaces",
            "The tenant's namespaces at the latest usage sample",
            self.namespaces.clone(),
        );
        registry.register(
            "kubenova_tenant_load_balancers",
            "The tenant's LoadBalancer Services at the latest usage sample",
            self.load_balancers.clone(),
        );
        registry.register(
            "kubenova_tenant_quota_used_ratio",
            "Highest used/hard of a resource among the tenant's ResourceQuotas at the latest usage sample",
            self.quota_ratio.clone(),
        );
        registry.register(
            "kubenova_tenant_quotas_exceeded",
            "ResourceQuota entries of the tenant whose use is over the hard limit at the latest usage sample",
            self.quotas_exceeded.clone(),
        );
        registry.register(
            "kubenova_tenant_usage_sample_timestamp_seconds",
            "Unix time of the latest usage sample that measured the tenant",
            self.sampled_at.clone(),
        );
        registry.register(
            "kubenova_tenant_objects",
            "The tenant's NovaTenant and NovaProjects by phase at the latest usage sample",
            self.objects.clone(),
        );
    }

    /// Sets every gauge from `sample`, taken at `at`, and removes the series of tenants,
    /// storage classes and quota resources it no longer has.
    pub fn observe(&self, sample: &Sample, at: OffsetDateTime) {
        if !self.enabled {
            return;
        }
        let at = at.unix_timestamp_nanos() as f64 / 1e9;
        let mut next = Present::default();
        for (id, name) in &sample.tenants {
            let scope = super::Scope {
                tenant: *id,
                project: None,
            };
            let empty = super::Gauges::default();
            let g = sample.scopes.get(&scope).unwrap_or(&empty);
            let t = tenant_labels(name);
            self.cpu_requests
                .get_or_create(&t)
                .set(g.cpu_requests as f64 / 1000.0);
            self.cpu_limits
                .get_or_create(&t)
                .set(g.cpu_limits as f64 / 1000.0);
            self.memory_requests
                .get_or_create(&t)
                .set(int(g.memory_requests));
            self.memory_limits
                .get_or_create(&t)
                .set(int(g.memory_limits));
            self.pods.get_or_create(&t).set(int(g.pods));
            self.apps.get_or_create(&t).set(int(g.apps));
            self.namespaces.get_or_create(&t).set(int(g.namespaces));
            self.load_balancers
                .get_or_create(&t)
                .set(int(g.load_balancers));
            for (class, bytes) in &g.storage_by_class {
                let l = labels2(name, "storage_class", class);
                self.storage.get_or_create(&l).set(int(*bytes));
                next.storage.insert(l);
            }
            let mut ratios: BTreeMap<&str, f64> = BTreeMap::new();
            let mut exceeded = 0;
            for q in &g.quotas {
                exceeded += i64::from(q.exceeded());
                if q.hard.is_zero() {
                    continue;
                }
                let r = ratios.entry(q.resource.as_str()).or_insert(0.0);
                *r = r.max(q.used.as_f64() / q.hard.as_f64());
            }
            for (resource, ratio) in ratios {
                let l = labels2(name, "resource", resource);
                self.quota_ratio.get_or_create(&l).set(ratio);
                next.quota.insert(l);
            }
            self.quotas_exceeded.get_or_create(&t).set(exceeded);
            self.sampled_at.get_or_create(&t).set(at);
            for ((kind, phase), n) in sample.phases.get(id).into_iter().flatten() {
                let l = vec![
                    ("tenant".to_owned(), name.clone()),
                    ("kind".to_owned(), (*kind).to_owned()),
                    ("phase".to_owned(), (*phase).to_owned()),
                ];
                self.objects.get_or_create(&l).set(int(*n));
                next.objects.insert(l);
            }
            next.tenants.insert(name.clone());
        }
        let mut present = self.present.lock().unwrap_or_else(|e| e.into_inner());
        for gone in present.tenants.difference(&next.tenants) {
            self.remove_tenant(&tenant_labels(gone));
        }
        for gone in present.storage.difference(&next.storage) {
            self.storage.remove(gone);
        }
        for gone in present.quota.difference(&next.quota) {
            self.quota_ratio.remove(gone);
        }
        for gone in present.objects.difference(&next.objects) {
            self.objects.remove(gone);
        }
        *present = next;
    }

    fn remove_tenant(&self, t: &Labels) {
        self.cpu_requests.remove(t);
        self.cpu_limits.remove(t);
        self.memory_requests.remove(t);
        self.memory_limits.remove(t);
        self.pods.remove(t);
        self.apps.remove(t);
        self.namespaces.remove(t);
        self.load_balancers.remove(t);
        self.quotas_exceeded.remove(t);
        self.sampled_at.remove(t);
    }

    /// Removes every series (the usage loop stopped: nothing is measured here any more).
    pub fn clear(&self) {
        let mut present = self.present.lock().unwrap_or_else(|e| e.into_inner());
        self.cpu_requests.clear();
        self.cpu_limits.clear();
        self.memory_requests.clear();
        self.memory_limits.clear();
        self.storage.clear();
        self.pods.clear();
        self.apps.clear();
        self.namespaces.clear();
        self.load_balancers.clear();
        self.quota_ratio.clear();
        self.quotas_exceeded.clear();
        self.sampled_at.clear();
        self.objects.clear();
        *present = Present::default();
    }

    /// A handle for the loop that takes the samples: [`observe`](Self::observe) through
    /// it, and every series is removed when it is dropped (the loop ended or its task was
    /// aborted).
    pub fn publisher(&self) -> TenantMetricsPublisher<'_> {
        TenantMetricsPublisher(self)
    }
}

/// Sets the [`TenantMetrics`] while it lives and removes their series when dropped
/// ([`TenantMetrics::publisher`]).
#[derive(Debug)]
pub struct TenantMetricsPublisher<'a>(&'a TenantMetrics);

impl TenantMetricsPublisher<'_> {
    /// [`TenantMetrics::observe`].
    pub fn observe(&self, sample: &Sample, at: OffsetDateTime) {
        self.0.observe(sample, at);
    }
}

impl Drop for TenantMetricsPublisher<'_> {
    fn drop(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::usage::{Gauges, Scope};
    use kubenova_api::ids::{ProjectId, TenantId};
    use kubenova_api::model::QuotaUse;
    use uuid::Uuid;

    fn scrape(registry: &Registry) -> BTreeMap<String, f64> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').unwrap();
                (series.to_owned(), value.parse().unwrap())
            })
            .collect()
    }

    fn quota(ns: &str, resource: &str, used: &str, hard: &str) -> QuotaUse {
        QuotaUse {
            namespace: ns.into(),
            name: "q".into(),
            resource: resource.into(),
            used: used.parse().unwrap(),
            hard: hard.parse().unwrap(),
        }
    }

    const ACME: Uuid = Uuid::from_u128(1);
    const BETA: Uuid = Uuid::from_u128(2);

    fn tenant(id: Uuid) -> Scope {
        Scope {
            tenant: TenantId(id),
            project: None,
        }
    }

    fn two_tenants() -> Sample {
        let acme = Gauges {
            cpu_requests: 1500,
            cpu_limits: 2250,
            memory_requests: 3 << 30,
            memory_limits: 4 << 30,
            storage_by_class: BTreeMap::from([
                (String::new(), 5 << 30),
                ("fast".to_owned(), 10 << 30),
            ]),
            load_balancers: 1,
            namespaces: 3,
            pods: 7,
            apps: 2,
            quotas: vec![
                quota("acme-apps", "requests.cpu", "1500m", "2"),
                quota("acme-web", "requests.cpu", "900m", "1"),
                quota("acme-web", "pods", "11", "10"),
                quota("acme-web", "services.loadbalancers", "0", "0"),
            ],
        };
        // A project's gauges are part of its tenant's, never a series of their own.
        let project = Gauges {
            cpu_requests: 900,
            pods: 3,
            ..Gauges::default()
        };
        Sample {
            scopes: BTreeMap::from([
                (tenant(ACME), acme),
                (
                    Scope {
                        tenant: TenantId(ACME),
                        project: Some(ProjectId(Uuid::from_u128(3))),
                    },
                    project,
                ),
            ]),
            // beta has no namespace yet: it uses nothing.
            tenants: BTreeMap::from([
                (TenantId(ACME), "acme".to_owned()),
                (TenantId(BETA), "beta".to_owned()),
            ]),
            phases: BTreeMap::from([
                (
                    TenantId(ACME),
                    BTreeMap::from([
                        (("tenant", "ready"), 1),
                        (("project", "ready"), 2),
                        (("project", "degraded"), 1),
                    ]),
                ),
                (TenantId(BETA), BTreeMap::from([(("tenant", "pending"), 1)])),
            ]),
            ..Sample::default()
        }
    }

    #[test]
    fn gauges_are_the_latest_sample_per_tenant() {
        let m = TenantMetrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        let at = time::macros::datetime!(2026-01-31 23:05:30.5 UTC);
        m.observe(&two_tenants(), at);
        let s = scrape(&registry);
        let expected: BTreeMap<String, f64> = [
            (r#"kubenova_tenant_cpu_requests_cores{tenant="acme"}"#, 1.5),
            (r#"kubenova_tenant_cpu_limits_cores{tenant="acme"}"#, 2.25),
            (
                r#"kubenova_tenant_memory_requests_bytes{tenant="acme"}"#,
                (3u64 << 30) as f64,
            ),
            (
                r#"kubenova_tenant_memory_limits_bytes{tenant="acme"}"#,
                (4u64 << 30) as f64,
            ),
            (
                r#"kubenova_tenant_storage_bytes{tenant="acme",storage_class=""}"#,
                (5u64 << 30) as f64,
            ),
            (
                r#"kubenova_tenant_storage_bytes{tenant="acme",storage_class="fast"}"#,
                (10u64 << 30) as f64,
            ),
            (r#"kubenova_tenant_pods{tenant="acme"}"#, 7.0),
            (r#"kubenova_tenant_apps{tenant="acme"}"#, 2.0),
            (r#"kubenova_tenant_namespaces{tenant="acme"}"#, 3.0),
            (r#"kubenova_tenant_load_balancers{tenant="acme"}"#, 1.0),
            // The fuller of the two CPU quotas; a zero hard limit has no ratio.
            (
                r#"kubenova_tenant_quota_used_ratio{tenant="acme",resource="requests.cpu"}"#,
                0.9,
            ),
            (
                r#"kubenova_tenant_quota_used_ratio{tenant="acme",resource="pods"}"#,
                1.1,
            ),
            (r#"kubenova_tenant_quotas_exceeded{tenant="acme"}"#, 1.0),
            (
                r#"kubenova_tenant_usage_sample_timestamp_seconds{tenant="acme"}"#,
                1_769_900_730.5,
            ),
            (
                r#"kubenova_tenant_objects{tenant="acme",kind="tenant",phase="ready"}"#,
                1.0,
            ),
            (
                r#"kubenova_tenant_objects{tenant="acme",kind="project",phase="ready"}"#,
                2.0,
            ),
            (
                r#"kubenova_tenant_objects{tenant="acme",kind="project",phase="degraded"}"#,
                1.0,
            ),
            (
                r#"kubenova_tenant_objects{tenant="beta",kind="tenant",phase="pending"}"#,
                1.0,
            ),
            (r#"kubenova_tenant_cpu_requests_cores{tenant="beta"}"#, 0.0),
            (r#"kubenova_tenant_cpu_limits_cores{tenant="beta"}"#, 0.0),
            (
                r#"kubenova_tenant_memory_requests_bytes{tenant="beta"}"#,
                0.0,
            ),
            (r#"kubenova_tenant_memory_limits_bytes{tenant="beta"}"#, 0.0),
            (r#"kubenova_tenant_pods{tenant="beta"}"#, 0.0),
            (r#"kubenova_tenant_apps{tenant="beta"}"#, 0.0),
            (r#"kubenova_tenant_namespaces{tenant="beta"}"#, 0.0),
            (r#"kubenova_tenant_load_balancers{tenant="beta"}"#, 0.0),
            (r#"kubenova_tenant_quotas_exceeded{tenant="beta"}"#, 0.0),
            (
                r#"kubenova_tenant_usage_sample_timestamp_seconds{tenant="beta"}"#,
                1_769_900_730.5,
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(s, expected);
    }

    #[test]
    fn series_of_what_a_sample_no_longer_has_are_removed() {
        let m = TenantMetrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        let at = time::macros::datetime!(2026-01-31 23:05 UTC);
        m.observe(&two_tenants(), at);
        assert!(scrape(&registry).keys().any(|k| k.contains("\"beta\"")));
        // beta is deleted from the cluster; acme's fast volume and its pods quota go.
        let mut next = two_tenants();
        next.tenants.remove(&TenantId(BETA));
        let acme = next.scopes.get_mut(&tenant(ACME)).unwrap();
        acme.storage_by_class.remove("fast");
        acme.quotas.retain(|q| q.resource != "pods");
        acme.pods = 4;
        // Its degraded project is ready now.
        next.phases.insert(
            TenantId(ACME),
            BTreeMap::from([(("tenant", "ready"), 1), (("project", "ready"), 3)]),
        );
        m.observe(&next, at + time::Duration::minutes(5));
        let s = scrape(&registry);
        assert!(!s.keys().any(|k| k.contains("\"beta\"")), "{s:#?}");
        assert!(!s.keys().any(|k| k.contains("fast")), "{s:#?}");
        assert!(!s.keys().any(|k| k.contains("\"pods\"")), "{s:#?}");
        assert!(!s.keys().any(|k| k.contains("degraded")), "{s:#?}");
        assert_eq!(
            s[r#"kubenova_tenant_objects{tenant="acme",kind="project",phase="ready"}"#],
            3.0
        );
        assert_eq!(s[r#"kubenova_tenant_pods{tenant="acme"}"#], 4.0);
        assert_eq!(
            s[r#"kubenova_tenant_usage_sample_timestamp_seconds{tenant="acme"}"#],
            1_769_901_000.0
        );
        assert_eq!(s.len(), 14, "{s:#?}");
        // beta comes back.
        m.observe(&two_tenants(), at + time::Duration::minutes(10));
        assert_eq!(scrape(&registry).len(), 28);
    }

    #[test]
    fn dropping_the_publisher_removes_every_series() {
        let m = TenantMetrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        {
            let publisher = m.publisher();
            publisher.observe(&two_tenants(), OffsetDateTime::now_utc());
            assert_eq!(scrape(&registry).len(), 28);
        }
        assert!(scrape(&registry).is_empty());
        // The families are still declared (HELP and TYPE), only without series.
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("# TYPE kubenova_tenant_cpu_requests_cores gauge"));
        // And the next loop publishes again.
        m.publisher()
            .observe(&two_tenants(), OffsetDateTime::now_utc());
        assert!(scrape(&registry).is_empty());
        let p = m.publisher();
        p.observe(&two_tenants(), OffsetDateTime::now_utc());
        assert_eq!(scrape(&registry).len(), 28);
    }

    #[test]
    fn off_registers_and_sets_nothing() {
        let m = TenantMetrics::new(false);
        assert!(!m.enabled());
        let mut registry = Registry::default();
        m.register(&mut registry);
        m.observe(&two_tenants(), OffsetDateTime::now_utc());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(!text.contains("kubenova_tenant"), "{text}");
        assert!(m.pods.get(&tenant_labels("acme")).is_none());
    }
}
