//! Input validation with precise, field-addressed messages.
//!
//! A [`Validator`] collects every violation of an input (not just the first), each
//! with the JSON path of the field and the reason, and turns them into a
//! [`ValidationError`] (KN-422).
//!
//! ```
//! use kubenova_api::validate::Validator;
//!
//! let mut v = Validator::new();
//! v.dns_label("name", "Acme_Corp");
//! v.quantity("quotas.cpu", "4 cores");
//! let err = v.finish().unwrap_err();
//! assert_eq!(err.violations.len(), 2);
//! assert_eq!(err.violations[0].field, "name");
//! assert!(err.violations[1].reason.contains("4 cores"));
//! ```

use crate::quantity::Quantity;
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::LazyLock;

/// Maximum length of a DNS-1123 label (namespaces, tenant names, ...).
pub const DNS1123_LABEL_MAX: usize = 63;
/// Maximum length of a DNS-1123 subdomain (most object names).
pub const DNS1123_SUBDOMAIN_MAX: usize = 253;
/// Maximum length of a free-text description.
pub const DESCRIPTION_MAX: usize = 1024;
/// Maximum number of labels on one object.
pub const LABELS_MAX: usize = 64;

/// DNS domains whose label and annotation keys belong to the platform: Kubernetes
/// (`kubernetes.io`, `k8s.io`), Capsule (`capsule.clastix.io`, `projectcapsule.dev`),
/// KubeNova (`kubenova.io`) and KubeVela (`oam.dev`). A key is reserved when its prefix
/// (the part before `/`) is one of them or a subdomain of one (`pod-security.kubernetes.io`,
/// `app.oam.dev`). Users never set such keys: they would override what the platform
/// enforces through them (Pod Security admission levels, tenant membership, ownership).
///
/// The one definition of the reserved keys: [`reserved_key_prefix`] (the manager's and
/// the operator's validation), [`reserved_key_pattern`] (the CRDs' CEL rules and the
/// Capsule Tenant's forbidden namespace labels and annotations) are built from it.
///
/// ```
/// use kubenova_api::validate::{RESERVED_DOMAINS, reserved_key_prefix};
/// assert!(RESERVED_DOMAINS.contains(&"kubernetes.io"));
/// assert_eq!(reserved_key_prefix("pod-security.kubernetes.io/enforce"), Some("pod-security.kubernetes.io"));
/// assert_eq!(reserved_key_prefix("example.com/team"), None);
/// assert_eq!(reserved_key_prefix("tier"), None);
/// ```
pub const RESERVED_DOMAINS: &[&str] = &[
    "kubernetes.io",
    "k8s.io",
    "capsule.clastix.io",
    "projectcapsule.dev",
    "kubenova.io",
    "oam.dev",
];

/// The prefix of `key` when it is reserved (see [`RESERVED_DOMAINS`]), else `None`.
pub fn reserved_key_prefix(key: &str) -> Option<&str> {
    let (prefix, _) = key.split_once('/')?;
    RESERVED_DOMAINS
        .iter()
        .any(|d| {
            prefix == *d
                || prefix
                    .strip_suffix(d)
                    .is_some_and(|head| head.ends_with('.'))
        })
        .then_some(prefix)
}

/// A regular expression matching exactly the reserved keys (see [`RESERVED_DOMAINS`]),
/// in the syntax common to RE2 (Kubernetes CEL, Capsule), Go and the `regex` crate, and
/// without backslashes (so it can be written inside a CEL string literal as it is).
///
/// ```
/// use kubenova_api::validate::reserved_key_pattern;
/// let re = regex::Regex::new(&reserved_key_pattern()).unwrap();
/// assert!(re.is_match("app.oam.dev/publishVersion"));
/// assert!(!re.is_match("example.com/oam.dev"));
/// ```
pub fn reserved_key_pattern() -> String {
    let domains: Vec<String> = RESERVED_DOMAINS
        .iter()
        .map(|d| d.replace('.', "[.]"))
        .collect();
    format!("^([^/]*[.])?({})/", domains.join("|"))
}

/// Why a reserved key is refused, for a field violation.
fn reserved_key_reason(key: &str, prefix: &str) -> String {
    let name = key.rsplit('/').next().unwrap_or(key);
    format!(
        "the prefix {prefix:?} is reserved: keys under {} (and their subdomains) are set by Kubernetes, Capsule, KubeVela and KubeNova themselves; use a prefix of your own, e.g. \"example.com/{name}\"",
        RESERVED_DOMAINS.join(", ")
    )
}

