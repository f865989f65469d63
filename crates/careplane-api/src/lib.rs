//! Careplane's FHIR REST API over HTTP (axum).
//!
//! [`router`] builds the FHIR application (routes in `routes.rs`, layers in `middleware/`);
//! [`serve_with`] runs it and the admin listener until a shutdown future resolves, then fails
//! readiness, keeps serving for the shutdown delay, and drains in-flight requests. Tests pass a
//! oneshot as the shutdown; the binary passes its SIGTERM/SIGINT cancellation token.

pub mod admin;
pub mod bundle;
mod condition;
pub mod error;
pub mod extract;
pub mod handlers;
pub mod metrics;
pub mod middleware;
pub mod response;
pub mod routes;
pub mod settings;
pub mod state;
mod subscription;

use std::future::{Future, IntoFuture};
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::net::TcpListener;
use tower::util::MapRequestLayer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use error::ApiError;
pub use middleware::trace_context::TraceContext;
pub use settings::Settings;
pub use state::AppState;

/// The FHIR application, nested under `settings.base_path`.
pub fn router(state: AppState) -> Router {
    let fhir = routes::fhir_routes()
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    let base = state.settings.base_path.trim_end_matches('/').to_string();
    let app = if base.is_empty() {
        fhir
    } else {
        // `POST [base]/` is the same as `POST [base]`: clients differ on the trailing slash.
        Router::new()
            .route(
                &format!("{base}/"),
                axum::routing::post(handlers::bundle::transaction_or_batch)
                    .get(handlers::search::system),
            )
            .nest(&base, fhir)
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
    };
    let deadline = state.settings.request_timeout;
    // Each layer wraps the ones above it: a request passes them bottom-up. Metrics sit outside
    // the deadline and panic layers so timeouts (503) and panics (500) are counted too.
    app.layer(axum::middleware::from_fn(move |request, next| {
        with_deadline(deadline, request, next)
    }))
    .layer(DefaultBodyLimit::disable())
    .layer(CatchPanicLayer::custom(|_| {
        ApiError::Internal("handler panicked".into()).into_response()
    }))
    // Past the concurrency limit a request is refused at once with 503 + Retry-After instead of
    // queueing: under 3x load the excess fails fast and memory stays bounded.
    .layer(
        tower::ServiceBuilder::new()
            .layer(axum::error_handling::HandleErrorLayer::new(overloaded))
            .layer(tower::load_shed::LoadShedLayer::new())
            // Global: axum applies layers per route, and the limit is for the process.
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                state.settings.max_concurrent_requests.max(1),
            )),
    )
    // Per-client quota first: a client over its rate gets 429 without taking a shared slot.
    .layer(axum::middleware::from_fn_with_state(
        state.clone(),
        middleware::rate_limit::throttle,
    ))
    .layer(axum::middleware::from_fn(middleware::metrics::track))
    .layer({
        let trace_context = state.settings.trace_context.clone();
        TraceLayer::new_for_http()
            .make_span_with(move |request: &axum::http::Request<axum::body::Body>| {
                let span = request_span(request);
                if let Some(trace_context) = &trace_context {
                    trace_context.join(request.headers(), &span);
                }
                span
            })
            .on_response(record_status)
    })
    .layer(PropagateRequestIdLayer::new(
        middleware::request_id::X_REQUEST_ID,
    ))
    .layer(SetRequestIdLayer::new(
        middleware::request_id::X_REQUEST_ID,
        MakeRequestUuid,
    ))
    .layer(MapRequestLayer::new(
        middleware::request_id::discard_unacceptable,
    ))
    .with_state(state)
}

/// Request spans name the matched route (`/fhir/{type}/{id}`), never the raw path or query,
/// which carry ids and search values (PHI), and the request id (already checked to be short
/// visible ASCII, so it cannot forge log lines).
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(middleware::metrics::UNMATCHED, MatchedPath::as_str);
    let request_id = middleware::request_id::of(request);
    let status = tracing::field::Empty;
    tracing::info_span!("request", method = %request.method(), route, request_id, status)
}

/// The response status joins the request span (exported traces carry it); the debug line
/// tower-http writes stays.
fn record_status<B>(response: &axum::http::Response<B>, latency: Duration, span: &tracing::Span) {
    span.record("status", response.status().as_u16());
    tower_http::trace::OnResponse::on_response(
        tower_http::trace::DefaultOnResponse::new(),
        response,
        latency,
        span,
    );
}

/// Every request gets a deadline (reading the body included), answered with an OperationOutcome,
/// so a slow client or a stuck query never holds a connection indefinitely.
async fn with_deadline(
    deadline: Duration,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout(format!(
            "The request did not complete within {} s",
            deadline.as_secs()
        ))
        .into_response(),
    }
}

