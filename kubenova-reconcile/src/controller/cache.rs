//! Read caches of the objects the controllers generate, fed by **one** watch per kind that
//! also triggers the controllers (after updating the store), so a reconcile reads what it
//! needs from memory instead of GETting it, and skips a server-side apply whose result
//! is already live.
//!
//! The stores are compact: `managedFields` are dropped and everything outside `metadata`
//! is replaced by a digest ([`content_digest`]), except the few `status` fields the status
//! mapping reads (Capsule Tenant and KubeVela Application status, namespace phase).
//!
//! An apply is skipped ([`Ctx::apply_cached`](super::Ctx)) only when all of these hold:
//! the desired object is the one this process applied last for that key (same
//! [`value_digest`]), the live content digest is still the one that apply returned (nobody
//! edited the spec since), and every label, annotation and owner reference of the desired
//! object is live (nobody removed ours). After a restart the first reconcile of each
//! object applies once.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::StreamExt;
use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::runtime::{WatchStreamExt, reflector::store::Writer};
use kubenova_api::crd::NovaTenant;
use serde_json::{Value, json};

use super::api_resource;

/// Key under which the compact stores keep the content digest.
pub(crate) const DIGEST_KEY: &str = "kubenovaContentDigest";

/// FNV-1a, 64 bit: stable across processes and Rust versions.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Digest of a whole JSON value (object keys in sorted order).
pub(crate) fn value_digest(v: &Value) -> u64 {
    fnv1a(canonical(v).as_bytes())
}

fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let body: Vec<String> = keys
                .iter()
                .map(|k| format!("{}:{}", Value::String((*k).clone()), canonical(&m[*k])))
                .collect();
            format!("{{{}}}", body.join(","))
        }
        Value::Array(a) => {
            let body: Vec<String> = a.iter().map(canonical).collect();
            format!("[{}]", body.join(","))
        }
        other => other.to_string(),
    }
}

/// Digest of an object's content: everything but `apiVersion`, `kind`, `metadata` and
/// `status`.
pub(crate) fn content_digest(obj: &Value) -> u64 {
    let mut m = obj.as_object().cloned().unwrap_or_default();
    for k in ["apiVersion", "kind", "metadata", "status", DIGEST_KEY] {
        m.remove(k);
    }
    value_digest(&Value::Object(m))
}

/// The status fields the status mapping reads, per kind.
fn kept_status(kind: &str, status: Option<&Value>) -> Option<Value> {
    let status = status?;
    match kind {
        "Namespace" => status.get("phase").map(|p| json!({ "phase": p })),
        "Tenant" | "Application" => Some(status.clone()),
        _ => None,
    }
}

/// Shrinks a watched object to what the controllers read.
fn compact(kind: &str, obj: &mut DynamicObject) {
    obj.metadata.managed_fields = None;
    let mut full = std::mem::take(&mut obj.data);
    let digest = {
        if let Some(m) = full.as_object_mut() {
            m.remove("metadata");
        }
        content_digest(&full)
    };
    let mut data = serde_json::Map::new();
    if let Some(s) = kept_status(kind, full.get("status")) {
        data.insert("status".to_owned(), s);
    }
    data.insert(DIGEST_KEY.to_owned(), json!(digest.to_string()));
    obj.data = Value::Object(data);
}

/// One compact store of a generated kind.
#[derive(Clone)]
pub(crate) struct KindCache {
    kind: &'static str,
    store: Store<DynamicObject>,
}

impl KindCache {
    /// The cached object as JSON (`apiVersion`, `kind`, metadata, kept status, digest).
    pub(crate) fn get(&self, namespace: Option<&str>, name: &str) -> Option<Value> {
        let (ar, _) = api_resource(self.kind)?;
        let mut r = ObjectRef::<DynamicObject>::new_with(name, ar);
        if let Some(ns) = namespace {
            r = r.within(ns);
        }
        let obj = self.store.get(&r)?;
        let mut v = serde_json::to_value(obj.as_ref()).ok()?;
        if let Some(m) = v.as_object_mut()
            && let Some((ar, _)) = api_resource(self.kind)
        {
            m.insert("apiVersion".into(), json!(ar.api_version));
            m.insert("kind".into(), json!(ar.kind));
        }
        Some(v)
    }
}

/// The caches of one controller run.
#[derive(Clone)]
pub(crate) struct Caches {
    pub(crate) tenants: KindCache,
    pub(crate) namespaces: KindCache,
    pub(crate) role_bindings: KindCache,
    pub(crate) quotas: KindCache,
    pub(crate) applications: KindCache,
    pub(crate) nova_tenants: Store<NovaTenant>,
    /// Last apply per `Kind/namespace/name`.
    applied: Applied,
}

/// What this process applied last, per `Kind/namespace/name`.
pub(crate) type Applied = std::sync::Arc<Mutex<HashMap<String, Record>>>;

