//! Read caches of the objects the controllers generate, fed by **one** watch per kind that
//! also triggers the controllers (after updating the store), so a reconcile reads what it
//! needs from memory instead of GETting it, and skips a server-side apply whose result
//! is already live.
//!
//! The stores are compact (they hold every generated object, so at 10,000 tenants about
//! 90,000 of them): per object only what the controllers read is kept, in a small struct
//! ([`Compact`]) keyed by the 64-bit hash of `Kind/namespace/name`: labels, annotations
//! and owner references as one array of 32-bit ids of counted, shared strings (label
//! keys, tenant names and owner uids repeat across objects; see `Ids`), generation,
//! deletion timestamp, a digest of everything outside `metadata` ([`content_digest`]) and
//! the few `status` fields the status mapping reads (Capsule Tenant state and `Ready`
//! condition, KubeVela Application status and unhealthy services, namespace phase), as
//! interned JSON text. Of `managedFields` only one bit is kept: whether the operator's
//! field manager owns the `kubenova.io/owner` annotation (what the namespace adoption
//! check reads, so a converged namespace costs no GET); uids, resource versions,
//! timestamps and specs are not kept. The kube `reflector` is not used: its stores key every object with a full
//! `ApiResource` (five strings) and keep the whole `DynamicObject`.
//!
//! The Nova objects' own stores ([`nova_stream`]) do use the reflector, with lean objects
//! (`stored`) and their statuses in a side table (`statuses`).
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
use futures::channel::mpsc::UnboundedSender;
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::runtime::{WatchStreamExt, watcher::Event};
use kube::{Client, Resource};
use kubenova_api::crd::{NovaProject, NovaTenant};
use serde_json::{Map, Value, json};

use super::api_resource;
use super::statuses::Statuses;
use super::stored::{Nova, Stored};

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

pub(super) type Sym = Arc<str>;

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

/// `s`, interned.
pub(super) fn intern(s: &str) -> Sym {
    INTERNER.lock().unwrap_or_else(|e| e.into_inner()).get(s)
}

/// The strings of the compact metadata, by 32-bit id (a label as two ids is 8 bytes, as
/// two `Arc<str>` it was 32), counted: a string no cached object uses any more is freed
/// and its id reused.
#[derive(Default)]
struct Ids {
    strings: Vec<Option<Arc<str>>>,
    uses: Vec<u32>,
    by_str: HashMap<Arc<str>, u32>,
    free: Vec<u32>,
}

