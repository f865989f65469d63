//! Dev-only: every test gets its own PostgreSQL database on a real server, cloned from a
//! template that is prepared once, so tests (one process each under cargo-nextest) run in
//! parallel without sharing state.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use careplane_testdb::TestDatabase;
//!
//! // Put a schema version in the key: an existing template is reused as is, never re-initialised.
//! let db = TestDatabase::from_template("store_v1", |url| async move {
//!     let pool = sqlx::PgPool::connect(&url).await.map_err(|e| e.to_string())?;
//!     sqlx::raw_sql("CREATE TABLE t (id int)").execute(&pool).await.map_err(|e| e.to_string())?;
//!     pool.close().await;
//!     Ok(())
//! })
//! .await?;
//! let pool = sqlx::PgPool::connect(db.url()).await?;
//! # Ok(()) }
//! ```
//!
//! Without `CAREPLANE_TEST_DATABASE_URL` a throwaway cluster is started in
//! `target/careplane-test-pg` and left running for later test processes. Stop it (e.g. before
//! `cargo clean`) with `pg_ctl -D target/careplane-test-pg/data stop`, prefixed with
//! `runuser -u postgres --` when tests run as root (the cluster then belongs to `postgres`).
//!
//! Test databases of killed test processes (no `Drop`) stay behind; they are named
//! `careplane_test_*` and safe to drop when no tests are running.
//!
//! Tests that take the database away (outages) start an [`OwnedCluster`] of their own instead,
//! which they can stop and start again.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use sqlx::{Connection, PgConnection};

const ENV_URL: &str = "CAREPLANE_TEST_DATABASE_URL";
/// Any fixed key works; it only has to be the same in every test process so they serialise.
const TEMPLATE_LOCK: i64 = 0x6361_7265_706c_616e;
const TEMPLATE_PREFIX: &str = "careplane_tmpl_";
const BUILDING_PREFIX: &str = "careplane_building_";
const TEST_PREFIX: &str = "careplane_test_";

/// Why a test database could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum TestDbError {
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("invalid database URL {0:?}")]
    Url(String),
    #[error("template initialisation failed: {0}")]
    Init(String),
    #[error("throwaway PostgreSQL cluster: {0}")]
    Cluster(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Admin URL of the PostgreSQL server tests use: `CAREPLANE_TEST_DATABASE_URL` when set (e.g.
/// postgres://postgres@127.0.0.1:5432/test), otherwise a throwaway cluster started from the
/// installed binaries and shared by all test processes of this checkout.
pub async fn admin_url() -> Result<String, TestDbError> {
    admin_url_from(std::env::var(ENV_URL).ok()).await
}

/// `admin_url` with the environment value passed in, so tests need not mutate the process env.
async fn admin_url_from(env: Option<String>) -> Result<String, TestDbError> {
    match env.filter(|url| !url.trim().is_empty()) {
        Some(url) => Ok(url),
        None => throwaway_cluster_url().await,
    }
}

/// A database of its own for one test, cloned from a template that `init` prepared once (per
/// `template_key`) so tests run in parallel without sharing state. Dropped
/// (DROP DATABASE ... WITH (FORCE)) when the guard drops.
#[derive(Debug)]
pub struct TestDatabase {
    url: String,
    name: String,
    admin: String,
}

impl TestDatabase {
    /// Clones `careplane_tmpl_<key>`, first creating it with `init(template_url)` if no process
    /// has yet; `init` should close its connections (they are terminated anyway).
    pub async fn from_template<F, Fut>(template_key: &str, init: F) -> Result<Self, TestDbError>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let admin = admin_url().await?;
        let template = template_name(template_key);
        let name = format!("{TEST_PREFIX}{}", uuid::Uuid::new_v4().simple());
        let url = with_database(&admin, &name)?;
        let mut conn = PgConnection::connect(&admin).await?;
        // Fast path without the lock: the final name only ever appears fully initialised.
        if !database_exists(&mut conn, &template).await? {
            lock_template_creation(&mut conn, true).await?;
            let built = build_template(&mut conn, &admin, &template, init).await;
            let unlocked = lock_template_creation(&mut conn, false).await;
            built.and(unlocked.map_err(TestDbError::from))?;
        }
        clone_template(&mut conn, &name, &template).await?;
        let _ = conn.close().await;
        Ok(Self { url, name, admin })
    }

    /// Connection URL of this test's database, usable with `sqlx::PgPool::connect`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Database name (`careplane_test_<uuid>`), e.g. for log messages.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    /// Runs on its own thread and runtime because drop cannot await and may happen inside (or
    /// outside) any kind of tokio runtime; joined so the database is gone when drop returns.
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let worker = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let _ = drop_database(&mut conn, &name).await;
                    let _ = conn.close().await;
                }
            });
        });
        let _ = worker.join();
    }
}

