//! The whole configuration: one clap struct, read from `CAREPLANE_*` env vars or flags, with
//! defaults that make `cargo run --release` work on SQLite with nothing else installed.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{ArgAction, Args, ValueEnum};

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address the FHIR API listens on.
    #[arg(
        long = "listen",
        env = "CAREPLANE_LISTEN_ADDR",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen_addr: SocketAddr,

    /// Address of the admin listener (probes /startupz, /livez, /readyz; Prometheus /metrics).
    #[arg(
        long = "admin-listen",
        env = "CAREPLANE_ADMIN_ADDR",
        default_value = "127.0.0.1:9090",
        global = true
    )]
    pub admin_addr: SocketAddr,

    /// Database URL: sqlite://PATH (created if missing) or postgres://USER[:PASSWORD]@HOST:PORT/DB.
    #[arg(
        long = "database-url",
        env = "CAREPLANE_DATABASE_URL",
        default_value = "sqlite://careplane.db",
        hide_env_values = true,
        global = true
    )]
    pub database_url: DatabaseUrl,

    /// File holding the database URL (a mounted Secret), read at start and trimmed; excludes
    /// CAREPLANE_DATABASE_URL.
    #[arg(
        long = "database-url-file",
        env = "CAREPLANE_DATABASE_URL_FILE",
        conflicts_with = "database_url",
        global = true
    )]
    pub database_url_file: Option<PathBuf>,

    /// Redis URL, redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]: a read cache shared by replicas,
    /// invalidated on write, and worker wake-ups. Optional: unset, SQLite gets an in-process
    /// cache and PostgreSQL none.
    #[arg(
        long = "redis-url",
        env = "CAREPLANE_REDIS_URL",
        hide_env_values = true,
        global = true
    )]
    pub redis_url: Option<RedisUrl>,

    /// File holding the Redis URL (a mounted Secret), read at start and trimmed; excludes
    /// CAREPLANE_REDIS_URL.
    #[arg(
        long = "redis-url-file",
        env = "CAREPLANE_REDIS_URL_FILE",
        conflicts_with = "redis_url",
        global = true
    )]
    pub redis_url_file: Option<PathBuf>,

    /// Make `serve`'s /readyz fail (503) while the configured Redis does not answer. Default
    /// false: readiness never depends on Redis, whose every use has a fallback.
    #[arg(long = "redis-required", env = "CAREPLANE_REDIS_REQUIRED", default_value_t = false, action = ArgAction::Set, global = true)]
    pub redis_required: bool,

    /// Path prefix of the FHIR API.
    #[arg(
        long = "base-path",
        env = "CAREPLANE_BASE_PATH",
        default_value = "/fhir",
        global = true
    )]
    pub base_path: String,

    /// Absolute public base URL for Location headers and Bundle fullUrls (default: from the Host header).
    #[arg(
        long = "public-base-url",
        env = "CAREPLANE_PUBLIC_BASE_URL",
        global = true
    )]
    pub public_base_url: Option<String>,

    /// Proxies (IPs or CIDR ranges, comma-separated) whose Forwarded / X-Forwarded-Proto,
    /// -Host and -Prefix headers are believed when building links; from anyone else they are
    /// ignored. Unused when CAREPLANE_PUBLIC_BASE_URL is set.
    #[arg(
        long = "trusted-proxies",
        env = "CAREPLANE_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = parse_network,
        global = true
    )]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Where Subscription rest-hook notifications may be sent: comma-separated http(s) URL
    /// prefixes, e.g. https://hooks.example.org/careplane/. Checked when a Subscription is written
    /// and again before every delivery; empty (the default) refuses every rest-hook Subscription.
    #[arg(
        long = "subscription-allowed-endpoints",
        env = "CAREPLANE_SUBSCRIPTION_ALLOWED_ENDPOINTS",
        default_value = "",
        value_parser = careplane_fhir::subscription::AllowList::parse,
        global = true
    )]
    pub subscription_endpoints: careplane_fhir::subscription::AllowList,

    /// Apply database migrations when `serve` starts (Kubernetes sets false and runs `migrate` once).
    #[arg(long = "migrate", env = "CAREPLANE_MIGRATE", default_value_t = true, action = ArgAction::Set, global = true)]
    pub migrate: bool,

    /// Largest accepted request body in bytes; larger bodies get 413.
    #[arg(long = "max-body-bytes", env = "CAREPLANE_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024, global = true)]
    pub max_body_bytes: usize,

    /// Let PUT create a resource with a client-chosen id (update-as-create).
    #[arg(long = "allow-update-create", env = "CAREPLANE_ALLOW_UPDATE_CREATE", default_value_t = false, action = ArgAction::Set, global = true)]
    pub allow_update_create: bool,

    /// Deadline in seconds for a whole request (body upload included); past it the answer is 503.
    #[arg(
        long = "request-timeout-seconds",
        env = "CAREPLANE_REQUEST_TIMEOUT_SECONDS",
        default_value_t = 30,
        global = true
    )]
    pub request_timeout_seconds: u64,

    /// Largest transaction/batch Bundle body (POST to the base); larger ones get 413.
    #[arg(long = "max-bundle-bytes", env = "CAREPLANE_MAX_BUNDLE_BYTES", default_value_t = 64 * 1024 * 1024, global = true)]
    pub max_bundle_bytes: usize,

    /// Most entries in one transaction/batch Bundle; more get 413.
    #[arg(
        long = "max-bundle-entries",
        env = "CAREPLANE_MAX_BUNDLE_ENTRIES",
        default_value_t = 20_000,
        global = true
    )]
    pub max_bundle_entries: usize,

    /// Largest NDJSON body `POST /$import` accepts (staged on disk, never held in memory).
    #[arg(long = "max-import-bytes", env = "CAREPLANE_MAX_IMPORT_BYTES", default_value_t = 256 * 1024 * 1024, global = true)]
    pub max_import_bytes: usize,

    /// FHIR requests handled at once by this process; beyond it requests get 503 with
    /// Retry-After at once instead of queueing (load shedding).
    #[arg(
        long = "max-concurrent-requests",
        env = "CAREPLANE_MAX_CONCURRENT_REQUESTS",
        default_value_t = 512,
        global = true
    )]
    pub max_concurrent_requests: usize,

    /// Requests one client may send: N/s, N/m or N/h (a bare N is per second), counted per
    /// tenant and client address, shared by replicas through Redis; beyond it 429 with
    /// Retry-After. 0 or unset: no limit.
    #[arg(long = "rate-limit", env = "CAREPLANE_RATE_LIMIT", global = true)]
    pub rate_limit: Option<Rate>,

    /// Requests a client may send at once after a quiet period (default: the N of
    /// CAREPLANE_RATE_LIMIT).
    #[arg(
        long = "rate-limit-burst",
        env = "CAREPLANE_RATE_LIMIT_BURST",
        global = true
    )]
    pub rate_limit_burst: Option<u32>,

    /// Matches per search page when the client sends no `_count`.
    #[arg(
        long = "default-page-size",
        env = "CAREPLANE_DEFAULT_PAGE_SIZE",
        default_value_t = 50,
        global = true
    )]
    pub default_page_size: u32,

    /// Largest `_count` honoured (larger values are capped); also the cap on `_include`d resources.
    #[arg(
        long = "max-page-size",
        env = "CAREPLANE_MAX_PAGE_SIZE",
        default_value_t = 1000,
        global = true
    )]
    pub max_page_size: u32,

    /// Most connections the PostgreSQL pool opens (per process).
    #[arg(
        long = "database-max-connections",
        env = "CAREPLANE_DATABASE_MAX_CONNECTIONS",
        default_value_t = 16,
        global = true
    )]
    pub database_max_connections: u32,

    /// Seconds a request waits for a free database connection before answering 503.
    #[arg(
        long = "database-acquire-timeout-seconds",
        env = "CAREPLANE_DATABASE_ACQUIRE_TIMEOUT_SECONDS",
        default_value_t = 5,
        global = true
    )]
    pub database_acquire_timeout_seconds: u64,

    /// After SIGTERM, keep serving this long with readiness failing, so load balancers stop
    /// routing here first (e.g. 5s, 500ms).
    #[arg(
        long = "shutdown-delay",
        env = "CAREPLANE_SHUTDOWN_DELAY",
        default_value = "0s",
        value_parser = humantime::parse_duration,
        global = true
    )]
    pub shutdown_delay: Duration,

    /// Then the listener closes and in-flight requests get this long to finish (e.g. 20s).
    #[arg(
        long = "drain-timeout",
        env = "CAREPLANE_DRAIN_TIMEOUT",
        default_value = "20s",
        value_parser = humantime::parse_duration,
        global = true
    )]
    pub drain_timeout: Duration,

    /// Log filter (tracing EnvFilter syntax).
    #[arg(
        long = "log",
        env = "CAREPLANE_LOG",
        default_value = "info",
        global = true
    )]
    pub log: String,

    /// Log format: text for terminals, json for log collectors.
    #[arg(long = "log-format", env = "CAREPLANE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// OTLP/HTTP (protobuf) collector to export request traces to, e.g.
    /// http://otel-collector:4318 (spans go to its /v1/traces). Unset: the standard
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT; none set: no export.
    #[arg(
        long = "otlp-endpoint",
        env = "CAREPLANE_OTLP_ENDPOINT",
        value_parser = crate::telemetry::parse_endpoint,
        global = true
    )]
    pub otlp_endpoint: Option<reqwest::Url>,

    #[command(flatten)]
    pub worker: crate::worker::WorkerConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// Replaces values given as `*_FILE` variables by the files' contents (trimmed). Errors
    /// name the variable and the path, never the content.
    pub fn read_secret_files(&mut self) -> Result<(), String> {
        if let Some(path) = &self.database_url_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "CAREPLANE_DATABASE_URL_FILE: cannot read {}: {e}",
                    path.display()
                )
            })?;
            self.database_url = text.trim().parse().map_err(|e| {
                format!(
                    "CAREPLANE_DATABASE_URL_FILE: {} holds no database URL: {e}",
                    path.display()
                )
            })?;
        }
        if let Some(path) = &self.redis_url_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "CAREPLANE_REDIS_URL_FILE: cannot read {}: {e}",
                    path.display()
                )
            })?;
            self.redis_url = Some(text.trim().parse().map_err(|e| {
                format!(
                    "CAREPLANE_REDIS_URL_FILE: {} holds no Redis URL: {e}",
                    path.display()
                )
            })?);
        }
        Ok(())
    }

    /// Refuses impossible combinations before anything starts, naming the variable.
    pub fn validate(&self) -> Result<(), String> {
        if !self.base_path.is_empty() && !self.base_path.starts_with('/') {
            return Err(format!(
                "CAREPLANE_BASE_PATH must start with '/', got '{}'",
                self.base_path
            ));
        }
        if self.listen_addr == self.admin_addr && self.listen_addr.port() != 0 {
            return Err("CAREPLANE_LISTEN_ADDR and CAREPLANE_ADMIN_ADDR must differ".into());
        }
        if self.request_timeout_seconds == 0 {
            return Err("CAREPLANE_REQUEST_TIMEOUT_SECONDS must be at least 1".into());
        }
        if self.database_max_connections == 0 {
            return Err("CAREPLANE_DATABASE_MAX_CONNECTIONS must be at least 1".into());
        }
        if self.default_page_size == 0 || self.default_page_size > self.max_page_size {
            return Err(
                "CAREPLANE_DEFAULT_PAGE_SIZE must be between 1 and CAREPLANE_MAX_PAGE_SIZE".into(),
            );
        }
        self.worker.validate()?;
        if self.max_concurrent_requests == 0 {
            return Err("CAREPLANE_MAX_CONCURRENT_REQUESTS must be at least 1".into());
        }
        if self.max_body_bytes < 1024 {
            return Err("CAREPLANE_MAX_BODY_BYTES must be at least 1024".into());
        }
        if self.rate_limit_burst.is_some() && self.rate_limit.is_none() {
            return Err("CAREPLANE_RATE_LIMIT_BURST needs CAREPLANE_RATE_LIMIT".into());
        }
        if self.rate_limit_burst == Some(0) {
            return Err("CAREPLANE_RATE_LIMIT_BURST must be at least 1".into());
        }
        if self.redis_required && self.redis_url.is_none() {
            return Err("CAREPLANE_REDIS_REQUIRED needs CAREPLANE_REDIS_URL".into());
        }
        Ok(())
    }

    pub fn pool_settings(&self) -> careplane_store::PoolSettings {
        careplane_store::PoolSettings {
            max_connections: self.database_max_connections,
            acquire_timeout: std::time::Duration::from_secs(self.database_acquire_timeout_seconds),
            // A statement never outlives the request that runs it.
            statement_timeout: std::time::Duration::from_secs(self.request_timeout_seconds),
        }
    }

    pub fn api_settings(&self) -> careplane_api::Settings {
        careplane_api::Settings {
            base_path: self.base_path.trim_end_matches('/').to_string(),
            public_base_url: self.public_base_url.clone(),
            max_body_bytes: self.max_body_bytes,
            max_bundle_bytes: self.max_bundle_bytes,
            max_bundle_entries: self.max_bundle_entries,
            allow_update_create: self.allow_update_create,
            request_timeout: std::time::Duration::from_secs(self.request_timeout_seconds),
            default_page_size: self.default_page_size,
            max_page_size: self.max_page_size,
            export_dir: self.worker.export_dir.clone(),
            max_concurrent_requests: self.max_concurrent_requests,
            max_import_bytes: self.max_import_bytes,
            trusted_proxies: self.trusted_proxies.clone(),
            subscription_endpoints: self.subscription_endpoints.clone(),
            // Both need the Redis client: `serve`, the only command with the FHIR router and
            // the readiness that uses them, sets them (cache::Caching).
            rate_limit: None,
            redis_required: None,
            // Set by `serve` when traces are exported (telemetry::W3cTraceContext).
            trace_context: None,
        }
    }

    /// The per-client quota; `None` when rate limiting is off.
    pub fn rate_limit_quota(&self) -> Option<careplane_cache::Quota> {
        let rate = self.rate_limit?;
        careplane_cache::Quota::new(
            rate.count,
            rate.period,
            self.rate_limit_burst.unwrap_or(rate.count),
        )
    }
}

