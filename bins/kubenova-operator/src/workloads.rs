//! What the leader runs: the three controllers, and — when the cluster was bootstrapped by
//! a manager — the agent loop ([`kubenova_reconcile::agent`]) and the component installer
//! that executes the manager's install requests through a
//! [`kubenova_reconcile::components::ComponentDriver`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use kube::Client;
use kubenova_api::agent::ComponentRequest;
use kubenova_api::model::{ComponentPhase, ComponentState};
use kubenova_reconcile::agent::{self, AgentConfig, ComponentStates};
use kubenova_reconcile::components::{
    ComponentDriver, HelmCli, InstallerIdentity, SimulatedDriver, component, install_in_order,
};
use kubenova_reconcile::controller::{self, Ctx, RunOptions};
use tokio::sync::watch;

/// How components are installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DriverKind {
    /// The `helm` CLI with the pinned charts (baked at `/charts`, or remote with
    /// `HELM_USE_REMOTE=true`).
    Helm,
    /// Registers the upstream CRDs and creates available Deployments (for
    /// `kubenova-testkit` and demos; never for a real cluster).
    Simulated,
}

/// Options of the agent channel and the component installer.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// Turn the agent channel off (controllers only, e.g. GitOps-managed Nova objects).
    #[arg(long, env = "KUBENOVA_NO_AGENT", global = true)]
    pub no_agent: bool,
    /// Manager URL; default: the `managerUrl` of the agent Secret.
    #[arg(long, env = "KUBENOVA_MANAGER_URL", global = true)]
    pub manager_url: Option<String>,
    /// Agent credential (normally injected from the agent Secret by the Deployment);
    /// default: read from the agent Secret.
    #[arg(
        long,
        env = "KUBENOVA_AGENT_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub agent_token: Option<String>,
    /// Name of the agent Secret in the system namespace.
    #[arg(long, env = "KUBENOVA_AGENT_SECRET", default_value = kubenova_api::agent::AGENT_SECRET, global = true)]
    pub agent_secret: String,
    /// PEM file with the CA of the manager's serving certificate (default: public roots).
    #[arg(long, env = "KUBENOVA_MANAGER_CA_FILE", global = true)]
    pub manager_ca_file: Option<PathBuf>,
    /// Namespace of the operator (Secret, proxy ConfigMap).
    #[arg(long, env = "KUBENOVA_SYSTEM_NAMESPACE", default_value = agent::DEFAULT_NAMESPACE, global = true)]
    pub system_namespace: String,
    /// Externally reachable Capsule Proxy URL to publish (default: the in-cluster Service).
    #[arg(long, env = "KUBENOVA_CAPSULE_PROXY_URL", global = true)]
    pub capsule_proxy_url: Option<String>,
    /// Component driver.
    #[arg(long, env = "KUBENOVA_COMPONENT_DRIVER", value_enum, default_value_t = DriverKind::Helm, global = true)]
    pub component_driver: DriverKind,
    /// CRD folders of the simulated driver (one sub-folder per component).
    #[arg(long, env = "KUBENOVA_SIMULATED_CRDS_DIR", global = true)]
    pub simulated_crds_dir: Option<PathBuf>,
    /// The helm binary.
    #[arg(long, env = "KUBENOVA_HELM", default_value = "helm", global = true)]
    pub helm: PathBuf,
    /// Folder of baked chart archives.
    #[arg(
        long,
        env = "KUBENOVA_CHARTS_DIR",
        default_value = "/charts",
        global = true
    )]
    pub charts_dir: PathBuf,
    /// Per-component install timeout in seconds.
    #[arg(
        long,
        env = "KUBENOVA_INSTALL_TIMEOUT",
        default_value_t = 600,
        global = true
    )]
    pub install_timeout: u64,
    /// Run helm as this ServiceAccount of the system namespace (normally
    /// `kubenova-installer`, bound to cluster-admin; created by the manager's bootstrap
    /// with `--operator-helm-installer`): before each install the operator requests a
    /// short-lived token for it (TokenRequest) and hands helm a private kubeconfig file.
    /// Default: helm runs with the operator's own (least-privilege) identity.
    #[arg(long, env = kubenova_reconcile::manifests::ENV_INSTALLER_SERVICE_ACCOUNT, global = true)]
    pub installer_service_account: Option<String>,
    /// Seconds between two usage samples (each UTC hour's usage is the time-weighted mean of its
    /// samples); 0 turns usage collection off.
    #[arg(
        long,
        env = "KUBENOVA_USAGE_SAMPLE_INTERVAL",
        default_value_t = 300,
        value_parser = clap::value_parser!(u64).range(0..=3600),
        global = true
    )]
    pub usage_sample_interval: u64,
    /// Also report the current hour so far every this many seconds (it is replaced by the
    /// next report and by the hour's final record); 0 (default): ended hours only, and on
    /// demand (`POST /usage/collect`).
    #[arg(
        long,
        env = "KUBENOVA_USAGE_REPORT_INTERVAL",
        default_value_t = 0,
        value_parser = clap::value_parser!(u64).range(0..=86400),
        global = true
    )]
    pub usage_report_interval: u64,
    /// Expose each tenant's latest usage sample as the `kubenova_tenant_*` gauges (one
    /// series per tenant and metric, plus one per storage class and quota resource);
    /// `false` turns them off.
    #[arg(
        long,
        env = "KUBENOVA_TENANT_METRICS",
        default_value_t = true,
        action = clap::ArgAction::Set,
        global = true
    )]
    pub tenant_metrics: bool,
}

