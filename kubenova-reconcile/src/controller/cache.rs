//! Read caches of the objects the controllers generate, fed by **one** watch per kind that
//! also triggers the controllers (after updating the store), so a reconcile reads what it
//! needs from memory instead of GETting it, and skips a server-side apply whose result
//! is already live.
//!
//! The stores are compact (they hold every generated object, so at 10,000 tenants about
//! 90,000 of them): per object only what the controllers read is kept, in a small struct
//! ([`Compact`]): labels, annotations and owner references with interned strings (label
//! keys, tenant names and owner uids repeat across objects), generation, deletion
//! timestamp, a digest of everything outside `metadata` ([`content_digest`]) and the few
//! `status` fields the status mapping reads (Capsule Tenant state and `Ready` condition,
//! KubeVela Application status and unhealthy services, namespace phase), as JSON text.
//! `managedFields`, uids, resource versions, timestamps and specs are not kept. The kube
//! `reflector` is not used: its stores key every object with a full `ApiResource` (five
//! strings) and keep the whole `DynamicObject`.
//!
//! An apply is skipped ([`Ctx::apply_cached`](super::Ctx)) only when all of these hold:
//! the desired object is the one this process applied last for that key (same
//! [`value_digest`]), the live content digest is still the one that apply returned (nobody
//! edited the spec since), and every label, annotation and owner reference of the desired
//! object is live (nobody removed ours). After a restart the first reconcile of each
//! object applies once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};

use futures::StreamExt;
use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::runtime::{WatchStreamExt, watcher::Event};
use kubenova_api::crd::NovaTenant;
use serde_json::{Map, Value, json};

use super::api_resource;

/// Key under which [`KindCache::get`] returns the content digest.
pub(crate) const DIGEST_KEY: &str = "kubenovaContentDigest";

/// Annotation never kept (it repeats the whole object).
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// FNV-1a, 64 bit: stable across processes and Rust versions.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// 64-bit key of a `Kind/namespace/name` string (the bookkeeping maps key by it rather
/// than keep one string per object).
pub(crate) fn key_hash(key: &str) -> u64 {
    fnv1a(key.as_bytes())
}

/// Digest of a whole JSON value (object keys in sorted order).
pub(crate) fn value_digest(v: &Value) -> u64 {
    let mut out = String::new();
    canonical(v, &mut out);
    fnv1a(out.as_bytes())
}

fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => canonical_map(m, &[], out),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn canonical_map(m: &Map<String, Value>, skip: &[&str], out: &mut String) {
    let mut keys: Vec<&String> = m.keys().filter(|k| !skip.contains(&k.as_str())).collect();
    keys.sort();
    out.push('{');
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::String((*k).clone()).to_string());
        out.push(':');
        canonical(&m[*k], out);
    }
    out.push('}');
}

/// Keys outside the content.
const NOT_CONTENT: [&str; 5] = ["apiVersion", "kind", "metadata", "status", DIGEST_KEY];

/// Digest of an object's content: everything but `apiVersion`, `kind`, `metadata` and
/// `status`.
pub(crate) fn content_digest(obj: &Value) -> u64 {
    let empty = Map::new();
    let m = obj.as_object().unwrap_or(&empty);
    let mut out = String::new();
    canonical_map(m, &NOT_CONTENT, &mut out);
    fnv1a(out.as_bytes())
}

/// Interned strings: label keys and values, owner names and uids repeat across the
/// generated objects of a tenant (and label keys across all of them).
#[derive(Default)]
struct Interner {
    set: HashSet<Arc<str>>,
    /// Size after the last sweep of strings no object uses any more.
    swept: usize,
}

type Sym = Arc<str>;

impl Interner {
    fn get(&mut self, s: &str) -> Sym {
        if let Some(a) = self.set.get(s) {
            return a.clone();
        }
        if self.set.len() >= 2 * self.swept.max(4096) {
            self.set.retain(|a| Arc::strong_count(a) > 1);
            self.swept = self.set.len();
        }
        let a: Sym = Arc::from(s);
        self.set.insert(a.clone());
        a
    }
}

static INTERNER: LazyLock<Mutex<Interner>> = LazyLock::new(Default::default);

/// One owner reference, every field kept (it is applied back, see `merge_owner_refs`).
#[derive(Debug, Clone)]
struct OwnerRef {
    api_version: Sym,
    kind: Sym,
    name: Sym,
    uid: Sym,
    controller: Option<bool>,
    block_owner_deletion: Option<bool>,
}

