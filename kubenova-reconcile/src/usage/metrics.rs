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
//! (zero when it has no namespace yet). Each sample replaces the whole set, so the series
//! of a tenant missing from it, and of a storage class, quota resource or phase a tenant
//! no longer has, are gone with it; all of them when the usage loop stops (this replica is
//! no longer the leader, or shuts down), so a standby replica exposes none.
//!
//! The gauges are kept as one compact row per tenant (a few hundred bytes; quota resource
//! and storage class names shared) and written out at each scrape, not as a family of
//! gauges per metric, whose label sets alone would take several KiB per tenant.
//!
//! Cardinality: one series per tenant of the cluster for each metric, plus one per
//! storage class, quota resource and (kind, phase) the tenant has. [`TenantMetrics::new`]
//! with `false` turns them off (the operator's `--tenant-metrics false`).
//!
//! [`AgentConfig::usage_sample_interval`]: crate::agent::AgentConfig::usage_sample_interval

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use time::OffsetDateTime;

use super::{Gauges, Sample, Scope};

/// One tenant of the latest sample.
#[derive(Debug)]
struct Row {
    tenant: Box<str>,
    cpu_requests: f64,
    cpu_limits: f64,
    memory_requests: i64,
    memory_limits: i64,
    pods: i64,
    apps: i64,
    namespaces: i64,
    load_balancers: i64,
    quotas_exceeded: i64,
    /// (storage class, bytes).
    storage: Box<[(Arc<str>, i64)]>,
    /// (resource, highest used/hard).
    quota_ratio: Box<[(Arc<str>, f64)]>,
    /// (kind, phase, objects).
    objects: Box<[(&'static str, &'static str, i64)]>,
}

/// The latest sample: its Unix time and a row per tenant.
#[derive(Debug, Default)]
struct Snapshot {
    at: f64,
    rows: Vec<Row>,
}

type Latest = Arc<RwLock<Arc<Snapshot>>>;

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
    latest: Latest,
}

impl Default for TenantMetrics {
    fn default() -> Self {
        TenantMetrics::new(true)
    }
}

fn int(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

/// One string per distinct name across the rows of a sample.
#[derive(Default)]
struct Names(HashMap<String, Arc<str>>);

impl Names {
    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.0.insert(s.to_owned(), a.clone());
        a
    }
}

fn row(
    tenant: &str,
    g: &Gauges,
    objects: Option<&BTreeMap<(&'static str, &'static str), i128>>,
    names: &mut Names,
) -> Row {
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
    Row {
        tenant: tenant.into(),
        cpu_requests: g.cpu_requests as f64 / 1000.0,
        cpu_limits: g.cpu_limits as f64 / 1000.0,
        memory_requests: int(g.memory_requests),
        memory_limits: int(g.memory_limits),
        pods: int(g.pods),
        apps: int(g.apps),
        namespaces: int(g.namespaces),
        load_balancers: int(g.load_balancers),
        quotas_exceeded: exceeded,
        storage: g
            .storage_by_class
            .iter()
            .map(|(c, b)| (names.get(c), int(*b)))
            .collect(),
        quota_ratio: ratios.into_iter().map(|(r, v)| (names.get(r), v)).collect(),
        objects: objects
            .into_iter()
            .flatten()
            .map(|((kind, phase), n)| (*kind, *phase, int(*n)))
            .collect(),
    }
}

impl TenantMetrics {
    /// Gauges that are registered and set when `enabled`; otherwise [`register`](Self::register)
    /// and [`observe`](Self::observe) do nothing.
    pub fn new(enabled: bool) -> TenantMetrics {
        TenantMetrics {
            enabled,
            latest: Latest::default(),
        }
    }

    /// Whether the gauges are on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Registers every gauge in `registry` (prefix `kubenova_tenant_`; written out at each
    /// scrape from the latest sample); nothing when off.
    pub fn register(&self, registry: &mut Registry) {
        if self.enabled {
            registry.register_collector(Box::new(Scrape(self.latest.clone())));
        }
    }

    /// Replaces every gauge with what `sample`, taken at `at`, measured: the series of
    /// tenants, storage classes, quota resources and phases it no longer has are gone.
    pub fn observe(&self, sample: &Sample, at: OffsetDateTime) {
        if !self.enabled {
            return;
        }
        let empty = Gauges::default();
        let mut names = Names::default();
        let rows = sample
            .tenants
            .iter()
            .map(|(id, name)| {
                let scope = Scope {
                    tenant: *id,
                    project: None,
                };
                let g = sample.scopes.get(&scope).unwrap_or(&empty);
                row(name, g, sample.phases.get(id), &mut names)
            })
            .collect();
        self.set(Snapshot {
            at: at.unix_timestamp_nanos() as f64 / 1e9,
            rows,
        });
    }

