//! The Redis backends: resource entries shared by every replica, and worker wake-ups over
//! pub/sub.
//!
//! Also the shared counts of per-client rate limits ([`Redis::rate_limit`], GCRA keys
//! `{prefix}rl:{client}`, see [`crate::limit`]) and a readiness ping ([`Redis::ping`]).
//!
//! Redis is never on the critical path. Every call has a short deadline; a failure or timeout
//! is a miss, logged at most every few seconds, and opens a small circuit (calls skip Redis for
//! 50 ms, growing to 2 s, then one call probes), so an outage costs a request at most one
//! deadline. When a write-through fails, entries on Redis may be stale for this process's
//! writes: its reads bypass the cache until the failed writes have been replayed as fences
//! (or one TTL, after which every older entry has expired). Readiness never asks Redis.
//!
//! Entries are hashes `{prefix}r:{tenant}:{type}:{id}` with fields `v` (version), `k` (`l` live,
//! `d` deleted, `u` unknown), `t` (lastUpdated, ms) and `b` (body), written only by a Lua script
//! that refuses to go back in version ([`Entry::replaces`]), so concurrent writers and slow
//! readers on any replica settle on the newest version.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, RedisResult, Script};
use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::limit::{Quota, Verdict};
use crate::{Cache, CacheError, Cause, Entry, EntryState, Key, Lookup, Put, Wakeups};

/// Replaces the entry only with a newer version, or the same version when the stored one is an
/// unknown-state fence; refreshes the TTL when it writes. Returns 1 when it wrote.
const PUT_SCRIPT: &str = r"
local current = tonumber(redis.call('HGET', KEYS[1], 'v'))
local version = tonumber(ARGV[1])
if current then
  if current > version then return 0 end
  if current == version and redis.call('HGET', KEYS[1], 'k') ~= 'u' then return 0 end
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'k', ARGV[2], 't', ARGV[3], 'b', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
";

/// One GCRA step ([`crate::limit`]) on Redis's clock, in microseconds: KEYS[1] holds the
/// theoretical arrival time; ARGV: interval, burst. Returns {1, 0} when admitted (and stores
/// the new time, expiring when the bucket is full again), {0, wait} when not (storing nothing).
/// Numbers stay below 2^53, exact in Lua's doubles; `%d` keeps them whole when stored.
const GCRA_SCRIPT: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local window = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local ahead = tat + interval - now
if ahead > window then return {0, ahead - window} end
redis.call('SET', KEYS[1], string.format('%d', now + ahead), 'PX', math.ceil(ahead / 1000))
return {1, 0}
";

/// Failed write-throughs remembered for replay; beyond this, the process bypasses the cache
/// for a full TTL instead.
const MAX_PENDING: usize = 10_000;
/// At most one warning per this interval; the others are counted in the next one.
const LOG_EVERY: Duration = Duration::from_secs(5);
/// A connection manager failing this long is replaced, in case it gave up reconnecting.
const REBUILD_AFTER: Duration = Duration::from_secs(10);
const CIRCUIT_MIN: Duration = Duration::from_millis(50);
const CIRCUIT_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// Prepended to every key and channel (`careplane:` in production; tests use a unique one).
    pub prefix: String,
    /// Entries expire after this long, a safety net for anything the version rule cannot see.
    pub ttl: Duration,
    /// Deadline of each cache call; past it the call counts as a miss.
    pub op_timeout: Duration,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            prefix: "careplane:".into(),
            ttl: Duration::from_secs(300),
            op_timeout: Duration::from_millis(100),
        }
    }
}

/// One Redis server as [`Cache`] and [`Wakeups`]. Cheap to clone; connects lazily, so a Redis
/// that is down at start only means a cold, bypassed cache until it comes up.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    conn: Mutex<ConnectionManager>,
    settings: RedisSettings,
    put: Script,
    gcra: Script,
    state: Mutex<Health>,
    draining: AtomicBool,
}

struct Health {
    failures: u32,
    down_since: Option<Instant>,
    /// Circuit open: calls skip Redis until then (one caller then probes).
    retry_at: Option<Instant>,
    rebuilt_at: Instant,
    /// A write-through failed: reads bypass the cache until then or until `pending` is replayed.
    stale_until: Option<Instant>,
    /// Full key → version of failed write-throughs, replayed as fences.
    pending: HashMap<String, u64>,
    overflowed: bool,
    log: RateLimit,
}

