//! Write logic shared by single requests and transaction Bundles, over any [`StoreTx`].

use std::future::Future;
use std::time::Duration;

use careplane_fhir::ResourceType;
use serde_json::Value;

use careplane_fhir::VersionId;

use crate::{
    Condition, CreateOutcome, Result, StoreError, StoreTx, TenantId, UpdateOptions, UpdateOutcome,
};

/// How often a transaction that lost a race (serialization failure, deadlock, unique
/// violation) is run again before the caller gets a retryable error.
const MAX_ATTEMPTS: u32 = 4;

/// Runs `attempt` again while it fails with a transient conflict, with a short growing pause.
pub async fn retry_transient<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut tries = 1;
    loop {
        match attempt().await {
            Err(e) if e.is_transient() && tries < MAX_ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(5 << tries)).await;
                tries += 1;
            }
            other => return other,
        }
    }
}

/// Creates under `id` unless `condition` matches: 0 matches create, 1 returns it, more fail.
/// The condition is locked first so concurrent identical conditional creates make one resource.
pub async fn create_in(
    tx: &mut dyn StoreTx,
    tenant: &TenantId,
    resource_type: &ResourceType,
    id: &str,
    body: Value,
    condition: Option<&Condition>,
) -> Result<CreateOutcome> {
    if let Some(condition) = condition {
        match locked_matches(tx, tenant, resource_type, condition)
            .await?
            .as_slice()
        {
            [] => {}
            [existing] => {
                let existing = tx.read(tenant, resource_type, existing).await?;
                return Ok(CreateOutcome::Existing(existing));
            }
            many => return Err(StoreError::MultipleMatches { count: many.len() }),
        }
    }
    let created = tx.create(tenant, resource_type, id, body).await?;
    Ok(CreateOutcome::Created(created))
}

/// Matches of a condition, after locking it for the rest of the transaction, so that a
/// decision taken on "no match" (create) cannot be taken twice by concurrent transactions.
pub async fn locked_matches(
    tx: &mut dyn StoreTx,
    tenant: &TenantId,
    resource_type: &ResourceType,
    condition: &Condition,
) -> Result<Vec<String>> {
    tx.lock(&format!(
        "condition {tenant} {resource_type} {}",
        condition.criteria
    ))
    .await?;
    tx.matching(tenant, resource_type, condition).await
}

/// `PUT /{type}?criteria` (R4 http.html#cond-update): no match creates (under the body's id when
/// it has one and update-as-create is allowed), one match is updated (the body's id, if any,
/// must be that match's), several are a 412.
pub async fn conditional_update_in(
    tx: &mut dyn StoreTx,
    tenant: &TenantId,
    resource_type: &ResourceType,
    condition: &Condition,
    mut body: Value,
    options: UpdateOptions,
) -> Result<UpdateOutcome> {
    let body_id = body.get("id").and_then(Value::as_str).map(str::to_string);
    let id = match locked_matches(tx, tenant, resource_type, condition)
        .await?
        .as_slice()
    {
        [] => match body_id {
            Some(id) => return tx.update(tenant, resource_type, &id, body, options).await,
            None => {
                let id = uuid::Uuid::new_v4().to_string();
                let created = tx.create(tenant, resource_type, &id, body).await?;
                return Ok(UpdateOutcome {
                    resource: created,
                    created: true,
                });
            }
        },
        [one] => one.clone(),
        many => return Err(StoreError::MultipleMatches { count: many.len() }),
    };
    if let Some(found) = body_id.filter(|b| *b != id) {
        return Err(StoreError::IdMismatch { found, matched: id });
    }
    if let Some(fields) = body.as_object_mut() {
        fields.insert("id".into(), Value::String(id.clone()));
    }
    tx.update(tenant, resource_type, &id, body, options).await
}

/// `DELETE /{type}?criteria`: no match is a success with nothing deleted, one match is
/// deleted, several are a 412 (deleting many at once is refused, not guessed at).
pub async fn conditional_delete_in(
    tx: &mut dyn StoreTx,
    tenant: &TenantId,
    resource_type: &ResourceType,
    condition: &Condition,
    if_match: Option<VersionId>,
) -> Result<Option<VersionId>> {
    match locked_matches(tx, tenant, resource_type, condition)
        .await?
        .as_slice()
    {
        [] => Ok(None),
        [one] => tx.delete(tenant, resource_type, one, if_match).await,
        many => Err(StoreError::MultipleMatches { count: many.len() }),
    }
}