impl Ids {
    fn id(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.by_str.get(s) {
            self.uses[id as usize] += 1;
            return id;
        }
        let a: Arc<str> = Arc::from(s);
        let id = match self.free.pop() {
            Some(id) => {
                self.strings[id as usize] = Some(a.clone());
                self.uses[id as usize] = 1;
                id
            }
            None => {
                self.strings.push(Some(a.clone()));
                self.uses.push(1);
                u32::try_from(self.strings.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.by_str.insert(a, id);
        id
    }

    fn release(&mut self, id: u32) {
        let i = id as usize;
        let Some(n) = self.uses.get_mut(i) else {
            return;
        };
        *n = n.saturating_sub(1);
        if *n == 0
            && let Some(a) = self.strings[i].take()
        {
            self.by_str.remove(&a);
            self.free.push(id);
        }
    }

    fn str(&self, id: u32) -> &str {
        self.strings
            .get(id as usize)
            .and_then(Option::as_deref)
            .unwrap_or_default()
    }
}

static IDS: LazyLock<Mutex<Ids>> = LazyLock::new(Default::default);

fn ids() -> std::sync::MutexGuard<'static, Ids> {
    IDS.lock().unwrap_or_else(|e| e.into_inner())
}

/// `Option<bool>` as 0 (none), 1 (false), 2 (true).
fn flag(b: Option<bool>) -> u32 {
    b.map_or(0, |b| 1 + u32::from(b))
}

fn unflag(f: u32) -> Option<bool> {
    (f > 0).then_some(f == 2)
}

/// Ids per owner reference: apiVersion, kind, name, uid, then the two flags
/// (`controller`, `blockOwnerDeletion`) packed.
const OWNER_REF_LEN: usize = 5;

/// Labels, annotations and owner references (every field kept: they are applied back,
/// see `merge_owner_refs`) as one array of string ids: the number of labels, of
/// annotations (with the [`OWNER_MARKED`] bit) and of owner references, then the label
/// pairs, the annotation pairs and the owner references ([`OWNER_REF_LEN`] each).
#[derive(Debug)]
struct Meta(Box<[u32]>);

/// Set in the annotation count when field manager `kubenova-operator` owns the
/// `kubenova.io/owner` annotation in `managedFields`: the one fact of `managedFields` the
/// controllers read (whether a namespace may be adopted, `super::foreign_namespace`).
/// [`KindCache::get`] gives it back as a one-entry `managedFields`.
const OWNER_MARKED: u32 = 1 << 31;

/// Whether `kubenova-operator` owns the `kubenova.io/owner` annotation of `md`.
fn owner_marked(md: &kube::api::ObjectMeta) -> bool {
    md.managed_fields.iter().flatten().any(|e| {
        e.manager.as_deref() == Some(crate::FIELD_MANAGER)
            && e.fields_v1
                .as_ref()
                .is_some_and(|f| super::owns_owner_annotation(&f.0))
    })
}

/// The pairs of a label or annotation map, without `last-applied`.
fn pairs(m: Option<&std::collections::BTreeMap<String, String>>) -> Vec<(&str, &str)> {
    m.into_iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != LAST_APPLIED)
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

impl Meta {
    fn new(md: &kube::api::ObjectMeta) -> Meta {
        let labels = pairs(md.labels.as_ref());
        let annotations = pairs(md.annotations.as_ref());
        let refs = md.owner_references.as_deref().unwrap_or_default();
        let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let mut out = Vec::with_capacity(
            3 + 2 * (labels.len() + annotations.len()) + OWNER_REF_LEN * refs.len(),
        );
        let marked = if owner_marked(md) { OWNER_MARKED } else { 0 };
        out.extend([
            len(labels.len()),
            len(annotations.len()).min(OWNER_MARKED - 1) | marked,
            len(refs.len()),
        ]);
        let mut i = ids();
        for (k, v) in labels.iter().chain(&annotations) {
            out.extend([i.id(k), i.id(v)]);
        }
        for r in refs {
            out.extend([
                i.id(&r.api_version),
                i.id(&r.kind),
                i.id(&r.name),
                i.id(&r.uid),
                flag(r.controller) | flag(r.block_owner_deletion) << 2,
            ]);
        }
        Meta(out.into_boxed_slice())
    }

    fn counts(&self) -> (usize, usize, usize) {
        let n = |i: usize| self.0.get(i).map_or(0, |n| (*n & !OWNER_MARKED) as usize);
        (n(0), n(1), n(2))
    }

    fn owner_marked(&self) -> bool {
        self.0.get(1).is_some_and(|n| n & OWNER_MARKED != 0)
    }

    /// `labels`, `annotations` and `ownerReferences` into `md` (when not empty).
    fn write(&self, md: &mut Map<String, Value>) {
        let (nl, na, no) = self.counts();
        let i = ids();
        let body = self.0.get(3..).unwrap_or_default();
        let (l, rest) = body.split_at((2 * nl).min(body.len()));
        let (a, refs) = rest.split_at((2 * na).min(rest.len()));
        let pairs = |p: &[u32]| {
            Value::Object(
                p.chunks_exact(2)
                    .map(|kv| (i.str(kv[0]).to_owned(), json!(i.str(kv[1]))))
                    .collect(),
            )
        };
        if nl > 0 {
            md.insert("labels".into(), pairs(l));
        }
        if na > 0 {
            md.insert("annotations".into(), pairs(a));
        }
        if self.owner_marked() {
            md.insert(
                "managedFields".into(),
                json!([{
                    "manager": crate::FIELD_MANAGER,
                    "operation": "Apply",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:annotations": {
                        format!("f:{}", crate::meta::ANNOTATION_OWNER): {}
                    }}}
                }]),
            );
        }
        if no > 0 {
            let refs: Vec<Value> = refs
                .chunks_exact(OWNER_REF_LEN)
                .map(|r| {
                    let mut m = json!({
                        "apiVersion": i.str(r[0]),
                        "kind": i.str(r[1]),
                        "name": i.str(r[2]),
                        "uid": i.str(r[3]),
                    });
                    if let Some(b) = unflag(r[4] & 3) {
                        m["controller"] = json!(b);
                    }
                    if let Some(b) = unflag(r[4] >> 2) {
                        m["blockOwnerDeletion"] = json!(b);
                    }
                    m
                })
                .collect();
            md.insert("ownerReferences".into(), Value::Array(refs));
        }
    }
}