#[derive(Default)]
struct RateLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    /// Whether to log now, and how many messages were skipped since the last one.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

fn manager(client: &Client) -> Result<ConnectionManager, CacheError> {
    // Reconnect quickly, a few times; the circuit and REBUILD_AFTER cover longer outages.
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(3)
        .set_min_delay(Duration::from_millis(100))
        .set_max_delay(Duration::from_secs(1));
    ConnectionManager::new_lazy_with_config(client.clone(), config)
        .map_err(|e| CacheError::InvalidUrl(e.to_string()))
}

impl Redis {
    /// Parses `url` (`redis://[:PASSWORD@]HOST[:PORT][/DB]`) without connecting. Must be called
    /// inside a tokio runtime.
    pub fn new(url: &str, settings: RedisSettings) -> Result<Redis, CacheError> {
        let client = Client::open(url).map_err(|e| CacheError::InvalidUrl(e.to_string()))?;
        let conn = manager(&client)?;
        Ok(Redis {
            inner: Arc::new(Inner {
                client,
                conn: Mutex::new(conn),
                settings,
                put: Script::new(PUT_SCRIPT),
                gcra: Script::new(GCRA_SCRIPT),
                state: Mutex::new(Health {
                    failures: 0,
                    down_since: None,
                    retry_at: None,
                    rebuilt_at: Instant::now(),
                    stale_until: None,
                    pending: HashMap::new(),
                    overflowed: false,
                    log: RateLimit::default(),
                }),
                draining: AtomicBool::new(false),
            }),
        })
    }
}

