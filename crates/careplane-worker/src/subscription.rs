//! Subscription rest-hook notifications (R4 subscription.html), in two jobs:
//!
//! 1. `subscription-match`, enqueued by the store in the transaction of a write whose type a
//!    live Subscription listens to (the outbox): evaluates each such Subscription's criteria
//!    against the written resources and enqueues one delivery per match, in the transaction
//!    that completes the match job, so a match is never lost nor delivered twice by a retry.
//! 2. `subscription-deliver`: one notification to one endpoint. Every attempt re-reads the
//!    Subscription and the resource and re-checks the endpoint against the allow-list, so a
//!    Subscription switched off, deleted or pointed elsewhere since the match gets nothing;
//!    failures back off and end in the dead letters like every job.

use std::time::Duration;

use async_trait::async_trait;
use careplane_fhir::subscription::{
    self, AllowList, Criteria, RestHook, DELIVER_KIND, JSON_PAYLOAD, MATCH_KIND,
};
use careplane_fhir::{Definitions, Id, ResourceType};
use careplane_store::{NewJob, SearchOptions, StoreError, StoredResource, TenantId, UpdateOptions};
use serde_json::{json, Value};

use crate::{Finished, Handler, JobContext, JobError};

/// Subscriptions of one tenant read per page while matching.
const SUBSCRIPTION_PAGE: usize = 200;

/// One written resource, as the store's outbox lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Change {
    resource_type: String,
    id: String,
}

/// Finds the Subscriptions each change matches and enqueues their deliveries.
pub struct MatchHandler {
    pub defs: &'static Definitions,
    /// Attempts of each delivery before it is dead-lettered.
    pub delivery_attempts: u32,
}

#[async_trait]
impl Handler for MatchHandler {
    fn kind(&self) -> &'static str {
        MATCH_KIND
    }

    async fn run(&self, ctx: &JobContext) -> Result<Finished, JobError> {
        let job = ctx.job();
        let tenant = tenant_of(ctx)?;
        let changes = changes(&job.payload)?;
        let subscriptions = self.live_subscriptions(ctx, &tenant).await?;
        let mut deliveries = Vec::new();
        for change in &changes {
            for (subscription_id, criteria) in &subscriptions {
                if criteria.resource_type != change.resource_type {
                    continue;
                }
                ctx.check()?;
                if self.matches(ctx, &tenant, criteria, &change.id).await? {
                    let payload = json!({
                        "subscription": subscription_id,
                        "type": change.resource_type,
                        "id": change.id,
                    });
                    let mut delivery = NewJob::new(tenant.clone(), DELIVER_KIND, payload);
                    delivery.max_attempts = self.delivery_attempts;
                    deliveries.push(delivery);
                }
            }
        }
        let mut tx = ctx.store.begin().await?;
        for delivery in &deliveries {
            tx.enqueue(delivery).await?;
        }
        ctx.complete_in(tx.as_mut(), &json!({"notifications": deliveries.len()}))
            .await?;
        tx.commit().await?;
        Ok(Finished::InTransaction)
    }
}

