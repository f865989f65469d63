//! Dev-only helpers: [`TestApp`] runs the real server on port 0 over a fresh SQLite file and
//! speaks HTTP to it; assertion helpers read OperationOutcomes. Use only from `tests/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use careplane_api::{AppState, Settings};
use careplane_fhir::Definitions;
use careplane_store::{PoolSettings, PostgresStore, SqliteStore, Store};
pub use careplane_testdb::TestDatabase;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const FHIR_JSON: &str = "application/fhir+json";

pub struct TestApp {
    /// e.g. `http://127.0.0.1:41234/fhir`
    pub base: String,
    /// e.g. `http://127.0.0.1:41235`
    pub admin: String,
    pub client: reqwest::Client,
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(|_| {}).await
    }

    /// Binds both listeners before serving, so requests can be sent at once (no sleeps).
    pub async fn spawn_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("careplane.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        store.migrate().await.unwrap();
        let mut settings = Settings::default();
        configure(&mut settings);
        let state = AppState::new(Arc::new(store), Definitions::r4().unwrap(), settings);
        let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!(
            "http://{}{}",
            api.local_addr().unwrap(),
            state.settings.base_path
        );
        let admin_url = format!("http://{}", admin.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = rx.await;
        };
        let server = tokio::spawn(careplane_api::serve(
            api,
            admin,
            state.clone(),
            shutdown,
            Duration::from_secs(5),
        ));
        TestApp {
            base,
            admin: admin_url,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(32)
                .build()
                .unwrap(),
            state,
            shutdown: Some(tx),
            server: Some(server),
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path).send().await.unwrap()
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.send_json(Method::POST, path, body).await
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> Response {
        self.send_json(Method::PUT, path, body).await
    }

    pub async fn send_json(&self, method: Method, path: &str, body: &Value) -> Response {
        self.request(method, path)
            .header("content-type", FHIR_JSON)
            .body(serde_json::to_vec(body).unwrap())
            .send()
            .await
            .unwrap()
    }

    /// Creates a resource and returns (id, body) after asserting 201.
    pub async fn create(&self, body: &Value) -> (String, Value) {
        let rt = body["resourceType"].as_str().unwrap();
        let response = self.post_json(rt, body).await;
        assert_eq!(response.status(), 201, "create {rt}");
        let created: Value = response.json().await.unwrap();
        (created["id"].as_str().unwrap().to_string(), created)
    }

    /// Stops the server and waits for the drain to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Reads a response that must be an OperationOutcome with `status`; returns it.
pub async fn expect_outcome(response: Response, status: u16) -> Value {
    assert_eq!(
        response.status().as_u16(),
        status,
        "status of {}",
        response.url()
    );
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let text = response.text().await.unwrap();
    assert!(
        content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/fhir+json")),
        "content type {content_type:?} for {text}"
    );
    let outcome: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{outcome}");
    outcome
}

/// Every `expression` named by an outcome's issues.
pub fn issue_paths(outcome: &Value) -> Vec<String> {
    outcome["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["expression"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e.as_str().map(str::to_string))
        .collect()
}

/// The workspace root (for reading `target/` caches and `../shared`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// `../shared` next to the workspace, or `CAREPLANE_SHARED_DIR`.
pub fn shared_dir() -> PathBuf {
    std::env::var("CAREPLANE_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("../shared"))
}

/// Resources of the Synthea transaction bundles in `shared/data/synthea-r4`.
pub fn synthea_resources() -> Vec<(String, Value)> {
    use std::io::Read;
    let dir = shared_dir().join("data/synthea-r4");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".json.gz"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&file).unwrap())
            .read_to_end(&mut text)
            .unwrap();
        let bundle: Value = serde_json::from_slice(&text).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        for entry in bundle["entry"].as_array().unwrap() {
            out.push((name.clone(), entry["resource"].clone()));
        }
    }
    out
}

/// A migrated SQLite store in a fresh directory (kept alive by the returned guard).
pub async fn sqlite_store() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("careplane.db").display());
    let store = SqliteStore::open(&url).await.unwrap();
    store.migrate().await.unwrap();
    (Arc::new(store), dir)
}

/// A PostgreSQL database of the test's own, cloned from a template migrated once per schema.
pub async fn migrated_postgres_db() -> TestDatabase {
    let key = format!("migrated_{}", PostgresStore::schema_fingerprint());
    TestDatabase::from_template(&key, |url| async move {
        let store = PostgresStore::open(&url, PoolSettings::default())
            .await
            .map_err(|e| e.to_string())?;
        store.migrate().await.map_err(|e| e.to_string())?;
        store.close().await;
        Ok(())
    })
    .await
    .unwrap()
}

/// A store with its own pool on `db` (one per simulated replica).
pub async fn postgres_store(db: &TestDatabase) -> Arc<dyn Store> {
    Arc::new(
        PostgresStore::open(db.url(), PoolSettings::default())
            .await
            .unwrap(),
    )
}
