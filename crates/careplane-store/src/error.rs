//! StoreError: what the persistence layer can say. The API maps each variant to a status.

use careplane_fhir::VersionId;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{resource_type}/{id} is not known")]
    NotFound { resource_type: String, id: String },
    #[error("{resource_type}/{id} was deleted (version {version})")]
    Gone {
        resource_type: String,
        id: String,
        version: VersionId,
    },
    #[error("version conflict: the request expected version {expected} but the current version is {current}")]
    VersionConflict {
        expected: VersionId,
        current: String,
    },
    #[error("{count} resources match the condition; it must identify at most one")]
    MultipleMatches { count: usize },
    #[error("the body's id '{found}' differs from the id of the resource the condition matched ('{matched}')")]
    IdMismatch { found: String, matched: String },
    #[error("{resource_type}/{id} does not exist and creating resources by update is disabled")]
    UpdateCreateDisabled { resource_type: String, id: String },
    /// Lost a race with a concurrent transaction (serialization failure, deadlock, unique
    /// violation); retried inside the store, surfaced only when retries ran out.
    #[error("a concurrent change conflicted with this one; retry")]
    Conflict(#[source] sqlx::Error),
    #[error("the database is busy or unreachable; retry later")]
    Unavailable(#[source] sqlx::Error),
    #[error("the database statement ran out of time")]
    Timeout(#[source] sqlx::Error),
    #[error("database error")]
    Backend(#[source] sqlx::Error),
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("not supported on this backend: {0}")]
    Unsupported(String),
    #[error("unsupported database URL: {0}")]
    UnsupportedUrl(String),
    /// A search the SQL layer cannot run as asked (a bad cursor, an unsupported combination).
    #[error("{0}")]
    InvalidSearch(String),
    /// A worker acted on a job it no longer holds: its lease expired and another worker claimed
    /// the job (the fence moved on), or the job was cancelled.
    #[error("job {0} is no longer held by this worker")]
    LeaseLost(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether running the same transaction again may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Conflict(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match classify(&e) {
            Class::Conflict => StoreError::Conflict(e),
            Class::Timeout => StoreError::Timeout(e),
            Class::Unavailable => StoreError::Unavailable(e),
            Class::Other => StoreError::Backend(e),
        }
    }
}

enum Class {
    Conflict,
    Timeout,
    Unavailable,
    Other,
}

/// Sorts driver errors by what the caller can do about them (SQLSTATE codes for PostgreSQL).
fn classify(e: &sqlx::Error) -> Class {
    let db = match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            return Class::Unavailable
        }
        sqlx::Error::Database(db) => db,
        _ => return Class::Other,
    };
    let code = db.code().unwrap_or_default();
    let code = code.as_ref();
    if matches!(db.kind(), sqlx::error::ErrorKind::UniqueViolation)
        || code == "40001" // serialization_failure
        || code == "40P01"
    // deadlock_detected
    {
        Class::Conflict
    } else if code == "57014" {
        Class::Timeout // query_canceled: statement_timeout fired
    } else if code.starts_with("08") // connection exceptions
        || code.starts_with("57P") // admin shutdown, cannot connect now
        || code == "53300" // too_many_connections
        || db.message().contains("database is locked")
    {
        Class::Unavailable
    } else {
        Class::Other
    }
}
