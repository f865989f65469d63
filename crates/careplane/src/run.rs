//! What each subcommand does, wired from the configuration.

use std::sync::Arc;
use std::time::{Duration, Instant};

use careplane_api::{AppState, ServeOptions};
use careplane_fhir::Definitions;
use tokio::net::TcpListener;

use crate::cli::{BackupArgs, Command, ImportArgs, JobArgs, ReindexArgs};
use crate::config::Config;
use crate::import::{self, ImportOptions, Target};
use crate::shutdown::{self, Tasks};
use crate::telemetry::W3cTraceContext;
use crate::{cache, healthcheck, metrics};

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
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("cache: {0}")]
    Cache(String),
    #[error("task {0}")]
    Task(String),
    #[error("not ready: {0}")]
    Unhealthy(String),
    #[error("backup: {0}")]
    Backup(String),
    #[error("import: {0}")]
    Import(String),
    #[error("worker: {0}")]
    Worker(String),
}

/// `trace`: trace propagation when traces are exported (`serve` and `work` use it).
pub async fn run(
    command: Command,
    config: Config,
    trace: Option<Arc<W3cTraceContext>>,
) -> Result<(), RunError> {
    match command {
        Command::Serve => serve(config, trace).await,
        Command::Work => crate::worker::work(config, trace).await,
        Command::Migrate => {
            let store =
                careplane_store::connect(config.database_url.expose(), config.pool_settings())
                    .await?;
            store.migrate().await?;
            tracing::info!(database = %config.database_url, "migrations applied");
            Ok(())
        }
        Command::Reindex(args) => reindex(args, config).await,
        Command::Contract => {
            let store =
                careplane_store::connect(config.database_url.expose(), config.pool_settings())
                    .await?;
            if config.migrate {
                store.migrate().await?;
            }
            let deleted = store.contract().await?;
            tracing::info!(rows = deleted, "derived index rows no longer written");
            println!("contract done: derived index rows are no longer written; {deleted} deleted");
            Ok(())
        }
        Command::Job(args) => job(args, config).await,
        Command::Import(args) => run_import(args, config).await,
        Command::Backup(args) => backup(args, config).await,
        Command::Healthcheck => healthcheck::check(config.admin_addr)
            .await
            .map_err(RunError::Unhealthy),
    }
}

/// Serves until SIGTERM/SIGINT, then: readiness fails at once, requests are still served for
/// `CAREPLANE_SHUTDOWN_DELAY`, the listener closes, in-flight requests get
/// `CAREPLANE_DRAIN_TIMEOUT`, every task has returned, the pool closes, exit 0.
async fn serve(config: Config, trace: Option<Arc<W3cTraceContext>>) -> Result<(), RunError> {
    let started = Instant::now();
    // First, so a SIGTERM during startup (migrations) is a clean stop, not the default kill.
    let stopping = shutdown::on_signal().map_err(RunError::Serve)?;
    let metrics = metrics::install().map_err(RunError::Metrics)?;
    let defs = Definitions::r4().map_err(RunError::Definitions)?;
    let store =
        careplane_store::connect(config.database_url.expose(), config.pool_settings()).await?;
    if config.migrate {
        store.migrate().await?;
    }
    let caching = cache::wrap(store, &config)?;
    let store = caching.store.clone();
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
        cache = caching.cache,
        redis = config.redis_url.as_ref().map(|u| u.to_string()),
        startup_ms = started.elapsed().as_millis() as u64,
        "careplane listening"
    );
    let mut settings = config.api_settings();
    settings.rate_limit = caching.rate_limiter(config.rate_limit_quota());
    settings.redis_required = caching.required_redis(config.redis_required);
    settings.trace_context = trace
        .clone()
        .map(|t| t as Arc<dyn careplane_api::TraceContext>);
    if let Some(limiter) = &settings.rate_limit {
        let quota = limiter.quota();
        tracing::info!(
            interval_ms = quota.interval.as_secs_f64() * 1000.0,
            burst = quota.burst,
            counted = limiter.name(),
            "per-client rate limit on"
        );
    }
    let state = AppState::new(store.clone(), defs, settings);
    let options = ServeOptions {
        shutdown_delay: config.shutdown_delay,
        drain_timeout: config.drain_timeout,
        metrics: Some(metrics),
    };
    // Every long-running task of `serve` joins the drain through `tasks`, watching `stopping`
    // (or a child token): it stops taking new work once cancelled and returns within
    // CAREPLANE_DRAIN_TIMEOUT; the pool closes only after every task has returned.
    let mut tasks = Tasks::new(stopping.clone());
    let api_stop = stopping.clone().cancelled_owned();
    tasks.spawn("api", async move {
        careplane_api::serve_with(api, admin, state, api_stop, options)
            .await
            .map_err(RunError::Serve)
    });
    if config.worker.runs_in_serve(store.backend()) {
        // Embedded mode: the jobs this process enqueues run here too.
        let runner = config.worker.runner(
            store.clone(),
            defs,
            config.api_settings(),
            config.drain_timeout,
            trace,
        )?;
        let worker_stop = stopping.child_token();
        caching.wake(runner.waker(), worker_stop.clone());
        tasks.spawn("worker", async move {
            runner.run(worker_stop).await;
            Ok(())
        });
    }
    let result = tasks.join().await;
    // In-flight work is over; connections still checked out belong to aborted requests.
    if tokio::time::timeout(Duration::from_secs(5), store.close())
        .await
        .is_err()
    {
        tracing::warn!("database pool did not close within 5 s");
    }
    tracing::info!("careplane stopped");
    result
}

