//! The storage contract on PostgreSQL: a database of its own per test, cloned from a migrated
//! template, on the server at `CAREPLANE_TEST_DATABASE_URL` or a throwaway local cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod contract;

use std::sync::Arc;

use careplane_store::{PoolSettings, PostgresStore, Store};
use careplane_testdb::TestDatabase;

async fn fresh() -> (Arc<dyn Store>, TestDatabase) {
    let key = format!("store_{}", PostgresStore::schema_fingerprint());
    let db = TestDatabase::from_template(&key, |url| async move {
        let store = PostgresStore::open(&url, PoolSettings::default())
            .await
            .map_err(|e| e.to_string())?;
        store.migrate().await.map_err(|e| e.to_string())?;
        store.close().await;
        Ok(())
    })
    .await
    .unwrap();
    let store = PostgresStore::open(db.url(), PoolSettings::default())
        .await
        .unwrap();
    (Arc::new(store), db)
}

contract_suite!(fresh());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_migrating_at_once_all_succeed() {
    let db = TestDatabase::from_template("store_empty", |_| async { Ok(()) })
        .await
        .unwrap();
    let mut starts = Vec::new();
    for _ in 0..4 {
        let url = db.url().to_string();
        starts.push(tokio::spawn(async move {
            let store = PostgresStore::open(&url, PoolSettings::default())
                .await
                .unwrap();
            store.migrate().await
        }));
    }
    for start in starts {
        start.await.unwrap().unwrap();
    }
    let store = PostgresStore::open(db.url(), PoolSettings::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
    assert_eq!(store.backend(), "postgres");
    store.close().await;
}

#[tokio::test]
async fn backup_points_to_the_postgresql_tools() {
    let (store, _db) = fresh().await;
    let dir = tempfile::tempdir().unwrap();
    let err = store.backup(&dir.path().join("x.db")).await.unwrap_err();
    assert!(
        matches!(err, careplane_store::StoreError::Unsupported(_)),
        "{err}"
    );
}
