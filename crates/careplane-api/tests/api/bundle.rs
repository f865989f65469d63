//! Transaction and batch Bundles posted to the base (R4 http.html#transaction). Issue 5 adds
//! PATCH entries ("the resource is a Binary with contentType application/json-patch+json",
//! http.html#patch) processed with the PUTs, and GET entries (read, vread, search) processed
//! last, seeing the transaction's own writes.

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

/// Standard base64 with padding, as `Binary.data` carries it.
fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A PATCH entry carrying `ops` as R4 does: a Binary JSON Patch.
fn patch_entry(url: &str, ops: Value, if_match: Option<&str>) -> Value {
    let mut e = json!({
        "request": {"method": "PATCH", "url": url},
        "resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                     "data": base64(ops.to_string().as_bytes())},
    });
    if let Some(etag) = if_match {
        e["request"]["ifMatch"] = json!(etag);
    }
    e
}

async fn post_ok(app: &TestApp, bundle: &Value) -> Value {
    let response = app.post_json("", bundle).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

fn statuses(response: &Value) -> Vec<String> {
    response["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap().to_string())
        .collect()
}

/// `Type/id` of every match of a searchset Bundle, sorted.
fn matches(searchset: &Value) -> Vec<String> {
    assert_eq!(searchset["type"], "searchset", "{searchset}");
    let mut found: Vec<String> = searchset["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap(),
                e["resource"]["id"].as_str().unwrap()
            )
        })
        .collect();
    found.sort();
    found
}

