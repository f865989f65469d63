//! Reindex as a job: rebuilds the index in batches, and an attempt after a lost lease resumes
//! from the cursor the previous attempt's heartbeat saved.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use careplane_fhir::search::query;
use careplane_fhir::{Definitions, ResourceType};
use careplane_store::{JobState, Lease, NewJob, SearchOptions, Store, TenantId};
use careplane_worker::reindex::ReindexHandler;
use careplane_worker::{Runner, RunnerSettings};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn tenant() -> TenantId {
    TenantId::default_tenant()
}

/// A store whose search index tables were emptied behind its back (a definitions upgrade).
async fn store_with_lost_index(
    patients: usize,
) -> (Arc<dyn Store>, tempfile::TempDir, Vec<String>) {
    let (store, dir) = careplane_testkit::sqlite_store().await;
    let patient = ResourceType::parse(Definitions::r4().unwrap(), "Patient").unwrap();
    let mut ids = Vec::new();
    for n in 0..patients {
        let id = format!("p{n:03}");
        let mut tx = store.begin().await.unwrap();
        tx.create(
            &tenant(),
            &patient,
            &id,
            json!({"resourceType": "Patient", "name": [{"family": "Reindexed"}]}),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        ids.push(id);
    }
    let url = format!("sqlite://{}", dir.path().join("careplane.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("DELETE FROM search_string")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    (store, dir, ids)
}

async fn found(store: &dyn Store) -> Vec<String> {
    let request = query::parse(
        Definitions::r4().unwrap(),
        &["Patient".to_string()],
        &[("family".to_string(), "reindexed".to_string())],
        Default::default(),
    )
    .unwrap();
    let options = SearchOptions {
        page_size: 1000,
        max_included: 0,
        count_only: false,
    };
    let page = store.search(&tenant(), &request, &options).await.unwrap();
    let mut ids: Vec<String> = page.matches.into_iter().map(|m| m.id).collect();
    ids.sort();
    ids
}

async fn run_until_final(store: Arc<dyn Store>, id: &str) -> careplane_store::Job {
    let settings = RunnerSettings {
        worker_id: "reindexer".into(),
        lease: Duration::from_secs(5),
        poll_interval: Duration::from_millis(20),
        ..RunnerSettings::default()
    };
    let stop = CancellationToken::new();
    let runner = tokio::spawn(
        Runner::new(store.clone(), settings)
            .register(ReindexHandler { batch_size: 4 })
            .run(stop.clone()),
    );
    let mut job = store.job(&tenant(), id).await.unwrap();
    for _ in 0..400 {
        if job.state.is_final() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        job = store.job(&tenant(), id).await.unwrap();
    }
    stop.cancel();
    runner.await.unwrap();
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reindex_job_rebuilds_the_index_in_batches() {
    let (store, _dir, ids) = store_with_lost_index(25).await;
    assert!(found(store.as_ref()).await.is_empty(), "the index is gone");
    let id = store
        .enqueue(&NewJob::new(tenant(), "reindex", json!({})))
        .await
        .unwrap();
    let job = run_until_final(store.clone(), &id).await;
    assert_eq!(job.state, JobState::Succeeded, "{:?}", job.last_error);
    assert_eq!(job.result.unwrap()["reindexed"], 25);
    assert_eq!(found(store.as_ref()).await, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reindex_after_a_lost_lease_resumes_from_the_saved_cursor() {
    let (store, _dir, ids) = store_with_lost_index(25).await;
    let id = store
        .enqueue(&NewJob::new(tenant(), "reindex", json!({})))
        .await
        .unwrap();
    // A first worker got through p009, saved that in a heartbeat, then died.
    let lease = Lease {
        worker: "died".into(),
        duration: Duration::from_millis(100),
    };
    let claim = store.claim_job(&lease, &[]).await.unwrap().unwrap();
    let progress =
        json!({"done": 10, "total": 25, "cursor": [tenant().as_str(), "Patient", "p009"]});
    store
        .heartbeat_job(
            &id,
            claim.fence,
            Duration::from_millis(100),
            Some(&progress),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let job = run_until_final(store.clone(), &id).await;
    assert_eq!(job.state, JobState::Succeeded, "{:?}", job.last_error);
    let result = job.result.unwrap();
    assert_eq!(result["reindexed"], 25);
    assert_eq!(result["resumedAt"], 10);
    // Only what came after the cursor was redone (the dead worker's part stays as it left it).
    assert_eq!(found(store.as_ref()).await, ids[10..].to_vec());
}
