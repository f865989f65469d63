//! [`CachedStore`]: the `Store` decorator that reads current versions through a [`Cache`],
//! writes committed versions through to it and announces enqueued jobs.
//!
//! The write-side provided methods of `Store` (create, update, delete, conditional ones,
//! enqueue, complete_job) are deliberately not forwarded: their default bodies call
//! [`Store::begin`], which is how every write reaches [`CachedTx`]; forwarding them to the inner
//! store would skip the write-through.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use careplane_fhir::search::query::SearchRequest;
use careplane_fhir::{Id, ResourceType, VersionId};
use careplane_store::{
    Claim, Condition, HistoryPage, HistoryQuery, HistoryScope, Job, JobState, Lease, NewJob,
    PoolUsage, ReindexBatch, ReindexCursor, Result, Retry, SchemaVersion, SearchOptions,
    SearchPage, Store, StoreError, StoreTx, StoredResource, TenantId, UpdateOptions, UpdateOutcome,
};
use serde_json::Value;
use time::OffsetDateTime;

use crate::{
    Cache, Cause, Entry, EntryState, Key, Lookup, Put, Wakeups, REQUESTS_TOTAL, WRITES_TOTAL,
};

/// Counts since this store was built (tests and logs; Prometheus gets the same as counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub bypassed: u64,
    pub errors: u64,
    pub writes_stored: u64,
    pub writes_kept: u64,
    pub write_errors: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    bypassed: AtomicU64,
    errors: AtomicU64,
    writes_stored: AtomicU64,
    writes_kept: AtomicU64,
    write_errors: AtomicU64,
}

impl Counters {
    fn read(&self, result: &'static str) {
        let counter = match result {
            "hit" => &self.hits,
            "miss" => &self.misses,
            "bypass" => &self.bypassed,
            _ => &self.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(REQUESTS_TOTAL, "result" => result).increment(1);
    }

    fn write(&self, put: Put) {
        let (counter, result) = match put {
            Put::Stored => (&self.writes_stored, "stored"),
            Put::Kept => (&self.writes_kept, "kept"),
            Put::Error => (&self.write_errors, "error"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(WRITES_TOTAL, "result" => result).increment(1);
    }
}

/// A [`Store`] whose current-version reads go through a cache. Without a cache it only adds
/// wake-ups; without either it is a plain pass-through.
pub struct CachedStore {
    inner: Arc<dyn Store>,
    cache: Option<Arc<dyn Cache>>,
    wakeups: Option<Arc<dyn Wakeups>>,
    counters: Arc<Counters>,
}

impl CachedStore {
    pub fn new(inner: Arc<dyn Store>) -> CachedStore {
        CachedStore {
            inner,
            cache: None,
            wakeups: None,
            counters: Arc::default(),
        }
    }

    pub fn with_cache(mut self, cache: Arc<dyn Cache>) -> CachedStore {
        self.cache = Some(cache);
        self
    }

    pub fn with_wakeups(mut self, wakeups: Arc<dyn Wakeups>) -> CachedStore {
        self.wakeups = Some(wakeups);
        self
    }

    /// Which cache serves reads: `redis`, `in-process` or `none`.
    pub fn cache_name(&self) -> &'static str {
        self.cache.as_ref().map_or("none", |c| c.name())
    }

    pub fn stats(&self) -> CacheStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheStats {
            hits: get(&c.hits),
            misses: get(&c.misses),
            bypassed: get(&c.bypassed),
            errors: get(&c.errors),
            writes_stored: get(&c.writes_stored),
            writes_kept: get(&c.writes_kept),
            write_errors: get(&c.write_errors),
        }
    }
}

fn resource(resource_type: &ResourceType, id: &str, entry: &Entry) -> Option<StoredResource> {
    let EntryState::Live {
        last_updated_ms,
        body,
    } = &entry.state
    else {
        return None;
    };
    let last_updated =
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(*last_updated_ms) * 1_000_000).ok()?;
    Some(StoredResource {
        resource_type: resource_type.to_string(),
        id: id.to_string(),
        version: VersionId::new(entry.version)?,
        last_updated,
        body: body.clone(),
    })
}

/// Bodies larger than this are not cached (the entry keeps only the version, as a fence): one
/// such body would cost a cache call many times the usual and crowd out thousands of entries.
const MAX_CACHED_BODY: usize = 1024 * 1024;

fn live(resource: &StoredResource) -> Entry {
    let version = resource.version.get();
    if resource.body.len() > MAX_CACHED_BODY {
        return Entry {
            version,
            state: EntryState::Unknown,
        };
    }
    let ms = resource.last_updated.unix_timestamp_nanos() / 1_000_000;
    Entry {
        version,
        state: EntryState::Live {
            last_updated_ms: i64::try_from(ms).unwrap_or_default(),
            body: resource.body.clone(),
        },
    }
}

