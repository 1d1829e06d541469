//! Store errors, mapped onto the KN catalog.

use crate::crypto::CryptoError;
use kubenova_api::error::{ErrorCode, KnError};
use kubenova_api::validate::ValidationError;

/// Why a store operation failed. Messages are safe to show to clients except for
/// [`StoreError::Internal`] and [`StoreError::Unavailable`], whose detail is only logged.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The record does not exist.
    #[error("{kind} \"{id}\" not found")]
    NotFound {
        /// Record kind.
        kind: &'static str,
        /// Id or name.
        id: String,
    },
    /// A uniqueness or referential rule was violated.
    #[error("{0}")]
    Conflict(String),
    /// Optimistic concurrency check failed.
    #[error("{kind} \"{id}\" is at version {actual}, not {expected}")]
    PreconditionFailed {
        /// Record kind.
        kind: &'static str,
        /// Id.
        id: String,
        /// Version the caller expected.
        expected: i64,
        /// Version in the store.
        actual: i64,
    },
    /// The input was rejected before reaching the database.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// The database cannot be reached.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Encryption or decryption failed (tampering, unknown key).
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// Anything else (bad row, driver error). Logged, never shown to clients.
    #[error("internal store error: {0}")]
    Internal(String),
}

/// Shorthand result type.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
            sqlx::Error::Database(db) => {
                if db.is_unique_violation() {
                    StoreError::Conflict("already exists".into())
                } else if db.is_foreign_key_violation() {
                    StoreError::Conflict("referenced by or referencing a missing record".into())
                } else {
                    // SQLITE_BUSY / Postgres admin shutdown and the like are availability problems.
                    let code = db.code().unwrap_or_default();
                    if code == "5"
                        || code == "6"
                        || code.starts_with("57P")
                        || code.starts_with("08")
                    {
                        StoreError::Unavailable(e.to_string())
                    } else {
                        StoreError::Internal(e.to_string())
                    }
                }
            }
            _ => StoreError::Internal(e.to_string()),
        }
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Internal(format!("stored document does not decode: {e}"))
    }
}

impl From<StoreError> for KnError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { kind, id } => KnError::not_found(kind, id),
            StoreError::Conflict(m) => KnError::conflict(m),
            StoreError::PreconditionFailed {
                kind,
                id,
                expected,
                actual,
            } => KnError::precondition_failed(kind, id, expected, actual),
            StoreError::Validation(v) => v.into(),
            StoreError::Unavailable(_) => {
                KnError::unavailable("database", "the database is unavailable; retry later")
            }
            StoreError::Crypto(_) => KnError::new(
                ErrorCode::Internal,
                "a stored secret could not be decrypted; see the server log",
            ),
            StoreError::Internal(_) => {
                KnError::internal("internal storage error; see the server log")
            }
        }
    }
}
