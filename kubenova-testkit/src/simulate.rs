//! Simulated controllers. These are **not** Capsule or KubeVela: they only write the status
//! fields the real controllers would, so code that waits for readiness can be tested.
//!
//! * [`SimulatedCapsule`]: for every `capsule.clastix.io` Tenant, writes
//!   `status {state: Active|Cordoned, size, namespaces, observedGeneration, conditions[Ready=True]}`;
//!   namespaces labelled `capsule.clastix.io/tenant=<tenant>` get the `projectcapsule.dev/tenant`
//!   label, the tenant's `namespaceOptions.additionalMetadata.labels` and an ownerReference to
//!   the Tenant (as Capsule does).
//! * [`SimulatedKubeVela`]: moves every `core.oam.dev` Application to `status.status: running`
//!   with conditions, per-component `services` and a finished workflow.
//! * [`SimulatedWorkloads`]: gives every Deployment and StatefulSet the status of a
//!   finished rollout (all replicas ready), what `helm --wait` waits for.
//! * [`SimulatedQuota`]: the ResourceQuota controller of kube-controller-manager: writes
//!   `status.hard` (from `spec.hard`) and `status.used` of every ResourceQuota for the
//!   resources it can count in its namespace: `pods`, `count/pods`, `requests.cpu`/`cpu`,
//!   `requests.memory`/`memory`, `limits.cpu`, `limits.memory` (containers of non-terminated
//!   pods), `services`, `count/services`, `services.loadbalancers`, `services.nodeports`,
//!   `persistentvolumeclaims`, `count/persistentvolumeclaims` and `requests.storage` (the
//!   claims' requests). Other resources get no `used` entry (a real cluster would count them).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, watch};

use crate::managed::now_rfc3339;
use crate::selector::{FieldSelector, LabelSelector, labels_of};
use crate::store::{Event, PatchKind, Store, WriteOpts};

const TENANT_LABEL: &str = "capsule.clastix.io/tenant";
const NEW_TENANT_LABEL: &str = "projectcapsule.dev/tenant";

/// Which simulated controllers to run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Simulations {
    /// Run [`SimulatedCapsule`].
    pub capsule: bool,
    /// Run [`SimulatedKubeVela`].
    pub kubevela: bool,
    /// Run [`SimulatedWorkloads`].
    pub workloads: bool,
    /// Run [`SimulatedQuota`].
    pub quota: bool,
}

impl Simulations {
    /// Parses `capsule,kubevela,workloads,quota`.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let mut out = Self::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "capsule" => out.capsule = true,
                "kubevela" => out.kubevela = true,
                "workloads" => out.workloads = true,
                "quota" => out.quota = true,
                other => {
                    anyhow::bail!(
                        "unknown simulation {other:?}: expected capsule, kubevela, workloads or quota"
                    )
                }
            }
        }
        Ok(out)
    }
}

fn list_all(store: &Store, group: &str, version: &str, plural: &str) -> Vec<Value> {
    let Some(t) = store.resolve(group, version, plural) else {
        return Vec::new();
    };
    store
        .list(
            &t,
            None,
            &LabelSelector::default(),
            &FieldSelector::default(),
            None,
            None,
        )
        .ok()
        .and_then(|l| l.get("items").and_then(Value::as_array).cloned())
        .unwrap_or_default()
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

/// Strips volatile timestamps so statuses can be compared.
fn comparable(status: &Value) -> Value {
    let mut st = status.clone();
    if let Some(conds) = st.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in conds {
            if let Some(m) = c.as_object_mut() {
                m.remove("lastTransitionTime");
            }
        }
    }
    st
}

fn write_status(
    store: &Store,
    group: &str,
    version: &str,
    plural: &str,
    obj: &Value,
    status: Value,
    manager: &str,
) {
    let Some(t) = store.resolve(group, version, plural) else {
        return;
    };
    let mut new = obj.clone();
    new["status"] = status;
    let ns = s(obj, "/metadata/namespace");
    let ns = if ns.is_empty() { None } else { Some(ns) };
    if let Err(e) = store.replace(
        &t,
        ns,
        s(obj, "/metadata/name"),
        new,
        &WriteOpts::manager(manager),
        "status",
    ) {
        tracing::debug!(
            "{manager}: status write for {} failed: {e}",
            s(obj, "/metadata/name")
        );
    }
}

