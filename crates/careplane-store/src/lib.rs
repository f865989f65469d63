//! Persistence for Careplane: one object-safe, tenant-first [`Store`] trait and its backends.
//!
//! The backend is chosen at run time from the database URL (`sqlite://…` today; `postgres://…`
//! arrives with its own issue) and both live in the one binary. Migrations are per backend with
//! the same numbering. The contract suite in `tests/contract/` is written once against
//! `&dyn Store` and instantiated per backend.

pub mod error;
pub mod model;
pub mod sqlite;
pub mod tenant;

use std::sync::Arc;

use async_trait::async_trait;
use careplane_fhir::{Id, ResourceType, VersionId};
use serde_json::Value;

pub use error::{Result, StoreError};
pub use model::{
    Condition, CreateOutcome, HistoryEntry, HistoryPage, HistoryQuery, HistoryScope, Method,
    StoredResource, UpdateOptions, UpdateOutcome,
};
pub use sqlite::SqliteStore;
pub use tenant::TenantId;

/// Versioned CRUD and history of FHIR resources. Bodies passed in are already validated; the
/// store assigns ids (on create), versions and `meta.lastUpdated`, and commits before returning.
#[async_trait]
pub trait ResourceStore: Send + Sync {
    /// Creates a resource with a server-assigned id, unless `condition` matches an existing one.
    async fn create(
        &self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        body: Value,
        condition: Option<&Condition>,
    ) -> Result<CreateOutcome>;

    async fn read(
        &self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &Id,
    ) -> Result<StoredResource>;

    async fn vread(
        &self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &Id,
        version: VersionId,
    ) -> Result<StoredResource>;

    async fn update(
        &self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &Id,
        body: Value,
        options: UpdateOptions,
    ) -> Result<UpdateOutcome>;

    /// Soft-deletes; returns the deletion's version, or `None` when it was already deleted.
    async fn delete(
        &self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &Id,
        if_match: Option<VersionId>,
    ) -> Result<Option<VersionId>>;

    /// Versions newest first, paged by a keyset cursor so pages stay stable while writes continue.
    async fn history(
        &self,
        tenant: &TenantId,
        scope: &HistoryScope,
        query: &HistoryQuery,
    ) -> Result<HistoryPage>;
}

/// Everything the API and worker need from persistence. Capabilities (search, scheduling, jobs,
/// audit) join as further supertraits when their issues land.
#[async_trait]
pub trait Store: ResourceStore {
    /// Applies pending migrations (idempotent).
    async fn migrate(&self) -> Result<()>;

    /// A cheap round trip to the database, for readiness.
    async fn ping(&self) -> Result<()>;

    /// Which backend this is (`sqlite`, `postgres`), for logs and metrics.
    fn backend(&self) -> &'static str;
}

/// Opens the store named by `url`. Migrations are not applied; call [`Store::migrate`].
pub async fn connect(url: &str) -> Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        return Ok(Arc::new(SqliteStore::open(url).await?));
    }
    let scheme = url.split(':').next().unwrap_or_default();
    Err(StoreError::UnsupportedUrl(format!(
        "scheme '{scheme}:' (supported: sqlite://PATH; postgres:// is planned)"
    )))
}
