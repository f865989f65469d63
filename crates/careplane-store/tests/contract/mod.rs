//! The storage contract (issue 3), written once against `&dyn Store` and instantiated for every
//! backend by `contract_suite!`, so a failure names the backend and the rule.

#![allow(dead_code)]

mod batched;
mod jobs;
mod search;
pub use batched::*;
pub use jobs::*;
pub use search::*;

use std::sync::Arc;

use careplane_fhir::search::query::{self, ParseOptions};
use careplane_fhir::{Definitions, Id, ResourceType, VersionId};
use careplane_store::{
    Condition, CreateOutcome, HistoryQuery, HistoryScope, Method, Store, StoreError, TenantId,
    UpdateOptions,
};
use serde_json::{json, Value};

pub fn rt(name: &str) -> ResourceType {
    ResourceType::parse(Definitions::r4().unwrap(), name).unwrap()
}

pub fn id(s: &str) -> Id {
    Id::parse(s).unwrap()
}

/// A condition on Patient, as the API parses one (strictly).
pub fn condition(criteria: &str) -> Condition {
    let params: Vec<(String, String)> = criteria
        .split('&')
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    let options = ParseOptions {
        strict: true,
        ..ParseOptions::default()
    };
    Condition {
        criteria: criteria.to_string(),
        search: query::parse(
            Definitions::r4().unwrap(),
            &["Patient".to_string()],
            &params,
            options,
        )
        .unwrap(),
    }
}

pub fn search_request(resource_type: &str, criteria: &str) -> query::SearchRequest {
    let params: Vec<(String, String)> = criteria
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    query::parse(
        Definitions::r4().unwrap(),
        &[resource_type.to_string()],
        &params,
        ParseOptions::default(),
    )
    .unwrap()
}

pub fn tenant() -> TenantId {
    TenantId::default_tenant()
}

pub fn patient(family: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family}]})
}

pub async fn create(store: &dyn Store, body: Value) -> careplane_store::StoredResource {
    match store
        .create(&tenant(), &rt("Patient"), body, None)
        .await
        .unwrap()
    {
        CreateOutcome::Created(r) => r,
        CreateOutcome::Existing(_) => panic!("unconditional create returned an existing resource"),
    }
}

pub fn version(n: u64) -> VersionId {
    VersionId::new(n).unwrap()
}

pub async fn create_assigns_an_id_version_1_and_meta(store: &dyn Store) {
    let mut body = patient("Chalmers");
    body["id"] = json!("client-chosen");
    body["meta"] = json!({"versionId": "42", "lastUpdated": "1999-01-01T00:00:00Z", "tag": [{"code": "keep"}]});
    let created = create(store, body).await;
    assert_ne!(created.id, "client-chosen", "create ignores the client id");
    assert_eq!(created.version, VersionId::FIRST);
    let json = created.json().unwrap();
    assert_eq!(json["id"], created.id.as_str());
    assert_eq!(json["meta"]["versionId"], "1");
    assert_ne!(json["meta"]["lastUpdated"], "1999-01-01T00:00:00Z");
    assert_eq!(json["meta"]["tag"][0]["code"], "keep");
    let read = store
        .read(&tenant(), &rt("Patient"), &id(&created.id))
        .await
        .unwrap();
    assert_eq!(read.body, created.body);
}

