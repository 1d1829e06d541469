//! The crate's error type and its mapping onto the KubeNova error catalog.

use kubenova_api::error::ErrorCode;

/// Everything that can go wrong while building a kubeconfig, minting or verifying a token.
///
/// [`Error::code`] maps each variant onto the KN error catalog so the manager can answer
/// with the right `KN-…` code without matching on variants itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A name (cluster, tenant, project, namespace, ServiceAccount) is not a DNS-1123 label.
    #[error("invalid {field}: {reason}")]
    InvalidName {
        /// Which input field.
        field: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// The subject of a token is empty or names a reserved `system:` identity.
    #[error("invalid subject {0:?}: must be non-empty and must not start with \"system:\"")]
    InvalidSubject(String),
    /// A group a token may not carry besides its scope group (see
    /// [`TokenSpec::extra_groups`](crate::TokenSpec::extra_groups)).
    #[error("group {group:?} may not be carried by a token: {reason}")]
    InvalidGroup {
        /// The group.
        group: String,
        /// Why.
        reason: String,
    },
    /// The cluster has no Capsule Proxy endpoint reported yet.
    #[error("the cluster's Capsule Proxy endpoint is not reported yet")]
    ProxyNotReported,
    /// A server or manager URL that is not `https://` (or not a URL at all).
    #[error("{field} {url:?} is not acceptable: {reason}")]
    InsecureUrl {
        /// Which input field.
        field: &'static str,
        /// The rejected value.
        url: String,
        /// Why it was rejected.
        reason: String,
    },
    /// No CA certificate for the server: kubeconfigs never skip TLS verification.
    #[error("no CA certificate for {0}: refusing to build a kubeconfig without one")]
    MissingCa(&'static str),
    /// The CA is present but is not a PEM `CERTIFICATE` block.
    #[error("the CA for {field} is not a PEM certificate: {reason}")]
    InvalidCa {
        /// Which input field.
        field: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// The exec plugin's tenant/project/role differ from the kubeconfig request's.
    #[error("exec credential scope ({exec}) does not match the kubeconfig scope ({request})")]
    ScopeMismatch {
        /// Scope named by the exec plugin.
        exec: String,
        /// Scope named by the request.
        request: String,
    },
    /// A token TTL that is not positive or exceeds the configured maximum.
    #[error("ttl must be greater than 0s and at most {max_seconds}s (got {requested_seconds}s)")]
    TtlOutOfRange {
        /// Requested TTL in seconds.
        requested_seconds: i64,
        /// Configured maximum in seconds.
        max_seconds: i64,
    },
    /// A TokenRequest `expirationSeconds` outside the accepted bounds.
    #[error("expirationSeconds must be within {min}..={max} (got {requested})")]
    ExpirationOutOfRange {
        /// Requested value.
        requested: i64,
        /// Lower bound.
        min: i64,
        /// Upper bound.
        max: i64,
    },
    /// A token whose `kid` is not (or no longer) in the key set.
    #[error("token signed by unknown or retired key {0:?}")]
    UnknownKey(String),
    /// A token that failed verification (signature, expiry, audience, issuer, shape).
    #[error("token rejected: {0}")]
    InvalidToken(#[from] jsonwebtoken::errors::Error),
    /// Key material that cannot be generated or parsed.
    #[error("signing key: {0}")]
    Key(String),
    /// Serialization of a kubeconfig, key set or document failed.
    #[error("serialization: {0}")]
    Serialization(String),
    /// The Kubernetes API (TokenRequest) failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The TokenRequest answer carried no token or expiry.
    #[error("TokenRequest answer has no {0}")]
    IncompleteTokenRequest(&'static str),
}

impl Error {
    /// The KN catalog code the manager should answer with.
    ///
    /// Input problems are `KN-422`, a cluster whose proxy is not (properly) reported yet is
    /// `KN-409`, rejected tokens are `KN-401`, cluster API failures `KN-503`, and broken
    /// key material or serialization `KN-500`.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidName { .. }
            | Error::InvalidSubject(_)
            | Error::InvalidGroup { .. }
            | Error::ScopeMismatch { .. }
            | Error::TtlOutOfRange { .. }
            | Error::ExpirationOutOfRange { .. } => ErrorCode::Validation,
            Error::ProxyNotReported
            | Error::InsecureUrl { .. }
            | Error::MissingCa(_)
            | Error::InvalidCa { .. } => ErrorCode::Conflict,
            Error::UnknownKey(_) | Error::InvalidToken(_) => ErrorCode::Unauthenticated,
            Error::Kube(_) | Error::IncompleteTokenRequest(_) => ErrorCode::Unavailable,
            Error::Key(_) | Error::Serialization(_) => ErrorCode::Internal,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
