//! The claim loop: keeps up to `concurrency` jobs running, renews their leases, records their
//! outcomes, and on shutdown stops claiming and lets running jobs finish within the drain
//! deadline (jobs cut off then are left to their leases: another worker takes them over).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use careplane_store::{Claim, Lease, Retry, Store, StoreError};
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{backoff, metric, Finished, Handler, JobContext, JobError, TraceParent};

#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// Names this worker in the jobs table (pod name and pid).
    pub worker_id: String,
    /// Jobs run at once by this process.
    pub concurrency: usize,
    /// How long a claim lasts without a heartbeat; heartbeats come every third of it.
    pub lease: Duration,
    /// How often an idle runner looks for work when nothing wakes it.
    pub poll_interval: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// After the stop signal, how long running jobs get to finish.
    pub drain_timeout: Duration,
    /// Continues the enqueuing request's trace in each attempt's span; `None` without trace
    /// export.
    pub trace_parent: Option<Arc<dyn TraceParent>>,
}

impl Default for RunnerSettings {
    fn default() -> Self {
        RunnerSettings {
            worker_id: format!("worker-{}", std::process::id()),
            concurrency: 2,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(600),
            drain_timeout: Duration::from_secs(20),
            trace_parent: None,
        }
    }
}

pub struct Runner {
    store: Arc<dyn Store>,
    handlers: HashMap<&'static str, Arc<dyn Handler>>,
    settings: RunnerSettings,
    wake: Arc<Notify>,
}

impl Runner {
    pub fn new(store: Arc<dyn Store>, settings: RunnerSettings) -> Runner {
        Runner {
            store,
            handlers: HashMap::new(),
            settings,
            wake: Arc::new(Notify::new()),
        }
    }

    pub fn register(mut self, handler: impl Handler) -> Runner {
        self.handlers.insert(handler.kind(), Arc::new(handler));
        self
    }

    /// Notified after an in-process enqueue, so the job starts without waiting for the poll.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Runs until `stop` is cancelled, then drains.
    pub async fn run(self, stop: CancellationToken) {
        let kinds: Vec<String> = self.handlers.keys().map(|k| k.to_string()).collect();
        let lease = Lease {
            worker: self.settings.worker_id.clone(),
            duration: self.settings.lease,
        };
        tracing::info!(worker = %lease.worker, kinds = ?kinds, concurrency = self.settings.concurrency, "worker started");
        let mut running = JoinSet::new();
        // Cancelled when the drain deadline passes: handlers still running see their claim as
        // lost and stop.
        let hard_stop = CancellationToken::new();
        while !stop.is_cancelled() {
            while running.len() < self.settings.concurrency.max(1) {
                // A claim the database never answers (a network blackhole: no error, no reply)
                // must neither hold up the drain nor stop claiming for good. One cut off after
                // it went through leaves its job to the lease, like a crashed worker would.
                let claimed = tokio::select! {
                    claimed = tokio::time::timeout(
                        self.settings.lease,
                        self.store.claim_job(&lease, &kinds),
                    ) => claimed,
                    () = stop.cancelled() => break,
                };
                let Ok(claimed) = claimed else {
                    tracing::warn!("worker claim got no answer from the database in time");
                    break;
                };
                match claimed {
                    Ok(Some(claim)) => {
                        let Some(handler) = self.handlers.get(claim.job.kind.as_str()).cloned()
                        else {
                            continue;
                        };
                        running.spawn(execute(
                            self.store.clone(),
                            handler,
                            claim,
                            self.settings.clone(),
                            hard_stop.child_token(),
                        ));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // The database is down or busy: keep polling; readiness reports it.
                        tracing::warn!(error = %e, "worker could not claim jobs");
                        break;
                    }
                }
            }
            tokio::select! {
                Some(_) = running.join_next(), if !running.is_empty() => {}
                () = tokio::time::sleep(self.settings.poll_interval) => {}
                () = self.wake.notified() => {}
                () = stop.cancelled() => {}
            }
        }
        tracing::info!(
            running = running.len(),
            drain_seconds = self.settings.drain_timeout.as_secs_f64(),
            "worker draining"
        );
        let drained = tokio::time::timeout(self.settings.drain_timeout, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                running = running.len(),
                "drain deadline reached: unfinished jobs return to the queue when their leases expire"
            );
            hard_stop.cancel();
            running.shutdown().await;
        }
        tracing::info!("worker stopped");
    }
}