#[allow(clippy::unwrap_used)] // constant patterns, covered by tests
static DNS_LABEL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$").unwrap());
#[allow(clippy::unwrap_used)]
static DNS_SUBDOMAIN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$").unwrap()
});
#[allow(clippy::unwrap_used)]
static QUALIFIED_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$").unwrap());
#[allow(clippy::unwrap_used)]
static LABEL_VALUE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$").unwrap());

/// One field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"field": "quotas.cpu", "reason": "invalid quantity \"4 cores\""}))]
pub struct FieldViolation {
    /// JSON path of the field, e.g. `owners[2]` or `quotas."requests.cpu"`.
    pub field: String,
    /// Why the value was rejected and what is accepted.
    pub reason: String,
}

/// All violations found in one input (KN-422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    /// Each failing field, in the order checked.
    pub violations: Vec<FieldViolation>,
}

impl ValidationError {
    /// A single-field error.
    pub fn single(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            violations: vec![FieldViolation {
                field: field.into(),
                reason: reason.into(),
            }],
        }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.violations.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", v.field, v.reason)?;
        }
        Ok(())
    }
}

/// Types that can check themselves.
pub trait Validate {
    /// Returns every violation, or `Ok(())`.
    fn validate(&self) -> Result<(), ValidationError>;
}

/// Collects violations; see the module docs.
#[derive(Debug, Default)]
pub struct Validator {
    violations: Vec<FieldViolation>,
}

impl Validator {
    /// An empty validator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a violation.
    pub fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.violations.push(FieldViolation {
            field: field.into(),
            reason: reason.into(),
        });
    }

    /// True when nothing failed so far.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// `Ok(())` or every violation collected.
    pub fn finish(self) -> Result<(), ValidationError> {
        if self.violations.is_empty() {
            Ok(())
        } else {
            Err(ValidationError {
                violations: self.violations,
            })
        }
    }

    /// A DNS-1123 label: lower-case alphanumerics and `-`, starting and ending with an
    /// alphanumeric, at most 63 characters (namespaces, tenants, projects).
    pub fn dns_label(&mut self, field: &str, value: &str) -> bool {
        if let Some(reason) = dns_label_problem(value) {
            self.push(field, reason);
            return false;
        }
        true
    }

    /// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
    pub fn dns_subdomain(&mut self, field: &str, value: &str) -> bool {
        let reason = if value.is_empty() {
            Some("must not be empty".to_string())
        } else if value.len() > DNS1123_SUBDOMAIN_MAX {
            Some(format!(
                "must be at most {DNS1123_SUBDOMAIN_MAX} characters (got {})",
                value.len()
            ))
        } else if !DNS_SUBDOMAIN.is_match(value) {
            Some(format!(
                "{value:?} is not a DNS-1123 subdomain: use lower-case letters, digits, '-' and '.', starting and ending with a letter or digit"
            ))
        } else {
            None
        };
        match reason {
            Some(r) => {
                self.push(field, r);
                false
            }
            None => true,
        }
    }

    /// A non-empty string of at most `max` characters.
    pub fn required_text(&mut self, field: &str, value: &str, max: usize) -> bool {
        if value.trim().is_empty() {
            self.push(field, "must not be empty");
            false
        } else {
            self.max_len(field, value, max)
        }
    }

    /// A string of at most `max` characters (bytes of UTF-8 are not counted).
    pub fn max_len(&mut self, field: &str, value: &str, max: usize) -> bool {
        let n = value.chars().count();
        if n > max {
            self.push(field, format!("must be at most {max} characters (got {n})"));
            return false;
        }
        if value
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            self.push(field, "must not contain control characters");
            return false;
        }
        true
    }

    /// A list of at most `max` items.
    pub fn max_items<T>(&mut self, field: &str, items: &[T], max: usize) -> bool {
        if items.len() > max {
            self.push(
                field,
                format!("must have at most {max} items (got {})", items.len()),
            );
            return false;
        }
        true
    }

    /// A Kubernetes resource quantity; returns it parsed when valid.
    pub fn quantity(&mut self, field: &str, value: &str) -> Option<Quantity> {
        match Quantity::parse(value) {
            Ok(q) => Some(q),
            Err(e) => {
                self.push(field, format!("invalid quantity {value:?}: {e}"));
                None
            }
        }
    }

    /// A Kubernetes label key: optional DNS-subdomain prefix and `/`, then a qualified
    /// name of at most 63 characters.
    pub fn label_key(&mut self, field: &str, key: &str) -> bool {
        if let Some(reason) = label_key_problem(key) {
            self.push(field, reason);
            return false;
        }
        true
    }

    /// A Kubernetes label value: at most 63 characters, alphanumerics, `-`, `_`, `.`,
    /// starting and ending with an alphanumeric (may be empty).
    pub fn label_value(&mut self, field: &str, value: &str) -> bool {
        if let Some(reason) = label_value_problem(value) {
            self.push(field, reason);
            return false;
        }
        true
    }

    /// A label map: keys (none of them reserved, see [`RESERVED_DOMAINS`]), values and size.
    pub fn labels(&mut self, field: &str, labels: &BTreeMap<String, String>) -> bool {
        if labels.len() > LABELS_MAX {
            self.push(
                field,
                format!(
                    "must have at most {LABELS_MAX} entries (got {})",
                    labels.len()
                ),
            );
            return false;
        }
        let before = self.violations.len();
        for (k, v) in labels {
            let path = format!("{field}.{}", quote_key(k));
            if self.label_key(&path, k) {
                self.not_reserved(&path, k);
            }
            self.label_value(&path, v);
        }
        self.violations.len() == before
    }

    /// A user-supplied label or annotation key outside the reserved prefixes
    /// ([`RESERVED_DOMAINS`]).
    pub fn not_reserved(&mut self, field: &str, key: &str) -> bool {
        match reserved_key_prefix(key) {
            Some(prefix) => {
                self.push(field, reserved_key_reason(key, prefix));
                false
            }
            None => true,
        }
    }
}

