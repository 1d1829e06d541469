//! The KN error envelope on every failure, with the request id of the call.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kubenova_api::error::{ErrorCode, KnError};
use kubenova_store::StoreError;

tokio::task_local! {
    /// The request id of the request being handled (set by the request-id middleware).
    pub static REQUEST_ID: String;
}

/// The current request id, if inside a request.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(|r| r.clone()).ok()
}

/// An error returned by a handler; renders as `{"code","message","details","requestId"}`.
#[derive(Debug)]
pub struct ApiError {
    /// The client-safe error.
    pub error: KnError,
    /// Seconds for a `Retry-After` header (KN-429, KN-503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        KnError::new(code, message).into()
    }

    /// KN-404 for a kind and id.
    pub fn not_found(kind: &str, id: impl std::fmt::Display) -> Self {
        KnError::not_found(kind, id).into()
    }

    /// KN-403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// KN-401.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, message)
    }

    /// KN-400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// KN-422 for one field.
    pub fn invalid(field: &str, reason: impl Into<String>) -> Self {
        KnError::from(kubenova_api::validate::ValidationError::single(
            field, reason,
        ))
        .into()
    }

    /// KN-409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }
}

impl From<KnError> for ApiError {
    fn from(error: KnError) -> Self {
        Self {
            error,
            retry_after: None,
        }
    }
}

impl From<kubenova_api::validate::ValidationError> for ApiError {
    fn from(e: kubenova_api::validate::ValidationError) -> Self {
        KnError::from(e).into()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::Internal(_) | StoreError::Unavailable(_) | StoreError::Crypto(_) => {
                // The detail goes to the log only, under the request id.
                tracing::error!(request_id = current_request_id().unwrap_or_default(), error = %e, "store error");
            }
            _ => {}
        }
        let mut err: ApiError = KnError::from(e).into();
        if err.error.code == ErrorCode::Unavailable {
            err.retry_after = Some(5);
        }
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.error.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = self.error.to_body(current_request_id());
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

/// Handler result.
pub type ApiResult<T> = Result<T, ApiError>;
