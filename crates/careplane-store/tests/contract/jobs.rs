//! The job queue's contract: transactional enqueue, fenced completion, leases, retries and
//! dead letters, concurrent claimers (reliability plan R11, R12).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use careplane_store::{JobState, Lease, NewJob, Retry, Store, StoreError, TenantId, UpdateOptions};
use serde_json::json;

use super::{rt, tenant};

fn lease(worker: &str, duration: Duration) -> Lease {
    Lease {
        worker: worker.to_string(),
        duration,
    }
}

fn job(kind: &str) -> NewJob {
    NewJob::new(tenant(), kind, json!({"n": 1}))
}

const MINUTE: Duration = Duration::from_secs(60);

/// Claims any ready job for a minute.
async fn claim_any(store: &dyn Store, worker: &str) -> Option<careplane_store::Claim> {
    store.claim_job(&lease(worker, MINUTE), &[]).await.unwrap()
}

pub async fn a_job_enqueued_in_a_rolled_back_transaction_never_exists(store: &dyn Store) {
    let patient = rt("Patient");
    let mut tx = store.begin().await.unwrap();
    tx.create(&tenant(), &patient, "p-rolled-back", super::patient("Gone"))
        .await
        .unwrap();
    tx.enqueue(&job("notify")).await.unwrap();
    drop(tx);
    assert_eq!(store.queue_depth().await.unwrap(), 0);
    assert!(claim_any(store, "w").await.is_none());

    let mut tx = store.begin().await.unwrap();
    tx.create(&tenant(), &patient, "p-kept", super::patient("Kept"))
        .await
        .unwrap();
    let id = tx.enqueue(&job("notify")).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.queue_depth().await.unwrap(), 1);
    let queued = store.job(&tenant(), &id).await.unwrap();
    assert_eq!(queued.state, JobState::Queued);
    assert_eq!(queued.payload, json!({"n": 1}));
}

pub async fn a_claimed_job_completes_once_with_its_fence(store: &dyn Store) {
    let id = store.enqueue(&job("export")).await.unwrap();
    let claim = store
        .claim_job(&lease("w1", MINUTE), &["export".to_string()])
        .await
        .unwrap()
        .expect("the queued job is claimed");
    assert_eq!(claim.job.id, id);
    assert_eq!(claim.job.state, JobState::Running);
    assert_eq!(claim.job.attempts, 1);
    assert_eq!(store.queue_depth().await.unwrap(), 0);
    assert!(claim_any(store, "w2").await.is_none());

    store
        .heartbeat_job(&id, claim.fence, MINUTE, Some(&json!({"done": 3})))
        .await
        .unwrap();
    assert_eq!(
        store.job(&tenant(), &id).await.unwrap().progress,
        Some(json!({"done": 3}))
    );
    store
        .complete_job(&id, claim.fence, &json!({"files": 2}))
        .await
        .unwrap();
    let done = store.job(&tenant(), &id).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.result, Some(json!({"files": 2})));
    let again = store.complete_job(&id, claim.fence, &json!({})).await;
    assert!(matches!(again, Err(StoreError::LeaseLost(_))), "{again:?}");

    let other = TenantId::parse("other-network").unwrap();
    assert!(matches!(
        store.job(&other, &id).await,
        Err(StoreError::NotFound { .. })
    ));
}

pub async fn claims_only_take_the_kinds_asked_for(store: &dyn Store) {
    store.enqueue(&job("reindex")).await.unwrap();
    let none = store
        .claim_job(&lease("w", MINUTE), &["export".to_string()])
        .await
        .unwrap();
    assert!(none.is_none());
    let some = store
        .claim_job(
            &lease("w", MINUTE),
            &["export".to_string(), "reindex".to_string()],
        )
        .await
        .unwrap();
    assert_eq!(some.unwrap().job.kind, "reindex");
}

