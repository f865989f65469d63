//! The `careplane` binary: parse the command line, dispatch; nothing else.

mod cache;
mod cli;
mod config;
mod healthcheck;
mod import;
mod metrics;
mod run;
mod shutdown;
mod telemetry;
mod worker;

use std::process::ExitCode;

use clap::Parser;

/// JSON-heavy request and import paths allocate many small objects from several threads;
/// mimalloc spends far less time there than glibc malloc (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let mut cli = cli::Cli::parse();
    if let Err(e) = cli
        .config
        .read_secret_files()
        .and_then(|()| cli.config.validate())
    {
        eprintln!("careplane: invalid configuration: {e}");
        return ExitCode::from(2);
    }
    let command = cli.command.unwrap_or(cli::Command::Serve);
    // Only the long-running processes export traces: a healthcheck every few seconds must not
    // start an exporter.
    let export_traces = matches!(command, cli::Command::Serve | cli::Command::Work);
    // Dropped last, after the runtime: flushes the spans of the whole run.
    let _telemetry = match telemetry::init(&cli.config, export_traces) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("careplane: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("careplane: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run::run(command, cli.config, _telemetry.trace_context())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "careplane exited with an error");
            eprintln!("careplane: {e}");
            ExitCode::FAILURE
        }
    }
}
