//! **Usage measurement**, the pure part: what a tenant and its projects use in a cluster,
//! from the objects the operator lists, and its integration over an hour by sampling.
//! No cluster IO here; the collector that lists the objects and uploads the records lives
//! in [`crate::agent`].
//!
//! # Attribution
//!
//! Objects are attributed through the labels the reconcilers set, never by name:
//!
//! - a **namespace** belongs to tenant `T` when it carries [`LABEL_TENANT`]`=T` (set on the
//!   owner and apps namespaces, on project namespaces, and pushed by Capsule to every
//!   namespace of the tenant) and, if it carries Capsule's [`LABEL_CAPSULE_TENANT`], that
//!   label names the same tenant (a disagreement leaves the namespace unattributed);
//! - it belongs to project `P` of `T` when it also carries [`LABEL_NAMESPACE_ROLE`]`=project`
//!   and [`LABEL_PROJECT`]`=P`;
//! - the manager's ids come from the [`LABEL_ID`] label of the NovaTenant named `T` and of the
//!   NovaProject `P` (spec.tenant `T`); objects the manager did not create (no id) are not
//!   reported;
//! - pods, PVCs, Services, ResourceQuotas and KubeVela Applications belong to the tenant and
//!   project of their namespace.
//!
//! The tenant-level record (`projectId` absent) covers every namespace of the tenant, its
//! projects' included; a project's record covers its namespace.
//!
//! # What is measured
//!
//! | field | from |
//! |---|---|
//! | `cpuMillicores`, `memoryBytes` | requests of non-terminated pods (phase neither `Succeeded` nor `Failed`, as ResourceQuota counts them): the pod-level `spec.resources` when set, otherwise the larger of the containers' sum (restartable init containers, i.e. sidecars, included) and the peak of the init containers, plus `spec.overhead` |
//! | `cpuLimitMillicores`, `memoryLimitBytes` | the same for limits; a container without a limit adds nothing |
//! | `storageBytes`, `storageByClass` | `status.capacity.storage` of `Bound` PVCs, by `spec.storageClassName` (`""` when none) |
//! | `loadBalancers` | Services of type `LoadBalancer` |
//! | `namespaces`, `pods`, `apps` | attributed namespaces, non-terminated pods, KubeVela Applications |
//! | `quotas` | every resource of every ResourceQuota: `status.used` against `status.hard` |
//!
//! # Sampling
//!
//! A [`Sample`] is the state at one instant. An [`HourAccumulator`] integrates the samples
//! of one UTC hour over time: each sample holds from its time until the next one, the
//! last until the end of the hour (or until now for a report of the hour so far), and an
//! hour that follows another at once starts from that one's last sample. Each value of the
//! hour's record is the integral divided by the time covered (rounded half up), so
//! `cpuMillicores` of an ended hour is its millicore-hours; on-demand samples weigh only
//! the time they stood for. A tenant or project missing from a sample counted zero while
//! that sample held; quota use is the last sample's. With the default interval (5
//! minutes) an hour has 12 samples; after an operator restart in the middle of an hour
//! the covered time starts at its first sample.
//!
//! The latest sample of each tenant is also exposed as Prometheus gauges
//! ([`TenantMetrics`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, Namespace, Node, PersistentVolumeClaim, Pod, ResourceQuota, ResourceRequirements,
    Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kubenova_api::agent::LABEL_ID;
use kubenova_api::crd::{NovaProject, NovaStatus, NovaTenant};
use kubenova_api::ids::{ClusterId, ProjectId, TenantId};
use kubenova_api::model::{ClusterCapacity, QuotaUse, USAGE_QUOTAS_MAX, UsageRecord};
use kubenova_api::quantity::Quantity;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::meta::{LABEL_CAPSULE_TENANT, LABEL_NAMESPACE_ROLE, LABEL_PROJECT, LABEL_TENANT};

pub mod metrics;
pub use metrics::{TenantMetrics, TenantMetricsPublisher};

/// The objects of a cluster a [`Sample`] is taken from (every one listed, unfiltered; the
/// collector keeps of each only the fields [`sample`] reads, see [`trim`]).
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// Namespaces.
    pub namespaces: Vec<Namespace>,
    /// NovaTenants (their [`LABEL_ID`] is the manager's tenant id).
    pub tenants: Vec<NovaTenant>,
    /// NovaProjects (their [`LABEL_ID`] is the manager's project id).
    pub projects: Vec<NovaProject>,
    /// Pods.
    pub pods: Vec<Pod>,
    /// PersistentVolumeClaims.
    pub pvcs: Vec<PersistentVolumeClaim>,
    /// Services.
    pub services: Vec<Service>,
    /// ResourceQuotas.
    pub quotas: Vec<ResourceQuota>,
    /// Metadata of the KubeVela Applications (only the namespace counts).
    pub applications: Vec<ObjectMeta>,
    /// Nodes, or `None` when they could not be listed (then no capacity is reported).
    pub nodes: Option<Vec<Node>>,
}

/// What the cluster can hold at one instant ([`Sample::capacity`]; integrated over the
/// hour into [`ClusterCapacity`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capacity {
    /// Nodes listed.
    pub nodes: i128,
    /// Sum of the Nodes' allocatable CPU, millicores.
    pub cpu: i128,
    /// Sum of the Nodes' allocatable memory, bytes.
    pub memory: i128,
    /// CPU requests of non-terminated pods that are not `Running` on a listed Node
    /// (unscheduled, not admitted by the kubelet yet, or on a Node that is gone): the
    /// kubelet bounds only admitted pods by allocatable, so these count on top of it.
    pub pending_cpu: i128,
    /// Memory requests of the same pods, bytes.
    pub pending_memory: i128,
}

impl Capacity {
    fn add_weighted(&mut self, o: &Capacity, w: i128) {
        self.nodes += o.nodes * w;
        self.cpu += o.cpu * w;
        self.memory += o.memory * w;
        self.pending_cpu += o.pending_cpu * w;
        self.pending_memory += o.pending_memory * w;
    }
}

/// Whom a record is about: a tenant, or one of its projects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope {
    /// Tenant.
    pub tenant: TenantId,
    /// Project, or `None` for the tenant as a whole.
    pub project: Option<ProjectId>,
}

/// What one scope uses at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gauges {
    /// CPU requests, millicores.
    pub cpu_requests: i128,
    /// CPU limits, millicores.
    pub cpu_limits: i128,
    /// Memory requests, bytes.
    pub memory_requests: i128,
    /// Memory limits, bytes.
    pub memory_limits: i128,
    /// Bound PVC capacity by storage class, bytes.
    pub storage_by_class: BTreeMap<String, i128>,
    /// LoadBalancer Services.
    pub load_balancers: i128,
    /// Namespaces.
    pub namespaces: i128,
    /// Non-terminated pods.
    pub pods: i128,
    /// KubeVela Applications.
    pub apps: i128,
    /// Quota use, sorted by namespace, quota name and resource.
    pub quotas: Vec<QuotaUse>,
}

