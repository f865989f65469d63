//! The in-process backends: a bounded map of entries and a list of local waiters.
//!
//! Only correct when one process serves the database: another process's writes would never
//! reach this map, so its entries would go stale. The binary therefore uses it on SQLite only
//! (one process by construction) and never on PostgreSQL without Redis.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{Cache, Cause, Entry, EntryState, Key, Lookup, Put, Wakeups};

/// Limits of a [`MemoryCache`].
#[derive(Debug, Clone, Copy)]
pub struct MemorySettings {
    /// Bodies held at most, in bytes (bodies dominate an entry's size).
    pub max_bytes: usize,
    pub max_entries: usize,
    pub ttl: Duration,
}

impl Default for MemorySettings {
    fn default() -> Self {
        MemorySettings {
            max_bytes: 64 * 1024 * 1024,
            max_entries: 100_000,
            ttl: Duration::from_secs(300),
        }
    }
}

pub struct MemoryCache {
    settings: MemorySettings,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    entries: HashMap<Key, (Entry, Instant)>,
    bytes: usize,
}

fn size(key: &Key, entry: &Entry) -> usize {
    let body = match &entry.state {
        EntryState::Live { body, .. } => body.len(),
        _ => 0,
    };
    key.as_str().len() + body + 64
}

impl State {
    fn remove(&mut self, key: &Key) {
        if let Some((entry, _)) = self.entries.remove(key) {
            self.bytes -= size(key, &entry);
        }
    }

    /// Drops expired entries, then arbitrary ones (the map's iteration order), until `needed`
    /// more bytes and one more entry fit. Random eviction is enough for a safety-net cache and
    /// needs no bookkeeping on reads.
    fn make_room(&mut self, needed: usize, settings: &MemorySettings) {
        let fits = |s: &State| {
            s.bytes + needed <= settings.max_bytes && s.entries.len() < settings.max_entries
        };
        if fits(self) {
            return;
        }
        let now = Instant::now();
        let expired: Vec<Key> = self
            .entries
            .iter()
            .filter(|(_, (_, expires))| *expires <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            self.remove(&key);
        }
        while !fits(self) {
            let Some(key) = self.entries.keys().next().cloned() else {
                return;
            };
            self.remove(&key);
        }
    }
}

