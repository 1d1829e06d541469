//! Platform components: cert-manager → Capsule → Capsule Proxy → KubeVela, installed in
//! that order through a [`ComponentDriver`], with readiness checks between steps and
//! capability flags derived from what the cluster really serves.
//!
//! Two drivers ship:
//! - [`HelmCli`] runs the `helm` binary (`helm upgrade --install --wait`) with the pinned
//!   chart versions of [`PINNED`]; charts come from `/charts/<chart>-<version>.tgz`
//!   (baked into the operator image) or, with `HELM_USE_REMOTE=true`, from the upstream
//!   repositories.
//! - [`SimulatedDriver`] registers each component's upstream CRDs through the API and
//!   creates its Deployments already available, so that the whole flow runs against
//!   `kubenova-testkit` without Helm.
//!
//! **Installer identity (opt-in).** The charts create CRDs, ClusterRoles and webhooks,
//! which the operator's least-privilege identity may not. With
//! [`HelmCli::installer`] set, every install first requests a short-lived token for the
//! installer ServiceAccount (`kubenova-installer`, bound to `cluster-admin`; see
//! [`crate::manifests::OperatorParams::helm_installer`]) through the TokenRequest API and
//! runs `helm --kubeconfig <file>` with it: the file is `0600` in a fresh `0700`
//! temporary directory, removed when helm exits. The token is never on a command line,
//! in the environment or in a log line ([`InstallerIdentity`]).
//!
//! **KubeVela application authentication.** KubeVela is installed with
//! `authentication.enabled=true` and `authentication.withUser=true`: each Application is
//! deployed impersonating the identity that applied it, which for KubeNova is the
//! project's `kubenova-app` ServiceAccount
//! ([`crate::manifests::APP_SERVICE_ACCOUNT`]).
//!
//! Capabilities ([`observe_capabilities`]) are never assumed from an install having been
//! requested: a flag is true only when the component's CRDs are served and its
//! Deployments report available replicas.
//!
//! ```
//! use kubenova_reconcile::components::{PINNED, component};
//! let order: Vec<_> = PINNED.iter().map(|c| c.name).collect();
//! assert_eq!(order, ["cert-manager", "capsule", "capsule-proxy", "kubevela"]);
//! assert_eq!(component("capsule").unwrap().version, "0.14.6");
//! assert!(component("mysql").is_none());
//! ```

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kubenova_api::model::{Capabilities, ComponentPhase, ComponentState};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A chart the operator installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Component {
    /// KubeNova's name for it (as in [`kubenova_api::model::COMPONENTS`]).
    pub name: &'static str,
    /// Helm release name.
    pub release: &'static str,
    /// Chart name.
    pub chart: &'static str,
    /// Pinned chart version (see `upstream-schemas/SOURCES.md`).
    pub version: &'static str,
    /// Remote chart reference used with `HELM_USE_REMOTE=true`.
    pub remote: &'static str,
    /// Target namespace.
    pub namespace: &'static str,
    /// `--set` values.
    pub values: &'static [(&'static str, &'static str)],
    /// Deployments that must be available before the next component starts.
    pub deployments: &'static [&'static str],
    /// CRDs that must be served for the capability flag (`<plural>.<group>`).
    pub crds: &'static [&'static str],
}