impl Gauges {
    /// Adds `o` × `w` (quota use excluded: it is never integrated).
    fn add_weighted(&mut self, o: &Gauges, w: i128) {
        self.cpu_requests += o.cpu_requests * w;
        self.cpu_limits += o.cpu_limits * w;
        self.memory_requests += o.memory_requests * w;
        self.memory_limits += o.memory_limits * w;
        for (c, n) in &o.storage_by_class {
            *self.storage_by_class.entry(c.clone()).or_default() += n * w;
        }
        self.load_balancers += o.load_balancers * w;
        self.namespaces += o.namespaces * w;
        self.pods += o.pods * w;
        self.apps += o.apps * w;
    }

    fn add(&mut self, o: &Gauges) {
        self.cpu_requests += o.cpu_requests;
        self.cpu_limits += o.cpu_limits;
        self.memory_requests += o.memory_requests;
        self.memory_limits += o.memory_limits;
        for (c, n) in &o.storage_by_class {
            *self.storage_by_class.entry(c.clone()).or_default() += n;
        }
        self.load_balancers += o.load_balancers;
        self.namespaces += o.namespaces;
        self.pods += o.pods;
        self.apps += o.apps;
        self.quotas.extend(o.quotas.iter().cloned());
    }
}

/// The state of every scope at one instant ([`sample`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    /// Per tenant (project `None`) and per project.
    pub scopes: BTreeMap<Scope, Gauges>,
    /// The name of every NovaTenant with a manager id (those without a namespace too, so
    /// they are absent from [`scopes`](Self::scopes)).
    pub tenants: BTreeMap<TenantId, String>,
    /// Per tenant of [`tenants`](Self::tenants): how many of its NovaTenant (one) and
    /// NovaProjects with a manager id are in each phase, keyed by (`tenant` or `project`,
    /// the phase as the manager's API spells it: `pending`, `reconciling`, `ready`,
    /// `degraded`, `deleting`); an object without a status yet is `pending`.
    pub phases: BTreeMap<TenantId, BTreeMap<(&'static str, &'static str), i128>>,
    /// Namespaces labelled for a tenant that could not be attributed (tenant unknown or
    /// without a manager id, or Capsule's tenant label disagreeing).
    pub unattributed_namespaces: Vec<String>,
    /// Quantities that could not be parsed (`<kind> <namespace>/<name>: <quantity>`); they
    /// count as zero.
    pub bad_quantities: Vec<String>,
    /// The cluster's capacity, when its Nodes were listed.
    pub capacity: Option<Capacity>,
}

fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

fn id_label(meta: &ObjectMeta) -> Option<Uuid> {
    label(meta, LABEL_ID).and_then(|v| Uuid::try_parse(v).ok())
}

/// Resolves namespaces to scopes.
struct Attribution {
    /// namespace → (tenant, project)
    namespaces: BTreeMap<String, Scope>,
    unattributed: Vec<String>,
}

fn attribute(inv: &Inventory) -> Attribution {
    let tenants: BTreeMap<&str, TenantId> = inv
        .tenants
        .iter()
        .filter_map(|t| {
            Some((
                t.metadata.name.as_deref()?,
                TenantId(id_label(&t.metadata)?),
            ))
        })
        .collect();
    let projects: BTreeMap<(&str, &str), ProjectId> = inv
        .projects
        .iter()
        .filter_map(|p| {
            Some((
                (p.spec.tenant.as_str(), p.metadata.name.as_deref()?),
                ProjectId(id_label(&p.metadata)?),
            ))
        })
        .collect();
    let mut out = Attribution {
        namespaces: BTreeMap::new(),
        unattributed: Vec::new(),
    };
    for ns in &inv.namespaces {
        let Some(name) = ns.metadata.name.as_deref() else {
            continue;
        };
        let Some(tname) = label(&ns.metadata, LABEL_TENANT) else {
            continue;
        };
        let capsule = label(&ns.metadata, LABEL_CAPSULE_TENANT);
        let tenant = match tenants.get(tname) {
            Some(t) if capsule.is_none_or(|c| c == tname) => *t,
            _ => {
                out.unattributed.push(name.to_owned());
                continue;
            }
        };
        let project = if label(&ns.metadata, LABEL_NAMESPACE_ROLE) == Some("project") {
            label(&ns.metadata, LABEL_PROJECT).and_then(|p| projects.get(&(tname, p)).copied())
        } else {
            None
        };
        out.namespaces
            .insert(name.to_owned(), Scope { tenant, project });
    }
    out
}

/// The CPU (millicores) and memory (bytes) of a resource list entry; `None` when absent.
fn amount(
    list: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    resource: &str,
    bad: &mut Vec<String>,
    what: &dyn Fn() -> String,
) -> Option<i128> {
    let q = list?.get(resource)?;
    match Quantity::parse(&q.0) {
        Ok(v) if !v.is_negative() => Some(if resource == "cpu" {
            v.milli_value()
        } else {
            v.value()
        }),
        _ => {
            bad.push(format!("{}: {} {:?}", what(), resource, q.0));
            None
        }
    }
}

/// Requests (`limits == false`) or limits of `resource` in `r`.
fn requirement(
    r: Option<&ResourceRequirements>,
    limits: bool,
    resource: &str,
    bad: &mut Vec<String>,
    what: &dyn Fn() -> String,
) -> Option<i128> {
    let r = r?;
    let list = if limits {
        r.limits.as_ref()
    } else {
        r.requests.as_ref()
    };
    amount(list, resource, bad, what)
}

/// The effective requests or limits of a pod for `resource`, as the scheduler and
/// ResourceQuota compute them.
fn pod_amount(pod: &Pod, limits: bool, resource: &str, bad: &mut Vec<String>) -> i128 {
    let what = || {
        format!(
            "pod {}/{}",
            pod.metadata.namespace.as_deref().unwrap_or(""),
            pod.metadata.name.as_deref().unwrap_or("")
        )
    };
    let Some(spec) = &pod.spec else { return 0 };
    let overhead = amount(spec.overhead.as_ref(), resource, bad, &what).unwrap_or(0);
    // The overhead counts against limits only when the pod has a limit at all.
    let with_overhead = |v: i128| if limits && v == 0 { 0 } else { v + overhead };
    if let Some(v) = requirement(spec.resources.as_ref(), limits, resource, bad, &what) {
        return with_overhead(v);
    }
    let c = |c: &Container, bad: &mut Vec<String>| {
        requirement(c.resources.as_ref(), limits, resource, bad, &what).unwrap_or(0)
    };
    let regular: i128 = spec.containers.iter().map(|x| c(x, bad)).sum();
    let mut sidecars: i128 = 0;
    let mut init_peak: i128 = 0;
    for ic in spec.init_containers.iter().flatten() {
        let v = c(ic, bad);
        if ic.restart_policy.as_deref() == Some("Always") {
            sidecars += v;
            init_peak = init_peak.max(sidecars);
        } else {
            init_peak = init_peak.max(sidecars + v);
        }
    }
    with_overhead((regular + sidecars).max(init_peak))
}

