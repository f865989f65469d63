//! The admin listener (separate port): Kubernetes probes and the Prometheus scrape. Its requests
//! are not counted in the HTTP metrics and carry no request id: they are not API traffic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use careplane_store::SchemaVersion;
use serde_json::json;

use crate::metrics::{MetricsRenderer, StoreGauges};
use crate::state::AppState;

pub const STARTUPZ: &str = "/startupz";
pub const LIVEZ: &str = "/livez";
pub const READYZ: &str = "/readyz";
pub const METRICS: &str = "/metrics";

/// A database check slower than this counts as not ready (the kubelet's probe timeout is 3 s).
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// Database checks are reused this long, so a burst of probes (kubelet, load balancer, a
/// healthcheck loop) costs the database at most one round trip per second.
const READY_CACHE: Duration = Duration::from_secs(1);

#[derive(Clone)]
struct Admin {
    app: AppState,
    metrics: Option<MetricsRenderer>,
    gauges: Arc<StoreGauges>,
    readiness: Arc<tokio::sync::Mutex<Option<(Instant, DatabaseCheck)>>>,
    /// The last Redis check (only when Redis is required), cached like the database's.
    redis_readiness: Arc<tokio::sync::Mutex<Option<(Instant, bool)>>>,
}

/// `metrics` renders the registry for `GET /metrics`; without it the route does not exist.
pub fn admin_routes(state: AppState, metrics: Option<MetricsRenderer>) -> Router {
    let has_metrics = metrics.is_some();
    let admin = Admin {
        app: state,
        metrics,
        gauges: Arc::default(),
        readiness: Arc::default(),
        redis_readiness: Arc::default(),
    };
    let router = Router::new()
        .route(STARTUPZ, get(startupz))
        .route(LIVEZ, get(livez))
        .route(READYZ, get(readyz));
    let router = if has_metrics {
        router.route(METRICS, get(scrape))
    } else {
        router
    };
    router.with_state(admin)
}

fn fail(reason: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "fail", "reason": reason})),
    )
        .into_response()
}

/// Started means the listeners serve; until then Kubernetes holds off liveness checks.
async fn startupz(State(admin): State<Admin>) -> Response {
    if admin.app.is_serving() {
        Json(json!({"status": "pass"})).into_response()
    } else {
        fail("starting")
    }
}

/// Alive means the process serves HTTP; it never touches the database, so a database outage
/// does not get healthy pods restarted.
async fn livez() -> Response {
    Json(json!({"status": "pass"})).into_response()
}

#[derive(Debug, Clone, Copy)]
enum DatabaseCheck {
    Ready(SchemaVersion),
    Unreachable,
    TimedOut,
    /// Reachable, but the migrations table is missing or unreadable.
    SchemaUnknown,
    Behind(SchemaVersion),
}

/// Ready means: not draining (checked on every call, so a SIGTERM shows at once), the database
/// answers within [`READY_TIMEOUT`], and its migrations are at least this binary's; and, only
/// when Redis is required (`CAREPLANE_REDIS_REQUIRED`), Redis answers a ping.
async fn readyz(State(admin): State<Admin>) -> Response {
    if admin.app.is_draining() {
        return fail("draining");
    }
    let database = database_check(&admin).await;
    if matches!(database, DatabaseCheck::Ready(_)) && !redis_check(&admin).await {
        return fail("redis");
    }
    match database {
        DatabaseCheck::Ready(schema) => Json(json!({
            "status": "pass",
            "database": admin.app.store.backend(),
            "schema": schema.applied,
        }))
        .into_response(),
        DatabaseCheck::Unreachable => fail("database"),
        DatabaseCheck::TimedOut => fail("database timeout"),
        DatabaseCheck::SchemaUnknown => fail("migrations"),
        DatabaseCheck::Behind(schema) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "fail",
                "reason": "migrations",
                "applied": schema.applied,
                "expected": schema.expected,
            })),
        )
            .into_response(),
    }
}

/// The cached database check; concurrent probes wait for one check instead of each running it.
async fn database_check(admin: &Admin) -> DatabaseCheck {
    let mut cached = admin.readiness.lock().await;
    if let Some((at, check)) = *cached {
        if at.elapsed() < READY_CACHE {
            return check;
        }
    }
    let store = &admin.app.store;
    let check = match tokio::time::timeout(READY_TIMEOUT, async {
        if let Err(e) = store.ping().await {
            tracing::warn!(error = %e, "readiness: database ping failed");
            return DatabaseCheck::Unreachable;
        }
        match store.schema_version().await {
            Ok(schema) if schema.is_current() => DatabaseCheck::Ready(schema),
            Ok(schema) => {
                tracing::warn!(
                    applied = schema.applied,
                    expected = schema.expected,
                    "readiness: database migrations are behind this release"
                );
                DatabaseCheck::Behind(schema)
            }
            Err(e) => {
                tracing::warn!(error = %e, "readiness: cannot read the applied migrations");
                DatabaseCheck::SchemaUnknown
            }
        }
    })
    .await
    {
        Ok(check) => check,
        Err(_) => {
            tracing::warn!("readiness: database check timed out");
            DatabaseCheck::TimedOut
        }
    };
    *cached = Some((Instant::now(), check));
    check
}

/// Whether the required Redis answers (always true when it is not required), cached for
/// [`READY_CACHE`]. Optional Redis never counts: every Redis use has a fallback.
async fn redis_check(admin: &Admin) -> bool {
    let Some(redis) = &admin.app.settings.redis_required else {
        return true;
    };
    let mut cached = admin.redis_readiness.lock().await;
    if let Some((at, ok)) = *cached {
        if at.elapsed() < READY_CACHE {
            return ok;
        }
    }
    let ok = tokio::time::timeout(READY_TIMEOUT, redis.ping())
        .await
        .unwrap_or(false);
    if !ok {
        tracing::warn!(
            "readiness: Redis is required (CAREPLANE_REDIS_REQUIRED) and does not answer"
        );
    }
    *cached = Some((Instant::now(), ok));
    ok
}

/// Prometheus text format; store gauges are refreshed first (at most once a second).
async fn scrape(State(admin): State<Admin>) -> Response {
    let Some(render) = admin.metrics else {
        return StatusCode::NOT_FOUND.into_response();
    };
    admin.gauges.refresh(admin.app.store.as_ref()).await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(),
    )
        .into_response()
}
