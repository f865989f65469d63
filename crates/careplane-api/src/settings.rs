//! API settings: a plain struct filled by the binary from its configuration.

#[derive(Debug, Clone)]
pub struct Settings {
    /// Path prefix of the FHIR API, e.g. `/fhir` (empty for the root).
    pub base_path: String,
    /// Absolute base URL used in `Location` and `fullUrl`; derived from `Host` when `None`.
    pub public_base_url: Option<String>,
    /// Requests with larger bodies get 413.
    pub max_body_bytes: usize,
    /// Largest transaction/batch Bundle body (`POST /`); Synthea patients reach ~16 MB.
    pub max_bundle_bytes: usize,
    /// Most entries in one transaction/batch Bundle.
    pub max_bundle_entries: usize,
    /// Whether `PUT` to an unknown id creates the resource with the client's id.
    pub allow_update_create: bool,
    /// Deadline for a whole request, body upload included; past it the answer is 503.
    pub request_timeout: std::time::Duration,
    pub default_page_size: u32,
    pub max_page_size: u32,
    /// Where bulk export files are (written by the worker, served by the API; shared storage
    /// when they are separate processes).
    pub export_dir: std::path::PathBuf,
    /// Peers whose `Forwarded`/`X-Forwarded-*` headers are believed (the ingress).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Largest NDJSON body `POST /$import` stages; larger ones get 413.
    pub max_import_bytes: usize,
    /// Requests handled at once; beyond it, 503 + Retry-After at once (load shedding).
    pub max_concurrent_requests: usize,
    /// Endpoints Subscription notifications may go to; a live rest-hook Subscription naming
    /// another endpoint is refused (400).
    pub subscription_endpoints: careplane_fhir::subscription::AllowList,
    /// Per-client request quota (`middleware::rate_limit`); `None`: no limit. Counted in process
    /// or, with Redis, shared by every replica.
    pub rate_limit: Option<std::sync::Arc<dyn careplane_cache::Limiter>>,
    /// The Redis `/readyz` requires (`CAREPLANE_REDIS_REQUIRED`); `None`: readiness never asks
    /// Redis.
    pub redis_required: Option<careplane_cache::Redis>,
    /// Joins requests to their callers' traces and hands the trace on to enqueued jobs; `None`
    /// (no trace export): `traceparent` headers are not even read.
    pub trace_context: Option<std::sync::Arc<dyn crate::middleware::trace_context::TraceContext>>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            base_path: "/fhir".into(),
            public_base_url: None,
            max_body_bytes: 4 * 1024 * 1024,
            max_bundle_bytes: 64 * 1024 * 1024,
            max_bundle_entries: 20_000,
            allow_update_create: false,
            request_timeout: std::time::Duration::from_secs(30),
            default_page_size: 50,
            max_page_size: 1000,
            export_dir: "exports".into(),
            max_concurrent_requests: 512,
            max_import_bytes: 256 * 1024 * 1024,
            trusted_proxies: Vec::new(),
            subscription_endpoints: Default::default(),
            rate_limit: None,
            redis_required: None,
            trace_context: None,
        }
    }
}