impl Drop for Meta {
    fn drop(&mut self) {
        let (nl, na, _) = self.counts();
        let body = self.0.get(3..).unwrap_or_default();
        let (pairs, refs) = body.split_at((2 * (nl + na)).min(body.len()));
        let mut i = ids();
        for id in pairs {
            i.release(*id);
        }
        for r in refs.chunks_exact(OWNER_REF_LEN) {
            for id in &r[..4] {
                i.release(*id);
            }
        }
    }
}

/// What the caches keep of one object.
#[derive(Debug)]
pub(crate) struct Compact {
    meta: Meta,
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

/// Shrinks a watched object to what the controllers read.
fn compact(kind: &str, obj: &DynamicObject) -> Compact {
    let md = &obj.metadata;
    let status = kept_status(kind, obj.data.get("status")).map(|v| intern(&v.to_string()));
    let digest = content_digest(&obj.data);
    Compact {
        meta: Meta::new(md),
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

/// One compact store of a generated kind.
#[derive(Clone)]
pub(crate) struct KindCache {
    kind: &'static str,
    inner: Arc<KindStore>,
}

#[derive(Default)]
struct KindStore {
    /// By the [`key_hash`] of `Kind/namespace/name` (the key of the applied records, see
    /// [`applied_key`]); boxed, so the table's empty slots cost a pointer, not a whole
    /// entry.
    objects: RwLock<HashMap<u64, Box<Compact>>>,
    /// Set once the initial list is in.
    ready: AtomicBool,
}

impl KindCache {
    /// The cached object as JSON (`apiVersion`, `kind`, metadata: name, namespace,
    /// labels, annotations, owner references, generation, deletion timestamp, and a
    /// one-entry `managedFields` when the operator owns the `kubenova.io/owner`
    /// annotation; the kept status; the content digest under [`DIGEST_KEY`]).
    pub(crate) fn get(&self, namespace: Option<&str>, name: &str) -> Option<Value> {
        let (ar, _) = api_resource(self.kind)?;
        let objects = self.inner.objects.read().unwrap_or_else(|e| e.into_inner());
        let c = objects.get(&applied_key(self.kind, namespace, name))?;
        let mut md = Map::new();
        md.insert("name".into(), json!(name));
        if let Some(ns) = namespace {
            md.insert("namespace".into(), json!(ns));
        }
        c.meta.write(&mut md);
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
    /// One compact store per generated kind.
    kinds: Arc<[KindCache]>,
    pub(crate) nova_tenants: Store<Stored<NovaTenant>>,
    pub(crate) nova_projects: Store<Stored<NovaProject>>,
    /// The statuses taken out of the Nova stores.
    pub(crate) nova_statuses: Statuses,
    /// Sends a NovaProject to the project controller (see [`Caches::requeue_projects`]).
    project_trigger: UnboundedSender<ObjectRef<Stored<NovaProject>>>,
    /// Last apply per `Kind/namespace/name` (by [`key_hash`]).
    applied: Applied,
}

/// The Nova stores and the project controller's trigger, for [`Caches::new`].
pub(crate) struct NovaStores {
    pub(crate) tenants: Store<Stored<NovaTenant>>,
    pub(crate) projects: Store<Stored<NovaProject>>,
    pub(crate) statuses: Statuses,
    pub(crate) project_trigger: UnboundedSender<ObjectRef<Stored<NovaProject>>>,
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
    let mut relist: Option<HashMap<u64, Box<Compact>>> = None;
    let forget = move |applied: &Applied, key: u64| {
        applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    };
    Some(watcher(api, cfg).default_backoff().map(move |r| match r {
        Ok(Event::Apply(o)) => {
            let key = obj_key(kind, &o);
            let c = compact(kind, &o);
            cache
                .inner
                .objects
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, Box::new(c));
            route(&o);
        }
        Ok(Event::Delete(o)) => {
            let key = obj_key(kind, &o);
            cache
                .inner
                .objects
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            // Deleted: the next reconcile must apply it again.
            forget(&applied, key);
            route(&o);
        }
        Ok(Event::Init) => relist = Some(HashMap::new()),
        Ok(Event::InitApply(o)) => {
            let key = obj_key(kind, &o);
            relist
                .get_or_insert_with(HashMap::new)
                .insert(key, Box::new(compact(kind, &o)));
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
                forget(&applied, *key);
            }
            drop(objects);
            cache.inner.ready.store(true, Ordering::Release);
        }
        Err(e) => tracing::debug!(kind, error = %e, "watch error (retried)"),
    }))
}

/// The store key of a watched object of `kind`.
fn obj_key(kind: &str, o: &DynamicObject) -> u64 {
    applied_key(
        kind,
        o.metadata.namespace.as_deref(),
        o.metadata.name.as_deref().unwrap_or_default(),
    )
}

impl Caches {
    /// The caches of `kinds` (one store per generated kind) and the Nova stores.
    pub(crate) fn new(kinds: Vec<KindCache>, nova: NovaStores) -> Caches {
        Caches {
            kinds: kinds.into(),
            nova_tenants: nova.tenants,
            nova_projects: nova.projects,
            nova_statuses: nova.statuses,
            project_trigger: nova.project_trigger,
            applied: Default::default(),
        }
    }

    /// Whether every store has its initial list (without waiting).
    pub(crate) fn is_ready(&self) -> bool {
        use futures::FutureExt as _;
        self.kinds.iter().all(KindCache::is_ready)
            && self
                .nova_tenants
                .wait_until_ready()
                .now_or_never()
                .is_some()
            && self
                .nova_projects
                .wait_until_ready()
                .now_or_never()
                .is_some()
    }

    pub(crate) fn of(&self, kind: &str) -> Option<&KindCache> {
        self.kinds.iter().find(|k| k.kind == kind)
    }

    /// The NovaTenant, rebuilt from its store (no API call).
    pub(crate) fn nova_tenant(&self, name: &str) -> Result<Option<NovaTenant>, serde_json::Error> {
        self.nova_tenants
            .get(&ObjectRef::new(name))
            .map(|t| t.expand(&self.nova_statuses))
            .transpose()
    }

    /// Sends every NovaProject of `tenant` to the project controller (e.g. its Pod
    /// Security level changed). Scans the project store: for rare events only.
    pub(crate) fn requeue_projects(&self, tenant: &str) {
        let (owner_ns, _) = crate::tenant_namespaces(tenant);
        for p in self.nova_projects.state() {
            if p.meta().namespace.as_deref() == Some(owner_ns.as_str())
                && let Some(name) = p.meta().name.as_deref()
            {
                let _ = self
                    .project_trigger
                    .unbounded_send(ObjectRef::new(name).within(&owner_ns));
            }
        }
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

/// A reflector for a Nova kind, its objects kept as [`Stored`] (spec as JSON text) without
/// `managedFields`, `resourceVersion`, the `last-applied` annotation and `status` (kept
/// compact in `statuses`, see [`Statuses`]); a controller's main stream (the NovaTenant
/// store also serves the project controller's tenant lookups).
#[allow(clippy::type_complexity, reason = "the pair a reflector is")]
pub(crate) fn nova_stream<K: Nova>(
    client: &Client,
    statuses: Statuses,
) -> (
    Store<Stored<K>>,
    impl futures::Stream<Item = Result<Stored<K>, watcher::Error>> + Send + 'static,
) {
    let (reader, writer) = reflector::store::<Stored<K>>();
    let stream = watcher(
        Api::<Stored<K>>::all(client.clone()),
        watcher::Config::default(),
    )
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
    .map(move |r| {
        r.map(|mut event| {
            statuses.strip(&mut event);
            event
        })
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
        cache.inner.objects.write().unwrap().insert(
            applied_key("Tenant", None, "t"),
            Box::new(compact("Tenant", &o)),
        );
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
            applied_key("Application", Some("n"), "a"),
            Box::new(compact("Application", &o)),
        );
        let got = apps.get(Some("n"), "a").unwrap();
        assert_eq!(
            crate::status::app_verdict(Some(&got)),
            crate::status::app_verdict(Some(&app))
        );
    }

    #[test]
    fn ids_are_counted_and_reused() {
        let mut i = Ids::default();
        let a = i.id("a");
        assert_eq!(i.id("a"), a);
        let b = i.id("b");
        i.release(a);
        assert_eq!(i.str(a), "a", "still used once");
        i.release(a);
        assert_eq!(i.str(a), "", "freed");
        assert_eq!(i.id("c"), a, "its id is reused");
        assert_eq!((i.str(a), i.str(b)), ("c", "b"));
    }

    #[test]
    fn compact_metadata_round_trips() {
        let md: kube::api::ObjectMeta = serde_json::from_value(json!({
            "name": "n",
            "labels": {"a": "1", "b": "2"},
            "annotations": {"x": "y", LAST_APPLIED: "{}"},
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "K", "name": "o", "uid": "u1"},
                {"apiVersion": "v1", "kind": "K", "name": "p", "uid": "u2",
                 "controller": true, "blockOwnerDeletion": false}
            ]
        }))
        .unwrap();
        let meta = Meta::new(&md);
        let mut out = Map::new();
        meta.write(&mut out);
        assert_eq!(
            Value::Object(out),
            json!({
                "labels": {"a": "1", "b": "2"},
                "annotations": {"x": "y"},
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "K", "name": "o", "uid": "u1"},
                    {"apiVersion": "v1", "kind": "K", "name": "p", "uid": "u2",
                     "controller": true, "blockOwnerDeletion": false}
                ]
            })
        );
        let mut empty = Map::new();
        Meta::new(&kube::api::ObjectMeta::default()).write(&mut empty);
        assert!(empty.is_empty());
    }

