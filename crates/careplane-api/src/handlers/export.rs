//! FHIR Bulk Data export: `GET /$export`, `GET /Patient/$export`, `GET /Group/{id}/$export`
//! kick off an export job (202 + `Content-Location`); `GET /$export-status/{job}` polls it
//! (202 with `X-Progress` while it runs, then the manifest); `DELETE` cancels it and removes
//! its files; `GET /$export-file/{job}/{file}` streams an NDJSON file. The worker writes the
//! files (`careplane_worker::export`); this module only validates, enqueues and serves.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, Uri};
use axum::response::Response;
use careplane_fhir::bulk::{self, ExportLevel, ExportRequest};
use careplane_fhir::search::query::{self, ParseOptions};
use careplane_fhir::IssueCode;
use careplane_store::{JobState, NewJob, TenantId};

use super::async_job;
use crate::error::{ApiError, Result};
use crate::extract::{BaseUrl, Prefer, QueryParams, Target};
use crate::state::AppState;

const NDJSON: &str = "application/fhir+ndjson";

/// `GET /$export`
pub async fn system(
    State(state): State<AppState>,
    base: BaseUrl,
    uri: Uri,
    query: QueryParams,
    prefer: Prefer,
) -> Result<Response> {
    kick_off(
        &state,
        ExportLevel::System,
        "$export",
        &base,
        &uri,
        &query,
        &prefer,
    )
    .await
}

/// `GET /{type}/$export`: defined for Patient.
pub async fn type_level(
    State(state): State<AppState>,
    target: Target,
    base: BaseUrl,
    uri: Uri,
    query: QueryParams,
    prefer: Prefer,
) -> Result<Response> {
    if target.resource_type.as_str() != "Patient" {
        return Err(ApiError::NotFound(format!(
            "$export is defined on the system, Patient and Group/[id], not on {}",
            target.resource_type
        )));
    }
    kick_off(
        &state,
        ExportLevel::Patient,
        "Patient/$export",
        &base,
        &uri,
        &query,
        &prefer,
    )
    .await
}

/// `GET /{type}/{id}/$export`: defined for Group.
pub async fn instance(
    State(state): State<AppState>,
    target: Target,
    base: BaseUrl,
    uri: Uri,
    query: QueryParams,
    prefer: Prefer,
) -> Result<Response> {
    if target.resource_type.as_str() != "Group" {
        return Err(ApiError::NotFound(format!(
            "$export on an instance is defined for Group, not {}",
            target.resource_type
        )));
    }
    let id = target.id()?;
    // 404/410 now rather than a failed job later.
    state
        .store
        .read(&tenant(), &target.resource_type, id)
        .await?;
    let path = format!("Group/{id}/$export");
    let level = ExportLevel::Group(id.to_string());
    kick_off(&state, level, &path, &base, &uri, &query, &prefer).await
}

async fn kick_off(
    state: &AppState,
    level: ExportLevel,
    path: &str,
    base: &BaseUrl,
    uri: &Uri,
    query: &QueryParams,
    prefer: &Prefer,
) -> Result<Response> {
    if !prefer.respond_async {
        return Err(ApiError::bad_request(
            IssueCode::Required,
            "$export runs asynchronously: send 'Prefer: respond-async'",
        ));
    }
    let mut types = Vec::new();
    let mut since = None;
    for (name, value) in &query.0 {
        match name.as_str() {
            "_outputFormat" => {
                if !matches!(
                    value.as_str(),
                    "application/fhir+ndjson" | "application/ndjson" | "ndjson"
                ) {
                    return Err(ApiError::bad_request(
                        IssueCode::NotSupported,
                        format!("_outputFormat '{value}' is not supported; use application/fhir+ndjson"),
                    ));
                }
            }
            "_since" => since = Some(valid_since(state, value)?),
            "_type" => {
                for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    types.push(valid_type(state, &level, t)?);
                }
            }
            other => {
                return Err(ApiError::bad_request(
                    IssueCode::NotSupported,
                    format!("$export does not support the parameter '{other}' (supported: _outputFormat, _since, _type)"),
                ))
            }
        }
    }
    types.dedup();
    let request = ExportRequest {
        level,
        types,
        since,
        request: match uri.query() {
            Some(q) => format!("{}/{path}?{q}", base.0),
            None => format!("{}/{path}", base.0),
        },
        base: base.0.clone(),
        transaction_time: careplane_store::model::format_instant(time::OffsetDateTime::now_utc()),
    };
    let payload = serde_json::to_value(&request)
        .map_err(|e| ApiError::Internal(format!("export payload: {e}")))?;
    let mut job = NewJob::new(tenant(), bulk::KIND, payload)
        .with_traceparent(crate::middleware::trace_context::current(state));
    job.max_attempts = 3;
    let id = state.store.enqueue(&job).await?;
    Ok(async_job::accepted(&format!(
        "{}/$export-status/{id}",
        base.0
    )))
}

