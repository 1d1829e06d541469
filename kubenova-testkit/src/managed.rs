//! Field ownership (`metadata.managedFields`) and server-side apply at leaf-field granularity.
//!
//! Leaves are scalars, arrays (lists are atomic) and empty objects. Paths are stored in the
//! `FieldsV1` shape (`{"f:spec": {"f:replicas": {}}}`).

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// A field path (sequence of object keys).
pub type Path = Vec<String>;

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Manager name.
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// apiVersion of the write.
    pub api_version: String,
    /// Time of last write.
    pub time: String,
    /// `""` or `"status"`.
    pub subresource: String,
    /// Owned leaf paths.
    pub paths: BTreeSet<Path>,
}

/// RFC 3339 "now" with second precision, as Kubernetes timestamps.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

fn tracked_top(key: &str) -> bool {
    !matches!(key, "apiVersion" | "kind" | "metadata")
}

fn collect(v: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, c) in m {
                prefix.push(k.clone());
                collect(c, prefix, out);
                prefix.pop();
            }
        }
        _ => {
            out.insert(prefix.clone());
        }
    }
}

/// Leaf paths of an object that field management tracks (metadata: only labels, annotations,
/// finalizers, ownerReferences). `only_status` / `skip_status` filter the `status` stanza.
pub fn leaf_paths(obj: &Value, skip_status: bool, only_status: bool) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    let Some(m) = obj.as_object() else {
        return out;
    };
    for (k, v) in m {
        if only_status && k != "status" {
            continue;
        }
        if skip_status && k == "status" {
            continue;
        }
        if k == "metadata" {
            if let Some(md) = v.as_object() {
                for mk in ["labels", "annotations", "finalizers", "ownerReferences"] {
                    if let Some(mv) = md.get(mk) {
                        let mut p = vec!["metadata".to_owned(), mk.to_owned()];
                        if matches!(mk, "labels" | "annotations") {
                            collect(mv, &mut p, &mut out);
                        } else {
                            out.insert(p);
                        }
                    }
                }
            }
            continue;
        }
        if !tracked_top(k) {
            continue;
        }
        let mut p = vec![k.clone()];
        collect(v, &mut p, &mut out);
    }
    out
}

/// Value at a path.
pub fn get_path<'a>(v: &'a Value, p: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    for k in p {
        cur = cur.as_object()?.get(k)?;
    }
    Some(cur)
}

/// Sets a value at a path, creating intermediate objects.
pub fn set_path(v: &mut Value, p: &[String], val: Value) {
    let Some((last, parents)) = p.split_last() else {
        *v = val;
        return;
    };
    let mut cur = v;
    for k in parents {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Some(m) = cur.as_object_mut() else {
            return;
        };
        cur = m
            .entry(k.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if !cur.is_object() {
        *cur = Value::Object(Map::new());
    }
    if let Some(m) = cur.as_object_mut() {
        m.insert(last.clone(), val);
    }
}

/// Removes a path and prunes parents left empty (never `metadata`).
pub fn remove_path(v: &mut Value, p: &[String]) {
    fn rec(v: &mut Value, p: &[String], depth: usize) -> bool {
        let Some(m) = v.as_object_mut() else {
            return false;
        };
        let Some(first) = p.first() else {
            return false;
        };
        if p.len() == 1 {
            m.remove(first);
        } else if let Some(c) = m.get_mut(first)
            && rec(c, &p[1..], depth + 1)
        {
            let empty = c.as_object().is_some_and(Map::is_empty);
            if empty && !(depth == 0 && first == "metadata") {
                m.remove(first);
            }
        }
        true
    }
    rec(v, p, 0);
}

/// `FieldsV1` rendering of a set of paths.
pub fn to_fields_v1(paths: &BTreeSet<Path>) -> Value {
    let mut root = Value::Object(Map::new());
    for p in paths {
        let fp: Vec<String> = p.iter().map(|k| format!("f:{k}")).collect();
        if get_path(&root, &fp).is_none() {
            set_path(&mut root, &fp, json!({}));
        }
    }
    root
}

/// Parses `FieldsV1` back into leaf paths (`f:` keys only).
pub fn from_fields_v1(v: &Value) -> BTreeSet<Path> {
    fn rec(v: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
        let keys: Vec<(&String, &Value)> = v
            .as_object()
            .map(|m| m.iter().filter(|(k, _)| k.starts_with("f:")).collect())
            .unwrap_or_default();
        if keys.is_empty() {
            if !prefix.is_empty() {
                out.insert(prefix.clone());
            }
            return;
        }
        for (k, c) in keys {
            prefix.push(k[2..].to_owned());
            rec(c, prefix, out);
            prefix.pop();
        }
    }
    let mut out = BTreeSet::new();
    rec(v, &mut Vec::new(), &mut out);
    out
}

/// Reads entries from an object's `metadata.managedFields`.
pub fn read_entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| {
                    let s = |k: &str| {
                        e.get(k)
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned()
                    };
                    Entry {
                        manager: s("manager"),
                        operation: s("operation"),
                        api_version: s("apiVersion"),
                        time: s("time"),
                        subresource: s("subresource"),
                        paths: e.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Writes entries into `metadata.managedFields` (dropping empty ones).
pub fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let arr: Vec<Value> = entries
        .iter()
        .filter(|e| !e.paths.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.paths),
            });
            if !e.subresource.is_empty() {
                v["subresource"] = json!(e.subresource);
            }
            v
        })
        .collect();
    if let Some(md) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if arr.is_empty() {
            md.remove("managedFields");
        } else {
            md.insert("managedFields".into(), Value::Array(arr));
        }
    }
}

fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

fn dotted(p: &[String]) -> String {
    format!(".{}", p.join("."))
}

/// Records an Update-operation write: `manager` takes ownership of changed leaves; removed
/// leaves are dropped from every manager.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    subresource: &str,
) {
    let mut entries = old.map(read_entries).unwrap_or_default();
    let new_paths = leaf_paths(new, false, false);
    let old_paths = old.map(|o| leaf_paths(o, false, false)).unwrap_or_default();
    let changed: BTreeSet<Path> = new_paths
        .iter()
        .filter(|p| old.and_then(|o| get_path(o, p)) != get_path(new, p))
        .cloned()
        .collect();
    let removed: Vec<&Path> = old_paths.difference(&new_paths).collect();
    for e in &mut entries {
        e.paths
            .retain(|p| !removed.iter().any(|r| overlaps(r, p)) && new_paths.contains(p));
        if !(e.manager == manager && e.operation == "Update" && e.subresource == subresource) {
            e.paths.retain(|p| !changed.iter().any(|c| overlaps(c, p)));
        }
    }
    if !changed.is_empty() {
        let now = now_rfc3339();
        if let Some(e) = entries.iter_mut().find(|e| {
            e.manager == manager && e.operation == "Update" && e.subresource == subresource
        }) {
            e.paths.extend(changed);
            e.time = now;
            e.api_version = api_version.to_owned();
        } else {
            entries.push(Entry {
                manager: manager.to_owned(),
                operation: "Update".into(),
                api_version: api_version.to_owned(),
                time: now,
                subresource: subresource.to_owned(),
                paths: changed,
            });
        }
    }
    write_entries(new, &entries);
}

