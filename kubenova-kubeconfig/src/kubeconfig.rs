//! Typed kubeconfigs pointing at a cluster's Capsule Proxy.

use base64::Engine as _;
use kube::config::{
    AuthInfo, Cluster, Context, ExecConfig, ExecInteractiveMode, Kubeconfig, NamedAuthInfo,
    NamedCluster, NamedContext,
};
use kubenova_api::model::AccessRole;
use kubenova_api::validate::dns_label_problem;
use secrecy::SecretString;
use std::sync::Arc;

use crate::error::{Error, Result};

/// `apiVersion` of the exec plugin protocol and of [`crate::ExecCredential`].
pub const EXEC_API_VERSION: &str = "client.authentication.k8s.io/v1";
/// The command the exec stanza runs.
pub const EXEC_COMMAND: &str = "kubenova";

/// How the kubeconfig's user authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A bearer token embedded in the kubeconfig (a manager-signed JWT).
    Token(String),
    /// An exec plugin stanza running `kubenova auth token …`, which fetches a fresh
    /// short-lived token from the manager each time kubectl needs one. The scope must equal
    /// the [`KubeconfigRequest`]'s scope.
    Exec {
        /// The manager's external URL (`https://`; `http://` only for loopback hosts).
        manager_url: String,
        /// Tenant name.
        tenant: String,
        /// Project name for project-scoped credentials.
        project: Option<String>,
        /// Role.
        role: AccessRole,
    },
}

/// A Capsule Proxy CA, validated once: at least one well-formed PEM `CERTIFICATE` block.
/// Holds the PEM and the `certificate-authority-data` value (base64 of the PEM) that every
/// kubeconfig for the cluster carries, so a caller issuing many kubeconfigs for one
/// cluster (the manager) checks and encodes the CA once and clones it cheaply after.
///
/// ```
/// use kubenova_kubeconfig::{Error, ProxyCa};
/// # let pem = include_str!("../tests/fixtures/proxy-ca.pem");
/// let ca = ProxyCa::from_pem(pem)?;
/// assert_eq!(ca.pem(), pem);
/// // The operator reports `caData` as base64 of the PEM; raw PEM is accepted too.
/// assert_eq!(ProxyCa::from_ca_data(ca.data())?, ca);
/// assert!(matches!(ProxyCa::from_pem(""), Err(Error::MissingCa(_))));
/// assert!(matches!(ProxyCa::from_ca_data("hello"), Err(Error::InvalidCa { .. })));
/// # Ok::<(), Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyCa {
    pem: Arc<str>,
    data: Arc<str>,
}

impl ProxyCa {
    /// Validates a PEM (one or more `CERTIFICATE` blocks).
    pub fn from_pem(pem: &str) -> Result<ProxyCa> {
        check_ca_pem("proxy_ca", pem)?;
        Ok(ProxyCa {
            pem: pem.into(),
            data: base64::engine::general_purpose::STANDARD
                .encode(pem.as_bytes())
                .into(),
        })
    }

    /// From a `caData` value as the operator reports it: base64 of the PEM (whitespace
    /// ignored), or the PEM itself.
    pub fn from_ca_data(ca_data: &str) -> Result<ProxyCa> {
        let raw = ca_data.trim();
        if raw.is_empty() || raw.starts_with("-----BEGIN") {
            // A PEM keeps its final newline.
            return ProxyCa::from_pem(ca_data.trim_start());
        }
        let pem = base64::engine::general_purpose::STANDARD
            .decode(raw.split_whitespace().collect::<String>())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| Error::InvalidCa {
                field: "proxy_ca",
                reason: "neither a PEM nor base64 of a PEM".to_owned(),
            })?;
        ProxyCa::from_pem(&pem)
    }

    /// The PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The `certificate-authority-data` value: base64 of the PEM.
    pub fn data(&self) -> &str {
        &self.data
    }
}

/// Everything needed to build a tenant- or project-scoped kubeconfig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeconfigRequest {
    /// The cluster's name (DNS-1123 label).
    pub cluster_name: String,
    /// Tenant name (DNS-1123 label).
    pub tenant: String,
    /// Project name (DNS-1123 label) for project-scoped kubeconfigs.
    pub project: Option<String>,
    /// Role the credential carries.
    pub role: AccessRole,
    /// The cluster's Capsule Proxy URL as reported by the operator; must be `https://`.
    /// Empty means "not reported yet" ([`Error::ProxyNotReported`]).
    pub proxy_url: String,
    /// The CA that signed the Capsule Proxy's serving certificate (validated once, see
    /// [`ProxyCa`]).
    pub proxy_ca: ProxyCa,
    /// Context namespace: the tenant's apps namespace or the project's namespace.
    pub namespace: String,
    /// How the user authenticates.
    pub credential: Credential,
}