/// `careplane_tmpl_` + key reduced to `[a-z0-9_]`, within PostgreSQL's 63-byte name limit.
fn template_name(key: &str) -> String {
    let key: String = key
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(63 - TEMPLATE_PREFIX.len())
        .collect();
    format!("{TEMPLATE_PREFIX}{key}")
}

/// The admin URL pointing at database `name` instead; user, host, port and options are kept.
fn with_database(admin: &str, name: &str) -> Result<String, TestDbError> {
    let mut url = url::Url::parse(admin).map_err(|_| TestDbError::Url(admin.to_owned()))?;
    if url.cannot_be_a_base() {
        return Err(TestDbError::Url(admin.to_owned()));
    }
    url.set_path(&format!("/{name}"));
    // A `dbname` query parameter would override the path for sqlx.
    let query: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(key, _)| key != "dbname")
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    url.set_query(None);
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    Ok(url.into())
}

async fn database_exists(conn: &mut PgConnection, name: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(conn)
        .await
}

async fn lock_template_creation(conn: &mut PgConnection, lock: bool) -> Result<(), sqlx::Error> {
    let sql = if lock {
        "SELECT pg_advisory_lock($1)"
    } else {
        "SELECT pg_advisory_unlock($1)"
    };
    sqlx::query(sql)
        .bind(TEMPLATE_LOCK)
        .execute(conn)
        .await
        .map(drop)
}

