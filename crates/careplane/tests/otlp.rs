//! Issue 6: "optional OpenTelemetry OTLP export; no PHI". The binary, pointed at a collector
//! stand-in in this test, POSTs its request spans to `/v1/traces` as OTLP/HTTP protobuf, flushes
//! them on SIGTERM, and sends none of the identifiers and search values that raw URLs carry.
//! (Protobuf keeps strings as raw bytes, so searching the request bodies for them is exact.)
//! Trace context: a valid incoming `traceparent` makes the request span its child, a malformed
//! one starts a new trace, and a job enqueued by a request exports a `job` span in that trace
//! (the exports are decoded with the OTLP protobuf types for these).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use common::Server;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
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

/// A collector stand-in and `careplane` exporting to it, named in `endpoint_var`, with `extra`
/// settings; the directory the server runs in goes last, to be dropped after it.
fn start_exporting(
    endpoint_var: &str,
    extra: &[(&str, &str)],
) -> (
    tokio::runtime::Runtime,
    Collector,
    Server,
    tempfile::TempDir,
) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (collector, addr) = rt.block_on(Collector::start());
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{addr}");
    let mut env = vec![(endpoint_var, endpoint.as_str())];
    env.extend_from_slice(extra);
    let server = Server::start(dir.path(), &env);
    (rt, collector, server, dir)
}

