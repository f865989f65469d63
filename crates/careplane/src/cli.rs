//! Command line: `serve` (default), `work`, `migrate`, `reindex`, `contract`, `job`, `import`,
//! `backup`, `healthcheck`.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

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

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve the FHIR API and the admin listener (the default).
    Serve,
    /// Run the background worker (bulk exports and other jobs) and the admin listener, without
    /// the FHIR API: the worker Deployment's command.
    Work,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Rebuild the search index of every stored resource (after an upgrade that changes the
    /// search definitions or their extraction), then exit. Safe while serving.
    Reindex(ReindexArgs),
    /// The contract step of an upgrade, once every replica runs this release: stop storing
    /// the index rows that only the previous release reads, and delete them (docs/operations.md).
    Contract,
    /// Print a background job's state and progress as JSON (e.g. a `reindex --background`).
    Job(JobArgs),
    /// Load FHIR Bundles (.json, .json.gz) and NDJSON (.ndjson, .ndjson.gz) from files or
    /// directories, through the same transaction code as `POST /`.
    Import(ImportArgs),
    /// Write a consistent copy of the embedded SQLite database to a new file while the server
    /// keeps running (restore: stop the server and put the copy in place of the database).
    Backup(BackupArgs),
    /// Exit 0 when the local admin /readyz answers 200 (for container health checks).
    Healthcheck,
}

#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// Files or directories (searched recursively) to import.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,

    /// Send the Bundles to a running server (its FHIR base URL, e.g.
    /// http://127.0.0.1:8080/fhir) instead of writing to CAREPLANE_DATABASE_URL directly.
    #[arg(long)]
    pub server: Option<String>,

    /// Keep generator ids: a POST whose fullUrl is urn:uuid:<id> is stored as <Type>/<id>, so
    /// re-running an interrupted import creates no duplicates (needs update-as-create on a
    /// server target).
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    pub stable_ids: bool,

    /// Bundles in flight at once.
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
}

#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    /// The file to create; an existing file is never overwritten.
    pub target: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct ReindexArgs {
    /// Enqueue the reindex as a job for the workers (resumable, progress in `careplane job ID`)
    /// and print its id, instead of running it in this process.
    #[arg(long)]
    pub background: bool,
}

#[derive(Debug, Clone, Args)]
pub struct JobArgs {
    /// The job id (printed by the command that enqueued it).
    pub id: String,
}