/// Reductions of listed objects to the fields [`sample`] reads, applied by the collector
/// to each page as it arrives so that a collection never holds a whole cluster's objects
/// as listed (a running pod is about 4 KiB of JSON, most of it fields the sample never
/// reads: volumes, tolerations, conditions, container statuses, managed fields). The
/// sample of a reduced inventory equals the sample of the objects as listed; a change to
/// what [`sample`] reads must keep that field here.
pub mod trim {
    use k8s_openapi::api::core::v1::{
        Container, Namespace, Node, NodeStatus, PersistentVolumeClaim, PersistentVolumeClaimSpec,
        PersistentVolumeClaimStatus, Pod, PodSpec, PodStatus, ResourceQuota, Service, ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kubenova_api::crd::{NovaProject, NovaStatus, NovaTenant};

    /// Name and namespace, and the labels when `labels` (attribution reads them).
    ///
    /// ```
    /// use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    /// let m = ObjectMeta { name: Some("a".into()), uid: Some("u".into()), ..Default::default() };
    /// let m = kubenova_reconcile::usage::trim::meta(m, false);
    /// assert_eq!((m.name.as_deref(), m.uid), (Some("a"), None));
    /// ```
    pub fn meta(m: ObjectMeta, labels: bool) -> ObjectMeta {
        ObjectMeta {
            name: m.name,
            namespace: m.namespace,
            labels: if labels { m.labels } else { None },
            ..ObjectMeta::default()
        }
    }

    /// A namespace: name and labels.
    pub fn namespace(n: Namespace) -> Namespace {
        Namespace {
            metadata: meta(n.metadata, true),
            ..Namespace::default()
        }
    }

    /// A NovaTenant: name, labels, spec and the status' phase.
    pub fn tenant(t: NovaTenant) -> NovaTenant {
        NovaTenant {
            metadata: meta(t.metadata, true),
            spec: t.spec,
            status: phase_only(t.status),
        }
    }

    /// A NovaProject: name, namespace, labels, spec and the status' phase.
    pub fn project(p: NovaProject) -> NovaProject {
        NovaProject {
            metadata: meta(p.metadata, true),
            spec: p.spec,
            status: phase_only(p.status),
        }
    }

    fn phase_only(s: Option<NovaStatus>) -> Option<NovaStatus> {
        s.map(|s| NovaStatus {
            phase: s.phase,
            ..NovaStatus::default()
        })
    }

    /// A pod: its containers' and init containers' names, resources and restart policies,
    /// the pod-level resources and overhead, its Node and the phase.
    pub fn pod(p: Pod) -> Pod {
        let container = |c: Container| Container {
            name: c.name,
            resources: c.resources,
            restart_policy: c.restart_policy,
            ..Container::default()
        };
        Pod {
            metadata: meta(p.metadata, false),
            spec: p.spec.map(|s| PodSpec {
                containers: s.containers.into_iter().map(container).collect(),
                init_containers: s
                    .init_containers
                    .map(|v| v.into_iter().map(container).collect()),
                overhead: s.overhead,
                resources: s.resources,
                node_name: s.node_name,
                ..PodSpec::default()
            }),
            status: p.status.map(|s| PodStatus {
                phase: s.phase,
                ..PodStatus::default()
            }),
        }
    }

    /// A PVC: storage class, phase and capacity.
    pub fn pvc(c: PersistentVolumeClaim) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: meta(c.metadata, false),
            spec: c.spec.map(|s| PersistentVolumeClaimSpec {
                storage_class_name: s.storage_class_name,
                ..PersistentVolumeClaimSpec::default()
            }),
            status: c.status.map(|s| PersistentVolumeClaimStatus {
                phase: s.phase,
                capacity: s.capacity,
                ..PersistentVolumeClaimStatus::default()
            }),
        }
    }

    /// A Service: its type.
    pub fn service(s: Service) -> Service {
        Service {
            metadata: meta(s.metadata, false),
            spec: s.spec.map(|s| ServiceSpec {
                type_: s.type_,
                ..ServiceSpec::default()
            }),
            status: None,
        }
    }

    /// A Node: its name and allocatable resources.
    pub fn node(n: Node) -> Node {
        Node {
            metadata: meta(n.metadata, false),
            spec: None,
            status: n.status.map(|s| NodeStatus {
                allocatable: s.allocatable,
                ..NodeStatus::default()
            }),
        }
    }

    /// A ResourceQuota: its status (hard and used).
    pub fn quota(q: ResourceQuota) -> ResourceQuota {
        ResourceQuota {
            metadata: meta(q.metadata, false),
            spec: None,
            status: q.status,
        }
    }
}