impl MatchHandler {
    /// The tenant's Subscriptions that get notifications, with their parsed criteria. One whose
    /// criteria no longer parse (definitions changed) is skipped with a warning.
    async fn live_subscriptions(
        &self,
        ctx: &JobContext,
        tenant: &TenantId,
    ) -> Result<Vec<(String, Criteria)>, JobError> {
        let mut found = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut params = vec![
                ("status".to_string(), "active,requested".to_string()),
                ("_count".to_string(), SUBSCRIPTION_PAGE.to_string()),
            ];
            if let Some(c) = &cursor {
                params.push(("_cursor".into(), c.clone()));
            }
            let options = careplane_fhir::search::query::ParseOptions {
                strict: true,
                max_count: SUBSCRIPTION_PAGE as u32,
            };
            let request = careplane_fhir::search::query::parse(
                self.defs,
                &["Subscription".to_string()],
                &params,
                options,
            )
            .map_err(|e| JobError::Fatal(format!("subscription search: {}", e.message)))?;
            let page = ctx
                .store
                .search(tenant, &request, &page_options(SUBSCRIPTION_PAGE))
                .await?;
            for stored in &page.matches {
                let body = json_of(stored)?;
                if subscription::topic(&body).is_none() {
                    continue;
                }
                let text = body.get("criteria").and_then(Value::as_str).unwrap_or("");
                match Criteria::parse(text) {
                    Ok(criteria) => found.push((stored.id.clone(), criteria)),
                    Err(e) => {
                        tracing::warn!(subscription = %stored.id, error = %e, "skipping Subscription")
                    }
                }
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(found),
            }
        }
    }

    /// Whether resource `id` (as it is now) meets `criteria`: the criteria's own search,
    /// narrowed to that id, so matching means exactly what a client's search would return.
    async fn matches(
        &self,
        ctx: &JobContext,
        tenant: &TenantId,
        criteria: &Criteria,
        id: &str,
    ) -> Result<bool, JobError> {
        let request = match criteria.search(self.defs, &[("_id".to_string(), id.to_string())]) {
            Ok(request) => request,
            Err(e) => {
                tracing::warn!(error = %e, "Subscription criteria no longer parse");
                return Ok(false);
            }
        };
        let page = ctx.store.search(tenant, &request, &page_options(1)).await?;
        Ok(!page.matches.is_empty())
    }
}

/// Delivers one notification over HTTP(S).
pub struct DeliverHandler {
    pub defs: &'static Definitions,
    allow: AllowList,
    client: reqwest::Client,
}

impl DeliverHandler {
    /// A client that never follows redirects (a redirect could leave the allow-list) and gives
    /// each attempt `timeout`.
    pub fn new(
        defs: &'static Definitions,
        allow: AllowList,
        timeout: Duration,
    ) -> Result<DeliverHandler, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("careplane/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client for Subscription notifications: {e}"))?;
        Ok(DeliverHandler {
            defs,
            allow,
            client,
        })
    }
}

#[async_trait]
impl Handler for DeliverHandler {
    fn kind(&self) -> &'static str {
        DELIVER_KIND
    }

    async fn run(&self, ctx: &JobContext) -> Result<Finished, JobError> {
        let job = ctx.job();
        let tenant = tenant_of(ctx)?;
        let field = |name: &str| {
            job.payload
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| JobError::Fatal(format!("delivery payload lacks '{name}'")))
        };
        let (subscription_id, resource_type, id) =
            (field("subscription")?, field("type")?, field("id")?);
        let Some(stored) = self
            .current(ctx, &tenant, "Subscription", subscription_id)
            .await?
        else {
            return Ok(skipped("the Subscription was deleted"));
        };
        let subscription = json_of(&stored)?;
        if subscription::topic(&subscription).as_deref() != Some(resource_type) {
            return Ok(skipped("the Subscription no longer listens to this type"));
        }
        let hook = RestHook::of(&subscription).map_err(JobError::Fatal)?;
        if !self.allow.allows(&hook.endpoint) {
            // Refused before any connection is made; visible in the dead letters.
            return Err(JobError::Fatal(format!(
                "endpoint of Subscription/{subscription_id} is not in CAREPLANE_SUBSCRIPTION_ALLOWED_ENDPOINTS"
            )));
        }
        let Some(resource) = self.current(ctx, &tenant, resource_type, id).await? else {
            return Ok(skipped("the resource was deleted"));
        };
        ctx.check()?;
        let request = match hook.payload.as_deref() {
            None => self.client.post(&hook.endpoint),
            Some(_) => {
                let url = format!(
                    "{}/{resource_type}/{id}",
                    hook.endpoint.trim_end_matches('/')
                );
                self.client
                    .put(url)
                    .header(reqwest::header::CONTENT_TYPE, JSON_PAYLOAD)
                    .body(resource.body.clone())
            }
        };
        let request = hook.headers.iter().fold(request, |r, (name, value)| {
            r.header(name.as_str(), value.as_str())
        });
        let response = tokio::select! {
            response = request.send() => response,
            _ = ctx.lost() => return Err(JobError::LeaseLost),
        };
        let failure = match response {
            Ok(response) if response.status().is_success() => {
                return Ok(Finished::WithResult(
                    json!({"status": response.status().as_u16()}),
                ))
            }
            Ok(response) => format!("the endpoint answered {}", response.status()),
            // The URL is left out: logs and job errors never carry endpoint query strings.
            Err(e) => e.without_url().to_string(),
        };
        if job.attempts >= job.max_attempts {
            self.mark_error(ctx, &tenant, stored, subscription, &failure)
                .await;
        }
        Err(JobError::Retry(format!(
            "Subscription/{subscription_id}: {failure}"
        )))
    }
}

