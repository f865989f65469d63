//! `POST /{type}`: create with a server-assigned id; `If-None-Exist` makes it conditional.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use careplane_store::{CreateOutcome, TenantId};

use super::{check_body, resource_response};
use crate::condition::parse_condition;
use crate::error::Result;
use crate::extract::{BaseUrl, FhirBody, Format, Preconditions, Prefer, Target};
use crate::state::AppState;

pub async fn create(
    State(state): State<AppState>,
    target: Target,
    format: Format,
    prefer: Prefer,
    preconditions: Preconditions,
    base: BaseUrl,
    FhirBody(mut body): FhirBody,
) -> Result<Response> {
    let rt = &target.resource_type;
    check_body(&state, rt, &mut body, None)?;
    let condition = preconditions
        .if_none_exist
        .as_deref()
        .map(|criteria| parse_condition(state.defs, rt, criteria))
        .transpose()?;
    let tenant = TenantId::default_tenant();
    match state
        .store
        .create(&tenant, rt, body, condition.as_ref())
        .await?
    {
        CreateOutcome::Created(stored) => {
            resource_response(StatusCode::CREATED, &stored, format, &prefer, Some(&base))
        }
        CreateOutcome::Existing(stored) => {
            resource_response(StatusCode::OK, &stored, format, &prefer, None)
        }
    }
}
