//! Validation: a structural-schema walker for CRD `openAPIV3Schema` (with defaulting, null pruning
//! and strict unknown-field detection) and the Kubernetes strict JSON schemas for built-in kinds.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use serde_json::{Map, Value};

use crate::error::{ApiError, Cause};
use crate::registry::{ResourceType, SchemaSource};
use crate::upstream;

/// Outcome of validating one object.
#[derive(Debug, Default)]
pub struct Findings {
    /// Value errors (→ 422 Invalid).
    pub invalid: Vec<Cause>,
    /// Unknown fields (→ 400 BadRequest under strict field validation).
    pub unknown: Vec<String>,
    /// Input: remove unknown fields instead of only reporting them
    /// (`fieldValidation=Ignore|Warn`, like the API server's pruning).
    pub prune: bool,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Object(_) => "\"object\"".to_owned(),
        Value::Array(_) => "\"array\"".to_owned(),
        other => other.to_string(),
    }
}

fn type_ok(expected: &str, v: &Value) -> bool {
    match expected {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

static REGEX_CACHE: LazyLock<Mutex<HashMap<String, Option<regex::Regex>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn pattern_matches(pattern: &str, s: &str) -> bool {
    let mut cache = match REGEX_CACHE.lock() {
        Ok(c) => c,
        Err(p) => p.into_inner(),
    };
    let re = cache
        .entry(pattern.to_owned())
        .or_insert_with(|| regex::Regex::new(pattern).ok());
    // Patterns the regex crate cannot compile (e.g. look-around) are not enforced.
    re.as_ref().is_none_or(|r| r.is_match(s))
}

/// Walks a structural schema. Mutates `v` to apply `default`s and prune non-nullable nulls.
fn walk(schema: &Value, v: &mut Value, path: &str, f: &mut Findings) {
    let Some(sch) = schema.as_object() else {
        return;
    };
    if v.is_null() {
        if sch.get("nullable").and_then(Value::as_bool) == Some(true) {
            return;
        }
        // Top-level nulls that reach here (e.g. array items) are invalid.
        if let Some(t) = sch.get("type").and_then(Value::as_str) {
            f.invalid.push(Cause::new(
                "FieldValueInvalid",
                format!("Invalid value: \"null\": {path} in body must be of type {t}: \"null\""),
                path,
            ));
        }
        return;
    }
    let int_or_string = sch
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true);
    if int_or_string {
        if !(v.is_string() || v.is_i64() || v.is_u64()) {
            f.invalid.push(Cause::new(
                "FieldValueInvalid",
                format!(
                    "Invalid value: \"{}\": {path} in body must be of type integer or string: {}",
                    type_name(v),
                    show(v)
                ),
                path,
            ));
            return;
        }
    } else if let Some(t) = sch.get("type").and_then(Value::as_str)
        && !type_ok(t, v)
    {
        f.invalid.push(Cause::new(
            "FieldValueInvalid",
            format!(
                "Invalid value: \"{}\": {path} in body must be of type {t}: {}",
                type_name(v),
                show(v)
            ),
            path,
        ));
        return;
    }
    if let Some(en) = sch.get("enum").and_then(Value::as_array)
        && !en.contains(v)
    {
        let supported: Vec<String> = en.iter().map(show).collect();
        f.invalid.push(Cause::new(
            "FieldValueNotSupported",
            format!(
                "Unsupported value: {}: supported values: {}",
                show(v),
                supported.join(", ")
            ),
            path,
        ));
    }
    // Combinators (value-only in structural schemas).
    let no_errors = |s: &Value, v: &Value| {
        let mut probe = Findings::default();
        let mut copy = v.clone();
        walk_values_only(s, &mut copy, path, &mut probe);
        probe.invalid.is_empty()
    };
    if let Some(all) = sch.get("allOf").and_then(Value::as_array) {
        for s in all {
            walk_values_only(s, &mut v.clone(), path, f);
        }
    }
    if let Some(any) = sch.get("anyOf").and_then(Value::as_array)
        && !int_or_string
        && !any.iter().any(|s| no_errors(s, v))
    {
        f.invalid.push(Cause::new(
            "FieldValueInvalid",
            format!(
                "Invalid value: {}: {path} in body must match at least one schema (anyOf)",
                show(v)
            ),
            path,
        ));
    }
    if let Some(one) = sch.get("oneOf").and_then(Value::as_array) {
        let n = one.iter().filter(|s| no_errors(s, v)).count();
        if n != 1 {
            f.invalid.push(Cause::new(
                "FieldValueInvalid",
                format!(
                    "Invalid value: {}: {path} in body must match exactly one schema in oneOf",
                    show(v)
                ),
                path,
            ));
        }
    }
    if let Some(not) = sch.get("not")
        && no_errors(not, v)
    {
        f.invalid.push(Cause::new(
            "FieldValueInvalid",
            format!(
                "Invalid value: {}: {path} in body must not validate the schema (not)",
                show(v)
            ),
            path,
        ));
    }
    match v {
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(min) = sch.get("minLength").and_then(Value::as_u64)
                && len < min
            {
                f.invalid.push(Cause::new(
                    "FieldValueInvalid",
                    format!(
                        "Invalid value: {s:?}: {path} in body should be at least {min} chars long"
                    ),
                    path,
                ));
            }
            if let Some(max) = sch.get("maxLength").and_then(Value::as_u64)
                && len > max
            {
                f.invalid.push(Cause::new(
                    "FieldValueTooLong",
                    format!("Too long: may not be more than {max} bytes"),
                    path,
                ));
            }
            if let Some(p) = sch.get("pattern").and_then(Value::as_str)
                && !pattern_matches(p, s)
            {
                f.invalid.push(Cause::new(
                    "FieldValueInvalid",
                    format!("Invalid value: {s:?}: {path} in body should match '{p}'"),
                    path,
                ));
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(min) = sch.get("minimum").and_then(Value::as_f64) {
                let excl = sch.get("exclusiveMinimum").and_then(Value::as_bool) == Some(true);
                if x < min || (excl && x <= min) {
                    let rel = if excl {
                        "greater than"
                    } else {
                        "greater than or equal to"
                    };
                    f.invalid.push(Cause::new(
                        "FieldValueInvalid",
                        format!("Invalid value: {n}: {path} in body should be {rel} {min}"),
                        path,
                    ));
                }
            }
            if let Some(max) = sch.get("maximum").and_then(Value::as_f64) {
                let excl = sch.get("exclusiveMaximum").and_then(Value::as_bool) == Some(true);
                if x > max || (excl && x >= max) {
                    let rel = if excl {
                        "less than"
                    } else {
                        "less than or equal to"
                    };
                    f.invalid.push(Cause::new(
                        "FieldValueInvalid",
                        format!("Invalid value: {n}: {path} in body should be {rel} {max}"),
                        path,
                    ));
                }
            }
        }
        Value::Array(items) => {
            let len = items.len() as u64;
            if let Some(min) = sch.get("minItems").and_then(Value::as_u64)
                && len < min
            {
                f.invalid.push(Cause::new(
                    "FieldValueInvalid",
                    format!(
                        "Invalid value: {len}: {path} in body should have at least {min} items"
                    ),
                    path,
                ));
            }
            if let Some(max) = sch.get("maxItems").and_then(Value::as_u64)
                && len > max
            {
                f.invalid.push(Cause::new(
                    "FieldValueTooMany",
                    format!("Too many: {len}: must have at most {max} items"),
                    path,
                ));
            }
            if let Some(item_schema) = sch.get("items") {
                for (i, it) in items.iter_mut().enumerate() {
                    walk(item_schema, it, &format!("{path}[{i}]"), f);
                }
            }
        }
        Value::Object(map) => walk_object(sch, map, path, f),
        _ => {}
    }
}

/// Like [`walk`] but ignoring unknown fields (used inside combinators).
fn walk_values_only(schema: &Value, v: &mut Value, path: &str, f: &mut Findings) {
    let mut inner = Findings::default();
    walk(schema, v, path, &mut inner);
    f.invalid.extend(inner.invalid);
}

fn walk_object(
    sch: &Map<String, Value>,
    map: &mut Map<String, Value>,
    path: &str,
    f: &mut Findings,
) {
    let props = sch.get("properties").and_then(Value::as_object);
    let additional = sch.get("additionalProperties");
    let preserve = sch
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true);
    // Defaults.
    if let Some(props) = props {
        for (k, ps) in props {
            if !map.contains_key(k)
                && let Some(d) = ps.get("default")
            {
                map.insert(k.clone(), d.clone());
            }
        }
    }
    // Prune nulls of non-nullable properties.
    let null_keys: Vec<String> = map
        .iter()
        .filter(|(_, v)| v.is_null())
        .map(|(k, _)| k.clone())
        .filter(|k| {
            let ps = props
                .and_then(|p| p.get(k))
                .or_else(|| additional.filter(|a| a.is_object()));
            ps.and_then(|s| s.get("nullable")).and_then(Value::as_bool) != Some(true)
        })
        .collect();
    for k in null_keys {
        map.remove(&k);
    }
    if let Some(req) = sch.get("required").and_then(Value::as_array) {
        for r in req.iter().filter_map(Value::as_str) {
            if !map.contains_key(r) {
                f.invalid.push(Cause::new(
                    "FieldValueRequired",
                    "Required value",
                    child(path, r),
                ));
            }
        }
    }
    if let Some(min) = sch.get("minProperties").and_then(Value::as_u64)
        && (map.len() as u64) < min
    {
        f.invalid.push(Cause::new(
            "FieldValueInvalid",
            format!(
                "Invalid value: {}: {path} in body should have at least {min} properties",
                map.len()
            ),
            path,
        ));
    }
    if let Some(max) = sch.get("maxProperties").and_then(Value::as_u64)
        && (map.len() as u64) > max
    {
        f.invalid.push(Cause::new(
            "FieldValueTooMany",
            format!("Too many: {}: must have at most {max} items", map.len()),
            path,
        ));
    }
    let mut pruned = Vec::new();
    for (k, val) in map.iter_mut() {
        if let Some(ps) = props.and_then(|p| p.get(k)) {
            walk(ps, val, &child(path, k), f);
        } else if let Some(a) = additional {
            match a {
                Value::Bool(false) => {
                    f.unknown.push(child(path, k));
                    pruned.push(k.clone());
                }
                Value::Object(_) => walk(a, val, &format!("{path}[{k}]"), f),
                _ => {}
            }
        } else if !preserve {
            f.unknown.push(child(path, k));
            pruned.push(k.clone());
        }
    }
    if f.prune {
        for k in pruned {
            map.remove(&k);
        }
    }
}