/// The agent configuration, or `None` when the agent is off or this cluster was not
/// bootstrapped by a manager (no credential anywhere): the controllers then run alone.
pub async fn agent_config(
    client: &Client,
    args: &AgentArgs,
) -> anyhow::Result<Option<AgentConfig>> {
    if args.no_agent {
        tracing::info!("agent channel off (--no-agent)");
        return Ok(None);
    }
    let mut config = match (&args.manager_url, &args.agent_token) {
        (Some(url), Some(token)) if !token.trim().is_empty() => AgentConfig::new(url, token.trim()),
        _ => match AgentConfig::from_secret(client, &args.system_namespace).await {
            Ok(mut c) => {
                if let Some(url) = &args.manager_url {
                    c.manager_url = url.clone();
                }
                c
            }
            Err(e) => {
                tracing::warn!(error = %e, "agent channel off: no agent credential (bootstrap the cluster from the manager to connect it)");
                return Ok(None);
            }
        },
    };
    config.namespace = args.system_namespace.clone();
    if let Some(p) = &args.manager_ca_file {
        config.ca_pem = Some(
            std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?,
        );
    }
    if args.capsule_proxy_url.is_some() {
        config.proxy_url = args.capsule_proxy_url.clone();
    }
    config.usage_sample_interval = Duration::from_secs(args.usage_sample_interval);
    config.usage_report_interval =
        (args.usage_report_interval > 0).then(|| Duration::from_secs(args.usage_report_interval));
    Ok(Some(config))
}

/// The component driver selected by `args`. `cluster_ca` (PEM) is what the simulated
/// Capsule Proxy presents: the emulated cluster's own CA, so that kubeconfigs can be
/// issued against an emulated cluster as against a real one.
pub fn driver(
    client: &Client,
    args: &AgentArgs,
    cluster_ca: Option<String>,
) -> anyhow::Result<Arc<dyn ComponentDriver>> {
    Ok(match args.component_driver {
        DriverKind::Helm => {
            let installer = installer_service_account(args).map(|sa| {
                tracing::info!(service_account = %format!("{}/{sa}", args.system_namespace), "helm runs as the installer identity (short-lived tokens)");
                InstallerIdentity {
                    service_account: sa.to_owned(),
                    ..InstallerIdentity::new(client.clone(), &args.system_namespace)
                }
            });
            Arc::new(HelmCli {
                binary: args.helm.clone(),
                charts_dir: args.charts_dir.clone(),
                timeout: Duration::from_secs(args.install_timeout),
                installer,
                ..HelmCli::default()
            })
        }
        DriverKind::Simulated => {
            tracing::warn!("component driver: simulated (for kubenova-testkit and demos only)");
            if installer_service_account(args).is_some() {
                tracing::warn!("--installer-service-account is ignored by the simulated driver");
            }
            Arc::new(SimulatedDriver {
                client: client.clone(),
                crds_dir: args.simulated_crds_dir.clone().ok_or_else(|| {
                    anyhow::anyhow!(
                        "--simulated-crds-dir is required with --component-driver simulated"
                    )
                })?,
                proxy_ca: cluster_ca,
            })
        }
    })
}

