//! Careplane's FHIR R4 core: the vendored official definitions (compacted at build time),
//! resource newtypes, definitions-driven validation and OperationOutcome.
//!
//! Pure by design: no I/O, no async, no database or HTTP types. Storage and the API depend on
//! this crate, never the other way round.

pub mod bulk;
pub mod definitions;
pub mod outcome;
pub mod resource;
pub mod search;
pub mod subscription;
pub mod validate;

pub use definitions::Definitions;
pub use outcome::{operation_outcome, Issue, IssueCode, Severity};
pub use resource::{Id, ResourceType, VersionId};