fn deleted(version: VersionId) -> Entry {
    Entry {
        version: version.get(),
        state: EntryState::Deleted,
    }
}

#[async_trait]
impl Store for CachedStore {
    async fn begin(&self) -> Result<Box<dyn StoreTx>> {
        let inner = self.inner.begin().await?;
        Ok(Box::new(CachedTx {
            inner,
            writes: HashMap::new(),
            enqueued: false,
            cache: self.cache.clone(),
            wakeups: self.wakeups.clone(),
            counters: self.counters.clone(),
        }))
    }

    async fn read(
        &self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &Id,
    ) -> Result<StoredResource> {
        let Some(cache) = &self.cache else {
            return self.inner.read(tenant, resource_type, id).await;
        };
        let key = Key::new(tenant, resource_type, id.as_str());
        let populate = match cache.get(&key).await {
            Lookup::Hit(entry) => match &entry.state {
                EntryState::Live { .. } => {
                    if let Some(found) = resource(resource_type, id.as_str(), &entry) {
                        self.counters.read("hit");
                        return Ok(found);
                    }
                    // Unreadable entry: the store's answer replaces it only if newer, so the
                    // lookup is a miss that does not populate.
                    self.counters.read("error");
                    false
                }
                EntryState::Deleted => {
                    self.counters.read("hit");
                    return Err(StoreError::Gone {
                        resource_type: resource_type.to_string(),
                        id: id.to_string(),
                        version: VersionId::new(entry.version).unwrap_or(VersionId::FIRST),
                    });
                }
                EntryState::Unknown => {
                    self.counters.read("miss");
                    true
                }
            },
            Lookup::Miss => {
                self.counters.read("miss");
                true
            }
            Lookup::Bypass => {
                self.counters.read("bypass");
                false
            }
            Lookup::Error => {
                self.counters.read("error");
                false
            }
        };
        let result = self.inner.read(tenant, resource_type, id).await;
        if populate {
            // The version compare in `put` makes this safe even when a writer stored a newer
            // version while this read was in flight.
            match &result {
                Ok(found) => {
                    cache.put(&key, &live(found), Cause::Read).await;
                }
                Err(StoreError::Gone { version, .. }) => {
                    cache.put(&key, &deleted(*version), Cause::Read).await;
                }
                Err(_) => {}
            }
        }
        result
    }

    async fn vread(
        &self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &Id,
        version: VersionId,
    ) -> Result<StoredResource> {
        self.inner.vread(tenant, resource_type, id, version).await
    }

    async fn history(
        &self,
        tenant: &TenantId,
        scope: &HistoryScope,
        query: &HistoryQuery,
    ) -> Result<HistoryPage> {
        self.inner.history(tenant, scope, query).await
    }

    async fn search(
        &self,
        tenant: &TenantId,
        request: &SearchRequest,
        options: &SearchOptions,
    ) -> Result<SearchPage> {
        self.inner.search(tenant, request, options).await
    }

    async fn reindex_batch(
        &self,
        after: Option<&ReindexCursor>,
        limit: usize,
    ) -> Result<ReindexBatch> {
        // The index is not cached; the resources themselves do not change.
        self.inner.reindex_batch(after, limit).await
    }

    async fn live_resources(&self) -> Result<u64> {
        self.inner.live_resources().await
    }

    async fn migrate(&self) -> Result<()> {
        self.inner.migrate().await
    }

    async fn contract(&self) -> Result<u64> {
        self.inner.contract().await
    }

    async fn analyze(&self) -> Result<()> {
        self.inner.analyze().await
    }

    async fn backup(&self, path: &Path) -> Result<()> {
        self.inner.backup(path).await
    }

    async fn ping(&self) -> Result<()> {
        // Readiness is the database's only: a cache outage never takes a replica out.
        self.inner.ping().await
    }

    async fn schema_version(&self) -> Result<SchemaVersion> {
        self.inner.schema_version().await
    }

