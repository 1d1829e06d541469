//! The object store: typed-by-path JSON objects, a global resourceVersion, a bounded event
//! history and broadcast watch fan-out.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine as _;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::error::{ApiError, ApiResult, Cause};
use crate::managed;
use crate::registry::{Registry, ResourceType, types_from_crd};
use crate::schema;
use crate::selector::{FieldSelector, LabelSelector, labels_of};

/// Store tuning.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// How many events are retained for watch resume; older resourceVersions get 410.
    pub history: usize,
    /// Per-watcher buffer (broadcast capacity); a watcher lagging more gets 410 Expired.
    pub watch_buffer: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            history: 10_000,
            watch_buffer: 4_096,
        }
    }
}

/// A change event.
#[derive(Debug, Clone)]
pub struct Event {
    /// resourceVersion of the change.
    pub rv: u64,
    /// API group of the object.
    pub group: String,
    /// Plural resource.
    pub plural: String,
    /// Namespace (empty for cluster-scoped).
    pub namespace: String,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub etype: &'static str,
    /// The object (in storage version), shared with the store.
    pub object: Arc<Value>,
    /// For `MODIFIED`: the object before the change (lets selector-filtered watches turn
    /// "stopped matching" into `DELETED` and "started matching" into `ADDED`, as Kubernetes does).
    pub prev: Option<Arc<Value>>,
}

/// Options common to writes.
#[derive(Debug, Clone, Default)]
pub struct WriteOpts {
    /// `dryRun=All`.
    pub dry_run: bool,
    /// Field manager (from `fieldManager` or the user agent).
    pub manager: String,
    /// Reject unknown fields (default true; `fieldValidation=Ignore|Warn` turns it off).
    pub strict: bool,
}

impl WriteOpts {
    /// Strict, non-dry-run writes by `manager`.
    pub fn manager(manager: &str) -> Self {
        Self {
            dry_run: false,
            manager: manager.to_owned(),
            strict: true,
        }
    }
}

/// Patch flavours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// RFC 7386.
    Merge,
    /// RFC 6902.
    Json,
    /// Server-side apply.
    Apply {
        /// `force=true`.
        force: bool,
    },
    /// Strategic merge patch (built-ins only; see [`crate::strategic`]).
    Strategic,
}

/// Delete options.
#[derive(Debug, Clone, Default)]
pub struct DeleteOpts {
    /// `dryRun=All`.
    pub dry_run: bool,
    /// `Orphan`, `Background` (default) or `Foreground` (treated like Background).
    pub propagation: Option<String>,
    /// Precondition on resourceVersion.
    pub precondition_rv: Option<String>,
    /// Precondition on uid.
    pub precondition_uid: Option<String>,
}

/// The start of a watch: initial objects, backlog events and the live receiver.
pub struct WatchStart {
    /// Synthetic ADDED events (when starting from "now" / rv 0).
    pub initial: Vec<Value>,
    /// Events after the requested resourceVersion still in the history.
    pub backlog: Vec<Arc<Event>>,
    /// Live events.
    pub rx: broadcast::Receiver<Arc<Event>>,
    /// resourceVersion at watch start.
    pub current_rv: u64,
}

type ObjKey = (String, String);
type TypeKey = (String, String);

struct State {
    rv: u64,
    registry: Registry,
    // Objects are shared (`Arc`) between the store, the event history and watchers.
    objects: BTreeMap<TypeKey, BTreeMap<ObjKey, Arc<Value>>>,
    history: VecDeque<Arc<Event>>,
    compacted: u64,
}

/// The shared store.
pub struct Store {
    state: Mutex<State>,
    tx: broadcast::Sender<Arc<Event>>,
    config: StoreConfig,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("config", &self.config)
            .finish()
    }
}

fn md_str<'a>(obj: &'a Value, key: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(key))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn md_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let Value::Object(root) = obj else {
        unreachable!("value was just made an object")
    };
    let md = root
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !md.is_object() {
        *md = Value::Object(Map::new());
    }
    let Value::Object(m) = md else {
        unreachable!("metadata was just made an object")
    };
    m
}

fn has_finalizers(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
}

fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    o
}

fn without_volatile(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
        m.remove("resourceVersion");
    }
    o
}

