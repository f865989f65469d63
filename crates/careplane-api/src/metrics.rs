//! The metrics this crate emits, by name, and the store gauges refreshed when `/metrics` is
//! scraped. Only the `metrics` facade is used here; the binary installs the Prometheus exporter
//! and hands the admin router a [`MetricsRenderer`] (architecture decision 6).
//!
//! The autoscaler and alert names (`deploy/k8s/components/prometheus-adapter`,
//! `deploy/prometheus/rules`) are the constants below; a deploy contract test scrapes a running
//! binary for them, so rename one only together with `deploy/`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use careplane_store::Store;

/// Counter of answered FHIR requests; labels `method`, `route` (the matched route template, or
/// `unmatched`; never the raw path, whose ids would make the label set unbounded), `status`.
/// The HPA's `http_requests_per_second` is `rate()` of it.
pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";

/// Histogram of FHIR request durations in seconds, until the response head; labels `method`,
/// `route`. Buckets: [`HTTP_DURATION_BUCKETS`].
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "http_request_duration_seconds";

/// Gauge: live Appointments holding a slot, over all tenants (store-wide; API HPA).
pub const ACTIVE_APPOINTMENTS_COUNT: &str = "active_appointments_count";

/// Gauge: jobs ready to run and not yet claimed (store-wide; worker HPA, backlog alert).
pub const QUEUE_DEPTH: &str = "queue_depth";

/// Gauge: this process's database connections in use over the pool's limit, 0..=1 (the
/// saturation alert fires above 0.9).
pub const DB_CONNECTION_POOL_USAGE: &str = "db_connection_pool_usage";

/// Counter of FHIR requests turned away before a handler ran; label `reason`: `rate_limit`
/// (429, the client's quota) or `overload` (503, the process's concurrency limit).
pub const THROTTLED_REQUESTS_TOTAL: &str = "careplane_throttled_requests_total";

/// Histogram buckets for [`HTTP_REQUEST_DURATION_SECONDS`]. The latency SLO alert reads the
/// `le="0.5"` bucket, so 0.5 must stay one of them.
pub const HTTP_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Renders the whole metrics registry in the Prometheus text format (the binary passes
/// `PrometheusHandle::render`, plus whatever it collects first).
pub type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;

/// Store gauges are refreshed at most this often, so a burst of scrapes (several Prometheus
/// replicas, a curl loop) costs the database at most two queries per second.
pub const GAUGE_REFRESH: Duration = Duration::from_secs(1);

/// A gauge query slower than this keeps the previous value; the scrape must answer.
const GAUGE_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Registers HELP texts; the series themselves appear once first recorded.
pub fn describe() {
    metrics::describe_counter!(HTTP_REQUESTS_TOTAL, "FHIR API requests answered");
    metrics::describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "FHIR API request duration until the response head"
    );
    metrics::describe_gauge!(
        ACTIVE_APPOINTMENTS_COUNT,
        "Live Appointments holding a slot, all tenants"
    );
    metrics::describe_counter!(
        THROTTLED_REQUESTS_TOTAL,
        "FHIR requests refused by the per-client rate limit (429) or the concurrency limit (503)"
    );
    metrics::describe_gauge!(QUEUE_DEPTH, "Jobs ready to run and not yet claimed");
    metrics::describe_gauge!(
        DB_CONNECTION_POOL_USAGE,
        "Database connections in use over the pool limit (0-1)"
    );
}

/// The store-wide gauges, refreshed when scraped rather than on a timer: a process nobody scrapes
/// puts no load on the database.
#[derive(Default)]
pub struct StoreGauges {
    /// When the database was last asked; the async lock also makes concurrent scrapes wait
    /// for one refresh instead of each querying.
    last: tokio::sync::Mutex<Option<Instant>>,
}

impl StoreGauges {
    /// Sets the gauges from the store unless they were refreshed within [`GAUGE_REFRESH`]. A
    /// failed query is logged and leaves the gauge at its last value (absent until one succeeds:
    /// a made-up 0 would scale the workers down during an outage).
    pub async fn refresh(&self, store: &dyn Store) {
        // In-process numbers, no query: always current.
        metrics::gauge!(DB_CONNECTION_POOL_USAGE).set(store.pool_usage().ratio());
        let mut last = self.last.lock().await;
        if last.is_some_and(|at| at.elapsed() < GAUGE_REFRESH) {
            return;
        }
        // Counted as a refresh even when it fails, so an outage is not queried on every scrape.
        *last = Some(Instant::now());
        let (appointments, queue) = tokio::join!(
            tokio::time::timeout(GAUGE_QUERY_TIMEOUT, store.active_appointments()),
            tokio::time::timeout(GAUGE_QUERY_TIMEOUT, store.queue_depth()),
        );
        for (name, result) in [
            (ACTIVE_APPOINTMENTS_COUNT, appointments),
            (QUEUE_DEPTH, queue),
        ] {
            match result {
                Ok(Ok(value)) => metrics::gauge!(name).set(value as f64),
                Ok(Err(e)) => {
                    tracing::warn!(gauge = name, error = %e, "metrics: gauge query failed")
                }
                Err(_) => tracing::warn!(gauge = name, "metrics: gauge query timed out"),
            }
        }
    }
}
