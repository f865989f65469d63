//! `DELETE /{type}/{id}`: soft delete; later reads answer 410 and history keeps the deletion.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use careplane_fhir::{operation_outcome, Issue};
use careplane_store::TenantId;

use crate::error::Result;
use crate::extract::{Format, Preconditions, Prefer, ReturnPreference, Target};
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
    let mut response = if prefer.return_ == ReturnPreference::OperationOutcome {
        let msg = format!("{}/{id} deleted", target.resource_type);
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
    Ok(response)
}