/// R12: a worker paused past its lease loses the job; its late completion is refused and the
/// new holder's result stands.
pub async fn a_worker_whose_lease_expired_cannot_complete(store: &dyn Store) {
    let id = store.enqueue(&job("export")).await.unwrap();
    let zombie = store
        .claim_job(&lease("paused", Duration::from_millis(50)), &[])
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    let fresh = claim_any(store, "healthy")
        .await
        .expect("an expired lease makes the job claimable again");
    assert_eq!(fresh.job.id, id);
    assert_eq!(fresh.job.attempts, 2);
    assert!(fresh.fence > zombie.fence);

    let late = store
        .complete_job(&id, zombie.fence, &json!({"by": "zombie"}))
        .await;
    assert!(matches!(late, Err(StoreError::LeaseLost(_))), "{late:?}");
    let beat = store.heartbeat_job(&id, zombie.fence, MINUTE, None).await;
    assert!(matches!(beat, Err(StoreError::LeaseLost(_))), "{beat:?}");
    let fail = store
        .fail_job(&id, zombie.fence, "late", Retry::Never)
        .await;
    assert!(matches!(fail, Err(StoreError::LeaseLost(_))), "{fail:?}");

    // In a transaction, a refused completion takes the side effects down with it.
    let mut tx = store.begin().await.unwrap();
    tx.create(
        &tenant(),
        &rt("Patient"),
        "zombie-effect",
        super::patient("Z"),
    )
    .await
    .unwrap();
    assert!(tx
        .complete_job(&id, zombie.fence, &json!({}))
        .await
        .is_err());
    drop(tx);
    assert!(store
        .read(&tenant(), &rt("Patient"), &super::id("zombie-effect"))
        .await
        .is_err());

    store
        .complete_job(&id, fresh.fence, &json!({"by": "healthy"}))
        .await
        .unwrap();
    assert_eq!(
        store.job(&tenant(), &id).await.unwrap().result,
        Some(json!({"by": "healthy"}))
    );
}

