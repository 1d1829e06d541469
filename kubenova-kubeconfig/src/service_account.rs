//! ServiceAccount mode: kubeconfigs backed by a TokenRequest token, for in-cluster automation.

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube::config::Kubeconfig;
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::kubeconfig::{
    check_ca_pem, check_https, check_label, single_entry_kubeconfig, token_auth,
};

/// Smallest accepted `expirationSeconds` (the Kubernetes API server's own minimum).
pub const MIN_EXPIRATION_SECONDS: i64 = 600;
/// Largest accepted `expirationSeconds` (one day).
pub const MAX_EXPIRATION_SECONDS: i64 = 86_400;

/// Input of [`service_account_kubeconfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountKubeconfigRequest {
    /// Cluster name, used in entry names (`<cluster>-sa-<namespace>-<name>`).
    pub cluster_name: String,
    /// Namespace of the ServiceAccount; also the context namespace.
    pub namespace: String,
    /// ServiceAccount name.
    pub service_account: String,
    /// Token lifetime, within [`MIN_EXPIRATION_SECONDS`]`..=`[`MAX_EXPIRATION_SECONDS`].
    pub expiration_seconds: i64,
    /// API server (or Capsule Proxy) URL the kubeconfig points at; `https://` only.
    pub server_url: String,
    /// PEM of the CA for `server_url`.
    pub ca_pem: String,
    /// Token audiences; empty means the API server's default audience.
    pub audiences: Vec<String>,
}

/// A ServiceAccount kubeconfig and when its token expires.
#[derive(Debug, Clone)]
pub struct ServiceAccountKubeconfig {
    /// The kubeconfig (token embedded).
    pub kubeconfig: Kubeconfig,
    /// Token expiry as reported by the API server.
    pub expires_at: OffsetDateTime,
}

/// Requests a bounded-lifetime token for a ServiceAccount through the TokenRequest
/// subresource (`POST …/serviceaccounts/<name>/token`) and wraps it in a kubeconfig.
///
/// `client` needs `create` on `serviceaccounts/token` in the namespace. Nothing is
/// written to the cluster besides the TokenRequest itself; the token is not stored.
pub async fn service_account_kubeconfig(
    client: &kube::Client,
    req: &ServiceAccountKubeconfigRequest,
) -> Result<ServiceAccountKubeconfig> {
    check_label("cluster_name", &req.cluster_name)?;
    check_label("namespace", &req.namespace)?;
    crate::kubeconfig::check_subdomain("service_account", &req.service_account)?;
    if !(MIN_EXPIRATION_SECONDS..=MAX_EXPIRATION_SECONDS).contains(&req.expiration_seconds) {
        return Err(Error::ExpirationOutOfRange {
            requested: req.expiration_seconds,
            min: MIN_EXPIRATION_SECONDS,
            max: MAX_EXPIRATION_SECONDS,
        });
    }
    check_https("server_url", &req.server_url, false)?;
    check_ca_pem("server_url", &req.ca_pem)?;

    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &req.namespace);
    let tr = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: (!req.audiences.is_empty()).then(|| req.audiences.clone()),
            expiration_seconds: Some(req.expiration_seconds),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let out = api
        .create_token_request(&req.service_account, &PostParams::default(), &tr)
        .await?;
    let status = out.status.ok_or(Error::IncompleteTokenRequest("status"))?;
    let token = status
        .token
        .filter(|t| !t.is_empty())
        .ok_or(Error::IncompleteTokenRequest("token"))?;
    let expires_at = status
        .expiration_timestamp
        .and_then(|t| OffsetDateTime::from_unix_timestamp(t.0.as_second()).ok())
        .ok_or(Error::IncompleteTokenRequest("expirationTimestamp"))?;
    let name = format!(
        "{}-sa-{}-{}",
        req.cluster_name, req.namespace, req.service_account
    );
    let kubeconfig = single_entry_kubeconfig(
        &name,
        &req.server_url,
        &base64::engine::general_purpose::STANDARD.encode(req.ca_pem.as_bytes()),
        &req.namespace,
        token_auth(&token)?,
    );
    Ok(ServiceAccountKubeconfig {
        kubeconfig,
        expires_at,
    })
}
