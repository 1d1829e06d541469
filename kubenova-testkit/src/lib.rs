//! `kubenova-testkit`: a faithful, in-process Kubernetes API server emulator served over real
//! HTTPS, so that the unmodified [`kube::Client`] (and `kube::runtime`) can be tested against it.
//!
//! See the crate README for exactly which API semantics are emulated.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use k8s_openapi::api::core::v1::Namespace;
//! use kube::api::{Api, PostParams};
//! use kubenova_testkit::TestCluster;
//!
//! let cluster = TestCluster::builder()
//!     .with_upstream_crds(true)
//!     .simulate_capsule(true)
//!     .start()
//!     .await?;
//! let client = cluster.client()?;
//! let namespaces: Api<Namespace> = Api::all(client);
//! let mut ns = Namespace::default();
//! ns.metadata.name = Some("acme-dev".into());
//! namespaces.create(&PostParams::default(), &ns).await?;
//! std::fs::write("kubeconfig.yaml", cluster.kubeconfig_yaml())?;
//! cluster.shutdown().await;
//! # Ok(())
//! # }
//! ```

// ApiError mirrors the full k8s Status (details + causes); boxing it would only add noise.
#![allow(clippy::result_large_err)]

pub mod error;
pub mod faults;
pub mod managed;
pub mod oidc;
pub mod openapi;
pub mod podlogs;
pub mod protobuf;
pub mod registry;
pub mod schema;
pub mod selector;
pub mod server;
pub mod simulate;
pub mod store;
pub mod strategic;
pub mod tokens;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use serde_json::Value;
use tokio::sync::watch;

pub use error::{ApiError, Cause};
pub use faults::{Fault, FaultId, Faults, Hold, RequestCounts};
pub use simulate::{
    SimulatedCapsule, SimulatedKubeVela, SimulatedQuota, SimulatedWorkloads, Simulations,
};
pub use store::{Store, StoreConfig};

/// Builder for [`TestCluster`].
#[derive(Debug, Clone)]
pub struct TestClusterBuilder {
    upstream_crds: bool,
    simulations: Simulations,
    port: u16,
    store: StoreConfig,
    bookmark_interval: Duration,
    nodes: Vec<(String, String, String)>,
}

impl Default for TestClusterBuilder {
    fn default() -> Self {
        Self {
            upstream_crds: false,
            simulations: Simulations::default(),
            port: 0,
            store: StoreConfig::default(),
            bookmark_interval: Duration::from_secs(1),
            nodes: Vec::new(),
        }
    }
}

impl TestClusterBuilder {
    /// Registers all embedded Capsule, capsule-proxy and KubeVela CRDs at start.
    pub fn with_upstream_crds(mut self, yes: bool) -> Self {
        self.upstream_crds = yes;
        self
    }

    /// Runs [`SimulatedCapsule`].
    pub fn simulate_capsule(mut self, yes: bool) -> Self {
        self.simulations.capsule = yes;
        self
    }

    /// Runs [`SimulatedKubeVela`], and emulates KubeVela's Application webhook with
    /// application authentication on (see [`server::App::kubevela_webhook`]).
    pub fn simulate_kubevela(mut self, yes: bool) -> Self {
        self.simulations.kubevela = yes;
        self
    }

    /// Runs [`SimulatedWorkloads`]: Deployments and StatefulSets report a finished
    /// rollout, so `helm install --wait` and kstatus see them ready.
    pub fn simulate_workloads(mut self, yes: bool) -> Self {
        self.simulations.workloads = yes;
        self
    }

    /// Runs [`SimulatedQuota`] (ResourceQuota `status.used`, as kube-controller-manager).
    pub fn simulate_quota(mut self, yes: bool) -> Self {
        self.simulations.quota = yes;
        self
    }

    /// Sets all simulations at once.
    pub fn simulations(mut self, s: Simulations) -> Self {
        self.simulations = s;
        self
    }

    /// Listens on `127.0.0.1:port` (0 = any free port, the default).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Size of the event history kept for watch resume (default 10 000).
    pub fn event_history(mut self, n: usize) -> Self {
        self.store.history = n.max(1);
        self
    }

