//! `GET /metadata`: a CapabilityStatement generated from the route table and the definitions.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use crate::error::Result;
use crate::extract::{Format, QueryParams};
use crate::response::fhir_json_response;
use crate::routes::{SYSTEM_INTERACTIONS, TYPE_INTERACTIONS, TYPE_OPERATIONS};
use crate::state::AppState;

pub async fn capabilities(
    State(state): State<AppState>,
    format: Format,
    _query: QueryParams,
) -> Result<Response> {
    Ok(fhir_json_response(
        StatusCode::OK,
        &statement(&state),
        format.pretty,
    ))
}

pub fn statement(state: &AppState) -> Value {
    let interactions =
        |codes: &[&str]| codes.iter().map(|c| json!({"code": c})).collect::<Vec<_>>();
    let operations: Vec<Value> = TYPE_OPERATIONS
        .iter()
        .map(|(name, definition)| json!({"name": name, "definition": definition}))
        .collect();
    let resources: Vec<Value> = state
        .defs
        .resource_types()
        .iter()
        .map(|rt| {
            json!({
                "type": rt,
                "profile": format!("http://hl7.org/fhir/StructureDefinition/{rt}"),
                "interaction": interactions(TYPE_INTERACTIONS),
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": state.settings.allow_update_create,
                "conditionalCreate": true,
                "conditionalRead": "not-supported",
                "conditionalUpdate": false,
                "conditionalDelete": "not-supported",
                "operation": operations,
            })
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": state.started_at,
        "publisher": "Careplane",
        "kind": "instance",
        "software": {"name": "Careplane", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "Careplane FHIR R4 server"},
        "fhirVersion": state.defs.fhir_version,
        "format": ["application/fhir+json", "application/json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            "documentation": "JSON only: requests for XML are answered 406 (Accept/_format) or 415 (Content-Type) \
                with an OperationOutcome. Conditional create supports If-None-Exist with _id or identifier. \
                Search arrives with a later release: search interactions are not advertised.",
            "resource": resources,
            "interaction": interactions(SYSTEM_INTERACTIONS),
        }],
    })
}
