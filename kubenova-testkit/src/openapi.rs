//! The OpenAPI documents real clients download: `/openapi/v2` (Swagger 2.0) and
//! `/openapi/v3` with one document per group-version.
//!
//! kubectl reads them to validate (`--validate=strict` asks the v3 document whether PATCH
//! takes `fieldValidation`), to compute strategic merge patches for `kubectl apply`
//! (merge keys and patch strategies) and for `kubectl explain`; Helm reads them through the
//! same kubectl code. They are built on each request from the schemas the testkit already
//! holds: the Kubernetes 1.36 definitions for built-in kinds and each registered CRD's
//! `openAPIV3Schema`, so a CRD created or deleted shows up (or disappears) at once, and the
//! hash in the v3 index changes with it.
//!
//! Both documents are served as JSON only. A request that accepts only the protobuf form
//! (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`) gets 406 Not Acceptable.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::registry::{Registry, ResourceType, SchemaSource};
use crate::upstream;

/// The Kubernetes 1.36 definitions (`$defs` of `_definitions.json`).
static DEFS: LazyLock<Map<String, Value>> = LazyLock::new(|| {
    let text = upstream::k8s_schema("_definitions.json").unwrap_or("{}");
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|mut v| v.get_mut("$defs").map(Value::take))
        .and_then(|v| match v {
            Value::Object(m) => Some(m),
            _ => None,
        })
        .unwrap_or_default()
});

/// (group, version, kind) → definition name, from `x-kubernetes-group-version-kind`.
static GVK_INDEX: LazyLock<BTreeMap<(String, String, String), String>> = LazyLock::new(|| {
    let mut out = BTreeMap::new();
    for (name, d) in DEFS.iter() {
        for gvk in d
            .get("x-kubernetes-group-version-kind")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let s = |k: &str| gvk.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            out.entry((s("group"), s("version"), s("kind")))
                .or_insert_with(|| name.clone());
        }
    }
    out
});

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
const PATCH: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch";
const STATUS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Status";
const DELETE_OPTIONS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions";

/// A Kubernetes 1.36 definition by name (`io.k8s.api.apps.v1.Deployment`), in
/// `_definitions.json` form (`$ref`s to `#/$defs/...`).
pub fn definition(name: &str) -> Option<&'static Value> {
    DEFS.get(name)
}

/// Which document format a request may receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negotiated {
    /// JSON (asked for, or anything goes).
    Json,
    /// Only a format the testkit does not produce (protobuf): answer 406.
    NotAcceptable,
}

/// Negotiates the `Accept` header of an OpenAPI request.
pub fn negotiate(accept: Option<&str>) -> Negotiated {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Negotiated::Json;
    };
    let ok = accept.split(',').any(|part| {
        let mt = part.split(';').next().unwrap_or("").trim();
        matches!(mt, "application/json" | "*/*" | "application/*")
    });
    if ok {
        Negotiated::Json
    } else {
        Negotiated::NotAcceptable
    }
}

/// The definition name of a served kind (built-in or CRD), as a real API server names it:
/// `io.k8s.api.core.v1.ConfigMap`, `io.clastix.capsule.v1beta2.Tenant`.
pub fn definition_name(t: &ResourceType) -> String {
    if let Some(n) = GVK_INDEX.get(&(t.group.clone(), t.version.clone(), t.kind.clone())) {
        return n.clone();
    }
    let reversed: Vec<&str> = t.group.split('.').rev().collect();
    format!("{}.{}.{}", reversed.join("."), t.version, t.kind)
}

fn gvk(t: &ResourceType) -> Value {
    json!({"group": t.group, "version": t.version, "kind": t.kind})
}

