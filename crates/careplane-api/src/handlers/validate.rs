//! `POST /{type}/$validate` and `POST /{type}/{id}/$validate`: the OperationOutcome that a create
//! (or update of that id) would produce, without storing anything. 200 when valid, 400 when not.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use careplane_fhir::{operation_outcome, Id, Issue, ResourceType};
use serde_json::Value;

use super::body_issues;
use crate::error::Result;
use crate::extract::{FhirBody, Format, Target};
use crate::response::fhir_json_response;
use crate::state::AppState;

pub async fn type_level(
    State(state): State<AppState>,
    target: Target,
    format: Format,
    FhirBody(body): FhirBody,
) -> Result<Response> {
    Ok(respond(&state, &target.resource_type, body, None, format))
}

pub async fn instance(
    State(state): State<AppState>,
    target: Target,
    format: Format,
    FhirBody(body): FhirBody,
) -> Result<Response> {
    Ok(respond(
        &state,
        &target.resource_type,
        body,
        target.id.as_ref(),
        format,
    ))
}

fn respond(
    state: &AppState,
    rt: &ResourceType,
    body: Value,
    id: Option<&Id>,
    format: Format,
) -> Response {
    let resource = unwrap_parameters(rt, body);
    let issues = body_issues(state, rt, &resource, id);
    let status = if issues.iter().any(Issue::is_error) {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    fhir_json_response(status, &operation_outcome(&issues), format.pretty)
}

/// The operation's formal input is `Parameters` with a `resource` part; a bare resource is
/// accepted too, as most clients send one.
fn unwrap_parameters(rt: &ResourceType, body: Value) -> Value {
    if rt.as_str() == "Parameters"
        || body.get("resourceType").and_then(Value::as_str) != Some("Parameters")
    {
        return body;
    }
    let resource = body
        .get("parameter")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|p| p.get("name").and_then(Value::as_str) == Some("resource"))
        .and_then(|p| p.get("resource"))
        .cloned();
    resource.unwrap_or(body)
}
