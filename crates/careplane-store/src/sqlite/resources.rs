//! ResourceStore for SQLite. Writes run in one transaction on the single writer connection.

use async_trait::async_trait;
use careplane_fhir::{Id, ResourceType, VersionId};
use serde_json::Value;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use time::OffsetDateTime;

use super::SqliteStore;
use crate::model::{self, stamp};
use crate::{
    Condition, CreateOutcome, HistoryEntry, HistoryPage, HistoryQuery, HistoryScope, Method,
    ResourceStore, Result, StoreError, StoredResource, TenantId, UpdateOptions, UpdateOutcome,
};

const SELECT_CURRENT: &str =
    "SELECT r.version, r.deleted, r.last_updated, v.body FROM resources r \
     JOIN resource_versions v ON v.seq = r.seq \
     WHERE r.tenant = ? AND r.resource_type = ? AND r.id = ?";

const SELECT_VERSION: &str = "SELECT version, last_updated, method, body FROM resource_versions \
     WHERE tenant = ? AND resource_type = ? AND id = ? AND version = ?";

const SELECT_STATE: &str = "SELECT version, deleted, last_updated FROM resources \
     WHERE tenant = ? AND resource_type = ? AND id = ?";

const INSERT_VERSION: &str = "INSERT INTO resource_versions \
     (tenant, resource_type, id, version, last_updated, method, body) VALUES (?, ?, ?, ?, ?, ?, ?)";

const UPSERT_CURRENT: &str = "INSERT INTO resources (tenant, resource_type, id, version, seq, deleted, last_updated) \
     VALUES (?, ?, ?, ?, ?, ?, ?) \
     ON CONFLICT (tenant, resource_type, id) DO UPDATE SET \
     version = excluded.version, seq = excluded.seq, deleted = excluded.deleted, last_updated = excluded.last_updated";

const DELETE_IDENTIFIERS: &str =
    "DELETE FROM resource_identifiers WHERE tenant = ? AND resource_type = ? AND id = ?";

const INSERT_IDENTIFIER: &str =
    "INSERT INTO resource_identifiers (tenant, resource_type, id, system, value) VALUES (?, ?, ?, ?, ?)";

/// Current state of a logical resource, read inside a write transaction.
struct State {
    version: VersionId,
    deleted: bool,
    last_updated: i64,
}

#[async_trait]
impl ResourceStore for SqliteStore {
    async fn create(
        &self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        body: Value,
        condition: Option<&Condition>,
    ) -> Result<CreateOutcome> {
        let mut tx = self.writer.begin().await?;
        if let Some(condition) = condition {
            let matches = matching_ids(&mut tx, tenant, resource_type, condition).await?;
            match matches.as_slice() {
                [] => {}
                [id] => {
                    let existing = read_current(&mut tx, tenant, resource_type, id).await?;
                    return Ok(CreateOutcome::Existing(existing));
                }
                many => return Err(StoreError::MultipleMatches { count: many.len() }),
            }
        }
        let id = uuid::Uuid::new_v4().to_string();
        let stored = write_version(
            &mut tx,
            tenant,
            resource_type,
            &id,
            VersionId::FIRST,
            None,
            Method::Create,
            Some(body),
        )
        .await?;
        tx.commit().await?;
        Ok(CreateOutcome::Created(stored))
    }

    async fn read(
        &self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &Id,
    ) -> Result<StoredResource> {
        let mut conn = self.reader.acquire().await?;
        read_current(&mut conn, tenant, resource_type, id.as_str()).await
    }

    async fn vread(
        &self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &Id,
        version: VersionId,
    ) -> Result<StoredResource> {
        let row = sqlx::query(SELECT_VERSION)
            .bind(tenant.as_str())
            .bind(resource_type.as_str())
            .bind(id.as_str())
            .bind(version.get() as i64)
            .fetch_optional(&self.reader)
            .await?;
        let not_found = || StoreError::NotFound {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
        };
        let row = row.ok_or_else(not_found)?;
        let body: Option<String> = row.try_get("body")?;
        let body = body.ok_or_else(|| StoreError::Gone {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
            version,
        })?;
        Ok(StoredResource {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
            version,
            last_updated: from_millis(row.try_get("last_updated")?)?,
            body,
        })
    }