/// Called with the advisory lock held: initialises under a temporary name, then renames, so
/// a half-initialised template is never visible (or cloned) under its final name.
async fn build_template<F, Fut>(
    conn: &mut PgConnection,
    admin: &str,
    template: &str,
    init: F,
) -> Result<(), TestDbError>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    if database_exists(conn, template).await? {
        return Ok(()); // another process won the race
    }
    // Only lock holders create these, so any that exist were left by a process that died.
    let stale: Vec<String> =
        sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE starts_with(datname, $1)")
            .bind(BUILDING_PREFIX)
            .fetch_all(&mut *conn)
            .await?;
    for name in stale {
        drop_database(conn, &name).await?;
    }
    let building = format!("{BUILDING_PREFIX}{}", uuid::Uuid::new_v4().simple());
    let url = with_database(admin, &building)?;
    sqlx::raw_sql(&format!(r#"CREATE DATABASE "{building}""#))
        .execute(&mut *conn)
        .await?;
    if let Err(e) = init(url).await {
        let _ = drop_database(conn, &building).await;
        return Err(TestDbError::Init(e));
    }
    // Leftover sessions would block both the rename and every later clone.
    for _ in 0..50 {
        let remaining: i64 = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1",
        )
        .bind(&building)
        .fetch_one(&mut *conn)
        .await?;
        if remaining == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rename = format!(r#"ALTER DATABASE "{building}" RENAME TO "{template}""#);
    sqlx::raw_sql(&rename).execute(&mut *conn).await?;
    Ok(())
}

/// CREATE DATABASE ... TEMPLATE fails while anyone is connected to the template (e.g. a
/// session still being terminated), so retry that case a few times.
async fn clone_template(
    conn: &mut PgConnection,
    name: &str,
    template: &str,
) -> Result<(), TestDbError> {
    let sql = format!(r#"CREATE DATABASE "{name}" TEMPLATE "{template}""#);
    let mut attempt = 0;
    loop {
        match sqlx::raw_sql(&sql).execute(&mut *conn).await {
            Ok(_) => return Ok(()),
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("55006") && attempt < 10 =>
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn drop_database(conn: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    let sql = format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#);
    sqlx::raw_sql(&sql).execute(conn).await.map(drop)
}

static CLUSTER_URL: OnceLock<String> = OnceLock::new();

/// Starts (or reuses) the cluster in `<target>/careplane-test-pg`; a file lock makes the many
/// parallel test processes agree on a single cluster.
async fn throwaway_cluster_url() -> Result<String, TestDbError> {
    if let Some(url) = CLUSTER_URL.get() {
        return Ok(url.clone());
    }
    let port = match tokio::task::spawn_blocking(ensure_cluster).await {
        Ok(port) => port?,
        Err(e) => return Err(TestDbError::Cluster(e.to_string())),
    };
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    Ok(CLUSTER_URL.get_or_init(|| url).clone())
}

/// The cluster's port, starting it first unless it is already running.
fn ensure_cluster() -> Result<u16, TestDbError> {
    let dir = target_dir().join("careplane-test-pg");
    if let Some(port) = running_port(&dir) {
        return Ok(port); // common case: no lock needed to reuse
    }
    std::fs::create_dir_all(&dir)?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))?;
    lock.lock()?; // released when `lock` is dropped, also if this process dies
    match running_port(&dir) {
        Some(port) => Ok(port), // another process started it while we waited
        None => start_cluster(&dir),
    }
}

/// Port of our running cluster: the port file matches postmaster.pid and the port accepts TCP.
/// Deliberately not a login: a busy server ("too many clients") must not count as down.
fn running_port(dir: &Path) -> Option<u16> {
    let port = std::fs::read_to_string(dir.join("port"))
        .ok()?
        .trim()
        .parse::<u16>()
        .ok()?;
    let pid_file = std::fs::read_to_string(dir.join("data/postmaster.pid")).ok()?;
    if pid_file.lines().nth(3)?.trim() != port.to_string() {
        return None;
    }
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .ok()
        .map(|_| port)
}

/// Runs under the file lock: initdb once, then `pg_ctl start` on a free port (written to `port`).
fn start_cluster(dir: &Path) -> Result<u16, TestDbError> {
    let (bin, as_root, data) = (postgres_bindir()?, is_root(), dir.join("data"));
    if as_root {
        give_to_postgres(dir)?;
    }
    let initialised = dir.join("initdb.done");
    if !initialised.exists() {
        match std::fs::remove_dir_all(&data) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        initdb(&bin, as_root, dir)?;
        std::fs::write(&initialised, "")?;
    }
    let port = free_port()?;
    // Shared by every test process and never used to test durability, so commits need not wait.
    pg_ctl_start(&bin, as_root, dir, port, "-c synchronous_commit=off")?;
    std::fs::write(dir.join("port"), port.to_string())?;
    Ok(port)
}

/// initdb and postgres refuse to run as root, so a cluster run by root belongs to `postgres`.
fn give_to_postgres(dir: &Path) -> Result<(), TestDbError> {
    run(
        Command::new("chown").arg("-R").arg("postgres:").arg(dir),
        dir,
    )
}

/// A fresh cluster in `dir/data`: trust authentication, superuser `postgres`.
fn initdb(bin: &Path, as_root: bool, dir: &Path) -> Result<(), TestDbError> {
    let mut initdb = as_postgres(as_root, &bin.join("initdb"));
    initdb.arg("-D").arg(dir.join("data")).args([
        "-A",
        "trust",
        "-U",
        "postgres",
        "-E",
        "UTF8",
        "--locale=C",
        "--no-sync",
    ]);
    run(&mut initdb, dir)
}

fn free_port() -> Result<u16, TestDbError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `pg_ctl start` of `dir/data` on `port`, waiting until it accepts connections; the server
/// log goes to `dir/log`. `extra` adds server options.
fn pg_ctl_start(
    bin: &Path,
    as_root: bool,
    dir: &Path,
    port: u16,
    extra: &str,
) -> Result<(), TestDbError> {
    // TCP only: a Unix socket under a deep checkout path could exceed the 107-byte limit.
    let options = format!(
        "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off \
         -c full_page_writes=off -c max_connections=300 {extra}"
    );
    let mut start = as_postgres(as_root, &bin.join("pg_ctl"));
    start
        .arg("-D")
        .arg(dir.join("data"))
        .arg("-l")
        .arg(dir.join("log"))
        .arg("-o")
        .arg(options)
        .args(["-w", "start"]);
    // A crash leaves a stale postmaster.pid, which postgres itself cleans up; a server still
    // running on a port we lost track of makes this fail (stop it, see the crate docs).
    run(&mut start, dir).map_err(|e| {
        TestDbError::Cluster(format!("{e}\nserver log: {}", dir.join("log").display()))
    })
}

fn pg_ctl_stop(bin: &Path, as_root: bool, dir: &Path, mode: &str) -> Result<(), TestDbError> {
    let mut stop = as_postgres(as_root, &bin.join("pg_ctl"));
    stop.arg("-D")
        .arg(dir.join("data"))
        .args(["-m", mode, "-w", "stop"]);
    run(&mut stop, dir)
}

/// A PostgreSQL cluster of one test's own, which the test may stop and start again (outage
/// tests). Independent of `CAREPLANE_TEST_DATABASE_URL`: it needs the installed binaries (see
/// [`OwnedCluster::binaries_installed`]). Stopped on drop; `dir` is left for its owner to remove,
/// so drop the cluster before the directory (declare the directory first).
///
/// Unlike the shared cluster, commits are synchronous (`synchronous_commit` stays on), so an
/// acknowledged commit survives a server stop or crash, as in production; only `fsync` is off,
/// which matters for an operating system crash alone.
#[derive(Debug)]
pub struct OwnedCluster {
    dir: PathBuf,
    bin: PathBuf,
    as_root: bool,
    port: u16,
    running: bool,
}

impl OwnedCluster {
    /// Whether PostgreSQL's binaries (initdb, pg_ctl) are installed, so tests can skip, saying
    /// why, when they are not.
    pub fn binaries_installed() -> bool {
        postgres_bindir().is_ok()
    }

    /// Initialises a cluster in `dir/data` (`dir` should be empty, e.g. a fresh tempdir) and
    /// starts it on a free port; returns once it accepts connections. Run as root, `dir` is
    /// handed to the `postgres` user, so its parents must let that user through (a tempdir of
    /// its own does; a subdirectory of one does not).
    pub fn start(dir: &Path) -> Result<Self, TestDbError> {
        let (bin, as_root) = (postgres_bindir()?, is_root());
        std::fs::create_dir_all(dir)?;
        if as_root {
            give_to_postgres(dir)?;
        }
        initdb(&bin, as_root, dir)?;
        let mut cluster = OwnedCluster {
            dir: dir.to_path_buf(),
            bin,
            as_root,
            port: free_port()?,
            running: false,
        };
        cluster.start_again()?;
        Ok(cluster)
    }

    /// Superuser URL of the `postgres` database; the same across stops and starts.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `pg_ctl stop -m fast`: sessions are disconnected at once, committed work is kept; returns
    /// when the server is gone (the port refuses connections). A no-op when stopped.
    pub fn stop(&mut self) -> Result<(), TestDbError> {
        if self.running {
            pg_ctl_stop(&self.bin, self.as_root, &self.dir, "fast")?;
            self.running = false;
        }
        Ok(())
    }

    /// Starts the stopped cluster again on the same port; returns once it accepts connections.
    /// A no-op when running.
    pub fn start_again(&mut self) -> Result<(), TestDbError> {
        if !self.running {
            pg_ctl_start(&self.bin, self.as_root, &self.dir, self.port, "")?;
            self.running = true;
        }
        Ok(())
    }
}

impl Drop for OwnedCluster {
    /// Immediate mode: the data is thrown away with the directory, no checkpoint needed.
    fn drop(&mut self) {
        if self.running {
            let _ = pg_ctl_stop(&self.bin, self.as_root, &self.dir, "immediate");
        }
    }
}

/// `CARGO_TARGET_DIR` if set, else `target` in the workspace root (the directory with Cargo.lock).
fn target_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .unwrap_or(manifest);
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// `pg_config --bindir`, else the newest `/usr/lib/postgresql/<version>/bin` (Debian layout).
fn postgres_bindir() -> Result<PathBuf, TestDbError> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && bin.join("initdb").is_file() {
            return Ok(bin);
        }
    }
    std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            Some((
                entry.file_name().to_str()?.parse::<u32>().ok()?,
                entry.path().join("bin"),
            ))
        })
        .filter(|(_, bin)| bin.join("initdb").is_file())
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin)
        .ok_or_else(|| {
            TestDbError::Cluster(format!(
                "no PostgreSQL binaries (initdb) found; install them or set {ENV_URL}"
            ))
        })
}

/// `$USER` is not reliable (unset in containers), so ask `id -u`.
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

fn as_postgres(as_root: bool, program: &Path) -> Command {
    if !as_root {
        return Command::new(program);
    }
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--"]).arg(program);
    command
}

fn run(command: &mut Command, dir: &Path) -> Result<(), TestDbError> {
    let out = command
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| TestDbError::Cluster(format!("{command:?}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    Err(TestDbError::Cluster(format!(
        "{command:?} failed ({}): {stderr}{stdout}",
        out.status
    )))
}

#[cfg(test)]
mod tests;
