//! PATCH with JSON Patch: applied to the current version, validated, versioned.

use careplane_testkit::{expect_outcome, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

async fn patch(app: &TestApp, path: &str, ops: Value, if_match: Option<&str>) -> reqwest::Response {
    let mut request = app
        .request(Method::PATCH, path)
        .header("content-type", "application/json-patch+json");
    if let Some(etag) = if_match {
        request = request.header("if-match", etag);
    }
    request.body(ops.to_string()).send().await.unwrap()
}

#[tokio::test]
async fn json_patch_creates_a_new_version() {
    let app = TestApp::spawn().await;
    let (id, _) = app
        .create(&json!({"resourceType": "Patient", "active": false}))
        .await;
    let path = format!("Patient/{id}");
    let response = patch(
        &app,
        &path,
        json!([{"op": "replace", "path": "/active", "value": true}]),
        None,
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "W/\"2\"");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["active"], true);
    assert_eq!(body["meta"]["versionId"], "2");
    let stale = patch(
        &app,
        &path,
        json!([{"op": "replace", "path": "/active", "value": false}]),
        Some("W/\"1\""),
    )
    .await;
    expect_outcome(stale, 412).await;
}

#[tokio::test]
async fn patches_that_fail_or_break_the_resource_are_rejected_without_writing() {
    let app = TestApp::spawn().await;
    let (id, _) = app
        .create(&json!({"resourceType": "Patient", "active": false}))
        .await;
    let path = format!("Patient/{id}");
    let failed_test = json!([{"op": "test", "path": "/active", "value": true}]);
    expect_outcome(patch(&app, &path, failed_test, None).await, 422).await;
    let invalid = json!([{"op": "add", "path": "/birthDate", "value": "not-a-date"}]);
    let outcome = expect_outcome(patch(&app, &path, invalid, None).await, 422).await;
    assert_eq!(outcome["issue"][0]["expression"][0], "Patient.birthDate");
    let retype = json!([{"op": "replace", "path": "/resourceType", "value": "Group"}]);
    expect_outcome(patch(&app, &path, retype, None).await, 422).await;
    expect_outcome(patch(&app, &path, json!({"op": "nope"}), None).await, 400).await;
    let wrong_type = app
        .request(Method::PATCH, &path)
        .header("content-type", "application/fhir+json")
        .body("[]")
        .send()
        .await
        .unwrap();
    expect_outcome(wrong_type, 415).await;
    let current: Value = app.get(&path).await.json().await.unwrap();
    assert_eq!(current["meta"]["versionId"], "1", "nothing was written");
    expect_outcome(patch(&app, "Patient/missing", json!([]), None).await, 404).await;
}