impl Redis {
    /// Counts one request of `key` against `quota` on Redis (shared by every process with the
    /// same prefix); `None` when Redis was skipped or failed, and the caller counts locally.
    pub async fn rate_limit(&self, key: &str, quota: Quota) -> Option<Verdict> {
        let inner = &self.inner;
        let mut conn = inner.admit()?;
        let interval = u64::try_from(quota.interval.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut invocation = inner.gcra.key(inner.key(&format!("rl:{key}")));
        invocation.arg(interval).arg(quota.burst);
        let call = async move { invocation.invoke_async::<(i64, i64)>(&mut conn).await };
        let (admitted, wait) = inner.run("rate_limit", call).await?;
        Some(if admitted == 1 {
            Verdict::Admitted
        } else {
            Verdict::Throttled {
                retry_after: Duration::from_micros(u64::try_from(wait).unwrap_or(0)),
            }
        })
    }

    /// Whether Redis answers a PING within the call deadline, for readiness when Redis is
    /// required. Asks even while the circuit is open (probes are rare), and its outcome opens
    /// or closes the circuit like any call.
    pub async fn ping(&self) -> bool {
        let inner = &self.inner;
        let mut conn = lock(&inner.conn).clone();
        let call = async move { ::redis::cmd("PING").query_async::<String>(&mut conn).await };
        inner.run("ping", call).await.is_some()
    }
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the URL: it may carry the password.
        f.debug_struct("Redis")
            .field("prefix", &self.inner.settings.prefix)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded state is plain bookkeeping; a panic elsewhere must not stop the cache.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.settings.prefix)
    }

    fn channel(&self) -> String {
        format!("{}jobs", self.settings.prefix)
    }

    /// A connection when the circuit lets this call through.
    fn admit(&self) -> Option<ConnectionManager> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        if let Some(at) = state.retry_at {
            if now < at {
                return None;
            }
            // This caller probes; the others keep skipping until it reports.
            state.retry_at = Some(now + backoff(state.failures));
        }
        drop(state);
        Some(lock(&self.conn).clone())
    }

    /// Runs one Redis call under the deadline; `None` when it failed (already recorded).
    async fn run<T>(
        self: &Arc<Self>,
        op: &'static str,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Option<T> {
        match tokio::time::timeout(self.settings.op_timeout, call).await {
            Ok(Ok(value)) => {
                self.succeeded();
                Some(value)
            }
            Ok(Err(e)) => {
                self.failed(op, &e.to_string());
                None
            }
            Err(_) => {
                self.failed(op, "timed out");
                None
            }
        }
    }

    fn succeeded(self: &Arc<Self>) {
        let mut state = lock(&self.state);
        if let Some(since) = state.down_since.take() {
            tracing::info!(
                down_seconds = since.elapsed().as_secs_f64(),
                "Redis reachable again"
            );
        }
        state.failures = 0;
        state.retry_at = None;
        let replay = !state.pending.is_empty();
        drop(state);
        if replay {
            self.kick_drain();
        }
    }

    fn failed(&self, op: &'static str, error: &str) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        state.failures = state.failures.saturating_add(1);
        let since = *state.down_since.get_or_insert(now);
        state.retry_at = Some(now + backoff(state.failures));
        let rebuild = now.duration_since(since) >= REBUILD_AFTER
            && now.duration_since(state.rebuilt_at) >= REBUILD_AFTER;
        if rebuild {
            state.rebuilt_at = now;
        }
        let log = state.log.allow();
        drop(state);
        if let Some(suppressed) = log {
            tracing::warn!(
                op,
                error,
                suppressed,
                "Redis call failed: reads served from the database, rate limits counted in process, workers poll"
            );
        }
        if rebuild {
            if let Ok(fresh) = manager(&self.client) {
                *lock(&self.conn) = fresh;
            }
        }
    }

    /// Whether this process's reads must bypass the cache (a write-through failed recently).
    fn stale(&self) -> bool {
        let mut state = lock(&self.state);
        match state.stale_until {
            Some(until) if Instant::now() >= until => {
                // Every entry written before the failure has expired by now.
                state.stale_until = None;
                state.pending.clear();
                state.overflowed = false;
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    fn remember_failed_write(&self, key: String, version: u64) {
        let mut state = lock(&self.state);
        state.stale_until = Some(Instant::now() + self.settings.ttl);
        if state.pending.len() >= MAX_PENDING && !state.pending.contains_key(&key) {
            state.overflowed = true;
            return;
        }
        let known = state.pending.entry(key).or_insert(version);
        *known = (*known).max(version);
    }

    /// Replays failed write-throughs in the background, once Redis answers again.
    fn kick_drain(self: &Arc<Self>) {
        if lock(&self.state).pending.is_empty() || self.draining.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.draining.store(false, Ordering::Release);
            return;
        };
        runtime.spawn(self.clone().drain());
    }

    async fn drain(self: Arc<Self>) {
        loop {
            let next = lock(&self.state)
                .pending
                .iter()
                .next()
                .map(|(k, v)| (k.clone(), *v));
            let Some((key, version)) = next else { break };
            let fence = Entry {
                version,
                state: EntryState::Unknown,
            };
            if self.store(&key, &fence).await.is_none() {
                self.draining.store(false, Ordering::Release);
                return;
            }
            let mut state = lock(&self.state);
            if state.pending.get(&key) == Some(&version) {
                state.pending.remove(&key);
            }
        }
        let mut state = lock(&self.state);
        if state.pending.is_empty() && !state.overflowed && state.stale_until.take().is_some() {
            tracing::info!("failed cache writes replayed; reads use the cache again");
        }
        drop(state);
        self.draining.store(false, Ordering::Release);
    }

    /// Runs the put script; `None` when Redis was skipped or failed.
    async fn store(self: &Arc<Self>, key: &str, entry: &Entry) -> Option<bool> {
        let mut conn = self.admit()?;
        let (kind, last_updated, body) = match &entry.state {
            EntryState::Live {
                last_updated_ms,
                body,
            } => ("l", *last_updated_ms, body.as_str()),
            EntryState::Deleted => ("d", 0, ""),
            EntryState::Unknown => ("u", 0, ""),
        };
        let ttl_ms = u64::try_from(self.settings.ttl.as_millis()).unwrap_or(u64::MAX);
        let mut invocation = self.put.key(key);
        invocation
            .arg(entry.version)
            .arg(kind)
            .arg(last_updated)
            .arg(body)
            .arg(ttl_ms);
        let call = async move { invocation.invoke_async::<i64>(&mut conn).await };
        self.run("put", call).await.map(|wrote| wrote == 1)
    }
}

fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(8);
    (CIRCUIT_MIN * 2u32.pow(doublings)).min(CIRCUIT_MAX)
}

type Fields = (Option<u64>, Option<String>, Option<i64>, Option<String>);

fn decode((version, kind, last_updated, body): Fields) -> Option<Lookup> {
    let Some(version) = version else {
        return Some(Lookup::Miss);
    };
    let state = match kind.as_deref()? {
        "l" => EntryState::Live {
            last_updated_ms: last_updated?,
            body: body?,
        },
        "d" => EntryState::Deleted,
        "u" => EntryState::Unknown,
        _ => return None,
    };
    Some(Lookup::Hit(Entry { version, state }))
}

