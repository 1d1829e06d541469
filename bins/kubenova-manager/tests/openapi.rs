//! The published OpenAPI document: committed snapshot, and the 0.1.3 contract covered.
#![allow(clippy::unwrap_used, missing_docs)]

use serde_json::Value;
use std::collections::BTreeSet;

fn spec() -> Value {
    serde_json::to_value(kubenova_manager::api::openapi()).unwrap()
}

#[test]
fn snapshot_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let want = serde_json::to_string_pretty(&spec()).unwrap() + "\n";
    if std::env::var_os("KUBENOVA_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/openapi.json is out of date: run `KUBENOVA_BLESS=1 cargo test -p kubenova-manager --test openapi` and commit it"
    );
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if item.get(m).is_some() {
                out.insert((m.to_string(), path.clone()));
            }
        }
    }
    out
}

/// Path parameter names differ in spelling only; compare the shapes.
fn normalize(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

#[test]
fn every_operation_of_the_0_1_3_contract_is_published() {
    let reference: Value =
        serde_saphyr::from_str(include_str!("fixtures/openapi-kubenova-0.1.3.yaml")).unwrap();
    let ours: BTreeSet<(String, String)> = operations(&spec())
        .into_iter()
        .map(|(m, p)| (m, normalize(&p)))
        .collect();
    let want = operations(&reference);
    assert!(
        want.len() >= 51,
        "the reference has 51 operations, parsed {}",
        want.len()
    );
    let missing: Vec<_> = want
        .iter()
        .filter(|(m, p)| !ours.contains(&(m.clone(), normalize(p))))
        .collect();
    assert!(
        missing.is_empty(),
        "operations of the 0.1.3 contract not served: {missing:#?}"
    );
}

#[test]
fn every_operation_is_documented() {
    let doc = spec();
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            let Some(op) = item.get(m) else { continue };
            let where_ = format!("{m} {path}");
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{where_}: no operationId"));
            assert!(
                ids.insert(id.to_string()),
                "{where_}: duplicate operationId {id}"
            );
            assert!(
                op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                "{where_}: no tag"
            );
            let responses = op["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{where_}: no responses"));
            assert!(
                responses.keys().any(|k| k.starts_with('2')),
                "{where_}: no success response"
            );
            if !path.ends_with("healthz")
                && !path.ends_with("version")
                && !path.ends_with("openapi.json")
                && !path.ends_with("auth/providers")
            {
                assert!(
                    responses
                        .keys()
                        .any(|k| k.starts_with('4') || k.starts_with('5')),
                    "{where_}: no KN error response"
                );
            }
            for (code, r) in responses {
                if let Some(content) = r.get("content").and_then(|c| c.get("application/json")) {
                    let has_example = content.get("example").is_some()
                        || content.get("examples").is_some()
                        || content["schema"].get("$ref").is_some()
                        || content["schema"].get("example").is_some();
                    assert!(has_example, "{where_} {code}: no example");
                }
            }
        }
    }
    assert!(ids.len() >= 60, "only {} operations", ids.len());
}
