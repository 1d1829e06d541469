//! Request extractors: JSON bodies with KN errors, list-replacing bodies (`[...]` or
//! `{"<field>": [...]}`), JSON-or-YAML uploads, the call context (principal, request id,
//! source IP, idempotency key), list parameters and `If-Match`.

use super::authz::Principal;
use super::error::{ApiError, current_request_id};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderMap, header, request::Parts};
use axum::response::{IntoResponse, Response};
use kubenova_api::error::ErrorCode;
use kubenova_api::ids::AuditId;
use kubenova_api::model::{AuditEvent, AuditOutcome};
use kubenova_api::selector::SELECTOR_FIELD;
use kubenova_api::validate::{FieldViolation, ValidationError};
use kubenova_store::{IdempotencyRecord, ListFilter, ListParams};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

/// A JSON body: wrong content type is KN-415, malformed JSON KN-400, unknown fields and
/// wrong types KN-422 naming the field, an oversize body KN-413.
pub struct KnJson<T>(pub T);

/// The `Content-Type` of a request, lower-cased (`""` when absent), and its media type
/// without parameters.
fn content_type(req: &Request) -> (String, String) {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mime = ct.split(';').next().unwrap_or("").trim().to_string();
    (ct, mime)
}

fn is_json(mime: &str) -> bool {
    mime == "application/json" || mime.ends_with("+json")
}

/// The media types of a raw kubeconfig upload.
pub const YAML_MEDIA_TYPES: [&str; 2] = ["application/yaml", "application/x-yaml"];

fn unsupported(expected: &str, ct: &str) -> ApiError {
    ApiError::new(
        ErrorCode::UnsupportedMediaType,
        format!(
            "expected Content-Type: {expected}, got {:?}",
            if ct.is_empty() { "none" } else { ct }
        ),
    )
}

/// The whole body (KN-413 beyond the body limit).
async fn body_bytes<S: Send + Sync>(
    req: Request,
    state: &S,
) -> Result<axum::body::Bytes, ApiError> {
    axum::body::Bytes::from_request(req, state)
        .await
        .map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    "the request body exceeds the size limit",
                )
            } else {
                ApiError::bad_request(format!("could not read the request body: {e}"))
            }
        })
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for KnJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (ct, mime) = content_type(&req);
        if !is_json(&mime) {
            return Err(unsupported("application/json", &ct));
        }
        let bytes = body_bytes(req, state).await?;
        parse_json(&bytes).map(KnJson)
    }
}

/// A body that is either JSON or a raw kubeconfig (`application/yaml` or
/// `application/x-yaml`); anything else is KN-415 naming both. Registration and the
/// kubeconfig replacement of a cluster take it.
#[derive(Debug)]
pub enum JsonOrYaml {
    /// `application/json` (or `+json`): the bytes, parsed by the handler with [`parse_json`].
    Json(axum::body::Bytes),
    /// A YAML media type: the raw bytes.
    Yaml(axum::body::Bytes),
}

impl<S: Send + Sync> FromRequest<S> for JsonOrYaml {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (ct, mime) = content_type(&req);
        if is_json(&mime) {
            Ok(JsonOrYaml::Json(body_bytes(req, state).await?))
        } else if YAML_MEDIA_TYPES.contains(&mime.as_str()) {
            Ok(JsonOrYaml::Yaml(body_bytes(req, state).await?))
        } else {
            Err(unsupported(
                "application/json, or application/yaml (application/x-yaml) with the raw kubeconfig",
                &ct,
            ))
        }
    }
}

/// The body of a PUT that replaces a list: a JSON object with the list in one field,
/// `{"<FIELD>": [...]}`. Every list-replacing PUT takes [`KnList`], which also accepts the
/// bare list `[...]`.
pub trait ListBody: DeserializeOwned {
    /// The field holding the list, e.g. `owners`.
    const FIELD: &'static str;
}

/// A list-replacing PUT body: the complete new list, either as the array itself (`[...]`)
/// or as `{"<field>": [...]}` ([`ListBody::FIELD`]). Both forms are checked by the same
/// rules and name a bad item the same way (`owners[1]`); anything else is KN-422 naming
/// `body`, malformed JSON KN-400, another content type KN-415.
pub struct KnList<W>(pub W);