fn terminated(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The state of every tenant and project of `inv` at this instant (see the module docs).
///
/// ```
/// use kubenova_reconcile::usage::{Inventory, sample};
/// assert!(sample(&Inventory::default()).scopes.is_empty());
/// ```
pub fn sample(inv: &Inventory) -> Sample {
    let attr = attribute(inv);
    let mut bad = Vec::new();
    // Per namespace first, then rolled up into the tenant and the project.
    let mut per_ns: BTreeMap<&str, Gauges> = BTreeMap::new();
    let scope_of = |meta: &ObjectMeta| -> Option<&str> {
        let ns = meta.namespace.as_deref()?;
        attr.namespaces.get_key_value(ns).map(|(k, _)| k.as_str())
    };
    for ns in attr.namespaces.keys() {
        per_ns.entry(ns.as_str()).or_default().namespaces += 1;
    }
    for pod in &inv.pods {
        let Some(ns) = scope_of(&pod.metadata) else {
            continue;
        };
        if terminated(pod) {
            continue;
        }
        let g = per_ns.entry(ns).or_default();
        g.pods += 1;
        g.cpu_requests += pod_amount(pod, false, "cpu", &mut bad);
        g.cpu_limits += pod_amount(pod, true, "cpu", &mut bad);
        g.memory_requests += pod_amount(pod, false, "memory", &mut bad);
        g.memory_limits += pod_amount(pod, true, "memory", &mut bad);
    }
    for pvc in &inv.pvcs {
        let Some(ns) = scope_of(&pvc.metadata) else {
            continue;
        };
        let Some(status) = &pvc.status else { continue };
        if status.phase.as_deref() != Some("Bound") {
            continue;
        }
        let what = || format!("pvc {ns}/{}", pvc.metadata.name.as_deref().unwrap_or(""));
        let Some(bytes) = amount(status.capacity.as_ref(), "storage", &mut bad, &what) else {
            continue;
        };
        let class = pvc
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.clone())
            .unwrap_or_default();
        *per_ns
            .entry(ns)
            .or_default()
            .storage_by_class
            .entry(class)
            .or_default() += bytes;
    }
    for svc in &inv.services {
        let Some(ns) = scope_of(&svc.metadata) else {
            continue;
        };
        if svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer") {
            per_ns.entry(ns).or_default().load_balancers += 1;
        }
    }
    for app in &inv.applications {
        if let Some(ns) = scope_of(app) {
            per_ns.entry(ns).or_default().apps += 1;
        }
    }
    for rq in &inv.quotas {
        let Some(ns) = scope_of(&rq.metadata) else {
            continue;
        };
        let Some(status) = &rq.status else { continue };
        let name = rq.metadata.name.clone().unwrap_or_default();
        let used = status.used.clone().unwrap_or_default();
        let g = per_ns.entry(ns).or_default();
        for (resource, hard) in status.hard.iter().flatten() {
            let parse = |q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
                q.map_or(Ok(Quantity::default()), |q| Quantity::parse(&q.0))
            };
            match (parse(Some(hard)), parse(used.get(resource))) {
                (Ok(hard), Ok(used)) => g.quotas.push(QuotaUse {
                    namespace: ns.to_owned(),
                    name: name.clone(),
                    resource: resource.clone(),
                    used,
                    hard,
                }),
                _ => bad.push(format!("resourcequota {ns}/{name}: {resource}")),
            }
        }
    }
    let mut scopes: BTreeMap<Scope, Gauges> = BTreeMap::new();
    for (ns, g) in per_ns {
        let Some(scope) = attr.namespaces.get(ns) else {
            continue;
        };
        scopes
            .entry(Scope {
                tenant: scope.tenant,
                project: None,
            })
            .or_default()
            .add(&g);
        if scope.project.is_some() {
            scopes.entry(*scope).or_default().add(&g);
        }
    }
    for g in scopes.values_mut() {
        g.quotas.sort_by(|a, b| {
            (&a.namespace, &a.name, &a.resource).cmp(&(&b.namespace, &b.name, &b.resource))
        });
        g.quotas.truncate(USAGE_QUOTAS_MAX);
    }
    let capacity = inv
        .nodes
        .as_deref()
        .map(|nodes| cluster_capacity(nodes, &inv.pods, &mut bad));
    let tenants: BTreeMap<TenantId, String> = inv
        .tenants
        .iter()
        .filter_map(|t| Some((TenantId(id_label(&t.metadata)?), t.metadata.name.clone()?)))
        .collect();
    let phases = phases(inv);
    Sample {
        scopes,
        tenants,
        phases,
        unattributed_namespaces: attr.unattributed,
        bad_quantities: bad,
        capacity,
    }
}

/// The phase as the manager's API spells it.
fn phase_label(status: Option<&NovaStatus>) -> &'static str {
    use kubenova_api::model::Phase;
    match status.and_then(|s| s.phase).unwrap_or_default().to_model() {
        Phase::Pending => "pending",
        Phase::Reconciling => "reconciling",
        Phase::Ready => "ready",
        Phase::Degraded => "degraded",
        Phase::Deleting => "deleting",
    }
}

/// [`Sample::phases`].
fn phases(inv: &Inventory) -> BTreeMap<TenantId, BTreeMap<(&'static str, &'static str), i128>> {
    let mut out: BTreeMap<TenantId, BTreeMap<(&'static str, &'static str), i128>> = BTreeMap::new();
    let mut by_name: BTreeMap<&str, TenantId> = BTreeMap::new();
    for t in &inv.tenants {
        let (Some(id), Some(name)) = (id_label(&t.metadata), t.metadata.name.as_deref()) else {
            continue;
        };
        by_name.insert(name, TenantId(id));
        *out.entry(TenantId(id))
            .or_default()
            .entry(("tenant", phase_label(t.status.as_ref())))
            .or_default() += 1;
    }
    for p in &inv.projects {
        if id_label(&p.metadata).is_none() {
            continue;
        }
        if let Some(tenant) = by_name.get(p.spec.tenant.as_str()) {
            *out.entry(*tenant)
                .or_default()
                .entry(("project", phase_label(p.status.as_ref())))
                .or_default() += 1;
        }
    }
    out
}

/// The allocatable of `nodes` and the requests of the non-terminated `pods` that are not
/// `Running` on one of them (see [`Capacity`]).
fn cluster_capacity(nodes: &[Node], pods: &[Pod], bad: &mut Vec<String>) -> Capacity {
    let mut c = Capacity {
        nodes: nodes.len() as i128,
        ..Capacity::default()
    };
    let mut names = std::collections::BTreeSet::new();
    for n in nodes {
        let name = n.metadata.name.as_deref().unwrap_or("");
        names.insert(name);
        let what = || format!("node {name}");
        let allocatable = n.status.as_ref().and_then(|s| s.allocatable.as_ref());
        c.cpu += amount(allocatable, "cpu", bad, &what).unwrap_or(0);
        c.memory += amount(allocatable, "memory", bad, &what).unwrap_or(0);
    }
    for pod in pods {
        if terminated(pod) {
            continue;
        }
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        if running && node.is_some_and(|n| names.contains(n)) {
            continue;
        }
        // A pod's unparsable quantities are reported by the attribution already.
        let mut reported = Vec::new();
        c.pending_cpu += pod_amount(pod, false, "cpu", &mut reported);
        c.pending_memory += pod_amount(pod, false, "memory", &mut reported);
    }
    c
}

/// The start of the UTC hour holding `t`.
///
/// ```
/// use kubenova_reconcile::usage::hour_of;
/// let t = time::macros::datetime!(2026-01-31 23:59:59.5 UTC);
/// assert_eq!(hour_of(t), time::macros::datetime!(2026-01-31 23:00 UTC));
/// ```
pub fn hour_of(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.replace_time(time::Time::from_hms(t.hour(), 0, 0).unwrap_or(time::Time::MIDNIGHT))
}

