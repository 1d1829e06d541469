//! `kubenova-testkit serve`: runs an emulated Kubernetes API server and writes a kubeconfig.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kubenova_testkit::{Simulations, TestCluster};

#[derive(Debug, Parser)]
#[command(
    name = "kubenova-testkit",
    version,
    about = "In-process Kubernetes API server emulator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Logging (`--log-format`; `KUBENOVA_LOG`, `KUBENOVA_LOG_FORMAT`).
    #[command(flatten)]
    log: kubenova_telemetry::LogArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve an emulated cluster over HTTPS until Ctrl-C / SIGTERM.
    Serve {
        /// Port on 127.0.0.1 (0 = any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Where to write the kubeconfig.
        #[arg(long)]
        kubeconfig: PathBuf,
        /// Register the embedded Capsule, capsule-proxy and KubeVela CRDs.
        #[arg(long)]
        with_upstream_crds: bool,
        /// Simulated controllers to run: `capsule`, `kubevela`, `workloads`, `quota` (comma separated).
        #[arg(long, default_value = "")]
        simulate: String,
    },
}

async fn wait_for_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await?;
        Ok(())
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let _telemetry = match kubenova_telemetry::init(&cli.log, "info", "kubenova-testkit") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("kubenova-testkit: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let run = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(cli.command)));
    match run {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kubenova-testkit: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve {
            port,
            kubeconfig,
            with_upstream_crds,
            simulate,
        } => {
            let sims = Simulations::parse(&simulate)?;
            let cluster = TestCluster::builder()
                .port(port)
                .with_upstream_crds(with_upstream_crds)
                .simulations(sims)
                .start()
                .await?;
            tracing::info!(url = %cluster.url(), "emulated cluster listening");
            let tmp = kubeconfig.with_extension("tmp");
            std::fs::write(&tmp, cluster.kubeconfig_yaml())
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &kubeconfig)
                .with_context(|| format!("writing {}", kubeconfig.display()))?;
            tracing::info!(url = %cluster.url(), kubeconfig = %kubeconfig.display(), "serving; kubeconfig written");
            wait_for_signal().await?;
            tracing::info!("shutting down");
            cluster.shutdown().await;
        }
    }
    Ok(())
}
