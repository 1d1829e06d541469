//! Decoding of Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`).
//!
//! client-go's generated clientsets (kubectl's `create namespace|secret|configmap|...`,
//! Helm's release storage, `kubectl create token`) always send built-in kinds as protobuf
//! and never fall back to JSON: client-go only falls back after a 415 for CBOR, not for
//! protobuf. So the testkit decodes these bodies into the JSON the rest of the server
//! handles. Responses stay JSON: those clients send `Accept:
//! application/vnd.kubernetes.protobuf, application/json` and decode either.
//!
//! The wire format is the Kubernetes envelope: the magic `k8s\0`, then a `runtime.Unknown`
//! message whose `typeMeta` names the apiVersion and kind and whose `raw` holds the
//! object's own message. The field table (`upstream/protobuf/fields.json`) is generated
//! from the Kubernetes `generated.proto` files (through the `k8s-pb` crate) by
//! `upstream/protobuf/generate.py`, with JSON names taken from the 1.36 schemas.

use std::collections::HashMap;
use std::sync::LazyLock;

use base64::Engine;
use serde_json::{Map, Value, json};

/// The media type of Kubernetes protobuf bodies.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";
const UNKNOWN: &str = "io.k8s.apimachinery.pkg.runtime.Unknown";

/// One field of a message: tag, JSON name, wire kind, repeated, referenced message.
#[derive(Debug, Clone)]
struct Field {
    tag: u64,
    json: String,
    kind: String,
    repeated: bool,
    message: Option<String>,
    /// A Go struct embedded with `json:",inline"`: its fields go into the parent.
    inline: bool,
}

static FIELDS: LazyLock<HashMap<String, Vec<Field>>> = LazyLock::new(|| {
    let raw: HashMap<String, Vec<Vec<Value>>> =
        serde_json::from_str(include_str!("../upstream/protobuf/fields.json"))
            .expect("embedded protobuf field table is valid JSON");
    raw.into_iter()
        .map(|(name, fields)| {
            let fields = fields
                .into_iter()
                .map(|f| Field {
                    tag: f[0].as_u64().unwrap_or_default(),
                    json: f[1].as_str().unwrap_or_default().to_owned(),
                    kind: f[2].as_str().unwrap_or_default().to_owned(),
                    repeated: f.get(3).and_then(Value::as_bool).unwrap_or(false),
                    message: f.get(4).and_then(Value::as_str).map(str::to_owned),
                    inline: f.get(5).and_then(Value::as_bool).unwrap_or(false),
                })
                .collect();
            (name, fields)
        })
        .collect()
});

/// Why a protobuf body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The body is not a well-formed Kubernetes protobuf envelope.
    #[error("invalid protobuf body: {0}")]
    Malformed(String),
    /// The envelope names a kind the testkit has no protobuf table for.
    #[error(
        "the testkit cannot decode {api_version:?} {kind:?} from protobuf: it decodes only built-in Kubernetes kinds; send application/json instead"
    )]
    UnknownKind {
        /// The envelope's apiVersion.
        api_version: String,
        /// The envelope's kind.
        kind: String,
    },
}

/// True when `media_type` (without parameters) is the Kubernetes protobuf media type.
pub fn is_protobuf(media_type: &str) -> bool {
    media_type.eq_ignore_ascii_case(MEDIA_TYPE)
}

/// Decodes a Kubernetes protobuf envelope into the object's JSON form (with `apiVersion`
/// and `kind` from the envelope).
pub fn decode(body: &[u8]) -> Result<Value, DecodeError> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| DecodeError::Malformed("missing the k8s\\0 envelope prefix".into()))?;
    let unknown = decode_message(rest, UNKNOWN, 0)?;
    let api_version = unknown
        .pointer("/typeMeta/apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let kind = unknown
        .pointer("/typeMeta/kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let raw = unknown
        .get("raw")
        .and_then(Value::as_str)
        .map(|b| base64::engine::general_purpose::STANDARD.decode(b))
        .transpose()
        .map_err(|e| DecodeError::Malformed(e.to_string()))?
        .unwrap_or_default();
    let Some(message) = message_for(&api_version, &kind) else {
        return Err(DecodeError::UnknownKind { api_version, kind });
    };
    let obj = decode_message(&raw, &message, 0)?;
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!(api_version));
    out.insert("kind".into(), json!(kind));
    if let Value::Object(fields) = obj {
        out.extend(fields);
    }
    Ok(Value::Object(out))
}