/// The installer ServiceAccount of `args`, if one is named (blank = none).
fn installer_service_account(args: &AgentArgs) -> Option<&str> {
    args.installer_service_account
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Executes install requests one at a time, reporting each transition into `states`
/// (the agent sends them with its heartbeats).
async fn installer(
    client: Client,
    driver: Arc<dyn ComponentDriver>,
    timeout: Duration,
    states: ComponentStates,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<ComponentRequest>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let req = tokio::select! {
            r = requests.recv() => match r { Some(r) => r, None => return },
            _ = stop.wait_for(|s| *s) => return,
        };
        if component(&req.component).is_none() {
            states.set(ComponentState {
                name: req.component.clone(),
                version: req.version.clone(),
                phase: ComponentPhase::Failed,
                message: format!("unknown component {:?}", req.component),
                request_id: None,
            });
            if let Some(id) = req.id {
                states.acknowledge(id);
            }
            continue;
        }
        // Taken: the state is recorded first, then the request acknowledged, so the
        // heartbeat carrying the ack reports `installing`, never a stale `absent`.
        states.set(ComponentState {
            name: req.component.clone(),
            version: req.version.clone(),
            phase: ComponentPhase::Installing,
            message: "install request taken".into(),
            request_id: None,
        });
        if let Some(id) = req.id {
            states.acknowledge(id);
        }
        tracing::info!(component = %req.component, "installing");
        let s = states.clone();
        match install_in_order(
            driver.as_ref(),
            &client,
            std::slice::from_ref(&req.component),
            timeout,
            |st| s.set(st.clone()),
        )
        .await
        {
            Ok(done) => {
                for st in done {
                    tracing::info!(component = %st.name, phase = ?st.phase, message = %st.message, "component install finished");
                }
            }
            Err(e) => states.set(ComponentState {
                name: req.component.clone(),
                version: req.version.clone(),
                phase: ComponentPhase::Failed,
                message: e.to_string(),
                request_id: None,
            }),
        }
    }
}

/// Aborts its tasks when dropped: cancelling [`run`] (the operator does on step-down)
/// cancels the controllers, the agent and the installer too, instead of leaving them
/// running detached.
struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Runs the controllers and, with `agent`, the agent loop and the installer, until `stop`.
/// Dropping (aborting) the returned future aborts all of them.
pub async fn run(
    ctx: Arc<Ctx>,
    opts: RunOptions,
    client: Client,
    agent: Option<(AgentConfig, Arc<dyn ComponentDriver>, Duration)>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let controllers = tokio::spawn(controller::run(ctx, opts, stop.clone()));
    let mut guard = AbortOnDrop(vec![controllers.abort_handle()]);
    let Some((mut config, driver, timeout)) = agent else {
        controllers.await?;
        return Ok(());
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    config.component_requests = Some(tx);
    let states = config.component_states.clone();
    let install = tokio::spawn(installer(
        client.clone(),
        driver,
        timeout,
        states,
        rx,
        stop.clone(),
    ));
    let agent_task = tokio::spawn(async move {
        let r = agent::run(client, config, stop).await;
        if let Err(e) = &r {
            tracing::error!(error = %e, "the agent loop stopped; the controllers keep running");
        }
        r
    });
    guard.0.push(install.abort_handle());
    guard.0.push(agent_task.abort_handle());
    let (c, i, a) = tokio::join!(controllers, install, agent_task);
    c?;
    i?;
    a?.map_err(|e| anyhow::anyhow!("agent loop: {e}"))?;
    Ok(())
}