impl MemoryCache {
    pub fn new(settings: MemorySettings) -> MemoryCache {
        MemoryCache {
            settings,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters more than losing the cache; keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl Cache for MemoryCache {
    fn name(&self) -> &'static str {
        "in-process"
    }

    async fn get(&self, key: &Key) -> Lookup {
        // Expired entries stay until evicted: they still guard their version in `put`.
        match self.state().entries.get(key) {
            Some((entry, expires)) if *expires > Instant::now() => Lookup::Hit(entry.clone()),
            _ => Lookup::Miss,
        }
    }

    async fn put(&self, key: &Key, entry: &Entry, _cause: Cause) -> Put {
        let now = Instant::now();
        let fence;
        let mut entry = entry;
        if size(key, entry) > self.settings.max_bytes {
            // Too big to hold, but its version must still guard against older ones.
            fence = Entry {
                version: entry.version,
                state: EntryState::Unknown,
            };
            entry = &fence;
        }
        let needed = size(key, entry);
        let mut state = self.state();
        if let Some((current, expires)) = state.entries.get(key) {
            // An expired entry may be refreshed with its own version, but still guards it:
            // dropping it would let a reader that started long ago put back an older version.
            let refresh = *expires <= now && entry.version == current.version;
            if !entry.replaces(current) && !refresh {
                return Put::Kept;
            }
            state.remove(key);
        }
        state.make_room(needed, &self.settings);
        state.bytes += needed;
        state
            .entries
            .insert(key.clone(), (entry.clone(), now + self.settings.ttl));
        Put::Stored
    }
}

/// Wakes waiters in this process only.
#[derive(Default)]
pub struct MemoryWakeups {
    waiters: Mutex<Vec<(Arc<Notify>, CancellationToken)>>,
}

impl MemoryWakeups {
    pub fn new() -> MemoryWakeups {
        MemoryWakeups::default()
    }
}

impl Wakeups for MemoryWakeups {
    fn publish(&self) {
        let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        waiters.retain(|(_, stop)| !stop.is_cancelled());
        for (notify, _) in waiters.iter() {
            notify.notify_one();
        }
    }

    fn subscribe(&self, notify: Arc<Notify>, stop: CancellationToken) {
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((notify, stop));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use careplane_fhir::{Definitions, ResourceType};
    use careplane_store::TenantId;

    fn key(id: &str) -> Key {
        let rt = ResourceType::parse(Definitions::r4().unwrap(), "Patient").unwrap();
        Key::new(&TenantId::default_tenant(), &rt, id)
    }

    fn live(version: u64, body: &str) -> Entry {
        Entry {
            version,
            state: EntryState::Live {
                last_updated_ms: 0,
                body: body.into(),
            },
        }
    }

    #[tokio::test]
    async fn an_older_version_never_replaces_a_newer_one() {
        let cache = MemoryCache::new(MemorySettings::default());
        let k = key("a");
        assert_eq!(
            cache.put(&k, &live(2, "two"), Cause::Write).await,
            Put::Stored
        );
        assert_eq!(cache.put(&k, &live(1, "one"), Cause::Read).await, Put::Kept);
        assert!(matches!(cache.get(&k).await, Lookup::Hit(e) if e.version == 2));
        // Positive control: a newer version does replace it.
        assert_eq!(
            cache.put(&k, &live(3, "three"), Cause::Read).await,
            Put::Stored
        );
        assert!(matches!(cache.get(&k).await, Lookup::Hit(e) if e.version == 3));
    }

    #[tokio::test]
    async fn an_unknown_fence_is_replaced_by_the_same_version_once_known() {
        let cache = MemoryCache::new(MemorySettings::default());
        let k = key("a");
        let fence = Entry {
            version: 2,
            state: EntryState::Unknown,
        };
        cache.put(&k, &fence, Cause::Write).await;
        assert_eq!(cache.put(&k, &live(1, "one"), Cause::Read).await, Put::Kept);
        assert_eq!(
            cache.put(&k, &live(2, "two"), Cause::Read).await,
            Put::Stored
        );
        assert_eq!(cache.put(&k, &fence, Cause::Write).await, Put::Kept);
    }

    #[tokio::test]
    async fn an_entry_too_big_to_hold_still_guards_its_version() {
        let settings = MemorySettings {
            max_bytes: 1_000,
            ..MemorySettings::default()
        };
        let cache = MemoryCache::new(settings);
        let k = key("big");
        cache.put(&k, &live(1, "small"), Cause::Read).await;
        assert_eq!(
            cache
                .put(&k, &live(2, &"x".repeat(2_000)), Cause::Write)
                .await,
            Put::Stored
        );
        assert!(matches!(
            cache.get(&k).await,
            Lookup::Hit(Entry {
                version: 2,
                state: EntryState::Unknown
            })
        ));
        assert_eq!(
            cache.put(&k, &live(1, "small"), Cause::Read).await,
            Put::Kept
        );
    }

    #[tokio::test]
    async fn the_map_stays_within_its_byte_bound() {
        let settings = MemorySettings {
            max_bytes: 10_000,
            max_entries: 1_000,
            ttl: Duration::from_secs(60),
        };
        let cache = MemoryCache::new(settings);
        for i in 0..100 {
            cache
                .put(
                    &key(&format!("p{i}")),
                    &live(1, &"x".repeat(500)),
                    Cause::Read,
                )
                .await;
        }
        let state = cache.state();
        assert!(state.bytes <= 10_000, "{} bytes", state.bytes);
        assert!(!state.entries.is_empty());
        let counted: usize = state.entries.iter().map(|(k, (e, _))| size(k, e)).sum();
        assert_eq!(counted, state.bytes);
    }
}