/// The components in install order with pinned versions.
pub const PINNED: &[Component] = &[
    Component {
        name: "cert-manager",
        release: "cert-manager",
        chart: "cert-manager",
        version: "v1.21.1",
        remote: "oci://quay.io/jetstack/charts/cert-manager",
        namespace: "cert-manager",
        values: &[("crds.enabled", "true")],
        deployments: &[
            "cert-manager",
            "cert-manager-webhook",
            "cert-manager-cainjector",
        ],
        crds: &["certificates.cert-manager.io", "issuers.cert-manager.io"],
    },
    Component {
        name: "capsule",
        release: "capsule",
        chart: "capsule",
        version: "0.14.6",
        remote: "oci://ghcr.io/projectcapsule/charts/capsule",
        namespace: "capsule-system",
        values: &[("proxy.enabled", "false")],
        deployments: &["capsule-controller-manager"],
        crds: &["tenants.capsule.clastix.io"],
    },
    Component {
        name: "capsule-proxy",
        release: "capsule-proxy",
        chart: "capsule-proxy",
        version: "0.14.1",
        remote: "oci://ghcr.io/projectcapsule/charts/capsule-proxy",
        namespace: "capsule-system",
        values: &[("options.generateCertificates", "true")],
        deployments: &["capsule-proxy"],
        crds: &["proxysettings.capsule.clastix.io"],
    },
    Component {
        name: "kubevela",
        release: "kubevela",
        chart: "vela-core",
        version: "1.10.9",
        remote: "https://kubevela.github.io/charts",
        namespace: "vela-system",
        // Application authentication: KubeVela's webhook records the identity that
        // created or updated an Application (`app.oam.dev/username`) and the controller
        // deploys it impersonating that identity, instead of with its own rights (with
        // authentication on, the chart no longer binds KubeVela to cluster-admin). The
        // operator applies each project's Applications as that project's `kubenova-app`
        // ServiceAccount, so an Application can do no more than the project's `edit`
        // RoleBinding allows in its own namespace. The webhook then refuses the
        // `app.oam.dev/service-account-name` annotation.
        values: &[
            ("authentication.enabled", "true"),
            ("authentication.withUser", "true"),
        ],
        deployments: &["kubevela-vela-core"],
        crds: &["applications.core.oam.dev"],
    },
];

/// Looks a component up by name; `None` for anything not in [`PINNED`].
pub fn component(name: &str) -> Option<&'static Component> {
    PINNED.iter().find(|c| c.name == name)
}

/// Why an install step failed.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    /// The component name is not one KubeNova installs.
    #[error("unknown component {0:?}; known: cert-manager, capsule, capsule-proxy, kubevela")]
    Unknown(String),
    /// The `helm` binary could not be run.
    #[error(
        "could not run helm ({binary}): {source}; install helm or set the operator's helm path"
    )]
    HelmMissing {
        /// Path tried.
        binary: String,
        /// Cause.
        source: std::io::Error,
    },
    /// `helm` exited with an error.
    #[error("helm {release} failed (exit {code:?}): {stderr}")]
    Helm {
        /// Release.
        release: String,
        /// Exit code.
        code: Option<i32>,
        /// Last lines of stderr.
        stderr: String,
    },
    /// The chart archive is not baked into the image.
    #[error(
        "chart {0} is not in the charts directory; bake it into the image or set HELM_USE_REMOTE=true"
    )]
    ChartMissing(PathBuf),
    /// Readiness did not come within the timeout.
    #[error("{component}: deployment {namespace}/{deployment} not available after {seconds}s")]
    NotReady {
        /// Component.
        component: String,
        /// Namespace.
        namespace: String,
        /// Deployment.
        deployment: String,
        /// Waited.
        seconds: u64,
    },
    /// A CRD file could not be read or parsed.
    #[error("CRDs of {component}: {message}")]
    Crds {
        /// Component.
        component: String,
        /// Cause.
        message: String,
    },
    /// The Kubernetes API failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// No kubeconfig could be made for the installer ServiceAccount.
    #[error(
        "no token for the helm installer ServiceAccount {namespace}/{service_account}: {message}; \
         bootstrap the cluster with the installer identity (manager --operator-helm-installer) \
         or run the operator without --installer-service-account"
    )]
    Installer {
        /// Namespace of the ServiceAccount.
        namespace: String,
        /// The ServiceAccount.
        service_account: String,
        /// Cause (never contains the token).
        message: String,
    },
}