#[tokio::test]
async fn a_patch_entry_applies_in_the_transaction_and_its_placeholders_resolve() {
    let app = TestApp::spawn().await;
    let (id, _) = app.create(&patient("Patched")).await;
    let gp = "urn:uuid:0c3e9a8e-55b4-4c1e-9d55-7b1f2f0e4a11";
    let tx = bundle(
        "transaction",
        vec![
            patch_entry(
                &format!("Patient/{id}"),
                json!([
                    {"op": "add", "path": "/active", "value": true},
                    {"op": "add", "path": "/generalPractitioner", "value": [{"reference": gp}]},
                ]),
                Some("W/\"1\""),
            ),
            entry(
                "POST",
                "Practitioner",
                Some(gp),
                Some(json!({"resourceType": "Practitioner", "name": [{"family": "Who"}]})),
            ),
            // A conditional PATCH resolves its single match inside the transaction.
            patch_entry(
                "Patient?identifier=urn:mrn|Patched",
                json!([{"op": "add", "path": "/gender", "value": "female"}]),
                None,
            ),
        ],
    );
    let body = post_ok(&app, &tx).await;
    assert_eq!(statuses(&body), ["200 OK", "201 Created", "200 OK"]);
    let practitioner = body["entry"][1]["resource"]["id"].as_str().unwrap();
    assert_eq!(
        body["entry"][0]["response"]["location"],
        format!("Patient/{id}/_history/2")
    );
    assert_eq!(body["entry"][2]["response"]["etag"], "W/\"3\"");
    let stored: Value = app
        .get(&format!("Patient/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stored["active"], true);
    assert_eq!(
        stored["gender"], "female",
        "the PATCHes ran in Bundle order"
    );
    assert_eq!(
        stored["generalPractitioner"][0]["reference"],
        format!("Practitioner/{practitioner}"),
        "the urn:uuid added by the patch points at the created Practitioner"
    );
}

#[tokio::test]
async fn a_patch_with_a_stale_if_match_rolls_back_the_whole_transaction_with_412() {
    let app = TestApp::spawn().await;
    let (id, _) = app.create(&patient("Stale")).await;
    let tx = |if_match: &str| {
        bundle(
            "transaction",
            vec![
                entry("POST", "Patient", Some(PATIENT_URN), Some(patient("New"))),
                entry("POST", "Observation", None, Some(observation(PATIENT_URN))),
                patch_entry(
                    &format!("Patient/{id}"),
                    json!([{"op": "add", "path": "/active", "value": false}]),
                    Some(if_match),
                ),
            ],
        )
    };
    let outcome = expect_outcome(app.post_json("", &tx("W/\"7\"")).await, 412).await;
    let issue = &outcome["issue"][0];
    assert_eq!(issue["expression"][0], "Bundle.entry[2]", "{outcome}");
    assert!(
        issue["diagnostics"]
            .as_str()
            .unwrap()
            .contains(&format!("entry 2 (PATCH Patient/{id})")),
        "{issue}"
    );
    assert_eq!(versions(&app, "Patient").await, 1, "nothing was written");
    assert_eq!(versions(&app, "Observation").await, 0);

    // Positive control: the current version lets the same transaction through.
    let body = post_ok(&app, &tx("W/\"1\"")).await;
    assert_eq!(statuses(&body), ["201 Created", "201 Created", "200 OK"]);
    assert_eq!(versions(&app, "Patient").await, 3);
    assert_eq!(versions(&app, "Observation").await, 1);
}

#[tokio::test]
async fn a_failing_patch_in_a_batch_fails_only_its_entry() {
    let app = TestApp::spawn().await;
    let (id, _) = app.create(&patient("Batched")).await;
    let url = format!("Patient/{id}");
    let batch = bundle(
        "batch",
        vec![
            patch_entry(
                &url,
                json!([{"op": "test", "path": "/active", "value": true}]),
                None,
            ),
            patch_entry(
                &url,
                json!([{"op": "add", "path": "/gender", "value": "robot"}]),
                None,
            ),
            patch_entry(
                "Patient/nobody",
                json!([{"op": "add", "path": "/active", "value": true}]),
                None,
            ),
            patch_entry(
                &url,
                json!([{"op": "add", "path": "/active", "value": true}]),
                Some("W/\"9\""),
            ),
            patch_entry(
                &url,
                json!([{"op": "add", "path": "/active", "value": true}]),
                None,
            ),
            entry("POST", "Patient", None, Some(patient("Other"))),
        ],
    );
    let body = post_ok(&app, &batch).await;
    assert_eq!(
        statuses(&body),
        [
            "422 Unprocessable Entity",
            "422 Unprocessable Entity",
            "404 Not Found",
            "412 Precondition Failed",
            "200 OK",
            "201 Created"
        ]
    );
    for i in 0..4 {
        assert_eq!(
            body["entry"][i]["response"]["outcome"]["resourceType"], "OperationOutcome",
            "entry {i}"
        );
    }
    let stored: Value = app.get(&url).await.json().await.unwrap();
    assert_eq!(
        stored["meta"]["versionId"], "2",
        "only the good patch wrote"
    );
    assert_eq!(stored["active"], true);
    assert!(
        stored.get("gender").is_none(),
        "the invalid result was not stored"
    );
}

#[tokio::test]
async fn a_patch_entry_whose_body_is_not_a_binary_json_patch_is_400() {
    let app = TestApp::spawn().await;
    let (id, _) = app.create(&patient("Body")).await;
    let url = format!("Patient/{id}");
    let good = patch_entry(
        &url,
        json!([{"op": "add", "path": "/active", "value": true}]),
        None,
    );
    let with_resource = |resource: Value| {
        let mut e = good.clone();
        e["resource"] = resource;
        e
    };
    let cases = [
        (
            with_resource(json!({"resourceType": "Patient", "id": id, "active": true})),
            "Bundle.entry[1].resource",
        ),
        (
            with_resource(json!({"resourceType": "Parameters", "parameter": [
                {"name": "operation", "part": [{"name": "type", "valueCode": "add"}]}]})),
            "Bundle.entry[1].resource",
        ),
        (
            with_resource(
                json!({"resourceType": "Binary", "contentType": "text/plain",
                                 "data": base64(b"[]")}),
            ),
            "Bundle.entry[1].resource.contentType",
        ),
        (
            with_resource(json!({"resourceType": "Binary",
                                 "contentType": "application/json-patch+json",
                                 "data": "not base64!"})),
            "Bundle.entry[1].resource.data",
        ),
        (
            with_resource(json!({"resourceType": "Binary",
                                 "contentType": "application/json-patch+json",
                                 "data": base64(br#"{"op": "add"}"#)})),
            "Bundle.entry[1].resource.data",
        ),
    ];
    for (bad, expression) in cases {
        let tx = bundle(
            "transaction",
            vec![
                entry("POST", "Patient", None, Some(patient("Rolled"))),
                bad.clone(),
            ],
        );
        let outcome = expect_outcome(app.post_json("", &tx).await, 400).await;
        assert_eq!(
            outcome["issue"][0]["expression"][0], expression,
            "{outcome}"
        );
        let batch = bundle("batch", vec![bad, good.clone()]);
        let body = post_ok(&app, &batch).await;
        assert_eq!(statuses(&body)[0], "400 Bad Request", "{body}");
    }
    assert_eq!(
        versions(&app, "Patient").await,
        6,
        "1 create + 5 good batch patches"
    );
}

#[tokio::test]
async fn get_entries_read_and_search_and_see_the_transactions_own_writes() {
    let app = TestApp::spawn().await;
    let (old, _) = app.create(&patient("Seen")).await;
    let (gone, _) = app.create(&patient("SeenGone")).await;
    let tx = bundle(
        "transaction",
        vec![
            entry("GET", "Patient?family=Seen&_total=accurate", None, None),
            entry("POST", "Patient", Some(PATIENT_URN), Some(patient("Seen"))),
            entry("GET", &format!("Patient/{old}"), None, None),
            patch_entry(
                &format!("Patient/{old}"),
                json!([{"op": "add", "path": "/active", "value": true}]),
                None,
            ),
            entry("GET", &format!("Patient/{old}/_history/1"), None, None),
            entry("DELETE", &format!("Patient/{gone}"), None, None),
            entry("GET", "Patient?active=true", None, None),
            entry("GET", "Observation", None, None),
        ],
    );
    let body = post_ok(&app, &tx).await;
    assert_eq!(
        statuses(&body),
        [
            "200 OK",
            "201 Created",
            "200 OK",
            "200 OK",
            "200 OK",
            "204 No Content",
            "200 OK",
            "200 OK"
        ]
    );
    let created = body["entry"][1]["resource"]["id"].as_str().unwrap();
    let search = &body["entry"][0]["resource"];
    let mut expected = vec![format!("Patient/{old}"), format!("Patient/{created}")];
    expected.sort();
    assert_eq!(
        matches(search),
        expected,
        "the search saw the POST and the DELETE of the same transaction"
    );
    assert_eq!(search["total"], 2);
    assert_eq!(
        body["entry"][2]["resource"]["meta"]["versionId"], "2",
        "the read ran after the PATCH"
    );
    assert_eq!(body["entry"][4]["resource"]["meta"]["versionId"], "1");
    assert_eq!(
        matches(&body["entry"][6]["resource"]),
        [format!("Patient/{old}")]
    );
    assert_eq!(matches(&body["entry"][7]["resource"]), Vec::<String>::new());

    // The same GETs in a batch, with Prefer: return=minimal, which concerns writes only.
    let batch = bundle(
        "batch",
        vec![
            entry("GET", "Patient?family=Seen&_count=1", None, None),
            entry("GET", &format!("Patient/{old}"), None, None),
            entry("GET", &format!("Patient/{gone}"), None, None),
        ],
    );
    let response = app
        .request(Method::POST, "")
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=minimal")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(statuses(&body), ["200 OK", "200 OK", "410 Gone"]);
    let page = &body["entry"][0]["resource"];
    assert_eq!(matches(page).len(), 1, "_count applies: {page}");
    assert!(
        page["link"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["relation"] == "next"),
        "a second page is linked: {page}"
    );
    assert_eq!(body["entry"][1]["resource"]["id"], old.as_str());
}

#[tokio::test]
async fn a_bad_search_entry_fails_the_transaction_naming_it_and_only_its_entry_in_a_batch() {
    let app = TestApp::spawn().await;
    let entries = || {
        vec![
            entry("POST", "Patient", None, Some(patient("Before"))),
            entry("GET", "Patient?birthdate=notadate", None, None),
        ]
    };
    let outcome = expect_outcome(
        app.post_json("", &bundle("transaction", entries())).await,
        400,
    )
    .await;
    let issue = &outcome["issue"][0];
    assert_eq!(
        issue["expression"][0], "Bundle.entry[1].request.url",
        "{outcome}"
    );
    assert!(
        issue["diagnostics"]
            .as_str()
            .unwrap()
            .contains("entry 1 (GET Patient?birthdate=notadate)"),
        "{issue}"
    );
    assert_eq!(versions(&app, "Patient").await, 0);

    let body = post_ok(&app, &bundle("batch", entries())).await;
    assert_eq!(statuses(&body), ["201 Created", "400 Bad Request"]);
    let outcome = &body["entry"][1]["response"]["outcome"];
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(
        outcome["issue"][0]["expression"][0],
        "Bundle.entry[1].request.url"
    );
    assert_eq!(versions(&app, "Patient").await, 1);

    // Positive control: a well-formed date is searched.
    let good = bundle(
        "batch",
        vec![entry("GET", "Patient?birthdate=1970", None, None)],
    );
    assert_eq!(statuses(&post_ok(&app, &good).await), ["200 OK"]);
}