    /// Per-watcher buffer; a watcher lagging further gets 410 Expired (default 4 096).
    pub fn watch_buffer(mut self, n: usize) -> Self {
        self.store.watch_buffer = n.max(16);
        self
    }

    /// Interval between BOOKMARK events on watches that allow them (default 1 s).
    pub fn bookmark_interval(mut self, d: Duration) -> Self {
        self.bookmark_interval = d;
        self
    }

    /// Adds a Node `name` with `status.allocatable` `cpu` and `memory` (quantities, e.g.
    /// `"4"` and `"16Gi"`; also `pods: 110`) and a `Ready` condition, created at start.
    /// Nothing schedules pods onto it: a test sets a pod's `spec.nodeName` itself. Without
    /// any, the cluster has no Nodes (as before).
    ///
    /// ```no_run
    /// # async fn f() -> anyhow::Result<()> {
    /// let cluster = kubenova_testkit::TestCluster::builder()
    ///     .node("node-a", "4", "16Gi")
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn node(mut self, name: &str, cpu: &str, memory: &str) -> Self {
        self.nodes
            .push((name.to_owned(), cpu.to_owned(), memory.to_owned()));
        self
    }

    /// Starts the cluster.
    pub async fn start(self) -> anyhow::Result<TestCluster> {
        let tls = server::generate_tls().context("generating TLS material")?;
        let store = Arc::new(Store::new(self.store.clone()));
        let admin_token = {
            use rand::RngCore as _;
            let mut raw = [0u8; 24];
            rand::thread_rng().fill_bytes(&mut raw);
            format!(
                "kubenova-admin.{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
            )
        };
        let app = Arc::new(server::App {
            store: store.clone(),
            admin_token,
            signer: tokens::TokenSigner::random(),
            bookmark_interval: self.bookmark_interval,
            faults: Arc::new(Faults::default()),
            kubevela_webhook: self.simulations.kubevela,
        });
        bootstrap(&store).context("creating default namespaces")?;
        for (name, cpu, memory) in &self.nodes {
            create_node(&store, name, cpu, memory)
                .with_context(|| format!("creating Node {name}"))?;
        }
        if self.upstream_crds {
            load_upstream_crds(&store).context("loading upstream CRDs")?;
        }
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .with_context(|| format!("binding 127.0.0.1:{}", self.port))?;
        let addr = listener.local_addr()?;
        let url = format!("https://127.0.0.1:{}", addr.port());
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let server_task = tokio::spawn(server::serve(
            listener,
            tls.server_config.clone(),
            app.clone(),
            shutdown_rx.clone(),
        ));
        let mut tasks = vec![server_task];
        if self.simulations.capsule {
            tasks.push(SimulatedCapsule::spawn(store.clone(), shutdown_rx.clone()));
        }
        if self.simulations.kubevela {
            tasks.push(SimulatedKubeVela::spawn(store.clone(), shutdown_rx.clone()));
        }
        if self.simulations.workloads {
            tasks.push(SimulatedWorkloads::spawn(
                store.clone(),
                shutdown_rx.clone(),
            ));
        }
        if self.simulations.quota {
            tasks.push(SimulatedQuota::spawn(store.clone(), shutdown_rx.clone()));
        }
        tokio::task::spawn_blocking(schema::warm_up);
        let kubeconfig_yaml = render_kubeconfig(&url, &tls.ca_pem, &app.admin_token);
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&kubeconfig_yaml)
            .context("parsing the generated kubeconfig")?;
        Ok(TestCluster {
            app,
            url,
            ca_pem: tls.ca_pem,
            kubeconfig,
            kubeconfig_yaml,
            shutdown_tx,
            tasks,
        })
    }
}

fn render_kubeconfig(url: &str, ca_pem: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kubenova-testkit\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\ncontexts:\n- name: kubenova-testkit\n  context:\n    cluster: kubenova-testkit\n    user: kubenova-testkit-admin\n    namespace: default\ncurrent-context: kubenova-testkit\nusers:\n- name: kubenova-testkit-admin\n  user:\n    token: {token}\npreferences: {{}}\n"
    )
}

