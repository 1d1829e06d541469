//! Strategic merge patch (`application/strategic-merge-patch+json`) for built-in kinds.
//!
//! What `kubectl apply` (client-side, three-way with the
//! `kubectl.kubernetes.io/last-applied-configuration` annotation), `kubectl patch` and Helm's
//! upgrade send. Lists whose schema says `x-kubernetes-patch-strategy: merge` are merged
//! by their `x-kubernetes-patch-merge-key` (containers by `name`, ports by `containerPort`,
//! ownerReferences by `uid`); lists of scalars with the merge strategy (finalizers) are
//! unions; every other list is replaced, as in JSON merge patch. The directives are
//! honoured: `$patch: replace | delete | merge` (on maps and list elements),
//! `$retainKeys`, `$setElementOrder/<list>`, `$deleteFromPrimitiveList/<list>`, and `null`
//! deletes a key. Merge keys and strategies come from the Kubernetes 1.36 definitions.

use serde_json::{Map, Value};

use crate::openapi;

/// Why a strategic merge patch could not be applied.
pub type PatchError = String;

type Schema = Option<&'static Value>;

/// A schema with its `$ref` (if any) followed; every schema is a static definition.
fn resolve(schema: Schema) -> Schema {
    let s = schema?;
    match s.get("$ref").and_then(Value::as_str) {
        Some(r) => openapi::definition(r.rsplit('/').next().unwrap_or(r)),
        None => Some(s),
    }
}

fn property(schema: Schema, key: &str) -> Schema {
    let s = schema?;
    s.get("properties")
        .and_then(|p| p.get(key))
        .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
}

