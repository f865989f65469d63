//! The async request pattern of the Bulk Data spec, shared by `$export` and `$import`: 202 with
//! a status URL at kick-off; polling answers 202 + `X-Progress` + `Retry-After` while the job
//! runs, then 200 with the job's result (the manifest); `DELETE` cancels.

use std::path::Path;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use careplane_fhir::{operation_outcome, Issue, IssueCode};
use careplane_store::{Job, JobState, StoreError, TenantId};
use serde_json::Value;

use crate::error::{ApiError, Result};
use crate::response::{fhir_json_response, raw_json_response};
use crate::state::AppState;

/// Seconds a client is asked to wait between status polls.
const POLL_AFTER_SECONDS: &str = "2";

/// 202 Accepted pointing at the status URL.
pub fn accepted(status_url: &str) -> Response {
    let outcome = operation_outcome(&[Issue::information(format!("Accepted; poll {status_url}"))]);
    let mut response = fhir_json_response(StatusCode::ACCEPTED, &outcome, false);
    if let Ok(value) = HeaderValue::from_str(status_url) {
        response
            .headers_mut()
            .insert(header::CONTENT_LOCATION, value);
    }
    response
}

/// A job of `kind` of this tenant; other kinds and tenants are not found.
pub async fn find(state: &AppState, kind: &str, id: &str) -> Result<Job> {
    let not_found = || ApiError::NotFound(format!("No {kind} '{id}'"));
    match state.store.job(&TenantId::default_tenant(), id).await {
        Ok(job) if job.kind == kind => Ok(job),
        Ok(_) | Err(StoreError::NotFound { .. }) => Err(not_found()),
        Err(e) => Err(e.into()),
    }
}

/// The status poll.
pub async fn status(state: &AppState, kind: &str, id: &str) -> Result<Response> {
    let job = find(state, kind, id).await?;
    match job.state {
        JobState::Queued | JobState::Running => {
            let progress = match job.progress.as_ref().and_then(|p| p["resources"].as_u64()) {
                Some(n) => format!("{n} resources done"),
                None => job.state.as_str().to_string(),
            };
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::ACCEPTED;
            let headers = response.headers_mut();
            if let Ok(value) = HeaderValue::from_str(&progress) {
                headers.insert("x-progress", value);
            }
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(POLL_AFTER_SECONDS),
            );
            Ok(response)
        }
        JobState::Succeeded => {
            let manifest = job.result.unwrap_or(Value::Null);
            let mut response = raw_json_response(StatusCode::OK, manifest.to_string());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok(response)
        }
        JobState::Dead => {
            // The job failed after its retries: a server-side failure, reported per the Bulk
            // Data spec as an error status with an OperationOutcome.
            tracing::error!(job = %job.id, kind, error = ?job.last_error, "async job failed");
            Err(ApiError::Rendered {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                issues: vec![Issue::error(
                    IssueCode::Exception,
                    format!("The {kind} failed; start a new one"),
                )],
            })
        }
        JobState::Cancelled => Err(ApiError::NotFound(format!(
            "{kind} {} was cancelled or deleted",
            job.id
        ))),
    }
}

/// Cancels the job (or withdraws a finished one's result); returns its id for cleanup.
pub async fn cancel(state: &AppState, kind: &str, id: &str) -> Result<String> {
    let job = find(state, kind, id).await?;
    if job.state == JobState::Cancelled {
        return Err(ApiError::NotFound(format!(
            "{kind} {} was already cancelled or deleted",
            job.id
        )));
    }
    state
        .store
        .cancel_job(&TenantId::default_tenant(), &job.id)
        .await?;
    Ok(job.id)
}

/// Removes a job's files (a directory or a file); a missing path is fine.
pub async fn remove(path: &Path, job: &str) {
    let removed = if path.is_dir() {
        tokio::fs::remove_dir_all(path).await
    } else {
        tokio::fs::remove_file(path).await
    };
    if let Err(e) = removed {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(job, error = %e, "could not remove the files of a cancelled job");
        }
    }
}

/// 202 after a `DELETE` of the status URL.
pub fn cancelled(job: &str) -> Result<Response> {
    let outcome = operation_outcome(&[Issue::information(format!(
        "{job} cancelled; its files are removed"
    ))]);
    Ok(fhir_json_response(StatusCode::ACCEPTED, &outcome, false))
}