impl DeliverHandler {
    /// After the last attempt failed, the Subscription says so (R4: `status = error` and
    /// `error`), which also stops further notifications until a client sets it `requested` again.
    /// Only if nobody changed it since it was read; a failure here leaves the dead letter as
    /// the only record.
    async fn mark_error(
        &self,
        ctx: &JobContext,
        tenant: &TenantId,
        stored: StoredResource,
        mut subscription: Value,
        failure: &str,
    ) {
        subscription["status"] = json!("error");
        subscription["error"] = json!(format!("notifications failed: {failure}"));
        let (Some(rt), Some(id)) = (
            ResourceType::parse(self.defs, "Subscription"),
            Id::parse(&stored.id),
        ) else {
            return;
        };
        let options = UpdateOptions {
            if_match: Some(stored.version),
            allow_create: false,
        };
        if let Err(e) = ctx
            .store
            .update(tenant, &rt, &id, subscription, options)
            .await
        {
            tracing::warn!(subscription = %stored.id, error = %e, "could not mark the Subscription as errored");
        }
    }

    /// The current version of a resource of the job's tenant, `None` when deleted or gone.
    async fn current(
        &self,
        ctx: &JobContext,
        tenant: &TenantId,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<StoredResource>, JobError> {
        let (Some(rt), Some(id)) = (ResourceType::parse(self.defs, resource_type), Id::parse(id))
        else {
            return Err(JobError::Fatal(format!(
                "not a resource reference: {resource_type}/{id}"
            )));
        };
        match ctx.store.read(tenant, &rt, &id).await {
            Ok(stored) => Ok(Some(stored)),
            Err(StoreError::NotFound { .. } | StoreError::Gone { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

fn tenant_of(ctx: &JobContext) -> Result<TenantId, JobError> {
    let tenant = &ctx.job().tenant;
    TenantId::parse(tenant).ok_or_else(|| JobError::Fatal(format!("job tenant '{tenant}'")))
}

fn skipped(reason: &str) -> Finished {
    Finished::WithResult(json!({"skipped": reason}))
}

fn page_options(page_size: usize) -> SearchOptions {
    SearchOptions {
        page_size,
        max_included: 0,
        count_only: false,
    }
}

fn json_of(stored: &StoredResource) -> Result<Value, JobError> {
    stored
        .json()
        .map_err(|e| JobError::Fatal(format!("stored JSON unreadable: {e}")))
}

fn changes(payload: &Value) -> Result<Vec<Change>, JobError> {
    let list = payload
        .get("changes")
        .and_then(Value::as_array)
        .ok_or_else(|| JobError::Fatal("match payload lacks 'changes'".into()))?;
    let mut found: Vec<Change> = Vec::with_capacity(list.len());
    for c in list {
        let text = |name: &str| c.get(name).and_then(Value::as_str).map(str::to_string);
        let change = match (text("type"), text("id")) {
            (Some(resource_type), Some(id)) => Change { resource_type, id },
            _ => return Err(JobError::Fatal(format!("malformed change {c}"))),
        };
        // A resource written twice in one transaction is notified once, as it is now.
        if !found.contains(&change) {
            found.push(change);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_read_from_the_outbox_payload() {
        let payload = json!({"changes": [{"type": "Observation", "id": "o1", "version": 2}]});
        assert_eq!(
            changes(&payload).unwrap(),
            vec![Change {
                resource_type: "Observation".into(),
                id: "o1".into()
            }]
        );
        let twice = json!({"changes": [{"type": "Patient", "id": "p", "version": 1}, {"type": "Patient", "id": "p", "version": 2}]});
        assert_eq!(changes(&twice).unwrap().len(), 1);
        assert!(changes(&json!({})).is_err());
        assert!(changes(&json!({"changes": [{"type": "Observation"}]})).is_err());
    }
}