/// The message of a built-in kind: `io.k8s.api.<package>.<version>.<Kind>`, or an
/// apimachinery kind such as `DeleteOptions`.
fn message_for(api_version: &str, kind: &str) -> Option<String> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    if version.is_empty() || kind.is_empty() {
        return None;
    }
    let suffix = format!(".{version}.{kind}");
    let mut candidates: Vec<&String> = FIELDS.keys().filter(|k| k.ends_with(&suffix)).collect();
    candidates.sort();
    if candidates.len() <= 1 {
        return candidates.first().map(|s| (*s).clone());
    }
    let package = if group.is_empty() {
        "core"
    } else {
        group.split('.').next().unwrap_or(group)
    };
    let wanted = format!("io.k8s.api.{package}{suffix}");
    candidates
        .iter()
        .find(|c| ***c == wanted)
        .or_else(|| {
            candidates
                .iter()
                .find(|c| c.starts_with("io.k8s.apimachinery.pkg.apis.meta."))
        })
        .map(|s| (*s).clone())
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| DecodeError::Malformed("truncated varint".into()))?;
            self.pos += 1;
            out |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err(DecodeError::Malformed("varint longer than 10 bytes".into()))
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| DecodeError::Malformed("truncated field".into()))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

const MAX_DEPTH: usize = 64;

fn decode_message(buf: &[u8], message: &str, depth: usize) -> Result<Value, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::Malformed("message nested too deeply".into()));
    }
    let fields = FIELDS
        .get(message)
        .ok_or_else(|| DecodeError::Malformed(format!("no field table for {message}")))?;
    let mut out = Map::new();
    let mut r = Reader { buf, pos: 0 };
    while !r.done() {
        let key = r.varint()?;
        let (tag, wire) = (key >> 3, key & 7);
        let field = fields.iter().find(|f| f.tag == tag);
        let value = match wire {
            0 => Wire::Varint(r.varint()?),
            1 => Wire::Fixed(r.bytes(8)?),
            2 => {
                let n = usize::try_from(r.varint()?)
                    .map_err(|_| DecodeError::Malformed("length overflow".into()))?;
                Wire::Bytes(r.bytes(n)?)
            }
            5 => Wire::Fixed(r.bytes(4)?),
            w => return Err(DecodeError::Malformed(format!("unsupported wire type {w}"))),
        };
        let Some(field) = field else { continue };
        let values = field_values(field, value, depth)?;
        if field.repeated {
            let slot = out
                .entry(field.json.clone())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(a) = slot {
                a.extend(values);
            }
        } else if field.kind.starts_with("map_") {
            let slot = out
                .entry(field.json.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if let (Value::Object(m), Some(Value::Object(entry))) =
                (slot, values.into_iter().next())
            {
                m.extend(entry);
            }
        } else if let Some(v) = values.into_iter().next() {
            match v {
                Value::Object(inner) if field.inline => out.extend(inner),
                v => {
                    out.insert(field.json.clone(), v);
                }
            }
        }
    }
    // Go's gogo-protobuf writes every non-pointer field, so an absent value in JSON
    // (`omitempty`) arrives as "" or an empty message: drop those.
    out.retain(|_, v| match v {
        Value::String(s) => !s.is_empty(),
        Value::Object(m) => !m.is_empty(),
        Value::Null => false,
        _ => true,
    });
    Ok(special(message, Value::Object(out)))
}