impl<S: Send + Sync, W: ListBody> FromRequest<S> for KnList<W> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let KnJson(v) = KnJson::<serde_json::Value>::from_request(req, state).await?;
        list_body(v).map(KnList)
    }
}

/// Reads a list-replacing body (see [`KnList`]) from parsed JSON.
pub fn list_body<W: ListBody>(body: serde_json::Value) -> Result<W, ApiError> {
    use serde_json::Value;
    let object = match body {
        Value::Array(items) => {
            let mut m = serde_json::Map::new();
            m.insert(W::FIELD.to_string(), Value::Array(items));
            Value::Object(m)
        }
        v @ Value::Object(_) => v,
        _ => {
            return Err(ApiError::invalid(
                "body",
                format!(
                    "must be the complete new list: an array [...] or an object {{\"{}\": [...]}}",
                    W::FIELD
                ),
            ));
        }
    };
    match serde_path_to_error::deserialize::<_, W>(object) {
        Ok(w) => Ok(w),
        Err(e) => {
            let path = e.path().to_string();
            let field = if path == "." {
                "body".to_string()
            } else {
                path
            };
            Err(ApiError::invalid(&field, e.into_inner().to_string()))
        }
    }
}

/// Parses a JSON body with the error mapping of [`KnJson`].
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(v) => Ok(v),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                Err(ApiError::bad_request(format!("malformed JSON: {inner}")))
            } else {
                let field = if path == "." {
                    "body".to_string()
                } else {
                    path
                };
                Err(ApiError::invalid(&field, inner.to_string()))
            }
        }
    }
}

/// An `Idempotency-Key` the request carried, with the hash of method, path and body
/// (set by the idempotency middleware for POST requests).
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    /// The client's key.
    pub key: String,
    /// Hash of the request.
    pub request_hash: String,
    /// The response stored for this key by the same caller (subject, roles and scope) for
    /// the same request, if any: answered by [`Ctx::replay`] once the handler's
    /// authorization passed, never before.
    pub stored: Option<StoredResponse>,
}

/// A stored response of an `Idempotency-Key`.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Vec<u8>,
}

/// Marks a response whose audit event was written with the change itself.
#[derive(Debug, Clone, Copy)]
pub struct Audited;

/// Marks a replayed response (the middleware logs it as `replayed` and writes no audit
/// event: the original request was audited).
#[derive(Debug, Clone, Copy)]
pub struct Replayed;

/// The call's context: who, which request, from where.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The authenticated caller.
    pub principal: Principal,
    /// Request id.
    pub request_id: String,
    /// Source IP.
    pub source_ip: String,
    /// Idempotency key, if sent with a POST.
    pub idempotency: Option<IdempotencyKey>,
    /// How long idempotency records are kept.
    pub idempotency_ttl: time::Duration,
}

/// Source IP of a request (set by the server from the connection).
#[derive(Debug, Clone)]
pub struct SourceIp(pub String);

/// How long an idempotency record is kept (inserted by the middleware).
#[derive(Debug, Clone, Copy)]
pub struct IdempotencyTtl(pub time::Duration);

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let principal = parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| {
                ApiError::unauthenticated("send a bearer token: Authorization: Bearer <jwt>")
            })?;
        Ok(Ctx {
            principal,
            request_id: current_request_id().unwrap_or_default(),
            source_ip: parts
                .extensions
                .get::<SourceIp>()
                .map(|s| s.0.clone())
                .unwrap_or_default(),
            idempotency: parts.extensions.get::<IdempotencyKey>().cloned(),
            idempotency_ttl: parts
                .extensions
                .get::<IdempotencyTtl>()
                .map(|t| t.0)
                .unwrap_or(time::Duration::hours(24)),
        })
    }
}

