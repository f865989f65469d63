//! The job queue's statements. Claims take the oldest ready job with `FOR UPDATE SKIP LOCKED`
//! on PostgreSQL (concurrent workers never wait on, or take, the same row) and through the
//! single writer connection on SQLite. Every statement about a claimed job matches its fence.

use std::time::Duration;

use serde_json::Value;

use super::{count, Backend, Sql};
use crate::jobs::{Claim, Job, JobState, Lease, NewJob, Retry};
use crate::{Result, StoreError, TenantId};

const COLUMNS: &str = "id, tenant, kind, payload, state, attempts, max_attempts, progress, \
                       result, last_error, created_at, updated_at, fence";

/// Appointment statuses that still hold a slot (the `active_appointments_count` metric).
const ACTIVE_APPOINTMENT_STATUSES: &str =
    "('proposed', 'pending', 'booked', 'arrived', 'checked-in', 'waitlist')";

pub(super) async fn enqueue<B: Backend>(
    conn: &mut B::Connection,
    job: &NewJob,
    now: i64,
) -> Result<String> {
    let id = uuid::Uuid::new_v4().to_string();
    let payload = job.payload.to_string();
    Sql::<B>::new(
        "INSERT INTO jobs (id, tenant, kind, payload, state, max_attempts, run_at, created_at, \
         updated_at) VALUES (",
    )
    .text(&id)
    .sql(", ")
    .text(job.tenant.as_str())
    .sql(", ")
    .text(&job.kind)
    .sql(", ")
    .text(&payload)
    .sql(", 'queued', ")
    .int(i64::from(job.max_attempts.max(1)))
    .sql(", ")
    .int(now.saturating_add(millis(job.delay)))
    .sql(", ")
    .int(now)
    .sql(", ")
    .int(now)
    .sql(")")
    .execute(conn)
    .await?;
    Ok(id)
}

/// Running jobs whose lease ran out (their worker died or stalled) go back to the queue, or to
/// the dead letters when that was their last attempt.
pub(super) async fn release_expired<B: Backend>(conn: &mut B::Connection, now: i64) -> Result<u64> {
    Sql::<B>::new(
        "UPDATE jobs SET state = CASE WHEN attempts < max_attempts THEN 'queued' ELSE 'dead' END, \
         lease_until = NULL, worker = NULL, \
         last_error = 'the worker holding the job stopped renewing its lease', run_at = ",
    )
    .int(now)
    .sql(", updated_at = ")
    .int(now)
    .sql(" WHERE state = 'running' AND lease_until < ")
    .int(now)
    .execute(conn)
    .await
}

pub(super) async fn claim<B: Backend>(
    conn: &mut B::Connection,
    lease: &Lease,
    kinds: &[String],
    now: i64,
) -> Result<Option<Claim>> {
    let mut sql = Sql::<B>::new("UPDATE jobs SET state = 'running', attempts = attempts + 1, ");
    sql.sql("fence = fence + 1, worker = ")
        .text(&lease.worker)
        .sql(", lease_until = ")
        .int(now.saturating_add(millis(lease.duration)))
        .sql(", updated_at = ")
        .int(now)
        .sql(" WHERE id = (SELECT id FROM jobs WHERE state = 'queued' AND run_at <= ")
        .int(now);
    if !kinds.is_empty() {
        sql.sql(" AND kind IN (");
        for (i, kind) in kinds.iter().enumerate() {
            if i > 0 {
                sql.sql(", ");
            }
            sql.text(kind);
        }
        sql.sql(")");
    }
    sql.sql(" ORDER BY run_at, created_at LIMIT 1")
        .sql(B::SKIP_LOCKED)
        .sql(") RETURNING ")
        .sql(COLUMNS);
    match sql.fetch_optional(conn).await? {
        Some(row) => Ok(Some(Claim {
            fence: B::int(&row, "fence")?,
            job: job_from_row::<B>(&row)?,
        })),
        None => Ok(None),
    }
}

pub(super) async fn heartbeat<B: Backend>(
    conn: &mut B::Connection,
    id: &str,
    fence: i64,
    lease: Duration,
    progress: Option<&Value>,
    now: i64,
) -> Result<()> {
    let progress = progress.map(Value::to_string);
    let mut sql = Sql::<B>::new("UPDATE jobs SET lease_until = ");
    sql.int(now.saturating_add(millis(lease)))
        .sql(", updated_at = ")
        .int(now);
    if let Some(progress) = progress.as_deref() {
        sql.sql(", progress = ").text(progress);
    }
    fenced::<B>(&mut sql, id, fence);
    expect_one(sql.execute(conn).await?, id)
}

pub(super) async fn complete<B: Backend>(
    conn: &mut B::Connection,
    id: &str,
    fence: i64,
    result: &Value,
    now: i64,
) -> Result<()> {
    let result = result.to_string();
    let mut sql = Sql::<B>::new(
        "UPDATE jobs SET state = 'succeeded', lease_until = NULL, last_error = NULL, result = ",
    );
    sql.text(&result).sql(", updated_at = ").int(now);
    fenced::<B>(&mut sql, id, fence);
    expect_one(sql.execute(conn).await?, id)
}

