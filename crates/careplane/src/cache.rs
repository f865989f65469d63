//! Which cache and wake-ups the store gets, from the configuration.
//!
//! - `CAREPLANE_REDIS_URL` set: Redis for both, shared by every replica and worker.
//! - Unset: no resource cache. An in-process cache could not see writes of other processes on the
//!   same data (replicas on PostgreSQL; `careplane import` or `careplane work` beside `serve` on
//!   SQLite) and would serve versions they already replaced. Reads on SQLite are local anyway.
//!   (`careplane_cache::MemoryCache` stays for single-process embedders and the cache tests.)
//!
//! Wake-ups without Redis stay in-process: a job enqueued by `serve` wakes its embedded worker;
//! a separate `careplane work` finds it at its next poll. Readiness depends on Redis only with
//! `CAREPLANE_REDIS_REQUIRED`.
//!
//! Per-client rate limits are counted on the same Redis when it is configured (one quota for the
//! whole cluster), with an in-process count as the fallback while it does not answer; without
//! Redis, in process (one quota per replica).

use std::sync::Arc;

use careplane_cache::{
    CachedStore, Limiter, MemoryLimiter, MemoryWakeups, Quota, Redis, RedisSettings, SharedLimiter,
    Wakeups,
};
use careplane_store::Store;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::run::RunError;

/// The wrapped store and the wake-ups it publishes on.
pub struct Caching {
    pub store: Arc<dyn Store>,
    /// `redis`, `in-process` or `none`, for the startup log.
    pub cache: &'static str,
    wakeups: Arc<dyn Wakeups>,
    redis: Option<Redis>,
}

/// Wraps `store` with the Redis cache and wake-ups when configured, in-process wake-ups otherwise.
pub fn wrap(store: Arc<dyn Store>, config: &Config) -> Result<Caching, RunError> {
    let cached = CachedStore::new(store);
    let mut shared = None;
    let (cached, wakeups): (CachedStore, Arc<dyn Wakeups>) = match &config.redis_url {
        Some(url) => {
            // Connects lazily: Redis down at start only means a bypassed cache until it is up.
            let redis = Redis::new(url.expose(), RedisSettings::default())
                .map_err(|e| RunError::Cache(format!("CAREPLANE_REDIS_URL ({url}): {e}")))?;
            let cached = cached
                .with_cache(Arc::new(redis.clone()))
                .with_wakeups(Arc::new(redis.clone()));
            shared = Some(redis.clone());
            (cached, Arc::new(redis))
        }
        None => {
            let wakeups = Arc::new(MemoryWakeups::new());
            (cached.with_wakeups(wakeups.clone()), wakeups)
        }
    };
    Ok(Caching {
        cache: cached.cache_name(),
        store: Arc::new(cached),
        wakeups,
        redis: shared,
    })
}

impl Caching {
    /// Wakes `notify` (a runner's waker) whenever a job is enqueued through these wake-ups.
    pub fn wake(&self, notify: Arc<Notify>, stop: CancellationToken) {
        self.wakeups.subscribe(notify, stop);
    }

    /// The per-client limiter for `quota` (`None`: off): on Redis when configured, with an
    /// in-process fallback; in process otherwise.
    pub fn rate_limiter(&self, quota: Option<Quota>) -> Option<Arc<dyn Limiter>> {
        let quota = quota?;
        Some(match &self.redis {
            Some(redis) => Arc::new(SharedLimiter::new(redis.clone(), quota)),
            None => Arc::new(MemoryLimiter::new(quota)),
        })
    }

    /// The Redis readiness must reach when `required` (validated: only with a Redis URL).
    pub fn required_redis(&self, required: bool) -> Option<Redis> {
        self.redis.clone().filter(|_| required)
    }
}
