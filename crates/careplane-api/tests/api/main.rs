//! HTTP integration tests of the FHIR API (issue 3): each starts the real server on port 0 over
//! a fresh SQLite database and speaks HTTP to it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod bad_input;
mod bundle;
mod capabilities;
mod concurrency;
mod conformance;
mod crud;
mod forwarded;
mod history;
mod metrics;
mod negotiation;
mod patch;
mod rate_limit;
mod request_id;
mod search;
mod spawn;
mod validation;
