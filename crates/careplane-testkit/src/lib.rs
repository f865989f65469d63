//! Dev-only helpers: [`TestApp`] runs the real server on port 0 over a fresh SQLite file and
//! speaks HTTP to it (or, with `CAREPLANE_TEST_REPLICAS=N`, N replicas on one PostgreSQL
//! database behind nginx); assertion helpers read OperationOutcomes. Use only from `tests/`.

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
    /// e.g. `http://127.0.0.1:41234/fhir` (nginx in replica mode)
    pub base: String,
    /// e.g. `http://127.0.0.1:41235` (replica 0's in replica mode)
    pub admin: String,
    pub client: reqwest::Client,
    /// Replica 0's state in replica mode; its store is the database every replica shares.
    pub state: AppState,
    servers: Vec<Running>,
    nginx: Option<Nginx>,
    /// Dropped after the servers and nginx (field order): the database goes last.
    _db: Option<TestDatabase>,
    _dir: tempfile::TempDir,
}

struct Running {
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// Replicas [`TestApp`] starts: `CAREPLANE_TEST_REPLICAS` (N > 1 means N replicas on one
/// PostgreSQL database behind nginx), else 1 (one in-process server over SQLite).
pub fn replicas() -> usize {
    std::env::var("CAREPLANE_TEST_REPLICAS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1)
        .max(1)
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(|_| {}).await
    }

    /// Binds both listeners before serving, so requests can be sent at once (no sleeps).
    ///
    /// With `CAREPLANE_TEST_REPLICAS=N` (N > 1): N servers, each with its own store pool and
    /// state (nothing in memory shared but what `configure` put into `Settings`, cloned), on
    /// one PostgreSQL database, behind nginx round robin, so a follow-up request lands on
    /// another replica than the one that answered the first.
    pub async fn spawn_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
        let mut settings = Settings::default();
        configure(&mut settings);
        let dir = tempfile::tempdir().unwrap();
        let n = replicas();
        let (stores, db): (Vec<Arc<dyn Store>>, _) = if n > 1 {
            let db = migrated_postgres_db().await;
            // Small pools: N per test and two tests at a time must fit max_connections.
            let pool = PoolSettings {
                max_connections: 8,
                ..PoolSettings::default()
            };
            let mut stores = Vec::new();
            for _ in 0..n {
                let store = PostgresStore::open(db.url(), pool).await.unwrap();
                stores.push(Arc::new(store) as Arc<dyn Store>);
            }
            (stores, Some(db))
        } else {
            let url = format!("sqlite://{}", dir.path().join("careplane.db").display());
            let store = SqliteStore::open(&url).await.unwrap();
            store.migrate().await.unwrap();
            (vec![Arc::new(store) as Arc<dyn Store>], None)
        };
        let mut servers = Vec::new();
        let mut api_addrs = Vec::new();
        let mut first: Option<(AppState, String)> = None;
        for (i, store) in stores.into_iter().enumerate() {
            if i > 0 {
                // Real replicas never start in the same millisecond: whatever a process derives
                // from its start time must differ here too.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let state = AppState::new(store, Definitions::r4().unwrap(), settings.clone());
            let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
            api_addrs.push(api.local_addr().unwrap());
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
            servers.push(Running {
                shutdown: Some(tx),
                server: Some(server),
            });
            first.get_or_insert((state, admin_url));
        }
        let (state, admin_url) = first.unwrap();
        let nginx = (n > 1).then(|| Nginx::start(&api_addrs));
        let front = match &nginx {
            Some(nginx) => format!("127.0.0.1:{}", nginx.port),
            None => api_addrs[0].to_string(),
        };
        let base = format!("http://{front}{}", state.settings.base_path);
        TestApp {
            base,
            admin: admin_url,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(32)
                .build()
                .unwrap(),
            state,
            servers,
            nginx,
            _db: db,
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

    /// Stops the server(s) and waits for the drain to finish.
    pub async fn stop(mut self) {
        // The proxy first, as a load balancer would stop routing before the replicas go.
        self.nginx.take();
        for running in &mut self.servers {
            if let Some(tx) = running.shutdown.take() {
                let _ = tx.send(());
            }
        }
        for running in &mut self.servers {
            if let Some(server) = running.server.take() {
                server.await.unwrap().unwrap();
            }
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.nginx.take();
        for running in &mut self.servers {
            if let Some(tx) = running.shutdown.take() {
                let _ = tx.send(());
            }
        }
    }
}

/// nginx on loopback in front of the replicas: round robin, no retries on another upstream (a
/// retried request would hide which replica failed), otherwise as transparent as it gets.
struct Nginx {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(upstreams: &[std::net::SocketAddr]) -> Nginx {
        let binary = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("nginx");
        let dir = tempfile::tempdir().unwrap();
        // nginx cannot listen on port 0: take a free port and give it up just before.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.path().display();
        let servers: String = upstreams
            .iter()
            .map(|a| format!("    server {a};\n"))
            .collect();
        // One process (no master), so killing the child leaves no workers behind. No body
        // size limit and no buffering either way: the replicas' own limits, deadlines and
        // streaming are what the tests check.
        let mut config = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             client_max_body_size 0;\n  merge_slashes off;\n\
             large_client_header_buffers 8 64k;\n\
             upstream careplane {{\n{servers}    keepalive 32;\n  }}\n\
             server {{\n    listen 127.0.0.1:{port};\n    location / {{\n\
                   proxy_pass http://careplane;\n      proxy_next_upstream off;\n\
                   proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n\
                   proxy_set_header Host $http_host;\n\
                   proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
                   proxy_request_buffering off;\n      proxy_buffering off;\n\
                   proxy_read_timeout 300s;\n    }}\n  }}\n}}\n"
        );
        if is_root() {
            // Otherwise nginx switches to `nobody`, who cannot write the temp dirs.
            config = format!("user root;\n{config}");
        }
        std::fs::write(dir.path().join("nginx.conf"), config).unwrap();
        let mut child = std::process::Command::new(binary)
            .args([
                "-p",
                &d.to_string(),
                "-c",
                "nginx.conf",
                "-e",
                &format!("{d}/error.log"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "CAREPLANE_TEST_REPLICAS needs nginx ({binary}: {e}); \
                     apt-get install nginx-light, or unset CAREPLANE_TEST_REPLICAS"
                )
            });
        let log = || std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
        for _ in 0..200 {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("nginx exited with {status}: {}", log());
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Nginx {
                    child,
                    port,
                    _dir: dir,
                };
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        panic!("nginx did not listen on {port} within 5 s: {}", log());
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
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
