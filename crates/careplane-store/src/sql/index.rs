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
pub struct Owner<'a> {
    pub tenant: &'a str,
    pub resource_type: &'a str,
    pub id: &'a str,
}

/// Drops every index row of the resource: one statement where the backend runs DELETEs as
/// CTEs (a round trip per table was most of an update's statements on PostgreSQL).
pub(crate) async fn clear<B: Backend>(conn: &mut B::Connection, owner: &Owner<'_>) -> Result<()> {
    if B::WRITES_IN_CTES {
        let mut q = Sql::<B>::new("WITH ");
        for (n, table) in INDEX_TABLES.iter().enumerate() {
            q.sql(if n == 0 { "" } else { ", " })
                .sql(&format!("d{n} AS (DELETE FROM {table} WHERE "));
            push_owner(&mut q, owner).sql(")");
        }
        q.sql(" SELECT 1").execute(conn).await?;
        return Ok(());
    }
    for table in INDEX_TABLES {
        let mut q = Sql::<B>::new(&format!("DELETE FROM {table} WHERE "));
        push_owner(&mut q, owner).execute(conn).await?;
    }
    Ok(())
}

fn push_owner<'q, 'a, B: Backend>(q: &'q mut Sql<'a, B>, owner: &Owner<'a>) -> &'q mut Sql<'a, B> {
    q.sql("tenant = ")
        .text(owner.tenant)
        .sql(" AND resource_type = ")
        .text(owner.resource_type)
        .sql(" AND resource_id = ")
        .text(owner.id)
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

    /// Takes the buffered rows out, to be written by the caller.
    pub fn take(&mut self) -> Buffered {
        self.count = 0;
        Buffered(std::mem::take(&mut self.rows))
    }

    pub async fn flush<B: Backend>(&mut self, conn: &mut B::Connection) -> Result<()> {
        let buffered = self.take();
        B::write_batch(conn, &[], &buffered.rows()).await
    }
}

/// Rows taken out of [`Pending`]: they own their text, [`Buffered::rows`] borrows it.
pub(crate) struct Buffered(Vec<((String, String, String), Vec<IndexRow>)>);

impl Buffered {
    pub fn rows(&self) -> Vec<OwnedRow<'_>> {
        self.0
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
            .collect()
    }
}

/// An index row and the resource it belongs to.
pub type OwnedRow<'a> = (Owner<'a>, &'a IndexRow);

/// Inserts one resource's `rows`.
pub(crate) async fn insert<B: Backend>(
    conn: &mut B::Connection,
    owner: &Owner<'_>,
    rows: &[IndexRow],
) -> Result<()> {
    let owned: Vec<OwnedRow<'_>> = rows.iter().map(|row| (*owner, row)).collect();
    B::write_batch(conn, &[], &owned).await
}

/// Adds INSERTs of rows of any owners to `q`, grouped by table into multi-row statements, for
/// one multi-statement call (SQLite).
pub(crate) fn push_by_table<'a, B: Backend>(q: &mut Sql<'a, B>, rows: &[OwnedRow<'a>]) {
    for (position, table, of_table) in by_table(rows) {
        for chunk in of_table.chunks(ROWS_PER_STATEMENT) {
            q.sql(&format!(
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
                push_values(q, &row.value);
                q.sql(")");
            }
            q.sql("; ");
        }
    }
}

/// The rows of each index table that has any: `(position in INDEX_TABLES, table, rows)`.
fn by_table<'r, 'a>(
    rows: &'r [OwnedRow<'a>],
) -> impl Iterator<Item = (usize, &'static str, Vec<&'r OwnedRow<'a>>)> {
    INDEX_TABLES
        .iter()
        .enumerate()
        .map(|(position, table)| {
            let of_table: Vec<&OwnedRow<'a>> = rows
                .iter()
                .filter(|(_, r)| table_of(&r.value) == position)
                .collect();
            (position, *table, of_table)
        })
        .filter(|(_, _, of_table)| !of_table.is_empty())
}

