//! The KN error catalog and the one error body used everywhere.
//!
//! Every failure KubeNova reports to a client carries a stable `code` (`KN-404`, ...)
//! from [`ErrorCode`], a human `message`, optional structured `details`, and the
//! `requestId` of the call. The body is flat, as in the 0.1.3 contract, so existing
//! clients keep working:
//!
//! ```
//! use kubenova_api::error::{ErrorCode, KnError};
//!
//! let err = KnError::not_found("tenant", "acme");
//! assert_eq!(err.code, ErrorCode::NotFound);
//! assert_eq!(err.code.http_status(), 404);
//! let body = err.to_body(Some("req-1".into()));
//! let json = serde_json::to_value(&body).unwrap();
//! assert_eq!(json["code"], "KN-404");
//! assert_eq!(json["message"], "tenant \"acme\" not found");
//! assert_eq!(json["requestId"], "req-1");
//! ```

use crate::validate::ValidationError;
use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = ($code:literal, $status:literal, $title:literal, $doc_line:literal) ),+ $(,)?) => {
        /// A stable KubeNova error code. The code string and HTTP status of a variant
        /// never change once released; clients may match on them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum ErrorCode {
            $( $(#[$doc])* #[serde(rename = $code)] $variant, )+
        }

        impl ErrorCode {
            /// Every code in the catalog, in catalog order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),+];

            /// The wire code, e.g. `"KN-404"`.
            pub fn as_str(&self) -> &'static str {
                match self { $(ErrorCode::$variant => $code),+ }
            }

            /// The HTTP status this code is returned with.
            pub fn http_status(&self) -> u16 {
                match self { $(ErrorCode::$variant => $status),+ }
            }

            /// A short title, e.g. `"Not found"`.
            pub fn title(&self) -> &'static str {
                match self { $(ErrorCode::$variant => $title),+ }
            }

            /// One line on when the code is returned and what the client should do.
            pub fn doc(&self) -> &'static str {
                match self { $(ErrorCode::$variant => $doc_line),+ }
            }
        }
    };
}

error_codes! {
    /// The request is malformed: invalid JSON, a path id that is not a UUID, a bad query parameter.
    BadRequest = ("KN-400", 400, "Bad request", "The request could not be parsed: malformed JSON, a path id that is not a UUID, or a bad query parameter. Fix the request; retrying it unchanged will fail again."),
    /// No credentials, or credentials that are expired, forged or for another audience.
    Unauthenticated = ("KN-401", 401, "Unauthenticated", "No bearer token, or a token that is expired, not yet valid, badly signed, or issued for another issuer or audience. Obtain a fresh token."),
    /// Authenticated but not allowed.
    Forbidden = ("KN-403", 403, "Forbidden", "The caller's role or tenant/project scope does not allow this operation."),
    /// The resource does not exist (or is outside the caller's scope).
    NotFound = ("KN-404", 404, "Not found", "The resource does not exist, or it is outside the caller's tenant/project scope; the route may also be unknown."),
    /// Wrong HTTP method for the route.
    MethodNotAllowed = ("KN-405", 405, "Method not allowed", "The route exists but does not accept this HTTP method; the `Allow` header lists the ones it does."),
    /// The request took too long.
    Timeout = ("KN-408", 408, "Request timeout", "The server gave up on the request after the configured timeout; it is safe to retry with the same Idempotency-Key."),
    /// A uniqueness rule or the current state prevents the change.
    Conflict = ("KN-409", 409, "Conflict", "The change conflicts with existing state: a name already taken, a parent that still has children, or a cluster not in the state the operation needs."),
    /// `If-Match` / version check failed.
    PreconditionFailed = ("KN-412", 412, "Precondition failed", "The resource changed since it was read (stale ETag or version). Re-read it and apply the change again."),
    /// The body exceeds the size limit.
    PayloadTooLarge = ("KN-413", 413, "Payload too large", "The request body exceeds the configured limit (1 MiB by default)."),
    /// The body's media type is not one the route accepts.
    UnsupportedMediaType = ("KN-415", 415, "Unsupported media type", "The request body must be sent with `Content-Type: application/json` (a cluster's kubeconfig may also be uploaded as `application/yaml`); the message names what the route accepts."),
    /// Semantically invalid input; `details.violations` lists each field and why.
    Validation = ("KN-422", 422, "Validation failed", "One or more fields are invalid; `details.violations` lists each field path and the reason. Nothing was changed."),
    /// Too many requests.
    RateLimited = ("KN-429", 429, "Too many requests", "The caller exceeded its rate limit; wait for the number of seconds in `Retry-After`."),
    /// An unexpected server-side failure; details go to the server log only.
    Internal = ("KN-500", 500, "Internal error", "An unexpected server failure. Details are in the server log under the request id; report it with that id."),
    /// A dependency (the store, a cluster) is unavailable.
    Unavailable = ("KN-503", 503, "Service unavailable", "A dependency such as the database is unavailable; retry later. `details.dependency` names it."),
}

