//! Transaction and batch Bundles posted to the base (R4 http.html#transaction).

use careplane_testkit::{expect_outcome, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

const PATIENT_URN: &str = "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a";

fn entry(method: &str, url: &str, full_url: Option<&str>, resource: Option<Value>) -> Value {
    let mut e = json!({"request": {"method": method, "url": url}});
    if let Some(f) = full_url {
        e["fullUrl"] = json!(f);
    }
    if let Some(r) = resource {
        e["resource"] = r;
    }
    e
}

fn bundle(kind: &str, entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": kind, "entry": entries})
}

fn patient(family: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family}],
           "identifier": [{"system": "urn:mrn", "value": family}]})
}

fn observation(subject: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final",
           "code": {"text": "weight"}, "subject": {"reference": subject}})
}

/// How many versions of `rt` the server holds: an independent count via type history.
async fn versions(app: &TestApp, rt: &str) -> usize {
    let body: Value = app
        .get(&format!("{rt}/_history?_count=1000"))
        .await
        .json()
        .await
        .unwrap();
    body["entry"].as_array().map_or(0, Vec::len)
}

/// Posts a one-Observation transaction whose subject must not resolve; returns the diagnostics.
async fn rejected_observation(app: &TestApp, subject: &str) -> String {
    let tx = bundle(
        "transaction",
        vec![entry(
            "POST",
            "Observation",
            None,
            Some(observation(subject)),
        )],
    );
    let outcome = expect_outcome(app.post_json("", &tx).await, 400).await;
    outcome["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_transaction_creates_everything_and_rewrites_placeholder_references() {
    let app = TestApp::spawn().await;
    let tx = bundle(
        "transaction",
        vec![
            entry("POST", "Observation", None, Some(observation(PATIENT_URN))),
            entry(
                "POST",
                "Patient",
                Some(PATIENT_URN),
                Some(patient("Chalmers")),
            ),
        ],
    );
    let response = app.post_json("", &tx).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "transaction-response");
    let entries = body["entry"].as_array().unwrap();
    assert_eq!(
        entries.len(),
        2,
        "one response entry per request entry, in order"
    );
    assert_eq!(entries[0]["response"]["status"], "201 Created");
    assert_eq!(entries[1]["response"]["status"], "201 Created");
    let patient_id = entries[1]["resource"]["id"].as_str().unwrap();
    let location = entries[1]["response"]["location"].as_str().unwrap();
    assert_eq!(location, format!("Patient/{patient_id}/_history/1"));
    assert_eq!(entries[1]["response"]["etag"], "W/\"1\"");
    let obs_id = entries[0]["resource"]["id"].as_str().unwrap();
    let stored: Value = app
        .get(&format!("Observation/{obs_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        stored["subject"]["reference"],
        format!("Patient/{patient_id}"),
        "the urn:uuid reference points at the created patient"
    );
}

#[tokio::test]
async fn a_failing_entry_rolls_back_the_whole_transaction_and_is_named() {
    let app = TestApp::spawn().await;
    let (id, _) = app.create(&patient("Existing")).await;
    let tx = bundle(
        "transaction",
        vec![
            entry("POST", "Patient", Some(PATIENT_URN), Some(patient("New"))),
            entry("POST", "Observation", None, Some(observation(PATIENT_URN))),
            json!({"request": {"method": "PUT", "url": format!("Patient/{id}"), "ifMatch": "W/\"7\""},
                   "resource": {"resourceType": "Patient", "id": id, "active": true}}),
        ],
    );
    let outcome = expect_outcome(app.post_json("", &tx).await, 412).await;
    let issue = &outcome["issue"][0];
    assert_eq!(issue["expression"][0], "Bundle.entry[2]");
    assert!(
        issue["diagnostics"].as_str().unwrap().contains("entry 2"),
        "{issue}"
    );
    assert_eq!(
        versions(&app, "Patient").await,
        1,
        "the POST was rolled back"
    );
    assert_eq!(versions(&app, "Observation").await, 0);
}

#[tokio::test]
async fn a_placeholder_naming_no_entry_fails_the_transaction() {
    let app = TestApp::spawn().await;
    let diagnostics =
        rejected_observation(&app, "urn:uuid:0f4a7c4c-59d2-4a42-9d4e-1c1f1e2b3c4d").await;
    assert!(diagnostics.contains("names no entry"), "{diagnostics}");
    assert_eq!(versions(&app, "Observation").await, 0);
}

#[tokio::test]
async fn entries_run_in_the_spec_order_delete_post_put_get() {
    let app = TestApp::spawn().await;
    let (old, _) = app.create(&patient("Old")).await;
    let (kept, _) = app.create(&patient("Kept")).await;
    let tx = bundle(
        "transaction",
        vec![
            entry("GET", &format!("Patient/{kept}"), None, None),
            json!({"request": {"method": "PUT", "url": format!("Patient/{kept}")},
                   "resource": {"resourceType": "Patient", "id": kept, "active": false}}),
            entry("DELETE", &format!("Patient/{old}"), None, None),
        ],
    );
    let response = app.post_json("", &tx).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let entries = body["entry"].as_array().unwrap();
    assert_eq!(entries[2]["response"]["status"], "204 No Content");
    assert_eq!(entries[1]["response"]["status"], "200 OK");
    assert_eq!(
        entries[0]["resource"]["meta"]["versionId"], "2",
        "the GET ran after the PUT"
    );
    assert_eq!(app.get(&format!("Patient/{old}")).await.status(), 410);
}

#[tokio::test]
async fn if_none_exist_and_conditional_references_resolve_inside_the_transaction() {
    let app = TestApp::spawn().await;
    let (existing, _) = app.create(&patient("Known")).await;
    let tx = bundle(
        "transaction",
        vec![
            json!({"fullUrl": PATIENT_URN,
                   "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|Known"},
                   "resource": patient("Known")}),
            entry("POST", "Observation", None, Some(observation(PATIENT_URN))),
            entry(
                "POST",
                "Observation",
                None,
                Some(observation("Patient?identifier=urn:mrn|Known")),
            ),
        ],
    );
    let response = app.post_json("", &tx).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["entry"][0]["response"]["status"], "200 OK");
    for i in [1, 2] {
        assert_eq!(
            body["entry"][i]["resource"]["subject"]["reference"],
            format!("Patient/{existing}")
        );
    }
    assert_eq!(versions(&app, "Patient").await, 1, "no duplicate patient");
}

