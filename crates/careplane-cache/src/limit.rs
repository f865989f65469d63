//! Per-client request rate limits: [`MemoryLimiter`] counts in this process, [`SharedLimiter`]
//! counts on Redis for every replica and falls back to its own in-process counts whenever Redis
//! does not answer, so an outage never fails or delays a request by more than one cache deadline.
//!
//! Both run GCRA (the generic cell rate algorithm, a token bucket kept as one number per key):
//! with `T` the interval between requests at the sustained rate, a key's state is its theoretical
//! arrival time `tat`; a request at `now` is admitted when `max(tat, now) + T - now <= burst·T`,
//! which then becomes the new `tat`. A refused request changes nothing and learns exactly when it
//! would be admitted. On Redis the same step is one Lua script using Redis's clock, so replicas'
//! clocks never matter and concurrent replicas cannot both take the last token.
//!
//! Not here: who a client is (the API's middleware builds the key) and HTTP.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::redis::Redis;

/// Most clients tracked in process. Beyond it (after dropping idle entries) a new client is
/// admitted untracked: refusing strangers would shut out legitimate clients during an address
/// spray, and the global concurrency limit still bounds the load. About 10 MB at most.
pub const MAX_KEYS: usize = 100_000;

/// Idle entries (a full bucket again) are dropped at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// `count` requests per period, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Time between two requests at the sustained rate (GCRA's `T`); at least 1 µs.
    pub interval: Duration,
    /// Requests admitted back to back after a quiet period; at least 1.
    pub burst: u32,
}

impl Quota {
    /// `None` when `count` or `burst` is 0 (no quota: limiting is off).
    pub fn new(count: u32, period: Duration, burst: u32) -> Option<Quota> {
        if count == 0 || burst == 0 {
            return None;
        }
        Some(Quota {
            // Redis counts in microseconds; a faster rate than 10^6/s is no limit anyway.
            interval: (period / count).max(Duration::from_micros(1)),
            burst,
        })
    }

    /// How far ahead of `now` a key's `tat` may be: a full bucket's worth.
    fn window(&self) -> Duration {
        self.interval.saturating_mul(self.burst)
    }
}

/// What a limiter decided about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admitted,
    /// Over the quota: the same request would be admitted after `retry_after`.
    Throttled {
        retry_after: Duration,
    },
}

/// Counts requests per key against one [`Quota`].
#[async_trait]
pub trait Limiter: Send + Sync + fmt::Debug {
    /// `redis` or `in-process`, for logs.
    fn name(&self) -> &'static str;

    fn quota(&self) -> Quota;

    /// Counts one request of `key` (only when admitted) and decides. Never fails: a limiter
    /// that cannot count admits or falls back, it never refuses for its own trouble.
    async fn check(&self, key: &str) -> Verdict;
}

/// One GCRA step: the new `tat` when admitted, else how long until the request would be.
fn step(tat: Option<Instant>, now: Instant, quota: Quota) -> Result<Instant, Duration> {
    let next = tat.map_or(now, |tat| tat.max(now)) + quota.interval;
    let ahead = next.duration_since(now);
    let window = quota.window();
    if ahead <= window {
        Ok(next)
    } else {
        Err(ahead - window)
    }
}

/// GCRA in this process: a map of key → `tat` behind one lock (the critical section is a hash
/// lookup), bounded by [`MAX_KEYS`].
pub struct MemoryLimiter {
    quota: Quota,
    table: Mutex<Table>,
}

struct Table {
    tats: HashMap<String, Instant>,
    next_sweep: Instant,
}

impl MemoryLimiter {
    pub fn new(quota: Quota) -> MemoryLimiter {
        MemoryLimiter {
            quota,
            table: Mutex::new(Table {
                tats: HashMap::new(),
                next_sweep: Instant::now() + SWEEP_EVERY,
            }),
        }
    }

    /// [`Limiter::check`] at a given time (tests move the clock).
    pub fn check_at(&self, key: &str, now: Instant) -> Verdict {
        // Plain bookkeeping: a panic elsewhere must not stop the limiter.
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if now >= table.next_sweep {
            // An entry whose tat has passed is a full bucket: the same as no entry.
            table.tats.retain(|_, tat| *tat > now);
            table.next_sweep = now + SWEEP_EVERY;
        }
        let tat = table.tats.get(key).copied();
        if tat.is_none() && table.tats.len() >= MAX_KEYS {
            return Verdict::Admitted;
        }
        match step(tat, now, self.quota) {
            Ok(next) => {
                table.tats.insert(key.to_string(), next);
                Verdict::Admitted
            }
            Err(retry_after) => Verdict::Throttled { retry_after },
        }
    }