/// One column of many rows, for a backend that inserts arrays (PostgreSQL's `UNNEST`).
pub enum ColumnValues<'a> {
    Text(Vec<&'a str>),
    OptText(Vec<Option<&'a str>>),
    Int(Vec<i64>),
    Real(Vec<f64>),
}

/// A table's rows as columns: `(table, column list, columns in that order)`, for each table
/// that has rows.
pub fn by_column<'a>(rows: &[OwnedRow<'a>]) -> Vec<(&'static str, String, Vec<ColumnValues<'a>>)> {
    let mut out = Vec::new();
    for (position, table, of_table) in by_table(rows) {
        let text = |f: fn(&OwnedRow<'a>) -> &'a str| {
            ColumnValues::Text(of_table.iter().map(|r| f(r)).collect())
        };
        let mut columns = vec![
            text(|(o, _)| o.tenant),
            text(|(o, _)| o.resource_type),
            text(|(o, _)| o.id),
            text(|(_, r)| &r.param),
            ColumnValues::Int(of_table.iter().map(|(_, r)| i64::from(r.group)).collect()),
        ];
        columns.extend(value_columns_of(position, &of_table));
        let names = format!(
            "tenant, resource_type, resource_id, param, grp, {}",
            value_columns(position)
        );
        out.push((table, names, columns));
    }
    out
}

/// The value columns of one table's rows, in [`value_columns`] order.
fn value_columns_of<'a>(table: usize, rows: &[&OwnedRow<'a>]) -> Vec<ColumnValues<'a>> {
    // The rows are all of `table`, so only its columns fill up.
    let (mut first, mut second) = (Vec::new(), Vec::new());
    let mut optional: [Vec<Option<&'a str>>; 3] = Default::default();
    let (mut low, mut high, mut real) = (Vec::new(), Vec::new(), Vec::new());
    let mut push_optional = |values: [&'a Option<String>; 3]| {
        for (column, value) in optional.iter_mut().zip(values) {
            column.push(value.as_deref());
        }
    };
    for (_, row) in rows {
        match &row.value {
            IndexValue::String { normalized, exact } => {
                first.push(normalized.as_str());
                second.push(exact.as_str());
            }
            IndexValue::Token { system, code, text } => push_optional([system, code, text]),
            IndexValue::Reference {
                target_type,
                target_id,
                url,
            } => push_optional([target_type, target_id, url]),
            IndexValue::Date { low: l, high: h } => {
                low.push(*l);
                high.push(*h);
            }
            IndexValue::Number { value } => real.push(*value),
            IndexValue::Quantity {
                value,
                system,
                code,
                unit,
            } => {
                real.push(*value);
                push_optional([system, code, unit]);
            }
            IndexValue::Uri { value } => first.push(value.as_str()),
        }
    }
    let optional = optional.map(ColumnValues::OptText);
    match table {
        0 => vec![ColumnValues::Text(first), ColumnValues::Text(second)],
        1 | 2 => optional.into(),
        3 => vec![ColumnValues::Int(low), ColumnValues::Int(high)],
        4 => vec![ColumnValues::Real(real)],
        5 => std::iter::once(ColumnValues::Real(real))
            .chain(optional)
            .collect(),
        _ => vec![ColumnValues::Text(first)],
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(param: &str, value: IndexValue) -> IndexRow {
        IndexRow {
            param: param.into(),
            group: 0,
            value,
        }
    }

    #[test]
    fn by_column_gives_each_table_its_columns_in_insert_order() {
        let some = |s: &str| Some(s.to_string());
        let rows = [
            row(
                "code",
                IndexValue::Token {
                    system: some("http://loinc.org"),
                    code: some("8302-2"),
                    text: None,
                },
            ),
            row(
                "value-quantity",
                IndexValue::Quantity {
                    value: 0.564,
                    system: None,
                    code: some("m"),
                    unit: some("cm"),
                },
            ),
            row(
                "status",
                IndexValue::Token {
                    system: None,
                    code: some("final"),
                    text: some("final"),
                },
            ),
            row("date", IndexValue::Date { low: 1, high: 2 }),
        ];
        let owner = Owner {
            tenant: "t",
            resource_type: "Observation",
            id: "o1",
        };
        let owned: Vec<OwnedRow<'_>> = rows.iter().map(|r| (owner, r)).collect();
        let tables = by_column(&owned);
        let names: Vec<&str> = tables.iter().map(|(t, _, _)| *t).collect();
        assert_eq!(names, ["search_token", "search_date", "search_quantity"]);
        for (_, columns, values) in &tables {
            assert_eq!(columns.split(", ").count(), values.len(), "{columns}");
        }
        let (_, _, token) = &tables[0];
        assert!(
            matches!(&token[5], ColumnValues::OptText(s) if s == &[Some("http://loinc.org"), None])
        );
        assert!(
            matches!(&token[6], ColumnValues::OptText(c) if c == &[Some("8302-2"), Some("final")])
        );
        assert!(matches!(&token[7], ColumnValues::OptText(t) if t == &[None, Some("final")]));
        let (_, _, quantity) = &tables[2];
        assert!(matches!(&quantity[5], ColumnValues::Real(v) if v == &[0.564]));
        assert!(matches!(&quantity[7], ColumnValues::OptText(c) if c == &[Some("m")]));
        assert!(matches!(&quantity[8], ColumnValues::OptText(u) if u == &[Some("cm")]));
    }
}
