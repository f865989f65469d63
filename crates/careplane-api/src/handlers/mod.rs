//! One module per FHIR interaction. Handlers parse (extractors), call the store, map the result.

pub mod async_job;
pub mod bundle;
pub mod capabilities;
pub mod create;
pub mod delete;
pub mod export;
pub mod history;
pub mod import;
pub mod patch;
pub mod read;
pub mod search;
pub mod update;
pub mod validate;

use axum::http::StatusCode;
use axum::response::Response;
use careplane_fhir::{operation_outcome, Id, Issue, IssueCode, ResourceType};
use careplane_store::StoredResource;
use serde_json::Value;

use crate::error::{ApiError, Result};
use crate::extract::{BaseUrl, Format, Prefer, ReturnPreference};
use crate::response::{
    empty_response, fhir_json_response, raw_json_response, set_location, version_headers,
};
use crate::state::AppState;

/// What a write body must satisfy besides the definitions: its type matches the URL and, on
/// update, its id equals the URL id (R4 http.html#update); a Subscription must be one the
/// server can honour, and is then marked active.
pub(crate) fn check_body(
    state: &AppState,
    rt: &ResourceType,
    body: &mut Value,
    url_id: Option<&Id>,
) -> Result<()> {
    let issues = body_issues(state, rt, body, url_id);
    if issues.iter().any(Issue::is_error) {
        return Err(ApiError::BadRequest(issues));
    }
    crate::subscription::activate(rt, body);
    Ok(())
}

pub(crate) fn body_issues(
    state: &AppState,
    rt: &ResourceType,
    body: &Value,
    url_id: Option<&Id>,
) -> Vec<Issue> {
    let mut issues = identity_issues(rt, body, url_id);
    if issues.iter().any(Issue::is_error) {
        return issues;
    }
    issues.extend(careplane_fhir::validate::validate(state.defs, body));
    if !issues.iter().any(Issue::is_error) {
        issues.extend(crate::subscription::issues(state, rt, body));
    }
    issues
}

/// The body's type matches the URL and, on update, its id equals the URL id.
pub(crate) fn identity_issues(rt: &ResourceType, body: &Value, url_id: Option<&Id>) -> Vec<Issue> {
    let found = body.get("resourceType").and_then(Value::as_str);
    if found != Some(rt.as_str()) {
        let msg = format!(
            "The body's resourceType ({}) must be {rt}",
            found.unwrap_or("missing")
        );
        return vec![Issue::error(IssueCode::Invalid, msg).at(rt.as_str())];
    }
    let mut issues = Vec::new();
    if let Some(url_id) = url_id {
        match body.get("id").and_then(Value::as_str) {
            Some(id) if id == url_id.as_str() => {}
            Some(id) => issues.push(
                Issue::error(
                    IssueCode::Invalid,
                    format!("The body id '{id}' differs from the URL id '{url_id}'"),
                )
                .at(format!("{rt}.id")),
            ),
            None => issues.push(
                Issue::error(
                    IssueCode::Required,
                    format!("An update must carry the id '{url_id}' in the body"),
                )
                .at(format!("{rt}.id")),
            ),
        }
    }
    issues
}

/// A resource response honouring `Prefer`, with ETag/Last-Modified and optionally Location.
pub(crate) fn resource_response(
    status: StatusCode,
    stored: &StoredResource,
    format: Format,
    prefer: &Prefer,
    base: Option<&BaseUrl>,
) -> Result<Response> {
    let mut response = match prefer.return_ {
        ReturnPreference::Minimal => empty_response(status),
        ReturnPreference::OperationOutcome => {
            fhir_json_response(status, &operation_outcome(&[]), format.pretty)
        }
        ReturnPreference::Representation => stored_body(status, stored, format)?,
    };
    version_headers(response.headers_mut(), stored);
    if let Some(BaseUrl(base)) = base {
        let location = format!(
            "{base}/{}/{}/_history/{}",
            stored.resource_type, stored.id, stored.version
        );
        set_location(response.headers_mut(), &location);
    }
    Ok(response)
}

/// The stored JSON as is (no re-serialisation) unless pretty printing is asked for.
pub(crate) fn stored_body(
    status: StatusCode,
    stored: &StoredResource,
    format: Format,
) -> Result<Response> {
    if format.pretty {
        let value = stored
            .json()
            .map_err(|e| ApiError::Internal(format!("stored JSON unreadable: {e}")))?;
        return Ok(fhir_json_response(status, &value, true));
    }
    Ok(raw_json_response(status, stored.body.clone()))
}
