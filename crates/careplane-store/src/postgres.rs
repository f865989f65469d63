//! The production PostgreSQL backend: a bounded pool with timeouts, row locks for writers of
//! one resource, transaction-scoped advisory locks for conditional creates, and migrations that
//! take sqlx's advisory lock so replicas starting together apply them once.

use std::str::FromStr;
use std::time::Duration;

use careplane_fhir::ResourceType;
use sqlx::postgres::PgRow;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Pool, Postgres};

use crate::sql::index::{self, ColumnValues};
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

    async fn write_batch(
        conn: &mut PgConnection,
        versions: &[NewVersion],
        index_rows: &[index::OwnedRow<'_>],
    ) -> Result<()> {
        write_batch_bulk(conn, versions, index_rows).await
    }

    const WRITES_IN_CTES: bool = true;

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

/// A whole batch in one statement, so a create is one round trip however many index tables
/// it writes (it was one per table: half the time of an Observation create went on them).
/// Each table's rows are arrays unnested into it by a data-modifying CTE. The versions' generated
/// `seq`s flow through a CTE into the current pointers; the foreign key from `resources.seq` is
/// checked at the end of the statement, when the versions exist.
async fn write_batch_bulk(
    conn: &mut PgConnection,
    versions: &[NewVersion],
    index_rows: &[index::OwnedRow<'_>],
) -> Result<()> {
    let mut ctes = Vec::new();
    let mut arrays = Vec::new();
    if !versions.is_empty() {
        let text =
            |f: fn(&NewVersion) -> &str| ColumnValues::Text(versions.iter().map(f).collect());
        let int = |f: fn(&NewVersion) -> i64| ColumnValues::Int(versions.iter().map(f).collect());
        let columns = vec![
            text(|v| &v.tenant),
            text(|v| &v.resource_type),
            text(|v| &v.id),
            int(|v| v.version),
            int(|v| v.last_updated),
            text(|v| v.method.as_str()),
            ColumnValues::OptText(versions.iter().map(|v| v.body.as_deref()).collect()),
        ];
        ctes.push(format!(
            "v AS (INSERT INTO resource_versions \
             (tenant, resource_type, id, version, last_updated, method, body) \
             SELECT * FROM UNNEST({}) \
             RETURNING seq, tenant, resource_type, id, version, last_updated, method), \
             c AS (INSERT INTO resources \
             (tenant, resource_type, id, version, seq, deleted, last_updated) \
             SELECT tenant, resource_type, id, version, seq, method = 'delete', last_updated \
             FROM v {UPSERT_CURRENT})",
            placeholders(&columns, arrays.len() + 1)
        ));
        arrays.extend(columns);
    }
    for (n, (table, names, columns)) in index::by_column(index_rows).into_iter().enumerate() {
        ctes.push(format!(
            "i{n} AS (INSERT INTO {table} ({names}) SELECT * FROM UNNEST({}))",
            placeholders(&columns, arrays.len() + 1)
        ));
        arrays.extend(columns);
    }
    if ctes.is_empty() {
        return Ok(());
    }
    let sql = format!("WITH {} SELECT 1", ctes.join(", "));
    let mut query = sqlx::query(&sql);
    for column in arrays {
        query = match column {
            ColumnValues::Text(v) => query.bind(v),
            ColumnValues::OptText(v) => query.bind(v),
            ColumnValues::Int(v) => query.bind(v),
            ColumnValues::Real(v) => query.bind(v),
        };
    }
    query.execute(conn).await?;
    Ok(())
}

/// `$first::type, $first+1::type, …` for the columns' arrays.
fn placeholders(columns: &[ColumnValues<'_>], first: usize) -> String {
    columns
        .iter()
        .enumerate()
        .map(|(n, c)| format!("${}::{}", first + n, array_type(c)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn array_type(column: &ColumnValues<'_>) -> &'static str {
    match column {
        ColumnValues::Text(_) | ColumnValues::OptText(_) => "text[]",
        ColumnValues::Int(_) => "int8[]",
        ColumnValues::Real(_) => "float8[]",
    }
}