    async fn update(
        &self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &Id,
        body: Value,
        options: UpdateOptions,
    ) -> Result<UpdateOutcome> {
        let mut tx = self.writer.begin().await?;
        let state = current_state(&mut tx, tenant, resource_type, id.as_str()).await?;
        check_if_match(options.if_match, state.as_ref())?;
        let (version, method, created) = match &state {
            None if !options.allow_create => {
                return Err(StoreError::UpdateCreateDisabled {
                    resource_type: resource_type.to_string(),
                    id: id.to_string(),
                });
            }
            None => (VersionId::FIRST, Method::Create, true),
            Some(s) => (s.version.next(), Method::Update, s.deleted),
        };
        let after = state.as_ref().map(|s| s.last_updated);
        let stored = write_version(
            &mut tx,
            tenant,
            resource_type,
            id.as_str(),
            version,
            after,
            method,
            Some(body),
        )
        .await?;
        tx.commit().await?;
        Ok(UpdateOutcome {
            resource: stored,
            created,
        })
    }

    async fn delete(
        &self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        id: &Id,
        if_match: Option<VersionId>,
    ) -> Result<Option<VersionId>> {
        let mut tx = self.writer.begin().await?;
        let state = current_state(&mut tx, tenant, resource_type, id.as_str()).await?;
        let Some(state) = state else {
            return Err(StoreError::NotFound {
                resource_type: resource_type.to_string(),
                id: id.to_string(),
            });
        };
        check_if_match(if_match, Some(&state))?;
        if state.deleted {
            return Ok(None);
        }
        let version = state.version.next();
        write_version(
            &mut tx,
            tenant,
            resource_type,
            id.as_str(),
            version,
            Some(state.last_updated),
            Method::Delete,
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(Some(version))
    }

    async fn history(
        &self,
        tenant: &TenantId,
        scope: &HistoryScope,
        query: &HistoryQuery,
    ) -> Result<HistoryPage> {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT v.seq, v.resource_type, v.id, v.version, v.last_updated, v.method, v.body \
             FROM resource_versions v WHERE v.tenant = ",
        );
        qb.push_bind(tenant.as_str());
        match scope {
            HistoryScope::System => {}
            HistoryScope::Type(rt) => {
                qb.push(" AND v.resource_type = ").push_bind(rt.as_str());
            }
            HistoryScope::Instance(rt, id) => {
                qb.push(" AND v.resource_type = ").push_bind(rt.as_str());
                qb.push(" AND v.id = ").push_bind(id.as_str());
            }
        }
        if let Some(since) = query.since {
            qb.push(" AND v.last_updated >= ")
                .push_bind(to_millis(since));
        }
        if let Some(at) = query.at {
            let at = to_millis(at);
            qb.push(" AND v.last_updated <= ").push_bind(at);
            qb.push(
                " AND NOT EXISTS (SELECT 1 FROM resource_versions n WHERE n.tenant = v.tenant \
                 AND n.resource_type = v.resource_type AND n.id = v.id AND n.version > v.version \
                 AND n.last_updated <= ",
            )
            .push_bind(at)
            .push(")");
        }
        if let Some(before) = query.before {
            qb.push(" AND v.seq < ").push_bind(before);
        }
        let limit = query.count.max(1) as i64;
        qb.push(" ORDER BY v.seq DESC LIMIT ").push_bind(limit + 1);
        let rows = qb.build().fetch_all(&self.reader).await?;
        let mut entries = Vec::with_capacity(rows.len());
        let mut last_seq = None;
        for row in rows.iter().take(limit as usize) {
            let method: String = row.try_get("method")?;
            entries.push(HistoryEntry {
                resource_type: row.try_get("resource_type")?,
                id: row.try_get("id")?,
                version: to_version(row.try_get("version")?)?,
                last_updated: from_millis(row.try_get("last_updated")?)?,
                method: Method::parse(&method)
                    .ok_or_else(|| StoreError::Corrupt(format!("method {method}")))?,
                body: row.try_get("body")?,
            });
            last_seq = Some(row.try_get::<i64, _>("seq")?);
        }
        let next = if rows.len() as i64 > limit {
            last_seq
        } else {
            None
        };
        Ok(HistoryPage { entries, next })
    }
}

fn check_if_match(if_match: Option<VersionId>, state: Option<&State>) -> Result<()> {
    let Some(expected) = if_match else {
        return Ok(());
    };
    match state {
        Some(s) if s.version == expected && !s.deleted => Ok(()),
        Some(s) => Err(StoreError::VersionConflict {
            expected,
            current: s.version.to_string(),
        }),
        None => Err(StoreError::VersionConflict {
            expected,
            current: "none (the resource does not exist)".into(),
        }),
    }
}

async fn current_state(
    conn: &mut SqliteConnection,
    tenant: &TenantId,
    resource_type: &ResourceType,
    id: &str,
) -> Result<Option<State>> {
    let row = sqlx::query(SELECT_STATE)
        .bind(tenant.as_str())
        .bind(resource_type.as_str())
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|r| {
        Ok(State {
            version: to_version(r.try_get("version")?)?,
            deleted: r.try_get("deleted")?,
            last_updated: r.try_get("last_updated")?,
        })
    })
    .transpose()
}

