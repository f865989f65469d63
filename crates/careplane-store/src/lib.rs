//! Persistence for Careplane: one object-safe, tenant-first [`Store`] trait and its backends.
//!
//! The backend is chosen at run time from the database URL (`sqlite://…` or `postgres://…`)
//! and both live in the one binary. Their SQL is written once (`sql/`) over a small
//! [`sql::Backend`] adapter; migrations are per backend with the same numbering. Every write,
//! single or a whole FHIR transaction Bundle, goes through a [`StoreTx`]. The contract suite in
//! `tests/contract/` is written once against `&dyn Store` and instantiated per backend.

pub mod error;
pub mod jobs;
pub mod model;
pub mod postgres;
pub mod sql;
pub mod sqlite;
pub mod tenant;
mod write;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use careplane_fhir::search::query::SearchRequest;
use careplane_fhir::{Id, ResourceType, VersionId};
use serde_json::Value;

pub use error::{Result, StoreError};
pub use jobs::{
    Claim, Job, JobState, Lease, NewJob, PoolUsage, ReindexBatch, ReindexCursor, Retry,
};
pub use model::{
    Condition, CreateOutcome, HistoryEntry, HistoryPage, HistoryQuery, HistoryScope, Method,
    SearchOptions, SearchPage, StoredResource, UpdateOptions, UpdateOutcome,
};
pub use postgres::{PoolSettings, PostgresStore};
pub use sqlite::SqliteStore;
pub use tenant::TenantId;
pub use write::{
    conditional_delete_in, conditional_update_in, create_in, locked_matches, retry_transient,
};

/// One database transaction. Bodies passed in are already validated; the store stamps
/// versions and `meta.lastUpdated`. Dropping it without [`StoreTx::commit`] rolls everything
/// back, which is what makes a failed transaction Bundle leave no trace.
#[async_trait]
pub trait StoreTx: Send {
    /// Holds `key` until this transaction ends, so transactions deciding on the same key (the
    /// same conditional create) run one after the other on every backend.
    async fn lock(&mut self, key: &str) -> Result<()>;

    /// Reads the current versions of several resources in one round trip, ahead of updates of
    /// them later in this transaction (a transaction Bundle's PUTs). An update that would
    /// change nothing then needs no statement and takes no lock (re-imports, resources shared
    /// by many Bundles); one of a resource that does not exist is buffered with the other
    /// writes. An optimisation only: an update that changes something locks and reads again.
    async fn read_ahead(
        &mut self,
        tenant: &TenantId,
        targets: &[(ResourceType, String)],
    ) -> Result<()>;

    /// Ids of live resources matching `condition` (at most two: enough to tell 0/1/many).
    async fn matching(
        &mut self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        condition: &Condition,
    ) -> Result<Vec<String>>;

    /// A search seeing this transaction's own writes (GET entries of a transaction Bundle).
    async fn search(
        &mut self,
        tenant: &TenantId,
        request: &SearchRequest,
        options: &SearchOptions,
    ) -> Result<SearchPage>;

    async fn read(
        &mut self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &str,
    ) -> Result<StoredResource>;

    async fn read_version(
        &mut self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &str,
        version: VersionId,
    ) -> Result<StoredResource>;

    /// Creates version 1 under an id the caller chose (a fresh UUID, or one a transaction
    /// Bundle already handed out to references).
    async fn create(
        &mut self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &str,
        body: Value,
    ) -> Result<StoredResource>;

    async fn update(
        &mut self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &str,
        body: Value,
        options: UpdateOptions,
    ) -> Result<UpdateOutcome>;

    /// Soft-deletes; returns the deletion's version, or `None` when it was already deleted.
    async fn delete(
        &mut self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &str,
        if_match: Option<VersionId>,
    ) -> Result<Option<VersionId>>;

    /// Enqueues a job that exists only if this transaction commits (the write that causes it).
    async fn enqueue(&mut self, job: &NewJob) -> Result<String>;

    /// Marks a claimed job succeeded in the same transaction as its side effects. A stale fence
    /// fails with [`StoreError::LeaseLost`]; the caller drops the transaction, and with it the
    /// side effects, so a job superseded by another worker never takes effect twice.
    async fn complete_job(&mut self, id: &str, fence: i64, result: &Value) -> Result<()>;

    async fn commit(self: Box<Self>) -> Result<()>;
}

/// Everything the API, importer and worker need from persistence. Reads go straight to the
/// store; writes through [`Store::begin`]. The single-write helpers retry transient conflicts
/// (serialization failures, deadlocks, unique races) a bounded number of times.
#[async_trait]
pub trait Store: Send + Sync {
    /// Starts a write transaction.
    async fn begin(&self) -> Result<Box<dyn StoreTx>>;

