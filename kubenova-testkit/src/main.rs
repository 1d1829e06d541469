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
        /// Simulated controllers to run: `capsule`, `kubevela` (comma separated).
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
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
            let tmp = kubeconfig.with_extension("tmp");
            std::fs::write(&tmp, cluster.kubeconfig_yaml())
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &kubeconfig)
                .with_context(|| format!("writing {}", kubeconfig.display()))?;
            eprintln!(
                "kubenova-testkit serving {} (kubeconfig: {})",
                cluster.url(),
                kubeconfig.display()
            );
            wait_for_signal().await?;
            eprintln!("kubenova-testkit shutting down");
            cluster.shutdown().await;
        }
    }
    Ok(())
}