impl Ctx {
    /// The audit event of a successful change, written in the change's transaction.
    pub fn audit(
        &self,
        action: &str,
        kind: &str,
        id: impl std::fmt::Display,
        status: u16,
    ) -> AuditEvent {
        AuditEvent {
            id: AuditId::new(),
            at: OffsetDateTime::now_utc(),
            actor: self.principal.subject.clone(),
            roles: self
                .principal
                .roles
                .iter()
                .map(|r| r.as_str().to_string())
                .collect(),
            action: action.to_string(),
            resource_kind: kind.to_string(),
            resource_id: id.to_string(),
            outcome: AuditOutcome::Success,
            http_status: Some(status),
            request_id: self.request_id.clone(),
            source_ip: self.source_ip.clone(),
            details: None,
        }
    }

    /// The stored response of a retried request (the same `Idempotency-Key` with the same
    /// request, from the same subject with the same roles and scope), marked
    /// `Idempotent-Replayed: true`. Every handler that stores idempotency records calls
    /// this right **after** its authorization checks passed and answers the response when
    /// there is one, so a stored response only ever goes to a caller allowed to make the
    /// request now; `None`: carry on with the request.
    pub fn replay(&self) -> Option<Response> {
        let stored = self.idempotency.as_ref()?.stored.as_ref()?;
        let status =
            axum::http::StatusCode::from_u16(stored.status).unwrap_or(axum::http::StatusCode::OK);
        let mut resp = (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            stored.body.clone(),
        )
            .into_response();
        resp.headers_mut().insert(
            super::middleware::IDEMPOTENT_REPLAYED,
            axum::http::HeaderValue::from_static("true"),
        );
        resp.extensions_mut().insert(Replayed);
        Some(resp)
    }

    /// The idempotency record storing this response, when the request had a key.
    pub fn idempotency_record(&self, status: u16, body: &[u8]) -> Option<IdempotencyRecord> {
        self.idempotency.as_ref().map(|k| {
            let now = OffsetDateTime::now_utc();
            IdempotencyRecord {
                subject: self.principal.subject.clone(),
                scope: self.principal.scope_digest(),
                key: k.key.clone(),
                request_hash: k.request_hash.clone(),
                status,
                body: body.to_vec(),
                created_at: now,
                expires_at: now + self.idempotency_ttl,
            }
        })
    }
}

/// `?limit=&cursor=` of every list.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size (default 100, max 500).
    pub limit: Option<u32>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

impl From<ListQuery> for ListParams {
    fn from(q: ListQuery) -> Self {
        ListParams {
            limit: q.limit,
            cursor: q.cursor,
        }
    }
}

/// `?limit=&cursor=&name=&labelSelector=` of the lists of labelled records (clusters,
/// tenants, projects): a page of the records the caller may see, narrowed by name and
/// labels (in the store's query, so pages stay full and cursors continue).
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LabeledListQuery {
    /// Page size (default 100, max 500).
    pub limit: Option<u32>,
    /// `nextCursor` of the previous page (pass the same `name` and `labelSelector` again).
    pub cursor: Option<String>,
    /// Only the record with exactly this name (a DNS-1123 label); what the caller may not
    /// see stays out of the list.
    #[param(example = "acme")]
    pub name: Option<String>,
    /// Only records whose labels match this Kubernetes label selector: comma-separated
    /// requirements that must all hold, each `key=value` (or `==`), `key!=value`,
    /// `key in (v1,v2)`, `key notin (v1,v2)`, `key` (has the label) or `!key` (has not).
    /// `!=` and `notin` also select records without the key. At most 1024 characters and
    /// 32 requirements; keys and values follow the Kubernetes label rules. URL-encode it.
    #[serde(rename = "labelSelector")]
    #[param(example = "tier in (gold,silver),!example.com/legacy")]
    pub label_selector: Option<String>,
}

impl LabeledListQuery {
    /// The paging and the filter, every bad parameter reported at once (KN-422 naming
    /// `limit`, `cursor`, `name` or `labelSelector`).
    pub fn split(self) -> Result<(ListParams, ListFilter), ValidationError> {
        split(
            self.limit,
            self.cursor,
            self.name.as_deref(),
            self.label_selector.as_deref(),
        )
    }
}