    async fn read(
        &self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &Id,
    ) -> Result<StoredResource>;

    async fn vread(
        &self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &Id,
        version: VersionId,
    ) -> Result<StoredResource>;

    /// Versions newest first, paged by a keyset cursor so pages stay stable while writes continue.
    async fn history(
        &self,
        tenant: &TenantId,
        scope: &HistoryScope,
        query: &HistoryQuery,
    ) -> Result<HistoryPage>;

    /// One page of a search, with its includes and (when asked) the total.
    async fn search(
        &self,
        tenant: &TenantId,
        request: &SearchRequest,
        options: &SearchOptions,
    ) -> Result<SearchPage>;

    /// Rebuilds the search index of up to `limit` live resources (all tenants) after `after`,
    /// in their own transaction, in (tenant, type, id) order. Resumable: pass the returned
    /// cursor to continue; `next` is `None` once every resource was done.
    async fn reindex_batch(
        &self,
        after: Option<&ReindexCursor>,
        limit: usize,
    ) -> Result<ReindexBatch>;

    /// Live resources over all tenants (the denominator of reindex progress).
    async fn live_resources(&self) -> Result<u64>;

    /// Rebuilds the search index of every live resource (all tenants), after the definitions or
    /// the extraction changed, then refreshes planner statistics. Returns how many resources
    /// were reindexed.
    async fn reindex(&self) -> Result<u64> {
        let mut done = 0;
        let mut cursor = None;
        loop {
            let batch = self.reindex_batch(cursor.as_ref(), 500).await?;
            done += batch.done;
            match batch.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        self.analyze().await?;
        Ok(done)
    }

    /// Applies pending migrations (idempotent; safe when several replicas start at once).
    async fn migrate(&self) -> Result<()>;

    /// The contract step of an upgrade, once no replica of the previous release is left:
    /// writes stop storing the index rows of search parameters derived from others (searches
    /// read their sources' rows), and the derived rows stored so far are deleted. Idempotent.
    /// Returns how many rows were deleted.
    async fn contract(&self) -> Result<u64>;

    /// Refreshes the query planner's statistics. Run after bulk loads: a freshly loaded
    /// PostgreSQL table without statistics gets nested-loop plans that turn indexed searches into
    /// scans.
    async fn analyze(&self) -> Result<()>;

    /// Writes a consistent copy of the whole database to `path` while it serves (SQLite's
    /// `VACUUM INTO`). PostgreSQL answers [`StoreError::Unsupported`]: its backups are
    /// `pg_dump` or the operator's continuous archiving.
    async fn backup(&self, path: &std::path::Path) -> Result<()>;

    /// A cheap round trip to the database, for readiness.
    async fn ping(&self) -> Result<()>;

    /// The newest migration the database has applied and the newest this binary embeds, for
    /// readiness (a replica must not serve before `careplane migrate` has run).
    async fn schema_version(&self) -> Result<SchemaVersion>;

    /// Closes the pools, waiting for connections in use to be returned (end of shutdown).
    async fn close(&self);

    /// Which backend this is (`sqlite`, `postgres`), for logs and metrics.
    fn backend(&self) -> &'static str;

    /// Connections in use and the pool's limit (the `db_connection_pool_usage` metric).
    fn pool_usage(&self) -> PoolUsage;

    /// Live Appointments still holding a slot, over all tenants (an autoscaling metric).
    async fn active_appointments(&self) -> Result<u64>;

    /// Jobs ready to run and not yet claimed (the `queue_depth` metric).
    async fn queue_depth(&self) -> Result<u64>;

    /// Claims the oldest ready job of one of `kinds` (any kind when empty) for the lease's
    /// duration, first returning jobs with expired leases to the queue (or the dead letters).
    async fn claim_job(&self, lease: &Lease, kinds: &[String]) -> Result<Option<Claim>>;

    /// Extends a claimed job's lease and records its progress.
    async fn heartbeat_job(
        &self,
        id: &str,
        fence: i64,
        lease: Duration,
        progress: Option<&Value>,
    ) -> Result<()>;

    /// Ends a failed attempt: back to the queue after the retry delay, or dead when attempts
    /// ran out or retrying cannot help. Returns the state the job is now in.
    async fn fail_job(&self, id: &str, fence: i64, error: &str, retry: Retry) -> Result<JobState>;

    /// A job of this tenant (status polling, dead-letter inspection).
    async fn job(&self, tenant: &TenantId, id: &str) -> Result<Job>;

    /// Cancels a job that has not finished (a running one loses its lease at its next
    /// heartbeat), or withdraws a succeeded job's result; dead jobs stay dead. Returns the
    /// state after.
    async fn cancel_job(&self, tenant: &TenantId, id: &str) -> Result<JobState>;

    /// Enqueues a job on its own (not caused by a resource write).
    async fn enqueue(&self, job: &NewJob) -> Result<String> {
        let mut tx = self.begin().await?;
        let id = tx.enqueue(job).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Marks a claimed job succeeded (a job without side effects in the database).
    async fn complete_job(&self, id: &str, fence: i64, result: &Value) -> Result<()> {
        let mut tx = self.begin().await?;
        tx.complete_job(id, fence, result).await?;
        tx.commit().await
    }

    /// Creates a resource with a server-assigned id, unless `condition` matches an existing one.
    async fn create(
        &self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        body: Value,
        condition: Option<&Condition>,
    ) -> Result<CreateOutcome> {
        retry_transient(|| async {
            let mut tx = self.begin().await?;
            let id = uuid::Uuid::new_v4().to_string();
            let outcome = create_in(
                tx.as_mut(),
                tenant,
                resource_type,
                &id,
                body.clone(),
                condition,
            )
            .await?;
            tx.commit().await?;
            Ok(outcome)
        })
        .await
    }

    /// `PUT /{type}?criteria`, in its own transaction (see [`conditional_update_in`]).
    async fn conditional_update(
        &self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        condition: &Condition,
        body: Value,
        options: UpdateOptions,
    ) -> Result<UpdateOutcome> {
        retry_transient(|| async {
            let mut tx = self.begin().await?;
            let outcome = conditional_update_in(
                tx.as_mut(),
                tenant,
                resource_type,
                condition,
                body.clone(),
                options,
            )
            .await?;
            tx.commit().await?;
            Ok(outcome)
        })
        .await
    }

    /// `DELETE /{type}?criteria`, in its own transaction (see [`conditional_delete_in`]).
    async fn conditional_delete(
        &self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        condition: &Condition,
        if_match: Option<VersionId>,
    ) -> Result<Option<VersionId>> {
        retry_transient(|| async {
            let mut tx = self.begin().await?;
            let outcome =
                conditional_delete_in(tx.as_mut(), tenant, resource_type, condition, if_match)
                    .await?;
            tx.commit().await?;
            Ok(outcome)
        })
        .await
    }

    async fn update(
        &self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &Id,
        body: Value,
        options: UpdateOptions,
    ) -> Result<UpdateOutcome> {
        retry_transient(|| async {
            let mut tx = self.begin().await?;
            let outcome = tx
                .update(tenant, resource_type, id.as_str(), body.clone(), options)
                .await?;
            tx.commit().await?;
            Ok(outcome)
        })
        .await
    }

    /// Soft-deletes; returns the deletion's version, or `None` when it was already deleted.
    async fn delete(
        &self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &Id,
        if_match: Option<VersionId>,
    ) -> Result<Option<VersionId>> {
        retry_transient(|| async {
            let mut tx = self.begin().await?;
            let outcome = tx
                .delete(tenant, resource_type, id.as_str(), if_match)
                .await?;
            tx.commit().await?;
            Ok(outcome)
        })
        .await
    }
}

/// Migration versions, as [`Store::schema_version`] reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaVersion {
    /// Newest successfully applied migration (0 when none).
    pub applied: i64,
    /// Newest migration embedded in this binary.
    pub expected: i64,
}

impl SchemaVersion {
    /// Whether the schema is at least what this binary needs. Newer is fine: during a rolling
    /// upgrade the new release migrates first and the old one keeps serving (migrations are
    /// backward compatible: expand, deploy, contract).
    pub fn is_current(self) -> bool {
        self.applied >= self.expected
    }
}

/// Opens the store named by `url` (`sqlite://PATH` or `postgres://…`). Migrations are not
/// applied; call [`Store::migrate`].
pub async fn connect(url: &str, pool: PoolSettings) -> Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        return Ok(Arc::new(SqliteStore::open(url).await?));
    }
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        return Ok(Arc::new(PostgresStore::open(url, pool).await?));
    }
    let scheme = url.split(':').next().unwrap_or_default();
    Err(StoreError::UnsupportedUrl(format!(
        "scheme '{scheme}:' (supported: sqlite://PATH, postgres://USER@HOST:PORT/DB)"
    )))
}