/// Installs one component. Implementations must be idempotent (an install of what is
/// already installed at that version succeeds and changes nothing).
#[async_trait]
pub trait ComponentDriver: Send + Sync {
    /// Installs or upgrades `component`; returns the installed version.
    async fn install(&self, component: &Component) -> Result<String, ComponentError>;
}

/// Shortest installer token lifetime: the API server's minimum for a TokenRequest (10 min).
pub const INSTALLER_TOKEN_MIN_SECONDS: i64 = kubenova_kubeconfig::MIN_EXPIRATION_SECONDS;
/// Longest installer token lifetime (1 h), however long the helm timeout.
pub const INSTALLER_TOKEN_MAX_SECONDS: i64 = 3600;

/// Where helm reaches the API server with the installer's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiEndpoint {
    /// `https://` URL of the API server.
    pub server_url: String,
    /// PEM of the CA(s) that sign the API server's certificate.
    pub ca_pem: String,
}

impl ApiEndpoint {
    /// The endpoint of a kube client configuration (URL and root certificates).
    pub fn from_config(config: &kube::Config) -> Result<Self, String> {
        let server_url = config.cluster_url.to_string();
        let server_url = server_url.trim_end_matches('/').to_owned();
        let ca_pem = match (&config.root_cert, &config.root_cert_file) {
            (Some(certs), _) if !certs.is_empty() => {
                certs.iter().map(|der| der_to_pem(der)).collect()
            }
            (_, Some(file)) => std::fs::read_to_string(file)
                .map_err(|e| format!("reading the API server CA {}: {e}", file.display()))?,
            _ => {
                return Err(
                    "the API server's CA is not known (no certificate-authority data in the client configuration)"
                        .into(),
                );
            }
        };
        Ok(ApiEndpoint { server_url, ca_pem })
    }

    /// The endpoint of the inferred client configuration: in a pod, the API server of
    /// `KUBERNETES_SERVICE_HOST` with the mounted service-account CA.
    pub async fn infer() -> Result<Self, String> {
        let config = kube::Config::infer()
            .await
            .map_err(|e| format!("cannot infer the API server: {e}"))?;
        Self::from_config(&config)
    }
}

fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The opt-in identity helm runs as: a ServiceAccount (by default
/// [`crate::manifests::INSTALLER_NAME`] in `kubenova-system`) whose short-lived tokens
/// the operator requests with its own client, which may `create` `serviceaccounts/token`
/// for that ServiceAccount only.
///
/// ```no_run
/// # async fn demo(client: kube::Client) -> Result<(), kubenova_reconcile::components::ComponentError> {
/// use kubenova_reconcile::components::InstallerIdentity;
/// let installer = InstallerIdentity::new(client, "kubenova-system");
/// let kubeconfig = installer.kubeconfig_file(600).await?;
/// // run `helm --kubeconfig <kubeconfig.path()> ...`; the file goes away with `kubeconfig`.
/// drop(kubeconfig);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct InstallerIdentity {
    /// Client that requests the tokens (the operator's own identity).
    pub client: Client,
    /// Namespace of the ServiceAccount.
    pub namespace: String,
    /// The ServiceAccount (default [`crate::manifests::INSTALLER_NAME`]).
    pub service_account: String,
    /// API server URL and CA written into helm's kubeconfig; `None` (default) infers them
    /// at each install ([`ApiEndpoint::infer`]).
    pub endpoint: Option<ApiEndpoint>,
}

impl std::fmt::Debug for InstallerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstallerIdentity")
            .field("namespace", &self.namespace)
            .field("service_account", &self.service_account)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// A kubeconfig file for the installer's token, removed (with its directory) on drop.
#[derive(Debug)]
pub struct InstallerKubeconfig {
    dir: PathBuf,
    path: PathBuf,
    expires_at: i64,
}

impl InstallerKubeconfig {
    /// The file (`0600`, in a `0700` directory of its own).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// When the token expires, as reported by the API server (unix seconds).
    pub fn expires_at_unix(&self) -> i64 {
        self.expires_at
    }
}

