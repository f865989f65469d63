//! ApiError: the one error type of the HTTP layer, rendered as a FHIR OperationOutcome.
//!
//! | variant               | status | typical cause                                              |
//! |-----------------------|--------|------------------------------------------------------------|
//! | `BadRequest`          | 400    | malformed JSON, bad ids, validation failures, bad params   |
//! | `NotFound`            | 404    | unknown type, id, version or route                         |
//! | `MethodNotAllowed`    | 405    | a route without that method; update-as-create disabled     |
//! | `NotAcceptable`       | 406    | `Accept`/`_format` asks for XML or another format          |
//! | `Conflict`            | 409    | a write race that persisted after retries (`Retry-After`)  |
//! | `Gone`                | 410    | the resource was deleted                                   |
//! | `PreconditionFailed`  | 412    | stale `If-Match`, several matches for a conditional create |
//! | `PayloadTooLarge`     | 413    | body over `max_body_bytes`                                 |
//! | `UnsupportedMediaType`| 415    | body not `application/fhir+json` / `application/json`      |
//! | `Unprocessable`       | 422    | a patch that cannot apply or yields an invalid resource    |
//! | `Unavailable`         | 503    | database busy or unreachable (with `Retry-After`)          |
//! | `Timeout`             | 503    | the request deadline passed (slow upload or slow database) |
//! | `Internal`            | 500    | a bug; logged with its cause, clients see generic text      |

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use careplane_fhir::{operation_outcome, Issue, IssueCode};
use careplane_store::StoreError;

use crate::response::fhir_json_response;

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("bad request")]
    BadRequest(Vec<Issue>),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("method not allowed: {0}")]
    MethodNotAllowed(String),
    #[error("not acceptable: {0}")]
    NotAcceptable(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("gone: {0}")]
    Gone(String),
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    #[error("payload too large: {0}")]
    PayloadTooLarge(String),
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("unprocessable")]
    Unprocessable(Vec<Issue>),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("timeout: {0}")]
    Timeout(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// Another error already turned into its status and issues, e.g. located in a Bundle entry.
    #[error("{status}")]
    Rendered {
        status: StatusCode,
        issues: Vec<Issue>,
    },
}

impl ApiError {
    pub fn bad_request(code: IssueCode, diagnostics: impl Into<String>) -> ApiError {
        ApiError::BadRequest(vec![Issue::error(code, diagnostics)])
    }

    /// The same error with every issue placed in `context` (e.g. `Bundle.entry[3]`, `POST
    /// Patient`): diagnostics are prefixed and issues without a location get `expression`.
    pub fn within(self, expression: &str, context: &str) -> ApiError {
        let (status, issues) = self.status_and_issues();
        let issues = issues
            .into_iter()
            .map(|mut issue| {
                issue.diagnostics = format!("{context}: {}", issue.diagnostics);
                if issue.expression.is_none() {
                    issue.expression = Some(expression.to_string());
                }
                issue
            })
            .collect();
        ApiError::Rendered { status, issues }
    }

    /// The HTTP status and OperationOutcome issues this error is answered with.
    pub fn status_and_issues(self) -> (StatusCode, Vec<Issue>) {
        use ApiError::*;
        let one = |code, msg: String| vec![Issue::error(code, msg)];
        match self {
            BadRequest(issues) => (StatusCode::BAD_REQUEST, issues),
            Unprocessable(issues) => (StatusCode::UNPROCESSABLE_ENTITY, issues),
            NotFound(m) => (StatusCode::NOT_FOUND, one(IssueCode::NotFound, m)),
            MethodNotAllowed(m) => (
                StatusCode::METHOD_NOT_ALLOWED,
                one(IssueCode::NotSupported, m),
            ),
            NotAcceptable(m) => (StatusCode::NOT_ACCEPTABLE, one(IssueCode::NotSupported, m)),
            Conflict(m) => (StatusCode::CONFLICT, one(IssueCode::Conflict, m)),
            Gone(m) => (StatusCode::GONE, one(IssueCode::Deleted, m)),
            PreconditionFailed(m) => (StatusCode::PRECONDITION_FAILED, one(IssueCode::Conflict, m)),
            PayloadTooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, one(IssueCode::TooLong, m)),
            UnsupportedMediaType(m) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                one(IssueCode::NotSupported, m),
            ),
            Unavailable(m) => (
                StatusCode::SERVICE_UNAVAILABLE,
                one(IssueCode::Transient, m),
            ),
            Timeout(m) => (StatusCode::SERVICE_UNAVAILABLE, one(IssueCode::Timeout, m)),
            Rendered { status, issues } => (status, issues),
            Internal(cause) => {
                tracing::error!(%cause, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    one(IssueCode::Exception, "Internal server error".into()),
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, issues) = self.status_and_issues();
        let unavailable = matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::CONFLICT | StatusCode::TOO_MANY_REQUESTS
        );
        let mut response = fhir_json_response(status, &operation_outcome(&issues), false);
        if unavailable {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            StoreError::Gone { .. } => ApiError::Gone(e.to_string()),
            StoreError::VersionConflict { .. } => ApiError::PreconditionFailed(e.to_string()),
            StoreError::MultipleMatches { .. } => ApiError::PreconditionFailed(e.to_string()),
            StoreError::UpdateCreateDisabled { .. } => ApiError::MethodNotAllowed(e.to_string()),
            StoreError::IdMismatch { .. } => {
                ApiError::bad_request(IssueCode::Invalid, e.to_string())
            }
            StoreError::InvalidSearch(message) => {
                ApiError::bad_request(IssueCode::NotSupported, message)
            }
            StoreError::Conflict(source) => {
                // Logged by whoever gives up retrying; callers may still retry this one.
                tracing::debug!(error = %source, "write conflict");
                ApiError::Conflict(
                    "A concurrent change to the same data conflicted with this one; retry".into(),
                )
            }
            StoreError::Timeout(_) => {
                ApiError::Timeout("The database did not answer within its deadline".into())
            }
            StoreError::Unavailable(source) => {
                tracing::warn!(error = %source, "database unavailable");
                ApiError::Unavailable("The database is busy or unreachable; retry shortly".into())
            }
            other => {
                ApiError::Internal(format!("{other}: {:?}", std::error::Error::source(&other)))
            }
        }
    }
}