enum Wire<'a> {
    Varint(u64),
    Fixed(&'a [u8]),
    Bytes(&'a [u8]),
}

fn field_values(field: &Field, value: Wire<'_>, depth: usize) -> Result<Vec<Value>, DecodeError> {
    let scalar = |v: u64| -> Value {
        match field.kind.as_str() {
            "bool" => json!(v != 0),
            // int32 is sign-extended to 64 bits on the wire.
            "int32" => json!(v as i64 as i32),
            _ => json!(v as i64),
        }
    };
    Ok(match (field.kind.as_str(), value) {
        ("string", Wire::Bytes(b)) => {
            vec![json!(std::str::from_utf8(b).map_err(|_| {
                DecodeError::Malformed(format!("{} is not UTF-8", field.json))
            })?)]
        }
        ("bytes", Wire::Bytes(b)) => {
            vec![json!(base64::engine::general_purpose::STANDARD.encode(b))]
        }
        ("message", Wire::Bytes(b)) => {
            let m = field.message.as_deref().unwrap_or_default();
            vec![decode_message(b, m, depth + 1)?]
        }
        (k, Wire::Bytes(b)) if k.starts_with("map_") => vec![map_entry(field, b, depth)?],
        ("double", Wire::Fixed(b)) => {
            let arr: [u8; 8] = b
                .try_into()
                .map_err(|_| DecodeError::Malformed("double is not 8 bytes".into()))?;
            vec![json!(f64::from_le_bytes(arr))]
        }
        ("int32" | "int64" | "bool", Wire::Varint(v)) => vec![scalar(v)],
        // Packed repeated scalars.
        ("int32" | "int64" | "bool", Wire::Bytes(b)) => {
            let mut r = Reader { buf: b, pos: 0 };
            let mut out = Vec::new();
            while !r.done() {
                out.push(scalar(r.varint()?));
            }
            out
        }
        (kind, _) => {
            return Err(DecodeError::Malformed(format!(
                "field {} ({kind}) has an unexpected wire type",
                field.json
            )));
        }
    })
}

/// A map entry message (key = 1, value = 2) as a one-key JSON object.
fn map_entry(field: &Field, buf: &[u8], depth: usize) -> Result<Value, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    let (mut key, mut value) = (String::new(), None);
    while !r.done() {
        let k = r.varint()?;
        if k & 7 != 2 {
            return Err(DecodeError::Malformed(format!(
                "map {} has a non length-delimited entry",
                field.json
            )));
        }
        let n = usize::try_from(r.varint()?)
            .map_err(|_| DecodeError::Malformed("length overflow".into()))?;
        let b = r.bytes(n)?;
        match k >> 3 {
            1 => {
                key = std::str::from_utf8(b)
                    .map_err(|_| DecodeError::Malformed("map key is not UTF-8".into()))?
                    .to_owned();
            }
            2 => {
                value = Some(match field.kind.as_str() {
                    "map_string" => json!(
                        std::str::from_utf8(b)
                            .map_err(|_| DecodeError::Malformed("map value is not UTF-8".into()))?
                    ),
                    "map_bytes" => json!(base64::engine::general_purpose::STANDARD.encode(b)),
                    _ => {
                        decode_message(b, field.message.as_deref().unwrap_or_default(), depth + 1)?
                    }
                });
            }
            _ => {}
        }
    }
    let value = value.unwrap_or_else(|| match field.kind.as_str() {
        "map_message" => special(field.message.as_deref().unwrap_or_default(), json!({})),
        _ => json!(""),
    });
    Ok(json!({ key: value }))
}