/// Creates a Patient whose family name is SECRETNAME (asserting the 201), sent with
/// `X-Request-Id: request_id` if given.
async fn create_secret_patient(
    client: &reqwest::Client,
    base: &str,
    request_id: Option<&str>,
) -> reqwest::Response {
    let mut request = client
        .post(format!("{base}/Patient"))
        .header("content-type", "application/fhir+json");
    if let Some(request_id) = request_id {
        request = request.header("x-request-id", request_id);
    }
    let created = request
        .body(r#"{"resourceType": "Patient", "name": [{"family": "SECRETNAME"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    created
}

#[test]
fn request_spans_are_exported_on_shutdown_without_ids_or_search_values() {
    let (rt, collector, server, _dir) = start_exporting(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        // No timed export during the test: whatever arrives was flushed by the shutdown.
        &[("OTEL_BSP_SCHEDULE_DELAY", "600000")],
    );
    let patient_id = rt.block_on(async {
        let client = reqwest::Client::new();
        let base = format!("http://{}/fhir", server.api);
        let created = create_secret_patient(&client, &base, Some("otlp-request-1")).await;
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

/// Every span the collector received, decoded.
fn decoded_spans(exports: &[Export]) -> Vec<Span> {
    exports
        .iter()
        .flat_map(|e| {
            ExportTraceServiceRequest::decode(e.body.as_slice())
                .expect("an OTLP protobuf export")
                .resource_spans
        })
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans)
        .collect()
}

/// A span attribute as text (strings as they are, integers in decimal).
fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?;
    match value.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// The request span carrying `X-Request-Id: request_id`.
fn request_span<'a>(spans: &'a [Span], request_id: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| attribute(s, "request_id").as_deref() == Some(request_id))
        .unwrap_or_else(|| panic!("no span for request {request_id}: {spans:#?}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The caller's span in the valid `traceparent` below.
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_ID: &str = "b7ad6b7169203331";

#[test]
fn a_valid_traceparent_is_joined_and_a_malformed_one_starts_a_new_trace() {
    let (rt, collector, server, _dir) = start_exporting("CAREPLANE_OTLP_ENDPOINT", &[]);
    let valid = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    // Each malformed header still names TRACE_ID, so joining it anyway would show.
    let malformed = [
        ("tp-garbage", format!("garbage-{TRACE_ID}")),
        (
            "tp-zero-parent",
            format!("00-{TRACE_ID}-0000000000000000-01"),
        ),
        ("tp-no-flags", format!("00-{TRACE_ID}-{PARENT_ID}")),
        ("tp-version-ff", format!("ff-{TRACE_ID}-{PARENT_ID}-01")),
        (
            "tp-uppercase",
            format!("00-{}-{PARENT_ID}-01", TRACE_ID.to_uppercase()),
        ),
    ];
    rt.block_on(async {
        let client = reqwest::Client::new();
        let url = format!("http://{}/fhir/metadata", server.api);
        let joined = client
            .get(&url)
            .header("traceparent", &valid)
            .header("tracestate", "vendor=opaque")
            .header("x-request-id", "tp-valid")
            .send()
            .await
            .unwrap();
        assert_eq!(joined.status(), 200);
        for (request_id, traceparent) in &malformed {
            let response = client
                .get(&url)
                .header("traceparent", traceparent)
                .header("x-request-id", *request_id)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{traceparent}");
        }
    });
    assert!(server.terminate().success());

    let spans = decoded_spans(&collector.seen());
    let joined = request_span(&spans, "tp-valid");
    assert_eq!(joined.trace_id.len(), 16);
    assert_eq!(hex(&joined.trace_id), TRACE_ID, "{joined:#?}");
    assert_eq!(hex(&joined.parent_span_id), PARENT_ID, "{joined:#?}");
    assert_ne!(hex(&joined.span_id), PARENT_ID, "a span of its own");
    for (request_id, traceparent) in &malformed {
        let span = request_span(&spans, request_id);
        assert_eq!(span.trace_id.len(), 16, "{traceparent}");
        assert_ne!(hex(&span.trace_id), TRACE_ID, "{traceparent} was joined");
        assert!(span.parent_span_id.is_empty(), "{traceparent}: {span:#?}");
    }
}

#[test]
fn a_job_exports_its_own_span_as_a_child_of_the_request_that_enqueued_it() {
    // Embedded mode (SQLite): the worker runs in this process and exports its spans too.
    let (rt, collector, server, _dir) = start_exporting(
        "CAREPLANE_OTLP_ENDPOINT",
        &[("CAREPLANE_WORKER_POLL_INTERVAL", "50ms")],
    );
    let traceparent = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    rt.block_on(async {
        let client = reqwest::Client::new();
        let base = format!("http://{}/fhir", server.api);
        create_secret_patient(&client, &base, None).await;
        let kick_off = client
            .get(format!("{base}/$export?_type=Patient"))
            .header("prefer", "respond-async")
            .header("accept", "application/fhir+json")
            .header("traceparent", &traceparent)
            .header("x-request-id", "tp-export")
            .send()
            .await
            .unwrap();
        assert_eq!(kick_off.status(), 202);
        let status = kick_off.headers()["content-location"]
            .to_str()
            .unwrap()
            .to_string();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let polled = client.get(&status).send().await.unwrap();
            if polled.status() == 200 {
                break;
            }
            assert_eq!(polled.status(), 202, "export failed");
            assert!(
                std::time::Instant::now() < deadline,
                "export never finished"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    assert!(server.terminate().success());

    let exports = collector.seen();
    let spans = decoded_spans(&exports);
    let request = request_span(&spans, "tp-export");
    assert_eq!(hex(&request.trace_id), TRACE_ID);
    let job = spans
        .iter()
        .find(|s| attribute(s, "job.kind").as_deref() == Some("export"))
        .unwrap_or_else(|| panic!("no job span: {spans:#?}"));
    assert_eq!(job.name, "job export");
    assert_eq!(attribute(job, "job.attempt").as_deref(), Some("1"));
    assert_eq!(attribute(job, "job.outcome").as_deref(), Some("succeeded"));
    assert!(
        attribute(job, "job.id").is_some_and(|id| id.len() == 36),
        "{job:#?}"
    );
    assert_eq!(hex(&job.trace_id), TRACE_ID, "the request's trace");
    assert_eq!(
        hex(&job.parent_span_id),
        hex(&request.span_id),
        "child of the request"
    );
    // Only allow-listed fields: neither the payload (kick-off URL, query) nor resource data.
    let bodies: Vec<u8> = exports.iter().flat_map(|e| e.body.clone()).collect();
    for secret in ["SECRETNAME", "_type=Patient", "traceparent"] {
        assert!(!contains(&bodies, secret), "{secret} was exported");
    }
}