pub(super) async fn fail<B: Backend>(
    conn: &mut B::Connection,
    id: &str,
    fence: i64,
    error: &str,
    retry: Retry,
    now: i64,
) -> Result<JobState> {
    let (may_retry, delay) = match retry {
        Retry::After(delay) => (1, millis(delay)),
        Retry::Never => (0, 0),
    };
    let mut sql = Sql::<B>::new("UPDATE jobs SET state = CASE WHEN attempts < max_attempts AND ");
    sql.int(may_retry)
        .sql(" > 0 THEN 'queued' ELSE 'dead' END, lease_until = NULL, worker = NULL, last_error = ")
        .text(error)
        .sql(", run_at = ")
        .int(now.saturating_add(delay))
        .sql(", updated_at = ")
        .int(now);
    fenced::<B>(&mut sql, id, fence);
    sql.sql(" RETURNING state");
    let row = sql
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| StoreError::LeaseLost(id.to_string()))?;
    parse_state(&B::text(&row, "state")?)
}

pub(super) async fn get<B: Backend>(
    conn: &mut B::Connection,
    tenant: &TenantId,
    id: &str,
) -> Result<Job> {
    let row = Sql::<B>::new("SELECT ")
        .sql(COLUMNS)
        .sql(" FROM jobs WHERE tenant = ")
        .text(tenant.as_str())
        .sql(" AND id = ")
        .text(id)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            resource_type: "job".into(),
            id: id.to_string(),
        })?;
    job_from_row::<B>(&row)
}

/// Cancels a job that has not finished, or withdraws a succeeded one's result (a client deleting
/// its export); a dead job stays dead for inspection. Returns the state after.
pub(super) async fn cancel<B: Backend>(
    conn: &mut B::Connection,
    tenant: &TenantId,
    id: &str,
    now: i64,
) -> Result<JobState> {
    Sql::<B>::new("UPDATE jobs SET state = 'cancelled', lease_until = NULL, updated_at = ")
        .int(now)
        .sql(" WHERE tenant = ")
        .text(tenant.as_str())
        .sql(" AND id = ")
        .text(id)
        .sql(" AND state IN ('queued', 'running', 'succeeded')")
        .execute(conn)
        .await?;
    Ok(get::<B>(conn, tenant, id).await?.state)
}

/// Jobs ready to run and waiting for a worker (scheduled ones are not backlog yet).
pub(super) async fn queue_depth<B: Backend>(conn: &mut B::Connection, now: i64) -> Result<u64> {
    let row = Sql::<B>::new("SELECT COUNT(*) AS n FROM jobs WHERE state = 'queued' AND run_at <= ")
        .int(now)
        .fetch_optional(conn)
        .await?;
    count(row.as_ref().map(|r| B::int(r, "n")).transpose()?)
}

/// Live Appointments whose status still holds a slot, over all tenants (an autoscaling signal).
pub(super) async fn active_appointments<B: Backend>(conn: &mut B::Connection) -> Result<u64> {
    let row = Sql::<B>::new(
        "SELECT COUNT(*) AS n FROM resources r WHERE r.resource_type = 'Appointment' \
         AND r.deleted = ",
    )
    .flag(false)
    .sql(
        " AND EXISTS (SELECT 1 FROM search_token t WHERE t.tenant = r.tenant \
         AND t.resource_type = 'Appointment' AND t.resource_id = r.id AND t.param = 'status' \
         AND t.code IN ",
    )
    .sql(ACTIVE_APPOINTMENT_STATUSES)
    .sql(")")
    .fetch_optional(conn)
    .await?;
    count(row.as_ref().map(|r| B::int(r, "n")).transpose()?)
}

fn fenced<B: Backend>(sql: &mut Sql<'_, B>, id: &str, fence: i64) {
    // The id is bound as an owned copy: the statement outlives no borrow of the caller's.
    sql.sql(" WHERE id = ")
        .owned(id.to_string())
        .sql(" AND fence = ")
        .int(fence)
        .sql(" AND state = 'running'");
}

fn expect_one(rows: u64, id: &str) -> Result<()> {
    if rows == 1 {
        Ok(())
    } else {
        Err(StoreError::LeaseLost(id.to_string()))
    }
}

fn parse_state(s: &str) -> Result<JobState> {
    JobState::parse(s).ok_or_else(|| StoreError::Corrupt(format!("job state '{s}'")))
}

fn job_from_row<B: Backend>(row: &B::Row) -> Result<Job> {
    let json = |column: &str| -> Result<Option<Value>> {
        B::opt_text(row, column)?
            .map(|text| {
                serde_json::from_str(&text)
                    .map_err(|e| StoreError::Corrupt(format!("job {column}: {e}")))
            })
            .transpose()
    };
    let small = |column: &str| -> Result<u32> {
        u32::try_from(B::int(row, column)?)
            .map_err(|_| StoreError::Corrupt(format!("job {column}")))
    };
    Ok(Job {
        id: B::text(row, "id")?,
        tenant: B::text(row, "tenant")?,
        kind: B::text(row, "kind")?,
        payload: json("payload")?.unwrap_or(Value::Null),
        state: parse_state(&B::text(row, "state")?)?,
        attempts: small("attempts")?,
        max_attempts: small("max_attempts")?,
        progress: json("progress")?,
        result: json("result")?,
        last_error: B::opt_text(row, "last_error")?,
        created_at: super::store::from_millis(B::int(row, "created_at")?)?,
        updated_at: super::store::from_millis(B::int(row, "updated_at")?)?,
    })
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