/// The stable, readable name used for the cluster, user and context entries:
/// `<cluster>-<tenant>[-<project>]-<role>`.
///
/// ```
/// use kubenova_api::model::AccessRole;
/// assert_eq!(
///     kubenova_kubeconfig::entry_name("prod", "acme", Some("web"), AccessRole::Developer),
///     "prod-acme-web-developer"
/// );
/// assert_eq!(kubenova_kubeconfig::entry_name("prod", "acme", None, AccessRole::Owner), "prod-acme-owner");
/// ```
pub fn entry_name(cluster: &str, tenant: &str, project: Option<&str>, role: AccessRole) -> String {
    match project {
        Some(p) => format!("{cluster}-{tenant}-{p}-{}", role.as_str()),
        None => format!("{cluster}-{tenant}-{}", role.as_str()),
    }
}

impl KubeconfigRequest {
    /// The entry name, see [`entry_name`].
    pub fn name(&self) -> String {
        entry_name(
            &self.cluster_name,
            &self.tenant,
            self.project.as_deref(),
            self.role,
        )
    }

    /// Validates the request and builds the kubeconfig: one cluster (proxy URL + CA data),
    /// one user (token or exec stanza), one context (namespace) that is current.
    pub fn build(&self) -> Result<Kubeconfig> {
        check_label("cluster_name", &self.cluster_name)?;
        check_label("tenant", &self.tenant)?;
        if let Some(p) = &self.project {
            check_label("project", p)?;
        }
        check_label("namespace", &self.namespace)?;
        if self.proxy_url.trim().is_empty() {
            return Err(Error::ProxyNotReported);
        }
        check_https("proxy_url", &self.proxy_url, false)?;
        let auth_info = match &self.credential {
            Credential::Token(token) => token_auth(token)?,
            Credential::Exec {
                manager_url,
                tenant,
                project,
                role,
            } => {
                if tenant != &self.tenant || project != &self.project || role != &self.role {
                    return Err(Error::ScopeMismatch {
                        exec: entry_name("", tenant, project.as_deref(), *role),
                        request: entry_name("", &self.tenant, self.project.as_deref(), self.role),
                    });
                }
                check_https("manager_url", manager_url, true)?;
                AuthInfo {
                    exec: Some(exec_config(manager_url, tenant, project.as_deref(), *role)),
                    ..AuthInfo::default()
                }
            }
        };
        Ok(single_entry_kubeconfig(
            &self.name(),
            &self.proxy_url,
            &self.proxy_ca.data,
            &self.namespace,
            auth_info,
        ))
    }
}

/// The exec stanza: `kubenova auth token --manager URL --tenant T [--project P] --role R`,
/// `apiVersion: client.authentication.k8s.io/v1`, `interactiveMode: Never`.
pub fn exec_config(
    manager_url: &str,
    tenant: &str,
    project: Option<&str>,
    role: AccessRole,
) -> ExecConfig {
    exec_config_for_cluster(manager_url, tenant, project, role, None)
}

/// Like [`exec_config`], with `--cluster <cluster>` appended when given. The manager's
/// kubeconfigs name the tenant, project and cluster by id here (stable across renames and
/// unambiguous), while the entry names stay readable.
///
/// ```
/// use kubenova_api::model::AccessRole;
/// let e = kubenova_kubeconfig::exec_config_for_cluster("https://m", "t-id", None, AccessRole::Viewer, Some("c-id"));
/// assert_eq!(e.args.unwrap_or_default().last().map(String::as_str), Some("c-id"));
/// ```
pub fn exec_config_for_cluster(
    manager_url: &str,
    tenant: &str,
    project: Option<&str>,
    role: AccessRole,
    cluster: Option<&str>,
) -> ExecConfig {
    let mut args = vec![
        "auth".to_owned(),
        "token".to_owned(),
        "--manager".to_owned(),
        manager_url.to_owned(),
        "--tenant".to_owned(),
        tenant.to_owned(),
    ];
    if let Some(p) = project {
        args.push("--project".to_owned());
        args.push(p.to_owned());
    }
    args.push("--role".to_owned());
    args.push(role.as_str().to_owned());
    if let Some(c) = cluster {
        args.push("--cluster".to_owned());
        args.push(c.to_owned());
    }
    ExecConfig {
        api_version: Some(EXEC_API_VERSION.to_owned()),
        command: Some(EXEC_COMMAND.to_owned()),
        args: Some(args),
        install_hint: Some(
            "The kubenova CLI fetches short-lived tokens from the KubeNova manager; install it \
             and make sure `kubenova` is on your PATH."
                .to_owned(),
        ),
        interactive_mode: Some(ExecInteractiveMode::Never),
        provide_cluster_info: false,
        ..ExecConfig::default()
    }
}

