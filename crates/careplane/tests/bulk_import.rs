//! `POST /$import` end to end (embedded mode): NDJSON staged and loaded by the worker through
//! the Bundle code, bad lines reported by number without failing the rest, async status, and
//! clear 4xx for what cannot be accepted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::Server;
use reqwest::{Client, StatusCode};
use serde_json::Value;

fn start(dir: &std::path::Path) -> Server {
    let db = format!("sqlite://{}", dir.join("careplane.db").display());
    let files = dir.join("bulk");
    Server::start(
        dir,
        &[
            ("CAREPLANE_DATABASE_URL", db.as_str()),
            ("CAREPLANE_EXPORT_DIR", files.to_str().unwrap()),
            ("CAREPLANE_WORKER_POLL_INTERVAL", "50ms"),
            ("CAREPLANE_MAX_IMPORT_BYTES", "4096"),
        ],
    )
}

async fn post(
    client: &Client,
    base: &str,
    content_type: &str,
    prefer: bool,
    body: String,
) -> reqwest::Response {
    let mut request = client
        .post(format!("{base}/$import"))
        .header("content-type", content_type)
        .body(body);
    if prefer {
        request = request.header("prefer", "respond-async");
    }
    request.send().await.unwrap()
}

#[test]
fn ndjson_import_loads_good_lines_and_reports_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let base = format!("http://{}/fhir", server.api);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = Client::new();
        let ndjson = [
            r#"{"resourceType":"Patient","id":"imp-1","name":[{"family":"Pushed"}]}"#,
            r#"{"resourceType":"Patient","name":[{"family":"NoId"}]}"#,
            r#"{"resourceType":"Observation","id":"imp-o1","status":"final","code":{"text":"hr"},"subject":{"reference":"Patient/imp-1"}}"#,
            r#"{"resourceType":"Patient","id":"imp-2","birthDate":"1974-13-25"}"#,
            r#"this is not json"#,
            "",
            r#"{"resourceType":"Patient","id":"imp-3"}"#,
        ]
        .join("\n");

        // What cannot be accepted is refused up front, with no job.
        let no_prefer = post(&client, &base, "application/fhir+ndjson", false, ndjson.clone()).await;
        assert_eq!(no_prefer.status(), StatusCode::BAD_REQUEST);
        let json_body = post(&client, &base, "application/fhir+json", true, ndjson.clone()).await;
        assert_eq!(json_body.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let empty = post(&client, &base, "application/fhir+ndjson", true, String::new()).await;
        assert_eq!(empty.status(), StatusCode::BAD_REQUEST);
        let huge = post(&client, &base, "application/fhir+ndjson", true, "x".repeat(5000)).await;
        assert_eq!(huge.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let outcome: Value = huge.json().await.unwrap();
        assert_eq!(outcome["resourceType"], "OperationOutcome");
        let staged: Vec<_> = std::fs::read_dir(dir.path().join("bulk/_imports"))
            .map(|d| d.collect())
            .unwrap_or_default();
        assert!(staged.is_empty(), "refused uploads leave no file: {staged:?}");

        let accepted = post(&client, &base, "application/fhir+ndjson", true, ndjson).await;
        assert_eq!(accepted.status(), StatusCode::ACCEPTED);
        let status_url = accepted.headers()["content-location"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(status_url.contains("/$import-status/"));
        let started = Instant::now();
        let manifest: Value = loop {
            let response = client.get(&status_url).send().await.unwrap();
            match response.status() {
                StatusCode::ACCEPTED => {}
                StatusCode::OK => break response.json().await.unwrap(),
                other => panic!("{other}: {}", response.text().await.unwrap()),
            }
            assert!(started.elapsed() < Duration::from_secs(30), "import never finished");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let count = |t: &str| {
            manifest["output"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["type"] == t)
                .map(|o| o["count"].as_u64().unwrap())
                .unwrap_or(0)
        };
        assert_eq!(count("Patient"), 3, "{manifest}");
        assert_eq!(count("Observation"), 1, "{manifest}");
        assert_eq!(manifest["errorCount"], 2, "{manifest}");
        let mut lines: Vec<u64> = manifest["error"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["line"].as_u64().unwrap())
            .collect();
        lines.sort_unstable();
        assert_eq!(lines, [4, 5], "{manifest}");
        for id in ["Patient/imp-1", "Patient/imp-3", "Observation/imp-o1"] {
            let read = client.get(format!("{base}/{id}")).send().await.unwrap();
            assert_eq!(read.status(), StatusCode::OK, "{id}");
        }
        let invalid = client.get(format!("{base}/Patient/imp-2")).send().await.unwrap();
        assert_eq!(invalid.status(), StatusCode::NOT_FOUND, "the invalid line was not stored");
        let staged: Vec<_> = std::fs::read_dir(dir.path().join("bulk/_imports")).unwrap().collect();
        assert!(staged.is_empty(), "the upload is removed once loaded");

        let deleted = client.delete(&status_url).send().await.unwrap();
        assert_eq!(deleted.status(), StatusCode::ACCEPTED);
        let gone = client.get(&status_url).send().await.unwrap();
        assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    });
    assert!(server.terminate().success());
}
