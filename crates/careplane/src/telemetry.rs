//! Logging, and optional trace export. Logs: tracing to stderr, text or JSON. Request logs carry
//! the matched route, not raw URLs, so identifiers and search values (PHI) stay out of logs, and
//! the request's `X-Request-Id` to correlate them. Metrics are in `metrics.rs`.
//!
//! Traces: with an OTLP endpoint configured (`CAREPLANE_OTLP_ENDPOINT`, else the standard
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`), `serve` and `work` export
//! the same `tracing` spans over OTLP/HTTP protobuf from a batch processor that [`Telemetry`]
//! flushes when it drops at exit. Only span fields named in [`EXPORTED_FIELDS`] leave the process
//! and events (log lines) never do, so PHI that a later field or log message might carry cannot
//! reach the collector. Without an endpoint no exporter, thread or layer exists.
//!
//! Propagation (W3C Trace Context, only with export on): a request whose `traceparent` is valid
//! becomes a child of the caller's span, and the jobs it enqueues keep its `traceparent` so each
//! attempt's `job` span is a child of the request; [`W3cTraceContext`] does both for the API and
//! the worker. A malformed header starts a new trace.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, SdkTracerProvider, SpanData, SpanEvents, SpanLinks, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use tracing::{Level, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{Config, LogFormat};

/// The span fields exported, each under its OpenTelemetry HTTP semantic-convention name (job
/// fields under `job.*`); every other field is dropped before the batch queue.
const EXPORTED_FIELDS: [(&str, &str); 8] = [
    ("method", "http.request.method"),
    ("route", "http.route"),
    ("status", "http.response.status_code"),
    ("request_id", "request_id"),
    // The worker's span per job attempt (careplane-worker's runner): never the payload.
    ("job.id", "job.id"),
    ("job.kind", "job.kind"),
    ("job.attempt", "job.attempt"),
    ("job.outcome", "job.outcome"),
];

/// Flushes and stops trace export when dropped (the end of `main`); holds nothing when export
/// is off.
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Trace propagation for the API and the worker; `None` when traces are not exported, so
    /// then no header or job payload is ever parsed for it.
    pub fn trace_context(&self) -> Option<Arc<W3cTraceContext>> {
        self.tracer_provider
            .as_ref()
            .map(|_| Arc::new(W3cTraceContext::default()))
    }
}

/// W3C Trace Context (`traceparent`, `tracestate`) over OpenTelemetry's propagator.
#[derive(Debug, Default)]
pub struct W3cTraceContext(TraceContextPropagator);

impl W3cTraceContext {
    /// Parents `span` on the remote span in `carrier`, when it names a valid one. Must run
    /// before the span starts (right after it is created): a started span keeps its parent.
    fn join(&self, carrier: &dyn Extractor, span: &tracing::Span) {
        // From an empty context: nothing of the current task's context may leak in.
        let parent = self.0.extract_with_context(&Context::new(), carrier);
        if parent.span().span_context().is_valid() {
            // Fails only without the OpenTelemetry layer (then there is nothing to join).
            let _ = span.set_parent(parent);
        }
    }
}

impl careplane_api::TraceContext for W3cTraceContext {
    fn join(&self, headers: &HeaderMap, span: &tracing::Span) {
        self.join(&Headers(headers), span);
    }

    fn traceparent(&self, span: &tracing::Span) -> Option<String> {
        let context = span.context();
        if !context.span().span_context().is_valid() {
            return None;
        }
        let mut carrier = HashMap::new();
        self.0.inject_context(&context, &mut carrier);
        carrier.remove("traceparent")
    }
}

impl careplane_worker::TraceParent for W3cTraceContext {
    fn join(&self, span: &tracing::Span, traceparent: &str) {
        let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
        self.join(&carrier, span);
    }
}

/// Request headers as the propagator reads them.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.tracer_provider.take() {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "traces not flushed to the OTLP endpoint");
            }
        }
    }
}

/// Installs logging and, when `export_traces` and an endpoint is configured, OTLP trace export.
/// Errors name the variable at fault.
pub fn init(config: &Config, export_traces: bool) -> Result<Telemetry, String> {
    let endpoint = if export_traces {
        traces_endpoint(config)?
    } else {
        None
    };
    let tracer_provider = endpoint.as_ref().map(tracer_provider).transpose()?;

    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // Reporting a failed log write goes through eprintln!, which panics when stderr is gone
        // (a closed pipe); a server must outlive its log reader.
        .log_internal_errors(false);
    let fmt = match config.log_format {
        LogFormat::Json => fmt.json().boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    // CAREPLANE_LOG filters the log lines only: request spans are exported whatever it says.
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(tracer_provider.as_ref().map(span_layer))
        .try_init();
    if let Some(mut shown) = endpoint {
        shown.set_query(None);
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        tracing::info!(endpoint = %shown, "exporting traces over OTLP/HTTP");
    }
    Ok(Telemetry { tracer_provider })
}

/// `CAREPLANE_OTLP_ENDPOINT`'s syntax: an http(s) URL with a host.
pub fn parse_endpoint(s: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(s.trim()).map_err(|e| format!("'{s}' is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!(
            "'{s}' is not an http(s) URL with a host (OTLP over HTTP, e.g. http://otel-collector:4318)"
        ));
    }
    Ok(url)
}

/// Where spans are POSTed: our variable, else the standard ones in the specification's order
/// (the per-signal one as is, the general one plus `/v1/traces`). Empty counts as unset.
fn traces_endpoint(config: &Config) -> Result<Option<reqwest::Url>, String> {
    let standard = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let signal_path = |base: reqwest::Url| {
        let url = format!("{}/v1/traces", base.as_str().trim_end_matches('/'));
        reqwest::Url::parse(&url).map_err(|e| format!("'{url}': {e}"))
    };
    let endpoint = if let Some(base) = &config.otlp_endpoint {
        signal_path(base.clone()).map_err(|e| format!("CAREPLANE_OTLP_ENDPOINT: {e}"))?
    } else if let Some(url) = standard("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        parse_endpoint(&url).map_err(|e| format!("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: {e}"))?
    } else if let Some(base) = standard("OTEL_EXPORTER_OTLP_ENDPOINT") {
        parse_endpoint(&base)
            .and_then(signal_path)
            .map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT: {e}"))?
    } else {
        return Ok(None);
    };
    // A gRPC collector port would swallow every export silently: refuse at start instead.
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(protocol) = standard(name).filter(|p| p.trim() != "http/protobuf") {
            return Err(format!(
                "{name}={protocol} is not supported: careplane exports OTLP over HTTP \
                 (http/protobuf, usually port 4318)"
            ));
        }
    }
    Ok(Some(endpoint))
}

fn tracer_provider(endpoint: &reqwest::Url) -> Result<SdkTracerProvider, String> {
    // Headers, timeout and compression come from the standard OTEL_EXPORTER_OTLP_* variables.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint.as_str())
        .build()
        .map_err(|e| format!("OTLP exporter: {e}"))?;
    Ok(provider_with(BatchSpanProcessor::builder(exporter).build()))
}

fn provider_with(processor: impl SpanProcessor + 'static) -> SdkTracerProvider {
    // The builder reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME, which wins over ours.
    let mut resource = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if std::env::var_os("OTEL_SERVICE_NAME").is_none_or(|v| v.is_empty()) {
        resource = resource.with_service_name("careplane");
    }
    SdkTracerProvider::builder()
        .with_span_processor(AllowListed(processor))
        .with_resource(resource.build())
        .build()
}

/// Careplane's own spans (INFO and above), never events: the allow-list in [`AllowListed`] is
/// the guarantee, this keeps the work away from what would be dropped anyway.
fn span_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("careplane"))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            meta.is_span() && meta.target().starts_with("careplane") && *meta.level() <= Level::INFO
        }))
}

/// Passes ended spans on with only [`EXPORTED_FIELDS`], no events, links or status text; names
/// request spans `{method} {route}` as the HTTP conventions do, kind server, error on 5xx.
#[derive(Debug)]
struct AllowListed<P>(P);

impl<P: SpanProcessor> SpanProcessor for AllowListed<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.0.on_start(span, cx);
    }

    fn on_end(&self, mut span: SpanData) {
        span.attributes = std::mem::take(&mut span.attributes)
            .into_iter()
            .filter_map(|kv| {
                let (_, name) = EXPORTED_FIELDS
                    .iter()
                    .find(|(field, _)| kv.key.as_str() == *field)?;
                let value = match (*name, kv.value) {
                    ("http.request.method", method) => Value::from(known_method(&method.as_str())),
                    // tracing-opentelemetry records unsigned integers as text.
                    ("http.response.status_code", status) => {
                        status.as_str().parse::<i64>().map_or(status, Value::I64)
                    }
                    (_, value) => value,
                };
                Some(KeyValue::new(*name, value))
            })
            .collect();
        span.dropped_attributes_count = 0;
        span.events = SpanEvents::default();
        span.links = SpanLinks::default();
        if let Status::Error { .. } = span.status {
            span.status = Status::error("");
        }
        if span.name == "job" {
            let attribute = |name: &str| span.attributes.iter().find(|kv| kv.key.as_str() == name);
            if let Some(kind) = attribute("job.kind").map(|kv| kv.value.as_str()) {
                span.name = format!("job {kind}").into();
            }
            // A failed attempt (retried later or dead-lettered) is an error of this span.
            let outcome = attribute("job.outcome").map(|kv| kv.value.as_str());
            if outcome.is_some_and(|o| o == "retry" || o == "dead") {
                span.status = Status::error("");
            }
            span.span_kind = SpanKind::Consumer;
        }
        if span.name == "request" {
            let attribute = |name: &str| span.attributes.iter().find(|kv| kv.key.as_str() == name);
            let method = attribute("http.request.method").map(|kv| kv.value.as_str());
            let route = attribute("http.route").map(|kv| kv.value.as_str());
            let status = attribute("http.response.status_code").and_then(|kv| match kv.value {
                Value::I64(status) => Some(status),
                _ => None,
            });
            if let (Some(method), Some(route)) = (method, route) {
                let method = if method == "_OTHER" {
                    "HTTP".into()
                } else {
                    method
                };
                span.name = format!("{method} {route}").into();
            }
            span.span_kind = SpanKind::Server;
            if status.is_some_and(|s| s >= 500) {
                span.status = Status::error("");
            }
        }
        self.0.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

/// Methods outside the standard set become `_OTHER`, so a client cannot put text of its own in
/// the attribute or the span name.
fn known_method(method: &str) -> &'static str {
    const KNOWN: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
    KNOWN
        .into_iter()
        .find(|known| *known == method)
        .unwrap_or("_OTHER")
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Keeps ended spans in memory, after [`AllowListed`].
    #[derive(Debug, Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<SpanData>>>);

    impl SpanProcessor for Recorder {
        fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &Context) {}
        fn on_end(&self, span: SpanData) {
            self.0.lock().unwrap().push(span);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    fn exported(emit: impl FnOnce()) -> Vec<SpanData> {
        let recorder = Recorder::default();
        let provider = provider_with(recorder.clone());
        let subscriber = tracing_subscriber::registry().with(span_layer(&provider));
        tracing::subscriber::with_default(subscriber, emit);
        let spans = recorder.0.lock().unwrap().clone();
        spans
    }

    #[test]
    fn only_allow_listed_fields_leave_the_process_and_events_never_do() {
        let spans = exported(|| {
            let span = tracing::info_span!(
                "request",
                method = "GET",
                route = "/fhir/{type}",
                request_id = "req-1",
                status = tracing::field::Empty,
                url = "/fhir/Patient?family=SECRETNAME",
            );
            let _entered = span.enter();
            tracing::warn!(query = "family=SECRETNAME", "a log line inside the request");
            span.record("status", 200_u16);
        });
        assert_eq!(spans.len(), 1, "{spans:?}");
        let span = &spans[0];
        assert!(!format!("{span:?}").contains("SECRETNAME"), "{span:?}");
        assert!(span.events.is_empty());
        // Positive control: the allowed fields are there, under their convention names.
        let attributes: Vec<(String, String)> = span
            .attributes
            .iter()
            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
            .collect();
        assert_eq!(
            attributes,
            [
                ("http.request.method", "GET"),
                ("http.route", "/fhir/{type}"),
                ("request_id", "req-1"),
                ("http.response.status_code", "200"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert!(span
            .attributes
            .contains(&KeyValue::new("http.response.status_code", Value::I64(200))));
        assert_eq!(span.name, "GET /fhir/{type}");
        assert_eq!(span.span_kind, SpanKind::Server);
        assert_eq!(span.status, Status::Unset);
    }

    #[test]
    fn server_errors_mark_the_span_and_unknown_methods_are_not_echoed() {
        let spans = exported(|| {
            let _span = tracing::info_span!(
                "request",
                method = "SECRETVERB",
                route = "unmatched",
                status = 503_u16,
            )
            .entered();
        });
        assert_eq!(spans[0].name, "HTTP unmatched");
        assert_eq!(spans[0].status, Status::error(""));
        assert!(!format!("{:?}", spans[0]).contains("SECRETVERB"));
    }

    #[test]
    fn spans_of_other_crates_and_debug_spans_are_not_exported() {
        let spans = exported(|| {
            let _a =
                tracing::info_span!(target: "sqlx::query", "query", db.statement = "x").entered();
            let _b = tracing::debug_span!("detail").entered();
        });
        assert!(spans.is_empty(), "{spans:?}");
    }

    #[test]
    fn endpoints_are_http_urls_with_a_host() {
        assert!(parse_endpoint("http://otel-collector:4318").is_ok());
        assert!(parse_endpoint("https://otlp.example.org/otlp/").is_ok());
        for bad in [
            "otel-collector:4318",
            "grpc://collector:4317",
            "http://",
            "file:///tmp",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }
}