/// What the caches keep of one object.
#[derive(Debug)]
pub(crate) struct Compact {
    labels: Box<[(Sym, Sym)]>,
    annotations: Box<[(Sym, Sym)]>,
    owner_refs: Box<[OwnerRef]>,
    generation: Option<i64>,
    deletion: Option<Box<str>>,
    digest: u64,
    /// The status fields the status mapping reads, as JSON text (interned: converged
    /// objects of a kind mostly say the same).
    status: Option<Sym>,
}

fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// The status fields the status mapping (`crate::status`) reads, per kind.
fn kept_status(kind: &str, status: Option<&Value>) -> Option<Value> {
    let status = status?;
    let pick = |m: &mut Map<String, Value>, from: &Value, keys: &[&str]| {
        for k in keys {
            if let Some(v) = from.get(*k) {
                m.insert((*k).to_owned(), v.clone());
            }
        }
    };
    let mut out = Map::new();
    match kind {
        "Namespace" => pick(&mut out, status, &["phase"]),
        "Tenant" => {
            pick(&mut out, status, &["state", "observedGeneration"]);
            if let Some(conds) = status.get("conditions").and_then(Value::as_array) {
                let ready: Vec<Value> = conds
                    .iter()
                    .filter(|c| s(c, "type") == Some("Ready"))
                    .map(|c| {
                        let mut m = Map::new();
                        pick(&mut m, c, &["type", "status", "reason", "message"]);
                        Value::Object(m)
                    })
                    .collect();
                out.insert("conditions".into(), Value::Array(ready));
            }
        }
        "Application" => {
            pick(&mut out, status, &["status", "observedGeneration"]);
            if let Some(msg) = status.pointer("/workflow/message") {
                out.insert("workflow".into(), json!({ "message": msg }));
            }
            if let Some(svcs) = status.get("services").and_then(Value::as_array) {
                let unhealthy: Vec<Value> = svcs
                    .iter()
                    .filter(|c| c.get("healthy").and_then(Value::as_bool) == Some(false))
                    .map(|c| {
                        let mut m = Map::new();
                        pick(&mut m, c, &["name", "message", "healthy"]);
                        Value::Object(m)
                    })
                    .collect();
                out.insert("services".into(), Value::Array(unhealthy));
            }
        }
        _ => return None,
    }
    Some(Value::Object(out))
}

fn interned_map(
    i: &mut Interner,
    m: Option<&std::collections::BTreeMap<String, String>>,
) -> Box<[(Sym, Sym)]> {
    m.into_iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != LAST_APPLIED)
        .map(|(k, v)| (i.get(k), i.get(v)))
        .collect()
}

/// Shrinks a watched object to what the controllers read.
fn compact(kind: &str, obj: &DynamicObject) -> Compact {
    let md = &obj.metadata;
    let mut i = INTERNER.lock().unwrap_or_else(|e| e.into_inner());
    let owner_refs = md
        .owner_references
        .iter()
        .flatten()
        .map(|r| OwnerRef {
            api_version: i.get(&r.api_version),
            kind: i.get(&r.kind),
            name: i.get(&r.name),
            uid: i.get(&r.uid),
            controller: r.controller,
            block_owner_deletion: r.block_owner_deletion,
        })
        .collect();
    let labels = interned_map(&mut i, md.labels.as_ref());
    let annotations = interned_map(&mut i, md.annotations.as_ref());
    let status = kept_status(kind, obj.data.get("status")).map(|v| i.get(&v.to_string()));
    drop(i);
    let digest = content_digest(&obj.data);
    Compact {
        labels,
        annotations,
        owner_refs,
        generation: md.generation,
        deletion: md
            .deletion_timestamp
            .as_ref()
            .and_then(|t| serde_json::to_value(t).ok())
            .and_then(|v| v.as_str().map(Into::into)),
        digest,
        status,
    }
}

fn store_key(namespace: Option<&str>, name: &str) -> String {
    format!("{}/{name}", namespace.unwrap_or_default())
}

/// One compact store of a generated kind.
#[derive(Clone)]
pub(crate) struct KindCache {
    kind: &'static str,
    inner: Arc<KindStore>,
}

#[derive(Default)]
struct KindStore {
    /// By `namespace/name` (`/name` when cluster-scoped); boxed, so the table's empty
    /// slots cost a pointer, not a whole entry.
    objects: RwLock<HashMap<Box<str>, Box<Compact>>>,
    /// Set once the initial list is in.
    ready: AtomicBool,
}

