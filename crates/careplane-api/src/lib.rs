//! Careplane's FHIR REST API over HTTP (axum).
//!
//! [`router`] builds the FHIR application (routes in `routes.rs`); [`serve`] runs it and the
//! admin listener until a shutdown future resolves, then flips readiness and drains in-flight
//! requests. Tests pass a oneshot as the shutdown; the binary passes SIGTERM/SIGINT.

pub mod admin;
pub mod bundle;
mod condition;
pub mod error;
pub mod extract;
pub mod handlers;
pub mod response;
pub mod routes;
pub mod settings;
pub mod state;

use std::future::{Future, IntoFuture};
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

pub use error::ApiError;
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
    app.layer(axum::middleware::from_fn(move |request, next| {
        with_deadline(deadline, request, next)
    }))
    .layer(DefaultBodyLimit::disable())
    .layer(CatchPanicLayer::custom(|_| {
        ApiError::Internal("handler panicked".into()).into_response()
    }))
    .layer(TraceLayer::new_for_http().make_span_with(request_span))
    .with_state(state)
}

/// Request spans name the matched route (`/fhir/{type}/{id}`), never the raw path or query,
/// which carry ids and search values (PHI).
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    tracing::info_span!("request", method = %request.method(), route)
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

/// Serves the API and admin listeners until `shutdown` resolves; then readiness fails at once
/// and in-flight requests get up to `drain` to finish.
pub async fn serve(
    api: TcpListener,
    admin: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let api_server = tokio::spawn(
        axum::serve(api, router(state.clone()))
            .with_graceful_shutdown(stopped(stop_rx.clone()))
            .into_future(),
    );
    let admin_server = tokio::spawn(
        axum::serve(admin, admin::admin_routes(state.clone()))
            .with_graceful_shutdown(stopped(stop_rx))
            .into_future(),
    );
    shutdown.await;
    state.draining.store(true, Ordering::SeqCst);
    tracing::info!(
        drain_seconds = drain.as_secs(),
        "shutdown requested: readiness failing, draining"
    );
    let _ = stop_tx.send(true);
    match tokio::time::timeout(drain, api_server).await {
        Ok(Ok(result)) => result?,
        Ok(Err(join)) => tracing::error!(error = %join, "API server task failed"),
        Err(_) => tracing::warn!("drain deadline reached with requests still in flight"),
    }
    admin_server.abort();
    Ok(())
}
