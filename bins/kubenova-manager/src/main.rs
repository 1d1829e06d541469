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
    let cli = kubenova_manager::Cli::parse();
    let mut telemetry = match kubenova_telemetry::init(&cli.log, "info", "kubenova-manager") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("kubenova-manager: {e}");
            return ExitCode::from(2);
        }
    };
    let command = cli.command.name();
    let res = kubenova_manager::run(cli).await;
    // The last spans are exported before the process ends.
    telemetry.shutdown();
    match res {
        Ok(out) => {
            #[allow(clippy::print_stdout)]
            match out {
                kubenova_manager::Output::Json(doc) => println!("{doc:#}"),
                kubenova_manager::Output::Line(line) => println!("{line}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            // Once, as the last line: not also as a log line.
            eprintln!("kubenova-manager: {command}: {e}");
            ExitCode::FAILURE
        }
    }
}