/// `Some(reason)` when a free-form JSON value holds a NUL character in a string or key
/// (databases cannot store it; nothing legitimate needs it).
///
/// ```
/// use kubenova_api::validate::json_text_problem;
/// assert!(json_text_problem(&serde_json::json!({"a": ["ok"]})).is_none());
/// assert!(json_text_problem(&serde_json::json!({"a": ["b\u{0}"]})).is_some());
/// ```
pub fn json_text_problem(value: &serde_json::Value) -> Option<String> {
    const MSG: &str = "must not contain NUL characters";
    match value {
        serde_json::Value::String(s) if s.contains('\0') => Some(MSG.into()),
        serde_json::Value::Array(items) => items.iter().find_map(json_text_problem),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                Some(MSG.into())
            } else {
                json_text_problem(v)
            }
        }),
        _ => None,
    }
}

/// `Some(reason)` when `value` is not a DNS-1123 label.
pub fn dns_label_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        Some("must not be empty".to_string())
    } else if value.len() > DNS1123_LABEL_MAX {
        Some(format!(
            "must be at most {DNS1123_LABEL_MAX} characters (got {})",
            value.len()
        ))
    } else if !DNS_LABEL.is_match(value) {
        Some(format!(
            "{value:?} is not a DNS-1123 label: use lower-case letters, digits and '-', starting and ending with a letter or digit"
        ))
    } else {
        None
    }
}

