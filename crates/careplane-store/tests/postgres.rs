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

#[tokio::test]
async fn a_database_in_use_gets_derived_index_rows_until_contract() {
    let (store, db) = fresh().await;
    let raw = sqlx::PgPool::connect(db.url()).await.unwrap();
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
    raw.close().await;
}

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

/// A current version read ahead is not locked: an update that lands in between is built upon
/// (the later update locks and reads again), never overwritten as if it had not happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_after_a_concurrent_change_builds_on_the_newest_version() {
    use careplane_store::UpdateOptions;
    let (store, _db) = fresh().await;
    let (t, patient) = (contract::tenant(), contract::rt("Patient"));
    let first = contract::create(store.as_ref(), contract::patient("One")).await;
    let pid = contract::id(&first.id);
    let body = |family: &str| {
        let mut b = contract::patient(family);
        b["id"] = serde_json::json!(first.id);
        b
    };

    let mut tx = store.begin().await.unwrap();
    tx.read_ahead(&t, &[(patient.clone(), first.id.clone())])
        .await
        .unwrap();
    let theirs = store
        .update(&t, &patient, &pid, body("Two"), UpdateOptions::default())
        .await
        .unwrap();
    assert_eq!(theirs.resource.version, contract::version(2));
    let mine = tx
        .update(
            &t,
            &patient,
            &first.id,
            body("Three"),
            UpdateOptions::default(),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(mine.resource.version, contract::version(3));
    let current = store.read(&t, &patient, &pid).await.unwrap();
    assert_eq!(current.version, contract::version(3));
    let two = store
        .vread(&t, &patient, &pid, contract::version(2))
        .await
        .unwrap();
    assert!(two.body.contains("Two"), "{}", two.body);
}

/// A resource absent when read ahead and created meanwhile by another transaction: the
/// buffered create fails at commit as a retryable conflict, and the other's version stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_racing_an_absent_read_ahead_is_a_retryable_conflict() {
    use careplane_store::{StoreError, UpdateOptions};
    let (store, _db) = fresh().await;
    let (t, patient) = (contract::tenant(), contract::rt("Patient"));
    let upsert = UpdateOptions {
        if_match: None,
        allow_create: true,
    };
    let body = |family: &str| {
        let mut b = contract::patient(family);
        b["id"] = serde_json::json!("raced");
        b
    };
    let mut tx = store.begin().await.unwrap();
    tx.read_ahead(&t, &[(patient.clone(), "raced".to_string())])
        .await
        .unwrap();
    let mine = tx
        .update(&t, &patient, "raced", body("Mine"), upsert)
        .await
        .unwrap();
    assert!(mine.created);
    let theirs = store
        .update(&t, &patient, &contract::id("raced"), body("Theirs"), upsert)
        .await
        .unwrap();
    assert!(theirs.created);
    let err = tx.commit().await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    let current = store
        .read(&t, &patient, &contract::id("raced"))
        .await
        .unwrap();
    assert_eq!(current.version, contract::version(1));
    assert!(current.body.contains("Theirs"), "{}", current.body);
}
