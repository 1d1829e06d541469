//! `kubenova-manager`: parses the command line and calls the library.

use clap::Parser;
use std::process::ExitCode;

/// jemalloc: cheaper than glibc malloc for the manager's cross-worker allocations (see
/// the dependency's comment in Cargo.toml).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KUBENOVA_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    match kubenova_manager::run(kubenova_manager::Cli::parse()).await {
        Ok(out) => {
            #[allow(clippy::print_stdout)]
            {
                println!("{out:#}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "kubenova-manager failed");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
