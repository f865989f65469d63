//! Cross-cutting layers of the FHIR router: request metrics, request ids, per-client rate
//! limits (with who the client is) and trace context propagation. The route table, the per-request deadline and the global
//! concurrency limit live in `routes.rs` and `lib.rs`.

pub mod client;
pub mod metrics;
pub mod rate_limit;
pub mod request_id;
pub mod trace_context;
