//! Store and StoreTx over any [`Backend`]: the resource tables' statements, written once.

use async_trait::async_trait;
use careplane_fhir::search::index as search_index;
use careplane_fhir::search::query::SearchRequest;
use careplane_fhir::{Definitions, Id, ResourceType, VersionId};
use serde_json::Value;
use sqlx::{Pool, Transaction};
use time::OffsetDateTime;

use std::collections::HashMap;
use std::time::Duration;

use super::search::like_escape;
use super::settings::{self, DerivedRowsSetting};
use super::subscriptions::{self, Change};
use super::versions::{NewVersion, PendingVersions};
use super::{index, jobs, search, Backend, Sql};
use crate::model::stamp;
use crate::{
    Claim, Condition, HistoryEntry, HistoryPage, HistoryQuery, HistoryScope, Job, JobState, Lease,
    Method, NewJob, PoolUsage, ReindexBatch, ReindexCursor, Result, Retry, SchemaVersion,
    SearchOptions, SearchPage, Store, StoreError, StoreTx, StoredResource, TenantId, UpdateOptions,
    UpdateOutcome,
};

/// A store on one backend: a pool for write transactions and one for reads (the same pool on
/// PostgreSQL; on SQLite the single writer connection and read-only connections).
pub struct SqlStore<B: Backend> {
    writer: Pool<B>,
    reader: Pool<B>,
    derived_rows: DerivedRowsSetting,
}

impl<B: Backend> SqlStore<B> {
    pub(crate) fn new(writer: Pool<B>, reader: Pool<B>) -> Self {
        SqlStore {
            writer,
            reader,
            derived_rows: DerivedRowsSetting::default(),
        }
    }

    /// Closes the pools, waiting for connections in use to be returned (shutdown, tests).
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

/// A write transaction; rolled back by sqlx when dropped uncommitted.
pub struct SqlTx<B: Backend> {
    tx: Transaction<'static, B>,
    /// Index rows written at commit (or before this transaction searches) in a few multi-row
    /// statements: per-resource inserts made bulk imports several times slower.
    pending: index::Pending,
    /// Versions written at commit or before this transaction reads the resource tables.
    versions: PendingVersions,
    /// Current versions read ahead by [`StoreTx::read_ahead`] (unlocked; `None`: absent),
    /// each used by one update and dropped when the resource is written.
    ahead: HashMap<(String, String, String), Option<Ahead>>,
    /// Versions written, for the Subscription outbox at commit.
    changes: Vec<Change>,
    /// Whether this transaction's writes store the rows of derived search parameters.
    derived_rows: search_index::DerivedRows,
}

/// Current state of a logical resource, read inside a write transaction.
struct State {
    version: VersionId,
    deleted: bool,
    last_updated: i64,
    seq: i64,
}

#[async_trait]
impl<B: Backend> Store for SqlStore<B> {
    async fn begin(&self) -> Result<Box<dyn StoreTx>> {
        // Read before the transaction starts: on SQLite the reader and writer are different
        // connections, and a failed read must not abort a PostgreSQL transaction.
        let derived_rows = self.derived_rows.get(&self.reader).await;
        let tx = self.writer.begin().await?;
        Ok(Box::new(SqlTx {
            tx,
            pending: index::Pending::default(),
            versions: PendingVersions::default(),
            ahead: HashMap::new(),
            changes: Vec::new(),
            derived_rows,
        }))
    }

    async fn read(
        &self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &Id,
    ) -> Result<StoredResource> {
        let mut conn = self.reader.acquire().await?;
        read_current::<B>(&mut conn, tenant, resource_type, id.as_str()).await
    }

    async fn vread(
        &self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &Id,
        version: VersionId,
    ) -> Result<StoredResource> {
        let mut conn = self.reader.acquire().await?;
        read_version::<B>(&mut conn, tenant, resource_type, id.as_str(), version).await
    }

