//! W3C Trace Context: a request joins its caller's trace (`traceparent`, `tracestate`), and the
//! jobs it enqueues carry the trace on so the worker's job span continues it. Parsing and the
//! OpenTelemetry side belong to the binary, the one crate that exports traces; this crate only
//! calls the [`TraceContext`] it is given, and without trace export there is none, so nothing is
//! parsed and no header is read.

use axum::http::HeaderMap;

use crate::state::AppState;

/// Trace propagation, implemented by the binary over OpenTelemetry.
pub trait TraceContext: std::fmt::Debug + Send + Sync {
    /// Makes `span` a child of the caller's span named by `headers`. A missing or malformed
    /// `traceparent` leaves `span` the root of a new trace: never an error.
    fn join(&self, headers: &HeaderMap, span: &tracing::Span);

    /// The W3C `traceparent` naming `span`, when it belongs to an exported trace.
    fn traceparent(&self, span: &tracing::Span) -> Option<String>;
}

/// The current request's `traceparent`, to keep with a job it enqueues
/// (`NewJob::with_traceparent`); `None` without trace export.
pub fn current(state: &AppState) -> Option<String> {
    state
        .settings
        .trace_context
        .as_ref()?
        .traceparent(&tracing::Span::current())
}
