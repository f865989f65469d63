//! Starting the server with [`ServeOptions`] and a store of the test's choosing (unmigrated,
//! unreachable), for the lifecycle and metrics tests; everything else uses `TestApp`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use careplane_api::metrics::{
    MetricsRenderer, HTTP_DURATION_BUCKETS, HTTP_REQUEST_DURATION_SECONDS,
};
use careplane_api::{AppState, ServeOptions, Settings};
use careplane_fhir::Definitions;
use careplane_store::{PoolSettings, PostgresStore, SqliteStore, Store};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub struct Running {
    /// e.g. `http://127.0.0.1:41234/fhir`
    pub base: String,
    /// e.g. `http://127.0.0.1:41235`
    pub admin: String,
    pub client: reqwest::Client,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

impl Running {
    pub async fn get_admin(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.admin))
            .send()
            .await
            .unwrap()
    }

    /// `/metrics` as text, asserting 200.
    pub async fn scrape(&self) -> String {
        let response = self.get_admin("/metrics").await;
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    /// Sends the shutdown signal; [`Running::finished`] waits for the drain.
    pub fn signal_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub async fn finished(mut self) -> std::io::Result<()> {
        self.signal_shutdown();
        self.server.take().unwrap().await.unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.signal_shutdown();
    }
}

/// The process-wide Prometheus recorder, installed once per test process (nextest runs every
/// test in a process of its own, so tests do not see each other's series).
pub fn renderer() -> MetricsRenderer {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    let handle = HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(HTTP_REQUEST_DURATION_SECONDS.to_string()),
                    HTTP_DURATION_BUCKETS,
                )
                .unwrap()
                .install_recorder()
                .unwrap()
        })
        .clone();
    Arc::new(move || handle.render())
}

/// A fresh SQLite database, migrated or not.
pub async fn sqlite(migrated: bool) -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("careplane.db").display());
    let store = SqliteStore::open(&url).await.unwrap();
    if migrated {
        store.migrate().await.unwrap();
    }
    (Arc::new(store), dir)
}

/// A PostgreSQL store whose server refuses connections (nothing listens on port 1); the pool
/// connects lazily, so opening succeeds and every query fails.
pub async fn unreachable_postgres() -> Arc<dyn Store> {
    let settings = PoolSettings {
        acquire_timeout: Duration::from_millis(500),
        ..PoolSettings::default()
    };
    Arc::new(
        PostgresStore::open("postgres://careplane@127.0.0.1:1/careplane", settings)
            .await
            .unwrap(),
    )
}

pub async fn spawn(
    store: Arc<dyn Store>,
    dir: Option<tempfile::TempDir>,
    options: ServeOptions,
) -> Running {
    let state = AppState::new(store, Definitions::r4().unwrap(), Settings::default());
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!(
        "http://{}{}",
        api.local_addr().unwrap(),
        state.settings.base_path
    );
    let admin_url = format!("http://{}", admin.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(careplane_api::serve_with(
        api,
        admin,
        state.clone(),
        async move {
            let _ = stopped.await;
        },
        options,
    ));
    Running {
        base,
        admin: admin_url,
        client: reqwest::Client::new(),
        state,
        stop: Some(stop),
        server: Some(server),
        _dir: dir,
    }
}

/// A migrated SQLite server with `/metrics`.
pub async fn with_metrics() -> Running {
    let (store, dir) = sqlite(true).await;
    let options = ServeOptions {
        drain_timeout: Duration::from_secs(5),
        metrics: Some(renderer()),
        ..ServeOptions::default()
    };
    spawn(store, Some(dir), options).await
}