    async fn close(&self) {
        self.inner.close().await
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn pool_usage(&self) -> PoolUsage {
        self.inner.pool_usage()
    }

    async fn active_appointments(&self) -> Result<u64> {
        self.inner.active_appointments().await
    }

    async fn queue_depth(&self) -> Result<u64> {
        self.inner.queue_depth().await
    }

    async fn claim_job(&self, lease: &Lease, kinds: &[String]) -> Result<Option<Claim>> {
        self.inner.claim_job(lease, kinds).await
    }

    async fn heartbeat_job(
        &self,
        id: &str,
        fence: i64,
        lease: Duration,
        progress: Option<&Value>,
    ) -> Result<()> {
        self.inner.heartbeat_job(id, fence, lease, progress).await
    }

    async fn fail_job(&self, id: &str, fence: i64, error: &str, retry: Retry) -> Result<JobState> {
        self.inner.fail_job(id, fence, error, retry).await
    }

    async fn job(&self, tenant: &TenantId, id: &str) -> Result<Job> {
        self.inner.job(tenant, id).await
    }

    async fn cancel_job(&self, tenant: &TenantId, id: &str) -> Result<JobState> {
        self.inner.cancel_job(tenant, id).await
    }
}

/// A transaction that remembers what it wrote, to write it through once committed.
struct CachedTx {
    inner: Box<dyn StoreTx>,
    /// The last version written per resource (a transaction Bundle may write one twice).
    writes: HashMap<Key, Entry>,
    enqueued: bool,
    cache: Option<Arc<dyn Cache>>,
    wakeups: Option<Arc<dyn Wakeups>>,
    counters: Arc<Counters>,
}

impl CachedTx {
    fn wrote(&mut self, key: Key, entry: Entry) {
        if self.cache.is_some() {
            self.writes.insert(key, entry);
        }
    }
}

#[async_trait]
impl StoreTx for CachedTx {
    async fn lock(&mut self, key: &str) -> Result<()> {
        self.inner.lock(key).await
    }

    async fn read_ahead(
        &mut self,
        tenant: &TenantId,
        targets: &[(ResourceType, String)],
    ) -> Result<()> {
        self.inner.read_ahead(tenant, targets).await
    }

    async fn matching(
        &mut self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        condition: &Condition,
    ) -> Result<Vec<String>> {
        self.inner.matching(tenant, resource_type, condition).await
    }

    async fn search(
        &mut self,
        tenant: &TenantId,
        request: &SearchRequest,
        options: &SearchOptions,
    ) -> Result<SearchPage> {
        // Like reads, searches inside a transaction must see its uncommitted writes.
        self.inner.search(tenant, request, options).await
    }

    async fn read(
        &mut self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &str,
    ) -> Result<StoredResource> {
        // Inside a transaction only the database's own view is right (and locks matter).
        self.inner.read(tenant, resource_type, id).await
    }

    async fn read_version(
        &mut self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &str,
        version: VersionId,
    ) -> Result<StoredResource> {
        self.inner
            .read_version(tenant, resource_type, id, version)
            .await
    }

    async fn create(
        &mut self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &str,
        body: Value,
    ) -> Result<StoredResource> {
        let created = self.inner.create(tenant, resource_type, id, body).await?;
        self.wrote(Key::new(tenant, resource_type, id), live(&created));
        Ok(created)
    }

    async fn update(
        &mut self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &str,
        body: Value,
        options: UpdateOptions,
    ) -> Result<UpdateOutcome> {
        let outcome = self
            .inner
            .update(tenant, resource_type, id, body, options)
            .await?;
        self.wrote(Key::new(tenant, resource_type, id), live(&outcome.resource));
        Ok(outcome)
    }

    async fn delete(
        &mut self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &str,
        if_match: Option<VersionId>,
    ) -> Result<Option<VersionId>> {
        let version = self
            .inner
            .delete(tenant, resource_type, id, if_match)
            .await?;
        if let Some(version) = version {
            self.wrote(Key::new(tenant, resource_type, id), deleted(version));
        }
        Ok(version)
    }

    async fn enqueue(&mut self, job: &NewJob) -> Result<String> {
        let id = self.inner.enqueue(job).await?;
        self.enqueued = true;
        Ok(id)
    }

    async fn complete_job(&mut self, id: &str, fence: i64, result: &Value) -> Result<()> {
        self.inner.complete_job(id, fence, result).await
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let CachedTx {
            inner,
            writes,
            enqueued,
            cache,
            wakeups,
            counters,
        } = *self;
        let committed = inner.commit().await;
        if let Some(cache) = cache {
            for (key, mut entry) in writes {
                if committed.is_err() {
                    // The commit may have happened anyway (connection lost during COMMIT):
                    // fence the version so no replica keeps serving the one before it.
                    entry.state = EntryState::Unknown;
                }
                // Awaited before the write returns: a client that saw its write succeed and
                // then reads from any replica must see at least that version.
                let put = cache.put(&key, &entry, Cause::Write).await;
                counters.write(put);
            }
        }
        committed?;
        if enqueued {
            if let Some(wakeups) = wakeups {
                wakeups.publish();
            }
        }
        Ok(())
    }
}
