//! Versions a write transaction has produced but not yet stored. They are written in bulk
//! before anything reads the resource tables and at commit: two round trips per resource were
//! most of a bulk import's statements on PostgreSQL, where a batch is now one statement.

use std::collections::HashSet;

use super::{Backend, Sql};
use crate::{Method, Result};

/// One version to append, and the current pointer to move to it.
pub struct NewVersion {
    pub tenant: String,
    pub resource_type: String,
    pub id: String,
    pub version: i64,
    pub last_updated: i64,
    pub method: Method,
    /// `None` for a deletion.
    pub body: Option<String>,
}

/// Past this many buffered versions, or body bytes, the buffer is written out early: memory
/// stays bounded whatever a Bundle holds.
const MAX_ROWS: usize = 1_000;
const MAX_BYTES: usize = 8 << 20;

#[derive(Default)]
pub(crate) struct PendingVersions {
    rows: Vec<NewVersion>,
    /// (tenant, type, id) of the buffered rows: one statement may move a current pointer once.
    keys: HashSet<(String, String, String)>,
    bytes: usize,
}

impl PendingVersions {
    pub fn holds(&self, tenant: &str, resource_type: &str, id: &str) -> bool {
        self.keys.contains(&(
            tenant.to_string(),
            resource_type.to_string(),
            id.to_string(),
        ))
    }

    pub fn push(&mut self, version: NewVersion) {
        self.bytes += version.body.as_ref().map_or(0, String::len);
        self.keys.insert((
            version.tenant.clone(),
            version.resource_type.clone(),
            version.id.clone(),
        ));
        self.rows.push(version);
    }

    pub fn is_full(&self) -> bool {
        self.rows.len() >= MAX_ROWS || self.bytes >= MAX_BYTES
    }

    /// Takes the buffered versions out, to be written by the caller.
    pub fn take(&mut self) -> Vec<NewVersion> {
        self.keys.clear();
        self.bytes = 0;
        std::mem::take(&mut self.rows)
    }

    pub async fn flush<B: Backend>(&mut self, conn: &mut B::Connection) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let rows = self.take();
        B::write_batch(conn, &rows, &[]).await
    }
}

/// Appends each version and moves its current pointer as two statements per version, added to
/// `q` for one multi-statement call (SQLite): `last_insert_rowid()` in the second is the `seq`
/// the first just generated.
pub(crate) fn push_each<'a, B: Backend>(q: &mut Sql<'a, B>, rows: &'a [NewVersion]) {
    for v in rows {
        q.sql(
            "INSERT INTO resource_versions \
             (tenant, resource_type, id, version, last_updated, method, body) VALUES (",
        )
        .push_key(v)
        .sql(", ")
        .int(v.last_updated)
        .sql(", ")
        .text(v.method.as_str())
        .sql(", ")
        .opt_text(v.body.as_deref())
        .sql(
            "); INSERT INTO resources \
             (tenant, resource_type, id, version, seq, deleted, last_updated) VALUES (",
        )
        .push_key(v)
        .sql(", last_insert_rowid(), ")
        .flag(v.method == Method::Delete)
        .sql(", ")
        .int(v.last_updated)
        .sql(") ")
        .sql(UPSERT_CURRENT)
        .sql("; ");
    }
}

impl<'a, B: Backend> Sql<'a, B> {
    /// Binds `tenant, resource_type, id, version`, the columns both inserts start with.
    fn push_key(&mut self, v: &'a NewVersion) -> &mut Self {
        self.text(&v.tenant)
            .sql(", ")
            .text(&v.resource_type)
            .sql(", ")
            .text(&v.id)
            .sql(", ")
            .int(v.version)
    }
}

/// The tail of an `INSERT INTO resources`: a new version replaces the current pointer.
pub(crate) const UPSERT_CURRENT: &str =
    "ON CONFLICT (tenant, resource_type, id) DO UPDATE SET version = excluded.version, \
     seq = excluded.seq, deleted = excluded.deleted, last_updated = excluded.last_updated";
