//! The Prometheus exporter: installed once as the global `metrics` recorder, with no listener of
//! its own (the admin listener serves `/metrics`, atuin-style). Adds process metrics and
//! `careplane_build_info`. Libraries only call the `metrics` macros.

use std::sync::Arc;
use std::time::Duration;

use careplane_api::metrics::{
    MetricsRenderer, HTTP_DURATION_BUCKETS, HTTP_REQUEST_DURATION_SECONDS,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Gauge fixed at 1 whose `version` label says which release a pod runs.
pub const BUILD_INFO: &str = "careplane_build_info";

/// Buckets for any other histogram (job durations and the like): histograms, unlike the
/// exporter's default summaries, can be aggregated across pods.
const DEFAULT_BUCKETS: &[f64] = &[
    0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Without the exporter's own task nothing folds histogram samples between scrapes; upkeep
/// bounds that memory when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the recorder (call once, inside the runtime, before anything records) and returns
/// what the admin listener renders on each scrape.
pub fn install() -> Result<MetricsRenderer, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets(DEFAULT_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(HTTP_REQUEST_DURATION_SECONDS.to_string()),
                HTTP_DURATION_BUCKETS,
            )
        })
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    let process = metrics_process::Collector::default();
    process.describe();
    metrics::describe_gauge!(BUILD_INFO, "Always 1; the version label names the release");
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(Arc::new(move || {
        // Resident memory, CPU seconds, open fds, start time: read from /proc when scraped.
        process.collect();
        handle.render()
    }))
}
