//! `PUT /{type}/{id}`: a new version; creates with the client's id only when configured.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use careplane_store::{TenantId, UpdateOptions};

use super::{check_body, resource_response};
use crate::error::Result;
use crate::extract::{BaseUrl, FhirBody, Format, Preconditions, Prefer, Target};
use crate::state::AppState;

pub async fn update(
    State(state): State<AppState>,
    target: Target,
    format: Format,
    prefer: Prefer,
    preconditions: Preconditions,
    base: BaseUrl,
    FhirBody(body): FhirBody,
) -> Result<Response> {
    let id = target.id()?;
    check_body(&state, &target.resource_type, &body, Some(id))?;
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