fn strategy(prop: Schema) -> (bool, bool, Option<String>) {
    let strategy = prop
        .and_then(|p| p.get("x-kubernetes-patch-strategy"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let key = prop
        .and_then(|p| p.get("x-kubernetes-patch-merge-key"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    (
        strategy.split(',').any(|s| s == "merge"),
        strategy.split(',').any(|s| s == "retainKeys"),
        key,
    )
}

/// Applies `patch` to `doc` (an object of the kind whose definition is `definition`).
pub fn apply(doc: &mut Value, patch: &Value, definition: &str) -> Result<(), PatchError> {
    let Value::Object(p) = patch else {
        return Err("a strategic merge patch must be a JSON object".into());
    };
    let schema = openapi::definition(definition);
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let Value::Object(d) = doc else {
        unreachable!()
    };
    if merge_map(d, p, schema)? {
        *doc = Value::Object(Map::new());
    }
    Ok(())
}

/// Merges `patch` into `orig`. Returns true when the patch says `$patch: delete`.
fn merge_map(
    orig: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    schema: Schema,
) -> Result<bool, PatchError> {
    let schema = resolve(schema);
    match patch.get("$patch").and_then(Value::as_str) {
        Some("delete") => return Ok(true),
        Some("replace") => {
            orig.clear();
            let mut rest = patch.clone();
            rest.remove("$patch");
            merge_map(orig, &rest, schema)?;
            return Ok(false);
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown patch type {other:?} in $patch")),
    }
    if let Some(keep) = patch.get("$retainKeys") {
        let keep: Vec<&str> = keep
            .as_array()
            .ok_or("$retainKeys must be a list")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        orig.retain(|k, _| keep.contains(&k.as_str()));
    }
    let mut orders = Vec::new();
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix("$setElementOrder/") {
            orders.push((field.to_owned(), value.clone()));
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let gone = value.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = orig.get_mut(field) {
                list.retain(|v| !gone.contains(v));
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        let prop = property(schema, key);
        match value {
            Value::Null => {
                orig.remove(key);
            }
            Value::Object(pm) => {
                let sub = resolve(prop);
                match orig.get_mut(key) {
                    Some(Value::Object(om)) => {
                        if merge_map(om, pm, sub)? {
                            orig.remove(key);
                        }
                    }
                    _ => {
                        let mut fresh = Map::new();
                        if !merge_map(&mut fresh, pm, sub)? {
                            orig.insert(key.clone(), Value::Object(fresh));
                        } else {
                            orig.remove(key);
                        }
                    }
                }
            }
            Value::Array(pl) => {
                let (merge, _, merge_key) = strategy(prop);
                let items = resolve(prop.and_then(|p| p.get("items")));
                let current = match orig.remove(key) {
                    Some(Value::Array(a)) => a,
                    _ => Vec::new(),
                };
                let merged = if merge {
                    merge_list(current, pl, merge_key.as_deref(), items)?
                } else {
                    fresh_list(pl, items)?
                };
                orig.insert(key.clone(), Value::Array(merged));
            }
            scalar => {
                orig.insert(key.clone(), scalar.clone());
            }
        }
    }
    for (field, order) in orders {
        let prop = property(schema, &field);
        let (_, _, merge_key) = strategy(prop);
        if let (Some(Value::Array(list)), Some(order)) = (orig.get_mut(&field), order.as_array()) {
            set_order(list, order, merge_key.as_deref());
        }
    }
    Ok(false)
}

/// A list from a patch with no original: directives removed, nested patches applied to
/// nothing.
fn fresh_list(patch: &[Value], items: Schema) -> Result<Vec<Value>, PatchError> {
    let mut out = Vec::new();
    for v in patch {
        match v {
            Value::Object(m) if m.get("$patch").and_then(Value::as_str) == Some("replace") => {}
            Value::Object(m) => {
                let mut fresh = Map::new();
                if !merge_map(&mut fresh, m, items)? {
                    out.push(Value::Object(fresh));
                }
            }
            other => out.push(other.clone()),
        }
    }
    Ok(out)
}

fn merge_list(
    mut orig: Vec<Value>,
    patch: &[Value],
    key: Option<&str>,
    items: Schema,
) -> Result<Vec<Value>, PatchError> {
    if patch
        .iter()
        .any(|v| v.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return fresh_list(patch, items);
    }
    let Some(key) = key else {
        // A list of scalars with the merge strategy: a union keeping the original order.
        for v in patch {
            if v.get("$patch").is_some() {
                continue;
            }
            if !orig.contains(v) {
                orig.push(v.clone());
            }
        }
        return Ok(orig);
    };
    for p in patch {
        let Value::Object(pm) = p else {
            orig.push(p.clone());
            continue;
        };
        let Some(kv) = pm.get(key) else {
            if pm.get("$patch").and_then(Value::as_str) == Some("delete") {
                return Err(format!(
                    "a $patch: delete element of a list merged by {key:?} has no {key:?}"
                ));
            }
            let mut fresh = Map::new();
            merge_map(&mut fresh, pm, items)?;
            orig.push(Value::Object(fresh));
            continue;
        };
        if pm.get("$patch").and_then(Value::as_str) == Some("delete") {
            orig.retain(|o| o.get(key) != Some(kv));
            continue;
        }
        match orig.iter_mut().find(|o| o.get(key) == Some(kv)) {
            Some(Value::Object(om)) => {
                merge_map(om, pm, items)?;
            }
            _ => {
                let mut fresh = Map::new();
                merge_map(&mut fresh, pm, items)?;
                orig.push(Value::Object(fresh));
            }
        }
    }
    Ok(orig)
}

/// `$setElementOrder`: the listed elements first, in that order, then the rest.
fn set_order(list: &mut Vec<Value>, order: &[Value], key: Option<&str>) {
    let ident = |v: &Value| -> Value {
        match key {
            Some(k) => v.get(k).cloned().unwrap_or(Value::Null),
            None => v.clone(),
        }
    };
    let wanted: Vec<Value> = order.iter().map(&ident).collect();
    let mut rest = std::mem::take(list);
    for w in &wanted {
        if let Some(i) = rest.iter().position(|v| &ident(v) == w) {
            list.push(rest.remove(i));
        }
    }
    list.extend(rest);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    const DEPLOYMENT: &str = "io.k8s.api.apps.v1.Deployment";

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
            "spec": {
                "replicas": 1,
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
                "template": {"spec": {"containers": [
                    {"name": "web", "image": "web:1", "ports": [{"containerPort": 80}],
                     "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                    {"name": "side", "image": "side:1"}
                ]}}
            }
        })
    }

    #[test]
    fn merges_containers_by_name_and_keeps_the_rest() {
        let mut d = deployment();
        apply(
            &mut d,
            &json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "web"}, {"name": "side"}],
                "containers": [{"name": "web", "image": "web:2",
                                "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}]}]
            }}}}),
            DEPLOYMENT,
        )
        .unwrap();
        let c = &d["spec"]["template"]["spec"]["containers"];
        assert_eq!(c[0]["image"], "web:2");
        assert_eq!(c[0]["ports"], json!([{"containerPort": 80}]));
        assert_eq!(
            c[0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}])
        );
        assert_eq!(c[1], json!({"name": "side", "image": "side:1"}));
        assert!(
            d["spec"]["template"]["spec"]
                .get("$setElementOrder/containers")
                .is_none()
        );
    }

    #[test]
    fn deletes_elements_keys_and_primitives() {
        let mut d = deployment();
        apply(
            &mut d,
            &json!({
                "metadata": {"labels": {"a": null}, "finalizers": ["y"],
                             "$deleteFromPrimitiveList/finalizers": ["x"]},
                "spec": {"template": {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}}
            }),
            DEPLOYMENT,
        )
        .unwrap();
        assert_eq!(d["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(d["metadata"]["finalizers"], json!(["y"]));
        let c = d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0]["name"], "web");
    }

    #[test]
    fn retain_keys_and_replace() {
        let mut d = deployment();
        apply(
            &mut d,
            &json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
            DEPLOYMENT,
        )
        .unwrap();
        assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
        apply(
            &mut d,
            &json!({"metadata": {"labels": {"$patch": "replace", "z": "9"}}}),
            DEPLOYMENT,
        )
        .unwrap();
        assert_eq!(d["metadata"]["labels"], json!({"z": "9"}));
    }

    #[test]
    fn lists_without_a_merge_strategy_are_replaced() {
        let mut d = json!({"apiVersion": "v1", "kind": "Service",
            "spec": {"ports": [{"port": 80, "name": "http"}], "externalIPs": ["1.1.1.1"]}});
        apply(
            &mut d,
            &json!({"spec": {"externalIPs": ["2.2.2.2"], "ports": [{"port": 443, "name": "https"}]}}),
            "io.k8s.api.core.v1.Service",
        )
        .unwrap();
        assert_eq!(d["spec"]["externalIPs"], json!(["2.2.2.2"]));
        // Service ports merge by `port`.
        assert_eq!(
            d["spec"]["ports"],
            json!([{"port": 80, "name": "http"}, {"port": 443, "name": "https"}])
        );
    }
}