/// 503 (with `Retry-After`), code `throttled`: FHIR's name for refusing work to manage load.
async fn overloaded(_: tower::BoxError) -> Response {
    ::metrics::counter!(metrics::THROTTLED_REQUESTS_TOTAL, "reason" => "overload").increment(1);
    ApiError::Rendered {
        status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
        issues: vec![careplane_fhir::Issue::error(
            careplane_fhir::IssueCode::Throttled,
            "The server is at its concurrent request limit; retry shortly",
        )],
    }
    .into_response()
}

async fn not_found(method: Method, uri: axum::http::Uri) -> Response {
    ApiError::NotFound(format!("No route for {method} {}", uri.path())).into_response()
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Response {
    let hint = if method == Method::GET && uri.path().matches('/').count() <= 2 {
        " (search arrives with a later release)"
    } else {
        ""
    };
    ApiError::MethodNotAllowed(format!("{method} is not supported on {}{hint}", uri.path()))
        .into_response()
}

/// How [`serve_with`] runs and stops.
#[derive(Clone, Default)]
pub struct ServeOptions {
    /// After the shutdown signal, readiness fails at once but requests are still served this
    /// long, while load balancers notice and stop routing here.
    pub shutdown_delay: Duration,
    /// Then the listener closes and in-flight requests get at most this long to finish.
    pub drain_timeout: Duration,
    /// Serves `GET /metrics` on the admin listener.
    pub metrics: Option<metrics::MetricsRenderer>,
}

/// [`serve_with`] without a shutdown delay or metrics (tests).
pub async fn serve(
    api: TcpListener,
    admin: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> std::io::Result<()> {
    let options = ServeOptions {
        drain_timeout: drain,
        ..ServeOptions::default()
    };
    serve_with(api, admin, state, shutdown, options).await
}

/// Serves the API and admin listeners until `shutdown` resolves. Then: readiness fails at once,
/// requests are still served for `shutdown_delay`, the API listener closes and in-flight requests
/// get up to `drain_timeout`; the admin listener (probes, metrics) stays up until the end.
pub async fn serve_with(
    api: TcpListener,
    admin: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ServeOptions,
) -> std::io::Result<()> {
    metrics::describe();
    let (close_api, api_closed) = tokio::sync::oneshot::channel::<()>();
    let (close_admin, admin_closed) = tokio::sync::oneshot::channel::<()>();
    let mut api_server = tokio::spawn(
        // The peer address decides whether forwarding headers are believed (extract::BaseUrl).
        axum::serve(
            api,
            router(state.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = api_closed.await;
        })
        .into_future(),
    );
    let mut admin_server = tokio::spawn(
        axum::serve(admin, admin::admin_routes(state.clone(), options.metrics))
            .with_graceful_shutdown(async move {
                let _ = admin_closed.await;
            })
            .into_future(),
    );
    state.serving.store(true, Ordering::SeqCst);
    tokio::select! {
        () = shutdown => {}
        // The server only returns once told to stop; ending on its own is a failure.
        ended = &mut api_server => {
            admin_server.abort();
            tracing::error!("API server stopped unexpectedly");
            return match ended {
                Ok(result) => result,
                Err(join) => Err(std::io::Error::other(join)),
            };
        }
    }
    state.draining.store(true, Ordering::SeqCst);
    tracing::info!(
        shutdown_delay_ms = options.shutdown_delay.as_millis() as u64,
        drain_timeout_ms = options.drain_timeout.as_millis() as u64,
        "shutdown requested: readiness failing, still serving for the shutdown delay"
    );
    tokio::time::sleep(options.shutdown_delay).await;
    tracing::info!("shutdown delay over: closing the API listener, draining in-flight requests");
    let _ = close_api.send(());
    let result = match tokio::time::timeout(options.drain_timeout, &mut api_server).await {
        Ok(Ok(result)) => {
            tracing::info!("drained: every in-flight request finished");
            result
        }
        Ok(Err(join)) => {
            tracing::error!(error = %join, "API server task failed");
            Ok(())
        }
        Err(_) => {
            api_server.abort();
            tracing::warn!("drain timeout reached: requests still in flight were cut off");
            Ok(())
        }
    };
    let _ = close_admin.send(());
    // Probes and scrapes are short; a stuck one must not hold the exit.
    if tokio::time::timeout(Duration::from_secs(1), &mut admin_server)
        .await
        .is_err()
    {
        admin_server.abort();
    }
    result
}

/// The admin listener alone (probes and metrics), for processes without the FHIR API (the
/// worker): readiness fails once `stopping` resolves; the listener closes when `stopped` does.
pub async fn serve_admin(
    admin: TcpListener,
    state: AppState,
    metrics: Option<metrics::MetricsRenderer>,
    stopping: impl Future<Output = ()> + Send + 'static,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    metrics::describe();
    let draining = state.draining.clone();
    let server = axum::serve(admin, admin::admin_routes(state.clone(), metrics))
        .with_graceful_shutdown(stopped)
        .into_future();
    state.serving.store(true, Ordering::SeqCst);
    tokio::spawn(async move {
        stopping.await;
        draining.store(true, Ordering::SeqCst);
    });
    server.await
}
