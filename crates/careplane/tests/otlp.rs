//! Issue 6: "optional OpenTelemetry OTLP export; no PHI". The binary, pointed at a collector
//! stand-in in this test, POSTs its request spans to `/v1/traces` as OTLP/HTTP protobuf, flushes
//! them on SIGTERM, and sends none of the identifiers and search values that raw URLs carry.
//! (Protobuf keeps strings as raw bytes, so searching the request bodies for them is exact.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use common::Server;
use serde_json::Value;

#[derive(Debug, Clone)]
struct Export {
    method: Method,
    path: String,
    content_type: String,
    body: Vec<u8>,
}

/// An OTLP/HTTP collector stand-in: records every request and answers 200.
#[derive(Clone, Default)]
struct Collector {
    seen: Arc<Mutex<Vec<Export>>>,
}

impl Collector {
    async fn start() -> (Collector, SocketAddr) {
        let collector = Collector::default();
        let app = axum::Router::new()
            .fallback(record)
            .with_state(collector.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (collector, addr)
    }

    fn seen(&self) -> Vec<Export> {
        self.seen.lock().unwrap().clone()
    }
}

async fn record(
    State(collector): State<Collector>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    collector.seen.lock().unwrap().push(Export {
        method,
        path: uri.path().to_string(),
        content_type,
        body: body.to_vec(),
    });
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

#[test]
fn request_spans_are_exported_on_shutdown_without_ids_or_search_values() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (collector, addr) = rt.block_on(Collector::start());
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{addr}");
    let server = Server::start(
        dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            // No timed export during the test: whatever arrives was flushed by the shutdown.
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ],
    );
    let patient_id = rt.block_on(async {
        let client = reqwest::Client::new();
        let base = format!("http://{}/fhir", server.api);
        let created = client
            .post(format!("{base}/Patient"))
            .header("content-type", "application/fhir+json")
            .header("x-request-id", "otlp-request-1")
            .body(r#"{"resourceType": "Patient", "name": [{"family": "SECRETNAME"}]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
        let id = created.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let read = client
            .get(format!("{base}/Patient/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), 200);
        let search = client
            .get(format!("{base}/Patient?family=SECRETNAME"))
            .send()
            .await
            .unwrap();
        assert_eq!(search.status(), 200);
        let unmatched = client
            .get(format!("{base}/Patient/{id}/SECRETNAME/x"))
            .send()
            .await
            .unwrap();
        assert_eq!(unmatched.status(), 404);
        id
    });
    assert!(
        collector.seen().is_empty(),
        "batched, not sent per request: {:?}",
        collector.seen()
    );

    let status = server.terminate();
    assert!(status.success(), "{status:?}");

    let exports = collector.seen();
    assert!(!exports.is_empty(), "no spans flushed on SIGTERM");
    for export in &exports {
        assert_eq!(export.method, Method::POST);
        assert_eq!(export.path, "/v1/traces");
        assert_eq!(export.content_type, "application/x-protobuf");
    }
    let bodies: Vec<u8> = exports.iter().flat_map(|e| e.body.clone()).collect();
    // Positive control: the byte search finds what must be there.
    for expected in [
        "careplane",
        "service.version",
        "GET /fhir/{type}/{id}",
        "POST /fhir/{type}",
        "http.route",
        "http.response.status_code",
        "otlp-request-1",
    ] {
        assert!(contains(&bodies, expected), "{expected} not exported");
    }
    assert!(
        !contains(&bodies, "SECRETNAME"),
        "a search value was exported"
    );
    assert!(
        !contains(&bodies, &patient_id),
        "a resource id was exported"
    );
    assert!(!contains(&bodies, "family="), "a query string was exported");
}

#[test]
fn careplane_otlp_endpoint_wins_over_the_standard_variable() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (collector, addr) = rt.block_on(Collector::start());
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let ours = format!("http://{addr}/");
    let standard = format!("http://{closed}");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("CAREPLANE_OTLP_ENDPOINT", ours.as_str()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", standard.as_str()),
        ],
    );
    rt.block_on(async {
        let metadata = reqwest::get(format!("http://{}/fhir/metadata", server.api))
            .await
            .unwrap();
        assert_eq!(metadata.status(), 200);
    });
    assert!(server.terminate().success());
    let exports = collector.seen();
    assert!(
        exports
            .iter()
            .any(|e| e.path == "/v1/traces" && contains(&e.body, "GET /fhir/metadata")),
        "{exports:?}"
    );
}
