//! `kubenova-operator`: a thin shell over the library (see `kubenova_operator`).

use std::process::ExitCode;

/// jemalloc keeps the operator's resident memory well below glibc malloc's with tens of
/// thousands of cached objects (~92 vs ~113 MiB peak RSS at 10,000 NovaTenants).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = kubenova_operator::Cli::parse_checked();
    let mut telemetry = match kubenova_operator::init_tracing(&cli) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("kubenova-operator: {e}");
            return ExitCode::from(2);
        }
    };
    let res = kubenova_operator::main(cli);
    telemetry.shutdown();
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kubenova-operator: {e:#}");
            ExitCode::FAILURE
        }
    }
}
