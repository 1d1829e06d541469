//! `kubenova-operator`: a thin shell over the library (see `kubenova_operator`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = kubenova_operator::Cli::parse();
    kubenova_operator::init_tracing();
    match kubenova_operator::main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kubenova-operator: {e:#}");
            ExitCode::FAILURE
        }
    }
}