pub async fn reading_an_unknown_id_is_not_found(store: &dyn Store) {
    let err = store
        .read(&tenant(), &rt("Patient"), &id("nope"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
}

pub async fn tenants_are_isolated(store: &dyn Store) {
    let created = create(store, patient("Mine")).await;
    let other = TenantId::parse("other-network").unwrap();
    let err = store
        .read(&other, &rt("Patient"), &id(&created.id))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    assert!(
        store
            .read(&tenant(), &rt("Patient"), &id(&created.id))
            .await
            .is_ok(),
        "positive control"
    );
}

pub async fn update_creates_a_new_version_and_vread_keeps_old_ones(store: &dyn Store) {
    let created = create(store, patient("One")).await;
    let pid = id(&created.id);
    let updated = store
        .update(
            &tenant(),
            &rt("Patient"),
            &pid,
            patient("Two"),
            UpdateOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(updated.resource.version, version(2));
    assert!(!updated.created);
    assert!(updated.resource.last_updated >= created.last_updated);
    let v1 = store
        .vread(&tenant(), &rt("Patient"), &pid, version(1))
        .await
        .unwrap();
    assert_eq!(v1.json().unwrap()["name"][0]["family"], "One");
    let current = store.read(&tenant(), &rt("Patient"), &pid).await.unwrap();
    assert_eq!(current.json().unwrap()["name"][0]["family"], "Two");
    let missing = store
        .vread(&tenant(), &rt("Patient"), &pid, version(3))
        .await
        .unwrap_err();
    assert!(matches!(missing, StoreError::NotFound { .. }));
}

pub async fn an_identical_update_writes_no_new_version(store: &dyn Store) {
    let created = create(store, patient("Same")).await;
    let pid = id(&created.id);
    let mut body = patient("Same");
    body["id"] = json!(created.id);
    let options = UpdateOptions::default();
    let again = store
        .update(&tenant(), &rt("Patient"), &pid, body.clone(), options)
        .await
        .unwrap();
    assert_eq!(again.resource.version, VersionId::FIRST, "nothing changed");
    assert_eq!(again.resource.body, created.body);
    body["gender"] = json!("other");
    let changed = store
        .update(&tenant(), &rt("Patient"), &pid, body, options)
        .await
        .unwrap();
    assert_eq!(changed.resource.version, version(2));
}

pub async fn a_stale_if_match_is_a_version_conflict(store: &dyn Store) {
    let created = create(store, patient("A")).await;
    let pid = id(&created.id);
    let opts = |v| UpdateOptions {
        if_match: Some(version(v)),
        allow_create: false,
    };
    store
        .update(&tenant(), &rt("Patient"), &pid, patient("B"), opts(1))
        .await
        .unwrap();
    let err = store
        .update(&tenant(), &rt("Patient"), &pid, patient("C"), opts(1))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::VersionConflict { .. }), "{err:?}");
    let del = store
        .delete(&tenant(), &rt("Patient"), &pid, Some(version(1)))
        .await
        .unwrap_err();
    assert!(matches!(del, StoreError::VersionConflict { .. }), "{del:?}");
    store
        .update(&tenant(), &rt("Patient"), &pid, patient("C"), opts(2))
        .await
        .unwrap();
}

pub async fn update_as_create_follows_the_option(store: &dyn Store) {
    let pid = id("client-id-1");
    let err = store
        .update(
            &tenant(),
            &rt("Patient"),
            &pid,
            patient("X"),
            UpdateOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::UpdateCreateDisabled { .. }),
        "{err:?}"
    );
    let allowed = UpdateOptions {
        if_match: None,
        allow_create: true,
    };
    let out = store
        .update(&tenant(), &rt("Patient"), &pid, patient("X"), allowed)
        .await
        .unwrap();
    assert!(out.created);
    assert_eq!(out.resource.version, VersionId::FIRST);
    assert_eq!(out.resource.id, "client-id-1");
}