/// Validates a custom resource against its CRD `openAPIV3Schema` (metadata, apiVersion and kind
/// are skipped), applying defaults and pruning nulls in place.
pub fn validate_crd_object(schema: &Value, obj: &mut Value, prune: bool) -> Findings {
    let mut f = Findings {
        prune,
        ..Findings::default()
    };
    let Some(map) = obj.as_object_mut() else {
        f.invalid
            .push(Cause::new("FieldValueInvalid", "object expected", ""));
        return f;
    };
    let mut rest: Map<String, Value> = Map::new();
    let keys: Vec<String> = map
        .keys()
        .filter(|k| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
        .cloned()
        .collect();
    for k in keys {
        if let Some(v) = map.remove(&k) {
            rest.insert(k, v);
        }
    }
    let mut root = schema.clone();
    if let Some(r) = root.as_object_mut() {
        if let Some(p) = r.get_mut("properties").and_then(Value::as_object_mut) {
            p.remove("apiVersion");
            p.remove("kind");
            p.remove("metadata");
        }
        if let Some(req) = r.get_mut("required").and_then(Value::as_array_mut) {
            req.retain(|x| !matches!(x.as_str(), Some("apiVersion" | "kind" | "metadata")));
        }
        walk_object(r, &mut rest, "", &mut f);
    }
    map.extend(rest);
    f
}

type Compiled = Arc<jsonschema::Validator>;

/// One shared registry holding `_definitions.json` (its documents are `Arc`-shared, so every
/// compiled validator references the same parsed 1.6 MB document instead of a copy).
static DEFINITIONS: LazyLock<Result<jsonschema::Registry, String>> = LazyLock::new(|| {
    let text = upstream::k8s_schema("_definitions.json")
        .ok_or_else(|| "embedded _definitions.json missing".to_owned())?;
    let defs: Value = serde_json::from_str(text).map_err(|e| format!("_definitions.json: {e}"))?;
    let resource =
        jsonschema::Resource::from_contents(defs).map_err(|e| format!("_definitions.json: {e}"))?;
    jsonschema::Registry::try_new("https://kubernetes.io/api/_definitions.json", resource)
        .map_err(|e| format!("_definitions.json: {e}"))
});

static BUILTIN_VALIDATORS: LazyLock<Mutex<HashMap<&'static str, Compiled>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn builtin_validator(file: &'static str) -> Result<Compiled, ApiError> {
    cached_validator(file, || {
        let text = upstream::k8s_schema(file)
            .ok_or_else(|| ApiError::internal(format!("embedded schema {file} missing")))?;
        serde_json::from_str(text)
            .map_err(|e| ApiError::internal(format!("embedded schema {file}: {e}")))
    })
}

