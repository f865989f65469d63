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
async fn migrations_are_idempotent() {
    let (store, _dir) = fresh().await;
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
    assert_eq!(store.backend(), "sqlite");
}
