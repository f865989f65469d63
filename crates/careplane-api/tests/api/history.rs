//! `_history` at instance, type and system level: newest first, `_count`, `_since`, `_at`, and
//! keyset paging that stays stable while writes continue.

use careplane_testkit::{expect_outcome, TestApp};
use serde_json::{json, Value};

fn families(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["resource"]["name"][0]["family"]
                .as_str()
                .unwrap_or("-")
                .to_string()
        })
        .collect()
}

fn next_link(bundle: &Value) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == "next")
        .map(|l| l["url"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn system_history_pages_stay_stable_while_writes_continue() {
    let app = TestApp::spawn().await;
    for i in 0..5 {
        app.create(&json!({"resourceType": "Patient", "name": [{"family": format!("P{i}")}]}))
            .await;
    }
    let first: Value = app.get("_history?_count=2").await.json().await.unwrap();
    assert_eq!(first["type"], "history");
    assert_eq!(families(&first), ["P4", "P3"]);
    for i in 5..8 {
        app.create(&json!({"resourceType": "Patient", "name": [{"family": format!("P{i}")}]}))
            .await;
    }
    let next = next_link(&first).expect("a next link");
    let second: Value = app
        .client
        .get(next)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(families(&second), ["P2", "P1"]);
    let third: Value = app
        .client
        .get(next_link(&second).unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(families(&third), ["P0"]);
    assert!(next_link(&third).is_none());
    let self_link = first["link"][0]["url"].as_str().unwrap();
    assert_eq!(self_link, format!("{}/_history?_count=2", app.base));
}

#[tokio::test]
async fn type_history_only_shows_that_type_and_instance_history_that_resource() {
    let app = TestApp::spawn().await;
    let (pid, _) = app.create(&json!({"resourceType": "Patient"})).await;
    app.create(&json!({"resourceType": "Organization", "name": "Clinic"}))
        .await;
    let bundle: Value = app.get("Organization/_history").await.json().await.unwrap();
    assert_eq!(bundle["entry"].as_array().unwrap().len(), 1);
    assert_eq!(
        bundle["entry"][0]["resource"]["resourceType"],
        "Organization"
    );
    let bundle: Value = app
        .get(&format!("Patient/{pid}/_history"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(bundle["entry"].as_array().unwrap().len(), 1);
    assert_eq!(bundle["entry"][0]["response"]["etag"], "W/\"1\"");
    expect_outcome(app.get("Patient/unknown/_history").await, 404).await;
}

#[tokio::test]
async fn since_and_at_select_versions_by_time() {
    let app = TestApp::spawn().await;
    let (id, mut body) = app
        .create(&json!({"resourceType": "Patient", "name": [{"family": "V1"}]}))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let between = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    body["name"][0]["family"] = json!("V2");
    assert_eq!(
        app.put_json(&format!("Patient/{id}"), &body).await.status(),
        200
    );
    let q = |p: &str, t: &str| {
        format!(
            "Patient/{id}/_history?{p}={}",
            url::form_urlencoded::byte_serialize(t.as_bytes()).collect::<String>()
        )
    };
    let since: Value = app.get(&q("_since", &between)).await.json().await.unwrap();
    assert_eq!(families(&since), ["V2"]);
    let at: Value = app.get(&q("_at", &between)).await.json().await.unwrap();
    assert_eq!(families(&at), ["V1"]);
    let all: Value = app
        .get(&format!("Patient/{id}/_history"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        families(&all),
        ["V2", "V1"],
        "positive control: both versions exist"
    );
}

#[tokio::test]
async fn malformed_history_parameters_are_400() {
    let app = TestApp::spawn().await;
    expect_outcome(app.get("_history?_since=yesterday").await, 400).await;
    expect_outcome(app.get("_history?_count=-1").await, 400).await;
    expect_outcome(app.get("_history?_cursor=abc").await, 400).await;
    let empty: Value = app.get("_history?_count=0").await.json().await.unwrap();
    assert_eq!(empty["entry"].as_array().unwrap().len(), 0);
}
