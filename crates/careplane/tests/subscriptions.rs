//! Subscription rest-hook notifications end to end through the binary (embedded mode: API and
//! worker in one process on SQLite) against a receiver in this test: what may be stored, who
//! gets notified of what, payloads and headers, retries after a failing endpoint, transaction
//! Bundles, switching off.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode as AxumStatus, Uri};
use common::Server;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

#[derive(Debug, Clone)]
struct Notification {
    method: String,
    path: String,
    body: String,
    tag: Option<String>,
}

/// An HTTP endpoint that records what it receives and fails the first `failures` requests.
#[derive(Clone, Default)]
struct Receiver {
    seen: Arc<Mutex<Vec<Notification>>>,
    failures: Arc<Mutex<u32>>,
}

impl Receiver {
    async fn start() -> (Receiver, SocketAddr) {
        let receiver = Receiver::default();
        let app = axum::Router::new()
            .fallback(record)
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, addr)
    }

    fn seen(&self) -> Vec<Notification> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `n` notifications arrived (generous: the worker polls and backs off).
    async fn wait_for(&self, n: usize) -> Vec<Notification> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let seen = self.seen();
            if seen.len() >= n || Instant::now() > deadline {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn record(
    State(receiver): State<Receiver>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> AxumStatus {
    {
        let mut failures = receiver.failures.lock().unwrap();
        if *failures > 0 {
            *failures -= 1;
            return AxumStatus::INTERNAL_SERVER_ERROR;
        }
    }
    receiver.seen.lock().unwrap().push(Notification {
        method: method.to_string(),
        path: uri.path().to_string(),
        body: String::from_utf8_lossy(&body).into_owned(),
        tag: headers
            .get("x-clinic")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    });
    AxumStatus::OK
}

fn start(dir: &Path, allowed: &str) -> Server {
    let db = format!("sqlite://{}", dir.join("careplane.db").display());
    Server::start(
        dir,
        &[
            ("CAREPLANE_DATABASE_URL", db.as_str()),
            ("CAREPLANE_WORKER_POLL_INTERVAL", "50ms"),
            ("CAREPLANE_SUBSCRIPTION_ALLOWED_ENDPOINTS", allowed),
            ("CAREPLANE_SUBSCRIPTION_TIMEOUT", "2s"),
        ],
    )
}

fn subscription(criteria: &str, endpoint: &str) -> Value {
    json!({
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "care team alerts",
        "criteria": criteria,
        "channel": {"type": "rest-hook", "endpoint": endpoint},
    })
}

fn observation(code: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
    })
}

async fn post(client: &Client, base: &str, body: &Value) -> (StatusCode, Value) {
    let path = body["resourceType"].as_str().unwrap();
    let path = if path == "Bundle" { "" } else { path };
    let response = client
        .post(format!("{base}/{path}"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_hooks_notify_allow_listed_endpoints_of_matching_writes() {
    let (receiver, addr) = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let hooks = format!("http://{addr}/hooks/");
    let server = start(dir.path(), &hooks);
    let (client, base) = (Client::new(), format!("http://{}/fhir", server.api));

    // Refused: an endpoint off the allow-list (SSRF), criteria the server cannot evaluate, a
    // channel it cannot deliver.
    for (body, code, expression) in [
        (
            subscription("Observation?code=1234-5", "http://169.254.169.254/latest"),
            "security",
            "Subscription.channel.endpoint",
        ),
        (
            subscription("Observation?colour=red", &format!("{hooks}a")),
            "invalid",
            "Subscription.criteria",
        ),
        (
            json!({"resourceType": "Subscription", "status": "requested", "reason": "r",
                   "criteria": "Observation", "channel": {"type": "email", "endpoint": "mailto:x@y"}}),
            "not-supported",
            "Subscription.channel",
        ),
    ] {
        let (status, outcome) = post(&client, &base, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{outcome}");
        assert_eq!(outcome["issue"][0]["code"], code, "{outcome}");
        assert_eq!(
            outcome["issue"][0]["expression"][0], expression,
            "{outcome}"
        );
    }

    // Accepted and activated.
    let (status, plain) = post(
        &client,
        &base,
        &subscription(
            "Observation?code=http://loinc.org|1234-5",
            &format!("{hooks}plain"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{plain}");
    assert_eq!(plain["status"], "active");
    let mut with_payload = subscription(
        "Observation?code=http://loinc.org|9999-9",
        &format!("{hooks}full"),
    );
    with_payload["channel"]["payload"] = json!("application/fhir+json");
    with_payload["channel"]["header"] = json!(["X-Clinic: north"]);
    let (status, _) = post(&client, &base, &with_payload).await;
    assert_eq!(status, StatusCode::CREATED);

    // A match gets an empty POST; a non-matching write nothing.
    let (_, matching) = post(&client, &base, &observation("1234-5")).await;
    let (_, _other) = post(&client, &base, &observation("0000-0")).await;
    let seen = receiver.wait_for(1).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        (
            seen[0].method.as_str(),
            seen[0].path.as_str(),
            seen[0].body.as_str()
        ),
        ("POST", "/hooks/plain", "")
    );

    // With a payload: the resource is PUT under the endpoint, with the Subscription's headers.
    // The endpoint fails once first: the notification is retried, not lost.
    *receiver.failures.lock().unwrap() = 1;
    let (_, full) = post(&client, &base, &observation("9999-9")).await;
    let seen = receiver.wait_for(2).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    let id = full["id"].as_str().unwrap();
    assert_eq!(seen[1].method, "PUT");
    assert_eq!(seen[1].path, format!("/hooks/full/Observation/{id}"));
    assert_eq!(seen[1].tag.as_deref(), Some("north"));
    let delivered: Value = serde_json::from_str(&seen[1].body).unwrap();
    assert_eq!(delivered["id"], id);

    // A transaction Bundle's writes notify once each, after the commit.
    let bundle = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:8f1e3a52-35a6-4bd1-a5c4-2f0a8e7f21d1", "resource": observation("1234-5"),
             "request": {"method": "POST", "url": "Observation"}},
            {"resource": observation("0000-0"), "request": {"method": "POST", "url": "Observation"}},
        ]
    });
    let (status, response) = post(&client, &base, &bundle).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    let seen = receiver.wait_for(3).await;
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[2].path, "/hooks/plain");

    // Switched off: no more notifications.
    let plain_id = plain["id"].as_str().unwrap();
    let mut off = plain.clone();
    off["status"] = json!("off");
    let response = client
        .put(format!("{base}/Subscription/{plain_id}"))
        .json(&off)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    post(&client, &base, &observation("1234-5")).await;
    // A later match of the other Subscription proves the queue moved past the write above.
    post(&client, &base, &observation("9999-9")).await;
    let seen = receiver.wait_for(4).await;
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(
        seen[3].method, "PUT",
        "only the live Subscription was notified: {seen:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.seen().len(), 4, "{:?}", receiver.seen());
    assert!(matching["id"].is_string());
    server.terminate();
}