/// `?limit=&cursor=&name=` of the lists of records without labels (apps).
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NamedListQuery {
    /// Page size (default 100, max 500).
    pub limit: Option<u32>,
    /// `nextCursor` of the previous page (pass the same `name` again).
    pub cursor: Option<String>,
    /// Only the record with exactly this name (a DNS-1123 label).
    #[param(example = "web")]
    pub name: Option<String>,
    /// Refused (these records have no labels), rather than ignored: a caller asking for
    /// a label selector must not get every record as if it had matched.
    #[serde(rename = "labelSelector")]
    #[param(ignore)]
    pub label_selector: Option<String>,
}

impl NamedListQuery {
    /// The paging and the filter (KN-422 naming `limit`, `cursor`, `name`, or
    /// `labelSelector` when one is given).
    pub fn split(self) -> Result<(ListParams, ListFilter), ValidationError> {
        let res = split(self.limit, self.cursor, self.name.as_deref(), None);
        if self.label_selector.is_none() {
            return res;
        }
        let mut violations = res.err().map(|e| e.violations).unwrap_or_default();
        violations.push(FieldViolation {
            field: SELECTOR_FIELD.into(),
            reason: "apps have no labels; filter apps by name".into(),
        });
        Err(ValidationError { violations })
    }
}

/// Paging and filter of a list query, with every violation.
pub fn split(
    limit: Option<u32>,
    cursor: Option<String>,
    name: Option<&str>,
    label_selector: Option<&str>,
) -> Result<(ListParams, ListFilter), ValidationError> {
    let params = ListParams { limit, cursor };
    let mut violations = Vec::new();
    if let Err(e) = params.page_size() {
        violations.extend(e.violations);
    }
    if let Err(e) = params.cursor_uuid() {
        violations.extend(e.violations);
    }
    match ListFilter::parse(name, label_selector) {
        Ok(filter) if violations.is_empty() => Ok((params, filter)),
        Ok(_) => Err(ValidationError { violations }),
        Err(e) => {
            violations.extend(e.violations);
            Err(ValidationError { violations })
        }
    }
}

/// The `ETag` of a record version.
pub fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

/// The version named by `If-Match`, if present. `*` matches any version.
pub fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .map_err(|_| ApiError::bad_request("If-Match is not valid text"))?
        .trim();
    if s == "*" {
        return Ok(None);
    }
    let inner = s.trim_start_matches("W/").trim_matches('"');
    inner.parse::<i64>().map(Some).map_err(|_| {
        ApiError::bad_request(format!(
            "If-Match {s:?} is not an ETag returned by this API"
        ))
    })
}

/// Checks `If-Match` against the current version (KN-412 when stale).
pub fn check_if_match(
    headers: &HeaderMap,
    kind: &str,
    id: impl std::fmt::Display,
    current: i64,
) -> Result<(), ApiError> {
    match if_match(headers)? {
        Some(v) if v != current => {
            Err(kubenova_api::error::KnError::precondition_failed(kind, id, v, current).into())
        }
        _ => Ok(()),
    }
}

/// A JSON response with status, `ETag` and optional `Location`, plus the [`Audited`]
/// marker when the audit event was stored with the change.
pub fn json_response<T: serde::Serialize>(
    status: axum::http::StatusCode,
    body: &T,
    version: Option<i64>,
    location: Option<String>,
    audited: bool,
) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    bytes_response(status, bytes, version, location, audited)
}

/// Like [`json_response`] for pre-serialized bytes (used when the body is also stored
/// as the idempotent response).
pub fn bytes_response(
    status: axum::http::StatusCode,
    bytes: Vec<u8>,
    version: Option<i64>,
    location: Option<String>,
    audited: bool,
) -> Response {
    let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response();
    if let Some(v) = version
        && let Ok(h) = etag(v).parse()
    {
        resp.headers_mut().insert(header::ETAG, h);
    }
    if let Some(l) = location
        && let Ok(h) = l.parse()
    {
        resp.headers_mut().insert(header::LOCATION, h);
    }
    if audited {
        resp.extensions_mut().insert(Audited);
    }
    resp
}

/// Marks a response that carries a credential (a token, a key) as never to be cached.
pub fn no_store(resp: &mut Response) {
    resp.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
}