/// The validator of the `_definitions.json` definition `name` (a `$ref` to it).
fn definition_validator(name: &'static str) -> Result<Compiled, ApiError> {
    cached_validator(name, || {
        Ok(serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$ref": format!("https://kubernetes.io/api/_definitions.json#/$defs/{name}"),
        }))
    })
}

/// The compiled validator cached under `key`, compiling `schema()` the first time.
fn cached_validator(
    key: &'static str,
    schema: impl FnOnce() -> Result<Value, ApiError>,
) -> Result<Compiled, ApiError> {
    {
        let cache = BUILTIN_VALIDATORS
            .lock()
            .map_err(|_| ApiError::internal("validator cache poisoned"))?;
        if let Some(v) = cache.get(key) {
            return Ok(v.clone());
        }
    }
    let schema = schema()?;
    let registry = DEFINITIONS
        .as_ref()
        .map_err(|e| ApiError::internal(e.clone()))?;
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .with_registry(registry.clone())
        .build(&schema)
        .map_err(|e| ApiError::internal(format!("compiling {key}: {e}")))?;
    let v = Arc::new(validator);
    if let Ok(mut cache) = BUILTIN_VALIDATORS.lock() {
        cache.insert(key, v.clone());
    }
    Ok(v)
}

fn pointer_to_path(p: &str) -> String {
    let mut out = String::new();
    for seg in p.split('/').filter(|s| !s.is_empty()) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if seg.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            out = child(&out, &seg);
        }
    }
    out
}