impl Drop for InstallerKubeconfig {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove the installer kubeconfig");
        }
    }
}

/// Writes `contents` to `<fresh 0700 dir under the temp dir>/kubeconfig` with mode 0600.
fn write_private_file(contents: &[u8]) -> std::io::Result<(PathBuf, PathBuf)> {
    use std::io::Write as _;
    let dir = std::env::temp_dir().join(format!("kubenova-helm-{}", uuid::Uuid::new_v4().simple()));
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(&dir)?;
    let path = dir.join("kubeconfig");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let written = opts.open(&path).and_then(|mut f| {
        f.write_all(contents)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    Ok((dir, path))
}

impl InstallerIdentity {
    /// The installer ServiceAccount [`crate::manifests::INSTALLER_NAME`] in `namespace`,
    /// tokens requested with `client`, endpoint inferred.
    pub fn new(client: Client, namespace: &str) -> Self {
        InstallerIdentity {
            client,
            namespace: namespace.to_owned(),
            service_account: crate::manifests::INSTALLER_NAME.to_owned(),
            endpoint: None,
        }
    }

    fn error(&self, message: String) -> ComponentError {
        ComponentError::Installer {
            namespace: self.namespace.clone(),
            service_account: self.service_account.clone(),
            message,
        }
    }

    /// Requests a token valid for `expiration_seconds` (clamped to
    /// [`INSTALLER_TOKEN_MIN_SECONDS`]`..=`[`INSTALLER_TOKEN_MAX_SECONDS`]) through the
    /// TokenRequest API ([`kubenova_kubeconfig::service_account_kubeconfig`]) and writes
    /// a kubeconfig for it to a private temporary file.
    pub async fn kubeconfig_file(
        &self,
        expiration_seconds: i64,
    ) -> Result<InstallerKubeconfig, ComponentError> {
        use kubenova_kubeconfig::KubeconfigExt as _;
        let endpoint = match &self.endpoint {
            Some(e) => e.clone(),
            None => ApiEndpoint::infer().await.map_err(|e| self.error(e))?,
        };
        let req = kubenova_kubeconfig::ServiceAccountKubeconfigRequest {
            cluster_name: "in-cluster".into(),
            namespace: self.namespace.clone(),
            service_account: self.service_account.clone(),
            expiration_seconds: expiration_seconds
                .clamp(INSTALLER_TOKEN_MIN_SECONDS, INSTALLER_TOKEN_MAX_SECONDS),
            server_url: endpoint.server_url,
            ca_pem: endpoint.ca_pem,
            audiences: Vec::new(),
        };
        let out = kubenova_kubeconfig::service_account_kubeconfig(&self.client, &req)
            .await
            .map_err(|e| self.error(e.to_string()))?;
        let yaml = out
            .kubeconfig
            .to_yaml()
            .map_err(|e| self.error(e.to_string()))?;
        let (dir, path) = write_private_file(yaml.as_bytes())
            .map_err(|e| self.error(format!("writing its kubeconfig: {e}")))?;
        Ok(InstallerKubeconfig {
            dir,
            path,
            expires_at: out.expires_at.unix_timestamp(),
        })
    }
}

/// Runs the `helm` CLI.
#[derive(Debug, Clone)]
pub struct HelmCli {
    /// The helm binary (default `helm` on `PATH`).
    pub binary: PathBuf,
    /// Where baked charts live (default `/charts`).
    pub charts_dir: PathBuf,
    /// Pull charts from upstream instead (`HELM_USE_REMOTE=true`).
    pub use_remote: bool,
    /// Kubeconfig for helm; `None` = in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// `--timeout` of `helm --wait`.
    pub timeout: Duration,
    /// Run helm as this installer identity (a fresh short-lived token per install)
    /// instead of [`kubeconfig`](Self::kubeconfig) / the in-cluster service account.
    pub installer: Option<InstallerIdentity>,
}

impl Default for HelmCli {
    fn default() -> Self {
        HelmCli {
            binary: PathBuf::from("helm"),
            charts_dir: PathBuf::from("/charts"),
            use_remote: std::env::var("HELM_USE_REMOTE").is_ok_and(|v| v == "true"),
            kubeconfig: None,
            timeout: Duration::from_secs(600),
            installer: None,
        }
    }
}

impl HelmCli {
    /// The arguments of `helm` for one component (exposed for tests and dry runs), with
    /// [`kubeconfig`](Self::kubeconfig).
    pub fn args(&self, c: &Component) -> Result<Vec<String>, ComponentError> {
        self.args_with_kubeconfig(c, self.kubeconfig.as_deref())
    }

    /// Lifetime of an installer token: the helm timeout plus a minute (a `--wait` that
    /// runs to its timeout still holds a valid token), within
    /// [`INSTALLER_TOKEN_MIN_SECONDS`]`..=`[`INSTALLER_TOKEN_MAX_SECONDS`].
    pub fn installer_token_seconds(&self) -> i64 {
        i64::try_from(self.timeout.as_secs())
            .unwrap_or(i64::MAX)
            .saturating_add(60)
            .clamp(INSTALLER_TOKEN_MIN_SECONDS, INSTALLER_TOKEN_MAX_SECONDS)
    }

    fn args_with_kubeconfig(
        &self,
        c: &Component,
        kubeconfig: Option<&Path>,
    ) -> Result<Vec<String>, ComponentError> {
        let mut args: Vec<String> = vec!["upgrade".into(), "--install".into(), c.release.into()];
        if self.use_remote {
            if c.remote.starts_with("oci://") {
                args.push(c.remote.into());
            } else {
                args.extend([c.chart.into(), "--repo".into(), c.remote.into()]);
            }
            args.extend(["--version".into(), c.version.into()]);
        } else {
            let archive = self
                .charts_dir
                .join(format!("{}-{}.tgz", c.chart, c.version));
            if !archive.exists() {
                return Err(ComponentError::ChartMissing(archive));
            }
            args.push(archive.display().to_string());
        }
        args.extend([
            "--namespace".into(),
            c.namespace.into(),
            "--create-namespace".into(),
            "--wait".into(),
            "--timeout".into(),
            format!("{}s", self.timeout.as_secs()),
        ]);
        for (k, v) in c.values {
            args.extend(["--set".into(), format!("{k}={v}")]);
        }
        if let Some(k) = kubeconfig {
            args.extend(["--kubeconfig".into(), k.display().to_string()]);
        }
        Ok(args)
    }
}

#[async_trait]
impl ComponentDriver for HelmCli {
    async fn install(&self, c: &Component) -> Result<String, ComponentError> {
        // Chart checks first: no token is requested for an install that cannot start.
        self.args(c)?;
        // Held until helm exits; dropping it removes the file.
        let installer_kubeconfig = match &self.installer {
            Some(i) => {
                let k = i.kubeconfig_file(self.installer_token_seconds()).await?;
                tracing::info!(component = c.name, service_account = %format!("{}/{}", i.namespace, i.service_account),
                    expires_at = k.expires_at_unix(), "helm runs as the installer identity");
                Some(k)
            }
            None => None,
        };
        let args = match &installer_kubeconfig {
            Some(k) => self.args_with_kubeconfig(c, Some(k.path()))?,
            None => self.args(c)?,
        };
        let out = tokio::process::Command::new(&self.binary)
            .args(&args)
            .output()
            .await
            .map_err(|source| ComponentError::HelmMissing {
                binary: self.binary.display().to_string(),
                source,
            })?;
        drop(installer_kubeconfig);
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
            return Err(ComponentError::Helm {
                release: c.release.into(),
                code: out.status.code(),
                stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            });
        }
        Ok(c.version.into())
    }
}

/// Stands in for Helm against `kubenova-testkit`: registers the component's upstream CRD
/// files (`<crds_dir>/<component>/*.yaml`) through the API and creates its Deployments
/// with an available status. For Capsule Proxy it also creates the `capsule-proxy`
/// Service and a `capsule-proxy` Secret with the CA the proxy presents (`proxy_ca`).
/// Components without vendored CRDs (cert-manager) get minimal schema-less CRDs under
/// their real names, annotated `kubenova.io/simulated: "true"`.
#[derive(Clone)]
pub struct SimulatedDriver {
    /// Client of the (test) cluster.
    pub client: Client,
    /// Folder with one sub-folder of CRD YAML files per component (e.g. the testkit's
    /// `upstream/` copy of `upstream-schemas`); components without a folder get no CRDs.
    pub crds_dir: PathBuf,
    /// PEM CA the simulated proxy presents.
    pub proxy_ca: Option<String>,
}

const SIM_MANAGER: &str = "kubenova-simulated-helm";

async fn apply_crd_file(
    client: &Client,
    path: &Path,
    component: &str,
) -> Result<(), ComponentError> {
    let err = |message: String| ComponentError::Crds {
        component: component.into(),
        message,
    };
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| err(format!("{}: {e}", path.display())))?;
    let mut parsed = Vec::new();
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_str_multiple_with_options(&text, crate::manifests::yaml_file_options())
            .map_err(|e| err(format!("{}: {e}", path.display())))?;
    for value in docs {
        if value.is_null() {
            continue;
        }
        let crd: CustomResourceDefinition =
            serde_json::from_value(value).map_err(|e| err(format!("{}: {e}", path.display())))?;
        parsed.push(crd);
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in parsed {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(
            &name,
            &PatchParams::apply(SIM_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await?;
    }
    Ok(())
}

/// A schema-less (`x-kubernetes-preserve-unknown-fields`) namespaced CRD named
/// `<plural>.<group>` with one served version `v1`.
fn placeholder_crd(name: &str) -> CustomResourceDefinition {
    let (plural, group) = name.split_once('.').unwrap_or((name, "example.com"));
    let singular = plural.trim_end_matches('s');
    let mut kind: Vec<char> = singular.chars().collect();
    if let Some(f) = kind.first_mut() {
        *f = f.to_ascii_uppercase();
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": name, "annotations": {"kubenova.io/simulated": "true"}},
        "spec": {"group": group, "scope": "Namespaced",
            "names": {"plural": plural, "singular": singular, "kind": kind.into_iter().collect::<String>()},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
    }))
    .unwrap_or_default()
}

fn simulated_deployment(c: &Component, name: &str) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": c.namespace,
            "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": c.release, "helm.sh/chart": format!("{}-{}", c.chart, c.version)}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {"metadata": {"labels": {"app.kubernetes.io/name": name}},
                "spec": {"containers": [{"name": "manager", "image": format!("simulated/{}:{}", c.chart, c.version)}]}}}
    }))
    .unwrap_or_default()
}