/// Messages whose JSON form is not an object: times, quantities, int-or-string, raw JSON.
fn special(message: &str, v: Value) -> Value {
    let get = |k: &str| v.get(k).cloned();
    match message {
        "io.k8s.apimachinery.pkg.apis.meta.v1.Time"
        | "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime" => {
            let secs = get("seconds").and_then(|s| s.as_i64()).unwrap_or(0);
            let nanos = get("nanos").and_then(|s| s.as_i64()).unwrap_or(0);
            if secs == 0 && nanos == 0 {
                return Value::Null;
            }
            let Ok(t) = time::OffsetDateTime::from_unix_timestamp(secs) else {
                return Value::Null;
            };
            let base = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            );
            if message.ends_with("MicroTime") {
                json!(format!("{base}.{:06}Z", nanos / 1000))
            } else {
                json!(format!("{base}Z"))
            }
        }
        "io.k8s.apimachinery.pkg.api.resource.Quantity" => get("string").unwrap_or(Value::Null),
        "io.k8s.apimachinery.pkg.util.intstr.IntOrString" => {
            if get("type").and_then(|t| t.as_i64()) == Some(1) {
                get("strVal").unwrap_or_else(|| json!(""))
            } else {
                get("intVal").unwrap_or_else(|| json!(0))
            }
        }
        "io.k8s.apimachinery.pkg.runtime.RawExtension"
        | "io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1"
        | "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSON" => get("raw")
            .and_then(|r| r.as_str().map(str::to_owned))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null),
        "io.k8s.apimachinery.pkg.apis.meta.v1.Duration" => {
            let nanos = get("duration").and_then(|d| d.as_i64()).unwrap_or(0);
            json!(go_duration(nanos))
        }
        _ => v,
    }
}

