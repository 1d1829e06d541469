//! The `client.authentication.k8s.io/v1` ExecCredential printed by `kubenova auth token`.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::kubeconfig::EXEC_API_VERSION;
use crate::token::Claims;

/// What an exec credential plugin prints on stdout for kubectl / client-go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecCredential {
    /// `client.authentication.k8s.io/v1`.
    pub api_version: String,
    /// `ExecCredential`.
    pub kind: String,
    /// The credential.
    pub status: ExecCredentialStatus,
}

/// The credential part of an [`ExecCredential`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecCredentialStatus {
    /// Bearer token.
    pub token: String,
    /// When the token expires (RFC 3339); kubectl runs the plugin again after it.
    #[serde(with = "time::serde::rfc3339")]
    pub expiration_timestamp: OffsetDateTime,
}

impl ExecCredential {
    /// An ExecCredential for `token` expiring at `expires_at`.
    pub fn new(token: impl Into<String>, expires_at: OffsetDateTime) -> Self {
        Self {
            api_version: EXEC_API_VERSION.to_owned(),
            kind: "ExecCredential".to_owned(),
            status: ExecCredentialStatus {
                token: token.into(),
                expiration_timestamp: expires_at,
            },
        }
    }

    /// An ExecCredential for a freshly issued token and its claims (`exp`).
    pub fn for_token(token: impl Into<String>, claims: &Claims) -> Self {
        Self::new(token, claims.expires_at())
    }

    /// The JSON the plugin prints.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|e| Error::Serialization(e.to_string()))
    }
}
