//! # kubenova-operator
//!
//! The in-cluster operator: runs the NovaTenant, NovaProject and NovaApp controllers of
//! [`kubenova_reconcile::controller`], serves `/healthz`, `/readyz` and `/metrics`
//! (Prometheus text), and stops gracefully on SIGTERM / Ctrl-C (in-flight reconciles
//! finish first). Two offline subcommands need no cluster:
//!
//! ```text
//! kubenova-operator [run] [--catalog FILE] [--concurrency N] [--listen ADDR] [--kubeconfig FILE]
//! kubenova-operator render -f novatenant.yaml [--catalog FILE]   # several documents in, YAML out
//! kubenova-operator crds                                         # the CRD manifests
//! ```
//!
//! Every `run` option can also be given as an environment variable: `KUBENOVA_CATALOG`,
//! `KUBENOVA_CONCURRENCY`, `KUBENOVA_LISTEN`, `KUBENOVA_KUBECONFIG`. Without a kubeconfig
//! the client configuration is inferred (`KUBECONFIG`, `~/.kube/config`, or the in-cluster
//! service account). The RBAC the operator needs is in `deploy/operator/rbac.yaml`.

use std::future::IntoFuture;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::{Args, Parser, Subcommand};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kubenova_api::catalog::Catalog;
use kubenova_reconcile::controller::{self, Ctx, Metrics, RunOptions};
use prometheus_client::registry::Registry;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "kubenova-operator",
    version,
    about = "KubeNova operator: reconciles NovaTenant, NovaProject and NovaApp"
)]
pub struct Cli {
    /// What to do (default: `run`).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `run` (also accepted without the subcommand).
    #[command(flatten)]
    pub run: RunConfig,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controllers (the default).
    Run(RunConfig),
    /// Print what Nova objects translate into (several YAML documents in and out).
    Render {
        /// Input file with NovaTenant / NovaProject / NovaApp documents (`-` = stdin).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Catalog file (plans and policysets); default: the built-in catalog.
        #[arg(long, env = "KUBENOVA_CATALOG")]
        catalog: Option<PathBuf>,
    },
    /// Print the NovaTenant, NovaProject and NovaApp CRDs as YAML.
    Crds,
}

/// Configuration of [`run`].
#[derive(Debug, Clone, Args)]
pub struct RunConfig {
    /// Catalog file (plans and policysets); default: the built-in catalog.
    #[arg(long, env = "KUBENOVA_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// Concurrent reconciles per controller.
    #[arg(long, env = "KUBENOVA_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// Listen address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "KUBENOVA_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Kubeconfig file; default: inferred (`KUBECONFIG`, `~/.kube/config`, in-cluster).
    #[arg(long, env = "KUBENOVA_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

/// Installs the `tracing` subscriber (`RUST_LOG`, default `info`), logging to stderr.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs the parsed command line.
pub fn main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => run_blocking(cli.run),
        Some(Command::Run(config)) => run_blocking(config),
        Some(Command::Render { file, catalog }) => {
            let out = render_file(&file, catalog.as_deref())?;
            std::io::stdout().write_all(out.as_bytes())?;
            Ok(())
        }
        Some(Command::Crds) => {
            std::io::stdout().write_all(crds_yaml()?.as_bytes())?;
            Ok(())
        }
    }
}

fn run_blocking(config: RunConfig) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(config))
}

/// The catalog in `path`, or the built-in one.
pub fn load_catalog(path: Option<&Path>) -> anyhow::Result<Catalog> {
    match path {
        Some(p) => {
            Catalog::from_file(p).with_context(|| format!("loading catalog {}", p.display()))
        }
        None => Ok(Catalog::builtin()),
    }
}

/// `render -f FILE`: the translated objects of every document in `file` (`-` = stdin).
pub fn render_file(file: &Path, catalog: Option<&Path>) -> anyhow::Result<String> {
    let catalog = load_catalog(catalog)?;
    let yaml = if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    Ok(kubenova_reconcile::render(&yaml, &catalog)?)
}

/// `crds`: the three CRDs as a multi-document YAML stream.
pub fn crds_yaml() -> anyhow::Result<String> {
    let mut out = String::new();
    for (_, yaml) in kubenova_reconcile::crds::crd_files()? {
        out.push_str("---\n");
        out.push_str(&yaml);
    }
    Ok(out)
}

/// A client from `kubeconfig`, or the inferred configuration.
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

#[derive(Clone)]
struct HttpState {
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The `/healthz`, `/readyz` and `/metrics` router.
fn router(registry: Arc<Registry>, ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(HttpState { registry, ready })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "no SIGTERM handler; stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs the operator until SIGTERM / Ctrl-C: the three controllers and the health and
/// metrics server. Readiness turns true once the API server answered and the controllers
/// started, and false again on shutdown.
pub async fn run(config: RunConfig) -> anyhow::Result<()> {
    let catalog = load_catalog(config.catalog.as_deref())?;
    let client = client(config.kubeconfig.as_deref()).await?;

    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::default());
    metrics.register(&mut registry);
    let registry = Arc::new(registry);
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /healthz /readyz /metrics");
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(
        axum::serve(listener, router(registry, ready.clone()))
            .with_graceful_shutdown(async move {
                let _ = server_stop.wait_for(|stop| *stop).await;
            })
            .into_future(),
    );

    let version = client
        .apiserver_version()
        .await
        .context("reaching the Kubernetes API server")?;
    tracing::info!(version = %version.git_version, "connected to the API server");
    let ctx = Arc::new(Ctx::new(client, Arc::new(catalog), metrics));
    let mut controllers = tokio::spawn(controller::run(
        ctx,
        RunOptions {
            concurrency: config.concurrency,
        },
        stop_rx,
    ));
    ready.store(true, Ordering::Relaxed);

    tokio::select! {
        _ = wait_for_signal() => tracing::info!("shutting down"),
        r = &mut controllers => {
            tracing::warn!("controllers stopped unexpectedly");
            r?;
        }
    }
    ready.store(false, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    if !controllers.is_finished() {
        controllers.await?;
    }
    server.await??;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cli_defaults_and_subcommands() {
        let cli = Cli::try_parse_from(["kubenova-operator"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.run.concurrency, 16);
        let cli = Cli::try_parse_from(["kubenova-operator", "render", "-f", "x.yaml"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Render { .. })));
        let cli = Cli::try_parse_from(["kubenova-operator", "run", "--concurrency", "3"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Run(RunConfig { concurrency: 3, .. }))
        ));
    }

    #[test]
    fn crds_yaml_has_three_documents() {
        let y = crds_yaml().unwrap();
        assert_eq!(y.matches("kind: CustomResourceDefinition").count(), 3);
    }
}