/// A simulated controller driven incrementally by the store's events.
trait Sim {
    /// Updates the indexes and marks what `ev` makes worth a look.
    fn note(&mut self, ev: &Event);
    /// Rebuilds the indexes from the store and marks everything (start, lagged events).
    fn resync(&mut self, store: &Store);
    /// Reconciles what is marked.
    fn flush(&mut self, store: &Store);
}

async fn run_loop(store: Arc<Store>, mut shutdown: watch::Receiver<bool>, mut sim: impl Sim) {
    let mut rx = store.subscribe();
    sim.resync(&store);
    sim.flush(&store);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            r = rx.recv() => match r {
                Ok(ev) => {
                    // Coalesce what is queued already, then reconcile only the objects
                    // the events touched (O(changes), not O(objects), per pass).
                    sim.note(&ev);
                    let mut lagged = false;
                    loop {
                        match rx.try_recv() {
                            Ok(ev) => sim.note(&ev),
                            Err(broadcast::error::TryRecvError::Lagged(_)) => lagged = true,
                            Err(_) => break,
                        }
                    }
                    if lagged {
                        sim.resync(&store);
                    }
                    sim.flush(&store);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    sim.resync(&store);
                    sim.flush(&store);
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
        // Let the API server's tasks run between passes.
        tokio::task::yield_now().await;
    }
}

fn get_obj(
    store: &Store,
    group: &str,
    version: &str,
    plural: &str,
    ns: Option<&str>,
    name: &str,
) -> Option<Value> {
    let t = store.resolve(group, version, plural)?;
    store.get(&t, ns, name).ok()
}

/// Simulated Capsule tenant controller.
#[derive(Debug, Default)]
pub struct SimulatedCapsule {
    /// Namespaces labelled `capsule.clastix.io/tenant=<tenant>`, by tenant.
    members: HashMap<String, BTreeSet<String>>,
    /// The tenant label of each labelled namespace.
    tenant_of: HashMap<String, String>,
    /// Tenants to reconcile.
    dirty: BTreeSet<String>,
}

impl SimulatedCapsule {
    /// Spawns the controller loop.
    pub fn spawn(
        store: Arc<Store>,
        shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(run_loop(store, shutdown, SimulatedCapsule::default()))
    }

    fn index_namespace(&mut self, name: &str, tenant: Option<&str>) {
        let old = self.tenant_of.get(name).cloned();
        if old.as_deref() == tenant {
            if let Some(t) = tenant {
                self.dirty.insert(t.to_owned());
            }
            return;
        }
        if let Some(o) = old {
            if let Some(m) = self.members.get_mut(&o) {
                m.remove(name);
                if m.is_empty() {
                    self.members.remove(&o);
                }
            }
            self.tenant_of.remove(name);
            self.dirty.insert(o);
        }
        if let Some(t) = tenant {
            self.members
                .entry(t.to_owned())
                .or_default()
                .insert(name.to_owned());
            self.tenant_of.insert(name.to_owned(), t.to_owned());
            self.dirty.insert(t.to_owned());
        }
    }

    /// One full reconciliation pass.
    pub fn reconcile(store: &Store) {
        let mut sim = SimulatedCapsule::default();
        sim.resync(store);
        sim.flush(store);
    }

    fn reconcile_tenant(store: &Store, tenant: &Value, namespaces: &[Value]) {
        let Some(tenant_type) = store.resolve("capsule.clastix.io", "v1beta2", "tenants") else {
            return;
        };
        let Some(ns_type) = store.resolve("", "v1", "namespaces") else {
            return;
        };
        if !s(tenant, "/metadata/deletionTimestamp").is_empty() {
            return;
        }
        let tname = s(tenant, "/metadata/name");
        let tuid = s(tenant, "/metadata/uid");
        let mut members: Vec<String> = Vec::new();
        for ns in namespaces {
            let labels = labels_of(ns);
            if labels.get(TENANT_LABEL).map(String::as_str) != Some(tname) {
                continue;
            }
            let nsname = s(ns, "/metadata/name").to_owned();
            if s(ns, "/metadata/deletionTimestamp").is_empty() {
                members.push(nsname.clone());
            } else {
                continue;
            }
            let mut want_labels: Map<String, Value> = Map::new();
            want_labels.insert(NEW_TENANT_LABEL.into(), json!(tname));
            if let Some(extra) = tenant
                .pointer("/spec/namespaceOptions/additionalMetadata/labels")
                .and_then(Value::as_object)
            {
                for (k, v) in extra {
                    want_labels.insert(k.clone(), v.clone());
                }
            }
            let missing_labels = want_labels
                .iter()
                .any(|(k, v)| labels.get(k).map(|x| json!(x)) != Some(v.clone()));
            let refs = ns
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let has_ref = refs.iter().any(|r| s(r, "/uid") == tuid);
            if missing_labels || !has_ref {
                let mut new_refs = refs.clone();
                if !has_ref {
                    new_refs.push(json!({
                        "apiVersion": "capsule.clastix.io/v1beta2",
                        "kind": "Tenant",
                        "name": tname,
                        "uid": tuid,
                        "controller": true,
                        "blockOwnerDeletion": true,
                    }));
                }
                let patch =
                    json!({"metadata": {"labels": want_labels, "ownerReferences": new_refs}});
                if let Err(e) = store.patch(
                    &ns_type,
                    None,
                    &nsname,
                    PatchKind::Merge,
                    patch,
                    &WriteOpts::manager("simulated-capsule"),
                    "",
                ) {
                    tracing::debug!("simulated-capsule: labelling namespace {nsname} failed: {e}");
                }
            }
        }
        members.sort();
        let generation = tenant
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let cordoned = tenant.pointer("/spec/cordoned").and_then(Value::as_bool) == Some(true);
        let status = json!({
            "state": if cordoned { "Cordoned" } else { "Active" },
            "size": members.len(),
            "namespaces": members,
            "observedGeneration": generation,
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "reason": "Succeeded",
                "message": "reconciled by kubenova-testkit SimulatedCapsule",
                "lastTransitionTime": now_rfc3339(),
                "observedGeneration": generation,
            }],
        });
        let current = tenant.get("status").cloned().unwrap_or(Value::Null);
        if comparable(&current) != comparable(&status) {
            write_status(
                store,
                &tenant_type.group,
                "v1beta2",
                "tenants",
                tenant,
                status,
                "simulated-capsule",
            );
        }
    }
}

