//! Create, read, vread, update, delete (R4 http.html) with versioning headers and preconditions.

use careplane_testkit::{expect_outcome, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

fn patient(family: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family}], "gender": "female"})
}

#[tokio::test]
async fn create_answers_201_with_location_etag_and_last_modified() {
    let app = TestApp::spawn().await;
    let response = app.post_json("Patient", &patient("Chalmers")).await;
    assert_eq!(response.status(), 201);
    let headers = response.headers().clone();
    let body: Value = response.json().await.unwrap();
    let id = body["id"].as_str().unwrap();
    assert_eq!(headers["etag"], "W/\"1\"");
    assert!(headers.contains_key("last-modified"));
    let location = headers["location"].to_str().unwrap();
    assert_eq!(location, format!("{}/Patient/{id}/_history/1", app.base));
    assert_eq!(body["meta"]["versionId"], "1");
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/fhir+json"));
}

#[tokio::test]
async fn server_owns_id_version_and_last_updated() {
    let app = TestApp::spawn().await;
    let mut body = patient("X");
    body["id"] = json!("mine");
    body["meta"] = json!({"versionId": "7", "lastUpdated": "2001-01-01T00:00:00Z"});
    let (id, created) = app.create(&body).await;
    assert_ne!(id, "mine");
    assert_eq!(created["meta"]["versionId"], "1");
    assert_ne!(created["meta"]["lastUpdated"], "2001-01-01T00:00:00Z");
}

#[tokio::test]
async fn read_returns_what_create_stored() {
    let app = TestApp::spawn().await;
    let (id, created) = app.create(&patient("Read")).await;
    let response = app.get(&format!("Patient/{id}")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "W/\"1\"");
    assert_eq!(response.json::<Value>().await.unwrap(), created);
    expect_outcome(app.get("Patient/does-not-exist").await, 404).await;
}

#[tokio::test]
async fn update_makes_a_new_version_and_vread_returns_old_ones() {
    let app = TestApp::spawn().await;
    let (id, _) = app.create(&patient("One")).await;
    let mut next = patient("Two");
    next["id"] = json!(id);
    let response = app.put_json(&format!("Patient/{id}"), &next).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "W/\"2\"");
    let v1: Value = app
        .get(&format!("Patient/{id}/_history/1"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v1["name"][0]["family"], "One");
    let v2: Value = app
        .get(&format!("Patient/{id}/_history/2"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v2["name"][0]["family"], "Two");
    expect_outcome(app.get(&format!("Patient/{id}/_history/3")).await, 404).await;
    expect_outcome(app.get(&format!("Patient/{id}/_history/x")).await, 404).await;
}

#[tokio::test]
async fn a_stale_if_match_is_412_and_a_current_one_succeeds() {
    let app = TestApp::spawn().await;
    let (id, mut body) = app.create(&patient("A")).await;
    body["gender"] = json!("male");
    let put = |etag: &'static str, body: Value| {
        app.request(Method::PUT, &format!("Patient/{id}"))
            .header("content-type", "application/fhir+json")
            .header("if-match", etag)
            .body(body.to_string())
            .send()
    };
    assert_eq!(put("W/\"1\"", body.clone()).await.unwrap().status(), 200);
    let stale = put("W/\"1\"", body.clone()).await.unwrap();
    let outcome = expect_outcome(stale, 412).await;
    assert_eq!(outcome["issue"][0]["code"], "conflict");
    expect_outcome(put("W/\"banana\"", body.clone()).await.unwrap(), 400).await;
    assert_eq!(put("W/\"2\"", body).await.unwrap().status(), 200);
}

#[tokio::test]
async fn update_body_must_carry_the_url_id() {
    let app = TestApp::spawn().await;
    let (id, _) = app.create(&patient("A")).await;
    let mut other = patient("B");
    other["id"] = json!("someone-else");
    let outcome = expect_outcome(app.put_json(&format!("Patient/{id}"), &other).await, 400).await;
    assert_eq!(outcome["issue"][0]["expression"][0], "Patient.id");
    expect_outcome(
        app.put_json(&format!("Patient/{id}"), &patient("no id"))
            .await,
        400,
    )
    .await;
    let mut wrong_type = json!({"resourceType": "Observation"});
    wrong_type["id"] = json!(id);
    expect_outcome(
        app.put_json(&format!("Patient/{id}"), &wrong_type).await,
        400,
    )
    .await;
}