/// Integrates the [`Sample`]s of one UTC hour into its records: each sample holds from
/// its time until the next one (the last until the end of what is reported), and each
/// value of the record is that integral divided by the time covered, i.e. the
/// time-weighted mean over the part of the hour the samples cover (see the module docs).
///
/// ```
/// use kubenova_reconcile::usage::{HourAccumulator, Sample};
/// let hour = time::macros::datetime!(2026-01-01 10:00 UTC);
/// let mut acc = HourAccumulator::new(hour);
/// acc.add(&Sample::default(), hour);
/// assert_eq!(acc.samples(), 1);
/// assert!(acc.records(kubenova_api::ids::ClusterId::new(), hour).is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct HourAccumulator {
    hour: OffsetDateTime,
    samples: u32,
    /// When the first sample was taken (the start of the covered time).
    first: Option<OffsetDateTime>,
    /// Σ value × milliseconds held, per scope, up to `last`'s time.
    sums: BTreeMap<Scope, Gauges>,
    /// The last sample and its time.
    last: Option<(OffsetDateTime, BTreeMap<Scope, Gauges>)>,
    /// Σ capacity × milliseconds held, up to `last`'s time.
    capacity_sum: Capacity,
    /// The last sample's capacity.
    last_capacity: Option<Capacity>,
    /// Whether every sample so far carried a capacity (else none is reported: a partial
    /// integral would understate it).
    capacity_complete: bool,
}

impl HourAccumulator {
    /// An empty accumulator for the hour starting at `hour` (truncated to the hour).
    pub fn new(hour: OffsetDateTime) -> HourAccumulator {
        HourAccumulator {
            hour: hour_of(hour),
            samples: 0,
            first: None,
            sums: BTreeMap::new(),
            last: None,
            capacity_sum: Capacity::default(),
            last_capacity: None,
            capacity_complete: true,
        }
    }

    /// The hour.
    pub fn hour(&self) -> OffsetDateTime {
        self.hour
    }

    /// The end of the hour.
    pub fn end(&self) -> OffsetDateTime {
        self.hour + time::Duration::HOUR
    }

    /// Samples added so far.
    pub fn samples(&self) -> u32 {
        self.samples
    }

    fn clamp(&self, t: OffsetDateTime) -> OffsetDateTime {
        t.clamp(self.hour, self.end())
    }

    /// Milliseconds since the start of the hour (so that the weights add up exactly).
    fn ms(&self, t: OffsetDateTime) -> i128 {
        (t - self.hour).whole_milliseconds()
    }

    /// The accumulator of the next hour, starting with this hour's last sample as the
    /// state at its start (so that the next hour is covered from its first instant).
    pub fn next_hour(&self) -> HourAccumulator {
        let mut next = HourAccumulator::new(self.end());
        if let Some((_, scopes)) = &self.last {
            next.samples = 1;
            next.first = Some(next.hour);
            next.last = Some((next.hour, scopes.clone()));
            next.last_capacity = self.last_capacity;
            next.capacity_complete = self.last_capacity.is_some();
        }
        next
    }

    /// Adds a sample taken at `at` (clamped to the hour).
    pub fn add(&mut self, s: &Sample, at: OffsetDateTime) {
        let at = self.clamp(at);
        if let Some((t, scopes)) = &self.last {
            let w = (self.ms(at) - self.ms(*t)).max(0);
            for (scope, g) in scopes {
                self.sums.entry(*scope).or_default().add_weighted(g, w);
            }
            if let Some(c) = &self.last_capacity {
                self.capacity_sum.add_weighted(c, w);
            }
        }
        self.samples += 1;
        self.first.get_or_insert(at);
        self.last = Some((at, s.scopes.clone()));
        self.last_capacity = s.capacity;
        self.capacity_complete &= s.capacity.is_some();
    }

