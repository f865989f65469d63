//! What each subcommand does, wired from the configuration.

use std::time::{Duration, Instant};

use careplane_api::AppState;
use careplane_fhir::Definitions;
use tokio::net::TcpListener;

use crate::cli::{Command, ImportArgs};
use crate::config::Config;
use crate::import::{self, ImportOptions, Target};
use crate::{healthcheck, shutdown};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("FHIR definitions: {0}")]
    Definitions(String),
    #[error("storage: {0}")]
    Store(#[from] careplane_store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Serve(std::io::Error),
    #[error("not ready: {0}")]
    Unhealthy(String),
    #[error("import: {0}")]
    Import(String),
}

pub async fn run(command: Command, config: Config) -> Result<(), RunError> {
    match command {
        Command::Serve => serve(config).await,
        Command::Migrate => {
            let store =
                careplane_store::connect(config.database_url.expose(), config.pool_settings())
                    .await?;
            store.migrate().await?;
            tracing::info!(database = %config.database_url, "migrations applied");
            Ok(())
        }
        Command::Reindex => {
            let store =
                careplane_store::connect(config.database_url.expose(), config.pool_settings())
                    .await?;
            if config.migrate {
                store.migrate().await?;
            }
            let started = std::time::Instant::now();
            let count = store.reindex().await?;
            tracing::info!(
                resources = count,
                seconds = started.elapsed().as_secs_f64(),
                "search index rebuilt"
            );
            println!("reindexed {count} resources");
            Ok(())
        }
        Command::Import(args) => run_import(args, config).await,
        Command::Healthcheck => healthcheck::check(config.admin_addr)
            .await
            .map_err(RunError::Unhealthy),
    }
}

async fn serve(config: Config) -> Result<(), RunError> {
    let started = Instant::now();
    let defs = Definitions::r4().map_err(RunError::Definitions)?;
    let store =
        careplane_store::connect(config.database_url.expose(), config.pool_settings()).await?;
    if config.migrate {
        store.migrate().await?;
    }
    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| RunError::Bind { addr, source })
    };
    let api = bind(config.listen_addr).await?;
    let admin = bind(config.admin_addr).await?;
    let local = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(
        api = %local(&api),
        admin = %local(&admin),
        base_path = %config.base_path,
        database = %config.database_url,
        backend = store.backend(),
        startup_ms = started.elapsed().as_millis() as u64,
        "careplane listening"
    );
    let state = AppState::new(store, defs, config.api_settings());
    let drain = Duration::from_secs(config.shutdown_drain_seconds);
    careplane_api::serve(api, admin, state, shutdown::signal(), drain)
        .await
        .map_err(RunError::Serve)
}

async fn run_import(args: ImportArgs, config: Config) -> Result<(), RunError> {
    let mut local_store = None;
    let target = match &args.server {
        Some(base) => Target::Server {
            client: reqwest::Client::new(),
            base: base.clone(),
        },
        None => {
            let defs = Definitions::r4().map_err(RunError::Definitions)?;
            let store =
                careplane_store::connect(config.database_url.expose(), config.pool_settings())
                    .await?;
            if config.migrate {
                store.migrate().await?;
            }
            let mut settings = config.api_settings();
            // Imported data carries its own ids (stable ids, NDJSON with ids).
            settings.allow_update_create = true;
            local_store = Some(store.clone());
            Target::Database(AppState::new(store, defs, settings))
        }
    };
    let options = ImportOptions {
        paths: args.paths,
        stable_ids: args.stable_ids,
        jobs: args.jobs,
    };
    let summary = import::import(target, options)
        .await
        .map_err(RunError::Import)?;
    if let Some(store) = local_store {
        // Searches right after a bulk load must not run on empty-table statistics.
        store.analyze().await?;
    }
    summary.print();
    if summary.failures.is_empty() {
        Ok(())
    } else {
        Err(RunError::Import(format!(
            "{} bundles or entries failed (listed above)",
            summary.failures.len()
        )))
    }
}