impl KindCache {
    /// The cached object as JSON (`apiVersion`, `kind`, metadata: name, namespace,
    /// labels, annotations, owner references, generation, deletion timestamp; the kept
    /// status; the content digest under [`DIGEST_KEY`]).
    pub(crate) fn get(&self, namespace: Option<&str>, name: &str) -> Option<Value> {
        let (ar, _) = api_resource(self.kind)?;
        let objects = self.inner.objects.read().unwrap_or_else(|e| e.into_inner());
        let c = objects.get(store_key(namespace, name).as_str())?;
        let pairs = |p: &[(Sym, Sym)]| {
            Value::Object(
                p.iter()
                    .map(|(k, v)| (k.to_string(), json!(v.as_ref())))
                    .collect(),
            )
        };
        let mut md = Map::new();
        md.insert("name".into(), json!(name));
        if let Some(ns) = namespace {
            md.insert("namespace".into(), json!(ns));
        }
        if !c.labels.is_empty() {
            md.insert("labels".into(), pairs(&c.labels));
        }
        if !c.annotations.is_empty() {
            md.insert("annotations".into(), pairs(&c.annotations));
        }
        if !c.owner_refs.is_empty() {
            let refs: Vec<Value> = c
                .owner_refs
                .iter()
                .map(|r| {
                    let mut m = json!({
                        "apiVersion": r.api_version.as_ref(),
                        "kind": r.kind.as_ref(),
                        "name": r.name.as_ref(),
                        "uid": r.uid.as_ref(),
                    });
                    if let Some(b) = r.controller {
                        m["controller"] = json!(b);
                    }
                    if let Some(b) = r.block_owner_deletion {
                        m["blockOwnerDeletion"] = json!(b);
                    }
                    m
                })
                .collect();
            md.insert("ownerReferences".into(), Value::Array(refs));
        }
        if let Some(g) = c.generation {
            md.insert("generation".into(), json!(g));
        }
        if let Some(d) = &c.deletion {
            md.insert("deletionTimestamp".into(), json!(d.as_ref()));
        }
        let mut v = json!({
            "apiVersion": ar.api_version,
            "kind": ar.kind,
            "metadata": md,
            DIGEST_KEY: c.digest.to_string(),
        });
        if let Some(st) = &c.status
            && let Ok(st) = serde_json::from_str::<Value>(st)
        {
            v["status"] = st;
        }
        Some(v)
    }

    fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// Number of cached objects.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .objects
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
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
    /// Last apply per `Kind/namespace/name` (by [`key_hash`]).
    applied: Applied,
}

/// What this process applied last, per `Kind/namespace/name` ([`key_hash`]).
pub(crate) type Applied = Arc<Mutex<HashMap<u64, Record>>>;

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

/// A compact store of `kind` (fed by [`drive`]).
pub(crate) fn store(kind: &'static str) -> Option<KindCache> {
    api_resource(kind)?;
    Some(KindCache {
        kind,
        inner: Arc::default(),
    })
}

fn applied_key(kind: &str, namespace: Option<&str>, name: &str) -> u64 {
    key_hash(&format!("{kind}/{}/{name}", namespace.unwrap_or_default()))
}

/// The one watch of `kind`: keeps `cache` up to date, then hands every object that was
/// added, changed or deleted to `route` (which triggers the controllers), so a triggered
/// reconcile always finds the store at least as new as its trigger. Must be polled.
pub(crate) fn drive(
    client: &Client,
    kind: &'static str,
    cfg: watcher::Config,
    cache: KindCache,
    applied: Applied,
    route: impl Fn(&DynamicObject) + Send + 'static,
) -> Option<impl futures::Stream<Item = ()> + Send + 'static> {
    let (ar, _) = api_resource(kind)?;
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    // A relist fills this and replaces the store at its end (the old contents stay
    // readable meanwhile).
    let mut relist: Option<HashMap<Box<str>, Box<Compact>>> = None;
    let forget = move |applied: &Applied, key: &str| {
        applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key_hash(&format!("{kind}/{key}")));
    };
    Some(watcher(api, cfg).default_backoff().map(move |r| match r {
        Ok(Event::Apply(o)) => {
            let key = obj_key(&o);
            let c = compact(kind, &o);
            cache
                .inner
                .objects
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.into(), Box::new(c));
            route(&o);
        }
        Ok(Event::Delete(o)) => {
            let key = obj_key(&o);
            cache
                .inner
                .objects
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(key.as_str());
            // Deleted: the next reconcile must apply it again.
            forget(&applied, &key);
            route(&o);
        }
        Ok(Event::Init) => relist = Some(HashMap::new()),
        Ok(Event::InitApply(o)) => {
            let key = obj_key(&o);
            relist
                .get_or_insert_with(HashMap::new)
                .insert(key.into(), Box::new(compact(kind, &o)));
            route(&o);
        }
        Ok(Event::InitDone) => {
            let new = relist.take().unwrap_or_default();
            let old = std::mem::replace(
                &mut *cache
                    .inner
                    .objects
                    .write()
                    .unwrap_or_else(|e| e.into_inner()),
                new,
            );
            let objects = cache
                .inner
                .objects
                .read()
                .unwrap_or_else(|e| e.into_inner());
            for key in old.keys().filter(|k| !objects.contains_key(*k)) {
                forget(&applied, key);
            }
            drop(objects);
            cache.inner.ready.store(true, Ordering::Release);
        }
        Err(e) => tracing::debug!(kind, error = %e, "watch error (retried)"),
    }))
}