/// Validates a built-in object against its Kubernetes strict JSON schema (kind file).
pub fn validate_builtin_object(
    file: &'static str,
    obj: &mut Value,
    prune: bool,
) -> Result<Findings, ApiError> {
    validate_with(&builtin_validator(file)?, obj, prune)
}

fn validate_with(validator: &Compiled, obj: &mut Value, prune: bool) -> Result<Findings, ApiError> {
    let mut f = Findings::default();
    let mut to_prune: Vec<(String, String)> = Vec::new();
    for e in validator.iter_errors(obj) {
        let path = pointer_to_path(e.instance_path.as_str());
        match &e.kind {
            jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
                for u in unexpected {
                    f.unknown.push(child(&path, u));
                    to_prune.push((e.instance_path.as_str().to_owned(), u.clone()));
                }
            }
            jsonschema::error::ValidationErrorKind::Required { property } => {
                let prop = property.as_str().unwrap_or_default();
                f.invalid.push(Cause::new(
                    "FieldValueRequired",
                    "Required value",
                    child(&path, prop),
                ));
            }
            _ => f.invalid.push(Cause::new(
                "FieldValueInvalid",
                format!("Invalid value: {e}"),
                path,
            )),
        }
    }
    if prune {
        for (ptr, key) in to_prune {
            if let Some(m) = obj.pointer_mut(&ptr).and_then(Value::as_object_mut) {
                m.remove(&key);
            }
        }
    }
    Ok(f)
}