pub async fn delete_is_soft_and_history_keeps_it(store: &dyn Store) {
    let created = create(store, patient("Gone")).await;
    let pid = id(&created.id);
    let deleted = store
        .delete(&tenant(), &rt("Patient"), &pid, None)
        .await
        .unwrap();
    assert_eq!(deleted, Some(version(2)));
    let err = store
        .read(&tenant(), &rt("Patient"), &pid)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Gone { .. }), "{err:?}");
    assert_eq!(
        store
            .delete(&tenant(), &rt("Patient"), &pid, None)
            .await
            .unwrap(),
        None,
        "idempotent"
    );
    let vread = store
        .vread(&tenant(), &rt("Patient"), &pid, version(2))
        .await
        .unwrap_err();
    assert!(matches!(vread, StoreError::Gone { .. }));
    assert!(store
        .vread(&tenant(), &rt("Patient"), &pid, version(1))
        .await
        .is_ok());
    let scope = HistoryScope::Instance(rt("Patient"), pid.clone());
    let page = store
        .history(
            &tenant(),
            &scope,
            &HistoryQuery {
                count: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let methods: Vec<Method> = page.entries.iter().map(|e| e.method).collect();
    assert_eq!(methods, [Method::Delete, Method::Create]);
    assert!(page.entries[0].body.is_none());
    // Updating a deleted resource brings it back as a new version.
    let back = store
        .update(
            &tenant(),
            &rt("Patient"),
            &pid,
            patient("Back"),
            UpdateOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(back.resource.version, version(3));
    assert!(back.created);
}

pub async fn deleting_an_unknown_resource_is_not_found(store: &dyn Store) {
    let err = store
        .delete(&tenant(), &rt("Patient"), &id("never"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
}

pub async fn conditional_create_by_identifier_returns_the_existing_match(store: &dyn Store) {
    let body =
        json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "123"}]});
    let cond = condition("identifier=urn:mrn|123");
    let first = store
        .create(&tenant(), &rt("Patient"), body.clone(), Some(&cond))
        .await
        .unwrap();
    let CreateOutcome::Created(first) = first else {
        panic!("first create must create")
    };
    let second = store
        .create(&tenant(), &rt("Patient"), body.clone(), Some(&cond))
        .await
        .unwrap();
    let CreateOutcome::Existing(existing) = second else {
        panic!("second create must find the first")
    };
    assert_eq!(existing.id, first.id);
    let other_system = condition("identifier=urn:other|123");
    let third = store
        .create(&tenant(), &rt("Patient"), body.clone(), Some(&other_system))
        .await
        .unwrap();
    assert!(
        matches!(third, CreateOutcome::Created(_)),
        "a different system does not match"
    );
    let any_system = condition("identifier=123");
    let err = store
        .create(&tenant(), &rt("Patient"), body, Some(&any_system))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::MultipleMatches { .. }), "{err:?}");
    let by_id = condition(&format!("_id={}", first.id));
    let found = store
        .create(&tenant(), &rt("Patient"), patient("Z"), Some(&by_id))
        .await
        .unwrap();
    assert!(matches!(found, CreateOutcome::Existing(ref r) if r.id == first.id));
}

pub async fn concurrent_conditional_creates_make_exactly_one(store: Arc<dyn Store>) {
    // Full criteria, not only identifiers, decide the race.
    let body = json!({"resourceType": "Patient", "name": [{"family": "Racer"}], "birthDate": "1990-02-03"});
    let cond = condition("family=racer&birthdate=1990");
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (store, body, cond) = (store.clone(), body.clone(), cond.clone());
        tasks.push(tokio::spawn(async move {
            matches!(
                store
                    .create(&tenant(), &rt("Patient"), body, Some(&cond))
                    .await
                    .unwrap(),
                CreateOutcome::Created(_)
            )
        }));
    }
    let mut created = 0;
    for t in tasks {
        created += usize::from(t.await.unwrap());
    }
    assert_eq!(created, 1);
}