impl Sim for SimulatedCapsule {
    fn note(&mut self, ev: &Event) {
        match (ev.group.as_str(), ev.plural.as_str()) {
            ("capsule.clastix.io", "tenants") => {
                self.dirty
                    .insert(s(&ev.object, "/metadata/name").to_owned());
            }
            ("", "namespaces") => {
                let name = s(&ev.object, "/metadata/name").to_owned();
                let tenant = if ev.etype == "DELETED" {
                    None
                } else {
                    ev.object
                        .pointer("/metadata/labels")
                        .and_then(|l| l.get(TENANT_LABEL))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                };
                self.index_namespace(&name, tenant.as_deref());
            }
            _ => {}
        }
    }

    fn resync(&mut self, store: &Store) {
        self.members.clear();
        self.tenant_of.clear();
        for ns in list_all(store, "", "v1", "namespaces") {
            if let Some(t) = labels_of(&ns).get(TENANT_LABEL) {
                self.index_namespace(s(&ns, "/metadata/name"), Some(t));
            }
        }
        for t in list_all(store, "capsule.clastix.io", "v1beta2", "tenants") {
            self.dirty.insert(s(&t, "/metadata/name").to_owned());
        }
    }

    fn flush(&mut self, store: &Store) {
        for tname in std::mem::take(&mut self.dirty) {
            let Some(tenant) = get_obj(
                store,
                "capsule.clastix.io",
                "v1beta2",
                "tenants",
                None,
                &tname,
            ) else {
                continue;
            };
            let namespaces: Vec<Value> = self
                .members
                .get(&tname)
                .into_iter()
                .flatten()
                .filter_map(|n| get_obj(store, "", "v1", "namespaces", None, n))
                .collect();
            Self::reconcile_tenant(store, &tenant, &namespaces);
        }
    }
}