pub(crate) fn token_auth(token: &str) -> Result<AuthInfo> {
    if token.trim().is_empty() {
        return Err(Error::Serialization("empty bearer token".to_owned()));
    }
    Ok(AuthInfo {
        token: Some(SecretString::from(token.to_owned())),
        ..AuthInfo::default()
    })
}

/// `ca_data` is the `certificate-authority-data` value: base64 of the CA's PEM.
pub(crate) fn single_entry_kubeconfig(
    name: &str,
    server: &str,
    ca_data: &str,
    namespace: &str,
    auth_info: AuthInfo,
) -> Kubeconfig {
    Kubeconfig {
        api_version: Some("v1".to_owned()),
        kind: Some("Config".to_owned()),
        clusters: vec![NamedCluster {
            name: name.to_owned(),
            cluster: Some(Cluster {
                server: Some(server.to_owned()),
                certificate_authority_data: Some(ca_data.to_owned()),
                ..Cluster::default()
            }),
            other: Default::default(),
        }],
        auth_infos: vec![NamedAuthInfo {
            name: name.to_owned(),
            auth_info: Some(auth_info),
            other: Default::default(),
        }],
        contexts: vec![NamedContext {
            name: name.to_owned(),
            context: Some(Context {
                cluster: name.to_owned(),
                user: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                ..Context::default()
            }),
            other: Default::default(),
        }],
        current_context: Some(name.to_owned()),
        ..Kubeconfig::default()
    }
}

pub(crate) fn check_label(field: &'static str, value: &str) -> Result<()> {
    match dns_label_problem(value) {
        Some(reason) => Err(Error::InvalidName { field, reason }),
        None => Ok(()),
    }
}

pub(crate) fn check_subdomain(field: &'static str, value: &str) -> Result<()> {
    let mut v = kubenova_api::validate::Validator::new();
    v.dns_subdomain(field, value);
    v.finish().map_err(|e| Error::InvalidName {
        field,
        reason: e.to_string(),
    })
}

/// `https://host[:port][/path]`; with `allow_loopback_http`, `http://` is accepted for
/// `localhost`, `127.0.0.1` and `[::1]` only (local development of the manager).
pub(crate) fn check_https(field: &'static str, url: &str, allow_loopback_http: bool) -> Result<()> {
    let bad = |reason: &str| Error::InsecureUrl {
        field,
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: http::Uri = url.parse().map_err(|e| bad(&format!("not a URL: {e}")))?;
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if uri.query().is_some() {
        return Err(bad("must not carry a query string"));
    }
    if url.contains('@') {
        return Err(bad("must not carry user info"));
    }
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http")
            if allow_loopback_http && matches!(host, "localhost" | "127.0.0.1" | "[::1]") =>
        {
            Ok(())
        }
        _ => Err(bad("must be an https:// URL")),
    }
}

/// At least one well-formed PEM `CERTIFICATE` block with a base64 body.
pub(crate) fn check_ca_pem(field: &'static str, pem: &str) -> Result<()> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    if pem.trim().is_empty() {
        return Err(Error::MissingCa(field));
    }
    let bad = |reason: &str| Error::InvalidCa {
        field,
        reason: reason.to_owned(),
    };
    let start = pem
        .find(BEGIN)
        .ok_or_else(|| bad("no BEGIN CERTIFICATE line"))?;
    let rest = &pem[start + BEGIN.len()..];
    let end = rest
        .find(END)
        .ok_or_else(|| bad("no END CERTIFICATE line"))?;
    let body: String = rest[..end].split_whitespace().collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| bad(&format!("body is not base64: {e}")))?;
    // A DER certificate is a SEQUENCE.
    if der.first() != Some(&0x30) {
        return Err(bad("body is not a DER certificate"));
    }
    Ok(())
}