// Written by hand: the per-variant `serde(rename)` comes out of a `macro_rules!`, where
// utoipa's derive would publish the Rust variant names instead of the wire codes.
impl utoipa::PartialSchema for ErrorCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
        ObjectBuilder::new()
            .schema_type(SchemaType::new(Type::String))
            .description(Some(
                "A stable KubeNova error code; see the KN error catalog.",
            ))
            .enum_values(Some(ErrorCode::ALL.iter().map(|c| c.as_str())))
            .examples([serde_json::json!("KN-404")])
            .build()
            .into()
    }
}

impl utoipa::ToSchema for ErrorCode {}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error body returned by every failing KubeNova API call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "code": "KN-422",
    "message": "validation failed: name: must be a DNS-1123 label",
    "details": {"violations": [{"field": "name", "reason": "must be a DNS-1123 label"}]},
    "requestId": "9b2f0c9e-3c1c-4d0e-a1f4-1a2b3c4d5e6f"
}))]
pub struct ErrorBody {
    /// Stable error code from the KN catalog.
    pub code: ErrorCode,
    /// Human-readable description of what was wrong and how to fix it.
    pub message: String,
    /// Structured details (e.g. `violations` for KN-422, `dependency` for KN-503).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
    /// The request id of the call (also in the `X-Request-Id` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// An error carrying a KN code, produced by any KubeNova layer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct KnError {
    /// The catalog code.
    pub code: ErrorCode,
    /// Client-safe message.
    pub message: String,
    /// Client-safe structured details.
    pub details: Option<serde_json::Value>,
}

impl KnError {
    /// Builds an error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
        }
    }

    /// Attaches structured details.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// `KN-404` for a resource kind and its name or id.
    pub fn not_found(kind: &str, id: impl fmt::Display) -> Self {
        Self::new(ErrorCode::NotFound, format!("{kind} \"{id}\" not found"))
    }

    /// `KN-409` with a message.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    /// `KN-412` for a stale version.
    pub fn precondition_failed(
        kind: &str,
        id: impl fmt::Display,
        expected: i64,
        actual: i64,
    ) -> Self {
        Self::new(
            ErrorCode::PreconditionFailed,
            format!(
                "{kind} \"{id}\" is at version {actual}, not {expected}: it changed since you read it; re-read and retry"
            ),
        )
        .with_details(serde_json::json!({"expectedVersion": expected, "currentVersion": actual}))
    }

    /// `KN-400` with a message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// `KN-503` naming the dependency that is down.
    pub fn unavailable(dependency: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
            .with_details(serde_json::json!({"dependency": dependency}))
    }

    /// `KN-500`; the message must already be client-safe.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// The body to send to a client.
    pub fn to_body(&self, request_id: Option<String>) -> ErrorBody {
        ErrorBody {
            code: self.code,
            message: self.message.clone(),
            details: self.details.clone(),
            request_id,
        }
    }
}

impl From<ValidationError> for KnError {
    fn from(err: ValidationError) -> Self {
        let details = serde_json::json!({ "violations": err.violations });
        KnError::new(ErrorCode::Validation, format!("validation failed: {err}"))
            .with_details(details)
    }
}

/// Renders the catalog as a Markdown table (committed as `docs/src/errors.md`).
pub fn catalog_markdown() -> String {
    let mut out = String::from(
        "# Error catalog\n\n<!-- Generated from kubenova-api/src/error.rs by `cargo test -p kubenova-api` \
         (set KUBENOVA_BLESS=1 to rewrite). Do not edit by hand. -->\n\n\
         Every failure has the body `{\"code\", \"message\", \"details\", \"requestId\"}`; \
         `code` and `message` are always present.\n\n\
         | Code | HTTP | Title | Meaning |\n|---|---|---|---|\n",
    );
    for code in ErrorCode::ALL {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            code.as_str(),
            code.http_status(),
            code.title(),
            code.doc()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn codes_are_unique_and_match_status() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "duplicate {c}");
            assert_eq!(c.as_str(), format!("KN-{}", c.http_status()));
            let json = serde_json::to_value(c).unwrap();
            assert_eq!(json, c.as_str());
        }
    }

    #[test]
    fn schema_publishes_wire_codes() {
        let schema = serde_json::to_value(<ErrorCode as utoipa::PartialSchema>::schema()).unwrap();
        let values: Vec<_> = schema["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            values,
            ErrorCode::ALL
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn body_is_flat_and_omits_empty_fields() {
        let body = KnError::conflict("name taken").to_body(None);
        let v = serde_json::to_value(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"code": "KN-409", "message": "name taken"})
        );
    }

    #[test]
    fn docs_error_catalog_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/src/errors.md");
        let want = catalog_markdown();
        if std::env::var_os("KUBENOVA_BLESS").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "docs/src/errors.md is out of date; run `KUBENOVA_BLESS=1 cargo test -p kubenova-api` and commit it"
        );
    }
}
