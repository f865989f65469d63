//! The storage contract on the embedded SQLite backend (a fresh database file per test).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod contract;

use std::sync::Arc;

use careplane_store::{SqliteStore, Store};

async fn fresh() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    let store = SqliteStore::open(&url).await.unwrap();
    store.migrate().await.unwrap();
    (Arc::new(store), dir)
}

contract_suite!(fresh());

#[tokio::test]
async fn a_database_in_use_gets_derived_index_rows_until_contract() {
    let (store, dir) = fresh().await;
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    let raw = sqlx::SqlitePool::connect(&url).await.unwrap();
    // What migration 0007 records for a database that already holds resources.
    sqlx::query("UPDATE store_settings SET value = 'written'")
        .execute(&raw)
        .await
        .unwrap();
    let derived_rows = || async {
        sqlx::query_scalar::<_, i64>(contract::COUNT_DERIVED_ROWS)
            .fetch_one(&raw)
            .await
            .unwrap()
    };
    contract::derived_rows_are_written_until_contract(store.as_ref(), derived_rows).await;
}

#[tokio::test]
async fn migrations_are_idempotent() {
    let (store, _dir) = fresh().await;
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
    assert_eq!(store.backend(), "sqlite");
}

#[tokio::test]
async fn an_online_backup_opens_as_a_complete_database() {
    let (store, dir) = fresh().await;
    let created = contract::create(store.as_ref(), contract::patient("Backed-Up")).await;
    let job = store
        .enqueue(&careplane_store::NewJob::new(
            contract::tenant(),
            "export",
            serde_json::json!({}),
        ))
        .await
        .unwrap();
    let copy = dir.path().join("backup.db");
    store.backup(&copy).await.unwrap();
    // Writes after the backup are not in it.
    contract::create(store.as_ref(), contract::patient("After")).await;

    let restored = SqliteStore::open(&format!("sqlite://{}", copy.display()))
        .await
        .unwrap();
    restored.migrate().await.unwrap();
    let read = restored
        .read(
            &contract::tenant(),
            &contract::rt("Patient"),
            &contract::id(&created.id),
        )
        .await
        .unwrap();
    assert!(read.body.contains("Backed-Up"));
    assert_eq!(
        restored.job(&contract::tenant(), &job).await.unwrap().kind,
        "export"
    );
    let everything = contract::search_request("Patient", "_total=accurate");
    let options = careplane_store::SearchOptions {
        page_size: 10,
        max_included: 0,
        count_only: false,
    };
    let page = restored
        .search(&contract::tenant(), &everything, &options)
        .await
        .unwrap();
    assert_eq!(page.total, Some(1), "the search index came along");
    // An existing file is never overwritten.
    assert!(store.backup(&copy).await.is_err());
}
