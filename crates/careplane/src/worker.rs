//! The background worker's configuration and assembly: which handlers run, with what lease,
//! and whether `serve` runs the worker in-process (embedded mode) or leaves it to a separate
//! `careplane work` Deployment.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use careplane_api::AppState;
use careplane_fhir::Definitions;
use careplane_store::Store;
use careplane_worker::export::{ExportExpiryHandler, ExportHandler};
use careplane_worker::reindex::ReindexHandler;
use careplane_worker::subscription::{DeliverHandler, MatchHandler};

use crate::import::job::NdjsonImportHandler;
use careplane_worker::{Runner, RunnerSettings};
use clap::{Args, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::run::RunError;
use crate::shutdown::{self, Tasks};
use crate::telemetry::W3cTraceContext;

/// Resources read per store round trip while exporting (and held in memory at once).
const EXPORT_PAGE_SIZE: usize = 1000;

/// Resources reindexed per transaction by the reindex job.
const REINDEX_BATCH_SIZE: usize = 500;

#[derive(Debug, Clone, Args)]
pub struct WorkerConfig {
    /// Whether `serve` also runs the background worker: auto runs it on SQLite (embedded mode)
    /// and leaves it to `careplane work` on PostgreSQL.
    #[arg(long = "worker", env = "CAREPLANE_WORKER", value_enum, default_value_t = InProcess::Auto, global = true)]
    pub in_process: InProcess,

    /// Jobs one worker process runs at once.
    #[arg(
        long = "worker-concurrency",
        env = "CAREPLANE_WORKER_CONCURRENCY",
        default_value_t = 2,
        global = true
    )]
    pub concurrency: usize,

    /// How long a claimed job stays reserved without a heartbeat (renewed every third of it);
    /// after a crash, the job waits this long before another worker takes it over.
    #[arg(
        long = "job-lease",
        env = "CAREPLANE_JOB_LEASE",
        default_value = "30s",
        value_parser = humantime::parse_duration,
        global = true
    )]
    pub lease: Duration,

    /// How often an idle worker looks for jobs.
    #[arg(
        long = "worker-poll-interval",
        env = "CAREPLANE_WORKER_POLL_INTERVAL",
        default_value = "1s",
        value_parser = humantime::parse_duration,
        global = true
    )]
    pub poll_interval: Duration,

    /// Directory of bulk data files: export output written by the worker and served by the API,
    /// and `$import` uploads staged by the API for the worker (shared storage when they run as
    /// separate pods).
    #[arg(
        long = "export-dir",
        env = "CAREPLANE_EXPORT_DIR",
        default_value = "exports",
        global = true
    )]
    pub export_dir: PathBuf,

    /// How long a finished export's files are kept; then they are deleted and its status
    /// answers 404 (e.g. 24h, 30m).
    #[arg(
        long = "export-retention",
        env = "CAREPLANE_EXPORT_RETENTION",
        default_value = "24h",
        value_parser = humantime::parse_duration,
        global = true
    )]
    pub export_retention: Duration,

    /// Deadline of one Subscription notification attempt (connect and answer).
    #[arg(
        long = "subscription-timeout",
        env = "CAREPLANE_SUBSCRIPTION_TIMEOUT",
        default_value = "10s",
        value_parser = humantime::parse_duration,
        global = true
    )]
    pub subscription_timeout: Duration,

    /// Attempts of one Subscription notification (backing off from 2s, doubling, up to 10
    /// minutes between attempts) before it goes to the dead letters.
    #[arg(
        long = "subscription-max-attempts",
        env = "CAREPLANE_SUBSCRIPTION_MAX_ATTEMPTS",
        default_value_t = 10,
        global = true
    )]
    pub subscription_attempts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InProcess {
    Auto,
    On,
    Off,
}