/// Server-side apply. `current` is the live object (with managedFields) or a skeleton for
/// creation; `applied` the apply configuration. Returns the merged object or the conflicts
/// `(manager, .field.path)`.
pub fn apply(
    current: &Value,
    applied: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
    subresource: &str,
    skip_status: bool,
) -> Result<Value, Vec<(String, String)>> {
    let mut entries = read_entries(current);
    let only_status = subresource == "status";
    let new_paths = leaf_paths(applied, skip_status, only_status);
    let mine =
        |e: &Entry| e.manager == manager && e.operation == "Apply" && e.subresource == subresource;
    let mut conflicts = Vec::new();
    for e in entries.iter().filter(|e| !mine(e) && e.manager != manager) {
        for p in &new_paths {
            if let Some(owned) = e.paths.iter().find(|o| overlaps(o, p)) {
                let differs = if owned.len() >= p.len() {
                    get_path(current, owned) != get_path(applied, owned)
                } else {
                    get_path(current, p) != get_path(applied, p)
                };
                if differs {
                    conflicts.push((e.manager.clone(), dotted(p)));
                }
            }
        }
    }
    if !conflicts.is_empty() && !force {
        conflicts.sort();
        conflicts.dedup();
        return Err(conflicts);
    }
    let mut out = current.clone();
    // Fields this manager previously applied but no longer does, and nobody else owns: remove.
    let previous: BTreeSet<Path> = entries
        .iter()
        .filter(|e| mine(e))
        .flat_map(|e| e.paths.iter().cloned())
        .collect();
    for p in previous.difference(&new_paths) {
        let owned_by_other = entries
            .iter()
            .filter(|e| !mine(e))
            .any(|e| e.paths.iter().any(|o| overlaps(o, p)));
        if !owned_by_other && !new_paths.iter().any(|n| overlaps(n, p)) {
            remove_path(&mut out, p);
        }
    }
    for p in &new_paths {
        if let Some(v) = get_path(applied, p) {
            let is_empty_obj = v.as_object().is_some_and(Map::is_empty);
            if is_empty_obj && get_path(&out, p).is_some_and(Value::is_object) {
                continue;
            }
            set_path(&mut out, p, v.clone());
        }
    }
    if force {
        for e in entries.iter_mut().filter(|e| e.manager != manager) {
            let lost: Vec<Path> = e
                .paths
                .iter()
                .filter(|o| {
                    new_paths
                        .iter()
                        .any(|p| overlaps(o, p) && get_path(current, o) != get_path(applied, o))
                })
                .cloned()
                .collect();
            for l in lost {
                e.paths.remove(&l);
            }
        }
    }
    let now = now_rfc3339();
    if let Some(e) = entries.iter_mut().find(|e| mine(e)) {
        e.paths = new_paths;
        e.time = now;
        e.api_version = api_version.to_owned();
    } else {
        entries.push(Entry {
            manager: manager.to_owned(),
            operation: "Apply".into(),
            api_version: api_version.to_owned(),
            time: now,
            subresource: subresource.to_owned(),
            paths: new_paths,
        });
    }
    write_entries(&mut out, &entries);
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn fields_v1_roundtrip() {
        let obj = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"x": 1, "y": {"z": [1]}}});
        let p = leaf_paths(&obj, false, false);
        assert_eq!(from_fields_v1(&to_fields_v1(&p)), p);
    }

    #[test]
    fn apply_conflicts_and_force() {
        let base = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}});
        let a = apply(
            &base,
            &json!({"data": {"k": "1"}}),
            "alice",
            false,
            "v1",
            "",
            false,
        )
        .unwrap();
        let err = apply(
            &a,
            &json!({"data": {"k": "2"}}),
            "bob",
            false,
            "v1",
            "",
            false,
        )
        .unwrap_err();
        assert_eq!(err, vec![("alice".to_owned(), ".data.k".to_owned())]);
        // Same value: shared ownership, no conflict.
        let shared = apply(
            &a,
            &json!({"data": {"k": "1"}}),
            "bob",
            false,
            "v1",
            "",
            false,
        )
        .unwrap();
        assert_eq!(read_entries(&shared).len(), 2);
        let forced = apply(
            &a,
            &json!({"data": {"k": "2"}}),
            "bob",
            true,
            "v1",
            "",
            false,
        )
        .unwrap();
        assert_eq!(forced["data"]["k"], json!("2"));
        let entries = read_entries(&forced);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].manager, "bob");
        // alice drops a field she solely owns -> removed.
        let two = apply(
            &base,
            &json!({"data": {"k": "1", "j": "2"}}),
            "alice",
            false,
            "v1",
            "",
            false,
        )
        .unwrap();
        let one = apply(
            &two,
            &json!({"data": {"k": "1"}}),
            "alice",
            false,
            "v1",
            "",
            false,
        )
        .unwrap();
        assert!(one["data"].get("j").is_none());
    }
}