#[tokio::test]
async fn update_as_create_is_off_by_default_and_configurable() {
    let app = TestApp::spawn().await;
    let mut body = patient("Client");
    body["id"] = json!("client-1");
    expect_outcome(app.put_json("Patient/client-1", &body).await, 405).await;
    expect_outcome(app.get("Patient/client-1").await, 404).await;

    let app = TestApp::spawn_with(|s| s.allow_update_create = true).await;
    let response = app.put_json("Patient/client-1", &body).await;
    assert_eq!(response.status(), 201);
    assert!(response.headers()["location"]
        .to_str()
        .unwrap()
        .ends_with("/Patient/client-1/_history/1"));
    assert_eq!(app.get("Patient/client-1").await.status(), 200);
}

#[tokio::test]
async fn delete_is_soft_read_is_410_and_history_keeps_it() {
    let app = TestApp::spawn().await;
    let (id, _) = app.create(&patient("Bye")).await;
    let response = app
        .request(Method::DELETE, &format!("Patient/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    expect_outcome(app.get(&format!("Patient/{id}")).await, 410).await;
    let again = app
        .request(Method::DELETE, &format!("Patient/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 204, "deleting twice is idempotent");
    let history: Value = app
        .get(&format!("Patient/{id}/_history"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(history["entry"][0]["request"]["method"], "DELETE");
    assert!(history["entry"][0].get("resource").is_none());
    assert_eq!(history["entry"][1]["request"]["method"], "POST");
    expect_outcome(
        app.request(Method::DELETE, "Patient/never-was")
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
}

#[tokio::test]
async fn prefer_return_controls_the_body() {
    let app = TestApp::spawn().await;
    let send = |prefer: &'static str| {
        app.request(Method::POST, "Patient")
            .header("content-type", "application/fhir+json")
            .header("prefer", prefer)
            .body(patient("P").to_string())
            .send()
    };
    let minimal = send("return=minimal").await.unwrap();
    assert_eq!(minimal.status(), 201);
    assert!(minimal.headers().contains_key("location"));
    assert!(minimal.text().await.unwrap().is_empty());
    let outcome: Value = send("return=OperationOutcome")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    let full: Value = send("return=representation")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(full["resourceType"], "Patient");
    expect_outcome(send("return=everything").await.unwrap(), 400).await;
}

#[tokio::test]
async fn if_none_exist_on_identifier_returns_the_existing_resource() {
    let app = TestApp::spawn().await;
    let body =
        json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "77"}]});
    let create = |criteria: &'static str| {
        app.request(Method::POST, "Patient")
            .header("content-type", "application/fhir+json")
            .header("if-none-exist", criteria)
            .body(body.to_string())
            .send()
    };
    let first = create("identifier=urn:mrn|77").await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let second = create("identifier=urn:mrn|77").await.unwrap();
    assert_eq!(second.status(), 200, "a match means no new resource");
    assert_eq!(second.json::<Value>().await.unwrap()["id"], first["id"]);
    assert_eq!(
        create("identifier=urn:other|77").await.unwrap().status(),
        201,
        "positive control"
    );
    expect_outcome(create("identifier=77").await.unwrap(), 412).await;
    // Full search criteria, and an unknown parameter refused rather than ignored (ignoring it
    // would turn the condition into "any Patient").
    assert_eq!(
        create("identifier=77&gender=male").await.unwrap().status(),
        201,
        "no Patient with identifier 77 is male"
    );
    expect_outcome(create("nope=1").await.unwrap(), 400).await;
    expect_outcome(create("_count=1").await.unwrap(), 400).await;
}

#[tokio::test]
async fn if_none_match_on_read_answers_304_when_unchanged() {
    let app = TestApp::spawn().await;
    let (id, _) = app.create(&patient("Cache")).await;
    let read = |etag: &'static str| {
        app.request(Method::GET, &format!("Patient/{id}"))
            .header("if-none-match", etag)
            .send()
    };
    assert_eq!(read("W/\"1\"").await.unwrap().status(), 304);
    assert_eq!(read("W/\"2\"").await.unwrap().status(), 200);
}

#[tokio::test]
async fn application_json_bodies_are_accepted_like_fhir_json() {
    let app = TestApp::spawn().await;
    let response = app
        .request(Method::POST, "Patient")
        .header("content-type", "application/json; charset=utf-8")
        .body(patient("Plain").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn decimal_precision_survives_a_round_trip() {
    let app = TestApp::spawn().await;
    let body = r#"{"resourceType":"Observation","status":"final","code":{"text":"w"},"valueQuantity":{"value":70.50,"unit":"kg"}}"#;
    let response = app
        .request(Method::POST, "Observation")
        .header("content-type", "application/fhir+json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let text = app
        .get(&format!("Observation/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains("\"value\":70.50"), "{text}");
}