/// The store key of a watched object.
fn obj_key(o: &DynamicObject) -> String {
    store_key(
        o.metadata.namespace.as_deref(),
        o.metadata.name.as_deref().unwrap_or_default(),
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
            &self.tenants,
            &self.namespaces,
            &self.role_bindings,
            &self.quotas,
            &self.applications,
        ]
        .iter()
        .all(|s| s.is_ready())
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

    fn key(obj: &Value) -> u64 {
        applied_key(
            obj.pointer("/kind")
                .and_then(Value::as_str)
                .unwrap_or_default(),
            obj.pointer("/metadata/namespace").and_then(Value::as_str),
            obj.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default(),
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
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        applied.remove(&applied_key(kind, namespace, name));
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
        .modify(|o| {
            // Nothing reads the resource version (finalizer and status patches do not
            // send it); dropping it also drops its copy in the store's key.
            let md = o.meta_mut();
            md.managed_fields = None;
            md.resource_version = None;
            if let Some(a) = md.annotations.as_mut() {
                a.remove(LAST_APPLIED);
            }
        })
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
        let full = json!({
            "apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant",
            "metadata": {"name": "t", "labels": {"a": "b"}, "managedFields": [{"manager": "m"}],
                         "ownerReferences": [{"apiVersion": "v1", "kind": "K", "name": "n", "uid": "u", "controller": true}],
                         "generation": 3, "uid": "x", "resourceVersion": "7"},
            "spec": {"owners": []},
            "status": {"state": "Active", "size": 2, "namespaces": ["a", "b"],
                       "conditions": [{"type": "Ready", "status": "True", "reason": "R", "message": "m", "lastTransitionTime": "t"},
                                      {"type": "Other", "status": "False"}]}
        });
        let o: DynamicObject = serde_json::from_value(full.clone()).unwrap();
        let cache = store("Tenant").unwrap();
        cache
            .inner
            .objects
            .write()
            .unwrap()
            .insert(store_key(None, "t").into(), Box::new(compact("Tenant", &o)));
        assert_eq!(cache.len(), 1);
        let got = cache.get(None, "t").unwrap();
        assert_eq!(got["status"]["state"], "Active");
        assert_eq!(
            got["status"]["conditions"],
            json!([{"type": "Ready", "status": "True", "reason": "R", "message": "m"}])
        );
        assert!(got.get("spec").is_none());
        assert!(got["metadata"].get("managedFields").is_none());
        assert_eq!(got["metadata"]["labels"], json!({"a": "b"}));
        assert_eq!(got["metadata"]["generation"], 3);
        assert_eq!(
            got["metadata"]["ownerReferences"],
            full["metadata"]["ownerReferences"]
        );
        assert_eq!(got[DIGEST_KEY], json!(content_digest(&full).to_string()));
        assert_eq!(
            crate::status::tenant_verdict(Some(&got)),
            crate::status::tenant_verdict(Some(&full))
        );
        let ns: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active", "conditions": []}
        }))
        .unwrap();
        assert_eq!(
            compact("Namespace", &ns).status.as_deref(),
            Some(r#"{"phase":"Active"}"#)
        );
        let app = json!({
            "apiVersion": "core.oam.dev/v1beta1", "kind": "Application",
            "metadata": {"name": "a", "namespace": "n", "generation": 1},
            "spec": {"components": []},
            "status": {"status": "unhealthy", "observedGeneration": 1,
                       "workflow": {"message": "wf", "mode": "x"},
                       "services": [{"name": "web", "healthy": false, "message": "down"},
                                    {"name": "db", "healthy": true, "message": "ok"}],
                       "conditions": [{"type": "Ready"}]}
        });
        let o: DynamicObject = serde_json::from_value(app.clone()).unwrap();
        let apps = store("Application").unwrap();
        apps.inner.objects.write().unwrap().insert(
            store_key(Some("n"), "a").into(),
            Box::new(compact("Application", &o)),
        );
        let got = apps.get(Some("n"), "a").unwrap();
        assert_eq!(
            crate::status::app_verdict(Some(&got)),
            crate::status::app_verdict(Some(&app))
        );
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
