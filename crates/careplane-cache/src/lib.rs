//! The cache in front of the store, and worker wake-ups.
//!
//! [`CachedStore`] decorates any `Arc<dyn Store>`: `read` (the current version of a resource) is
//! read through a [`Cache`], and every committed write is written through to it; every other
//! call goes straight to the store. Jobs enqueued by a committed transaction are announced on
//! [`Wakeups`], which wakes idle workers before their next poll (polling stays the fallback).
//!
//! Two backends: [`memory`] (one process only: the binary uses it on SQLite, where there is one
//! process by construction) and [`redis`] (shared by replicas). Correctness does not depend on
//! the cache being reachable: every cache failure is a miss, and the rule that an entry is only
//! ever replaced by a newer version (enforced inside the backend, atomically) keeps a slow reader
//! from putting back a version older than one a writer already stored.
//!
//! [`limit`] holds per-client rate limits: counted in process, or on Redis for every replica with
//! the in-process count as the fallback while Redis does not answer.
//!
//! Not here: the job queue itself (it lives in the store, architecture decision 5), and HTTP.

pub mod limit;
pub mod memory;
pub mod redis;
mod store;

use std::sync::Arc;

use async_trait::async_trait;
use careplane_fhir::ResourceType;
use careplane_store::TenantId;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use limit::{Limiter, MemoryLimiter, Quota, SharedLimiter, Verdict};
pub use memory::{MemoryCache, MemoryWakeups};
pub use redis::{Redis, RedisSettings};
pub use store::{CacheStats, CachedStore};

/// Counter of cached reads by `result`: `hit`, `miss`, `bypass` (the cache was not asked: it is
/// down, or this process failed to write through and its entries may be stale) and `error`.
pub const REQUESTS_TOTAL: &str = "careplane_cache_requests_total";
/// Counter of write-throughs after commit by `result`: `stored`, `kept` (the cache already held
/// this or a newer version) and `error`.
pub const WRITES_TOTAL: &str = "careplane_cache_writes_total";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("invalid Redis URL: {0}")]
    InvalidUrl(String),
}

/// Names one resource's cache entry; the backend adds its prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(String);

impl Key {
    pub fn new(tenant: &TenantId, resource_type: &ResourceType, id: &str) -> Key {
        // Tenants and types never contain ':', ids neither, so the key is unambiguous.
        Key(format!("r:{tenant}:{resource_type}:{id}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The newest version of a resource the cache knows of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub version: u64,
    pub state: EntryState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryState {
    Live {
        last_updated_ms: i64,
        body: String,
    },
    /// Deleted at `version`: reads answer Gone without asking the store.
    Deleted,
    /// A write of `version` may or may not have committed (its commit failed, or its
    /// write-through did): reads go to the store, and only what the store answers for this
    /// version or a newer one may replace the entry.
    Unknown,
}

impl Entry {
    /// Whether `self` may replace `current`: only a newer version, or the same version once it
    /// is known (replacing an [`EntryState::Unknown`] fence). This is the rule that keeps stale
    /// readers from going back in time.
    pub fn replaces(&self, current: &Entry) -> bool {
        self.version > current.version
            || (self.version == current.version && current.state == EntryState::Unknown)
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    Hit(Entry),
    Miss,
    /// The cache was not asked (down, or possibly stale for this process); do not populate.
    Bypass,
    /// The cache failed to answer; do not populate.
    Error,
}

/// Why an entry is being stored: a failed write-through leaves the cache possibly stale, a
/// failed read-through population does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Read,
    Write,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Stored,
    /// The cache already held this or a newer version.
    Kept,
    Error,
}

/// A cache of resource entries keyed by [`Key`]. Implementations never fail loudly: an error is
/// a [`Lookup::Error`] or [`Put::Error`], counted and logged by the backend.
#[async_trait]
pub trait Cache: Send + Sync {
    /// `redis` or `in-process`, for logs.
    fn name(&self) -> &'static str;

    async fn get(&self, key: &Key) -> Lookup;

    /// Stores `entry` unless the cache holds an entry it does not [replace](Entry::replaces),
    /// atomically with respect to every other `put` on any replica.
    async fn put(&self, key: &Key, entry: &Entry, cause: Cause) -> Put;
}

/// Announces that jobs are ready, to every worker subscribed through the same backend.
pub trait Wakeups: Send + Sync {
    /// Fire and forget: a lost announcement only means the worker finds the job at its next poll.
    fn publish(&self);

    /// Calls `notify.notify_one()` on every announcement until `stop` is cancelled (spawns what
    /// it needs; must be called inside a tokio runtime).
    fn subscribe(&self, notify: Arc<Notify>, stop: CancellationToken);
}