/// Pre-compiles the built-in validators (slow once; called in the background at start).
pub fn warm_up() {
    for t in crate::registry::builtins() {
        let compiled = match t.schema {
            SchemaSource::Builtin(file) => builtin_validator(file),
            SchemaSource::BuiltinDefinition(name) => definition_validator(name),
            _ => continue,
        };
        if let Err(e) = compiled {
            tracing::warn!("schema warm-up failed for {}: {e}", t.kind);
        }
    }
}

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label)
}

/// Validates `metadata.name` for a type; returns a cause when invalid.
pub fn validate_name(t: &ResourceType, name: &str) -> Option<Cause> {
    let bad = |msg: &str| {
        Some(Cause::new(
            "FieldValueInvalid",
            format!("Invalid value: {name:?}: {msg}"),
            "metadata.name",
        ))
    };
    if t.group == "rbac.authorization.k8s.io" {
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains('/')
            || name.contains('%')
        {
            return bad("may not contain '/' or '%' and may not be '.' or '..'");
        }
        return None;
    }
    let label_only = (t.group.is_empty() && t.plural == "namespaces")
        || (t.group == "capsule.clastix.io" && t.plural == "tenants");
    if label_only {
        if !is_label(name) {
            return bad(LABEL_MSG);
        }
    } else if !is_subdomain(name) {
        return bad(SUBDOMAIN_MSG);
    }
    None
}

/// Validates an object of type `t`; defaults/prunes CRD objects in place. With `prune`, unknown
/// fields are removed (and still reported).
pub fn validate(t: &ResourceType, obj: &mut Value, prune: bool) -> Result<Findings, ApiError> {
    match &t.schema {
        SchemaSource::None => Ok(Findings::default()),
        SchemaSource::Crd(s) => Ok(validate_crd_object(s, obj, prune)),
        SchemaSource::Builtin(file) => validate_builtin_object(file, obj, prune),
        SchemaSource::BuiltinDefinition(name) => {
            validate_with(&definition_validator(name)?, obj, prune)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn walker_checks_types_enums_required_and_unknown() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object",
        "required": ["kind"],
        "properties": {
            "kind": {"type": "string", "enum": ["User", "Group"]},
            "quota": {"type": "integer", "minimum": 1},
            "hard": {"type": "object", "additionalProperties": {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": true}},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "flag": {"type": "boolean", "default": false},
            "n": {"type": "string", "nullable": true}
        }}}});
        let mut ok = json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a"},
            "spec": {"kind": "User", "quota": 2, "hard": {"cpu": "1", "pods": 3}, "free": {"a": {"b": 1}}, "n": null}});
        let f = validate_crd_object(&schema, &mut ok, false);
        assert!(f.invalid.is_empty() && f.unknown.is_empty(), "{f:?}");
        assert_eq!(ok["spec"]["flag"], json!(false));
        let mut bad =
            json!({"spec": {"kind": "Robot", "quota": 0, "hard": {"cpu": 1.5}, "typo": 1}});
        let f = validate_crd_object(&schema, &mut bad, false);
        let fields: Vec<&str> = f.invalid.iter().map(|c| c.field.as_str()).collect();
        assert!(fields.contains(&"spec.kind"));
        assert!(fields.contains(&"spec.quota"));
        assert!(fields.contains(&"spec.hard[cpu]"));
        assert_eq!(f.unknown, vec!["spec.typo".to_owned()]);
        let mut missing = json!({"spec": {}});
        let f = validate_crd_object(&schema, &mut missing, false);
        assert_eq!(f.invalid[0].field, "spec.kind");
        let mut typo = json!({"spec": {"kind": "User", "typo": 1}});
        let f = validate_crd_object(&schema, &mut typo, true);
        assert_eq!(f.unknown.len(), 1);
        assert!(typo["spec"].get("typo").is_none());
        let f = validate_crd_object(&schema, &mut missing, false);
        assert_eq!(f.invalid[0].field, "spec.kind");
    }
}