#[tokio::test]
async fn an_unresolvable_conditional_reference_fails_with_its_entry() {
    let app = TestApp::spawn().await;
    let diagnostics = rejected_observation(&app, "Patient?identifier=urn:mrn|nobody").await;
    assert!(diagnostics.contains("matches 0 resources"), "{diagnostics}");
}

#[tokio::test]
async fn batch_entries_succeed_or_fail_on_their_own() {
    let app = TestApp::spawn().await;
    let batch = bundle(
        "batch",
        vec![
            entry("POST", "Patient", None, Some(patient("One"))),
            entry("GET", "Patient/does-not-exist", None, None),
            entry(
                "POST",
                "Patient",
                None,
                Some(json!({"resourceType": "Patient", "gender": "robot"})),
            ),
            json!({"request": {"method": "TRACE", "url": "Patient"}}),
        ],
    );
    let response = app.post_json("", &batch).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "batch-response");
    let status = |i: usize| {
        body["entry"][i]["response"]["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(status(0), "201 Created");
    assert_eq!(status(1), "404 Not Found");
    assert_eq!(status(2), "400 Bad Request");
    assert_eq!(status(3), "400 Bad Request");
    assert_eq!(
        body["entry"][2]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert_eq!(versions(&app, "Patient").await, 1);
}

#[tokio::test]
async fn bundles_that_are_not_transactions_or_batches_are_rejected() {
    let app = TestApp::spawn().await;
    let collection = bundle("collection", vec![]);
    expect_outcome(app.post_json("", &collection).await, 400).await;
    expect_outcome(app.post_json("", &patient("NotABundle")).await, 400).await;
    let no_request = json!({"resourceType": "Bundle", "type": "transaction",
                            "entry": [{"resource": patient("X")}]});
    let outcome = expect_outcome(app.post_json("", &no_request).await, 400).await;
    assert_eq!(outcome["issue"][0]["expression"][0], "Bundle.entry[0]");
    let bad_url = bundle(
        "transaction",
        vec![entry("POST", "Nonsense", None, Some(patient("X")))],
    );
    expect_outcome(app.post_json("", &bad_url).await, 400).await;
    let invalid = bundle(
        "transaction",
        vec![entry(
            "POST",
            "Patient",
            None,
            Some(json!({"resourceType": "Patient", "gender": 7})),
        )],
    );
    let outcome = expect_outcome(app.post_json("", &invalid).await, 400).await;
    assert!(
        outcome["issue"][0]["expression"][0]
            .as_str()
            .unwrap()
            .starts_with("Bundle.entry[0].resource"),
        "{outcome}"
    );
}

#[tokio::test]
async fn entry_and_size_limits_answer_413() {
    let app = TestApp::spawn_with(|s| {
        s.max_bundle_entries = 2;
        s.max_bundle_bytes = 4096;
    })
    .await;
    let three = bundle(
        "transaction",
        (0..3)
            .map(|i| entry("POST", "Patient", None, Some(patient(&format!("P{i}")))))
            .collect(),
    );
    expect_outcome(app.post_json("", &three).await, 413).await;
    let big = bundle(
        "batch",
        vec![entry(
            "POST",
            "Patient",
            None,
            Some(patient(&"x".repeat(5000))),
        )],
    );
    expect_outcome(app.post_json("", &big).await, 413).await;
    assert_eq!(versions(&app, "Patient").await, 0);
}

#[tokio::test]
async fn the_base_accepts_a_trailing_slash_and_only_post() {
    let app = TestApp::spawn().await;
    let tx = bundle(
        "transaction",
        vec![entry("POST", "Patient", None, Some(patient("S")))],
    );
    let with_slash = app
        .client
        .post(format!("{}/", app.base))
        .header("content-type", "application/fhir+json")
        .body(tx.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(with_slash.status(), 200);
    let response = app.request(Method::DELETE, "").send().await.unwrap();
    expect_outcome(response, 405).await;
}