/// One apply: digests of what was sent and of the content the server returned, and when.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record {
    desired: u64,
    live: u64,
    at: std::time::Instant,
}

/// How long after our own apply an object missing from the cache is taken to be the
/// watch lagging behind (not a delete: deletes seen by the watch forget the record).
const CACHE_LAG: std::time::Duration = std::time::Duration::from_secs(10);

/// A compact store of `kind` and its writer (fed by [`drive`]).
pub(crate) fn store(kind: &'static str) -> Option<(KindCache, Writer<DynamicObject>)> {
    let (ar, _) = api_resource(kind)?;
    let writer = Writer::<DynamicObject>::new(ar);
    let cache = KindCache {
        kind,
        store: writer.as_reader(),
    };
    Some((cache, writer))
}

/// The one watch of `kind`: keeps `writer` up to date, then hands every object that was
/// added, changed or deleted to `route` (which triggers the controllers), so a triggered
/// reconcile always finds the store at least as new as its trigger. Must be polled.
pub(crate) fn drive(
    client: &Client,
    kind: &'static str,
    cfg: watcher::Config,
    writer: Writer<DynamicObject>,
    applied: Applied,
    route: impl Fn(&DynamicObject) + Send + 'static,
) -> Option<impl futures::Stream<Item = ()> + Send + 'static> {
    let (ar, _) = api_resource(kind)?;
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let reader = writer.as_reader();
    Some(
        watcher(api, cfg)
            .default_backoff()
            .modify(move |o| compact(kind, o))
            .reflect(writer)
            .touched_objects()
            .map(move |r| match r {
                Ok(o) => {
                    if reader
                        .get(&ObjectRef::from_obj_with(&o, ar.clone()))
                        .is_none()
                    {
                        // Deleted: the next reconcile must apply it again.
                        let key = format!(
                            "{kind}/{}/{}",
                            o.metadata.namespace.as_deref().unwrap_or_default(),
                            o.metadata.name.as_deref().unwrap_or_default()
                        );
                        applied
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&key);
                    }
                    route(&o)
                }
                Err(e) => tracing::debug!(kind, error = %e, "watch error (retried)"),
            }),
    )
}

impl Caches {
    pub(crate) fn new(
        tenants: KindCache,
        namespaces: KindCache,
        role_bindings: KindCache,
        quotas: KindCache,
        applications: KindCache,
        nova_tenants: Store<NovaTenant>,
    ) -> Caches {
        Caches {
            tenants,
            namespaces,
            role_bindings,
            quotas,
            applications,
            nova_tenants,
            applied: Default::default(),
        }
    }

    /// Whether every store has its initial list (without waiting).
    pub(crate) fn is_ready(&self) -> bool {
        use futures::FutureExt as _;
        [
            &self.tenants.store,
            &self.namespaces.store,
            &self.role_bindings.store,
            &self.quotas.store,
            &self.applications.store,
        ]
        .iter()
        .all(|s| s.wait_until_ready().now_or_never().is_some())
            && self
                .nova_tenants
                .wait_until_ready()
                .now_or_never()
                .is_some()
    }

    pub(crate) fn of(&self, kind: &str) -> Option<&KindCache> {
        Some(match kind {
            "Tenant" => &self.tenants,
            "Namespace" => &self.namespaces,
            "RoleBinding" => &self.role_bindings,
            "ResourceQuota" => &self.quotas,
            "Application" => &self.applications,
            _ => return None,
        })
    }

    /// Whether the NovaTenant exists (and is not being deleted).
    pub(crate) fn nova_tenant_exists(&self, name: &str) -> bool {
        self.nova_tenants.get(&ObjectRef::new(name)).is_some()
    }

    fn key(obj: &Value) -> String {
        format!(
            "{}/{}/{}",
            obj.pointer("/kind")
                .and_then(Value::as_str)
                .unwrap_or_default(),
            obj.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default(),
            obj.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
        )
    }

    /// The applied-records handle (for [`drive`]).
    pub(crate) fn applied(&self) -> Applied {
        self.applied.clone()
    }