    /// Clients currently tracked.
    pub fn len(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .tats
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for MemoryLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLimiter")
            .field("quota", &self.quota)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Limiter for MemoryLimiter {
    fn name(&self) -> &'static str {
        "in-process"
    }

    fn quota(&self) -> Quota {
        self.quota
    }

    async fn check(&self, key: &str) -> Verdict {
        self.check_at(key, Instant::now())
    }
}

/// GCRA on Redis, shared by every process using the same Redis and key prefix. While Redis
/// does not answer (error, deadline, open circuit) each process counts on its own, so the
/// cluster admits up to one quota per process until Redis is back.
pub struct SharedLimiter {
    redis: Redis,
    fallback: MemoryLimiter,
}

impl SharedLimiter {
    pub fn new(redis: Redis, quota: Quota) -> SharedLimiter {
        SharedLimiter {
            redis,
            fallback: MemoryLimiter::new(quota),
        }
    }
}

impl fmt::Debug for SharedLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedLimiter")
            .field("quota", &self.fallback.quota)
            .field("redis", &self.redis)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Limiter for SharedLimiter {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn quota(&self) -> Quota {
        self.fallback.quota
    }

    async fn check(&self, key: &str) -> Verdict {
        match self.redis.rate_limit(key, self.fallback.quota).await {
            Some(verdict) => verdict,
            None => self.fallback.check(key).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(per_second: u32, burst: u32) -> Quota {
        Quota::new(per_second, Duration::from_secs(1), burst).unwrap()
    }

    #[test]
    fn a_burst_is_admitted_at_once_then_one_request_per_interval() {
        let limiter = MemoryLimiter::new(quota(2, 3));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check_at("a", t0), Verdict::Admitted);
        }
        let Verdict::Throttled { retry_after } = limiter.check_at("a", t0) else {
            panic!("the fourth request at once is over the burst");
        };
        assert_eq!(retry_after, Duration::from_millis(500));
        // Refusals do not count: exactly one interval later one more is admitted, not two.
        let later = t0 + Duration::from_millis(500);
        assert_eq!(limiter.check_at("a", later), Verdict::Admitted);
        assert!(matches!(
            limiter.check_at("a", later),
            Verdict::Throttled { .. }
        ));
    }

    #[test]
    fn clients_are_counted_apart() {
        let limiter = MemoryLimiter::new(quota(1, 1));
        let now = Instant::now();
        assert_eq!(limiter.check_at("a", now), Verdict::Admitted);
        assert!(matches!(
            limiter.check_at("a", now),
            Verdict::Throttled { .. }
        ));
        assert_eq!(limiter.check_at("b", now), Verdict::Admitted);
    }

    #[test]
    fn idle_clients_are_forgotten_and_the_table_stays_bounded() {
        let limiter = MemoryLimiter::new(quota(1000, 1));
        let t0 = Instant::now();
        for i in 0..MAX_KEYS {
            limiter.check_at(&i.to_string(), t0);
        }
        assert_eq!(limiter.len(), MAX_KEYS);
        // Full: a stranger is admitted without being tracked.
        assert_eq!(limiter.check_at("new", t0), Verdict::Admitted);
        assert_eq!(limiter.len(), MAX_KEYS);
        // Once their buckets are full again, idle clients are dropped.
        let later = t0 + SWEEP_EVERY * 2;
        assert_eq!(limiter.check_at("new", later), Verdict::Admitted);
        assert_eq!(limiter.len(), 1);
    }

    #[test]
    fn a_zero_rate_or_burst_is_no_quota() {
        assert!(Quota::new(0, Duration::from_secs(1), 5).is_none());
        assert!(Quota::new(5, Duration::from_secs(1), 0).is_none());
        assert_eq!(
            Quota::new(6, Duration::from_secs(60), 2).unwrap().interval,
            Duration::from_secs(10)
        );
    }
}
