//! `$validate` answers what create would, without storing anything.

use careplane_testkit::{expect_outcome, TestApp};
use serde_json::{json, Value};

#[tokio::test]
async fn validate_reports_all_issues_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let bad = json!({"resourceType": "Patient", "birthDate": "x", "gender": "F"});
    let outcome = expect_outcome(app.post_json("Patient/$validate", &bad).await, 400).await;
    assert_eq!(
        careplane_testkit::issue_paths(&outcome),
        ["Patient.birthDate", "Patient.gender"]
    );
    let good = json!({"resourceType": "Patient", "birthDate": "1970-01-01"});
    let ok = expect_outcome(app.post_json("Patient/$validate", &good).await, 200).await;
    assert_eq!(ok["issue"][0]["severity"], "information");
    let history: Value = app.get("_history").await.json().await.unwrap();
    assert_eq!(history["entry"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn validate_accepts_the_parameters_form() {
    let app = TestApp::spawn().await;
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": {"resourceType": "Patient", "gender": "F"}}]});
    let outcome = expect_outcome(app.post_json("Patient/$validate", &params).await, 400).await;
    assert_eq!(careplane_testkit::issue_paths(&outcome), ["Patient.gender"]);
}

#[tokio::test]
async fn instance_validate_checks_the_id_like_an_update() {
    let app = TestApp::spawn().await;
    let body = json!({"resourceType": "Patient", "id": "other"});
    let outcome = expect_outcome(app.post_json("Patient/abc/$validate", &body).await, 400).await;
    assert_eq!(careplane_testkit::issue_paths(&outcome), ["Patient.id"]);
    let same = json!({"resourceType": "Patient", "id": "abc"});
    expect_outcome(app.post_json("Patient/abc/$validate", &same).await, 200).await;
}