/// Serialization of a kubeconfig in the two formats the manager serves.
pub trait KubeconfigExt {
    /// YAML, as `kubectl` writes it.
    fn to_yaml(&self) -> Result<String>;
    /// JSON (also accepted by `kubectl` and client libraries).
    fn to_json(&self) -> Result<String>;
    /// `true` when any cluster entry sets `insecure-skip-tls-verify` or lacks CA data.
    /// Kubeconfigs built by this crate never do.
    fn is_insecure(&self) -> bool;
    /// Makes every user entry authenticate with the bearer `token` (replacing an exec
    /// stanza or an earlier token), e.g. to fill in a token signed after the kubeconfig
    /// was built and validated. An empty token is an error and changes nothing.
    ///
    /// ```
    /// use kubenova_kubeconfig::{Kubeconfig, KubeconfigExt};
    /// let mut kc: Kubeconfig = serde_saphyr::from_str("users:\n- name: u\n  user: {}\n").unwrap();
    /// kc.set_token("eyJhbGciOiJFUzI1NiJ9.e30.sig").unwrap();
    /// assert!(kc.auth_infos[0].auth_info.as_ref().unwrap().token.is_some());
    /// assert!(kc.set_token(" ").is_err());
    /// ```
    fn set_token(&mut self, token: &str) -> Result<()>;
}

impl KubeconfigExt for Kubeconfig {
    fn to_yaml(&self) -> Result<String> {
        // Plain scalars, as kubectl writes them: no folded (`>-`) style for the long
        // base64 CA data and tokens. serde-saphyr emits the same text as serde_yaml did here
        // in about a quarter of the time (docs/src/benchmarks.md, "Kubeconfig issuance").
        let options = serde_saphyr::ser_options! { prefer_block_scalars: false };
        // One allocation for a typical single-entry kubeconfig (CA data and token included).
        let mut out = String::with_capacity(4096);
        serde_saphyr::to_fmt_writer_with_options(&mut out, self, options)
            .map_err(|e| Error::Serialization(e.to_string()))?;
        Ok(out)
    }

    fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::Serialization(e.to_string()))
    }

    fn set_token(&mut self, token: &str) -> Result<()> {
        let auth = token_auth(token)?;
        for named in &mut self.auth_infos {
            named.auth_info = Some(auth.clone());
        }
        Ok(())
    }

    fn is_insecure(&self) -> bool {
        self.clusters.iter().any(|c| {
            c.cluster.as_ref().is_none_or(|c| {
                c.insecure_skip_tls_verify == Some(true)
                    || c.certificate_authority_data
                        .as_deref()
                        .is_none_or(str::is_empty)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_rules() {
        assert!(check_https("f", "https://proxy.example.com:9001", false).is_ok());
        assert!(check_https("f", "http://proxy.example.com", false).is_err());
        assert!(check_https("f", "http://127.0.0.1:8080", false).is_err());
        assert!(check_https("f", "http://127.0.0.1:8080", true).is_ok());
        assert!(check_https("f", "http://example.com", true).is_err());
        assert!(check_https("f", "proxy.example.com", false).is_err());
        assert!(check_https("f", "https://u:p@proxy.example.com", false).is_err());
        assert!(check_https("f", "", false).is_err());
    }

    #[test]
    fn ca_rules() {
        assert!(matches!(check_ca_pem("f", " "), Err(Error::MissingCa(_))));
        assert!(matches!(
            check_ca_pem("f", "not a pem"),
            Err(Error::InvalidCa { .. })
        ));
        assert!(matches!(
            check_ca_pem(
                "f",
                "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"
            ),
            Err(Error::InvalidCa { .. })
        ));
        assert!(
            check_ca_pem(
                "f",
                "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n"
            )
            .is_ok()
        );
    }

    #[test]
    fn exec_args_with_and_without_project() {
        let e = exec_config("https://m", "acme", Some("web"), AccessRole::Viewer);
        assert_eq!(
            e.args.unwrap_or_default(),
            [
                "auth",
                "token",
                "--manager",
                "https://m",
                "--tenant",
                "acme",
                "--project",
                "web",
                "--role",
                "viewer"
            ]
        );
        let e = exec_config("https://m", "acme", None, AccessRole::Owner);
        assert_eq!(
            e.args.unwrap_or_default(),
            [
                "auth",
                "token",
                "--manager",
                "https://m",
                "--tenant",
                "acme",
                "--role",
                "owner"
            ]
        );
    }
}
