//! `DELETE /{type}/{id}`: soft delete; later reads answer 410 and history keeps the deletion.
//! `DELETE /{type}?criteria`: the same on the one match (none: 204 with nothing deleted; many: 412).

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use careplane_fhir::{operation_outcome, Issue};
use careplane_store::TenantId;

use crate::condition::parse_condition;
use crate::error::Result;
use crate::extract::{Format, Preconditions, Prefer, QueryParams, ReturnPreference, Target};
use crate::response::{empty_response, fhir_json_response};
use crate::state::AppState;

pub async fn delete(
    State(state): State<AppState>,
    target: Target,
    format: Format,
    prefer: Prefer,
    preconditions: Preconditions,
) -> Result<Response> {
    let tenant = TenantId::default_tenant();
    let id = target.id()?;
    let version = state
        .store
        .delete(&tenant, &target.resource_type, id, preconditions.if_match)
        .await?;
    let msg = format!("{}/{id} deleted", target.resource_type);
    Ok(deleted(msg, version, format, &prefer))
}

pub async fn conditional(
    State(state): State<AppState>,
    target: Target,
    format: Format,
    prefer: Prefer,
    preconditions: Preconditions,
    query: QueryParams,
) -> Result<Response> {
    let rt = &target.resource_type;
    let condition = parse_condition(state.defs, rt, &query.as_criteria())?;
    let version = state
        .store
        .conditional_delete(
            &TenantId::default_tenant(),
            rt,
            &condition,
            preconditions.if_match,
        )
        .await?;
    let msg = match version {
        Some(_) => format!("The {rt} matching '{}' was deleted", condition.criteria),
        None => format!(
            "No {rt} matched '{}'; nothing was deleted",
            condition.criteria
        ),
    };
    Ok(deleted(msg, version, format, &prefer))
}

fn deleted(
    msg: String,
    version: Option<careplane_fhir::VersionId>,
    format: Format,
    prefer: &Prefer,
) -> Response {
    let mut response = if prefer.return_ == ReturnPreference::OperationOutcome {
        fhir_json_response(
            StatusCode::OK,
            &operation_outcome(&[Issue::information(msg)]),
            format.pretty,
        )
    } else {
        empty_response(StatusCode::NO_CONTENT)
    };
    if let Some(etag) = version.and_then(|v| HeaderValue::from_str(&format!("W/\"{v}\"")).ok()) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}
