//! The embedded SQLite backend: WAL with `synchronous=FULL`, one writer connection (SQLite
//! allows a single writer anyway; serialising in-process avoids SQLITE_BUSY and makes every
//! write transaction, conditional checks included, atomic) and a small pool of read-only
//! connections.

use std::str::FromStr;
use std::time::Duration;

use careplane_fhir::ResourceType;
use sqlx::sqlite::SqliteRow;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Pool, Sqlite};

use crate::sql::versions::{self, NewVersion};
use crate::sql::{impl_backend, index, Sql, SqlStore};
use crate::Result;

pub type SqliteStore = SqlStore<Sqlite>;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl SqlStore<Sqlite> {
    pub async fn open(url: &str) -> Result<SqliteStore> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        // One writer: queueing for it is how SQLite works, and during imports a write waits a
        // few seconds as a matter of course. Warn only past half of the time it may wait.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .acquire_slow_threshold(Duration::from_secs(5))
            .connect_with(options.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.read_only(true).create_if_missing(false))
            .await?;
        Ok(SqlStore::new(writer, reader))
    }
}

impl_backend!(Sqlite {
    const BACKEND: &'static str = "sqlite";
    const GENERIC_PLANS: bool = false;
    // The single writer connection already serialises write transactions.
    const LOCK_ROW: &'static str = "";
    const SKIP_LOCKED: &'static str = "";

    async fn write_batch(
        conn: &mut SqliteConnection,
        versions: &[NewVersion],
        index_rows: &[index::OwnedRow<'_>],
    ) -> Result<()> {
        if versions.is_empty() && index_rows.is_empty() {
            return Ok(());
        }
        // One call for all the statements: each call is a hop to the connection's thread, and
        // the single writer is held across the hops (a create made ten of them).
        let mut q = Sql::<Sqlite>::new("");
        versions::push_each(&mut q, versions);
        index::push_by_table(&mut q, index_rows);
        if versions.len() > 1 {
            q.once();
        }
        q.execute(conn).await?;
        Ok(())
    }

    // SQLite has no data-modifying CTEs.
    const WRITES_IN_CTES: bool = false;

    // Reads are in-process calls; reading ahead would save nothing.
    const READS_AHEAD: bool = false;

    async fn current_versions(
        _conn: &mut SqliteConnection,
        _tenant: &str,
        _targets: &[(ResourceType, String)],
    ) -> Result<Vec<SqliteRow>> {
        Ok(Vec::new())
    }

    async fn lock_key(_conn: &mut SqliteConnection, _key: i64) -> Result<()> {
        Ok(())
    }

    async fn migrate(pool: &Pool<Self>) -> Result<()> {
        MIGRATOR.run(pool).await?;
        Ok(())
    }

    fn migrator() -> &'static sqlx::migrate::Migrator {
        &MIGRATOR
    }
});
