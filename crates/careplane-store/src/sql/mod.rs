//! The SQL implementation of the store, written once for every backend.
//!
//! sqlx's query builder writes each backend's placeholders (`?` or `$n`), so the statements in
//! [`store`] are shared. What genuinely differs (binding and decoding values, row locks,
//! advisory locks, error codes, migrations) sits behind [`Backend`], implemented by the
//! `sqlite` and `postgres` modules. Generic code cannot name sqlx's per-type encode/decode
//! bounds without a wall of `where` clauses, hence the small set of typed helpers here.

pub mod index;
mod jobs;
mod search;
mod settings;
mod store;
mod subscriptions;
pub mod versions;

use async_trait::async_trait;
use sqlx::{Database, Pool, QueryBuilder};

use crate::Result;

pub use store::{SqlStore, SqlTx};

/// A value bound into a statement.
pub enum Bind<'a> {
    Text(&'a str),
    OptText(Option<&'a str>),
    Owned(String),
    Int(i64),
    Real(f64),
    Flag(bool),
}

#[async_trait]
pub trait Backend: Database + Sized {
    /// `sqlite` or `postgres`, as reported by [`crate::Store::backend`].
    const BACKEND: &'static str;
    /// Appended to reads of a resource's current state inside a write transaction, so two
    /// writers of one resource queue up instead of both deciding on the same next version.
    const LOCK_ROW: &'static str;
    /// Appended to the job-claim subquery: concurrent claimers skip rows another one holds.
    const SKIP_LOCKED: &'static str;

    /// Whether a cached prepared statement may run with a generic plan, one chosen without
    /// looking at the bound values. PostgreSQL switches to one after five runs when it looks
    /// no dearer than the custom plans; SQLite re-plans when a bound value could matter.
    const GENERIC_PLANS: bool;

    fn bind<'a>(qb: &mut QueryBuilder<'a, Self>, value: Bind<'a>);

    /// `persistent: false` runs the statement unnamed, planned for its values (not cached).
    async fn fetch_all(
        conn: &mut Self::Connection,
        qb: &mut QueryBuilder<'_, Self>,
        persistent: bool,
    ) -> Result<Vec<Self::Row>>;

    async fn fetch_optional(
        conn: &mut Self::Connection,
        qb: &mut QueryBuilder<'_, Self>,
        persistent: bool,
    ) -> Result<Option<Self::Row>>;

    async fn execute(
        conn: &mut Self::Connection,
        qb: &mut QueryBuilder<'_, Self>,
        persistent: bool,
    ) -> Result<u64>;

    /// Appends the versions, moves their current pointers (see [`versions`]; no two name the
    /// same resource) and inserts the search index rows (see [`index`]).
    async fn write_batch(
        conn: &mut Self::Connection,
        versions: &[versions::NewVersion],
        index_rows: &[index::OwnedRow<'_>],
    ) -> Result<()>;

    /// Whether `WITH d AS (DELETE …)` works: several tables written in one statement.
    const WRITES_IN_CTES: bool;

    /// Whether [`StoreTx::read_ahead`](crate::StoreTx::read_ahead) reads ahead: worth it
    /// where each statement is a network round trip.
    const READS_AHEAD: bool;

    /// Rows (`resource_type, id, version, deleted, last_updated, seq, body`) of the named
    /// resources that exist, without locks. Only called when [`Backend::READS_AHEAD`].
    async fn current_versions(
        conn: &mut Self::Connection,
        tenant: &str,
        targets: &[(careplane_fhir::ResourceType, String)],
    ) -> Result<Vec<Self::Row>>;

    /// Serialises transactions that take the same key until they end (conditional creates).
    async fn lock_key(conn: &mut Self::Connection, key: i64) -> Result<()>;

    async fn migrate(pool: &Pool<Self>) -> Result<()>;

    /// The migrations embedded for this backend (readiness compares them with the database).
    fn migrator() -> &'static sqlx::migrate::Migrator;

    fn int(row: &Self::Row, column: &str) -> Result<i64>;
    fn real(row: &Self::Row, column: &str) -> Result<f64>;
    fn text(row: &Self::Row, column: &str) -> Result<String>;
    fn opt_text(row: &Self::Row, column: &str) -> Result<Option<String>>;
    fn flag(row: &Self::Row, column: &str) -> Result<bool>;
    fn json(row: &Self::Row, column: &str) -> Result<serde_json::Value>;
}

/// A `COUNT(*)` read back (absent row: 0); a negative one means the data is corrupt.
pub(crate) fn count(n: Option<i64>) -> Result<u64> {
    u64::try_from(n.unwrap_or(0)).map_err(|_| crate::StoreError::Corrupt("negative count".into()))
}

/// A statement under construction: SQL text with typed binds in between.
pub(crate) struct Sql<'a, B: Backend> {
    builder: QueryBuilder<'a, B>,
    persistent: bool,
}

impl<'a, B: Backend> Sql<'a, B> {
    pub fn new(sql: &str) -> Self {
        Sql {
            builder: QueryBuilder::new(sql),
            persistent: true,
        }
    }

    /// Plans the statement for its bound values on every run, where the backend would otherwise
    /// reuse a generic plan. For searches, whose best plan depends on how many rows a value
    /// matches: PostgreSQL's generic plan for `Observation?patient=…` assumed one row per
    /// patient and read every body before sorting, 46 ms instead of 5 ms for a patient with
    /// 6,000 Observations (docs/performance.md).
    pub fn planned_per_run(&mut self) -> &mut Self {
        self.persistent = !B::GENERIC_PLANS;
        self
    }

    /// Prepares the statement for this run only: for text that seldom repeats (a bulk batch),
    /// which would only push reusable statements out of the connection's cache.
    pub fn once(&mut self) -> &mut Self {
        self.persistent = false;
        self
    }

    pub fn sql(&mut self, sql: &str) -> &mut Self {
        self.builder.push(sql);
        self
    }

    pub fn text(&mut self, value: &'a str) -> &mut Self {
        B::bind(&mut self.builder, Bind::Text(value));
        self
    }

    pub fn opt_text(&mut self, value: Option<&'a str>) -> &mut Self {
        B::bind(&mut self.builder, Bind::OptText(value));
        self
    }

    pub fn int(&mut self, value: i64) -> &mut Self {
        B::bind(&mut self.builder, Bind::Int(value));
        self
    }

    /// Binds a value built for this statement (a LIKE pattern, a range bound).
    pub fn owned(&mut self, value: String) -> &mut Self {
        B::bind(&mut self.builder, Bind::Owned(value));
        self
    }

    pub fn real(&mut self, value: f64) -> &mut Self {
        B::bind(&mut self.builder, Bind::Real(value));
        self
    }

    pub fn flag(&mut self, value: bool) -> &mut Self {
        B::bind(&mut self.builder, Bind::Flag(value));
        self
    }

    pub async fn fetch_all(&mut self, conn: &mut B::Connection) -> Result<Vec<B::Row>> {
        B::fetch_all(conn, &mut self.builder, self.persistent).await
    }

    pub async fn fetch_optional(&mut self, conn: &mut B::Connection) -> Result<Option<B::Row>> {
        B::fetch_optional(conn, &mut self.builder, self.persistent).await
    }

    pub async fn execute(&mut self, conn: &mut B::Connection) -> Result<u64> {
        B::execute(conn, &mut self.builder, self.persistent).await
    }
}

/// Implements [`Backend`] for a sqlx driver: the parts that are the same code for every driver
/// (spelled out per driver only because generic code cannot name sqlx's per-type
/// encode/decode bounds) plus the driver-specific items given.
macro_rules! impl_backend {
    ($db:ty { $($specific:tt)* }) => {
        #[async_trait::async_trait]
        impl $crate::sql::Backend for $db {
            $($specific)*

            fn bind<'a>(qb: &mut sqlx::QueryBuilder<'a, Self>, value: $crate::sql::Bind<'a>) {
                use $crate::sql::Bind;
                match value {
                    Bind::Text(v) => qb.push_bind(v),
                    Bind::OptText(v) => qb.push_bind(v),
                    Bind::Owned(v) => qb.push_bind(v),
                    Bind::Int(v) => qb.push_bind(v),
                    Bind::Real(v) => qb.push_bind(v),
                    Bind::Flag(v) => qb.push_bind(v),
                };
            }

            async fn fetch_all(
                conn: &mut Self::Connection,
                qb: &mut sqlx::QueryBuilder<'_, Self>,
                persistent: bool,
            ) -> $crate::Result<Vec<Self::Row>> {
                Ok(qb.build().persistent(persistent).fetch_all(conn).await?)
            }

            async fn fetch_optional(
                conn: &mut Self::Connection,
                qb: &mut sqlx::QueryBuilder<'_, Self>,
                persistent: bool,
            ) -> $crate::Result<Option<Self::Row>> {
                Ok(qb.build().persistent(persistent).fetch_optional(conn).await?)
            }

            async fn execute(
                conn: &mut Self::Connection,
                qb: &mut sqlx::QueryBuilder<'_, Self>,
                persistent: bool,
            ) -> $crate::Result<u64> {
                Ok(qb.build().persistent(persistent).execute(conn).await?.rows_affected())
            }

            fn int(row: &Self::Row, column: &str) -> $crate::Result<i64> {
                Ok(sqlx::Row::try_get(row, column)?)
            }

            fn real(row: &Self::Row, column: &str) -> $crate::Result<f64> {
                Ok(sqlx::Row::try_get(row, column)?)
            }

            fn text(row: &Self::Row, column: &str) -> $crate::Result<String> {
                Ok(sqlx::Row::try_get(row, column)?)
            }

            fn opt_text(row: &Self::Row, column: &str) -> $crate::Result<Option<String>> {
                Ok(sqlx::Row::try_get(row, column)?)
            }

            fn flag(row: &Self::Row, column: &str) -> $crate::Result<bool> {
                Ok(sqlx::Row::try_get(row, column)?)
            }

            fn json(row: &Self::Row, column: &str) -> $crate::Result<serde_json::Value> {
                Ok(sqlx::Row::try_get(row, column)?)
            }
        }
    };
}
pub(crate) use impl_backend;