    async fn history(
        &self,
        tenant: &TenantId,
        scope: &HistoryScope,
        query: &HistoryQuery,
    ) -> Result<HistoryPage> {
        let mut q = Sql::<B>::new(
            "SELECT v.seq, v.resource_type, v.id, v.version, v.last_updated, v.method, v.body \
             FROM resource_versions v WHERE v.tenant = ",
        );
        q.text(tenant.as_str());
        match scope {
            HistoryScope::System => {}
            HistoryScope::Type(rt) => {
                q.sql(" AND v.resource_type = ").text(rt.as_str());
            }
            HistoryScope::Instance(rt, id) => {
                q.sql(" AND v.resource_type = ").text(rt.as_str());
                q.sql(" AND v.id = ").text(id.as_str());
            }
        }
        if let Some(since) = query.since {
            q.sql(" AND v.last_updated >= ").int(to_millis(since));
        }
        if let Some(at) = query.at {
            let at = to_millis(at);
            q.sql(" AND v.last_updated <= ").int(at);
            q.sql(
                " AND NOT EXISTS (SELECT 1 FROM resource_versions n WHERE n.tenant = v.tenant \
                 AND n.resource_type = v.resource_type AND n.id = v.id AND n.version > v.version \
                 AND n.last_updated <= ",
            )
            .int(at)
            .sql(")");
        }
        if let Some(before) = query.before {
            q.sql(" AND v.seq < ").int(before);
        }
        let limit = i64::from(query.count.max(1));
        q.sql(" ORDER BY v.seq DESC LIMIT ").int(limit + 1);
        let mut conn = self.reader.acquire().await?;
        let rows = q.fetch_all(&mut conn).await?;
        let mut entries = Vec::with_capacity(rows.len());
        let mut last_seq = None;
        for row in rows.iter().take(limit as usize) {
            let method = B::text(row, "method")?;
            entries.push(HistoryEntry {
                resource_type: B::text(row, "resource_type")?,
                id: B::text(row, "id")?,
                version: to_version(B::int(row, "version")?)?,
                last_updated: from_millis(B::int(row, "last_updated")?)?,
                method: Method::parse(&method)
                    .ok_or_else(|| StoreError::Corrupt(format!("method {method}")))?,
                body: B::opt_text(row, "body")?,
            });
            last_seq = Some(B::int(row, "seq")?);
        }
        let next = if rows.len() as i64 > limit {
            last_seq
        } else {
            None
        };
        Ok(HistoryPage { entries, next })
    }

    async fn search(
        &self,
        tenant: &TenantId,
        request: &SearchRequest,
        options: &SearchOptions,
    ) -> Result<SearchPage> {
        let mut conn = self.reader.acquire().await?;
        let now = to_millis(OffsetDateTime::now_utc());
        search::search::<B>(&mut conn, tenant, request, options, now).await
    }