/// Simulated KubeVela application controller.
#[derive(Debug, Default)]
pub struct SimulatedKubeVela {
    /// Applications to reconcile: (namespace, name).
    dirty: BTreeSet<(String, String)>,
}

impl Sim for SimulatedKubeVela {
    fn note(&mut self, ev: &Event) {
        if ev.group == "core.oam.dev" && ev.plural == "applications" && ev.etype != "DELETED" {
            self.dirty.insert((
                ev.namespace.clone(),
                s(&ev.object, "/metadata/name").to_owned(),
            ));
        }
    }

    fn resync(&mut self, store: &Store) {
        for app in list_all(store, "core.oam.dev", "v1beta1", "applications") {
            self.dirty.insert((
                s(&app, "/metadata/namespace").to_owned(),
                s(&app, "/metadata/name").to_owned(),
            ));
        }
    }

    fn flush(&mut self, store: &Store) {
        for (ns, name) in std::mem::take(&mut self.dirty) {
            if let Some(app) = get_obj(
                store,
                "core.oam.dev",
                "v1beta1",
                "applications",
                Some(&ns),
                &name,
            ) {
                Self::reconcile_app(store, &app);
            }
        }
    }
}

impl SimulatedKubeVela {
    /// Spawns the controller loop.
    pub fn spawn(
        store: Arc<Store>,
        shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(run_loop(store, shutdown, SimulatedKubeVela::default()))
    }

    /// One full reconciliation pass.
    pub fn reconcile(store: &Store) {
        for app in list_all(store, "core.oam.dev", "v1beta1", "applications") {
            Self::reconcile_app(store, &app);
        }
    }

