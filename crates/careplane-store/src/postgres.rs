//! The production PostgreSQL backend: a bounded pool with timeouts, row locks for writers of
//! one resource, transaction-scoped advisory locks for conditional creates, and migrations that
//! take sqlx's advisory lock so replicas starting together apply them once.

use std::str::FromStr;
use std::time::Duration;

use careplane_fhir::ResourceType;
use sqlx::postgres::PgRow;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Pool, Postgres};

use crate::sql::versions::{NewVersion, UPSERT_CURRENT};
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
    const GENERIC_PLANS: bool = true;
    const LOCK_ROW: &'static str = " FOR UPDATE";
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";

    async fn insert_versions(conn: &mut PgConnection, rows: &[NewVersion]) -> Result<()> {
        insert_versions_bulk(conn, rows).await
    }

    const READS_AHEAD: bool = true;

    async fn current_versions(
        conn: &mut PgConnection,
        tenant: &str,
        targets: &[(ResourceType, String)],
    ) -> Result<Vec<PgRow>> {
        let types: Vec<&str> = targets.iter().map(|(t, _)| t.as_str()).collect();
        let ids: Vec<&str> = targets.iter().map(|(_, id)| id.as_str()).collect();
        // Arrays, not a list of pairs: planning `(type, id) IN (…)` grows with the list
        // (80 ms for 500 pairs).
        Ok(sqlx::query(
            "SELECT r.resource_type, r.id, r.version, r.deleted, r.last_updated, r.seq, v.body \
             FROM resources r JOIN UNNEST($2::text[], $3::text[]) AS t(resource_type, id) \
             ON r.resource_type = t.resource_type AND r.id = t.id \
             JOIN resource_versions v ON v.seq = r.seq WHERE r.tenant = $1",
        )
        .bind(tenant)
        .bind(types)
        .bind(ids)
        .fetch_all(conn)
        .await?)
    }

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

/// All versions in one statement: the arrays are unnested into `resource_versions` and the
/// generated `seq`s flow, through the CTE, into the current pointers. The foreign key from
/// `resources.seq` is checked at the end of the statement, when the versions exist.
async fn insert_versions_bulk(conn: &mut PgConnection, rows: &[NewVersion]) -> Result<()> {
    let column = |f: fn(&NewVersion) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
    let bodies: Vec<Option<&str>> = rows.iter().map(|v| v.body.as_deref()).collect();
    let numbers = |f: fn(&NewVersion) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
    let sql = format!(
        "WITH v AS (INSERT INTO resource_versions \
         (tenant, resource_type, id, version, last_updated, method, body) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], \
         $6::text[], $7::text[]) \
         RETURNING seq, tenant, resource_type, id, version, last_updated, method) \
         INSERT INTO resources (tenant, resource_type, id, version, seq, deleted, last_updated) \
         SELECT tenant, resource_type, id, version, seq, method = 'delete', last_updated FROM v \
         {UPSERT_CURRENT}"
    );
    sqlx::query(&sql)
        .bind(column(|v| &v.tenant))
        .bind(column(|v| &v.resource_type))
        .bind(column(|v| &v.id))
        .bind(numbers(|v| v.version))
        .bind(numbers(|v| v.last_updated))
        .bind(column(|v| v.method.as_str()))
        .bind(bodies)
        .execute(conn)
        .await?;
    Ok(())
}