/// Rewrites a `_definitions.json` schema for an OpenAPI document: `$ref`s point at
/// `prefix`, and JSON-Schema type unions with `null` become a plain type.
fn convert(v: &Value, prefix: &str) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, val) in m {
                match (k.as_str(), val) {
                    ("$ref", Value::String(r)) => {
                        let name = r.rsplit('/').next().unwrap_or(r);
                        out.insert("$ref".into(), json!(format!("{prefix}{name}")));
                    }
                    ("type", Value::Array(types)) => {
                        let non_null: Vec<&Value> = types
                            .iter()
                            .filter(|t| t.as_str() != Some("null"))
                            .collect();
                        if let [one] = non_null.as_slice() {
                            out.insert("type".into(), (*one).clone());
                        }
                    }
                    ("$schema" | "$id", _) => {}
                    ("properties" | "patternProperties" | "$defs", Value::Object(props)) => {
                        let props = props
                            .iter()
                            .map(|(pk, pv)| (pk.clone(), convert(pv, prefix)))
                            .collect();
                        out.insert(k.clone(), Value::Object(props));
                    }
                    _ => {
                        out.insert(k.clone(), convert(val, prefix));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| convert(x, prefix)).collect()),
        other => other.clone(),
    }
}

fn collect_refs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                let name = r.rsplit('/').next().unwrap_or(r).to_owned();
                if DEFS.contains_key(&name) && out.insert(name.clone()) {
                    collect_refs(&DEFS[&name], out);
                }
            }
            m.values().for_each(|x| collect_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// The schemas a set of kinds needs: their own (built-in or CRD) plus every definition
/// they reference, converted for `prefix`.
fn schemas(types: &[&ResourceType], prefix: &str) -> Map<String, Value> {
    let mut names: BTreeSet<String> = [OBJECT_META, PATCH, STATUS, DELETE_OPTIONS]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let mut out = Map::new();
    for t in types {
        let name = definition_name(t);
        if let SchemaSource::Crd(schema) = &t.schema {
            let mut s = crd_schema((**schema).clone(), prefix);
            s["x-kubernetes-group-version-kind"] = json!([gvk(t)]);
            out.insert(name, s);
        } else if DEFS.contains_key(&name) {
            names.insert(name);
        } else {
            out.insert(
                name,
                json!({
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": true,
                    "x-kubernetes-group-version-kind": [gvk(t)],
                }),
            );
        }
    }
    let mut closure = BTreeSet::new();
    for n in &names {
        closure.insert(n.clone());
        collect_refs(&DEFS[n.as_str()], &mut closure);
    }
    for n in closure {
        out.insert(n.clone(), convert(&DEFS[&n], prefix));
    }
    out
}

/// A CRD version's schema as the API server publishes it: `apiVersion`, `kind` and
/// `metadata` (a reference to ObjectMeta) added to its properties.
fn crd_schema(mut s: Value, prefix: &str) -> Value {
    if !s.is_object() {
        s = json!({"type": "object"});
    }
    let props = s
        .as_object_mut()
        .map(|o| o.entry("properties").or_insert_with(|| json!({})));
    if let Some(Value::Object(p)) = props {
        p.insert("apiVersion".into(), json!({"type": "string"}));
        p.insert("kind".into(), json!({"type": "string"}));
        p.insert(
            "metadata".into(),
            json!({"$ref": format!("{prefix}{OBJECT_META}")}),
        );
    }
    s
}

/// The patch media types a kind accepts. Custom resources take no strategic merge patch,
/// and kubectl reads this list to choose between a strategic and a JSON merge patch.
fn patch_types(t: &ResourceType) -> Vec<&'static str> {
    let mut out = vec![
        "application/apply-patch+yaml",
        "application/json-patch+json",
        "application/merge-patch+json",
    ];
    if !t.custom {
        out.push("application/strategic-merge-patch+json");
    }
    out
}