async fn reindex(args: ReindexArgs, config: Config) -> Result<(), RunError> {
    let store =
        careplane_store::connect(config.database_url.expose(), config.pool_settings()).await?;
    if config.migrate {
        store.migrate().await?;
    }
    if args.background {
        let job = careplane_store::NewJob::new(
            careplane_store::TenantId::default_tenant(),
            careplane_worker::reindex::KIND,
            serde_json::json!({}),
        );
        // Through the cache layer, so Redis (when configured) wakes a worker at once.
        let store = cache::wrap(store, &config)?.store;
        let id = store.enqueue(&job).await?;
        println!("{id}");
        return Ok(());
    }
    let started = Instant::now();
    let count = store.reindex().await?;
    tracing::info!(
        resources = count,
        seconds = started.elapsed().as_secs_f64(),
        "search index rebuilt"
    );
    println!("reindexed {count} resources");
    Ok(())
}

async fn job(args: JobArgs, config: Config) -> Result<(), RunError> {
    let store =
        careplane_store::connect(config.database_url.expose(), config.pool_settings()).await?;
    let job = store
        .job(&careplane_store::TenantId::default_tenant(), &args.id)
        .await?;
    let status = serde_json::json!({
        "id": job.id,
        "kind": job.kind,
        "state": job.state.as_str(),
        "attempts": job.attempts,
        "maxAttempts": job.max_attempts,
        "progress": job.progress,
        "result": job.result,
        "lastError": job.last_error,
        "created": careplane_store::model::format_instant(job.created_at),
        "updated": careplane_store::model::format_instant(job.updated_at),
    });
    println!("{status:#}");
    Ok(())
}

async fn backup(args: BackupArgs, config: Config) -> Result<(), RunError> {
    if args.target.exists() {
        return Err(RunError::Backup(format!(
            "{} already exists; choose a new file",
            args.target.display()
        )));
    }
    let store =
        careplane_store::connect(config.database_url.expose(), config.pool_settings()).await?;
    let started = Instant::now();
    store.backup(&args.target).await?;
    tracing::info!(
        target = %args.target.display(),
        seconds = started.elapsed().as_secs_f64(),
        "backup written"
    );
    println!("backup written to {}", args.target.display());
    Ok(())
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
            // Through Redis when configured, so running replicas' cached entries follow the
            // import; never an in-process cache of this short-lived process.
            let store = cache::wrap(store, &config)?.store;
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
