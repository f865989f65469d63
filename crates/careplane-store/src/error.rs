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
    #[error("{resource_type}/{id} does not exist and creating resources by update is disabled")]
    UpdateCreateDisabled { resource_type: String, id: String },
    #[error("the database is busy; retry later")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error")]
    Backend(#[source] sqlx::Error),
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL: {0}")]
    UnsupportedUrl(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => StoreError::Unavailable(e),
            sqlx::Error::Database(ref db) if db.message().contains("database is locked") => {
                StoreError::Unavailable(e)
            }
            e => StoreError::Backend(e),
        }
    }
}
