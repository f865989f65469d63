//! Writes are buffered inside a transaction and states may be read ahead (`read_ahead`): the
//! outcomes must be exactly those of plain one-at-a-time writes.

use careplane_store::{HistoryQuery, HistoryScope, Store, StoreError, UpdateOptions};
use serde_json::{json, Value};

use super::{create, id, patient, rt, search_request, tenant, version};

fn with_id(mut body: Value, id: &str) -> Value {
    body["id"] = json!(id);
    body
}

fn upsert() -> UpdateOptions {
    UpdateOptions {
        if_match: None,
        allow_create: true,
    }
}

async fn versions_of(store: &dyn Store, pid: &str) -> usize {
    let scope = HistoryScope::Instance(rt("Patient"), id(pid));
    let query = HistoryQuery {
        count: 100,
        ..HistoryQuery::default()
    };
    store
        .history(&tenant(), &scope, &query)
        .await
        .unwrap()
        .entries
        .len()
}

pub async fn updates_read_ahead_match_plain_updates(store: &dyn Store) {
    let (t, patient_rt) = (tenant(), rt("Patient"));
    let same = create(store, patient("Same")).await;
    let changed = create(store, patient("Before")).await;
    let gone = create(store, patient("Gone")).await;
    store
        .delete(&t, &patient_rt, &id(&gone.id), None)
        .await
        .unwrap();

    let mut tx = store.begin().await.unwrap();
    let targets: Vec<_> = [&same.id, &changed.id, &gone.id, &"new-one".to_string()]
        .into_iter()
        .map(|i| (patient_rt.clone(), i.clone()))
        .collect();
    tx.read_ahead(&t, &targets).await.unwrap();
    let kept = tx
        .update(
            &t,
            &patient_rt,
            &same.id,
            with_id(patient("Same"), &same.id),
            upsert(),
        )
        .await
        .unwrap();
    let moved = tx
        .update(
            &t,
            &patient_rt,
            &changed.id,
            with_id(patient("After"), &changed.id),
            upsert(),
        )
        .await
        .unwrap();
    let revived = tx
        .update(
            &t,
            &patient_rt,
            &gone.id,
            with_id(patient("Back"), &gone.id),
            upsert(),
        )
        .await
        .unwrap();
    let fresh = tx
        .update(
            &t,
            &patient_rt,
            "new-one",
            with_id(patient("New"), "new-one"),
            upsert(),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();

    assert_eq!(
        (kept.resource.version, kept.created),
        (version(1), false),
        "an identical update writes nothing"
    );
    assert_eq!(kept.resource.body, same.body);
    assert_eq!((moved.resource.version, moved.created), (version(2), false));
    assert_eq!(
        (revived.resource.version, revived.created),
        (version(3), true),
        "an update of a deleted resource recreates it"
    );
    assert_eq!((fresh.resource.version, fresh.created), (version(1), true));

    assert_eq!(versions_of(store, &same.id).await, 1);
    assert_eq!(versions_of(store, &changed.id).await, 2);
    assert_eq!(versions_of(store, &gone.id).await, 3);
    let read = store.read(&t, &patient_rt, &id(&changed.id)).await.unwrap();
    assert!(read.body.contains("After"), "{}", read.body);
    let read = store.read(&t, &patient_rt, &id("new-one")).await.unwrap();
    assert_eq!(read.version, version(1));
    assert!(read.body.contains("New"), "{}", read.body);
}

/// Reads, searches and later writes in the transaction see its buffered writes.
pub async fn a_transaction_sees_its_own_buffered_writes(store: &dyn Store) {
    let (t, patient_rt) = (tenant(), rt("Patient"));
    let mut tx = store.begin().await.unwrap();
    let first = tx
        .create(&t, &patient_rt, "buffered-1", patient("Zyxwvut"))
        .await
        .unwrap();
    let read = tx.read(&t, &patient_rt, "buffered-1").await.unwrap();
    assert_eq!(read.version, first.version);
    let page = tx
        .search(
            &t,
            &search_request("Patient", "family=Zyxwvut"),
            &careplane_store::SearchOptions {
                page_size: 10,
                max_included: 10,
                count_only: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.matches.len(), 1, "the search sees the buffered create");
    // Two versions of one resource in a transaction, and a third after a read ahead.
    let second = tx
        .update(
            &t,
            &patient_rt,
            "buffered-1",
            with_id(patient("Second"), "buffered-1"),
            upsert(),
        )
        .await
        .unwrap();
    tx.read_ahead(&t, &[(patient_rt.clone(), "buffered-1".to_string())])
        .await
        .unwrap();
    let third = tx
        .update(
            &t,
            &patient_rt,
            "buffered-1",
            with_id(patient("Third"), "buffered-1"),
            upsert(),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(second.resource.version, version(2));
    assert_eq!(third.resource.version, version(3));
    assert_eq!(versions_of(store, "buffered-1").await, 3);
    let current = store
        .read(&t, &patient_rt, &id("buffered-1"))
        .await
        .unwrap();
    assert_eq!(current.version, version(3));
    assert!(current.body.contains("Third"));
}

/// Many buffered writes in one transaction (past the buffer's flush size) all land, and a
/// rolled-back one leaves nothing.
pub async fn large_buffered_transactions_commit_or_vanish_whole(store: &dyn Store) {
    let (t, patient_rt) = (tenant(), rt("Patient"));
    let mut tx = store.begin().await.unwrap();
    for n in 0..2_500 {
        tx.create(&t, &patient_rt, &format!("bulk-{n}"), patient("Bulk"))
            .await
            .unwrap();
    }
    drop(tx);
    assert!(matches!(
        store.read(&t, &patient_rt, &id("bulk-0")).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.live_resources().await.unwrap(), 0);

    let mut tx = store.begin().await.unwrap();
    for n in 0..2_500 {
        tx.create(&t, &patient_rt, &format!("bulk-{n}"), patient("Bulk"))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    assert_eq!(store.live_resources().await.unwrap(), 2_500);
    let last = store.read(&t, &patient_rt, &id("bulk-2499")).await.unwrap();
    assert_eq!(last.version, version(1));
}
