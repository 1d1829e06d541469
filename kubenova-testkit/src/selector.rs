//! Label and field selectors as parsed by the Kubernetes API server.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::{ApiError, ApiResult};

/// One label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` / `key==value`.
    Eq(String, String),
    /// `key!=value`.
    NotEq(String, String),
    /// `key in (a,b)`.
    In(String, Vec<String>),
    /// `key notin (a,b)`.
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    NotExists(String),
}

/// A parsed label selector (AND of requirements).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<Requirement>);

fn split_top_level(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c);
            }
            ')' => {
                depth -= 1;
                cur.push(c);
            }
            ',' if depth == 0 => parts.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    parts.push(cur);
    parts
        .into_iter()
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

fn parse_set(rest: &str, whole: &str) -> ApiResult<Vec<String>> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "unable to parse requirement: found '{rest}', expected: '(' in label selector {whole:?}"
            ))
        })?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect())
}

fn check_key(key: &str, whole: &str) -> ApiResult<String> {
    let key = key.trim();
    let ok = !key.is_empty()
        && key.len() <= 317
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(key.to_owned())
    } else {
        Err(ApiError::bad_request(format!(
            "unable to parse requirement: invalid label key {key:?} in selector {whole:?}"
        )))
    }
}

impl LabelSelector {
    /// Parses the `labelSelector` query syntax.
    pub fn parse(s: &str) -> ApiResult<Self> {
        let mut reqs = Vec::new();
        for part in split_top_level(s) {
            let p = part.as_str();
            if let Some(k) = p.strip_prefix('!') {
                reqs.push(Requirement::NotExists(check_key(k, s)?));
            } else if let Some((k, v)) = p.split_once("!=") {
                reqs.push(Requirement::NotEq(check_key(k, s)?, v.trim().to_owned()));
            } else if let Some((k, v)) = p.split_once("==") {
                reqs.push(Requirement::Eq(check_key(k, s)?, v.trim().to_owned()));
            } else if let Some((k, v)) = p.split_once('=') {
                reqs.push(Requirement::Eq(check_key(k, s)?, v.trim().to_owned()));
            } else if let Some(idx) = p.find(" notin ") {
                let (k, rest) = p.split_at(idx);
                reqs.push(Requirement::NotIn(
                    check_key(k, s)?,
                    parse_set(&rest[7..], s)?,
                ));
            } else if let Some(idx) = p.find(" in ") {
                let (k, rest) = p.split_at(idx);
                reqs.push(Requirement::In(check_key(k, s)?, parse_set(&rest[4..], s)?));
            } else {
                reqs.push(Requirement::Exists(check_key(p, s)?));
            }
        }
        Ok(Self(reqs))
    }

    /// Whether the labels satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Eq(k, v) => labels.get(k) == Some(v),
            Requirement::NotEq(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

/// A parsed field selector over `metadata.name` / `metadata.namespace`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses `fieldSelector`; only `metadata.name` and `metadata.namespace` are supported.
    pub fn parse(s: &str) -> ApiResult<Self> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, eq, v) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            };
            let k = k.trim();
            if k != "metadata.name" && k != "metadata.namespace" {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {k}"
                )));
            }
            out.push((k.to_owned(), eq, v.trim().to_owned()));
        }
        Ok(Self(out))
    }

    /// Whether the object matches.
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(k, eq, v)| {
            let actual = match k.as_str() {
                "metadata.name" => obj.pointer("/metadata/name"),
                _ => obj.pointer("/metadata/namespace"),
            }
            .and_then(Value::as_str)
            .unwrap_or_default();
            (actual == v) == *eq
        })
    }
}

/// Labels of an object as a map.
pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| ((*a).into(), (*b).into()))
            .collect()
    }

    #[test]
    fn parses_all_operators() {
        let s = LabelSelector::parse("a=1,b!=2,c in (x, y),d notin (z),e,!f").unwrap();
        assert_eq!(s.0.len(), 6);
        assert!(s.matches(&l(&[("a", "1"), ("b", "3"), ("c", "y"), ("e", "")])));
        assert!(!s.matches(&l(&[("a", "1"), ("c", "y"), ("e", ""), ("f", "1")])));
        assert!(!s.matches(&l(&[("a", "1"), ("c", "y"), ("d", "z"), ("e", "")])));
        assert!(LabelSelector::parse("a in x").is_err());
    }

    #[test]
    fn field_selector() {
        let f = FieldSelector::parse("metadata.name=x,metadata.namespace!=y").unwrap();
        assert!(f.matches(&serde_json::json!({"metadata": {"name": "x", "namespace": "z"}})));
        assert!(FieldSelector::parse("spec.x=1").is_err());
    }
}