#[async_trait]
impl ComponentDriver for SimulatedDriver {
    async fn install(&self, c: &Component) -> Result<String, ComponentError> {
        let pp = PatchParams::apply(SIM_MANAGER).force();
        let dir = self.crds_dir.join(c.name);
        if let Ok(mut entries) = tokio::fs::read_dir(&dir).await {
            let mut files = Vec::new();
            while let Ok(Some(e)) = entries.next_entry().await {
                if e.path().extension().is_some_and(|x| x == "yaml") {
                    files.push(e.path());
                }
            }
            files.sort();
            for f in files {
                apply_crd_file(&self.client, &f, c.name).await?;
            }
        } else {
            // No upstream copy (cert-manager's CRDs are not vendored): register minimal
            // schema-less CRDs under the real names so that capability checks see them.
            let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
            for name in c.crds {
                let crd = placeholder_crd(name);
                api.patch(name, &pp, &Patch::Apply(&crd)).await?;
            }
        }
        let ns: Api<Namespace> = Api::all(self.client.clone());
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": c.namespace}
        }))
        .unwrap_or_default();
        ns.patch(c.namespace, &pp, &Patch::Apply(&namespace))
            .await?;
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), c.namespace);
        for name in c.deployments {
            deployments
                .patch(name, &pp, &Patch::Apply(&simulated_deployment(c, name)))
                .await?;
            let status = serde_json::json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1,
                    "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "simulated"}]}
            });
            deployments
                .patch_status(name, &pp, &Patch::Apply(&status))
                .await?;
        }
        if c.name == "capsule-proxy" {
            let svc: Service = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "capsule-proxy", "namespace": c.namespace},
                "spec": {"selector": {"app.kubernetes.io/name": "capsule-proxy"},
                    "ports": [{"name": "proxy", "port": 9001, "targetPort": 9001, "protocol": "TCP"}]}
            }))
            .unwrap_or_default();
            Api::<Service>::namespaced(self.client.clone(), c.namespace)
                .patch("capsule-proxy", &pp, &Patch::Apply(&svc))
                .await?;
            if let Some(ca) = &self.proxy_ca {
                let secret: Secret = serde_json::from_value(serde_json::json!({
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": "capsule-proxy", "namespace": c.namespace},
                    "type": "Opaque",
                    "data": {"ca": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, ca)}
                }))
                .unwrap_or_default();
                Api::<Secret>::namespaced(self.client.clone(), c.namespace)
                    .patch("capsule-proxy", &pp, &Patch::Apply(&secret))
                    .await?;
            }
        }
        Ok(c.version.into())
    }
}

