//! Rolling upgrades run release N-1 against the schema of release N (expand, deploy, contract:
//! docs/architecture.md). So every migration must keep every table and column the schema before
//! it had, with the same type and nullability, and may add to an existing table only columns an
//! older INSERT can leave out (nullable, or with a default). Checked on both backends by applying
//! the migrations one at a time and comparing the catalogue before and after each.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use careplane_testdb::TestDatabase;
use sqlx::migrate::Migrator;
use sqlx::{Connection, Row};

static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Debug, Clone, PartialEq, Eq)]
struct Column {
    data_type: String,
    not_null: bool,
    has_default: bool,
}

/// (table, column) → column, for the application's tables (not sqlx's bookkeeping).
type Schema = BTreeMap<(String, String), Column>;

/// What a migration from `before` to `after` breaks for the release still running.
fn breaking_changes(before: &Schema, after: &Schema) -> Vec<String> {
    let mut problems = Vec::new();
    for (key, old) in before {
        match after.get(key) {
            None => problems.push(format!("{}.{} was dropped or renamed", key.0, key.1)),
            Some(new) if new.data_type != old.data_type || new.not_null != old.not_null => problems
                .push(format!(
                    "{}.{} changed from {old:?} to {new:?}",
                    key.0, key.1
                )),
            Some(_) => {}
        }
    }
    let old_tables: Vec<&String> = before.keys().map(|(t, _)| t).collect();
    for (key, new) in after {
        if !before.contains_key(key)
            && old_tables.contains(&&key.0)
            && new.not_null
            && !new.has_default
        {
            problems.push(format!(
                "{}.{} is NOT NULL without a default: the previous release's INSERTs fail",
                key.0, key.1
            ));
        }
    }
    problems
}

async fn sqlite_schema(conn: &mut sqlx::SqliteConnection) -> Schema {
    let rows = sqlx::query(
        "SELECT m.name AS tbl, p.name AS col, p.type AS data_type, p.\"notnull\" AS not_null, \
         p.dflt_value IS NOT NULL AS has_default \
         FROM sqlite_master m JOIN pragma_table_info(m.name) p \
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name NOT LIKE '_sqlx%'",
    )
    .fetch_all(conn)
    .await
    .unwrap();
    rows.iter()
        .map(|r| {
            (
                (r.get("tbl"), r.get("col")),
                Column {
                    data_type: r.get::<String, _>("data_type").to_uppercase(),
                    not_null: r.get::<i64, _>("not_null") != 0,
                    has_default: r.get::<i64, _>("has_default") != 0,
                },
            )
        })
        .collect()
}

async fn postgres_schema(conn: &mut sqlx::PgConnection) -> Schema {
    let rows = sqlx::query(
        "SELECT table_name::text AS tbl, column_name::text AS col, data_type::text AS data_type, \
         is_nullable = 'NO' AS not_null, column_default IS NOT NULL AS has_default \
         FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name NOT LIKE '_sqlx%'",
    )
    .fetch_all(conn)
    .await
    .unwrap();
    rows.iter()
        .map(|r| {
            (
                (r.get("tbl"), r.get("col")),
                Column {
                    data_type: r.get("data_type"),
                    not_null: r.get("not_null"),
                    has_default: r.get("has_default"),
                },
            )
        })
        .collect()
}

#[test]
fn the_check_catches_what_would_break_the_previous_release() {
    let column = |data_type: &str, not_null, has_default| Column {
        data_type: data_type.into(),
        not_null,
        has_default,
    };
    let key = |t: &str, c: &str| (t.to_string(), c.to_string());
    let before: Schema = [(key("resources", "id"), column("TEXT", true, false))].into();
    assert!(breaking_changes(&before, &before).is_empty());
    let mut added = before.clone();
    added.insert(key("resources", "note"), column("TEXT", false, false));
    added.insert(key("resources", "flag"), column("INTEGER", true, true));
    added.insert(key("new_table", "id"), column("TEXT", true, false));
    assert!(breaking_changes(&before, &added).is_empty());
    let mut dropped = added.clone();
    dropped.remove(&key("resources", "id"));
    assert_eq!(breaking_changes(&added, &dropped).len(), 1);
    let mut required = before.clone();
    required.insert(key("resources", "owner"), column("TEXT", true, false));
    assert_eq!(breaking_changes(&before, &required).len(), 1);
    let mut retyped = before.clone();
    retyped.insert(key("resources", "id"), column("INTEGER", true, false));
    assert_eq!(breaking_changes(&before, &retyped).len(), 1);
}

#[tokio::test]
async fn every_sqlite_migration_is_expand_only() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let mut schema = sqlite_schema(&mut conn).await;
    let mut checked = 0;
    for migration in SQLITE.iter() {
        sqlx::raw_sql(&migration.sql)
            .execute(&mut conn)
            .await
            .unwrap();
        let next = sqlite_schema(&mut conn).await;
        let problems = breaking_changes(&schema, &next);
        assert!(
            problems.is_empty(),
            "migration {}: {problems:#?}",
            migration.version
        );
        schema = next;
        checked += 1;
    }
    assert!(checked >= 5 && schema.contains_key(&("jobs".into(), "fence".into())));
}

#[tokio::test]
async fn every_postgres_migration_is_expand_only() {
    let db = TestDatabase::from_template("expand_only_empty", |_| async { Ok(()) })
        .await
        .unwrap();
    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let mut schema = postgres_schema(&mut conn).await;
    let mut checked = 0;
    for migration in POSTGRES.iter() {
        sqlx::raw_sql(&migration.sql)
            .execute(&mut conn)
            .await
            .unwrap();
        let next = postgres_schema(&mut conn).await;
        let problems = breaking_changes(&schema, &next);
        assert!(
            problems.is_empty(),
            "migration {}: {problems:#?}",
            migration.version
        );
        schema = next;
        checked += 1;
    }
    assert!(checked >= 5 && schema.contains_key(&("jobs".into(), "fence".into())));
}

/// Migration 0007 records whether an earlier release may still be serving the database: one
/// that holds resources keeps getting the derived index rows that release reads ('written'),
/// an empty one starts without them. The PostgreSQL migration is the same SQL.
#[tokio::test]
async fn migration_0007_keeps_derived_index_rows_for_a_database_in_use() {
    let setting = |holds_resources: bool| async move {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        for migration in SQLITE.iter() {
            if migration.version == 7 && holds_resources {
                sqlx::raw_sql(
                    "INSERT INTO resource_versions (tenant, resource_type, id, version, \
                     last_updated, method, body) VALUES ('t', 'Patient', 'p', 1, 0, 'create', '{}'); \
                     INSERT INTO resources (tenant, resource_type, id, version, seq, last_updated) \
                     VALUES ('t', 'Patient', 'p', 1, 1, 0)",
                )
                .execute(&mut conn)
                .await
                .unwrap();
            }
            sqlx::raw_sql(&migration.sql)
                .execute(&mut conn)
                .await
                .unwrap();
        }
        sqlx::query_scalar::<_, String>(
            "SELECT value FROM store_settings WHERE name = 'derived_index_rows'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap()
    };
    assert_eq!(setting(true).await, "written");
    assert_eq!(setting(false).await, "omitted");
    let sql = |m: &Migrator| {
        m.iter()
            .find(|m| m.version == 7)
            .map(|m| m.sql.to_string())
            .unwrap()
    };
    assert_eq!(sql(&SQLITE), sql(&POSTGRES));
}
