//! `PATCH /{type}/{id}` with a JSON Patch: applied to the current version, validated, and
//! written with that version as the precondition so a concurrent write is never lost.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use careplane_fhir::{Id, Issue, IssueCode, ResourceType};
use careplane_store::{StoreError, TenantId, UpdateOptions};
use serde_json::Value;

use super::{check_body, resource_response};
use crate::error::{ApiError, Result};
use crate::extract::{Format, PatchBody, Preconditions, Prefer, Target};
use crate::state::AppState;

/// Retries when another writer got in between our read and our write (no If-Match given).
const MAX_ATTEMPTS: usize = 5;

pub async fn patch(
    State(state): State<AppState>,
    target: Target,
    format: Format,
    prefer: Prefer,
    preconditions: Preconditions,
    PatchBody(patch): PatchBody,
) -> Result<Response> {
    let (tenant, rt, id) = (
        TenantId::default_tenant(),
        &target.resource_type,
        target.id()?,
    );
    for _ in 0..MAX_ATTEMPTS {
        let current = state.store.read(&tenant, rt, id).await?;
        if let Some(expected) = preconditions.if_match.filter(|v| *v != current.version) {
            let msg = format!(
                "If-Match expects version {expected}, the current version is {}",
                current.version
            );
            return Err(ApiError::PreconditionFailed(msg));
        }
        let mut doc = current
            .json()
            .map_err(|e| ApiError::Internal(format!("stored JSON unreadable: {e}")))?;
        apply(&mut doc, &patch)?;
        check_patched(&state, rt, &mut doc, id)?;
        let options = UpdateOptions {
            if_match: Some(current.version),
            allow_create: false,
        };
        match state.store.update(&tenant, rt, id, doc, options).await {
            Ok(outcome) => {
                return resource_response(StatusCode::OK, &outcome.resource, format, &prefer, None)
            }
            Err(StoreError::VersionConflict { .. }) if preconditions.if_match.is_none() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Conflict(
        "The resource kept changing while the patch was applied; retry".into(),
    ))
}

/// Applies `patch` to `doc`; a failing operation (a `test`, a missing path) is a 422.
pub(crate) fn apply(doc: &mut Value, patch: &json_patch::Patch) -> Result<()> {
    json_patch::patch(doc, patch).map_err(|e| {
        ApiError::Unprocessable(vec![Issue::error(
            IssueCode::Processing,
            format!("The patch cannot be applied: {e}"),
        )])
    })
}

/// Checks a patched resource as a PUT body is checked; an invalid result is a 422, since the
/// request itself was well-formed.
pub(crate) fn check_patched(
    state: &AppState,
    rt: &ResourceType,
    doc: &mut Value,
    id: &Id,
) -> Result<()> {
    check_body(state, rt, doc, Some(id)).map_err(|e| match e {
        ApiError::BadRequest(issues) => ApiError::Unprocessable(issues),
        other => other,
    })
}
