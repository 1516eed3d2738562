//! `tributary`: one binary for every role. See `tributary --help`.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    tributary_delivery::install_tls_provider();
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    tributary::telemetry::init(&env);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::from(70);
        }
    };
    match runtime.block_on(cli::run(args, env)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
