//! `PUT /{type}/{id}`: a new version; creates with the client's id only when configured.
//! `PUT /{type}?criteria`: the same, on the one resource the criteria match.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use careplane_store::{TenantId, UpdateOptions};

use super::{check_body, resource_response};
use crate::condition::parse_condition;
use crate::error::Result;
use crate::extract::{BaseUrl, FhirBody, Format, Preconditions, Prefer, QueryParams, Target};
use crate::state::AppState;

pub async fn update(
    State(state): State<AppState>,
    target: Target,
    format: Format,
    prefer: Prefer,
    preconditions: Preconditions,
    base: BaseUrl,
    FhirBody(mut body): FhirBody,
) -> Result<Response> {
    let id = target.id()?;
    check_body(&state, &target.resource_type, &mut body, Some(id))?;
    let options = UpdateOptions {
        if_match: preconditions.if_match,
        allow_create: state.settings.allow_update_create,
    };
    let outcome = state
        .store
        .update(
            &TenantId::default_tenant(),
            &target.resource_type,
            id,
            body,
            options,
        )
        .await?;
    let (status, location) = if outcome.created {
        (StatusCode::CREATED, Some(&base))
    } else {
        (StatusCode::OK, None)
    };
    resource_response(status, &outcome.resource, format, &prefer, location)
}

/// `PUT /{type}?criteria`: conditional update with full search criteria (0 → create, 1 →
/// update, many → 412).
// One argument per extractor is how axum handlers read; bundling them would hide that.
#[allow(clippy::too_many_arguments)]
pub async fn conditional(
    State(state): State<AppState>,
    target: Target,
    format: Format,
    prefer: Prefer,
    preconditions: Preconditions,
    base: BaseUrl,
    query: QueryParams,
    FhirBody(mut body): FhirBody,
) -> Result<Response> {
    let rt = &target.resource_type;
    check_body(&state, rt, &mut body, None)?;
    let condition = parse_condition(state.defs, rt, &query.as_criteria())?;
    let options = UpdateOptions {
        if_match: preconditions.if_match,
        allow_create: state.settings.allow_update_create,
    };
    let outcome = state
        .store
        .conditional_update(&TenantId::default_tenant(), rt, &condition, body, options)
        .await?;
    let (status, location) = if outcome.created {
        (StatusCode::CREATED, Some(&base))
    } else {
        (StatusCode::OK, None)
    };
    resource_response(status, &outcome.resource, format, &prefer, location)
}