/// Runs one claimed job: heartbeats while the handler works, then records the outcome.
async fn execute(
    store: Arc<dyn Store>,
    handler: Arc<dyn Handler>,
    claim: Claim,
    settings: RunnerSettings,
    lost: CancellationToken,
) {
    let started = Instant::now();
    let (id, kind, attempts) = (
        claim.job.id.clone(),
        claim.job.kind.clone(),
        claim.job.attempts,
    );
    // One span per attempt, exported when traces are (telemetry.rs allow-lists these fields;
    // the payload never is). Job ids are random UUIDs, not PHI.
    let span = tracing::info_span!(
        "job",
        job.id = %id,
        job.kind = %kind,
        job.attempt = i64::from(attempts),
        job.outcome = tracing::field::Empty,
    );
    if let (Some(trace), Some(traceparent)) = (&settings.trace_parent, claim.job.traceparent()) {
        trace.join(&span, traceparent);
    }
    let label = attempt(store, handler, claim, settings, lost)
        .instrument(span.clone())
        .await;
    span.record("job.outcome", label);
    metrics::counter!(metric::JOBS_TOTAL, "kind" => kind.clone(), "outcome" => label).increment(1);
    metrics::histogram!(metric::JOB_DURATION_SECONDS, "kind" => kind)
        .record(started.elapsed().as_secs_f64());
}

/// The attempt itself: heartbeats while the handler works, then records the outcome; returns
/// its label (`succeeded`, `retry`, `dead`, `lease_lost`).
async fn attempt(
    store: Arc<dyn Store>,
    handler: Arc<dyn Handler>,
    claim: Claim,
    settings: RunnerSettings,
    lost: CancellationToken,
) -> &'static str {
    let (id, fence, kind) = (claim.job.id.clone(), claim.fence, claim.job.kind.clone());
    let attempts = claim.job.attempts;
    let progress = Arc::new(Mutex::new(None));
    // Both helper tasks die with this one (drain deadline, a killed runner), like a process
    // would: no heartbeat outlives its worker, so the lease can expire and the job move on.
    let heartbeat = AbortOnDrop(tokio::spawn(renew_lease(
        store.clone(),
        id.clone(),
        fence,
        settings.lease,
        progress.clone(),
        lost.clone(),
    )));
    let context = JobContext {
        store: store.clone(),
        claim,
        progress,
        lost,
    };
    // A panicking handler fails its attempt instead of taking the worker down.
    let mut run = AbortOnDrop(tokio::spawn(
        async move { handler.run(&context).await }.in_current_span(),
    ));
    let outcome = match (&mut run.0).await {
        Ok(outcome) => outcome,
        Err(e) => Err(JobError::Retry(format!("the job handler panicked: {e}"))),
    };
    drop(heartbeat);
    let label = match outcome {
        Ok(Finished::WithResult(result)) => match store.complete_job(&id, fence, &result).await {
            Ok(()) => "succeeded",
            Err(StoreError::LeaseLost(_)) => "lease_lost",
            Err(e) => {
                // The lease will expire and the job run again (handlers are idempotent).
                tracing::warn!(job = %id, error = %e, "could not record a finished job");
                "retry"
            }
        },
        Ok(Finished::InTransaction) => "succeeded",
        Err(JobError::LeaseLost) => "lease_lost",
        Err(error @ (JobError::Retry(_) | JobError::Fatal(_))) => {
            let retry = match error {
                JobError::Fatal(_) => Retry::Never,
                _ => Retry::After(backoff(
                    attempts,
                    settings.backoff_base,
                    settings.backoff_max,
                )),
            };
            let message = error.to_string();
            match store.fail_job(&id, fence, &message, retry).await {
                Ok(careplane_store::JobState::Dead) => {
                    tracing::error!(job = %id, kind = %kind, error = %message, "job dead-lettered");
                    "dead"
                }
                Ok(_) => {
                    tracing::warn!(job = %id, kind = %kind, attempts, error = %message, "job attempt failed; will retry");
                    "retry"
                }
                Err(StoreError::LeaseLost(_)) => "lease_lost",
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "could not record a failed attempt");
                    "retry"
                }
            }
        }
    };
    if label == "lease_lost" {
        tracing::warn!(job = %id, kind = %kind, "job superseded: its lease was lost");
    }
    label
}

/// Extends the lease every third of its length, carrying the latest progress; cancels `lost`
/// when the store says the claim is gone.
async fn renew_lease(
    store: Arc<dyn Store>,
    id: String,
    fence: i64,
    lease: Duration,
    progress: Arc<Mutex<Option<Value>>>,
    lost: CancellationToken,
) {
    let mut ticker = tokio::time::interval(lease / 3);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let latest = progress.lock().ok().and_then(|mut p| p.take());
        match store
            .heartbeat_job(&id, fence, lease, latest.as_ref())
            .await
        {
            Ok(()) => {}
            Err(StoreError::LeaseLost(_)) => {
                lost.cancel();
                return;
            }
            Err(e) => tracing::warn!(job = %id, error = %e, "lease renewal failed; retrying"),
        }
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