    /// The hour's records with the last sample held until `until` (clamped to the hour:
    /// the end of the hour for an hour that ended, now for the hour so far). One record
    /// per tenant and project seen in any sample; each value the time-weighted mean
    /// (rounded half up); quota use from the last sample.
    pub fn records(&self, cluster: ClusterId, until: OffsetDateTime) -> Vec<UsageRecord> {
        let (Some(first), Some((t_last, last))) = (self.first, &self.last) else {
            return Vec::new();
        };
        let until = self.clamp(until).max(*t_last);
        let mut sums = self.sums.clone();
        let covered = self.ms(until) - self.ms(first);
        // The capacity over the same time, with the same weights as the records.
        let mut capacity = self
            .capacity_complete
            .then_some(self.last_capacity)
            .flatten();
        let (sums, n) = if covered > 0 {
            let w = self.ms(until) - self.ms(*t_last);
            for (scope, g) in last {
                sums.entry(*scope).or_default().add_weighted(g, w);
            }
            capacity = capacity.map(|c| {
                let mut sum = self.capacity_sum;
                sum.add_weighted(&c, w);
                sum
            });
            (sums, covered)
        } else {
            // One instant: the samples taken at it, the last one counting.
            let mut only = BTreeMap::new();
            for (scope, g) in last {
                only.entry(*scope)
                    .or_insert_with(Gauges::default)
                    .add_weighted(g, 1);
            }
            (only, 1)
        };
        let mean = |v: i128| -> i64 { i64::try_from((2 * v + n) / (2 * n)).unwrap_or(i64::MAX) };
        let cluster_capacity = capacity.map(|c| ClusterCapacity {
            nodes: mean(c.nodes),
            cpu_millicores: mean(c.cpu),
            memory_bytes: mean(c.memory),
            pending_cpu_millicores: mean(c.pending_cpu),
            pending_memory_bytes: mean(c.pending_memory),
        });
        let mut out = Vec::with_capacity(sums.len());
        for (scope, g) in &sums {
            let storage_by_class: BTreeMap<String, i64> = g
                .storage_by_class
                .iter()
                .map(|(c, v)| (c.clone(), mean(*v)))
                .filter(|(_, v)| *v > 0)
                .collect();
            out.push(UsageRecord {
                cluster_id: cluster,
                tenant_id: scope.tenant,
                project_id: scope.project,
                hour: self.hour,
                cpu_millicores: mean(g.cpu_requests),
                memory_bytes: mean(g.memory_requests),
                storage_bytes: storage_by_class
                    .values()
                    .fold(0i64, |a, b| a.saturating_add(*b)),
                load_balancers: mean(g.load_balancers),
                namespaces: mean(g.namespaces),
                pods: mean(g.pods),
                apps: mean(g.apps),
                cpu_limit_millicores: mean(g.cpu_limits),
                memory_limit_bytes: mean(g.memory_limits),
                storage_by_class,
                quotas: last
                    .get(scope)
                    .map(|g| g.quotas.clone())
                    .unwrap_or_default(),
                cluster_capacity,
            });
        }
        // Tenants first, then their projects: the order the manager checks them in.
        out.sort_by_key(|r| (r.tenant_id, r.project_id.is_some(), r.project_id));
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const ACME: Uuid = Uuid::from_u128(0xa);
    const BETA: Uuid = Uuid::from_u128(0xb);
    const WEB: Uuid = Uuid::from_u128(0x1);

    fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn ns(name: &str, labels: Value) -> Namespace {
        obj(json!({"metadata": {"name": name, "labels": labels}}))
    }

    fn tenant_ns(name: &str, tenant: &str, role: &str, project: Option<&str>) -> Namespace {
        let mut labels = json!({
            LABEL_TENANT: tenant, LABEL_CAPSULE_TENANT: tenant, LABEL_NAMESPACE_ROLE: role,
            crate::meta::LABEL_MANAGED_BY: crate::meta::MANAGED_BY,
        });
        if let Some(p) = project {
            labels[LABEL_PROJECT] = json!(p);
        }
        ns(name, labels)
    }

    fn pod(ns: &str, name: &str, phase: &str, spec: Value) -> Pod {
        obj(
            json!({"metadata": {"name": name, "namespace": ns}, "spec": spec, "status": {"phase": phase}}),
        )
    }

    fn container(name: &str, requests: Value, limits: Value) -> Value {
        json!({"name": name, "image": "nginx", "resources": {"requests": requests, "limits": limits}})
    }

    fn fixture() -> Inventory {
        let web_ns = crate::project_namespace("acme", "web");
        Inventory {
            namespaces: vec![
                tenant_ns("acme-owner", "acme", "owner", None),
                tenant_ns("acme-apps", "acme", "apps", None),
                tenant_ns(&web_ns, "acme", "project", Some("web")),
                tenant_ns("beta-apps", "beta", "apps", None),
                // A tenant the manager did not create: not reported.
                tenant_ns("handmade-apps", "handmade", "apps", None),
                // Our tenant label, Capsule says another tenant: unattributed.
                ns(
                    "sneaky",
                    json!({LABEL_TENANT: "acme", LABEL_CAPSULE_TENANT: "beta"}),
                ),
                ns("kube-system", json!({})),
            ],
            tenants: vec![
                obj(
                    json!({"metadata": {"name": "acme", "labels": {LABEL_ID: ACME.to_string()}}, "spec": {"plan": "gold"}}),
                ),
                obj(
                    json!({"metadata": {"name": "beta", "labels": {LABEL_ID: BETA.to_string()}}, "spec": {"plan": "gold"}}),
                ),
                obj(json!({"metadata": {"name": "handmade"}, "spec": {"plan": "gold"}})),
            ],
            projects: vec![obj(json!({
                "metadata": {"name": "web", "namespace": "acme-owner", "labels": {LABEL_ID: WEB.to_string()}},
                "spec": {"tenant": "acme"}}))],
            pods: vec![
                pod(
                    "acme-apps",
                    "two",
                    "Running",
                    json!({"containers": [
                        container("a", json!({"cpu": "250m", "memory": "64Mi"}), json!({"cpu": "500m", "memory": "128Mi"})),
                        container("b", json!({"cpu": "250m", "memory": "64Mi"}), json!({"cpu": "500m", "memory": "128Mi"})),
                    ]}),
                ),
                pod(
                    "acme-apps",
                    "done",
                    "Succeeded",
                    json!({"containers": [
                        container("a", json!({"cpu": "8", "memory": "8Gi"}), json!({})),
                    ]}),
                ),
                // Sidecar (100m) then an init container (1): peak 1100m > 200m + 100m; plus 10m overhead.
                pod(
                    "acme-apps",
                    "init",
                    "Pending",
                    json!({
                        "overhead": {"cpu": "10m"},
                        "initContainers": [
                            {"name": "side", "image": "x", "restartPolicy": "Always", "resources": {"requests": {"cpu": "100m"}}},
                            {"name": "setup", "image": "x", "resources": {"requests": {"cpu": "1"}}},
                        ],
                        "containers": [container("main", json!({"cpu": "200m"}), json!({}))],
                    }),
                ),
                // Pod-level resources win over the containers'.
                pod(
                    &web_ns,
                    "web-0",
                    "Running",
                    json!({
                        "resources": {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
                        "containers": [container("a", json!({"cpu": "1"}), json!({}))],
                    }),
                ),
                pod(
                    "beta-apps",
                    "b",
                    "Running",
                    json!({"containers": [container("a", json!({"cpu": "3"}), json!({}))]}),
                ),
                pod(
                    "handmade-apps",
                    "h",
                    "Running",
                    json!({"containers": [container("a", json!({"cpu": "5"}), json!({}))]}),
                ),
                pod(
                    "sneaky",
                    "s",
                    "Running",
                    json!({"containers": [container("a", json!({"cpu": "7"}), json!({}))]}),
                ),
                pod(
                    "kube-system",
                    "k",
                    "Running",
                    json!({"containers": [container("a", json!({"cpu": "9"}), json!({}))]}),
                ),
            ],
            pvcs: vec![
                obj(
                    json!({"metadata": {"name": "data", "namespace": "acme-apps"}, "spec": {"storageClassName": "fast"},
                    "status": {"phase": "Bound", "capacity": {"storage": "10Gi"}}}),
                ),
                obj(
                    json!({"metadata": {"name": "db", "namespace": web_ns}, "spec": {},
                    "status": {"phase": "Bound", "capacity": {"storage": "5Gi"}}}),
                ),
                obj(
                    json!({"metadata": {"name": "waiting", "namespace": web_ns}, "spec": {"storageClassName": "fast"},
                    "status": {"phase": "Pending"}}),
                ),
            ],
            services: vec![
                obj(
                    json!({"metadata": {"name": "lb", "namespace": web_ns}, "spec": {"type": "LoadBalancer"}}),
                ),
                obj(
                    json!({"metadata": {"name": "svc", "namespace": "acme-apps"}, "spec": {"type": "ClusterIP"}}),
                ),
                obj(
                    json!({"metadata": {"name": "lb", "namespace": "kube-system"}, "spec": {"type": "LoadBalancer"}}),
                ),
            ],
            quotas: vec![obj(json!({
                "metadata": {"name": "project", "namespace": web_ns},
                "status": {"hard": {"pods": "10", "requests.cpu": "1"}, "used": {"pods": "1", "requests.cpu": "2"}}}))],
            applications: vec![obj(json!({"name": "web", "namespace": web_ns}))],
            nodes: None,
        }
    }

    fn node(name: &str, cpu: &str, memory: &str) -> Node {
        obj(
            json!({"metadata": {"name": name}, "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": "110"}}}),
        )
    }

