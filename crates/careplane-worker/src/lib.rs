//! Careplane's background work: a [`Runner`] that claims jobs from the store and the
//! [`Handler`]s that run them (bulk export, reindex; notifications and scheduling hooks later).
//!
//! The queue lives in the database (architecture decision 5): jobs are enqueued in the same
//! transaction as the write that causes them, claimed with `FOR UPDATE SKIP LOCKED` on
//! PostgreSQL, held under a lease the runner renews, and completed with the fencing token of the
//! claim, so a worker that stalled past its lease can never finish a job another worker now
//! owns. Handlers must be idempotent: a job whose worker died runs again from the start.

pub mod export;
pub mod reindex;
mod runner;
pub mod subscription;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use careplane_store::{Claim, Job, Store, StoreError, StoreTx};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use runner::{Runner, RunnerSettings};

/// Metric names this crate emits (through the `metrics` facade).
pub mod metric {
    /// Counter of finished attempts, labelled `kind` and `outcome`
    /// (`succeeded`, `retry`, `dead`, `lease_lost`).
    pub const JOBS_TOTAL: &str = "careplane_jobs_total";
    /// Histogram of attempt durations in seconds, labelled `kind`.
    pub const JOB_DURATION_SECONDS: &str = "careplane_job_duration_seconds";
}

/// Continues, in a job attempt's span, the trace of the request that enqueued the job (the
/// W3C `traceparent` kept in its payload). Implemented by the binary over OpenTelemetry when it
/// exports traces; without it nothing is parsed.
pub trait TraceParent: std::fmt::Debug + Send + Sync {
    /// Makes `span` a child of the span `traceparent` names; a malformed one is ignored.
    fn join(&self, span: &tracing::Span, traceparent: &str);
}

/// Runs one kind of job.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// The `kind` of the jobs this handler runs.
    fn kind(&self) -> &'static str;

    async fn run(&self, job: &JobContext) -> Result<Finished, JobError>;
}

/// How a successful run ends.
#[derive(Debug)]
pub enum Finished {
    /// The runner marks the job succeeded with this result.
    WithResult(Value),
    /// The handler already completed the job inside its own transaction
    /// ([`JobContext::complete_in`]), together with its side effects.
    InTransaction,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Worth another attempt later (a dependency was down); backs off, then dead-letters.
    #[error("{0}")]
    Retry(String),
    /// Retrying cannot help (the payload is wrong); dead-lettered at once.
    #[error("{0}")]
    Fatal(String),
    /// The claim is gone (lease expired and another worker took the job, or it was cancelled);
    /// the handler stops without touching anything else.
    #[error("the job is no longer held by this worker")]
    LeaseLost,
}

impl From<StoreError> for JobError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::LeaseLost(_) => JobError::LeaseLost,
            StoreError::Corrupt(m) => JobError::Fatal(m),
            other => JobError::Retry(other.to_string()),
        }
    }
}

/// What a handler sees of its job: the claim, the store, progress reporting and whether it
/// should stop (claim lost, or the worker is shutting down past its drain deadline).
pub struct JobContext {
    pub store: Arc<dyn Store>,
    claim: Claim,
    progress: Arc<Mutex<Option<Value>>>,
    lost: CancellationToken,
}

impl JobContext {
    pub fn job(&self) -> &Job {
        &self.claim.job
    }

    /// The claim's fencing token (names this attempt's output).
    pub fn fence(&self) -> i64 {
        self.claim.fence
    }

    /// Records progress; the runner's next heartbeat stores it (no write per call).
    pub fn progress(&self, progress: Value) {
        if let Ok(mut slot) = self.progress.lock() {
            *slot = Some(progress);
        }
    }

    /// `Err(LeaseLost)` once the claim is gone: long handlers call this between steps.
    pub fn check(&self) -> Result<(), JobError> {
        if self.lost.is_cancelled() {
            Err(JobError::LeaseLost)
        } else {
            Ok(())
        }
    }

    /// Resolves when the claim is lost (for `select!` around long waits).
    pub async fn lost(&self) {
        self.lost.cancelled().await;
    }

    /// Completes the job inside `tx`, so its side effects and its completion commit together
    /// or not at all; then return [`Finished::InTransaction`].
    pub async fn complete_in(&self, tx: &mut dyn StoreTx, result: &Value) -> Result<(), JobError> {
        tx.complete_job(&self.claim.job.id, self.claim.fence, result)
            .await
            .map_err(JobError::from)
    }
}

/// Backoff before attempt `attempts + 1`: doubling from `base`, capped at `max`.
pub fn backoff(attempts: u32, base: Duration, max: Duration) -> Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(20));
    base.saturating_mul(factor).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(backoff(1, base, max), Duration::from_secs(1));
        assert_eq!(backoff(2, base, max), Duration::from_secs(2));
        assert_eq!(backoff(4, base, max), Duration::from_secs(8));
        assert_eq!(backoff(30, base, max), max);
    }
}