pub async fn concurrent_writers_never_lose_an_update(store: Arc<dyn Store>) {
    let created = create(
        store.as_ref(),
        json!({"resourceType": "Patient", "multipleBirthInteger": 0}),
    )
    .await;
    let pid = id(&created.id);
    let writers = 8;
    let increments_each = 5;
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (store, pid) = (store.clone(), pid.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..increments_each {
                // Optimistic read-modify-write with If-Match, retried on conflict: the counter only
                // reaches writers*increments if no update is ever lost.
                loop {
                    let cur = store.read(&tenant(), &rt("Patient"), &pid).await.unwrap();
                    let mut body = cur.json().unwrap();
                    let n = body["multipleBirthInteger"].as_i64().unwrap();
                    body["multipleBirthInteger"] = json!(n + 1);
                    let opts = UpdateOptions {
                        if_match: Some(cur.version),
                        allow_create: false,
                    };
                    match store
                        .update(&tenant(), &rt("Patient"), &pid, body, opts)
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::VersionConflict { .. }) => continue,
                        Err(e) => panic!("{e:?}"),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let last = store.read(&tenant(), &rt("Patient"), &pid).await.unwrap();
    assert_eq!(
        last.json().unwrap()["multipleBirthInteger"],
        json!(writers * increments_each)
    );
    assert_eq!(last.version.get(), 1 + (writers * increments_each) as u64);
}

pub async fn history_pages_stay_stable_while_writes_continue(store: &dyn Store) {
    let t = TenantId::parse("history-paging").unwrap();
    for i in 0..5 {
        store
            .create(&t, &rt("Patient"), patient(&format!("P{i}")), None)
            .await
            .unwrap();
    }
    let q = |before| HistoryQuery {
        count: 2,
        before,
        ..Default::default()
    };
    let first = store
        .history(&t, &HistoryScope::System, &q(None))
        .await
        .unwrap();
    let names = |p: &careplane_store::HistoryPage| -> Vec<String> {
        p.entries
            .iter()
            .map(|e| {
                serde_json::from_str::<Value>(e.body.as_deref().unwrap()).unwrap()["name"][0]
                    ["family"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(names(&first), ["P4", "P3"]);
    // New writes land before the first page, never inside later pages.
    for i in 5..8 {
        store
            .create(&t, &rt("Patient"), patient(&format!("P{i}")), None)
            .await
            .unwrap();
    }
    let second = store
        .history(&t, &HistoryScope::System, &q(first.next))
        .await
        .unwrap();
    assert_eq!(names(&second), ["P2", "P1"]);
    let third = store
        .history(&t, &HistoryScope::System, &q(second.next))
        .await
        .unwrap();
    assert_eq!(names(&third), ["P0"]);
    assert!(third.next.is_none());
    let by_type = store
        .history(&t, &HistoryScope::Type(rt("Observation")), &q(None))
        .await
        .unwrap();
    assert!(
        by_type.entries.is_empty(),
        "type history only shows that type"
    );
}

pub async fn history_since_and_at_filter_by_time(store: &dyn Store) {
    let created = create(store, patient("V1")).await;
    let pid = id(&created.id);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let between = time::OffsetDateTime::now_utc();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    store
        .update(
            &tenant(),
            &rt("Patient"),
            &pid,
            patient("V2"),
            UpdateOptions::default(),
        )
        .await
        .unwrap();
    let scope = HistoryScope::Instance(rt("Patient"), pid);
    let since = HistoryQuery {
        count: 10,
        since: Some(between),
        ..Default::default()
    };
    let page = store.history(&tenant(), &scope, &since).await.unwrap();
    assert_eq!(
        page.entries
            .iter()
            .map(|e| e.version.get())
            .collect::<Vec<_>>(),
        [2]
    );
    let at = HistoryQuery {
        count: 10,
        at: Some(between),
        ..Default::default()
    };
    let page = store.history(&tenant(), &scope, &at).await.unwrap();
    assert_eq!(
        page.entries
            .iter()
            .map(|e| e.version.get())
            .collect::<Vec<_>>(),
        [1],
        "v1 was current then"
    );
}

/// Instantiates every contract case for one backend. `$make` is an async expression that yields
/// a fresh, migrated `Arc<dyn Store>` (plus anything that must live as long as the test).
#[macro_export]
macro_rules! contract_suite {
    ($make:expr) => {
        $crate::contract_suite!(@cases $make;
            create_assigns_an_id_version_1_and_meta,
            reading_an_unknown_id_is_not_found,
            tenants_are_isolated,
            update_creates_a_new_version_and_vread_keeps_old_ones,
            a_stale_if_match_is_a_version_conflict,
            an_identical_update_writes_no_new_version,
            update_as_create_follows_the_option,
            delete_is_soft_and_history_keeps_it,
            deleting_an_unknown_resource_is_not_found,
            conditional_create_by_identifier_returns_the_existing_match,
            history_pages_stay_stable_while_writes_continue,
            history_since_and_at_filter_by_time,
            search_uses_the_index_on_every_backend,
            total_estimate_is_present_and_close_to_the_count,
            filters_over_one_type_intersect_per_resource,
            pages_in_id_order_list_each_match_once,
            updates_and_deletes_replace_every_index_row,
            id_and_last_updated_are_answered_from_the_resource_columns,
            derived_parameters_are_searched_through_their_sources,
            identifier_of_type_matches_type_and_value,
            quantities_match_across_ucum_units,
            a_job_enqueued_in_a_rolled_back_transaction_never_exists,
            a_claimed_job_completes_once_with_its_fence,
            claims_only_take_the_kinds_asked_for,
            a_worker_whose_lease_expired_cannot_complete,
            failed_attempts_back_off_then_go_to_the_dead_letters,
            a_lease_lost_on_the_last_attempt_dead_letters_the_job,
            cancelled_jobs_stop_and_are_never_claimed,
            active_appointments_count_slot_holding_statuses,
            writes_of_subscribed_types_enqueue_a_match_job,
            updates_read_ahead_match_plain_updates,
            a_transaction_sees_its_own_buffered_writes,
            large_buffered_transactions_commit_or_vanish_whole,
        );
        $crate::contract_suite!(@shared $make;
            concurrent_conditional_creates_make_exactly_one,
            concurrent_writers_never_lose_an_update,
            concurrent_claimers_never_take_the_same_job,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = $make.await;
                contract::$case(store.as_ref()).await;
            }
        )*
    };
    (@shared $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = $make.await;
                contract::$case(store).await;
            }
        )*
    };
}

pub async fn search_uses_the_index_on_every_backend(store: &dyn Store) {
    let (t, patient_rt, obs_rt) = (tenant(), rt("Patient"), rt("Observation"));
    let options = careplane_store::SearchOptions {
        page_size: 10,
        max_included: 100,
        count_only: false,
    };
    for (pid, family, birth) in [
        ("a1", "Álvarez", "1970-01-01"),
        ("a2", "Brown", "1990-06-15"),
    ] {
        store
            .update(
                &t,
                &patient_rt,
                &id(pid),
                json!({"resourceType": "Patient", "id": pid, "name": [{"family": family}], "birthDate": birth}),
                UpdateOptions { if_match: None, allow_create: true },
            )
            .await
            .unwrap();
    }
    for (oid, pid, value) in [("b1", "a1", 5.0), ("b2", "a2", 50.0)] {
        store
            .update(
                &t,
                &obs_rt,
                &id(oid),
                json!({"resourceType": "Observation", "id": oid, "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "1-1"}]},
                    "subject": {"reference": format!("Patient/{pid}")},
                    "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org", "code": "mg"}}),
                UpdateOptions { if_match: None, allow_create: true },
            )
            .await
            .unwrap();
    }
    let found = |page: careplane_store::SearchPage| -> Vec<String> {
        page.matches.into_iter().map(|m| m.id).collect()
    };
    store.analyze().await.unwrap();
    let run = |ty: &str, q: &str| search_request(ty, q);
    assert_eq!(
        found(
            store
                .search(&t, &run("Patient", "name=alv"), &options)
                .await
                .unwrap()
        ),
        ["a1"]
    );
    assert_eq!(
        found(
            store
                .search(&t, &run("Patient", "birthdate=gt1980"), &options)
                .await
                .unwrap()
        ),
        ["a2"]
    );
    assert_eq!(
        found(
            store
                .search(&t, &run("Observation", "value-quantity=gt10||mg"), &options)
                .await
                .unwrap()
        ),
        ["b2"]
    );
    assert_eq!(
        found(
            store
                .search(
                    &t,
                    &run("Observation", "subject:Patient.name=brown"),
                    &options
                )
                .await
                .unwrap()
        ),
        ["b2"]
    );
    assert_eq!(
        found(
            store
                .search(
                    &t,
                    &run(
                        "Patient",
                        "_has:Observation:subject:code=1-1&_sort=-birthdate"
                    ),
                    &options
                )
                .await
                .unwrap()
        ),
        ["a2", "a1"]
    );
    let page = store
        .search(
            &t,
            &run(
                "Observation",
                "code=http://loinc.org|1-1&_include=Observation:subject",
            ),
            &options,
        )
        .await
        .unwrap();
    assert_eq!(page.matches.len(), 2);
    assert_eq!(page.included.len(), 2);
    let counted = store
        .search(
            &t,
            &run("Observation", "code=1-1"),
            &careplane_store::SearchOptions {
                count_only: true,
                ..options
            },
        )
        .await
        .unwrap();
    assert_eq!(counted.total, Some(2));
    // Keyset pages of one cover everything once.
    let mut request = run("Patient", "_sort=family&_count=1");
    let mut seen = Vec::new();
    loop {
        let page = store
            .search(
                &t,
                &request,
                &careplane_store::SearchOptions {
                    page_size: 1,
                    ..options
                },
            )
            .await
            .unwrap();
        seen.extend(page.matches.iter().map(|m| m.id.clone()));
        match page.next {
            Some(cursor) => request.cursor = Some(cursor),
            None => break,
        }
    }
    assert_eq!(seen, ["a1", "a2"]);
    // Reindexing rebuilds the same answers.
    assert!(store.reindex().await.unwrap() >= 4);
    assert_eq!(
        found(
            store
                .search(&t, &run("Patient", "name=alv"), &options)
                .await
                .unwrap()
        ),
        ["a1"]
    );
}