    #[test]
    fn only_the_operators_owner_annotation_is_kept_of_managed_fields() {
        let ns = |manager: &str, field: &str| {
            let live = json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "n", "annotations": {"kubenova.io/owner": "novatenants.kubenova.io/t"},
                    "managedFields": [
                        {"manager": "someone", "operation": "Update", "fieldsType": "FieldsV1",
                         "fieldsV1": {"f:metadata": {"f:labels": {"f:x": {}}}}},
                        {"manager": manager, "operation": "Apply", "fieldsType": "FieldsV1",
                         "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, field: {}}}}}
                    ]}
            });
            let o: DynamicObject = serde_json::from_value(live.clone()).unwrap();
            let cache = store("Namespace").unwrap();
            cache.inner.objects.write().unwrap().insert(
                applied_key("Namespace", None, "n"),
                Box::new(compact("Namespace", &o)),
            );
            (live, cache.get(None, "n").unwrap())
        };
        let (live, cached) = ns("kubenova-operator", "f:kubenova.io/owner");
        assert_eq!(
            cached["metadata"]["annotations"],
            live["metadata"]["annotations"]
        );
        assert_eq!(
            cached["metadata"]["managedFields"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        for v in [&live, &cached] {
            assert_eq!(
                super::super::foreign_namespace(v, "novatenants.kubenova.io/t", "t"),
                None
            );
        }
        for (manager, field) in [
            ("intruder", "f:kubenova.io/owner"),
            ("kubenova-operator", "f:other"),
        ] {
            let (live, cached) = ns(manager, field);
            assert!(cached["metadata"].get("managedFields").is_none());
            for v in [&live, &cached] {
                assert!(
                    super::super::foreign_namespace(v, "novatenants.kubenova.io/t", "t").is_some()
                );
            }
        }
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