fn random_suffix(n: usize) -> String {
    use rand::Rng as _;
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

fn parse_rv(s: &str) -> ApiResult<u64> {
    s.parse::<u64>().map_err(|_| {
        ApiError::bad_request(format!(
            "invalid resource version {s:?}: must be a decimal number"
        ))
    })
}

impl Store {
    /// A store with the built-in types registered.
    pub fn new(config: StoreConfig) -> Self {
        let (tx, _) = broadcast::channel(config.watch_buffer.max(16));
        Self {
            state: Mutex::new(State {
                rv: 1,
                registry: Registry::with_builtins(),
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                compacted: 0,
            }),
            tx,
            config,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// A snapshot of the registry.
    pub fn registry(&self) -> Registry {
        self.lock().registry.clone()
    }

    /// Current resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// Subscribes to all future events.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// Resolves a type by group/version/plural.
    pub fn resolve(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.lock().registry.get(group, version, plural)
    }

    fn commit(
        &self,
        st: &mut State,
        t: &ResourceType,
        mut obj: Value,
        etype: &'static str,
    ) -> Value {
        st.rv += 1;
        let rv = st.rv;
        md_mut(&mut obj).insert("resourceVersion".into(), json!(rv.to_string()));
        obj["apiVersion"] = json!(storage_api_version(t));
        let ns = md_str(&obj, "namespace").to_owned();
        let name = md_str(&obj, "name").to_owned();
        let tk = (t.group.clone(), t.plural.clone());
        let prev = if etype == "MODIFIED" {
            st.objects
                .get(&tk)
                .and_then(|m| m.get(&(ns.clone(), name.clone())))
                .cloned()
        } else {
            None
        };
        let shared = Arc::new(obj);
        if etype == "DELETED" {
            if let Some(m) = st.objects.get_mut(&tk) {
                m.remove(&(ns.clone(), name));
            }
        } else {
            st.objects
                .entry(tk)
                .or_default()
                .insert((ns.clone(), name), shared.clone());
        }
        let ev = Arc::new(Event {
            rv,
            group: t.group.clone(),
            plural: t.plural.clone(),
            namespace: ns,
            etype,
            object: shared.clone(),
            prev,
        });
        st.history.push_back(ev.clone());
        while st.history.len() > self.config.history {
            if let Some(old) = st.history.pop_front() {
                st.compacted = old.rv;
            }
        }
        let _ = self.tx.send(ev);
        (*shared).clone()
    }

    fn find(st: &State, t: &ResourceType, ns: &str, name: &str) -> Option<Value> {
        st.objects
            .get(&(t.group.clone(), t.plural.clone()))
            .and_then(|m| m.get(&(ns.to_owned(), name.to_owned())))
            .map(|o| (**o).clone())
    }

    fn ns_key(t: &ResourceType, ns: Option<&str>) -> String {
        if t.namespaced {
            ns.unwrap_or_default().to_owned()
        } else {
            String::new()
        }
    }

    /// GET one object.
    pub fn get(&self, t: &ResourceType, ns: Option<&str>, name: &str) -> ApiResult<Value> {
        let st = self.lock();
        Self::find(&st, t, &Self::ns_key(t, ns), name)
            .map(|o| present(t, o))
            .ok_or_else(|| ApiError::not_found(&t.group, &t.plural, name))
    }

    /// LIST with selectors and pagination.
    pub fn list(
        &self,
        t: &ResourceType,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        limit: Option<usize>,
        cont: Option<&str>,
    ) -> ApiResult<Value> {
        let st = self.lock();
        let (list_rv, start_after) = match cont.filter(|c| !c.is_empty()) {
            Some(c) => {
                let (rv, key) = decode_continue(c)?;
                if rv < st.compacted {
                    return Err(ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                    ));
                }
                (rv, Some(key))
            }
            None => (st.rv, None),
        };
        let empty = BTreeMap::new();
        let objs = st
            .objects
            .get(&(t.group.clone(), t.plural.clone()))
            .unwrap_or(&empty);
        let ns_filter = if t.namespaced { ns } else { None };
        let mut matching = objs.iter().filter(|((ons, _), o)| {
            ns_filter.is_none_or(|n| n == ons) && labels.matches(&labels_of(o)) && fields.matches(o)
        });
        let mut items = Vec::new();
        let mut last_key = None;
        let mut remaining = 0usize;
        let mut skipping = start_after.is_some();
        for (k, o) in matching.by_ref() {
            if skipping {
                if let Some(sa) = &start_after
                    && k <= sa
                {
                    continue;
                }
                skipping = false;
            }
            if limit.is_some_and(|l| l > 0 && items.len() >= l) {
                remaining += 1;
                continue;
            }
            items.push(present(t, (**o).clone()));
            last_key = Some(k.clone());
        }
        let mut metadata = json!({"resourceVersion": list_rv.to_string()});
        if remaining > 0
            && let Some(k) = last_key
        {
            metadata["continue"] = json!(encode_continue(list_rv, &k));
            metadata["remainingItemCount"] = json!(remaining);
        }
        Ok(json!({
            "kind": format!("{}List", t.kind),
            "apiVersion": t.api_version(),
            "metadata": metadata,
            "items": items,
        }))
    }

    /// Starts a watch.
    pub fn watch(
        &self,
        t: &ResourceType,
        ns: Option<&str>,
        rv: Option<&str>,
    ) -> ApiResult<WatchStart> {
        let st = self.lock();
        let ns_filter = if t.namespaced {
            ns.map(str::to_owned)
        } else {
            None
        };
        let rx = self.tx.subscribe();
        let from = match rv.filter(|r| !r.is_empty() && *r != "0") {
            Some(r) => Some(parse_rv(r)?),
            None => None,
        };
        match from {
            None => {
                let initial = st
                    .objects
                    .get(&(t.group.clone(), t.plural.clone()))
                    .map(|m| {
                        m.iter()
                            .filter(|((ons, _), _)| ns_filter.as_ref().is_none_or(|n| n == ons))
                            .map(|(_, o)| present(t, (**o).clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(WatchStart {
                    initial,
                    backlog: Vec::new(),
                    rx,
                    current_rv: st.rv,
                })
            }
            Some(from) => {
                if from < st.compacted {
                    return Err(ApiError::expired(format!(
                        "too old resource version: {from} ({})",
                        st.compacted + 1
                    )));
                }
                let backlog = st
                    .history
                    .iter()
                    .filter(|e| e.rv > from && e.group == t.group && e.plural == t.plural)
                    .filter(|e| ns_filter.as_ref().is_none_or(|n| *n == e.namespace))
                    .cloned()
                    .collect();
                Ok(WatchStart {
                    initial: Vec::new(),
                    backlog,
                    rx,
                    current_rv: st.rv,
                })
            }
        }
    }

    fn check_body_type(t: &ResourceType, body: &Value) -> ApiResult<()> {
        let av = body
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kind = body.get("kind").and_then(Value::as_str).unwrap_or_default();
        if !av.is_empty() && av != t.api_version() {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                t.api_version()
            )));
        }
        if !kind.is_empty() && kind != t.kind {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({kind}) does not match the expected kind ({})",
                t.kind
            )));
        }
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        Ok(())
    }

    fn check_namespace(st: &State, t: &ResourceType, ns: &str) -> ApiResult<()> {
        if !t.namespaced {
            return Ok(());
        }
        if ns.is_empty() {
            return Err(ApiError::bad_request(
                "the server could not find the requested resource: namespace is required for namespaced resources",
            ));
        }
        let ns_obj = st
            .objects
            .get(&(String::new(), "namespaces".to_owned()))
            .and_then(|m| m.get(&(String::new(), ns.to_owned())));
        match ns_obj {
            None => Err(ApiError::not_found("", "namespaces", ns)),
            Some(o) if !md_str(o, "deletionTimestamp").is_empty() => {
                let mut e = ApiError::new(
                    403,
                    "Forbidden",
                    format!(
                        "{} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                        t.plural
                    ),
                );
                e.name = Some(ns.to_owned());
                Err(e)
            }
            Some(_) => Ok(()),
        }
    }

    fn validate_obj(t: &ResourceType, obj: &mut Value, strict: bool) -> ApiResult<()> {
        let name = md_str(obj, "name").to_owned();
        let mut causes = Vec::new();
        check_metadata(t, obj, strict)?;
        if let Some(c) = schema::validate_name(t, &name) {
            causes.push(c);
        }
        let findings = schema::validate(t, obj, !strict)?;
        if strict && !findings.unknown.is_empty() {
            let msg = findings
                .unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect::<Vec<_>>()
                .join(", ");
            let ucauses = findings
                .unknown
                .iter()
                .map(|f| {
                    Cause::new(
                        "FieldValueInvalid",
                        format!("unknown field \"{f}\""),
                        f.clone(),
                    )
                })
                .collect();
            return Err(ApiError::bad_request_causes(
                format!(
                    "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {msg}",
                    t.kind, t.version, t.kind
                ),
                ucauses,
            ));
        }
        causes.extend(findings.invalid);
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(&t.group, &t.kind, &name, causes))
        }
    }

    /// CREATE.
    pub fn create(
        &self,
        t: &ResourceType,
        ns: Option<&str>,
        body: Value,
        opts: &WriteOpts,
    ) -> ApiResult<Value> {
        let mut st = self.lock();
        self.create_locked(&mut st, t, ns, body, opts, None)
    }

    fn create_locked(
        &self,
        st: &mut State,
        t: &ResourceType,
        ns: Option<&str>,
        mut body: Value,
        opts: &WriteOpts,
        applied_by: Option<(&Value, bool)>,
    ) -> ApiResult<Value> {
        Self::check_body_type(t, &body)?;
        let ns = Self::ns_key(t, ns);
        {
            let body_ns = md_str(&body, "namespace").to_owned();
            if t.namespaced && !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        Self::check_namespace(st, t, &ns)?;
        body["apiVersion"] = json!(t.api_version());
        body["kind"] = json!(t.kind);
        let md = md_mut(&mut body);
        let mut name = md
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if name.is_empty() {
            let generate = md
                .get("generateName")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if generate.is_empty() {
                return Err(ApiError::invalid(
                    &t.group,
                    &t.kind,
                    "",
                    vec![Cause::new(
                        "FieldValueRequired",
                        "Required value: name or generateName is required",
                        "metadata.name",
                    )],
                ));
            }
            loop {
                let candidate = format!("{generate}{}", random_suffix(5));
                if Self::find(st, t, &ns, &candidate).is_none() {
                    name = candidate;
                    break;
                }
            }
            md.insert("name".into(), json!(name));
        }
        if t.namespaced {
            md.insert("namespace".into(), json!(ns));
        } else {
            md.remove("namespace");
        }
        for k in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
        ] {
            md.remove(k);
        }
        md.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        md.insert("creationTimestamp".into(), json!(managed::now_rfc3339()));
        md.insert("generation".into(), json!(1));
        if t.status_subresource
            && applied_by.is_none()
            && let Some(m) = body.as_object_mut()
        {
            m.remove("status");
        }
        // Type-specific defaults.
        if t.group.is_empty() && t.plural == "namespaces" {
            let labels = md_mut(&mut body)
                .entry("labels")
                .or_insert_with(|| json!({}));
            if let Some(l) = labels.as_object_mut() {
                l.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
            body["spec"] = json!({"finalizers": ["kubernetes"]});
            body["status"] = json!({"phase": "Active"});
        }
        if t.group.is_empty()
            && t.plural == "secrets"
            && body
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
        {
            body["type"] = json!("Opaque");
        }
        Self::validate_obj(t, &mut body, opts.strict)?;
        if Self::find(st, t, &ns, &name).is_some() {
            return Err(ApiError::already_exists(&t.group, &t.plural, &name));
        }
        let crd_types = if is_crd(t) {
            let types = types_from_crd(&body)?;
            body["status"] = crd_status(&body);
            Some(types)
        } else {
            None
        };
        match applied_by {
            Some((applied, force)) => {
                let skeleton = body.clone();
                body = managed::apply(
                    &skeleton,
                    applied,
                    &opts.manager,
                    force,
                    &t.api_version(),
                    "",
                    false,
                )
                .map_err(|c| ApiError::apply_conflict(&t.group, &t.plural, &name, c))?;
                // The merge put the applied fields back as sent: default (and prune) the
                // result, as the API server does before storing a create.
                Self::validate_obj(t, &mut body, opts.strict)?;
            }
            None => managed::record_update(None, &mut body, &opts.manager, &t.api_version(), ""),
        }
        if opts.dry_run {
            return Ok(present(t, body));
        }
        if let Some(types) = crd_types {
            for nt in types {
                st.registry.insert(nt);
            }
        }
        let stored = self.commit(st, t, body, "ADDED");
        Ok(present(t, stored))
    }

    /// Common update path (PUT and the non-apply patches after computing the new object).
    #[allow(clippy::too_many_arguments)]
    fn update_locked(
        &self,
        st: &mut State,
        t: &ResourceType,
        ns: &str,
        name: &str,
        old: Value,
        mut new: Value,
        opts: &WriteOpts,
        subresource: &str,
        precomputed_fields: bool,
    ) -> ApiResult<Value> {
        Self::check_body_type(t, &new)?;
        new["apiVersion"] = json!(t.api_version());
        new["kind"] = json!(t.kind);
        let body_name = md_str(&new, "name").to_owned();
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let body_ns = md_str(&new, "namespace").to_owned();
        if t.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let req_rv = md_str(&new, "resourceVersion").to_owned();
        if !req_rv.is_empty() && req_rv != md_str(&old, "resourceVersion") {
            return Err(ApiError::conflict(&t.group, &t.plural, name));
        }
        // Subresource semantics.
        if subresource == "status" {
            let status = new.get("status").cloned();
            let mut merged = old.clone();
            match status {
                Some(s) => merged["status"] = s,
                None => {
                    if let Some(m) = merged.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            if precomputed_fields && let Some(mf) = new.pointer("/metadata/managedFields").cloned()
            {
                md_mut(&mut merged).insert("managedFields".into(), mf);
            }
            new = merged;
        } else if t.status_subresource {
            match old.get("status").cloned() {
                Some(s) => new["status"] = s,
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        // Immutable / server-owned metadata.
        let old_md = old.get("metadata").cloned().unwrap_or_else(|| json!({}));
        {
            let md = md_mut(&mut new);
            for k in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match old_md.get(k) {
                    Some(v) => {
                        md.insert(k.into(), v.clone());
                    }
                    None => {
                        md.remove(k);
                    }
                }
            }
            if !precomputed_fields {
                match old_md.get("managedFields") {
                    Some(v) => md.insert("managedFields".into(), v.clone()),
                    None => md.remove("managedFields"),
                };
            }
        }
        if t.group.is_empty()
            && t.plural == "namespaces"
            && let Some(s) = old.get("spec")
        {
            new["spec"] = s.clone();
        }
        Self::validate_obj(t, &mut new, opts.strict)?;
        let crd_types = if is_crd(t) {
            let types = types_from_crd(&new)?;
            new["status"] = crd_status(&new);
            Some(types)
        } else {
            None
        };
        if spec_part(&old) != spec_part(&new) {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            md_mut(&mut new).insert("generation".into(), json!(g + 1));
        }
        if !precomputed_fields {
            let old_fields = old.clone();
            managed::record_update(
                Some(&old_fields),
                &mut new,
                &opts.manager,
                &t.api_version(),
                subresource,
            );
        }
        md_mut(&mut new).insert(
            "resourceVersion".into(),
            json!(md_str(&old, "resourceVersion")),
        );
        let terminating = !md_str(&new, "deletionTimestamp").is_empty() && !has_finalizers(&new);
        if without_volatile(&old) == without_volatile(&new) && !terminating {
            return Ok(present(t, old));
        }
        if opts.dry_run {
            return Ok(present(t, new));
        }
        if let Some(types) = crd_types {
            st.registry.remove(&t_group_of(&new), &t_plural_of(&new));
            for nt in types {
                st.registry.insert(nt);
            }
        }
        if terminating {
            let out = self.remove_locked(st, t, new, &DeleteOpts::default());
            return Ok(present(t, out));
        }
        let stored = self.commit(st, t, new, "MODIFIED");
        Ok(present(t, stored))
    }

    /// PUT (replace), optionally on the `status` subresource.
    pub fn replace(
        &self,
        t: &ResourceType,
        ns: Option<&str>,
        name: &str,
        body: Value,
        opts: &WriteOpts,
        subresource: &str,
    ) -> ApiResult<Value> {
        let mut st = self.lock();
        let ns = Self::ns_key(t, ns);
        let old = Self::find(&st, t, &ns, name)
            .ok_or_else(|| ApiError::not_found(&t.group, &t.plural, name))?;
        self.update_locked(&mut st, t, &ns, name, old, body, opts, subresource, false)
    }

    /// PATCH (merge, JSON, strategic-as-merge or server-side apply).
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        t: &ResourceType,
        ns: Option<&str>,
        name: &str,
        kind: PatchKind,
        patch: Value,
        opts: &WriteOpts,
        subresource: &str,
    ) -> ApiResult<Value> {
        let mut st = self.lock();
        let ns = Self::ns_key(t, ns);
        let old = Self::find(&st, t, &ns, name);
        let old = match (old, kind) {
            (Some(o), _) => o,
            (None, PatchKind::Apply { force }) if subresource.is_empty() => {
                Self::check_body_type(t, &patch)?;
                let pname = md_str(&patch, "name");
                if !pname.is_empty() && pname != name {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({pname}) does not match the name on the URL ({name})"
                    )));
                }
                let mut body = json!({"apiVersion": t.api_version(), "kind": t.kind, "metadata": {"name": name}});
                if let Some(m) = patch.get("metadata") {
                    for k in ["labels", "annotations", "finalizers", "ownerReferences"] {
                        if let Some(v) = m.get(k) {
                            body["metadata"][k] = v.clone();
                        }
                    }
                }
                let mut applied = patch.clone();
                if t.status_subresource
                    && let Some(m) = applied.as_object_mut()
                {
                    m.remove("status");
                }
                for (k, v) in applied.as_object().cloned().unwrap_or_default() {
                    if !matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                        body[k] = v;
                    }
                }
                let ns_opt = if t.namespaced {
                    Some(ns.as_str())
                } else {
                    None
                };
                return self.create_locked(&mut st, t, ns_opt, body, opts, Some((&applied, force)));
            }
            (None, _) => return Err(ApiError::not_found(&t.group, &t.plural, name)),
        };
        let view = present(t, old.clone());
        let (new, precomputed) = match kind {
            PatchKind::Merge => {
                if !patch.is_object() {
                    return Err(ApiError::bad_request("merge patch must be a JSON object"));
                }
                let mut doc = view.clone();
                json_patch::merge(&mut doc, &patch);
                (doc, false)
            }
            PatchKind::Strategic => {
                let mut doc = view.clone();
                crate::strategic::apply(&mut doc, &patch, &crate::openapi::definition_name(t))
                    .map_err(|e| {
                        ApiError::new(
                            422,
                            "Invalid",
                            format!("the server rejected our request due to an error in our request: {e}"),
                        )
                    })?;
                (doc, false)
            }
            PatchKind::Json => {
                let ops = patch.as_array().cloned().ok_or_else(|| {
                    ApiError::bad_request(
                        "couldn't decode JSON patch: expected an array of operations",
                    )
                })?;
                let mut doc = view.clone();
                for op in ops {
                    // Like the real API server (evanphx/json-patch), `test` of a missing path
                    // against `null` succeeds.
                    let missing_null_test = op.get("op").and_then(Value::as_str) == Some("test")
                        && op.get("value").is_some_and(Value::is_null)
                        && op
                            .get("path")
                            .and_then(Value::as_str)
                            .is_some_and(|p| doc.pointer(p).is_none());
                    if missing_null_test {
                        continue;
                    }
                    let p: json_patch::Patch = serde_json::from_value(Value::Array(vec![op]))
                        .map_err(|e| {
                            ApiError::bad_request(format!("couldn't decode JSON patch: {e}"))
                        })?;
                    json_patch::patch(&mut doc, &p).map_err(|e| {
                        ApiError::new(422, "Invalid", format!("the server rejected our request due to an error in our request: {e}"))
                    })?;
                }
                (doc, false)
            }
            PatchKind::Apply { force } => {
                Self::check_body_type(t, &patch)?;
                let skip_status = t.status_subresource && subresource.is_empty();
                let merged = managed::apply(
                    &view,
                    &patch,
                    &opts.manager,
                    force,
                    &t.api_version(),
                    subresource,
                    skip_status,
                )
                .map_err(|c| ApiError::apply_conflict(&t.group, &t.plural, name, c))?;
                (merged, true)
            }
        };
        self.update_locked(
            &mut st,
            t,
            &ns,
            name,
            old,
            new,
            opts,
            subresource,
            precomputed,
        )
    }

    /// DELETE.
    pub fn delete(
        &self,
        t: &ResourceType,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOpts,
    ) -> ApiResult<Value> {
        let mut st = self.lock();
        let ns = Self::ns_key(t, ns);
        let obj = Self::find(&st, t, &ns, name)
            .ok_or_else(|| ApiError::not_found(&t.group, &t.plural, name))?;
        if let Some(rv) = &opts.precondition_rv
            && rv != md_str(&obj, "resourceVersion")
        {
            let mut e = ApiError::conflict(&t.group, &t.plural, name);
            e.message = format!(
                "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                crate::error::qualified(&t.plural, &t.group),
                md_str(&obj, "resourceVersion")
            );
            return Err(e);
        }
        if let Some(uid) = &opts.precondition_uid
            && uid != md_str(&obj, "uid")
        {
            let mut e = ApiError::conflict(&t.group, &t.plural, name);
            e.message = format!(
                "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                crate::error::qualified(&t.plural, &t.group),
                md_str(&obj, "uid")
            );
            return Err(e);
        }
        if opts.dry_run {
            return Ok(present(t, obj));
        }
        let out = self.delete_locked(&mut st, t, obj, opts);
        Ok(present(t, out))
    }

    /// DELETE collection (honours label/field selectors).
    pub fn delete_collection(
        &self,
        t: &ResourceType,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        opts: &DeleteOpts,
    ) -> ApiResult<Value> {
        let mut st = self.lock();
        let ns_filter = if t.namespaced {
            ns.map(str::to_owned)
        } else {
            None
        };
        let victims: Vec<Value> = st
            .objects
            .get(&(t.group.clone(), t.plural.clone()))
            .map(|m| {
                m.iter()
                    .filter(|((ons, _), o)| {
                        ns_filter.as_ref().is_none_or(|n| n == ons)
                            && labels.matches(&labels_of(o))
                            && fields.matches(o)
                    })
                    .map(|(_, o)| (**o).clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut items = Vec::new();
        for v in victims {
            if opts.dry_run {
                items.push(present(t, v));
            } else {
                items.push(present(t, self.delete_locked(&mut st, t, v, opts)));
            }
        }
        Ok(json!({
            "kind": format!("{}List", t.kind),
            "apiVersion": t.api_version(),
            "metadata": {"resourceVersion": st.rv.to_string()},
            "items": items,
        }))
    }

    /// Marks or removes an object according to its finalizers.
    fn delete_locked(
        &self,
        st: &mut State,
        t: &ResourceType,
        mut obj: Value,
        opts: &DeleteOpts,
    ) -> Value {
        let is_ns = t.group.is_empty() && t.plural == "namespaces";
        if has_finalizers(&obj) || is_ns {
            if !md_str(&obj, "deletionTimestamp").is_empty() {
                return obj;
            }
            let md = md_mut(&mut obj);
            md.insert("deletionTimestamp".into(), json!(managed::now_rfc3339()));
            md.insert("deletionGracePeriodSeconds".into(), json!(0));
            if is_ns {
                obj["status"] = json!({"phase": "Terminating"});
            }
            let marked = self.commit(st, t, obj, "MODIFIED");
            if is_ns {
                let ns = md_str(&marked, "name").to_owned();
                self.purge_namespace(st, &ns);
                return self.maybe_finish_namespace(st, &ns).unwrap_or(marked);
            }
            return marked;
        }
        self.remove_locked(st, t, obj, opts)
    }

    /// Removes an object for good and runs the post-removal hooks (CRD unregistration,
    /// ownerReference garbage collection, namespace finalization).
    fn remove_locked(
        &self,
        st: &mut State,
        t: &ResourceType,
        obj: Value,
        opts: &DeleteOpts,
    ) -> Value {
        let removed = self.commit(st, t, obj, "DELETED");
        let uid = md_str(&removed, "uid").to_owned();
        if is_crd(t) {
            let g = t_group_of(&removed);
            let p = t_plural_of(&removed);
            if let Some(objs) = st.objects.remove(&(g.clone(), p.clone()))
                && let Some(ct) = type_for(&st.registry, &g, &p)
            {
                for (_, o) in objs {
                    // Already out of the map: emit DELETED events directly.
                    self.commit(st, &ct, Arc::unwrap_or_clone(o), "DELETED");
                }
            }
            st.registry.remove(&g, &p);
        }
        self.collect_garbage(st, &uid, opts.propagation.as_deref() == Some("Orphan"));
        if t.group.is_empty() && t.plural == "namespaces" {
            let name = md_str(&removed, "name").to_owned();
            self.purge_namespace(st, &name);
        } else if t.namespaced {
            let ns = md_str(&removed, "namespace").to_owned();
            self.maybe_finish_namespace(st, &ns);
        }
        removed
    }

    fn collect_garbage(&self, st: &mut State, owner_uid: &str, orphan: bool) {
        if owner_uid.is_empty() {
            return;
        }
        let mut dependents = Vec::new();
        for ((g, p), objs) in &st.objects {
            for o in objs.values() {
                let refs = o
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array);
                if refs.is_some_and(|r| {
                    r.iter()
                        .any(|x| x.get("uid").and_then(Value::as_str) == Some(owner_uid))
                }) {
                    dependents.push((g.clone(), p.clone(), (**o).clone()));
                }
            }
        }
        if dependents.is_empty() {
            return;
        }
        let live: BTreeSet<String> = st
            .objects
            .values()
            .flat_map(|m| m.values().map(|o| md_str(o, "uid").to_owned()))
            .collect();
        for (g, p, mut o) in dependents {
            let Some(dt) = type_for(&st.registry, &g, &p) else {
                continue;
            };
            let remaining: Vec<Value> = o
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter(|x| x.get("uid").and_then(Value::as_str) != Some(owner_uid))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            let has_live_owner = remaining.iter().any(|x| {
                x.get("uid")
                    .and_then(Value::as_str)
                    .is_some_and(|u| live.contains(u))
            });
            if orphan || has_live_owner {
                let md = md_mut(&mut o);
                if remaining.is_empty() {
                    md.remove("ownerReferences");
                } else {
                    md.insert("ownerReferences".into(), Value::Array(remaining));
                }
                self.commit(st, &dt, o, "MODIFIED");
            } else {
                self.delete_locked(st, &dt, o, &DeleteOpts::default());
            }
        }
    }

    fn purge_namespace(&self, st: &mut State, ns: &str) {
        let mut victims = Vec::new();
        for ((g, p), objs) in &st.objects {
            for ((ons, _), o) in objs {
                if ons == ns && !(g.is_empty() && p == "namespaces") {
                    victims.push((g.clone(), p.clone(), (**o).clone()));
                }
            }
        }
        for (g, p, o) in victims {
            if let Some(t) = type_for(&st.registry, &g, &p) {
                self.delete_locked(st, &t, o, &DeleteOpts::default());
            }
        }
    }

    fn maybe_finish_namespace(&self, st: &mut State, ns: &str) -> Option<Value> {
        if ns.is_empty() {
            return None;
        }
        let nsobj = st
            .objects
            .get(&(String::new(), "namespaces".to_owned()))
            .and_then(|m| m.get(&(String::new(), ns.to_owned())))
            .map(|o| (**o).clone())?;
        if md_str(&nsobj, "deletionTimestamp").is_empty() {
            return None;
        }
        let empty = st.objects.iter().all(|((g, p), objs)| {
            (g.is_empty() && p == "namespaces") || !objs.keys().any(|(ons, _)| ons == ns)
        });
        if !empty {
            return None;
        }
        let t = type_for(&st.registry, "", "namespaces")?;
        Some(self.remove_locked(st, &t, nsobj, &DeleteOpts::default()))
    }
}

const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// ObjectMeta decoding checks shared by every kind: unknown metadata fields (strict) and
/// labels/annotations that are not string maps.
fn check_metadata(t: &ResourceType, obj: &Value, strict: bool) -> ApiResult<()> {
    let Some(md) = obj.get("metadata").and_then(Value::as_object) else {
        return Err(ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: metadata must be an object",
            t.kind, t.version, t.kind
        )));
    };
    if strict {
        let unknown: Vec<String> = md
            .keys()
            .filter(|k| !OBJECT_META_FIELDS.contains(&k.as_str()))
            .map(|k| format!("metadata.{k}"))
            .collect();
        if !unknown.is_empty() {
            let causes = unknown
                .iter()
                .map(|f| {
                    Cause::new(
                        "FieldValueInvalid",
                        format!("unknown field \"{f}\""),
                        f.clone(),
                    )
                })
                .collect();
            return Err(ApiError::bad_request_causes(
                format!(
                    "{} in version \"{}\" cannot be handled as a {}: strict decoding error: unknown field \"{}\"",
                    t.kind,
                    t.version,
                    t.kind,
                    unknown.join("\", unknown field \"")
                ),
                causes,
            ));
        }
    }
    for key in ["labels", "annotations"] {
        if let Some(m) = md.get(key).filter(|v| !v.is_null()) {
            let ok = m
                .as_object()
                .is_some_and(|m| m.values().all(Value::is_string));
            if !ok {
                return Err(ApiError::bad_request(format!(
                    "{} in version \"{}\" cannot be handled as a {}: json: cannot unmarshal metadata.{key}: expected map of string to string",
                    t.kind, t.version, t.kind
                )));
            }
        }
    }
    Ok(())
}