fn bootstrap(store: &Store) -> Result<(), ApiError> {
    let ns_type = store
        .resolve("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("namespaces type missing"))?;
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let obj = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        store.create(
            &ns_type,
            None,
            obj,
            &store::WriteOpts::manager("kube-apiserver"),
        )?;
    }
    Ok(())
}

/// Creates a Node with its allocatable and capacity, as a kubelet registers it.
fn create_node(store: &Store, name: &str, cpu: &str, memory: &str) -> Result<(), ApiError> {
    let t = store
        .resolve("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("nodes type missing"))?;
    let resources = serde_json::json!({"cpu": cpu, "memory": memory, "pods": "110"});
    let created = store.create(
        &t,
        None,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        }),
        &store::WriteOpts::manager("kubelet"),
    )?;
    // The status through its subresource (a create drops it), as the kubelet reports it.
    let mut obj = created;
    obj["status"] = serde_json::json!({
        "capacity": resources, "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "kubelet is posting ready status",
                            "lastHeartbeatTime": managed::now_rfc3339(),
                            "lastTransitionTime": managed::now_rfc3339()}],
    });
    store.replace(
        &t,
        None,
        name,
        obj,
        &store::WriteOpts::manager("kubelet"),
        "status",
    )?;
    Ok(())
}

/// YAML parser options for request bodies and CRD files: `serde-saphyr`'s defaults with
/// room for the deep nesting of CRD schemas (two YAML levels per schema level).
pub(crate) fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! { max_depth: 512 },
        with_snippet: false,
    }
}

/// Registers (creates or replaces) every `CustomResourceDefinition` in a (multi-document) YAML
/// string through the same code path as `POST /apis/apiextensions.k8s.io/v1/customresourcedefinitions`.
pub fn register_crd_yaml(store: &Store, yaml: &str) -> Result<Vec<String>, ApiError> {
    let crd_type = store
        .resolve("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .ok_or_else(|| ApiError::internal("CRD type missing"))?;
    let mut names = Vec::new();
    let docs: Vec<Value> = serde_saphyr::from_str_multiple_with_options(yaml, yaml_options())
        .map_err(|e| ApiError::bad_request(format!("invalid CRD YAML: {e}")))?;
    for v in docs {
        if v.is_null() {
            continue;
        }
        let kind = v.get("kind").and_then(Value::as_str).unwrap_or_default();
        if kind != "CustomResourceDefinition" {
            return Err(ApiError::bad_request(format!(
                "expected a CustomResourceDefinition, got kind {kind:?}"
            )));
        }
        let name = v
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let opts = store::WriteOpts::manager("kubenova-testkit");
        match store.create(&crd_type, None, v.clone(), &opts) {
            Ok(_) => {}
            Err(e) if e.reason == "AlreadyExists" => {
                let mut v = v;
                if let Some(md) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                    md.remove("resourceVersion");
                }
                store.replace(&crd_type, None, &name, v, &opts, "")?;
            }
            Err(e) => return Err(e),
        }
        names.push(name);
    }
    Ok(names)
}

/// Registers all embedded Capsule, capsule-proxy and KubeVela CRDs, unmodified.
pub fn load_upstream_crds(store: &Store) -> Result<Vec<String>, ApiError> {
    let mut names = Vec::new();
    for (file, text) in upstream::UPSTREAM_CRDS {
        let mut n = register_crd_yaml(store, text).map_err(|mut e| {
            e.message = format!("{file}: {}", e.message);
            e
        })?;
        names.append(&mut n);
    }
    Ok(names)
}

