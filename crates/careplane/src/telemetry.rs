//! Logging: tracing to stderr, text or JSON. Request logs carry the matched route, not raw
//! URLs, so identifiers and search values (PHI) stay out of logs, and the request's
//! `X-Request-Id` to correlate them. Metrics are in `metrics.rs`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

pub fn init(config: &Config) {
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // Reporting a failed log write goes through eprintln!, which panics when stderr is gone
        // (a closed pipe); a server must outlive its log reader.
        .log_internal_errors(false);
    let _ = match config.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