    #[test]
    fn capacity_is_integrated_like_the_records() {
        let hour = time::macros::datetime!(2026-01-31 23:00 UTC);
        let at = |m: i64| hour + time::Duration::minutes(m);
        let mut inv = fixture();
        // Without Nodes listed (no permission) nothing is claimed about the capacity.
        assert_eq!(sample(&inv).capacity, None);
        // acme's "two" (500m, 128Mi) and beta's pod (3 CPUs) run on listed nodes; the
        // others are pending or on a node that is gone, so they count on top of it.
        for p in &mut inv.pods {
            match p.metadata.name.as_deref() {
                Some("two") => p.spec.as_mut().unwrap().node_name = Some("n1".into()),
                Some("web-0") => p.spec.as_mut().unwrap().node_name = Some("gone".into()),
                _ if p.metadata.namespace.as_deref() == Some("beta-apps") => {
                    p.spec.as_mut().unwrap().node_name = Some("n2".into())
                }
                _ => {}
            }
        }
        inv.nodes = Some(vec![node("n1", "4", "8Gi"), node("n2", "3500m", "8Gi")]);
        let two = sample(&inv);
        let c = two.capacity.unwrap();
        assert_eq!((c.nodes, c.cpu, c.memory), (2, 7500, 16 << 30));
        // "init" (1110m) pending, "web-0" (2 CPUs, 1Gi) on a node that is gone, and the
        // pods of every namespace count, attributed or not (5 + 7 + 9 CPUs on no node).
        let others = 21_000;
        assert_eq!(
            (c.pending_cpu, c.pending_memory),
            (1110 + 2000 + others, 1 << 30)
        );
        inv.nodes = Some(vec![node("n1", "4", "8Gi")]);
        let one = sample(&inv);
        // beta's pod is on n2, which is no longer listed: pending now.
        assert_eq!(
            one.capacity.unwrap().pending_cpu,
            1110 + 2000 + others + 3000
        );

        // Two nodes for 45 minutes, one for the last 15.
        let mut acc = HourAccumulator::new(hour);
        for i in 0..12 {
            acc.add(if i < 9 { &two } else { &one }, at(5 * i));
        }
        let records = acc.records(ClusterId::new(), acc.end());
        let cap = records[0].cluster_capacity.unwrap();
        assert!(records.iter().all(|r| r.cluster_capacity == Some(cap)));
        assert_eq!(cap.nodes, 2); // 1.75 rounded
        assert_eq!(cap.cpu_millicores, (7500 * 45 + 4000 * 15) / 60);
        assert_eq!(
            i128::from(cap.pending_cpu_millicores),
            3110 + others + 3000 * 15 / 60
        );
        for r in &records {
            kubenova_api::validate::Validate::validate(r).unwrap();
        }
        // The next hour starts from the last state.
        let next = acc.next_hour().records(ClusterId::new(), at(90));
        assert_eq!(next[0].cluster_capacity.unwrap().cpu_millicores, 4000);

        // One sample without a capacity (Nodes not listable then): none is reported.
        let mut acc = HourAccumulator::new(hour);
        acc.add(&two, at(0));
        acc.add(&sample(&fixture()), at(10));
        acc.add(&two, at(20));
        let records = acc.records(ClusterId::new(), acc.end());
        assert!(records.iter().all(|r| r.cluster_capacity.is_none()));
    }

    fn scope(tenant: Uuid, project: Option<Uuid>) -> Scope {
        Scope {
            tenant: TenantId(tenant),
            project: project.map(ProjectId),
        }
    }

    #[test]
    fn sample_attributes_by_label_and_measures_what_quota_counts() {
        let s = sample(&fixture());
        assert_eq!(s.scopes.len(), 3, "{:?}", s.scopes.keys());
        assert_eq!(s.unattributed_namespaces, ["handmade-apps", "sneaky"]);
        // The tenants with a manager id, by name (what the tenant gauges are labelled with).
        assert_eq!(
            s.tenants,
            BTreeMap::from([
                (TenantId(ACME), "acme".to_owned()),
                (TenantId(BETA), "beta".to_owned())
            ])
        );
        // Nothing reconciled yet: pending.
        assert_eq!(
            s.phases,
            BTreeMap::from([
                (
                    TenantId(ACME),
                    BTreeMap::from([(("project", "pending"), 1), (("tenant", "pending"), 1)])
                ),
                (TenantId(BETA), BTreeMap::from([(("tenant", "pending"), 1)])),
            ])
        );
        let mut inv = fixture();
        let status = |phase| {
            Some(NovaStatus {
                phase: Some(phase),
                ..NovaStatus::default()
            })
        };
        inv.tenants[0].status = status(kubenova_api::crd::NovaPhase::Ready);
        inv.tenants[1].status = status(kubenova_api::crd::NovaPhase::Degraded);
        inv.projects[0].status = status(kubenova_api::crd::NovaPhase::Suspended);
        let mut unknown = inv.projects[0].clone();
        unknown.spec.tenant = "handmade".into();
        inv.projects.push(unknown);
        assert_eq!(
            sample(&inv).phases,
            BTreeMap::from([
                (
                    TenantId(ACME),
                    BTreeMap::from([(("project", "reconciling"), 1), (("tenant", "ready"), 1)])
                ),
                (
                    TenantId(BETA),
                    BTreeMap::from([(("tenant", "degraded"), 1)])
                ),
            ])
        );
        assert!(s.bad_quantities.is_empty(), "{:?}", s.bad_quantities);

        let acme = &s.scopes[&scope(ACME, None)];
        assert_eq!(acme.namespaces, 3);
        assert_eq!(acme.pods, 3);
        assert_eq!(acme.cpu_requests, 500 + 1110 + 2000);
        assert_eq!(acme.cpu_limits, 1000);
        assert_eq!(acme.memory_requests, (128 << 20) + (1 << 30));
        assert_eq!(acme.memory_limits, (256 << 20) + (2 << 30));
        assert_eq!(
            acme.storage_by_class,
            BTreeMap::from([(String::new(), 5 << 30), ("fast".into(), 10 << 30)])
        );
        assert_eq!((acme.load_balancers, acme.apps), (1, 1));
        assert_eq!(acme.quotas.len(), 2);

        let web = &s.scopes[&scope(ACME, Some(WEB))];
        assert_eq!((web.namespaces, web.pods), (1, 1));
        assert_eq!((web.cpu_requests, web.cpu_limits), (2000, 0));
        assert_eq!(
            web.storage_by_class,
            BTreeMap::from([(String::new(), 5 << 30)])
        );
        assert_eq!((web.load_balancers, web.apps), (1, 1));
        let exceeded: Vec<_> = web
            .quotas
            .iter()
            .filter(|q| q.exceeded())
            .map(|q| q.resource.as_str())
            .collect();
        assert_eq!(exceeded, ["requests.cpu"]);

        let beta = &s.scopes[&scope(BETA, None)];
        assert_eq!(
            (beta.namespaces, beta.pods, beta.cpu_requests),
            (1, 1, 3000)
        );
        assert!(beta.quotas.is_empty());
    }