/// True when the Deployment reports at least one available replica.
pub async fn deployment_available(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<bool, kube::Error> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    Ok(api
        .get_opt(name)
        .await?
        .and_then(|d| d.status)
        .and_then(|s| s.available_replicas)
        .is_some_and(|n| n > 0))
}

async fn crd_served(client: &Client, name: &str) -> Result<bool, kube::Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    Ok(api
        .get_opt(name)
        .await?
        .is_some_and(|crd| crd.spec.versions.iter().any(|v| v.served)))
}

/// Whether a component is really there: its CRDs served and its Deployments available.
pub async fn component_present(client: &Client, c: &Component) -> Result<bool, kube::Error> {
    for crd in c.crds {
        if !crd_served(client, crd).await? {
            return Ok(false);
        }
    }
    for d in c.deployments {
        if !deployment_available(client, c.namespace, d).await? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Capability flags from what the cluster really serves (see [`component_present`]).
pub async fn observe_capabilities(client: &Client) -> Result<Capabilities, kube::Error> {
    let mut caps = Capabilities::default();
    for c in PINNED {
        let present = component_present(client, c).await?;
        match c.name {
            "cert-manager" => caps.cert_manager = present,
            "capsule" => caps.capsule = present,
            "capsule-proxy" => caps.capsule_proxy = present,
            "kubevela" => caps.kube_vela = present,
            _ => {}
        }
    }
    Ok(caps)
}

/// Installs one component and waits (polling every `poll`, up to `timeout`) until its
/// Deployments are available.
pub async fn install_and_wait(
    driver: &dyn ComponentDriver,
    client: &Client,
    c: &Component,
    poll: Duration,
    timeout: Duration,
) -> Result<String, ComponentError> {
    let version = driver.install(c).await?;
    let start = tokio::time::Instant::now();
    for d in c.deployments {
        while !deployment_available(client, c.namespace, d).await? {
            if start.elapsed() >= timeout {
                return Err(ComponentError::NotReady {
                    component: c.name.into(),
                    namespace: c.namespace.into(),
                    deployment: (*d).into(),
                    seconds: timeout.as_secs(),
                });
            }
            tokio::time::sleep(poll).await;
        }
    }
    Ok(version)
}

/// Installs `wanted` (names; empty = all) in [`PINNED`] order, stopping at the first
/// failure (later components depend on earlier ones). Returns the state of every
/// component attempted; `on_state` sees each transition (`installing`, then `ready` or
/// `failed`) so the caller can report progress.
pub async fn install_in_order(
    driver: &dyn ComponentDriver,
    client: &Client,
    wanted: &[String],
    timeout: Duration,
    mut on_state: impl FnMut(&ComponentState) + Send,
) -> Result<Vec<ComponentState>, ComponentError> {
    for w in wanted {
        if component(w).is_none() {
            return Err(ComponentError::Unknown(w.clone()));
        }
    }
    let mut states = Vec::new();
    for c in PINNED
        .iter()
        .filter(|c| wanted.is_empty() || wanted.iter().any(|w| w == c.name))
    {
        let mut state = ComponentState {
            name: c.name.into(),
            version: Some(c.version.into()),
            phase: ComponentPhase::Installing,
            message: String::new(),
            request_id: None,
        };
        on_state(&state);
        match install_and_wait(driver, client, c, Duration::from_millis(500), timeout).await {
            Ok(v) => {
                state.version = Some(v);
                state.phase = ComponentPhase::Ready;
                on_state(&state);
                states.push(state);
            }
            Err(e) => {
                state.phase = ComponentPhase::Failed;
                state.message = e.to_string();
                on_state(&state);
                states.push(state);
                return Ok(states);
            }
        }
    }
    Ok(states)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn helm_args_pin_versions_and_never_skip_tls() {
        let h = HelmCli {
            use_remote: true,
            ..HelmCli::default()
        };
        for c in PINNED {
            let args = h.args(c).unwrap().join(" ");
            assert!(args.contains(&format!("--version {}", c.version)), "{args}");
            assert!(args.contains("--wait"));
            assert!(!args.contains("insecure"), "{args}");
        }
        let vela = h.args(component("kubevela").unwrap()).unwrap().join(" ");
        assert!(
            vela.contains("vela-core --repo https://kubevela.github.io/charts"),
            "{vela}"
        );
    }

    /// KubeVela runs with its application authentication on and impersonating the
    /// requesting user, so that an Application deploys with the rights of the identity
    /// that applied it (the project's `kubenova-app` ServiceAccount), not cluster-admin.
    #[test]
    fn kubevela_authenticates_applications_as_their_user() {
        for use_remote in [true, false] {
            let dir = std::env::temp_dir().join(format!("kn-vela-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("vela-core-1.10.9.tgz"), b"x").unwrap();
            let h = HelmCli {
                use_remote,
                charts_dir: dir.clone(),
                ..HelmCli::default()
            };
            let args = h.args(component("kubevela").unwrap()).unwrap();
            let sets: Vec<&str> = args
                .windows(2)
                .filter(|w| w[0] == "--set")
                .map(|w| w[1].as_str())
                .collect();
            assert!(sets.contains(&"authentication.enabled=true"), "{args:?}");
            assert!(sets.contains(&"authentication.withUser=true"), "{args:?}");
            std::fs::remove_dir_all(dir).unwrap();
        }
        // The other charts do not get KubeVela's values.
        let h = HelmCli {
            use_remote: true,
            ..HelmCli::default()
        };
        for c in PINNED.iter().filter(|c| c.name != "kubevela") {
            let args = h.args(c).unwrap().join(" ");
            assert!(!args.contains("authentication."), "{args}");
        }
    }

    #[test]
    fn baked_charts_must_exist() {
        let dir = std::env::temp_dir().join(format!("kn-charts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let h = HelmCli {
            use_remote: false,
            charts_dir: dir.clone(),
            ..HelmCli::default()
        };
        let c = component("capsule").unwrap();
        assert!(matches!(h.args(c), Err(ComponentError::ChartMissing(_))));
        std::fs::write(dir.join("capsule-0.14.6.tgz"), b"x").unwrap();
        let args = h.args(c).unwrap();
        assert!(args.iter().any(|a| a.ends_with("capsule-0.14.6.tgz")));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
