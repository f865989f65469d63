//! Background jobs as the store keeps them: what is enqueued, what a worker holds while it runs
//! one, and what anyone can read back (export status, dead letters).

use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;

use crate::TenantId;

/// Where a job is in its life. `Dead` is the dead-letter state: attempts ran out or the handler
/// said retrying cannot help; the job stays readable with its last error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Dead,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "succeeded" => JobState::Succeeded,
            "dead" => JobState::Dead,
            "cancelled" => JobState::Cancelled,
            _ => return None,
        })
    }

    /// Whether the job will never run again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Dead | JobState::Cancelled
        )
    }
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub tenant: TenantId,
    /// Names the handler (`export`, `reindex`, …).
    pub kind: String,
    pub payload: Value,
    /// Claims allowed before the job is dead-lettered (a lost lease counts as an attempt).
    pub max_attempts: u32,
    /// Not claimed before this delay has passed (zero: at once).
    pub delay: Duration,
}

impl NewJob {
    pub fn new(tenant: TenantId, kind: impl Into<String>, payload: Value) -> NewJob {
        NewJob {
            tenant,
            kind: kind.into(),
            payload,
            max_attempts: 5,
            delay: Duration::ZERO,
        }
    }

    /// Keeps the enqueuing request's W3C `traceparent` in the payload (under [`TRACEPARENT`]),
    /// so the job's span continues that trace. Only an object payload can carry it, and `None`
    /// (no trace export) leaves the payload as it is.
    pub fn with_traceparent(mut self, traceparent: Option<String>) -> NewJob {
        if let (Some(traceparent), Value::Object(payload)) = (traceparent, &mut self.payload) {
            payload.insert(TRACEPARENT.into(), Value::String(traceparent));
        }
        self
    }
}

/// Payload key of the enqueuing request's `traceparent` (a trace and a span id, random: no
/// PHI). In the payload rather than a column of its own: no migration, and handlers ignore keys
/// they do not know.
pub const TRACEPARENT: &str = "traceparent";

/// A job as stored.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub tenant: String,
    pub kind: String,
    pub payload: Value,
    pub state: JobState,
    pub attempts: u32,
    pub max_attempts: u32,
    pub progress: Option<Value>,
    pub result: Option<Value>,
    pub last_error: Option<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

impl Job {
    /// The `traceparent` of the request that enqueued the job, when one was kept.
    pub fn traceparent(&self) -> Option<&str> {
        self.payload.get(TRACEPARENT)?.as_str()
    }
}

/// A claimed job and the fencing token that proves the claim. Every later call about the job
/// (heartbeat, completion, failure) carries the fence; once another worker has claimed the job
/// the old fence is refused with [`crate::StoreError::LeaseLost`].
#[derive(Debug, Clone)]
pub struct Claim {
    pub job: Job,
    pub fence: i64,
}

/// Who claims and for how long; a running job whose lease ran out is claimed again.
#[derive(Debug, Clone)]
pub struct Lease {
    pub worker: String,
    pub duration: Duration,
}

/// How a failed attempt ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Run again after this delay, unless attempts ran out (then dead).
    After(Duration),
    /// Retrying cannot help (bad payload): dead at once.
    Never,
}

/// Database connections in use and the pool's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolUsage {
    pub in_use: u32,
    pub max: u32,
}

impl PoolUsage {
    /// In use over limit, in 0..=1 (the `db_connection_pool_usage` metric).
    pub fn ratio(self) -> f64 {
        if self.max == 0 {
            0.0
        } else {
            f64::from(self.in_use) / f64::from(self.max)
        }
    }
}

/// Where a reindex stopped: the last (tenant, type, id) done. Serializable as a JSON array, so
/// a reindex job can keep it in its progress and resume from it after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReindexCursor {
    pub tenant: String,
    pub resource_type: String,
    pub id: String,
}

impl ReindexCursor {
    pub fn to_json(&self) -> Value {
        serde_json::json!([self.tenant, self.resource_type, self.id])
    }

    pub fn from_json(value: &Value) -> Option<ReindexCursor> {
        let parts = value.as_array()?;
        match parts.as_slice() {
            [t, r, i] => Some(ReindexCursor {
                tenant: t.as_str()?.to_string(),
                resource_type: r.as_str()?.to_string(),
                id: i.as_str()?.to_string(),
            }),
            _ => None,
        }
    }
}

/// One reindex batch: how many resources it did, and where to continue (`None`: finished).
#[derive(Debug, Clone)]
pub struct ReindexBatch {
    pub done: u64,
    pub next: Option<ReindexCursor>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn a_traceparent_travels_in_object_payloads_only() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let job = NewJob::new(TenantId::default_tenant(), "export", json!({"a": 1}))
            .with_traceparent(Some(tp.into()));
        assert_eq!(job.payload, json!({"a": 1, "traceparent": tp}));
        let untraced =
            NewJob::new(TenantId::default_tenant(), "x", json!({"a": 1})).with_traceparent(None);
        assert_eq!(untraced.payload, json!({"a": 1}));
        let array = NewJob::new(TenantId::default_tenant(), "x", json!([1]))
            .with_traceparent(Some(tp.into()));
        assert_eq!(array.payload, json!([1]));
    }
}
