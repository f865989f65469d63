//! `POST /$import`: integration engines push NDJSON. The body is streamed to a staging file
//! (constant memory, capped at `max_import_bytes`) on the shared bulk-data volume and a durable
//! `import` job is enqueued; the worker loads it through the same Bundle code as `POST /` and
//! `careplane import`. Status and cancellation follow the Bulk Data async pattern
//! (`/$import-status/{job}`).

use std::path::{Path as FsPath, PathBuf};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Uri};
use axum::response::Response;
use careplane_fhir::IssueCode;
use careplane_store::{NewJob, TenantId};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::async_job;
use crate::error::{ApiError, Result};
use crate::extract::{BaseUrl, Prefer};
use crate::state::AppState;

/// The job kind of NDJSON imports.
pub const KIND: &str = "import";

/// Where uploads wait for the worker, below the bulk-data directory.
pub fn staging_dir(root: &FsPath) -> PathBuf {
    root.join("_imports")
}

/// `POST /$import` with an NDJSON body.
pub async fn kick_off(
    State(state): State<AppState>,
    base: BaseUrl,
    uri: Uri,
    prefer: Prefer,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    if !prefer.respond_async {
        return Err(ApiError::bad_request(
            IssueCode::Required,
            "$import runs asynchronously: send 'Prefer: respond-async'",
        ));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .unwrap_or_default();
    if !matches!(
        content_type,
        "application/fhir+ndjson" | "application/ndjson" | "application/x-ndjson"
    ) {
        return Err(ApiError::UnsupportedMediaType(format!(
            "$import takes NDJSON (application/fhir+ndjson), not '{content_type}'"
        )));
    }
    if let Some(q) = uri.query().filter(|q| !q.is_empty()) {
        return Err(ApiError::bad_request(
            IssueCode::NotSupported,
            format!("$import takes no parameters (got '{q}')"),
        ));
    }
    let dir = staging_dir(&state.settings.export_dir);
    let file = format!("{}.ndjson", uuid::Uuid::new_v4());
    let bytes = stage(&dir.join(&file), body, state.settings.max_import_bytes).await?;
    if bytes == 0 {
        let _ = tokio::fs::remove_file(dir.join(&file)).await;
        return Err(ApiError::bad_request(
            IssueCode::Required,
            "The NDJSON body is empty",
        ));
    }
    let payload = json!({
        "file": file,
        "bytes": bytes,
        "request": format!("{}/$import", base.0),
        "transactionTime": careplane_store::model::format_instant(time::OffsetDateTime::now_utc()),
    });
    let mut job = NewJob::new(TenantId::default_tenant(), KIND, payload)
        .with_traceparent(crate::middleware::trace_context::current(&state));
    job.max_attempts = 3;
    let id = state.store.enqueue(&job).await?;
    Ok(async_job::accepted(&format!(
        "{}/$import-status/{id}",
        base.0
    )))
}

/// Streams the body to `path`; a body over `limit` is refused (413) and leaves no file.
async fn stage(path: &FsPath, body: Body, limit: usize) -> Result<u64> {
    let io = |e: std::io::Error| ApiError::Internal(format!("staging an import: {e}"));
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(io)?;
    }
    let mut file = tokio::fs::File::create(path).await.map_err(io)?;
    let mut stream = body.into_data_stream();
    let mut written: u64 = 0;
    let outcome = async {
        use futures_util::StreamExt;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::bad_request(IssueCode::Invalid, format!("reading the body: {e}"))
            })?;
            written += chunk.len() as u64;
            if written > limit as u64 {
                return Err(ApiError::PayloadTooLarge(format!(
                    "The NDJSON body is over {limit} bytes (CAREPLANE_MAX_IMPORT_BYTES)"
                )));
            }
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.sync_all().await.map_err(io)?;
        Ok(written)
    }
    .await;
    if outcome.is_err() {
        let _ = tokio::fs::remove_file(path).await;
    }
    outcome
}

/// `GET /$import-status/{job}`
pub async fn status(State(state): State<AppState>, Path(job): Path<String>) -> Result<Response> {
    async_job::status(&state, KIND, &job).await
}

/// `DELETE /$import-status/{job}`: cancels the import (resources already loaded stay).
pub async fn cancel(State(state): State<AppState>, Path(job): Path<String>) -> Result<Response> {
    let found = async_job::find(&state, KIND, &job).await?;
    let file = found.payload["file"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let id = async_job::cancel(&state, KIND, &job).await?;
    if !file.is_empty() && !file.contains('/') {
        async_job::remove(&staging_dir(&state.settings.export_dir).join(file), &id).await;
    }
    async_job::cancelled(&id)
}