    async fn reindex_batch(
        &self,
        after: Option<&ReindexCursor>,
        limit: usize,
    ) -> Result<ReindexBatch> {
        let defs = definitions()?;
        let derived_rows = self.derived_rows.get(&self.reader).await;
        let empty = ReindexCursor {
            tenant: String::new(),
            resource_type: String::new(),
            id: String::new(),
        };
        let after = after.unwrap_or(&empty);
        // A batch in its own transaction keeps locks short on a live database.
        let mut tx = self.writer.begin().await?;
        let rows = Sql::<B>::new(
            "SELECT r.tenant, r.resource_type, r.id, v.body FROM resources r \
             JOIN resource_versions v ON v.seq = r.seq WHERE NOT r.deleted \
             AND (r.tenant > ",
        )
        .text(&after.tenant)
        .sql(" OR (r.tenant = ")
        .text(&after.tenant)
        .sql(" AND (r.resource_type > ")
        .text(&after.resource_type)
        .sql(" OR (r.resource_type = ")
        .text(&after.resource_type)
        .sql(" AND r.id > ")
        .text(&after.id)
        .sql(")))) ORDER BY r.tenant, r.resource_type, r.id LIMIT ")
        .int(i64::try_from(limit.max(1)).unwrap_or(500))
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = rows.last() else {
            return Ok(ReindexBatch {
                done: 0,
                next: None,
            });
        };
        let next = ReindexCursor {
            tenant: B::text(last, "tenant")?,
            resource_type: B::text(last, "resource_type")?,
            id: B::text(last, "id")?,
        };
        let mut done = 0;
        for row in &rows {
            let (tenant, resource_type, id) = (
                B::text(row, "tenant")?,
                B::text(row, "resource_type")?,
                B::text(row, "id")?,
            );
            let body: Value = match B::opt_text(row, "body")? {
                Some(text) => {
                    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(e.to_string()))?
                }
                None => continue,
            };
            let owner = index::Owner {
                tenant: &tenant,
                resource_type: &resource_type,
                id: &id,
            };
            index::clear::<B>(&mut tx, &owner).await?;
            let rows = search_index::extract_with(defs, &body, derived_rows);
            index::insert::<B>(&mut tx, &owner, &rows).await?;
            if resource_type == SUBSCRIPTION {
                subscriptions::replace_topic::<B>(&mut tx, &tenant, &id, Some(&body)).await?;
            }
            done += 1;
        }
        tx.commit().await?;
        Ok(ReindexBatch {
            done,
            next: Some(next),
        })
    }

    async fn live_resources(&self) -> Result<u64> {
        let mut conn = self.reader.acquire().await?;
        let row = Sql::<B>::new("SELECT COUNT(*) AS n FROM resources WHERE deleted = ")
            .flag(false)
            .fetch_optional(&mut conn)
            .await?;
        super::count(row.as_ref().map(|r| B::int(r, "n")).transpose()?)
    }

    async fn migrate(&self) -> Result<()> {
        B::migrate(&self.writer).await
    }

    async fn contract(&self) -> Result<u64> {
        let derived = search_index::derived_params(definitions()?);
        let mut tx = self.writer.begin().await?;
        settings::omit_derived_rows::<B>(&mut tx).await?;
        let mut deleted = 0;
        if derived.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        // One statement (one pass over the table) per index table: each derived parameter's
        // own rows, its composite components (`code$0`) and its variants (`code:canonical`).
        for table in index::INDEX_TABLES {
            let mut q = Sql::<B>::new(&format!("DELETE FROM {table} WHERE "));
            for (n, (resource_type, code)) in derived.iter().enumerate() {
                let escaped = like_escape(code);
                q.sql(if n == 0 { "(" } else { " OR (" })
                    .sql("resource_type = ")
                    .text(resource_type)
                    .sql(" AND (param = ")
                    .text(code)
                    .sql(" OR param LIKE ")
                    .owned(format!("{escaped}$%"))
                    .sql(" ESCAPE '\\' OR param LIKE ")
                    .owned(format!("{escaped}:%"))
                    .sql(" ESCAPE '\\'))");
            }
            deleted += q.execute(&mut tx).await?;
        }
        tx.commit().await?;
        self.derived_rows.forget();
        Ok(deleted)
    }

    async fn analyze(&self) -> Result<()> {
        let mut conn = self.writer.acquire().await?;
        Sql::<B>::new("ANALYZE").execute(&mut conn).await?;
        Ok(())
    }

    async fn backup(&self, path: &std::path::Path) -> Result<()> {
        if B::BACKEND != "sqlite" {
            return Err(StoreError::Unsupported(
                "backup: use pg_dump or the PostgreSQL operator's backups".into(),
            ));
        }
        let target = path
            .to_str()
            .ok_or_else(|| StoreError::Unsupported("backup: the path is not UTF-8".into()))?;
        // Through the writer: the copy is one consistent snapshot and no write interleaves.
        let mut conn = self.writer.acquire().await?;
        Sql::<B>::new("VACUUM INTO ")
            .text(target)
            .execute(&mut conn)
            .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        let mut conn = self.reader.acquire().await?;
        Sql::<B>::new("SELECT 1").execute(&mut conn).await?;
        Ok(())
    }

