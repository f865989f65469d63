//! Command line: `serve` (default), `migrate`, `healthcheck`.

use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "careplane",
    version,
    about = "Careplane: a FHIR R4 server for clinic networks"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Clone, Copy, Subcommand)]
pub enum Command {
    /// Serve the FHIR API and the admin listener (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Exit 0 when the local admin /readyz answers 200 (for container health checks).
    Healthcheck,
}