pub async fn failed_attempts_back_off_then_go_to_the_dead_letters(store: &dyn Store) {
    let mut two_tries = job("flaky");
    two_tries.max_attempts = 2;
    let id = store.enqueue(&two_tries).await.unwrap();
    let first = claim_any(store, "w").await.unwrap();
    let state = store
        .fail_job(
            &id,
            first.fence,
            "endpoint down",
            Retry::After(Duration::ZERO),
        )
        .await
        .unwrap();
    assert_eq!(state, JobState::Queued);
    let second = claim_any(store, "w").await.unwrap();
    assert_eq!(second.job.attempts, 2);
    let state = store
        .fail_job(
            &id,
            second.fence,
            "endpoint still down",
            Retry::After(Duration::ZERO),
        )
        .await
        .unwrap();
    assert_eq!(state, JobState::Dead);
    let dead = store.job(&tenant(), &id).await.unwrap();
    assert_eq!(dead.last_error.as_deref(), Some("endpoint still down"));
    assert!(claim_any(store, "w").await.is_none());

    // A backoff delay keeps the job out of reach (and out of the backlog) until it passes.
    let id = store.enqueue(&job("later")).await.unwrap();
    let claim = claim_any(store, "w").await.unwrap();
    store
        .fail_job(
            &id,
            claim.fence,
            "try later",
            Retry::After(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    assert!(claim_any(store, "w").await.is_none());
    assert_eq!(store.queue_depth().await.unwrap(), 0);

    // Retry::Never dead-letters at once, whatever attempts are left.
    let id = store.enqueue(&job("bad-payload")).await.unwrap();
    let claim = claim_any(store, "w").await.unwrap();
    let state = store
        .fail_job(&id, claim.fence, "payload is not an object", Retry::Never)
        .await
        .unwrap();
    assert_eq!(state, JobState::Dead);
}

pub async fn a_lease_lost_on_the_last_attempt_dead_letters_the_job(store: &dyn Store) {
    let mut once = job("once");
    once.max_attempts = 1;
    let id = store.enqueue(&once).await.unwrap();
    store
        .claim_job(&lease("dies", Duration::from_millis(30)), &[])
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(claim_any(store, "w").await.is_none());
    let dead = store.job(&tenant(), &id).await.unwrap();
    assert_eq!(dead.state, JobState::Dead);
    assert!(dead.last_error.unwrap().contains("lease"));
}

pub async fn cancelled_jobs_stop_and_are_never_claimed(store: &dyn Store) {
    let queued = store.enqueue(&job("export")).await.unwrap();
    assert_eq!(
        store.cancel_job(&tenant(), &queued).await.unwrap(),
        JobState::Cancelled
    );
    assert!(claim_any(store, "w").await.is_none());

    let running = store.enqueue(&job("export")).await.unwrap();
    let claim = claim_any(store, "w").await.unwrap();
    store.cancel_job(&tenant(), &running).await.unwrap();
    let beat = store
        .heartbeat_job(&running, claim.fence, MINUTE, None)
        .await;
    assert!(matches!(beat, Err(StoreError::LeaseLost(_))), "{beat:?}");

    // A succeeded job's result can be withdrawn (a deleted export); a dead job stays dead.
    let done = store.enqueue(&job("export")).await.unwrap();
    let claim = claim_any(store, "w").await.unwrap();
    store
        .complete_job(&done, claim.fence, &json!({}))
        .await
        .unwrap();
    assert_eq!(
        store.cancel_job(&tenant(), &done).await.unwrap(),
        JobState::Cancelled
    );
    let dead = store.enqueue(&job("export")).await.unwrap();
    let claim = claim_any(store, "w").await.unwrap();
    store
        .fail_job(&dead, claim.fence, "broken", Retry::Never)
        .await
        .unwrap();
    assert_eq!(
        store.cancel_job(&tenant(), &dead).await.unwrap(),
        JobState::Dead
    );
}

/// Eight workers drain forty jobs: every job is claimed and completed exactly once.
pub async fn concurrent_claimers_never_take_the_same_job(store: Arc<dyn Store>) {
    for _ in 0..40 {
        store.enqueue(&job("parallel")).await.unwrap();
    }
    let mut workers = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        workers.push(tokio::spawn(async move {
            let mut done = Vec::new();
            while let Some(claim) = store
                .claim_job(&lease(&format!("w{w}"), MINUTE), &[])
                .await
                .unwrap()
            {
                store
                    .complete_job(&claim.job.id, claim.fence, &json!({}))
                    .await
                    .unwrap();
                done.push(claim.job.id);
            }
            done
        }));
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    for worker in workers {
        for id in worker.await.unwrap() {
            *seen.entry(id).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 40);
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");
    assert_eq!(store.queue_depth().await.unwrap(), 0);
}

pub async fn active_appointments_count_slot_holding_statuses(store: &dyn Store) {
    let appointment = rt("Appointment");
    let body = |status: &str| {
        json!({"resourceType": "Appointment", "status": status,
               "participant": [{"status": "accepted", "actor": {"reference": "Patient/p1"}}]})
    };
    for status in ["booked", "pending", "cancelled", "fulfilled", "booked"] {
        store
            .create(&tenant(), &appointment, body(status), None)
            .await
            .unwrap();
    }
    let deleted = store
        .create(&tenant(), &appointment, body("booked"), None)
        .await
        .unwrap();
    let careplane_store::CreateOutcome::Created(deleted) = deleted else {
        panic!("created");
    };
    store
        .delete(&tenant(), &appointment, &super::id(&deleted.id), None)
        .await
        .unwrap();
    let other = TenantId::parse("other-network").unwrap();
    store
        .create(&other, &appointment, body("arrived"), None)
        .await
        .unwrap();
    assert_eq!(store.active_appointments().await.unwrap(), 4);
}

fn rest_hook(status: &str, criteria: &str) -> serde_json::Value {
    json!({
        "resourceType": "Subscription",
        "status": status,
        "reason": "contract",
        "criteria": criteria,
        "channel": {"type": "rest-hook", "endpoint": "https://hooks.example.org/x"},
    })
}

/// The match jobs waiting in the queue, as (tenant, [type/id/version…]).
async fn match_jobs(store: &dyn Store) -> Vec<(String, Vec<String>)> {
    let kinds = [careplane_fhir::subscription::MATCH_KIND.to_string()];
    let mut found = Vec::new();
    while let Some(claim) = store.claim_job(&lease("w", MINUTE), &kinds).await.unwrap() {
        let changes = claim.job.payload["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                format!(
                    "{}/{}/{}",
                    c["type"].as_str().unwrap(),
                    c["id"].as_str().unwrap(),
                    c["version"]
                )
            })
            .collect();
        found.push((claim.job.tenant.to_string(), changes));
        store
            .complete_job(&claim.job.id, claim.fence, &json!({}))
            .await
            .unwrap();
    }
    found
}

/// The Subscription outbox: a committed write of a type some live rest-hook Subscription of the
/// same tenant listens to enqueues one match job in that transaction; other types, other
/// tenants, rolled-back writes and switched-off Subscriptions enqueue nothing.
pub async fn writes_of_subscribed_types_enqueue_a_match_job(store: &dyn Store) {
    let (t, subscription, observation) = (tenant(), rt("Subscription"), rt("Observation"));
    let obs = |id: &str| json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "x"}});
    let put = UpdateOptions {
        if_match: None,
        allow_create: true,
    };
    // Nobody listens yet: writes enqueue nothing.
    store
        .update(&t, &observation, &super::id("o0"), obs("o0"), put)
        .await
        .unwrap();
    assert!(match_jobs(store).await.is_empty());

    store
        .update(
            &t,
            &subscription,
            &super::id("s1"),
            rest_hook("active", "Observation?status=final"),
            put,
        )
        .await
        .unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.create(&t, &observation, "o1", obs("o1")).await.unwrap();
    tx.create(&t, &observation, "o2", obs("o2")).await.unwrap();
    tx.create(&t, &rt("Patient"), "p1", super::patient("Unheard"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let jobs = match_jobs(store).await;
    assert_eq!(
        jobs,
        vec![(
            t.to_string(),
            vec![
                "Observation/o1/1".to_string(),
                "Observation/o2/1".to_string()
            ]
        )],
        "one job per transaction, listing only the subscribed type"
    );

    // Rolled back: no job. Another tenant: no listener there.
    let mut tx = store.begin().await.unwrap();
    tx.create(&t, &observation, "o3", obs("o3")).await.unwrap();
    drop(tx);
    let other = TenantId::parse("other-net").unwrap();
    store
        .update(&other, &observation, &super::id("o4"), obs("o4"), put)
        .await
        .unwrap();
    assert!(match_jobs(store).await.is_empty());

    // Switched off, then deleted: no listener.
    store
        .update(
            &t,
            &subscription,
            &super::id("s1"),
            rest_hook("off", "Observation?status=final"),
            put,
        )
        .await
        .unwrap();
    store
        .update(&t, &observation, &super::id("o5"), obs("o5"), put)
        .await
        .unwrap();
    assert!(match_jobs(store).await.is_empty());
    store
        .update(
            &t,
            &subscription,
            &super::id("s1"),
            rest_hook("requested", "Observation?status=final"),
            put,
        )
        .await
        .unwrap();
    store
        .update(&t, &observation, &super::id("o5"), json!({"resourceType": "Observation", "id": "o5", "status": "amended", "code": {"text": "x"}}), put)
        .await
        .unwrap();
    assert_eq!(match_jobs(store).await.len(), 1);
    store
        .delete(&t, &subscription, &super::id("s1"), None)
        .await
        .unwrap();
    store
        .update(&t, &observation, &super::id("o6"), obs("o6"), put)
        .await
        .unwrap();
    assert!(match_jobs(store).await.is_empty());
}
