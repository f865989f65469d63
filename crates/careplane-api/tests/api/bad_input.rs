//! Bad input always gets a 4xx OperationOutcome quickly: never a 5xx, a hang, a partial write or
//! one of axum's plain-text rejections.

use std::time::{Duration, Instant};

use careplane_testkit::{expect_outcome, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

async fn post_raw(
    app: &TestApp,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    app.request(Method::POST, path)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn assert_nothing_stored(app: &TestApp) {
    let history: Value = app.get("_history").await.json().await.unwrap();
    assert_eq!(
        history["entry"].as_array().unwrap().len(),
        0,
        "a rejected request wrote something"
    );
}

#[tokio::test]
async fn malformed_json_is_400_with_its_position() {
    let app = TestApp::spawn().await;
    let outcome = expect_outcome(
        post_raw(
            &app,
            "Patient",
            "application/fhir+json",
            "{\"resourceType\": \"Patient\",",
        )
        .await,
        400,
    )
    .await;
    assert!(
        outcome["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("line 1"),
        "{outcome}"
    );
    expect_outcome(
        post_raw(&app, "Patient", "application/fhir+json", "").await,
        400,
    )
    .await;
    expect_outcome(
        post_raw(&app, "Patient", "application/fhir+json", "[1,2]").await,
        400,
    )
    .await;
    expect_outcome(
        post_raw(&app, "Patient", "application/fhir+json", "{\"a\":1,}").await,
        400,
    )
    .await;
    expect_outcome(
        post_raw(
            &app,
            "Patient",
            "application/fhir+json",
            vec![0xff, 0xfe, 0x00],
        )
        .await,
        400,
    )
    .await;
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn wrong_or_missing_content_type_is_415() {
    let app = TestApp::spawn().await;
    let body = json!({"resourceType": "Patient"}).to_string();
    expect_outcome(
        post_raw(&app, "Patient", "text/plain", body.clone()).await,
        415,
    )
    .await;
    let xml = expect_outcome(
        post_raw(&app, "Patient", "application/fhir+xml", "<Patient/>").await,
        415,
    )
    .await;
    assert!(xml["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("XML"));
    expect_outcome(
        post_raw(
            &app,
            "Patient",
            "application/fhir+json; charset=latin1",
            body.clone(),
        )
        .await,
        415,
    )
    .await;
    let none = app
        .request(Method::POST, "Patient")
        .body(body)
        .send()
        .await
        .unwrap();
    expect_outcome(none, 415).await;
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn unknown_types_routes_and_methods_are_outcomes() {
    let app = TestApp::spawn().await;
    expect_outcome(app.get("Patients/1").await, 404).await;
    expect_outcome(
        app.post_json("Patients", &json!({"resourceType": "Patients"}))
            .await,
        404,
    )
    .await;
    expect_outcome(app.get("Patient/1/_history/1/extra").await, 404).await;
    let outside = app
        .client
        .get(format!("{}/not-fhir", app.base.trim_end_matches("/fhir")))
        .send()
        .await
        .unwrap();
    expect_outcome(outside, 404).await;
    expect_outcome(
        app.request(Method::DELETE, "metadata")
            .send()
            .await
            .unwrap(),
        405,
    )
    .await;
    expect_outcome(
        app.request(Method::GET, "Patient/$validate")
            .send()
            .await
            .unwrap(),
        405,
    )
    .await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_without_reading_them_all() {
    let app = TestApp::spawn_with(|s| s.max_body_bytes = 64 * 1024).await;
    let big = format!(
        "{{\"resourceType\":\"Patient\",\"text\":{{\"status\":\"generated\",\"div\":\"{}\"}}}}",
        "x".repeat(100_000)
    );
    expect_outcome(
        post_raw(&app, "Patient", "application/fhir+json", big.clone()).await,
        413,
    )
    .await;
    // Without Content-Length (chunked), the limit is enforced while reading.
    let (status, text) = post_chunked(&app, "Patient", big.as_bytes()).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("OperationOutcome"), "{text}");
    assert_nothing_stored(&app).await;
}

/// Sends a chunked request over a raw socket (no Content-Length); returns status and body.
async fn post_chunked(app: &TestApp, path: &str, body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = reqwest::Url::parse(&app.url(path)).unwrap();
    let mut stream = tokio::net::TcpStream::connect((url.host_str().unwrap(), url.port().unwrap()))
        .await
        .unwrap();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        url.path()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(8192) {
        // The server may answer and close before the whole body is sent.
        if stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .is_err()
            || stream.write_all(chunk).await.is_err()
            || stream.write_all(b"\r\n").await.is_err()
        {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn nesting_bombs_and_huge_arrays_are_rejected_quickly() {
    let app = TestApp::spawn().await;
    let bomb = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let started = Instant::now();
    let outcome = expect_outcome(
        post_raw(&app, "Patient", "application/fhir+json", bomb).await,
        400,
    )
    .await;
    assert!(
        outcome["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("nested"),
        "{outcome}"
    );
    let deep_object = format!(
        "{{\"resourceType\":\"Patient\",\"extension\":[{}{}]}}",
        "{\"url\":\"x\",\"extension\":[".repeat(200),
        "]}".repeat(200)
    );
    expect_outcome(
        post_raw(&app, "Patient", "application/fhir+json", deep_object).await,
        400,
    )
    .await;
    let names: Vec<Value> = (0..20_000)
        .map(|i| json!({"family": format!("F{i}"), "given": [1]}))
        .collect();
    let huge = json!({"resourceType": "Patient", "name": names});
    let outcome = expect_outcome(app.post_json("Patient", &huge).await, 400).await;
    assert!(
        outcome["issue"].as_array().unwrap().len() >= 20_000,
        "every bad element is reported"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn ids_over_64_chars_or_with_illegal_characters_are_400() {
    let app = TestApp::spawn().await;
    let long = "a".repeat(65);
    expect_outcome(app.get(&format!("Patient/{long}")).await, 400).await;
    expect_outcome(app.get("Patient/a_b").await, 400).await;
    expect_outcome(app.get("Patient/a%20b").await, 400).await;
    expect_outcome(app.get("Patient/%C3%A9").await, 400).await;
    let mut body = json!({"resourceType": "Patient"});
    body["id"] = json!(long);
    expect_outcome(app.put_json(&format!("Patient/{long}"), &body).await, 400).await;
    assert_eq!(
        app.get(&format!("Patient/{}", "a".repeat(64)))
            .await
            .status(),
        404,
        "64 is fine"
    );
}

#[tokio::test]
async fn validation_errors_name_every_element_path() {
    let app = TestApp::spawn().await;
    let body = json!({"resourceType": "Patient", "birthDate": "1990-02-30x", "gender": "F", "foo": 1, "active": "yes"});
    let outcome = expect_outcome(app.post_json("Patient", &body).await, 400).await;
    let paths = careplane_testkit::issue_paths(&outcome);
    for p in [
        "Patient.birthDate",
        "Patient.gender",
        "Patient.foo",
        "Patient.active",
    ] {
        assert!(paths.iter().any(|x| x == p), "{p} not in {paths:?}");
    }
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn body_type_must_match_the_url_type() {
    let app = TestApp::spawn().await;
    expect_outcome(
        app.post_json("Patient", &json!({"resourceType": "Observation"}))
            .await,
        400,
    )
    .await;
    expect_outcome(app.post_json("Patient", &json!({"name": []})).await, 400).await;
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn a_client_that_stops_sending_its_body_gets_an_outcome_not_a_hang() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn_with(|s| s.request_timeout = Duration::from_secs(1)).await;
    let url = reqwest::Url::parse(&app.url("Patient")).unwrap();
    let mut stream = tokio::net::TcpStream::connect((url.host_str().unwrap(), url.port().unwrap()))
        .await
        .unwrap();
    // Announce 100 bytes, send 10, then stall.
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\nContent-Length: 100\r\n\r\n{{\"resource",
        url.path()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = vec![0; 4096];
    let started = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut response))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&response[..n]);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        text.contains("OperationOutcome") && text.contains("timeout"),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_nothing_stored(&app).await;
}