/// `Some(reason)` when `key` is not a Kubernetes label key (an optional DNS-1123 subdomain
/// prefix and `/`, then a name of 1-63 letters, digits, `-`, `_` and `.`, starting and
/// ending with a letter or digit).
///
/// ```
/// use kubenova_api::validate::label_key_problem;
/// assert!(label_key_problem("example.com/tier").is_none());
/// assert!(label_key_problem("-tier").is_some());
/// ```
pub fn label_key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && (p.is_empty() || p.len() > DNS1123_SUBDOMAIN_MAX || !DNS_SUBDOMAIN.is_match(p))
    {
        return Some(format!(
            "label key prefix {p:?} must be a DNS-1123 subdomain"
        ));
    }
    if name.is_empty() || name.len() > 63 || !QUALIFIED_NAME.is_match(name) {
        return Some(format!(
            "label key {key:?}: the name part must be 1-63 characters of letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        ));
    }
    None
}

/// `Some(reason)` when `value` is not a Kubernetes label value (at most 63 letters,
/// digits, `-`, `_` and `.`, starting and ending with a letter or digit; may be empty).
///
/// ```
/// use kubenova_api::validate::label_value_problem;
/// assert!(label_value_problem("gold").is_none());
/// assert!(label_value_problem("").is_none());
/// assert!(label_value_problem("gold!").is_some());
/// ```
pub fn label_value_problem(value: &str) -> Option<String> {
    if value.len() > 63 || !LABEL_VALUE.is_match(value) {
        return Some(format!(
            "{value:?} is not a valid label value: at most 63 characters of letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        ));
    }
    None
}

/// Quotes a map key for a field path when it is not a plain identifier.
pub fn quote_key(k: &str) -> String {
    if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        k.to_string()
    } else {
        format!("{k:?}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "acme", "a-1", "0abc", &"a".repeat(63)] {
            assert!(dns_label_problem(ok).is_none(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64), "ä"] {
            assert!(dns_label_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn subdomains_and_labels() {
        let mut v = Validator::new();
        assert!(v.dns_subdomain("n", "a.b-c.d"));
        assert!(!v.dns_subdomain("n", "a..b"));
        assert!(v.label_key("k", "kubenova.io/tenant"));
        assert!(v.label_key("k", "tier"));
        assert!(!v.label_key("k", "Bad_Prefix/x"));
        assert!(!v.label_key("k", "a/"));
        assert!(v.label_value("v", ""));
        assert!(v.label_value("v", "gold.1_x"));
        assert!(!v.label_value("v", "-x"));
        let err = v.finish().unwrap_err();
        assert_eq!(err.violations.len(), 4);
    }

    #[test]
    fn label_map_paths_are_quoted() {
        let mut v = Validator::new();
        let mut m = BTreeMap::new();
        m.insert("example.com/name".to_string(), "bad value".to_string());
        v.labels("labels", &m);
        let err = v.finish().unwrap_err();
        assert_eq!(err.violations[0].field, "labels.\"example.com/name\"");
    }

    #[test]
    fn reserved_label_keys_are_refused_with_the_field_named() {
        for key in [
            "pod-security.kubernetes.io/enforce",
            "kubernetes.io/metadata.name",
            "k8s.io/x",
            "node-role.k8s.io/worker",
            "capsule.clastix.io/tenant",
            "projectcapsule.dev/tenant",
            "x.projectcapsule.dev/y",
            "kubenova.io/tenant",
            "agent.kubenova.io/id",
            "oam.dev/x",
            "app.oam.dev/publishVersion",
        ] {
            let mut v = Validator::new();
            let m = BTreeMap::from([(key.to_string(), "v".to_string())]);
            assert!(!v.labels("labels", &m), "{key} must be refused");
            let err = v.finish().unwrap_err();
            assert_eq!(err.violations.len(), 1, "{key}: {err}");
            assert_eq!(err.violations[0].field, format!("labels.{key:?}"));
            let prefix = key.split_once('/').unwrap().0;
            assert!(
                err.violations[0]
                    .reason
                    .contains(&format!("the prefix {prefix:?} is reserved")),
                "{err}"
            );
        }
        for key in [
            "tier",
            "example.com/team",
            "kubernetes.io.example.com/x",
            "mykubenova.io/x",
            "notoam.dev/x",
            "k8s.io.evil/x",
        ] {
            let mut v = Validator::new();
            let m = BTreeMap::from([(key.to_string(), "v".to_string())]);
            assert!(v.labels("labels", &m), "{key} is a user key");
        }
    }

    #[test]
    fn the_reserved_pattern_matches_exactly_the_reserved_keys() {
        let pattern = reserved_key_pattern();
        assert!(!pattern.contains('\\'), "usable in a CEL string: {pattern}");
        let re = Regex::new(&pattern).unwrap();
        for key in [
            "pod-security.kubernetes.io/enforce",
            "kubernetes.io/metadata.name",
            "node-role.k8s.io/worker",
            "capsule.clastix.io/tenant",
            "a.b.projectcapsule.dev/x",
            "kubenova.io/owner",
            "app.oam.dev/publishVersion",
            "tier",
            "example.com/team",
            "kubernetes.io.example.com/x",
            "mykubenova.io/x",
            "notoam.dev/x",
            "example.com/kubernetes.io",
            "k8s.io.evil/x",
        ] {
            assert_eq!(
                re.is_match(key),
                reserved_key_prefix(key).is_some(),
                "{key}"
            );
        }
    }

    #[test]
    fn lengths_and_control_chars() {
        let mut v = Validator::new();
        assert!(v.max_len("d", "héllo", 5));
        assert!(!v.max_len("d", "héllo!", 5));
        assert!(!v.max_len("d", "a\u{0}b", 5));
        assert!(!v.required_text("d", "  ", 5));
        assert!(!v.max_items("l", &[1, 2, 3], 2));
        assert_eq!(v.finish().unwrap_err().violations.len(), 4);
    }
}