#[async_trait]
impl Cache for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn get(&self, key: &Key) -> Lookup {
        let inner = &self.inner;
        if inner.stale() {
            inner.kick_drain();
            return Lookup::Bypass;
        }
        let Some(mut conn) = inner.admit() else {
            return Lookup::Bypass;
        };
        let full = inner.key(key.as_str());
        let call = async move {
            ::redis::cmd("HMGET")
                .arg(&full)
                .arg(&["v", "k", "t", "b"])
                .query_async::<Fields>(&mut conn)
                .await
        };
        match inner.run("get", call).await {
            Some(fields) => decode(fields).unwrap_or(Lookup::Error),
            None => Lookup::Error,
        }
    }

    async fn put(&self, key: &Key, entry: &Entry, cause: Cause) -> Put {
        let full = self.inner.key(key.as_str());
        match self.inner.store(&full, entry).await {
            Some(true) => Put::Stored,
            Some(false) => Put::Kept,
            None => {
                if cause == Cause::Write {
                    self.inner.remember_failed_write(full, entry.version);
                }
                Put::Error
            }
        }
    }
}

impl Wakeups for Redis {
    fn publish(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = self.inner.clone();
        runtime.spawn(async move {
            let Some(mut conn) = inner.admit() else {
                return;
            };
            let channel = inner.channel();
            let call = async move {
                ::redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg("1")
                    .query_async::<i64>(&mut conn)
                    .await
            };
            inner.run("publish", call).await;
        });
    }

    fn subscribe(&self, notify: Arc<Notify>, stop: CancellationToken) {
        let client = self.inner.client.clone();
        let channel = self.inner.channel();
        tokio::spawn(listen(client, channel, notify, stop));
    }
}

/// Keeps a subscription on a dedicated connection, reconnecting with backoff; wakes `notify`
/// once per message and once after every (re)subscription, for announcements missed meanwhile.
async fn listen(client: Client, channel: String, notify: Arc<Notify>, stop: CancellationToken) {
    let mut delay = Duration::from_millis(100);
    let mut log = RateLimit::default();
    let mut lost = false;
    loop {
        let connect = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            RedisResult::Ok(pubsub)
        };
        let error = match tokio::time::timeout(Duration::from_secs(2), connect).await {
            Ok(Ok(pubsub)) => {
                if lost {
                    tracing::info!("worker wake-ups subscribed again");
                }
                delay = Duration::from_millis(100);
                notify.notify_one();
                let (sink, stream) = pubsub.split();
                match pump(sink, stream, &notify, &stop).await {
                    None => return,
                    Some(reason) => reason,
                }
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        };
        lost = true;
        if let Some(suppressed) = log.allow() {
            tracing::warn!(error = %error, suppressed, "worker wake-up subscription down; workers poll meanwhile");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Forwards messages until the connection ends (`Some(reason)`) or `stop` (`None`). A periodic
/// PING notices a connection that died without closing.
async fn pump(
    mut sink: ::redis::aio::PubSubSink,
    mut stream: ::redis::aio::PubSubStream,
    notify: &Notify,
    stop: &CancellationToken,
) -> Option<String> {
    let mut ping = tokio::time::interval(Duration::from_secs(15));
    ping.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return None,
            message = stream.next() => match message {
                Some(_) => notify.notify_one(),
                None => return Some("connection closed".into()),
            },
            _ = ping.tick() => {
                let pong = tokio::time::timeout(
                    Duration::from_secs(2),
                    sink.ping::<::redis::Value>(),
                ).await;
                if !matches!(pong, Ok(Ok(_))) {
                    return Some("ping failed".into());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_circuit_opens_briefly_and_grows_to_a_bound() {
        assert_eq!(backoff(1), CIRCUIT_MIN);
        assert_eq!(backoff(2), CIRCUIT_MIN * 2);
        assert_eq!(backoff(100), CIRCUIT_MAX);
    }

    #[test]
    fn a_missing_hash_is_a_miss_and_a_garbled_one_an_error() {
        assert!(matches!(
            decode((None, None, None, None)),
            Some(Lookup::Miss)
        ));
        assert!(decode((Some(3), Some("x".into()), None, None)).is_none());
        assert!(matches!(
            decode((Some(3), Some("d".into()), None, None)),
            Some(Lookup::Hit(Entry {
                version: 3,
                state: EntryState::Deleted
            }))
        ));
    }
}