async fn read_current(
    conn: &mut SqliteConnection,
    tenant: &TenantId,
    resource_type: &ResourceType,
    id: &str,
) -> Result<StoredResource> {
    let row = sqlx::query(SELECT_CURRENT)
        .bind(tenant.as_str())
        .bind(resource_type.as_str())
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
        })?;
    let version = to_version(row.try_get("version")?)?;
    if row.try_get::<bool, _>("deleted")? {
        return Err(StoreError::Gone {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
            version,
        });
    }
    let body: Option<String> = row.try_get("body")?;
    Ok(StoredResource {
        resource_type: resource_type.to_string(),
        id: id.to_string(),
        version,
        last_updated: from_millis(row.try_get("last_updated")?)?,
        body: body
            .ok_or_else(|| StoreError::Corrupt(format!("{resource_type}/{id} has no body")))?,
    })
}

async fn matching_ids(
    conn: &mut SqliteConnection,
    tenant: &TenantId,
    resource_type: &ResourceType,
    condition: &Condition,
) -> Result<Vec<String>> {
    let rows = match condition {
        Condition::Id(id) => {
            sqlx::query("SELECT id FROM resources WHERE tenant = ? AND resource_type = ? AND id = ? AND deleted = 0")
                .bind(tenant.as_str())
                .bind(resource_type.as_str())
                .bind(id.as_str())
                .fetch_all(&mut *conn)
                .await?
        }
        Condition::Identifier { system, value } => {
            let mut qb: QueryBuilder<Sqlite> =
                QueryBuilder::new("SELECT DISTINCT id FROM resource_identifiers WHERE tenant = ");
            qb.push_bind(tenant.as_str());
            qb.push(" AND resource_type = ").push_bind(resource_type.as_str());
            qb.push(" AND value = ").push_bind(value.as_str());
            if let Some(system) = system {
                qb.push(" AND system = ").push_bind(system.as_str());
            }
            qb.push(" LIMIT 2");
            qb.build().fetch_all(&mut *conn).await?
        }
    };
    rows.iter()
        .map(|r| r.try_get::<String, _>("id").map_err(StoreError::from))
        .collect()
}

/// Appends a version, moves the current pointer and refreshes the identifier index.
#[allow(clippy::too_many_arguments)]
async fn write_version(
    conn: &mut SqliteConnection,
    tenant: &TenantId,
    resource_type: &ResourceType,
    id: &str,
    version: VersionId,
    previous_update: Option<i64>,
    method: Method,
    body: Option<Value>,
) -> Result<StoredResource> {
    // lastUpdated never goes backwards for a resource, even if the wall clock does.
    let now = to_millis(OffsetDateTime::now_utc()).max(previous_update.unwrap_or(i64::MIN));
    let last_updated = from_millis(now)?;
    let identifiers = body.as_ref().map(model::identifiers).unwrap_or_default();
    let text = body
        .map(|b| serde_json::to_string(&stamp(b, id, version, last_updated)))
        .transpose()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let seq = sqlx::query(INSERT_VERSION)
        .bind(tenant.as_str())
        .bind(resource_type.as_str())
        .bind(id)
        .bind(version.get() as i64)
        .bind(now)
        .bind(method.as_str())
        .bind(text.as_deref())
        .execute(&mut *conn)
        .await?
        .last_insert_rowid();
    sqlx::query(UPSERT_CURRENT)
        .bind(tenant.as_str())
        .bind(resource_type.as_str())
        .bind(id)
        .bind(version.get() as i64)
        .bind(seq)
        .bind(method == Method::Delete)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    if method != Method::Create {
        sqlx::query(DELETE_IDENTIFIERS)
            .bind(tenant.as_str())
            .bind(resource_type.as_str())
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    for (system, value) in identifiers {
        sqlx::query(INSERT_IDENTIFIER)
            .bind(tenant.as_str())
            .bind(resource_type.as_str())
            .bind(id)
            .bind(system)
            .bind(value)
            .execute(&mut *conn)
            .await?;
    }
    Ok(StoredResource {
        resource_type: resource_type.to_string(),
        id: id.to_string(),
        version,
        last_updated,
        body: text.unwrap_or_default(),
    })
}

fn to_version(v: i64) -> Result<VersionId> {
    u64::try_from(v)
        .ok()
        .and_then(VersionId::new)
        .ok_or_else(|| StoreError::Corrupt(format!("version {v}")))
}

fn to_millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn from_millis(ms: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .map_err(|e| StoreError::Corrupt(format!("timestamp {ms}: {e}")))
}