    async fn schema_version(&self) -> Result<SchemaVersion> {
        let expected = B::migrator()
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .map(|m| m.version)
            .max()
            .unwrap_or(0);
        let mut conn = self.reader.acquire().await?;
        // sqlx's own bookkeeping table; a failed (dirty) migration does not count as applied.
        let row = Sql::<B>::new(
            "SELECT COALESCE(MAX(version), 0) AS applied FROM _sqlx_migrations WHERE success",
        )
        .fetch_optional(&mut conn)
        .await?;
        let applied = match row {
            Some(row) => B::int(&row, "applied")?,
            None => 0,
        };
        Ok(SchemaVersion { applied, expected })
    }

    async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }

    fn backend(&self) -> &'static str {
        B::BACKEND
    }

    fn pool_usage(&self) -> PoolUsage {
        let in_use = self
            .writer
            .size()
            .saturating_sub(self.writer.num_idle() as u32);
        PoolUsage {
            in_use,
            max: self.writer.options().get_max_connections(),
        }
    }

    async fn active_appointments(&self) -> Result<u64> {
        let mut conn = self.reader.acquire().await?;
        jobs::active_appointments::<B>(&mut conn).await
    }

    async fn queue_depth(&self) -> Result<u64> {
        let mut conn = self.reader.acquire().await?;
        jobs::queue_depth::<B>(&mut conn, now_millis()).await
    }

    async fn claim_job(&self, lease: &Lease, kinds: &[String]) -> Result<Option<Claim>> {
        let mut conn = self.writer.acquire().await?;
        let now = now_millis();
        jobs::release_expired::<B>(&mut conn, now).await?;
        jobs::claim::<B>(&mut conn, lease, kinds, now).await
    }

    async fn heartbeat_job(
        &self,
        id: &str,
        fence: i64,
        lease: Duration,
        progress: Option<&Value>,
    ) -> Result<()> {
        let mut conn = self.writer.acquire().await?;
        jobs::heartbeat::<B>(&mut conn, id, fence, lease, progress, now_millis()).await
    }

    async fn fail_job(&self, id: &str, fence: i64, error: &str, retry: Retry) -> Result<JobState> {
        let mut conn = self.writer.acquire().await?;
        jobs::fail::<B>(&mut conn, id, fence, error, retry, now_millis()).await
    }

    async fn job(&self, tenant: &TenantId, id: &str) -> Result<Job> {
        let mut conn = self.reader.acquire().await?;
        jobs::get::<B>(&mut conn, tenant, id).await
    }

    async fn cancel_job(&self, tenant: &TenantId, id: &str) -> Result<JobState> {
        let mut conn = self.writer.acquire().await?;
        jobs::cancel::<B>(&mut conn, tenant, id, now_millis()).await
    }
}

#[async_trait]
impl<B: Backend> StoreTx for SqlTx<B> {
    async fn lock(&mut self, key: &str) -> Result<()> {
        B::lock_key(&mut self.tx, lock_key(key)).await
    }

    async fn read_ahead(
        &mut self,
        tenant: &TenantId,
        targets: &[(ResourceType, String)],
    ) -> Result<()> {
        if !B::READS_AHEAD {
            return Ok(());
        }
        self.versions.flush::<B>(&mut self.tx).await?;
        for chunk in targets.chunks(READ_AHEAD_CHUNK) {
            let rows = B::current_versions(&mut self.tx, tenant.as_str(), chunk).await?;
            let mut found = HashMap::with_capacity(rows.len());
            for row in &rows {
                let key = (B::text(row, "resource_type")?, B::text(row, "id")?);
                let ahead = Ahead {
                    state: state_of::<B>(row)?,
                    body: B::opt_text(row, "body")?,
                };
                found.insert(key, ahead);
            }
            for (resource_type, id) in chunk {
                let state = found.remove(&(resource_type.to_string(), id.clone()));
                self.ahead.insert(
                    (tenant.to_string(), resource_type.to_string(), id.clone()),
                    state,
                );
            }
        }
        Ok(())
    }

