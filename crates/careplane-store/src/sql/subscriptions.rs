//! The Subscription outbox: which resource types have live rest-hook listeners, and the match
//! job a committing transaction enqueues for its writes of those types. Matching criteria and
//! delivering are the worker's; here only what must happen inside the writing transaction.

use std::collections::{BTreeMap, BTreeSet};

use careplane_fhir::subscription::{self, MATCH_KIND};
use serde_json::{json, Value};

use super::{jobs, Backend, Sql};
use crate::{NewJob, Result, StoreError, TenantId};

/// Attempts of a match job: it only reads and enqueues, so failures are outages.
const MATCH_ATTEMPTS: u32 = 10;

/// A resource version written by the transaction (creates and updates; deletions notify no one,
/// since a deleted resource matches no criteria).
#[derive(Debug, Clone)]
pub(super) struct Change {
    pub tenant: String,
    pub resource_type: String,
    pub id: String,
    pub version: u64,
}

/// Replaces the topic row of Subscription `id` from its new body (`None`: deleted).
pub(super) async fn replace_topic<B: Backend>(
    conn: &mut B::Connection,
    tenant: &str,
    id: &str,
    body: Option<&Value>,
) -> Result<()> {
    Sql::<B>::new("DELETE FROM subscription_topics WHERE tenant = ")
        .text(tenant)
        .sql(" AND subscription_id = ")
        .text(id)
        .execute(conn)
        .await?;
    if let Some(resource_type) = body.and_then(subscription::topic) {
        Sql::<B>::new(
            "INSERT INTO subscription_topics (tenant, subscription_id, resource_type) VALUES (",
        )
        .text(tenant)
        .sql(", ")
        .text(id)
        .sql(", ")
        .text(&resource_type)
        .sql(")")
        .execute(conn)
        .await?;
    }
    Ok(())
}

/// Enqueues one match job per tenant listing the changes whose types have listeners. One
/// indexed lookup per tenant written; nothing is enqueued when no one listens.
pub(super) async fn enqueue_matches<B: Backend>(
    conn: &mut B::Connection,
    changes: &[Change],
    now: i64,
) -> Result<()> {
    let mut by_tenant: BTreeMap<&str, Vec<&Change>> = BTreeMap::new();
    for change in changes {
        by_tenant.entry(&change.tenant).or_default().push(change);
    }
    for (tenant, changes) in by_tenant {
        let types: BTreeSet<&str> = changes.iter().map(|c| c.resource_type.as_str()).collect();
        let mut query =
            Sql::<B>::new("SELECT DISTINCT resource_type FROM subscription_topics WHERE tenant = ");
        query.text(tenant).sql(" AND resource_type IN (");
        for (i, ty) in types.iter().enumerate() {
            if i > 0 {
                query.sql(", ");
            }
            query.text(ty);
        }
        let rows = query.sql(")").fetch_all(&mut *conn).await?;
        let listened: BTreeSet<String> = rows
            .iter()
            .map(|row| B::text(row, "resource_type"))
            .collect::<Result<_>>()?;
        let matched: Vec<Value> = changes
            .iter()
            .filter(|c| listened.contains(&c.resource_type))
            .map(|c| json!({"type": c.resource_type, "id": c.id, "version": c.version}))
            .collect();
        if matched.is_empty() {
            continue;
        }
        let mut job = NewJob::new(
            TenantId::parse(tenant)
                .ok_or_else(|| StoreError::Corrupt(format!("tenant '{tenant}'")))?,
            MATCH_KIND,
            json!({ "changes": matched }),
        );
        job.max_attempts = MATCH_ATTEMPTS;
        jobs::enqueue::<B>(conn, &job, now).await?;
    }
    Ok(())
}