fn is_crd(t: &ResourceType) -> bool {
    t.group == "apiextensions.k8s.io" && t.plural == "customresourcedefinitions"
}

fn t_group_of(crd: &Value) -> String {
    crd.pointer("/spec/group")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn t_plural_of(crd: &Value) -> String {
    crd.pointer("/spec/names/plural")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn crd_status(crd: &Value) -> Value {
    let now = managed::now_rfc3339();
    let names = crd
        .pointer("/spec/names")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let stored: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                .filter_map(|v| v.get("name").cloned())
                .collect()
        })
        .unwrap_or_default();
    json!({
        "acceptedNames": names,
        "storedVersions": stored,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
    })
}

fn storage_api_version(t: &ResourceType) -> String {
    if t.group.is_empty() {
        t.storage_version.clone()
    } else {
        format!("{}/{}", t.group, t.storage_version)
    }
}

/// The type for a group/plural, preferring the storage version.
fn type_for(reg: &Registry, group: &str, plural: &str) -> Option<Arc<ResourceType>> {
    let all: Vec<Arc<ResourceType>> = reg
        .all()
        .into_iter()
        .filter(|t| t.group == group && t.plural == plural)
        .collect();
    all.iter()
        .find(|t| t.version == t.storage_version)
        .cloned()
        .or_else(|| all.first().cloned())
}

/// Renders a stored object in the version the client asked for.
pub fn present(t: &ResourceType, mut obj: Value) -> Value {
    obj["apiVersion"] = json!(t.api_version());
    obj["kind"] = json!(t.kind);
    obj
}

fn encode_continue(rv: u64, key: &ObjKey) -> String {
    let raw = json!({"rv": rv, "ns": key.0, "name": key.1}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_continue(token: &str) -> ApiResult<(u64, ObjKey)> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token:?}"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v.get("rv").and_then(Value::as_u64).ok_or_else(bad)?;
    let ns = v
        .get("ns")
        .and_then(Value::as_str)
        .ok_or_else(bad)?
        .to_owned();
    let name = v
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(bad)?
        .to_owned();
    Ok((rv, (ns, name)))
}
