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

use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, watch};

use crate::managed::now_rfc3339;
use crate::selector::{FieldSelector, LabelSelector, labels_of};
use crate::store::{PatchKind, Store, WriteOpts};

const TENANT_LABEL: &str = "capsule.clastix.io/tenant";
const NEW_TENANT_LABEL: &str = "projectcapsule.dev/tenant";

/// Which simulated controllers to run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Simulations {
    /// Run [`SimulatedCapsule`].
    pub capsule: bool,
    /// Run [`SimulatedKubeVela`].
    pub kubevela: bool,
}

impl Simulations {
    /// Parses `capsule,kubevela`.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let mut out = Self::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "capsule" => out.capsule = true,
                "kubevela" => out.kubevela = true,
                other => {
                    anyhow::bail!("unknown simulation {other:?}: expected capsule or kubevela")
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

async fn run_loop(
    store: Arc<Store>,
    mut shutdown: watch::Receiver<bool>,
    interesting: &'static [(&'static str, &'static str)],
    reconcile: fn(&Store),
) {
    let mut rx = store.subscribe();
    reconcile(&store);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            r = rx.recv() => match r {
                Ok(ev) => {
                    if interesting.iter().any(|(g, p)| ev.group == *g && ev.plural == *p) {
                        // Coalesce: one full pass for every event already queued (a pass
                        // is O(objects), so one per event would be quadratic at scale).
                        while let Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) =
                            rx.try_recv()
                        {}
                        reconcile(&store);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => reconcile(&store),
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    }
}

/// Simulated Capsule tenant controller.
#[derive(Debug)]
pub struct SimulatedCapsule;

impl SimulatedCapsule {
    /// Spawns the controller loop.
    pub fn spawn(
        store: Arc<Store>,
        shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(run_loop(
            store,
            shutdown,
            &[("capsule.clastix.io", "tenants"), ("", "namespaces")],
            Self::reconcile,
        ))
    }

    /// One full reconciliation pass.
    pub fn reconcile(store: &Store) {
        let Some(tenant_type) = store.resolve("capsule.clastix.io", "v1beta2", "tenants") else {
            return;
        };
        let tenants = list_all(store, "capsule.clastix.io", "v1beta2", "tenants");
        let namespaces = list_all(store, "", "v1", "namespaces");
        let Some(ns_type) = store.resolve("", "v1", "namespaces") else {
            return;
        };
        // Namespaces by their tenant label: one pass is O(tenants + namespaces).
        let mut by_tenant: std::collections::HashMap<String, Vec<&Value>> =
            std::collections::HashMap::new();
        for ns in &namespaces {
            if let Some(t) = labels_of(ns).get(TENANT_LABEL) {
                by_tenant.entry(t.clone()).or_default().push(ns);
            }
        }
        for tenant in &tenants {
            if !s(tenant, "/metadata/deletionTimestamp").is_empty() {
                continue;
            }
            let tname = s(tenant, "/metadata/name");
            let tuid = s(tenant, "/metadata/uid");
            let mut members: Vec<String> = Vec::new();
            for ns in by_tenant.get(tname).map(Vec::as_slice).unwrap_or_default() {
                let labels = labels_of(ns);
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
                        tracing::debug!(
                            "simulated-capsule: labelling namespace {nsname} failed: {e}"
                        );
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
}

/// Simulated KubeVela application controller.
#[derive(Debug)]
pub struct SimulatedKubeVela;

impl SimulatedKubeVela {
    /// Spawns the controller loop.
    pub fn spawn(
        store: Arc<Store>,
        shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(run_loop(
            store,
            shutdown,
            &[("core.oam.dev", "applications")],
            Self::reconcile,
        ))
    }

    /// One full reconciliation pass.
    pub fn reconcile(store: &Store) {
        for app in list_all(store, "core.oam.dev", "v1beta1", "applications") {
            if !s(&app, "/metadata/deletionTimestamp").is_empty() {
                continue;
            }
            let generation = app
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let observed = app
                .pointer("/status/observedGeneration")
                .and_then(Value::as_i64);
            if s(&app, "/status/status") == "running" && observed == Some(generation) {
                continue;
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