/// `N/s`, `N/m`, `N/h`, or a bare `N` (per second): the `CAREPLANE_RATE_LIMIT` syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (count, unit) = s.trim().split_once('/').unwrap_or((s.trim(), "s"));
        let period = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            other => return Err(format!("unknown period '{other}': use /s, /m or /h")),
        };
        let count = count
            .trim()
            .parse()
            .map_err(|_| format!("'{}' is not a whole number of requests", count.trim()))?;
        Ok(Rate { count, period })
    }
}

/// `10.0.0.0/8`, or one address (`10.1.2.3`, a /32 or /128).
fn parse_network(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("'{s}' is neither an IP address nor a CIDR range"))
}

/// Writes `url` with the password of its userinfo replaced by `***` (for Display and Debug of
/// secret URLs).
fn write_masked(f: &mut fmt::Formatter<'_>, url: &str) -> fmt::Result {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            write!(f, "{}{user}:***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => f.write_str(url),
    }
}

/// A database URL whose `Debug`/`Display` never show the password.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with("sqlite:")
            || s.starts_with("postgres://")
            || s.starts_with("postgresql://")
        {
            Ok(DatabaseUrl(s.to_string()))
        } else {
            Err("expected sqlite://PATH or postgres://USER@HOST/DB".into())
        }
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_masked(f, &self.0)
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// A Redis URL whose `Debug`/`Display` never show the password.
#[derive(Clone)]
pub struct RedisUrl(String);