    async fn matching(
        &mut self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        condition: &Condition,
    ) -> Result<Vec<String>> {
        // Matches must see what this transaction wrote before.
        self.flush_writes().await?;
        let mut search = condition.search.clone();
        search.types = vec![resource_type.to_string()];
        let now = to_millis(OffsetDateTime::now_utc());
        // Two are enough to tell none, one and many apart.
        search::matching_ids::<B>(&mut self.tx, tenant, &search, 2, now).await
    }

    async fn search(
        &mut self,
        tenant: &TenantId,
        request: &SearchRequest,
        options: &SearchOptions,
    ) -> Result<SearchPage> {
        self.flush_writes().await?;
        let now = to_millis(OffsetDateTime::now_utc());
        search::search::<B>(&mut self.tx, tenant, request, options, now).await
    }

    async fn read(
        &mut self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &str,
    ) -> Result<StoredResource> {
        self.versions.flush::<B>(&mut self.tx).await?;
        read_current::<B>(&mut self.tx, tenant, resource_type, id).await
    }

    async fn read_version(
        &mut self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &str,
        version: VersionId,
    ) -> Result<StoredResource> {
        self.versions.flush::<B>(&mut self.tx).await?;
        read_version::<B>(&mut self.tx, tenant, resource_type, id, version).await
    }

    async fn create(
        &mut self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &str,
        body: Value,
    ) -> Result<StoredResource> {
        let write = Write {
            tenant,
            resource_type,
            id,
            version: VersionId::FIRST,
            previous_update: None,
            method: Method::Create,
        };
        let stored = self.write_version(write, Some(body)).await?;
        self.record_change(tenant, &stored);
        Ok(stored)
    }

    async fn update(
        &mut self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &str,
        body: Value,
        options: UpdateOptions,
    ) -> Result<UpdateOutcome> {
        let key = (
            tenant.to_string(),
            resource_type.to_string(),
            id.to_string(),
        );
        let ahead = match options.if_match {
            None => self.ahead.remove(&key),
            // A version check needs the locked state.
            Some(_) => None,
        };
        let state = match ahead {
            // Absent when read: a create, buffered. Should another transaction create it
            // meanwhile, this one's insert fails as a unique race and the caller retries.
            Some(None) => None,
            Some(Some(ahead)) => {
                let same = if ahead.state.deleted {
                    None
                } else {
                    unchanged_as(
                        ahead.body.as_deref(),
                        resource_type,
                        id,
                        &ahead.state,
                        &body,
                    )?
                };
                if let Some(resource) = same {
                    return Ok(UpdateOutcome {
                        resource,
                        created: false,
                    });
                }
                // A change: lock and read again, as without the read-ahead.
                self.state(tenant, resource_type, id).await?
            }
            None => self.state(tenant, resource_type, id).await?,
        };
        check_if_match(options.if_match, state.as_ref())?;
        if let Some(current) = state.as_ref().filter(|s| !s.deleted) {
            if let Some(unchanged) =
                unchanged::<B>(&mut self.tx, resource_type, id, current, &body).await?
            {
                return Ok(UpdateOutcome {
                    resource: unchanged,
                    created: false,
                });
            }
        }
        let (version, method, created) = match &state {
            None if !options.allow_create => {
                return Err(StoreError::UpdateCreateDisabled {
                    resource_type: resource_type.to_string(),
                    id: id.to_string(),
                });
            }
            None => (VersionId::FIRST, Method::Create, true),
            Some(s) => (s.version.next(), Method::Update, s.deleted),
        };
        let write = Write {
            tenant,
            resource_type,
            id,
            version,
            previous_update: state.as_ref().map(|s| s.last_updated),
            method,
        };
        let resource = self.write_version(write, Some(body)).await?;
        self.record_change(tenant, &resource);
        Ok(UpdateOutcome { resource, created })
    }

