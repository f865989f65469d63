//! Writing a resource's search index rows (extracted by `careplane_fhir::search::index`).

use careplane_fhir::search::index::{IndexRow, IndexValue};

use super::{Backend, Sql};
use crate::Result;

/// The index tables, one per SearchParameter type.
pub(crate) const INDEX_TABLES: [&str; 7] = [
    "search_string",
    "search_token",
    "search_reference",
    "search_date",
    "search_number",
    "search_quantity",
    "search_uri",
];

/// Rows per INSERT statement: large enough to make a Synthea Patient one or two round trips,
/// small enough to stay far below either backend's bind-parameter limit.
const ROWS_PER_STATEMENT: usize = 200;

#[derive(Clone, Copy)]
pub(crate) struct Owner<'a> {
    pub tenant: &'a str,
    pub resource_type: &'a str,
    pub id: &'a str,
}

/// Drops every index row of the resource.
pub(crate) async fn clear<B: Backend>(conn: &mut B::Connection, owner: &Owner<'_>) -> Result<()> {
    for table in INDEX_TABLES {
        Sql::<B>::new(&format!("DELETE FROM {table} WHERE tenant = "))
            .text(owner.tenant)
            .sql(" AND resource_type = ")
            .text(owner.resource_type)
            .sql(" AND resource_id = ")
            .text(owner.id)
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// Index rows of one transaction, not yet written.
#[derive(Default)]
pub(crate) struct Pending {
    /// (tenant, resource type, id) and that resource's rows.
    rows: Vec<((String, String, String), Vec<IndexRow>)>,
    count: usize,
}

/// Past this many buffered rows the buffer is written out early, bounding memory.
const MAX_PENDING_ROWS: usize = 20_000;

impl Pending {
    pub fn add(&mut self, owner: &Owner<'_>, rows: Vec<IndexRow>) {
        self.count += rows.len();
        let key = (
            owner.tenant.to_string(),
            owner.resource_type.to_string(),
            owner.id.to_string(),
        );
        self.rows.push((key, rows));
    }

    /// Drops buffered rows of a resource that is being rewritten in the same transaction.
    pub fn forget(&mut self, owner: &Owner<'_>) {
        self.rows.retain(|((t, rt, id), _)| {
            !(t == owner.tenant && rt == owner.resource_type && id == owner.id)
        });
        self.count = self.rows.iter().map(|(_, r)| r.len()).sum();
    }

    pub fn is_full(&self) -> bool {
        self.count >= MAX_PENDING_ROWS
    }

    pub async fn flush<B: Backend>(&mut self, conn: &mut B::Connection) -> Result<()> {
        let rows = std::mem::take(&mut self.rows);
        self.count = 0;
        let flat: Vec<(Owner<'_>, &IndexRow)> = rows
            .iter()
            .flat_map(|((tenant, resource_type, id), rows)| {
                rows.iter().map(move |row| {
                    (
                        Owner {
                            tenant,
                            resource_type,
                            id,
                        },
                        row,
                    )
                })
            })
            .collect();
        insert_all::<B>(conn, &flat).await
    }
}

/// Inserts one resource's `rows`.
pub(crate) async fn insert<B: Backend>(
    conn: &mut B::Connection,
    owner: &Owner<'_>,
    rows: &[IndexRow],
) -> Result<()> {
    let flat: Vec<(Owner<'_>, &IndexRow)> = rows
        .iter()
        .map(|row| {
            (
                Owner {
                    tenant: owner.tenant,
                    resource_type: owner.resource_type,
                    id: owner.id,
                },
                row,
            )
        })
        .collect();
    insert_all::<B>(conn, &flat).await
}

/// Inserts rows of any owners, grouped by table into multi-row statements.
async fn insert_all<B: Backend>(
    conn: &mut B::Connection,
    rows: &[(Owner<'_>, &IndexRow)],
) -> Result<()> {
    for (position, table) in INDEX_TABLES.iter().enumerate() {
        let of_table: Vec<&(Owner<'_>, &IndexRow)> = rows
            .iter()
            .filter(|(_, r)| table_of(&r.value) == position)
            .collect();
        for chunk in of_table.chunks(ROWS_PER_STATEMENT) {
            let mut q = Sql::<B>::new(&format!(
                "INSERT INTO {table} (tenant, resource_type, resource_id, param, grp, {}) VALUES ",
                value_columns(position)
            ));
            for (n, (owner, row)) in chunk.iter().enumerate() {
                q.sql(if n == 0 { "(" } else { ", (" })
                    .text(owner.tenant)
                    .sql(", ")
                    .text(owner.resource_type)
                    .sql(", ")
                    .text(owner.id)
                    .sql(", ")
                    .text(&row.param)
                    .sql(", ")
                    .int(i64::from(row.group));
                push_values(&mut q, &row.value);
                q.sql(")");
            }
            q.execute(conn).await?;
        }
    }
    Ok(())
}

fn table_of(value: &IndexValue) -> usize {
    match value {
        IndexValue::String { .. } => 0,
        IndexValue::Token { .. } => 1,
        IndexValue::Reference { .. } => 2,
        IndexValue::Date { .. } => 3,
        IndexValue::Number { .. } => 4,
        IndexValue::Quantity { .. } => 5,
        IndexValue::Uri { .. } => 6,
    }
}

fn value_columns(table: usize) -> &'static str {
    match table {
        0 => "value_norm, value_exact",
        1 => "system, code, text_norm",
        2 => "target_type, target_id, url",
        3 => "low, high",
        4 => "value",
        5 => "value, system, code, unit",
        _ => "value",
    }
}

fn push_values<'a, B: Backend>(q: &mut Sql<'a, B>, value: &'a IndexValue) {
    match value {
        IndexValue::String { normalized, exact } => {
            q.sql(", ").text(normalized).sql(", ").text(exact);
        }
        IndexValue::Token { system, code, text } => {
            q.sql(", ")
                .opt_text(system.as_deref())
                .sql(", ")
                .opt_text(code.as_deref())
                .sql(", ")
                .opt_text(text.as_deref());
        }
        IndexValue::Reference {
            target_type,
            target_id,
            url,
        } => {
            q.sql(", ")
                .opt_text(target_type.as_deref())
                .sql(", ")
                .opt_text(target_id.as_deref())
                .sql(", ")
                .opt_text(url.as_deref());
        }
        IndexValue::Date { low, high } => {
            q.sql(", ").int(*low).sql(", ").int(*high);
        }
        IndexValue::Number { value } => {
            q.sql(", ").real(*value);
        }
        IndexValue::Quantity {
            value,
            system,
            code,
            unit,
        } => {
            q.sql(", ")
                .real(*value)
                .sql(", ")
                .opt_text(system.as_deref())
                .sql(", ")
                .opt_text(code.as_deref())
                .sql(", ")
                .opt_text(unit.as_deref());
        }
        IndexValue::Uri { value } => {
            q.sql(", ").text(value);
        }
    }
}