/// Go's `time.Duration.String()` for whole seconds and larger (what the API uses).
fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let total = nanos as f64 / 1e9;
    let (h, rem) = ((total / 3600.0).floor(), total % 3600.0);
    let (m, s) = ((rem / 60.0).floor(), rem % 60.0);
    let s = if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s}")
    };
    if h > 0.0 {
        format!("{h:.0}h{m:.0}m{s}s")
    } else if m > 0.0 {
        format!("{m:.0}m{s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn field(tag: u64, bytes: &[u8], out: &mut Vec<u8>) {
        varint(tag << 3 | 2, out);
        varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }

    /// The body kubectl 1.32 sends for `kubectl create namespace x` (captured with -v=8).
    const CREATE_NAMESPACE_X: &[u8] = &[
        0x6b, 0x38, 0x73, 0x00, 0x0a, 0x0f, 0x0a, 0x02, 0x76, 0x31, 0x12, 0x09, 0x4e, 0x61, 0x6d,
        0x65, 0x73, 0x70, 0x61, 0x63, 0x65, 0x12, 0x19, 0x0a, 0x11, 0x0a, 0x01, 0x78, 0x12, 0x00,
        0x1a, 0x00, 0x22, 0x00, 0x2a, 0x00, 0x32, 0x00, 0x38, 0x00, 0x42, 0x00, 0x12, 0x00, 0x1a,
        0x02, 0x0a, 0x00, 0x1a, 0x00, 0x22, 0x00,
    ];

    #[test]
    fn decodes_kubectl_create_namespace() {
        let v = decode(CREATE_NAMESPACE_X).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "generation": 0}})
        );
    }

    #[test]
    fn decodes_secret_maps_bytes_and_times() {
        let mut meta = Vec::new();
        field(1, b"s", &mut meta);
        field(3, b"ns", &mut meta);
        let mut label = Vec::new();
        field(1, b"owner", &mut label);
        field(2, b"helm", &mut label);
        field(11, &label, &mut meta);
        let mut ts = Vec::new();
        varint(8, &mut ts); // seconds, varint
        varint(1_700_000_000, &mut ts);
        field(8, &ts, &mut meta);
        let mut secret = Vec::new();
        field(1, &meta, &mut secret);
        let mut entry = Vec::new();
        field(1, b"release", &mut entry);
        field(2, &[0, 159, 146, 150], &mut entry);
        field(2, &entry, &mut secret);
        field(3, b"helm.sh/release.v1", &mut secret);
        let mut tm = Vec::new();
        field(1, b"v1", &mut tm);
        field(2, b"Secret", &mut tm);
        let mut unknown = Vec::new();
        field(1, &tm, &mut unknown);
        field(2, &secret, &mut unknown);
        let mut body = MAGIC.to_vec();
        body.extend(unknown);
        let v = decode(&body).unwrap();
        assert_eq!(
            v,
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "s", "namespace": "ns", "labels": {"owner": "helm"},
                             "creationTimestamp": "2023-11-14T22:13:20Z"},
                "data": {"release": "AJ+Slg=="},
                "type": "helm.sh/release.v1",
            })
        );
    }

    #[test]
    fn picks_the_message_of_a_group() {
        assert_eq!(
            message_for("apps/v1", "Deployment").as_deref(),
            Some("io.k8s.api.apps.v1.Deployment")
        );
        assert_eq!(
            message_for("rbac.authorization.k8s.io/v1", "Role").as_deref(),
            Some("io.k8s.api.rbac.v1.Role")
        );
        assert_eq!(
            message_for("v1", "DeleteOptions").as_deref(),
            Some("io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions")
        );
        assert_eq!(message_for("capsule.clastix.io/v1beta2", "Tenant"), None);
    }

    #[test]
    fn refuses_what_it_cannot_decode() {
        assert!(matches!(decode(b"{}"), Err(DecodeError::Malformed(_))));
        let mut tm = Vec::new();
        field(1, b"capsule.clastix.io/v1beta2", &mut tm);
        field(2, b"Tenant", &mut tm);
        let mut body = MAGIC.to_vec();
        field(1, &tm, &mut body);
        assert!(matches!(
            decode(&body),
            Err(DecodeError::UnknownKind { .. })
        ));
        let mut truncated = CREATE_NAMESPACE_X.to_vec();
        truncated.truncate(20);
        assert!(matches!(decode(&truncated), Err(DecodeError::Malformed(_))));
    }

    /// The table agrees with the Kubernetes 1.36 definitions: every field of a message that
    /// has a definition is one of its properties (or inlined into it), every referenced
    /// message is in the table, and every kind the testkit serves can be decoded.
    #[test]
    fn the_field_table_matches_the_definitions() {
        let mut checked = 0;
        for (name, fields) in FIELDS.iter() {
            for f in fields {
                if let Some(m) = &f.message {
                    assert!(FIELDS.contains_key(m), "{name}.{} -> missing {m}", f.json);
                }
            }
            let Some(props) = crate::openapi::definition(name)
                .and_then(|d| d.get("properties"))
                .and_then(Value::as_object)
            else {
                continue;
            };
            checked += 1;
            for f in fields {
                // workloadRef: a 1.36 alpha field the published schema leaves out.
                if f.inline || f.json == "workloadRef" {
                    continue;
                }
                assert!(
                    props.contains_key(&f.json),
                    "{name} has no property {}",
                    f.json
                );
            }
        }
        assert!(checked > 600, "only {checked} messages have a definition");
        for t in crate::registry::builtins() {
            assert!(
                message_for(&t.api_version(), &t.kind).is_some(),
                "no protobuf table for {} {}",
                t.api_version(),
                t.kind
            );
        }
    }

    #[test]
    fn inlined_structs_land_in_the_parent() {
        // ConfigMapEnvSource{localObjectReference{name: "cfg"}, optional: true}
        let mut lor = Vec::new();
        field(1, b"cfg", &mut lor);
        let mut src = Vec::new();
        field(1, &lor, &mut src);
        src.extend([2 << 3, 1]); // optional = true (varint)
        let v = decode_message(&src, "io.k8s.api.core.v1.ConfigMapEnvSource", 0).unwrap();
        assert_eq!(v, json!({"name": "cfg", "optional": true}));
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(go_duration(5_000_000_000), "5s");
    }
}