impl RedisUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for RedisUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with("rediss://") {
            // The client is built without TLS (no TLS stack to audit for a cache on the
            // cluster network); say so instead of failing at the first connection.
            Err("rediss:// (TLS) is not supported; use redis:// on a private network".into())
        } else if s.starts_with("redis://") || s.starts_with("redis+unix://") {
            Ok(RedisUrl(s.to_string()))
        } else {
            Err("expected redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]".into())
        }
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_masked(f, &self.0)
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_never_prints_the_password() {
        let url: DatabaseUrl = "postgres://app:s3cret@db:5432/careplane".parse().unwrap();
        assert_eq!(url.to_string(), "postgres://app:***@db:5432/careplane");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(url.expose(), "postgres://app:s3cret@db:5432/careplane");
    }

    #[test]
    fn trusted_proxies_are_addresses_or_ranges() {
        assert!(parse_network("10.0.0.0/8")
            .unwrap()
            .contains(&"10.9.8.7".parse::<std::net::IpAddr>().unwrap()));
        assert_eq!(parse_network(" 127.0.0.1 ").unwrap().prefix_len(), 32);
        assert!(parse_network("::1").is_ok());
        assert!(parse_network("proxy.local").is_err());
    }

    #[test]
    fn redis_url_never_prints_the_password() {
        let url: RedisUrl = "redis://:s3cret@cache:6379/0".parse().unwrap();
        assert_eq!(url.to_string(), "redis://:***@cache:6379/0");
        assert!(!format!("{url:?}").contains("s3cret"));
        let url: RedisUrl = "redis://app:s3cret@cache".parse().unwrap();
        assert_eq!(url.to_string(), "redis://app:***@cache");
        assert_eq!(url.expose(), "redis://app:s3cret@cache");
        // Positive control: nothing to hide, nothing hidden.
        let url: RedisUrl = "redis://cache:6379".parse().unwrap();
        assert_eq!(url.to_string(), "redis://cache:6379");
    }

    #[test]
    fn tls_and_foreign_redis_schemes_are_refused() {
        assert!("rediss://cache:6380".parse::<RedisUrl>().is_err());
        assert!("http://cache".parse::<RedisUrl>().is_err());
    }

    #[test]
    fn rate_limits_are_requests_per_second_minute_or_hour() {
        let rate = |s: &str| s.parse::<Rate>();
        assert_eq!(
            rate("100").unwrap(),
            Rate {
                count: 100,
                period: Duration::from_secs(1)
            }
        );
        assert_eq!(rate("6/m").unwrap().period, Duration::from_secs(60));
        assert_eq!(rate(" 1000/h ").unwrap().count, 1000);
        assert!(rate("10/d").is_err());
        assert!(rate("fast").is_err());
        assert!(rate("-1/s").is_err());
    }

    #[test]
    fn unknown_database_schemes_are_refused() {
        assert!("mysql://x".parse::<DatabaseUrl>().is_err());
    }
}