impl WorkerConfig {
    /// Whether `serve` on this backend runs the worker too.
    pub fn runs_in_serve(&self, backend: &str) -> bool {
        match self.in_process {
            InProcess::On => true,
            InProcess::Off => false,
            InProcess::Auto => backend == "sqlite",
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.concurrency == 0 {
            return Err("CAREPLANE_WORKER_CONCURRENCY must be at least 1".into());
        }
        if self.lease < Duration::from_secs(1) {
            return Err("CAREPLANE_JOB_LEASE must be at least 1s".into());
        }
        if self.subscription_attempts == 0 || self.subscription_timeout.is_zero() {
            return Err(
                "CAREPLANE_SUBSCRIPTION_MAX_ATTEMPTS and CAREPLANE_SUBSCRIPTION_TIMEOUT must be more than 0"
                    .into(),
            );
        }
        if self.poll_interval.is_zero() {
            return Err("CAREPLANE_WORKER_POLL_INTERVAL must be more than 0".into());
        }
        Ok(())
    }

    /// A runner with every job handler registered.
    /// `api` carries the settings the import job's Bundle processing needs (update-as-create is
    /// switched on: NDJSON lines keep their ids).
    pub fn runner(
        &self,
        store: Arc<dyn Store>,
        defs: &'static Definitions,
        mut api: careplane_api::Settings,
        drain_timeout: Duration,
        trace: Option<Arc<W3cTraceContext>>,
    ) -> Result<Runner, RunError> {
        let settings = RunnerSettings {
            worker_id: worker_id(),
            concurrency: self.concurrency,
            lease: self.lease,
            poll_interval: self.poll_interval,
            drain_timeout,
            trace_parent: trace.map(|t| t as Arc<dyn careplane_worker::TraceParent>),
            ..RunnerSettings::default()
        };
        api.allow_update_create = true;
        let deliver = DeliverHandler::new(
            defs,
            api.subscription_endpoints.clone(),
            self.subscription_timeout,
        )
        .map_err(RunError::Worker)?;
        let import_state = AppState::new(store.clone(), defs, api);
        Ok(Runner::new(store, settings)
            .register(NdjsonImportHandler {
                state: import_state,
                dir: self.export_dir.clone(),
            })
            .register(ExportHandler {
                defs,
                dir: self.export_dir.clone(),
                page_size: EXPORT_PAGE_SIZE,
                retention: self.export_retention,
            })
            .register(ExportExpiryHandler {
                dir: self.export_dir.clone(),
            })
            .register(ReindexHandler {
                batch_size: REINDEX_BATCH_SIZE,
            })
            .register(MatchHandler {
                defs,
                delivery_attempts: self.subscription_attempts,
            })
            .register(deliver))
    }
}

/// `careplane work`: the runner and the admin listener (probes, metrics) until SIGTERM; then
/// readiness fails, running jobs get CAREPLANE_DRAIN_TIMEOUT, and the admin listener closes last.
pub async fn work(config: Config, trace: Option<Arc<W3cTraceContext>>) -> Result<(), RunError> {
    let started = std::time::Instant::now();
    let stopping = shutdown::on_signal().map_err(RunError::Serve)?;
    let metrics = crate::metrics::install().map_err(RunError::Metrics)?;
    let defs = Definitions::r4().map_err(RunError::Definitions)?;
    let store =
        careplane_store::connect(config.database_url.expose(), config.pool_settings()).await?;
    if config.migrate {
        store.migrate().await?;
    }
    // Its writes go through Redis when configured, and Redis wakes it on enqueues.
    let caching = crate::cache::wrap(store, &config)?;
    let store = caching.store.clone();
    let addr = config.admin_addr;
    let admin = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { addr, source })?;
    tracing::info!(
        admin = %admin.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        database = %config.database_url,
        backend = store.backend(),
        cache = caching.cache,
        redis = config.redis_url.as_ref().map(|u| u.to_string()),
        startup_ms = started.elapsed().as_millis() as u64,
        "careplane worker listening"
    );
    let state = AppState::new(store.clone(), defs, config.api_settings());
    let runner = config.worker.runner(
        store.clone(),
        defs,
        config.api_settings(),
        config.drain_timeout,
        trace,
    )?;
    // The admin listener outlives the runner's drain, so probes and scrapes answer throughout.
    let drained = CancellationToken::new();
    let mut tasks = Tasks::new(stopping.clone());
    tasks.spawn("admin", {
        let (stopping, drained) = (stopping.clone(), drained.clone());
        async move {
            careplane_api::serve_admin(
                admin,
                state,
                Some(metrics),
                stopping.cancelled_owned(),
                drained.cancelled_owned(),
            )
            .await
            .map_err(RunError::Serve)
        }
    });
    let worker_stop = stopping.child_token();
    caching.wake(runner.waker(), worker_stop.clone());
    tasks.spawn("worker", async move {
        runner.run(worker_stop).await;
        drained.cancel();
        Ok(())
    });
    let result = tasks.join().await;
    store.close().await;
    tracing::info!("careplane worker stopped");
    result
}

/// The pod name (Kubernetes sets HOSTNAME) and pid, so a job row tells who holds it.
fn worker_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    format!("{host}:{}", std::process::id())
}
