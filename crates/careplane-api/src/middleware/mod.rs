//! Cross-cutting layers of the FHIR router: request metrics and request ids. The route table and
//! per-request deadline live in `routes.rs` and `lib.rs`.

pub mod metrics;
pub mod request_id;
