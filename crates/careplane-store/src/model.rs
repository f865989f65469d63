//! Values that cross the storage boundary.

use careplane_fhir::{Id, ResourceType, VersionId};
use serde_json::{Map, Value};
use time::OffsetDateTime;

/// The current or a historical version of a resource, as stored (JSON text with `id` and `meta`
/// already stamped), so reads can be served without re-serialising.
#[derive(Debug, Clone)]
pub struct StoredResource {
    pub resource_type: String,
    pub id: String,
    pub version: VersionId,
    pub last_updated: OffsetDateTime,
    pub body: String,
}

impl StoredResource {
    pub fn json(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(&self.body)
    }
}

/// A condition (`If-None-Exist`, conditional update/delete, conditional references): a parsed
/// search over one type. `criteria` is its canonical text, which names the lock that makes
/// identical conditional creates run one after the other.
#[derive(Debug, Clone)]
pub struct Condition {
    pub criteria: String,
    pub search: careplane_fhir::search::query::SearchRequest,
}

#[derive(Debug)]
pub enum CreateOutcome {
    Created(StoredResource),
    /// The condition matched exactly one existing resource; nothing was written.
    Existing(StoredResource),
}

#[derive(Debug, Clone, Copy, Default)]
pub struct UpdateOptions {
    pub if_match: Option<VersionId>,
    /// Whether PUT to an unknown id creates it (client-assigned ids).
    pub allow_create: bool,
}

#[derive(Debug)]
pub struct UpdateOutcome {
    pub resource: StoredResource,
    pub created: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Create,
    Update,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Create => "create",
            Method::Update => "update",
            Method::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Method> {
        match s {
            "create" => Some(Method::Create),
            "update" => Some(Method::Update),
            "delete" => Some(Method::Delete),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub enum HistoryScope {
    System,
    Type(ResourceType),
    Instance(ResourceType, Id),
}

#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    pub count: u32,
    /// Only versions changed at or after this instant.
    pub since: Option<OffsetDateTime>,
    /// Only versions that were current at this instant.
    pub at: Option<OffsetDateTime>,
    /// Keyset cursor: only versions older than this position (from a previous page).
    pub before: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub resource_type: String,
    pub id: String,
    pub version: VersionId,
    pub last_updated: OffsetDateTime,
    pub method: Method,
    /// `None` for a deletion.
    pub body: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    pub entries: Vec<HistoryEntry>,
    /// Cursor for the next (older) page, when there is one.
    pub next: Option<i64>,
}

/// How much of a search to return.
#[derive(Debug, Clone, Copy)]
pub struct SearchOptions {
    /// Matches per page.
    pub page_size: usize,
    /// `_include`/`_revinclude` stop adding resources beyond this (and say so).
    pub max_included: usize,
    /// `_summary=count`: only the total.
    pub count_only: bool,
}

/// One page of a search.
#[derive(Debug, Default)]
pub struct SearchPage {
    pub matches: Vec<StoredResource>,
    pub included: Vec<StoredResource>,
    /// Cursor of the next page, when there is one.
    pub next: Option<String>,
    pub total: Option<u64>,
    /// Includes were cut at `max_included`.
    pub included_truncated: bool,
}

/// Sets the server-owned `id`, `meta.versionId` and `meta.lastUpdated`, keeping the rest of
/// `meta` (tags, profiles, security labels). Client values for the server-owned fields are ignored.
pub fn stamp(body: Value, id: &str, version: VersionId, last_updated: OffsetDateTime) -> Value {
    let Value::Object(mut fields) = body else {
        return body;
    };
    let mut meta = match fields.remove("meta") {
        Some(Value::Object(meta)) => meta,
        _ => Map::new(),
    };
    meta.insert("versionId".into(), Value::String(version.to_string()));
    meta.insert(
        "lastUpdated".into(),
        Value::String(format_instant(last_updated)),
    );
    // resourceType, id, meta first: the order people and diff tools expect.
    let mut out = Map::with_capacity(fields.len() + 2);
    if let Some(rt) = fields.remove("resourceType") {
        out.insert("resourceType".into(), rt);
    }
    fields.remove("id");
    out.insert("id".into(), Value::String(id.to_string()));
    out.insert("meta".into(), Value::Object(meta));
    out.extend(fields);
    Value::Object(out)
}

/// FHIR `instant` with millisecond precision in UTC, e.g. `2026-11-23T19:40:00.123Z`.
pub fn format_instant(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stamping_overrides_client_meta_but_keeps_tags() {
        let t = OffsetDateTime::from_unix_timestamp(0).unwrap();
        let body = json!({"resourceType": "Patient", "id": "client", "meta": {"versionId": "99", "tag": [{"code": "x"}]}});
        let out = stamp(body, "srv", VersionId::FIRST, t);
        assert_eq!(out["id"], "srv");
        assert_eq!(out["meta"]["versionId"], "1");
        assert_eq!(out["meta"]["lastUpdated"], "1970-01-01T00:00:00.000Z");
        assert_eq!(out["meta"]["tag"][0]["code"], "x");
    }
}