/// `GET /$export-status/{job}`
pub async fn status(State(state): State<AppState>, Path(job): Path<String>) -> Result<Response> {
    async_job::status(&state, bulk::KIND, &job).await
}

/// `DELETE /$export-status/{job}`: cancels the export (or deletes a finished one's files).
pub async fn cancel(State(state): State<AppState>, Path(job): Path<String>) -> Result<Response> {
    let job = async_job::cancel(&state, bulk::KIND, &job).await?;
    let dir = bulk::job_dir(&state.settings.export_dir, &job);
    async_job::remove(&dir, &job).await;
    async_job::cancelled(&job)
}

/// `GET /$export-file/{job}/{file}`: streamed from disk, never loaded whole.
pub async fn file(
    State(state): State<AppState>,
    Path((job, name)): Path<(String, String)>,
) -> Result<Response> {
    // Only names the export writes: no path traversal, whatever the client sends.
    if !bulk::is_export_file_name(&name) {
        return Err(ApiError::NotFound(format!("No export file '{name}'")));
    }
    let job = async_job::find(&state, bulk::KIND, &job).await?;
    if job.state != JobState::Succeeded {
        return Err(ApiError::NotFound(format!(
            "Export {} has no files (it is {})",
            job.id,
            job.state.as_str()
        )));
    }
    let path = bulk::job_dir(&state.settings.export_dir, &job.id).join(&name);
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::NotFound(format!("No export file '{name}'")))
        }
        Err(e) => return Err(ApiError::Internal(format!("{}: {e}", path.display()))),
    };
    let mut response = Response::new(Body::from_stream(tokio_util::io::ReaderStream::new(file)));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    Ok(response)
}

/// `_since` must be a FHIR instant; checked by the same parser the export's search will use.
fn valid_since(state: &AppState, since: &str) -> Result<String> {
    let params = [("_lastUpdated".to_string(), format!("gt{since}"))];
    let options = ParseOptions {
        strict: true,
        ..ParseOptions::default()
    };
    query::parse(state.defs, &["Patient".to_string()], &params, options).map_err(|_| {
        ApiError::bad_request(
            IssueCode::Value,
            format!("_since '{since}' is not a FHIR instant (e.g. 2024-01-31T00:00:00Z; encode '+' as %2B)"),
        )
    })?;
    Ok(since.to_string())
}

fn valid_type(state: &AppState, level: &ExportLevel, name: &str) -> Result<String> {
    if !state.defs.is_resource_type(name) {
        return Err(ApiError::bad_request(
            IssueCode::Value,
            format!("_type: '{name}' is not an R4 resource type"),
        ));
    }
    if *level != ExportLevel::System && !bulk::compartment_types().iter().any(|t| t == name) {
        return Err(ApiError::bad_request(
            IssueCode::NotSupported,
            format!("_type: {name} is not in the Patient compartment, so a patient-level export cannot contain it"),
        ));
    }
    Ok(name.to_string())
}

fn tenant() -> TenantId {
    TenantId::default_tenant()
}
