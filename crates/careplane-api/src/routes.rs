//! The whole FHIR route table on one screen, ordered system → type → instance. The interaction
//! lists below are what the CapabilityStatement advertises; a test drives each one through
//! this router, so the statement cannot claim a route that does not exist.

use axum::routing::{get, post};
use axum::Router;

use crate::handlers::{
    bundle, capabilities, create, delete, export, history, import, patch, read, search, update,
    validate,
};
use crate::state::AppState;

/// R4 `TypeRestfulInteraction` codes implemented for every resource type.
pub const TYPE_INTERACTIONS: &[&str] = &[
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
];

/// R4 `SystemRestfulInteraction` codes implemented.
pub const SYSTEM_INTERACTIONS: &[&str] =
    &["transaction", "batch", "history-system", "search-system"];

/// Operations implemented on every resource type (name, canonical definition).
pub const TYPE_OPERATIONS: &[(&str, &str)] = &[(
    "validate",
    "http://hl7.org/fhir/OperationDefinition/Resource-validate",
)];

/// Operations on the whole server (name, canonical definition). `$import` (NDJSON, async) has no
/// standard R4 definition; the CapabilityStatement's documentation describes it.
pub const SYSTEM_OPERATIONS: &[(&str, &str)] = &[(
    "export",
    "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
)];

/// Operations of particular resource types (type, name, canonical definition).
pub const RESOURCE_OPERATIONS: &[(&str, &str, &str)] = &[
    (
        "Patient",
        "export",
        "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
    ),
    (
        "Patient",
        "everything",
        "http://hl7.org/fhir/OperationDefinition/Patient-everything",
    ),
    (
        "Group",
        "export",
        "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
    ),
];

pub fn fhir_routes() -> Router<AppState> {
    Router::new()
        .route("/", post(bundle::transaction_or_batch).get(search::system))
        .route("/metadata", get(capabilities::capabilities))
        .route("/_history", get(history::system))
        // Bulk Data export (async): kick-off on system, Patient and Group/{id}; status; files.
        .route("/$export", get(export::system))
        .route(
            "/$export-status/{job}",
            get(export::status).delete(export::cancel),
        )
        .route("/$export-file/{job}/{file}", get(export::file))
        // NDJSON bulk load (async), same pattern.
        .route("/$import", post(import::kick_off))
        .route(
            "/$import-status/{job}",
            get(import::status).delete(import::cancel),
        )
        // Literal segments ($validate, _history) take precedence over {id} in the matcher.
        .route(
            "/{type}",
            post(create::create)
                .get(search::type_level)
                .put(update::conditional)
                .delete(delete::conditional),
        )
        .route("/{type}/_search", post(search::type_level_post))
        .route("/{type}/$validate", post(validate::type_level))
        .route("/{type}/_history", get(history::type_level))
        .route("/{type}/$export", get(export::type_level))
        .route(
            "/{type}/{id}",
            get(read::read)
                .put(update::update)
                .patch(patch::patch)
                .delete(delete::delete),
        )
        .route("/{type}/{id}/$validate", post(validate::instance))
        .route("/{type}/{id}/$everything", get(search::everything))
        .route("/{type}/{id}/$export", get(export::instance))
        .route("/{type}/{id}/{compartment}", get(search::compartment))
        .route("/{type}/{id}/_history", get(history::instance))
        .route("/{type}/{id}/_history/{vid}", get(read::vread))
}
