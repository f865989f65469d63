//! The production PostgreSQL backend: a bounded pool with timeouts, row locks for writers of
//! one resource, transaction-scoped advisory locks for conditional creates, and migrations that
//! take sqlx's advisory lock so replicas starting together apply them once.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Pool, Postgres};

use crate::sql::{impl_backend, SqlStore};
use crate::Result;

pub type PostgresStore = SqlStore<Postgres>;

/// Connection pool limits. The defaults suit one API replica on 2 cores.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    /// Upper bound for any one statement, so a slow query answers instead of hanging.
    pub statement_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
        }
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl SqlStore<Postgres> {
    /// Identifies this binary's PostgreSQL schema (last migration and a digest of all of them),
    /// e.g. to name a test template database or compare against what a database has applied.
    pub fn schema_fingerprint() -> String {
        let digest = MIGRATOR
            .iter()
            .flat_map(|m| m.checksum.iter().copied())
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        let last = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        format!("v{last}_{digest:016x}")
    }

    pub async fn open(url: &str, settings: PoolSettings) -> Result<PostgresStore> {
        let timeout_ms = settings.statement_timeout.as_millis().to_string();
        let options = PgConnectOptions::from_str(url)?
            .application_name("careplane")
            .options([("statement_timeout", timeout_ms.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .min_connections(0)
            .acquire_timeout(settings.acquire_timeout)
            .idle_timeout(Duration::from_secs(300))
            // Lazy: the process starts (and reports not-ready) even while the database is down.
            .connect_lazy_with(options);
        Ok(SqlStore::new(pool.clone(), pool))
    }
}

impl_backend!(Postgres {
    const BACKEND: &'static str = "postgres";
    const LOCK_ROW: &'static str = " FOR UPDATE";
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";

    async fn lock_key(conn: &mut PgConnection, key: i64) -> Result<()> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(key)
            .execute(conn)
            .await?;
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
