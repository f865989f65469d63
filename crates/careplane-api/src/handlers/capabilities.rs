//! `GET /metadata`: a CapabilityStatement generated from the route table and the definitions.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use crate::error::Result;
use crate::extract::{Format, QueryParams};
use crate::response::fhir_json_response;
use crate::routes::{
    RESOURCE_OPERATIONS, SYSTEM_INTERACTIONS, SYSTEM_OPERATIONS, TYPE_INTERACTIONS, TYPE_OPERATIONS,
};
use crate::state::AppState;

pub async fn capabilities(
    State(state): State<AppState>,
    format: Format,
    _query: QueryParams,
) -> Result<Response> {
    let statement = state.capabilities.get_or_init(|| statement(&state));
    Ok(fhir_json_response(StatusCode::OK, statement, format.pretty))
}

/// The official parameters of a type (searchable ones: `special` needs custom logic).
fn search_params(state: &AppState, rt: &str) -> Vec<Value> {
    let mut params: Vec<Value> = state
        .defs
        .search_params_for(rt)
        .filter(|p| {
            p.param_type != "special"
                && !matches!(p.code.as_str(), "_text" | "_content" | "_list" | "_query")
        })
        .map(|p| json!({"name": p.code, "definition": p.url, "type": p.param_type}))
        .collect();
    params.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    params.dedup_by(|a, b| a["name"] == b["name"]);
    params
}

fn search_includes(state: &AppState, rt: &str) -> Vec<String> {
    state
        .defs
        .search_params_for(rt)
        .filter(|p| p.param_type == "reference" && p.base.iter().any(|b| b == rt))
        .map(|p| format!("{rt}:{}", p.code))
        .collect()
}

fn search_rev_includes(state: &AppState, rt: &str) -> Vec<String> {
    state
        .defs
        .search_params()
        .iter()
        .filter(|p| p.param_type == "reference" && p.targets.iter().any(|t| t == rt))
        .flat_map(|p| p.base.iter().map(move |b| format!("{b}:{}", p.code)))
        .collect()
}

/// When what this statement advertises last changed (bump it with the routes). A constant, not
/// the process's start time: behind a load balancer every replica must serve the same statement.
const STATEMENT_DATE: &str = "2026-11-24";

pub fn statement(state: &AppState) -> Value {
    let interactions =
        |codes: &[&str]| codes.iter().map(|c| json!({"code": c})).collect::<Vec<_>>();
    let operation =
        |(name, definition): &(&str, &str)| json!({"name": name, "definition": definition});
    let operations_of = |rt: &str| -> Vec<Value> {
        TYPE_OPERATIONS
            .iter()
            .map(operation)
            .chain(
                RESOURCE_OPERATIONS
                    .iter()
                    .filter(|(t, _, _)| *t == rt)
                    .map(|(_, name, definition)| operation(&(*name, *definition))),
            )
            .collect()
    };
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
                "conditionalUpdate": true,
                "conditionalDelete": "single",
                "operation": operations_of(rt),
                "searchParam": search_params(state, rt),
                "searchInclude": search_includes(state, rt),
                "searchRevInclude": search_rev_includes(state, rt),
            })
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": STATEMENT_DATE,
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
                with an OperationOutcome. Conditional create (If-None-Exist), update (PUT [type]?criteria) and delete (DELETE [type]?criteria) take full search criteria; unknown parameters in a condition are refused. \
                Search: every official R4 SearchParameter of each type (listed per type), with the R4 modifiers \
                and prefixes, chains up to 3 levels, _has, _include/_revinclude(:iterate), _sort, _count, \
                _summary=true|text|data|count, _elements and _total. _total defaults to none; _total=estimate may be \
                approximate (PostgreSQL: the query planner's row estimate; SQLite: the exact count; exact whenever \
                all matches fit on the first page). Token :of-type applies to identifier parameters \
                (identifier:of-type=system|code|value). Quantities with a UCUM unit of mass, length, volume or \
                time (g, m, L, s and their common multiples) are compared across units; other units as written. \
                Unknown parameters are ignored (and reported) unless Prefer: handling=strict; unsupported uses of known parameters are always 400. \
                Bulk Data: $export (system, Patient, Group/[id]) and POST [base]/$import with an NDJSON body, \
                both asynchronous (Prefer: respond-async, 202 + Content-Location status URL).",
            "searchParam": [
                {"name": "_id", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id"},
                {"name": "_lastUpdated", "type": "date", "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated"},
                {"name": "_type", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Resource-type"},
            ],
            "resource": resources,
            "interaction": interactions(SYSTEM_INTERACTIONS),
            "operation": SYSTEM_OPERATIONS.iter().map(operation).collect::<Vec<_>>(),
        }],
    })
}