/// One operation of a path.
fn operation(
    t: &ResourceType,
    action: &str,
    id: &str,
    query: &[&str],
    body: Option<&str>,
    response: &str,
    v3: bool,
) -> Value {
    let prefix = if v3 {
        "#/components/schemas/"
    } else {
        "#/definitions/"
    };
    let mut params: Vec<Value> = query
        .iter()
        .map(|q| {
            let ty = if matches!(*q, "force" | "watch" | "allowWatchBookmarks") {
                "boolean"
            } else if matches!(*q, "limit" | "timeoutSeconds" | "gracePeriodSeconds") {
                "integer"
            } else {
                "string"
            };
            if v3 {
                json!({"name": q, "in": "query", "schema": {"type": ty, "uniqueItems": true}})
            } else {
                json!({"name": q, "in": "query", "type": ty, "uniqueItems": true})
            }
        })
        .collect();
    let mut op = json!({
        "operationId": id,
        "tags": [t.group.clone() + "_" + &t.version],
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(t),
        "responses": {},
    });
    let resp_schema = json!({"$ref": format!("{prefix}{response}")});
    if v3 {
        op["responses"]["200"] =
            json!({"description": "OK", "content": {"application/json": {"schema": resp_schema}}});
        if let Some(b) = body {
            let types: Vec<&str> = if action == "patch" {
                patch_types(t)
            } else {
                vec!["*/*"]
            };
            let content: Map<String, Value> = types
                .into_iter()
                .map(|ct| {
                    (
                        ct.to_owned(),
                        json!({"schema": {"$ref": format!("{prefix}{b}")}}),
                    )
                })
                .collect();
            op["requestBody"] = json!({"content": content, "required": true});
        }
    } else {
        op["responses"]["200"] = json!({"description": "OK", "schema": resp_schema});
        op["consumes"] = if action == "patch" {
            json!(patch_types(t))
        } else {
            json!(["*/*"])
        };
        op["produces"] = json!(["application/json", "application/yaml"]);
        if let Some(b) = body {
            params.push(json!({"name": "body", "in": "body", "required": true, "schema": {"$ref": format!("{prefix}{b}")}}));
        }
    }
    op["parameters"] = Value::Array(params);
    op
}

fn path_params(namespaced: bool, named: bool, v3: bool) -> Value {
    let p = |name: &str| {
        if v3 {
            json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "uniqueItems": true}})
        } else {
            json!({"name": name, "in": "path", "required": true, "type": "string", "uniqueItems": true})
        }
    };
    let mut out = Vec::new();
    if named {
        out.push(p("name"));
    }
    if namespaced {
        out.push(p("namespace"));
    }
    Value::Array(out)
}

/// The paths of one kind: collection, object, status and (namespaced) all-namespaces list.
fn paths_of(t: &ResourceType, v3: bool) -> Map<String, Value> {
    let base = if t.group.is_empty() {
        format!("/api/{}", t.version)
    } else {
        format!("/apis/{}/{}", t.group, t.version)
    };
    let scoped = if t.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", t.plural)
    } else {
        format!("{base}/{}", t.plural)
    };
    let def = definition_name(t);
    let list_def = format!("{def}List");
    let id = format!(
        "{}{}{}",
        t.group.split('.').next().unwrap_or(""),
        t.version,
        t.kind
    );
    let write = ["dryRun", "fieldManager", "fieldValidation", "pretty"];
    let patch = [
        "dryRun",
        "fieldManager",
        "fieldValidation",
        "force",
        "pretty",
    ];
    let list = [
        "allowWatchBookmarks",
        "continue",
        "fieldSelector",
        "labelSelector",
        "limit",
        "resourceVersion",
        "timeoutSeconds",
        "watch",
    ];
    let mut out = Map::new();
    out.insert(
        scoped.clone(),
        json!({
            "get": operation(t, "list", &format!("list{id}"), &list, None, &list_def, v3),
            "post": operation(t, "post", &format!("create{id}"), &write, Some(&def), &def, v3),
            "delete": operation(t, "deletecollection", &format!("deletecollection{id}"), &list, Some(DELETE_OPTIONS), STATUS, v3),
            "parameters": path_params(t.namespaced, false, v3),
        }),
    );
    out.insert(
        format!("{scoped}/{{name}}"),
        json!({
            "get": operation(t, "get", &format!("read{id}"), &["pretty"], None, &def, v3),
            "put": operation(t, "put", &format!("replace{id}"), &write, Some(&def), &def, v3),
            "patch": operation(t, "patch", &format!("patch{id}"), &patch, Some(PATCH), &def, v3),
            "delete": operation(t, "delete", &format!("delete{id}"), &["dryRun", "gracePeriodSeconds", "propagationPolicy"], Some(DELETE_OPTIONS), STATUS, v3),
            "parameters": path_params(t.namespaced, true, v3),
        }),
    );
    if t.status_subresource {
        out.insert(
            format!("{scoped}/{{name}}/status"),
            json!({
                "get": operation(t, "get", &format!("read{id}Status"), &["pretty"], None, &def, v3),
                "put": operation(t, "put", &format!("replace{id}Status"), &write, Some(&def), &def, v3),
                "patch": operation(t, "patch", &format!("patch{id}Status"), &patch, Some(PATCH), &def, v3),
                "parameters": path_params(t.namespaced, true, v3),
            }),
        );
    }
    if t.namespaced {
        out.insert(
            format!("{base}/{}", t.plural),
            json!({"get": operation(t, "list", &format!("list{id}ForAllNamespaces"), &list, None, &list_def, v3)}),
        );
    }
    out
}

