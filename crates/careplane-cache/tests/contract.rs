//! The storage contract (careplane-store's `tests/contract/`, included as is) through a
//! CachedStore: the decorator must not change what any Store call answers, whichever cache
//! serves it (garage runs one suite against every adapter the same way).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../careplane-store/tests/contract/mod.rs"]
mod contract;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use careplane_cache::memory::MemorySettings;
use careplane_cache::{CachedStore, MemoryCache, MemoryWakeups, Redis, RedisSettings};
use careplane_store::Store;

async fn in_process() -> (Arc<dyn Store>, tempfile::TempDir) {
    let (inner, dir) = careplane_testkit::sqlite_store().await;
    let store = CachedStore::new(inner)
        .with_cache(Arc::new(MemoryCache::new(MemorySettings::default())))
        .with_wakeups(Arc::new(MemoryWakeups::new()));
    (Arc::new(store), dir)
}

async fn redis() -> (Arc<dyn Store>, tempfile::TempDir) {
    let (inner, dir) = careplane_testkit::sqlite_store().await;
    let url = std::env::var("CAREPLANE_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let settings = RedisSettings {
        prefix: format!("careplane-test:contract:{}:{nanos}:", std::process::id()),
        ttl: std::time::Duration::from_secs(60),
        op_timeout: std::time::Duration::from_secs(2),
    };
    let redis = Redis::new(&url, settings).unwrap();
    let store = CachedStore::new(inner)
        .with_cache(Arc::new(redis.clone()))
        .with_wakeups(Arc::new(redis));
    (Arc::new(store), dir)
}

mod in_process_cache {
    use super::*;
    contract_suite!(in_process());
}

mod redis_cache {
    use super::*;
    contract_suite!(redis());
}
