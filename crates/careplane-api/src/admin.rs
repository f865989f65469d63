//! The admin listener (separate port): liveness and readiness probes for Kubernetes.
//! Metrics join here with the runtime issue.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::state::AppState;

pub const LIVEZ: &str = "/livez";
pub const READYZ: &str = "/readyz";

/// A readiness check slower than this counts as not ready.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub fn admin_routes(state: AppState) -> Router {
    Router::new()
        .route(LIVEZ, get(livez))
        .route(READYZ, get(readyz))
        .with_state(state)
}

/// Alive means the process serves HTTP; it never touches the database, so a database outage
/// does not get healthy pods restarted.
async fn livez() -> Response {
    Json(json!({"status": "pass"})).into_response()
}

/// Ready means: not draining, and the database answers.
async fn readyz(State(state): State<AppState>) -> Response {
    if state.is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "fail", "reason": "draining"})),
        )
            .into_response();
    }
    match tokio::time::timeout(READY_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => {
            Json(json!({"status": "pass", "database": state.store.backend()})).into_response()
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: database ping failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "fail", "reason": "database"})),
            )
                .into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "fail", "reason": "database timeout"})),
        )
            .into_response(),
    }
}
