//! Typed extractors: each parses one part of a request and rejects with an [`ApiError`], so
//! axum's plain-text rejections never reach a client.

mod body;
mod format;
mod headers;
mod target;

pub use body::{BundleBody, FhirBody, FormBody, PatchBody};
pub use format::Format;
pub use headers::{parse_etag, Preconditions, Prefer, ReturnPreference};
pub use target::{BaseUrl, QueryParams, Target};