/// `ListMeta`-style list schemas for each kind (`...ConfigMapList`), when the definitions
/// lack them (CRDs).
fn list_schemas(types: &[&ResourceType], prefix: &str, out: &mut Map<String, Value>) {
    for t in types {
        let def = definition_name(t);
        let list = format!("{def}List");
        if out.contains_key(&list) {
            continue;
        }
        let mut lt = (*t).clone();
        lt.kind = format!("{}List", t.kind);
        out.insert(
            list,
            json!({
                "type": "object",
                "required": ["items"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "items": {"type": "array", "items": {"$ref": format!("{prefix}{def}")}},
                    "metadata": {"$ref": format!("{prefix}io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta")},
                },
                "x-kubernetes-group-version-kind": [gvk(&lt)],
            }),
        );
    }
}

fn group_versions(reg: &Registry) -> Vec<(String, String)> {
    let mut out = vec![(String::new(), "v1".to_owned())];
    for (g, vs) in reg.groups() {
        for v in vs {
            out.push((g.clone(), v));
        }
    }
    out.sort();
    out
}

/// The `/openapi/v3/<path>` document of one group-version, or `None` when it is not
/// served. `path` is `api/v1` or `apis/<group>/<version>`.
pub fn v3_document(reg: &Registry, path: &str) -> Option<Value> {
    let (group, version) = match path.split('/').collect::<Vec<_>>().as_slice() {
        ["api", v] => (String::new(), (*v).to_owned()),
        ["apis", g, v] => ((*g).to_owned(), (*v).to_owned()),
        _ => return None,
    };
    if !reg.has_group_version(&group, &version) {
        return None;
    }
    let owned = reg.resources(&group, &version);
    let types: Vec<&ResourceType> = owned.iter().map(|t| &**t).collect();
    let prefix = "#/components/schemas/";
    let mut paths = Map::new();
    for t in &types {
        paths.extend(paths_of(t, true));
    }
    let mut components = schemas(&types, prefix);
    list_schemas(&types, prefix, &mut components);
    if let Some(d) = DEFS.get("io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta") {
        components
            .entry("io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta")
            .or_insert_with(|| convert(d, prefix));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.36.0"},
        "paths": paths,
        "components": {"schemas": components},
    }))
}

/// The hash the v3 index publishes for a document (clients cache by it).
pub fn hash(doc: &Value) -> String {
    let digest = Sha256::digest(doc.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02X}")).collect()
}

/// The `/openapi/v3` index: one entry per served group-version, with the hash of its
/// current document.
pub fn v3_index(reg: &Registry) -> Value {
    let mut paths = Map::new();
    for (g, v) in group_versions(reg) {
        let path = if g.is_empty() {
            format!("api/{v}")
        } else {
            format!("apis/{g}/{v}")
        };
        if let Some(doc) = v3_document(reg, &path) {
            paths.insert(
                path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", hash(&doc))}),
            );
        }
    }
    json!({ "paths": paths })
}

/// The `/openapi/v2` (Swagger 2.0) document of everything served.
pub fn v2_document(reg: &Registry) -> Value {
    let all = reg.all();
    let types: Vec<&ResourceType> = all.iter().map(|t| &**t).collect();
    let prefix = "#/definitions/";
    let mut paths = Map::new();
    for t in &types {
        paths.extend(paths_of(t, false));
    }
    let mut definitions = schemas(&types, prefix);
    list_schemas(&types, prefix, &mut definitions);
    if let Some(d) = DEFS.get("io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta") {
        definitions
            .entry("io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta")
            .or_insert_with(|| convert(d, prefix));
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.36.0"},
        "paths": paths,
        "definitions": definitions,
        "securityDefinitions": {"BearerToken": {"type": "apiKey", "name": "authorization", "in": "header"}},
        "security": [{"BearerToken": []}],
    })
}