    #[test]
    fn a_trimmed_inventory_samples_the_same() {
        let mut inv = fixture();
        // Of a status only the phase is kept.
        inv.tenants[0].status = Some(NovaStatus {
            phase: Some(kubenova_api::crd::NovaPhase::Ready),
            message: Some("all good".into()),
            observed_generation: Some(3),
            ..NovaStatus::default()
        });
        let kept = trim::tenant(inv.tenants[0].clone()).status.unwrap();
        assert_eq!(
            (kept.phase, kept.message, kept.observed_generation),
            (Some(kubenova_api::crd::NovaPhase::Ready), None, None)
        );
        // Some pods on a listed Node, some on one that is gone: the capacity must come out
        // the same too.
        for (i, p) in inv.pods.iter_mut().enumerate() {
            if let Some(spec) = p.spec.as_mut() {
                spec.node_name = Some(if i % 2 == 0 { "n1" } else { "gone" }.into());
            }
        }
        inv.nodes = Some(vec![node("n1", "64", "256Gi")]);
        assert!(
            sample(&inv)
                .capacity
                .is_some_and(|c| c.pending_cpu > 0 && c.cpu > 0)
        );
        let trimmed = Inventory {
            namespaces: inv
                .namespaces
                .iter()
                .cloned()
                .map(trim::namespace)
                .collect(),
            tenants: inv.tenants.iter().cloned().map(trim::tenant).collect(),
            projects: inv.projects.iter().cloned().map(trim::project).collect(),
            pods: inv.pods.iter().cloned().map(trim::pod).collect(),
            pvcs: inv.pvcs.iter().cloned().map(trim::pvc).collect(),
            services: inv.services.iter().cloned().map(trim::service).collect(),
            quotas: inv.quotas.iter().cloned().map(trim::quota).collect(),
            applications: inv
                .applications
                .iter()
                .cloned()
                .map(|m| trim::meta(m, false))
                .collect(),
            nodes: inv
                .nodes
                .clone()
                .map(|n| n.into_iter().map(trim::node).collect()),
        };
        let mut odd = fixture();
        odd.pods.push(pod(
            "beta-apps",
            "odd",
            "Running",
            json!({"containers": [container("a", json!({"cpu": "lots"}), json!({}))]}),
        ));
        let odd_trimmed: Vec<Pod> = odd.pods.iter().cloned().map(trim::pod).collect();
        assert_eq!(sample(&trimmed), sample(&inv));
        assert_eq!(
            sample(&Inventory {
                pods: odd_trimmed,
                ..odd.clone()
            }),
            sample(&odd)
        );
    }

    #[test]
    fn unparsable_quantities_are_reported_and_count_zero() {
        let mut inv = fixture();
        inv.pods.push(pod(
            "beta-apps",
            "odd",
            "Running",
            json!({"containers": [container("a", json!({"cpu": "lots"}), json!({}))]}),
        ));
        let s = sample(&inv);
        assert_eq!(s.bad_quantities.len(), 1, "{:?}", s.bad_quantities);
        assert!(s.bad_quantities[0].contains("beta-apps/odd"));
        assert_eq!(s.scopes[&scope(BETA, None)].cpu_requests, 3000);
        assert_eq!(s.scopes[&scope(BETA, None)].pods, 2);
    }

    #[test]
    fn an_hour_is_the_time_weighted_mean_of_its_samples() {
        let hour = time::macros::datetime!(2026-01-31 23:00 UTC);
        let at = |m: i64| hour + time::Duration::minutes(m);
        let cluster = ClusterId::new();
        let full = sample(&fixture());
        let mut without_beta_pod = fixture();
        without_beta_pod
            .pods
            .retain(|p| p.metadata.namespace.as_deref() != Some("beta-apps"));
        let half = sample(&without_beta_pod);
        let mut acc = HourAccumulator::new(at(7));
        assert_eq!(acc.hour(), hour);
        // Every 5 minutes from :00; beta's pod runs for the first 30 minutes only.
        for i in 0..12 {
            acc.add(if i < 6 { &full } else { &half }, at(5 * i));
        }
        let records = acc.records(cluster, acc.end());
        let ids: Vec<_> = records
            .iter()
            .map(|r| (r.tenant_id.0, r.project_id.map(|p| p.0)))
            .collect();
        assert_eq!(ids, [(ACME, None), (ACME, Some(WEB)), (BETA, None)]);
        let beta = &records[2];
        assert_eq!(
            (beta.cpu_millicores, beta.pods, beta.namespaces),
            (1500, 1, 1)
        );
        let acme = &records[0];
        assert_eq!(acme.cpu_millicores, 3610);
        assert_eq!(acme.storage_bytes, 15 << 30);
        assert_eq!((acme.hour, acme.cluster_id), (hour, cluster));
        for r in &records {
            kubenova_api::validate::Validate::validate(r).unwrap();
        }
        // Uneven samples weigh by the time they stood for: nothing for 45 minutes, then
        // everything for 15 (an on-demand sample at :45 and one at :50 change nothing).
        let mut acc = HourAccumulator::new(hour);
        acc.add(&Sample::default(), at(0));
        acc.add(&full, at(45));
        acc.add(&full, at(50));
        let r = acc.records(cluster, acc.end());
        assert_eq!(r[2].cpu_millicores, 750); // 3000 × 15/60
        assert_eq!(r[0].pods, 1); // 3 × 1/4 = 0.75 → 1
        assert_eq!(r[1].pods, 0); // 1 × 1/4 → 0
        // The hour so far (at :50): 3000 × 5/50.
        assert_eq!(acc.records(cluster, at(50))[2].cpu_millicores, 300);
        // A report at the instant of the only sample: that sample.
        let mut acc = HourAccumulator::new(hour);
        acc.add(&full, at(10));
        assert_eq!(acc.records(cluster, at(10))[2].cpu_millicores, 3000);
        // Quota use is the last sample's.
        let mut acc = HourAccumulator::new(hour);
        acc.add(&full, at(0));
        acc.add(&Sample::default(), at(30));
        let r = acc.records(cluster, acc.end());
        assert!(r.iter().all(|r| r.quotas.is_empty()));
        assert_eq!(r[2].cpu_millicores, 1500);
        // The next hour starts with the last state from its first instant.
        let mut acc = HourAccumulator::new(hour);
        acc.add(&full, at(55));
        let mut next = acc.next_hour();
        assert_eq!(next.hour(), time::macros::datetime!(2026-02-01 00:00 UTC));
        next.add(&full, next.hour() + time::Duration::minutes(3));
        let r = next.records(cluster, next.end());
        assert_eq!(r[2].cpu_millicores, 3000);
        assert_eq!(r[0].quotas.len(), 2);
    }
}