/// A running emulated cluster. Dropping it stops the server too; prefer [`TestCluster::shutdown`].
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// use k8s_openapi::api::core::v1::ConfigMap;
/// use kube::api::{Api, PostParams};
///
/// let cluster = kubenova_testkit::TestCluster::start().await?;
/// let cms: Api<ConfigMap> = Api::namespaced(cluster.client()?, "default");
/// let mut cm = ConfigMap::default();
/// cm.metadata.name = Some("settings".into());
/// cms.create(&PostParams::default(), &cm).await?;
/// assert!(cluster.kubeconfig_yaml().contains("certificate-authority-data"));
/// cluster.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct TestCluster {
    app: Arc<server::App>,
    url: String,
    ca_pem: String,
    kubeconfig: kube::config::Kubeconfig,
    kubeconfig_yaml: String,
    shutdown_tx: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TestCluster {
    /// Starts a cluster with default options (no CRDs, no simulations, random port).
    pub async fn start() -> anyhow::Result<Self> {
        TestClusterBuilder::default().start().await
    }

    /// A builder for non-default options.
    pub fn builder() -> TestClusterBuilder {
        TestClusterBuilder::default()
    }

    /// A real `kube::Client` talking HTTPS (verifying the generated CA) with the admin token.
    /// Must be called inside a tokio runtime.
    pub fn client(&self) -> anyhow::Result<kube::Client> {
        let mut config = kube::Config::new(self.url.parse().context("parsing cluster URL")?);
        let der = rustls_pem_to_der(&self.ca_pem)?;
        config.root_cert = Some(vec![der]);
        config.default_namespace = "default".into();
        config.auth_info = serde_saphyr::from_str(&format!("token: {}", self.app.admin_token))
            .context("building auth info")?;
        kube::Client::try_from(config).context("building kube::Client")
    }

    /// A `kube::Client` authenticating with an arbitrary bearer token (e.g. a TokenRequest token).
    pub fn client_with_token(&self, token: &str) -> anyhow::Result<kube::Client> {
        let mut config = kube::Config::new(self.url.parse().context("parsing cluster URL")?);
        config.root_cert = Some(vec![rustls_pem_to_der(&self.ca_pem)?]);
        config.auth_info =
            serde_saphyr::from_str(&format!("token: {token}")).context("building auth info")?;
        kube::Client::try_from(config).context("building kube::Client")
    }

    /// The kubeconfig (CA data + admin token; never `insecure-skip-tls-verify`).
    pub fn kubeconfig(&self) -> kube::config::Kubeconfig {
        self.kubeconfig.clone()
    }

    /// The kubeconfig as YAML text.
    pub fn kubeconfig_yaml(&self) -> String {
        self.kubeconfig_yaml.clone()
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The CA certificate (PEM) that signed the server certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The admin bearer token.
    pub fn admin_token(&self) -> &str {
        &self.app.admin_token
    }

    /// Direct access to the object store (bypasses HTTP; same semantics).
    pub fn store(&self) -> &Arc<Store> {
        &self.app.store
    }

    /// Fault injection and request counters of the HTTP front end (see [`faults`]).
    ///
    /// ```no_run
    /// # async fn demo() -> anyhow::Result<()> {
    /// use kubenova_testkit::{Fault, TestCluster};
    /// let cluster = TestCluster::start().await?;
    /// cluster.faults().inject(Fault::verb("create").resource("namespaces").times(1).status(500));
    /// let before = cluster.faults().counts();
    /// // ... run the client under test ...
    /// let used = cluster.faults().counts().since(&before);
    /// assert_eq!(used.get("create", "namespaces"), 0);
    /// # Ok(()) }
    /// ```
    pub fn faults(&self) -> &Arc<Faults> {
        &self.app.faults
    }

    /// Registers CRDs from YAML (one or many documents); returns their names.
    pub fn register_crd_yaml(&self, yaml: &str) -> Result<Vec<String>, ApiError> {
        register_crd_yaml(&self.app.store, yaml)
    }

    /// Registers all embedded upstream CRDs.
    pub fn load_upstream_crds(&self) -> Result<Vec<String>, ApiError> {
        load_upstream_crds(&self.app.store)
    }

    /// Stops the server and the simulated controllers, and waits for them.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown_tx.send(true);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = self.shutdown_tx.send(true);
    }
}

fn rustls_pem_to_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("");
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .context("decoding CA PEM")
}