    async fn delete(
        &mut self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &str,
        if_match: Option<VersionId>,
    ) -> Result<Option<VersionId>> {
        let state = self.state(tenant, resource_type, id).await?;
        let Some(state) = state else {
            return Err(StoreError::NotFound {
                resource_type: resource_type.to_string(),
                id: id.to_string(),
            });
        };
        check_if_match(if_match, Some(&state))?;
        if state.deleted {
            return Ok(None);
        }
        let write = Write {
            tenant,
            resource_type,
            id,
            version: state.version.next(),
            previous_update: Some(state.last_updated),
            method: Method::Delete,
        };
        self.write_version(write, None).await?;
        Ok(Some(write.version))
    }

    async fn enqueue(&mut self, job: &NewJob) -> Result<String> {
        jobs::enqueue::<B>(&mut self.tx, job, now_millis()).await
    }

    async fn complete_job(&mut self, id: &str, fence: i64, result: &Value) -> Result<()> {
        jobs::complete::<B>(&mut self.tx, id, fence, result, now_millis()).await
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        self.flush_writes().await?;
        if !self.changes.is_empty() {
            subscriptions::enqueue_matches::<B>(&mut self.tx, &self.changes, now_millis()).await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}

impl<B: Backend> SqlTx<B> {
    /// Writes the buffered versions and index rows, so statements that follow see them.
    async fn flush_writes(&mut self) -> Result<()> {
        let versions = self.versions.take();
        let index_rows = self.pending.take();
        let index_rows = index_rows.rows();
        if versions.is_empty() && index_rows.is_empty() {
            return Ok(());
        }
        B::write_batch(&mut self.tx, &versions, &index_rows).await
    }

    /// The resource's current state, locked until the transaction ends (after writing the
    /// buffer, so it includes this transaction's writes).
    async fn state(
        &mut self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &str,
    ) -> Result<Option<State>> {
        self.versions.flush::<B>(&mut self.tx).await?;
        current_state::<B>(&mut self.tx, tenant, resource_type, id).await
    }

    /// Buffers a version (see [`PendingVersions`]) and its index rows.
    async fn write_version(&mut self, w: Write<'_>, body: Option<Value>) -> Result<StoredResource> {
        let (tenant, resource_type) = (w.tenant.as_str(), w.resource_type.as_str());
        // A version read ahead is stale once the resource is written.
        self.ahead.remove(&(
            tenant.to_string(),
            resource_type.to_string(),
            w.id.to_string(),
        ));
        if self.versions.holds(tenant, resource_type, w.id) || self.versions.is_full() {
            self.versions.flush::<B>(&mut self.tx).await?;
        }
        let (versions, pending) = (&mut self.versions, &mut self.pending);
        write_version::<B>(&mut self.tx, versions, pending, self.derived_rows, w, body).await
    }

    fn record_change(&mut self, tenant: &TenantId, stored: &StoredResource) {
        self.changes.push(Change {
            tenant: tenant.to_string(),
            resource_type: stored.resource_type.clone(),
            id: stored.id.clone(),
            version: stored.version.get(),
        });
    }
}

/// The current version when `body` would store exactly what it already holds: such an update
/// writes nothing (no new version), which makes re-imports and retried PUTs idempotent.
async fn unchanged<B: Backend>(
    conn: &mut B::Connection,
    resource_type: &ResourceType,
    id: &str,
    current: &State,
    body: &Value,
) -> Result<Option<StoredResource>> {
    let row = Sql::<B>::new("SELECT body FROM resource_versions WHERE seq = ")
        .int(current.seq)
        .fetch_optional(conn)
        .await?;
    let stored = match row {
        Some(row) => B::opt_text(&row, "body")?,
        None => None,
    };
    unchanged_as(stored.as_deref(), resource_type, id, current, body)
}

/// [`unchanged`] against the `stored` body of the current version.
fn unchanged_as(
    stored: Option<&str>,
    resource_type: &ResourceType,
    id: &str,
    current: &State,
    body: &Value,
) -> Result<Option<StoredResource>> {
    let last_updated = from_millis(current.last_updated)?;
    let candidate = serde_json::to_string(&stamp(body.clone(), id, current.version, last_updated))
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(
        (stored == Some(candidate.as_str())).then(|| StoredResource {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
            version: current.version,
            last_updated,
            body: candidate,
        }),
    )
}

/// A stable 64-bit key for an advisory lock (FNV-1a: the same in every replica and version).
fn lock_key(key: &str) -> i64 {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    hash as i64
}

fn check_if_match(if_match: Option<VersionId>, state: Option<&State>) -> Result<()> {
    let Some(expected) = if_match else {
        return Ok(());
    };
    match state {
        Some(s) if s.version == expected && !s.deleted => Ok(()),
        Some(s) => Err(StoreError::VersionConflict {
            expected,
            current: s.version.to_string(),
        }),
        None => Err(StoreError::VersionConflict {
            expected,
            current: "none (the resource does not exist)".into(),
        }),
    }
}

async fn current_state<B: Backend>(
    conn: &mut B::Connection,
    tenant: &TenantId,
    resource_type: &ResourceType,
    id: &str,
) -> Result<Option<State>> {
    let row =
        Sql::<B>::new("SELECT version, deleted, last_updated, seq FROM resources WHERE tenant = ")
            .text(tenant.as_str())
            .sql(" AND resource_type = ")
            .text(resource_type.as_str())
            .sql(" AND id = ")
            .text(id)
            .sql(B::LOCK_ROW)
            .fetch_optional(conn)
            .await?;
    row.as_ref().map(state_of::<B>).transpose()
}

fn state_of<B: Backend>(row: &B::Row) -> Result<State> {
    Ok(State {
        version: to_version(B::int(row, "version")?)?,
        deleted: B::flag(row, "deleted")?,
        last_updated: B::int(row, "last_updated")?,
        seq: B::int(row, "seq")?,
    })
}

/// Resources per `read_ahead` statement.
const READ_AHEAD_CHUNK: usize = 500;

/// A current version read ahead, without a lock.
struct Ahead {
    state: State,
    body: Option<String>,
}

async fn read_version<B: Backend>(
    conn: &mut B::Connection,
    tenant: &TenantId,
    resource_type: &ResourceType,
    id: &str,
    version: VersionId,
) -> Result<StoredResource> {
    let row = Sql::<B>::new(
        "SELECT version, last_updated, method, body FROM resource_versions WHERE tenant = ",
    )
    .text(tenant.as_str())
    .sql(" AND resource_type = ")
    .text(resource_type.as_str())
    .sql(" AND id = ")
    .text(id)
    .sql(" AND version = ")
    .int(version.get() as i64)
    .fetch_optional(conn)
    .await?;
    let row = row.ok_or_else(|| StoreError::NotFound {
        resource_type: resource_type.to_string(),
        id: id.to_string(),
    })?;
    let body = B::opt_text(&row, "body")?.ok_or_else(|| StoreError::Gone {
        resource_type: resource_type.to_string(),
        id: id.to_string(),
        version,
    })?;
    Ok(StoredResource {
        resource_type: resource_type.to_string(),
        id: id.to_string(),
        version,
        last_updated: from_millis(B::int(&row, "last_updated")?)?,
        body,
    })
}

async fn read_current<B: Backend>(
    conn: &mut B::Connection,
    tenant: &TenantId,
    resource_type: &ResourceType,
    id: &str,
) -> Result<StoredResource> {
    let row = Sql::<B>::new(
        "SELECT r.version, r.deleted, r.last_updated, v.body FROM resources r \
         JOIN resource_versions v ON v.seq = r.seq WHERE r.tenant = ",
    )
    .text(tenant.as_str())
    .sql(" AND r.resource_type = ")
    .text(resource_type.as_str())
    .sql(" AND r.id = ")
    .text(id)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| StoreError::NotFound {
        resource_type: resource_type.to_string(),
        id: id.to_string(),
    })?;
    let version = to_version(B::int(&row, "version")?)?;
    if B::flag(&row, "deleted")? {
        return Err(StoreError::Gone {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
            version,
        });
    }
    let body = B::opt_text(&row, "body")?
        .ok_or_else(|| StoreError::Corrupt(format!("{resource_type}/{id} has no body")))?;
    Ok(StoredResource {
        resource_type: resource_type.to_string(),
        id: id.to_string(),
        version,
        last_updated: from_millis(B::int(&row, "last_updated")?)?,
        body,
    })
}

/// Which version of which resource a write produces.
#[derive(Clone, Copy)]
struct Write<'a> {
    tenant: &'a TenantId,
    resource_type: &'a ResourceType,
    id: &'a str,
    version: VersionId,
    /// `lastUpdated` (ms) of the version being replaced, if any.
    previous_update: Option<i64>,
    method: Method,
}