    /// The live object when applying `desired` would change nothing (see the module docs).
    /// While the watch has not delivered our own last apply yet, the object is taken as
    /// unchanged and returned without status (the watch event then triggers a reconcile
    /// that sees it).
    pub(crate) fn unchanged(&self, desired: &Value) -> Option<Value> {
        let kind = desired.pointer("/kind").and_then(Value::as_str)?;
        let name = desired.pointer("/metadata/name").and_then(Value::as_str)?;
        let ns = desired
            .pointer("/metadata/namespace")
            .and_then(Value::as_str);
        let record = {
            let applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
            let Some(r) = applied.get(&Self::key(desired)) else {
                tracing::debug!(kind, name, "not applied by this process yet: applying");
                return None;
            };
            *r
        };
        if record.desired != value_digest(desired) {
            tracing::debug!(kind, name, "desired object changed: applying");
            return None;
        }
        let Some(live) = self.of(kind)?.get(ns, name) else {
            return (record.at.elapsed() < CACHE_LAG).then(|| {
                json!({"apiVersion": desired["apiVersion"], "kind": kind, "metadata": {"name": name}})
            });
        };
        if live.pointer("/metadata/deletionTimestamp").is_some() {
            return None;
        }
        let live_digest = live
            .get(DIGEST_KEY)
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<u64>().ok())?;
        if record.live != live_digest {
            tracing::debug!(kind, name, "content changed since our apply: applying");
            return None;
        }
        let ok = metadata_subset(desired, &live);
        if !ok {
            tracing::debug!(
                kind,
                name,
                "labels, annotations or owner references changed: applying"
            );
        }
        ok.then_some(live)
    }

    /// Records that `desired` was applied and the server returned `live`.
    pub(crate) fn record(&self, desired: &Value, live: &Value) {
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        applied.insert(
            Self::key(desired),
            Record {
                desired: value_digest(desired),
                live: content_digest(live),
                at: std::time::Instant::now(),
            },
        );
    }

    /// Forgets an object (deleted).
    pub(crate) fn forget(&self, kind: &str, namespace: Option<&str>, name: &str) {
        let key = format!("{kind}/{}/{name}", namespace.unwrap_or_default());
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        applied.remove(&key);
    }
}

/// Every label, annotation and owner reference of `desired` is on `live`.
fn metadata_subset(desired: &Value, live: &Value) -> bool {
    for field in ["labels", "annotations"] {
        let Some(want) = desired
            .pointer(&format!("/metadata/{field}"))
            .and_then(Value::as_object)
        else {
            continue;
        };
        let got = live.pointer(&format!("/metadata/{field}"));
        if !want
            .iter()
            .all(|(k, v)| got.and_then(|g| g.get(k)) == Some(v))
        {
            return false;
        }
    }
    if let Some(refs) = desired
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
    {
        let live_refs = live
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array);
        let ok = refs.iter().all(|r| {
            live_refs.is_some_and(|l| {
                l.iter().any(|x| {
                    r.as_object()
                        .is_some_and(|m| m.iter().all(|(k, v)| x.get(k) == Some(v)))
                })
            })
        });
        if !ok {
            return false;
        }
    }
    true
}

/// A reflector for a Nova kind without `managedFields` (a controller's main stream; the
/// NovaTenant store also serves the project controller's tenant lookups).
pub(crate) fn nova_stream<K>(
    client: &Client,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let stream = watcher(Api::<K>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(|o| o.meta_mut().managed_fields = None)
        .reflect(writer)
        .applied_objects();
    (reader, stream)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn digests_ignore_metadata_status_and_key_order() {
        let a = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "a"}, "spec": {"x": 1, "y": [1, 2]}, "status": {"s": 1}});
        let b =
            json!({"status": {"s": 2}, "spec": {"y": [1, 2], "x": 1}, "metadata": {"name": "b"}});
        assert_eq!(content_digest(&a), content_digest(&b));
        let c = json!({"spec": {"y": [2, 1], "x": 1}});
        assert_ne!(content_digest(&a), content_digest(&c));
        assert_eq!(
            value_digest(&json!({"a": 1, "b": 2})),
            value_digest(&json!({"b": 2, "a": 1}))
        );
    }

    #[test]
    fn compacting_keeps_metadata_digest_and_needed_status() {
        let mut o: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant",
            "metadata": {"name": "t", "labels": {"a": "b"}, "managedFields": [{"manager": "m"}]},
            "spec": {"owners": []}, "status": {"state": "Active"}
        }))
        .unwrap();
        let full = serde_json::to_value(&o).unwrap();
        compact("Tenant", &mut o);
        assert!(o.metadata.managed_fields.is_none());
        assert_eq!(o.data["status"]["state"], "Active");
        assert!(o.data.get("spec").is_none());
        assert_eq!(o.data[DIGEST_KEY], json!(content_digest(&full).to_string()));
        let mut ns: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active", "conditions": []}
        }))
        .unwrap();
        compact("Namespace", &mut ns);
        assert_eq!(ns.data["status"], json!({"phase": "Active"}));
    }

    #[test]
    fn owner_refs_and_labels_must_be_live() {
        let desired = json!({"metadata": {"labels": {"a": "1"}, "ownerReferences": [{"uid": "u", "kind": "K"}]}});
        let live = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "ownerReferences": [{"uid": "x"}, {"uid": "u", "kind": "K", "controller": true}]}});
        assert!(metadata_subset(&desired, &live));
        let edited = json!({"metadata": {"labels": {"a": "2"}, "ownerReferences": [{"uid": "u", "kind": "K"}]}});
        assert!(!metadata_subset(&desired, &edited));
        let no_ref = json!({"metadata": {"labels": {"a": "1"}}});
        assert!(!metadata_subset(&desired, &no_ref));
    }
}