    fn reconcile_app(store: &Store, app: &Value) {
        let app = app.clone();
        {
            if !s(&app, "/metadata/deletionTimestamp").is_empty() {
                return;
            }
            let generation = app
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let observed = app
                .pointer("/status/observedGeneration")
                .and_then(Value::as_i64);
            if s(&app, "/status/status") == "running" && observed == Some(generation) {
                return;
            }
            let name = s(&app, "/metadata/name");
            let ns = s(&app, "/metadata/namespace");
            let now = now_rfc3339();
            let services: Vec<Value> = app
                .pointer("/spec/components")
                .and_then(Value::as_array)
                .map(|cs| {
                    cs.iter()
                        .map(|c| {
                            let traits: Vec<Value> = c
                                .get("traits")
                                .and_then(Value::as_array)
                                .map(|ts| ts.iter().map(|t| json!({"type": s(t, "/type"), "healthy": true})).collect())
                                .unwrap_or_default();
                            json!({
                                "name": s(c, "/name"),
                                "namespace": ns,
                                "cluster": "local",
                                "healthy": true,
                                "message": "Ready:1/1",
                                "traits": traits,
                                "workloadDefinition": {"apiVersion": "apps/v1", "kind": "Deployment"},
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            let conditions: Vec<Value> = ["Parsed", "Revision", "Policy", "Render", "WorkflowFinished", "Ready"]
                .iter()
                .map(|t| json!({"type": t, "status": "True", "reason": "Available", "lastTransitionTime": now}))
                .collect();
            let revision = format!("{name}-v{generation}");
            let status = json!({
                "status": "running",
                "observedGeneration": generation,
                "conditions": conditions,
                "services": services,
                "latestRevision": {"name": revision, "revision": generation},
                "workflow": {
                    "appRevision": revision,
                    "mode": "StepByStep-DAG",
                    "status": "succeeded",
                    "suspend": false,
                    "terminated": false,
                    "finished": true,
                    "startTime": now,
                    "endTime": now,
                },
            });
            write_status(
                store,
                "core.oam.dev",
                "v1beta1",
                "applications",
                &app,
                status,
                "simulated-kubevela",
            );
        }
    }
}

/// Simulated Deployment, StatefulSet and volume controller: nothing runs, but every
/// Deployment and StatefulSet gets the status of a finished rollout with all replicas
/// ready, for its current generation: `observedGeneration`, `replicas`, `updatedReplicas`,
/// `readyReplicas`, `availableReplicas` (= `spec.replicas`, default 1) and, for
/// Deployments, the conditions `Available=True` (MinimumReplicasAvailable) and
/// `Progressing=True` (NewReplicaSetAvailable). Every PersistentVolumeClaim is `Bound` with
/// the capacity it requests. Every Job completes (`Complete=True`), and every Pod without a
/// status runs (all containers ready) or, with `restartPolicy` Never or OnFailure, has
/// `Succeeded`. That is what `helm install --wait`, Helm hooks, `helm test`, kstatus and
/// `kubectl rollout status` wait for. (No ReplicaSets or Pods are created.)
#[derive(Debug, Default)]
pub struct SimulatedWorkloads {
    /// Objects to reconcile: (plural, namespace, name).
    dirty: BTreeSet<(String, String, String)>,
}

const PVCS: &str = "persistentvolumeclaims";

/// What this controller handles: (group, version, plural).
const HANDLED: [(&str, &str, &str); 5] = [
    ("apps", "v1", "deployments"),
    ("apps", "v1", "statefulsets"),
    ("batch", "v1", "jobs"),
    ("", "v1", "pods"),
    ("", "v1", PVCS),
];

/// (group, version) of a plural this controller handles.
fn workload_gv(plural: &str) -> (&'static str, &'static str) {
    HANDLED
        .iter()
        .find(|(_, _, p)| *p == plural)
        .map_or(("apps", "v1"), |(g, v, _)| (*g, *v))
}

impl Sim for SimulatedWorkloads {
    fn note(&mut self, ev: &Event) {
        let ours = HANDLED
            .iter()
            .any(|(g, _, p)| *g == ev.group && *p == ev.plural);
        if ours && ev.etype != "DELETED" {
            self.dirty.insert((
                ev.plural.clone(),
                ev.namespace.clone(),
                s(&ev.object, "/metadata/name").to_owned(),
            ));
        }
    }

    fn resync(&mut self, store: &Store) {
        for (g, v, plural) in HANDLED {
            for o in list_all(store, g, v, plural) {
                self.dirty.insert((
                    plural.to_owned(),
                    s(&o, "/metadata/namespace").to_owned(),
                    s(&o, "/metadata/name").to_owned(),
                ));
            }
        }
    }

    fn flush(&mut self, store: &Store) {
        for (plural, ns, name) in std::mem::take(&mut self.dirty) {
            let (g, v) = workload_gv(&plural);
            if let Some(o) = get_obj(store, g, v, &plural, Some(&ns), &name) {
                Self::reconcile_one(store, &plural, &o);
            }
        }
    }
}

impl SimulatedWorkloads {
    /// Spawns the controller loop.
    pub fn spawn(
        store: Arc<Store>,
        shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(run_loop(store, shutdown, SimulatedWorkloads::default()))
    }

    /// The status a finished rollout of `obj` has.
    pub fn ready_status(plural: &str, obj: &Value) -> Value {
        if plural == "jobs" {
            return Self::job_status(obj);
        }
        if plural == "pods" {
            return Self::pod_status(obj);
        }
        if plural == PVCS {
            let mut status = json!({"phase": "Bound"});
            if let Some(modes) = obj.pointer("/spec/accessModes") {
                status["accessModes"] = modes.clone();
            }
            if let Some(req) = obj.pointer("/spec/resources/requests/storage") {
                status["capacity"] = json!({"storage": req});
            }
            return status;
        }
        let generation = obj
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let replicas = obj
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let mut status = json!({
            "observedGeneration": generation,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
        });
        if plural == "deployments" {
            let old = obj.pointer("/status/conditions");
            let now = now_rfc3339();
            let cond = |ctype: &str, reason: &str, message: String| {
                // Keep the transition time of a condition that was already true.
                let since = old
                    .and_then(Value::as_array)
                    .and_then(|cs| {
                        cs.iter()
                            .find(|c| s(c, "/type") == ctype && s(c, "/status") == "True")
                    })
                    .map(|c| s(c, "/lastTransitionTime").to_owned())
                    .filter(|t| !t.is_empty())
                    .unwrap_or_else(|| now.clone());
                json!({"type": ctype, "status": "True", "reason": reason, "message": message,
                       "lastUpdateTime": now, "lastTransitionTime": since})
            };
            let name = s(obj, "/metadata/name");
            status["conditions"] = json!([
                cond(
                    "Available",
                    "MinimumReplicasAvailable",
                    "Deployment has minimum availability.".to_owned()
                ),
                cond(
                    "Progressing",
                    "NewReplicaSetAvailable",
                    format!("ReplicaSet \"{name}\" has successfully progressed.")
                ),
            ]);
        } else {
            status["currentReplicas"] = json!(replicas);
        }
        status
    }

    /// A Job that ran to completion: `succeeded` = `completions` (default 1), conditions
    /// `SuccessCriteriaMet` and `Complete`.
    fn job_status(obj: &Value) -> Value {
        let done = obj
            .pointer("/spec/completions")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let old = |k: &str| obj.pointer(&format!("/status/{k}")).cloned();
        let now = now_rfc3339();
        let started = old("startTime").unwrap_or_else(|| json!(now));
        let finished = old("completionTime").unwrap_or_else(|| json!(now));
        let cond = |t: &str| {
            json!({"type": t, "status": "True", "reason": "CompletionsReached",
                   "message": "Reached expected number of succeeded pods",
                   "lastProbeTime": finished, "lastTransitionTime": finished})
        };
        json!({
            "startTime": started,
            "completionTime": finished,
            "succeeded": done,
            "ready": 0,
            "terminating": 0,
            "conditions": [cond("SuccessCriteriaMet"), cond("Complete")],
        })
    }

    /// A Pod that runs (`Running`, every container ready) or, with `restartPolicy` Never
    /// or OnFailure (a `helm test` Pod, a Job's Pod), that finished (`Succeeded`, exit 0).
    fn pod_status(obj: &Value) -> Value {
        let finishes = matches!(s(obj, "/spec/restartPolicy"), "Never" | "OnFailure");
        let since = obj
            .pointer("/status/startTime")
            .cloned()
            .unwrap_or_else(|| json!(now_rfc3339()));
        let statuses: Vec<Value> = obj
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| {
                let state = if finishes {
                    json!({"terminated": {"exitCode": 0, "reason": "Completed",
                                          "startedAt": since, "finishedAt": since}})
                } else {
                    json!({"running": {"startedAt": since}})
                };
                json!({"name": s(c, "/name"), "image": s(c, "/image"), "imageID": "",
                       "ready": !finishes, "started": !finishes, "restartCount": 0,
                       "state": state})
            })
            .collect();
        let (phase, ready, reason) = if finishes {
            ("Succeeded", "False", "PodCompleted")
        } else {
            ("Running", "True", "")
        };
        let mut cond = json!({"type": "Ready", "status": ready, "lastTransitionTime": since});
        if !reason.is_empty() {
            cond["reason"] = json!(reason);
        }
        json!({
            "phase": phase,
            "startTime": since,
            "conditions": [cond],
            "containerStatuses": statuses,
        })
    }

    fn reconcile_one(store: &Store, plural: &str, obj: &Value) {
        if !s(obj, "/metadata/deletionTimestamp").is_empty() {
            return;
        }
        // Pods whose status a test wrote itself (phase set) are left alone.
        if plural == "pods" && !s(obj, "/status/phase").is_empty() {
            return;
        }
        let status = Self::ready_status(plural, obj);
        let current = obj.get("status").cloned().unwrap_or(Value::Null);
        let strip = |v: &Value| {
            let mut v = comparable(v);
            if let Some(cs) = v.get_mut("conditions").and_then(Value::as_array_mut) {
                for c in cs {
                    if let Some(m) = c.as_object_mut() {
                        m.remove("lastUpdateTime");
                    }
                }
            }
            v
        };
        if strip(&current) == strip(&status) {
            return;
        }
        let (g, v) = workload_gv(plural);
        write_status(
            store,
            g,
            v,
            plural,
            obj,
            status,
            "testkit-workload-controller",
        );
    }
}

/// Simulated ResourceQuota controller (see the module docs).
#[derive(Debug, Default)]
pub struct SimulatedQuota {
    /// Namespaces whose quotas need a look.
    dirty: BTreeSet<String>,
}

impl Sim for SimulatedQuota {
    fn note(&mut self, ev: &Event) {
        if ev.group.is_empty()
            && matches!(
                ev.plural.as_str(),
                "pods" | "services" | "persistentvolumeclaims" | "resourcequotas"
            )
        {
            self.dirty.insert(ev.namespace.clone());
        }
    }

    fn resync(&mut self, store: &Store) {
        for q in list_all(store, "", "v1", "resourcequotas") {
            self.dirty.insert(s(&q, "/metadata/namespace").to_owned());
        }
    }

    fn flush(&mut self, store: &Store) {
        for ns in std::mem::take(&mut self.dirty) {
            Self::reconcile_namespace(store, &ns);
        }
    }
}

/// A Kubernetes quantity in nano-units (`250m` → 250 000 000); `None` when malformed.
fn nanos(q: &str) -> Option<i128> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let neg = int.starts_with('-');
    let int = int.trim_start_matches(['+', '-']);
    let digits = format!("{int}{frac}");
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) || digits.len() > 30 {
        return None;
    }
    let mantissa: i128 = digits.parse().ok()?;
    let scale = 10i128.checked_pow(u32::try_from(frac.len()).ok()?)?;
    let mul: i128 = match suffix {
        "n" => 1,
        "u" => 1_000,
        "m" => 1_000_000,
        "" => 1_000_000_000,
        "k" => 1_000_000_000_000,
        "M" => 1_000_000_000_000_000,
        "G" => 1_000_000_000_000_000_000,
        "T" => 1_000_000_000_000_000_000_000,
        "Ki" => 1_000_000_000 << 10,
        "Mi" => 1_000_000_000 << 20,
        "Gi" => 1_000_000_000 << 30,
        "Ti" => 1_000_000_000 << 40,
        "Pi" => 1_000_000_000 << 50,
        e if e.starts_with(['e', 'E']) && e.len() > 1 => {
            let exp: u32 = e[1..].parse().ok()?;
            1_000_000_000i128.checked_mul(10i128.checked_pow(exp)?)?
        }
        _ => return None,
    };
    let v = mantissa.checked_mul(mul)? / scale;
    Some(if neg { -v } else { v })
}

/// `nanos` as a quantity: milli-units (`1500m`) when fractional, else whole units.
fn quantity(nanos: i128) -> String {
    if nanos % 1_000_000_000 == 0 {
        (nanos / 1_000_000_000).to_string()
    } else {
        format!("{}m", (nanos + 999_999) / 1_000_000)
    }
}

impl SimulatedQuota {
    /// Spawns the controller loop.
    pub fn spawn(
        store: Arc<Store>,
        shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(run_loop(store, shutdown, SimulatedQuota::default()))
    }

    fn in_namespace(store: &Store, plural: &str, ns: &str) -> Vec<Value> {
        let Some(t) = store.resolve("", "v1", plural) else {
            return Vec::new();
        };
        store
            .list(
                &t,
                Some(ns),
                &LabelSelector::default(),
                &FieldSelector::default(),
                None,
                None,
            )
            .ok()
            .and_then(|l| l.get("items").and_then(Value::as_array).cloned())
            .unwrap_or_default()
    }

    /// What the namespace uses, per quota resource this simulation counts.
    fn usage(store: &Store, ns: &str) -> Map<String, Value> {
        let pods: Vec<Value> = Self::in_namespace(store, "pods", ns)
            .into_iter()
            .filter(|p| !matches!(s(p, "/status/phase"), "Succeeded" | "Failed"))
            .collect();
        let sum = |kind: &str, res: &str| -> i128 {
            pods.iter()
                .flat_map(|p| {
                    p.pointer("/spec/containers")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default()
                })
                .filter_map(|c| {
                    c.pointer(&format!("/resources/{kind}/{res}"))
                        .and_then(Value::as_str)
                        .and_then(nanos)
                })
                .sum()
        };
        let services = Self::in_namespace(store, "services", ns);
        let of_type = |t: &str| services.iter().filter(|x| s(x, "/spec/type") == t).count() as i128;
        let pvcs = Self::in_namespace(store, "persistentvolumeclaims", ns);
        let storage: i128 = pvcs
            .iter()
            .filter_map(|c| {
                c.pointer("/spec/resources/requests/storage")
                    .and_then(Value::as_str)
                    .and_then(nanos)
            })
            .sum();
        const ONE: i128 = 1_000_000_000;
        let mut used = Map::new();
        let mut put = |keys: &[&str], v: i128| {
            for k in keys {
                used.insert((*k).to_owned(), json!(quantity(v)));
            }
        };
        put(&["pods", "count/pods"], pods.len() as i128 * ONE);
        put(&["requests.cpu", "cpu"], sum("requests", "cpu"));
        put(&["requests.memory", "memory"], sum("requests", "memory"));
        put(&["limits.cpu"], sum("limits", "cpu"));
        put(&["limits.memory"], sum("limits", "memory"));
        put(
            &["services", "count/services"],
            services.len() as i128 * ONE,
        );
        put(&["services.loadbalancers"], of_type("LoadBalancer") * ONE);
        put(
            &["services.nodeports"],
            (of_type("NodePort") + of_type("LoadBalancer")) * ONE,
        );
        put(
            &["persistentvolumeclaims", "count/persistentvolumeclaims"],
            pvcs.len() as i128 * ONE,
        );
        put(&["requests.storage"], storage);
        used
    }

    fn reconcile_namespace(store: &Store, ns: &str) {
        let quotas = Self::in_namespace(store, "resourcequotas", ns);
        if quotas.is_empty() {
            return;
        }
        let all = Self::usage(store, ns);
        for q in quotas {
            if !s(&q, "/metadata/deletionTimestamp").is_empty() {
                continue;
            }
            let hard = q
                .pointer("/spec/hard")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let used: Map<String, Value> = hard
                .keys()
                .filter_map(|k| Some((k.clone(), all.get(k)?.clone())))
                .collect();
            let status = json!({"hard": hard, "used": used});
            if q.get("status") == Some(&status) {
                continue;
            }
            write_status(
                store,
                "",
                "v1",
                "resourcequotas",
                &q,
                status,
                "simulated-resourcequota-controller",
            );
        }
    }
}

#[cfg(test)]
mod quota_tests {
    use super::*;

    #[test]
    fn quantities_in_nano_units() {
        assert_eq!(nanos("250m"), Some(250_000_000));
        assert_eq!(nanos("1.5"), Some(1_500_000_000));
        assert_eq!(nanos("64Mi"), Some(64 * (1 << 20) * 1_000_000_000));
        assert_eq!(nanos("1e3"), Some(1_000 * 1_000_000_000));
        assert_eq!(nanos("lots"), None);
        assert_eq!(quantity(1_500_000_000), "1500m");
        assert_eq!(quantity(2_000_000_000), "2");
    }
}