/// Appends a version (buffered), moves the current pointer and replaces the search index rows.
async fn write_version<B: Backend>(
    conn: &mut B::Connection,
    versions: &mut PendingVersions,
    pending: &mut index::Pending,
    derived_rows: search_index::DerivedRows,
    w: Write<'_>,
    body: Option<Value>,
) -> Result<StoredResource> {
    // lastUpdated never goes backwards for a resource, even if the wall clock does.
    let now = to_millis(OffsetDateTime::now_utc()).max(w.previous_update.unwrap_or(i64::MIN));
    let last_updated = from_millis(now)?;
    let stamped = body.map(|b| stamp(b, w.id, w.version, last_updated));
    // Indexed from the stamped body: what is searched is what is served.
    let index_rows = match &stamped {
        Some(resource) => search_index::extract_with(definitions()?, resource, derived_rows),
        None => Vec::new(),
    };
    let text = stamped
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let (tenant, resource_type) = (w.tenant.as_str(), w.resource_type.as_str());
    versions.push(NewVersion {
        tenant: tenant.to_string(),
        resource_type: resource_type.to_string(),
        id: w.id.to_string(),
        version: w.version.get() as i64,
        last_updated: now,
        method: w.method,
        body: text.clone(),
    });
    let owner = index::Owner {
        tenant,
        resource_type,
        id: w.id,
    };
    if w.method != Method::Create {
        pending.forget(&owner);
        index::clear::<B>(conn, &owner).await?;
    }
    pending.add(&owner, index_rows);
    if pending.is_full() {
        pending.flush::<B>(conn).await?;
    }
    if resource_type == SUBSCRIPTION {
        subscriptions::replace_topic::<B>(conn, tenant, w.id, stamped.as_ref()).await?;
    }
    Ok(StoredResource {
        resource_type: w.resource_type.to_string(),
        id: w.id.to_string(),
        version: w.version,
        last_updated,
        body: text.unwrap_or_default(),
    })
}

/// Subscriptions keep a topic row beside their index rows (the outbox lookup).
const SUBSCRIPTION: &str = "Subscription";

fn definitions() -> Result<&'static Definitions> {
    Definitions::r4().map_err(StoreError::Corrupt)
}

fn to_version(v: i64) -> Result<VersionId> {
    u64::try_from(v)
        .ok()
        .and_then(VersionId::new)
        .ok_or_else(|| StoreError::Corrupt(format!("version {v}")))
}

fn now_millis() -> i64 {
    to_millis(OffsetDateTime::now_utc())
}

pub(super) fn to_millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

pub(super) fn from_millis(ms: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|e| StoreError::Corrupt(format!("timestamp {ms}: {e}")))
}