    fn set(&self, snapshot: Snapshot) {
        *self.latest.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
    }

    /// Removes every series (the usage loop stopped: nothing is measured here any more).
    pub fn clear(&self) {
        self.set(Snapshot::default());
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

/// Writes the latest sample's gauges at a scrape.
#[derive(Debug)]
struct Scrape(Latest);

/// One gauge of every row, labelled with the tenant.
fn per_tenant<V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder<'_>,
    rows: &[Row],
    name: &str,
    help: &str,
    value: impl Fn(&Row) -> V,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for r in rows {
        family
            .encode_family(&[("tenant", &*r.tenant)])?
            .encode_gauge(&value(r))?;
    }
    Ok(())
}

/// A gauge family with one series per tenant and key (`label`), from `entries`.
fn per_tenant_by<V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder<'_>,
    rows: &[Row],
    name: &str,
    help: &str,
    label: &str,
    entries: impl Fn(&Row) -> &[(Arc<str>, V)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for r in rows {
        for (key, value) in entries(r) {
            family
                .encode_family(&[("tenant", &*r.tenant), (label, &**key)])?
                .encode_gauge(value)?;
        }
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snapshot = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        let rows = snapshot.rows.as_slice();
        let e = &mut encoder;
        per_tenant(
            e,
            rows,
            "kubenova_tenant_cpu_requests_cores",
            "CPU requests of the tenant's non-terminated pods at the latest usage sample",
            |r| r.cpu_requests,
        )?;
        per_tenant(
            e,
            rows,
            "kubenova_tenant_cpu_limits_cores",
            "CPU limits of the tenant's non-terminated pods at the latest usage sample",
            |r| r.cpu_limits,
        )?;
        per_tenant(
            e,
            rows,
            "kubenova_tenant_memory_requests_bytes",
            "Memory requests of the tenant's non-terminated pods at the latest usage sample",
            |r| r.memory_requests,
        )?;
        per_tenant(
            e,
            rows,
            "kubenova_tenant_memory_limits_bytes",
            "Memory limits of the tenant's non-terminated pods at the latest usage sample",
            |r| r.memory_limits,
        )?;
        per_tenant_by(
            e,
            rows,
            "kubenova_tenant_storage_bytes",
            "Capacity of the tenant's Bound PVCs by storage class at the latest usage sample",
            "storage_class",
            |r| &r.storage,
        )?;
        per_tenant(
            e,
            rows,
            "kubenova_tenant_pods",
            "The tenant's non-terminated pods at the latest usage sample",
            |r| r.pods,
        )?;
        per_tenant(
            e,
            rows,
            "kubenova_tenant_apps",
            "The tenant's KubeVela Applications at the latest usage sample",
            |r| r.apps,
        )?;
        per_tenant(
            e,
            rows,
            "kubenova_tenant_namespaces",
            "The tenant's namespaces at the latest usage sample",
            |r| r.namespaces,
        )?;
        per_tenant(
            e,
            rows,
            "kubenova_tenant_load_balancers",
            "The tenant's LoadBalancer Services at the latest usage sample",
            |r| r.load_balancers,
        )?;
        per_tenant_by(
            e,
            rows,
            "kubenova_tenant_quota_used_ratio",
            "Highest used/hard of a resource among the tenant's ResourceQuotas at the latest usage sample",
            "resource",
            |r| &r.quota_ratio,
        )?;
        per_tenant(
            e,
            rows,
            "kubenova_tenant_quotas_exceeded",
            "ResourceQuota entries of the tenant whose use is over the hard limit at the latest usage sample",
            |r| r.quotas_exceeded,
        )?;
        per_tenant(
            e,
            rows,
            "kubenova_tenant_usage_sample_timestamp_seconds",
            "Unix time of the latest usage sample that measured the tenant",
            |_| snapshot.at,
        )?;
        let mut family = e.encode_descriptor(
            "kubenova_tenant_objects",
            "The tenant's NovaTenant and NovaProjects by phase at the latest usage sample",
            None,
            MetricType::Gauge,
        )?;
        for r in rows {
            for (kind, phase, n) in &r.objects {
                family
                    .encode_family(&[("tenant", &*r.tenant), ("kind", kind), ("phase", phase)])?
                    .encode_gauge(n)?;
            }
        }
        Ok(())
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
        assert!(m.latest.read().unwrap().rows.is_empty());
    }
}
