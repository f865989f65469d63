//! `GET /{type}/{id}` (read) and `GET /{type}/{id}/_history/{vid}` (vread).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use careplane_store::TenantId;

use super::stored_body;
use crate::error::{ApiError, Result};
use crate::extract::{Format, Preconditions, Target};
use crate::response::{empty_response, version_headers};
use crate::state::AppState;

pub async fn read(
    State(state): State<AppState>,
    target: Target,
    format: Format,
    preconditions: Preconditions,
) -> Result<Response> {
    let stored = state
        .store
        .read(
            &TenantId::default_tenant(),
            &target.resource_type,
            target.id()?,
        )
        .await?;
    let mut response = if preconditions.if_none_match == Some(stored.version) {
        empty_response(StatusCode::NOT_MODIFIED)
    } else {
        stored_body(StatusCode::OK, &stored, format)?
    };
    version_headers(response.headers_mut(), &stored);
    Ok(response)
}

pub async fn vread(
    State(state): State<AppState>,
    target: Target,
    format: Format,
) -> Result<Response> {
    let version = target
        .version
        .ok_or_else(|| ApiError::Internal("route without {vid}".into()))?;
    let tenant = TenantId::default_tenant();
    let stored = state
        .store
        .vread(&tenant, &target.resource_type, target.id()?, version)
        .await?;
    let mut response = stored_body(StatusCode::OK, &stored, format)?;
    version_headers(response.headers_mut(), &stored);
    Ok(response)
}
