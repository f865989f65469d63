//! Delivery guards of Subscription notifications (no SSRF): the endpoint allow-list is checked
//! again before every delivery, and redirects are never followed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use careplane_fhir::subscription::{AllowList, DELIVER_KIND};
use careplane_fhir::{Definitions, ResourceType};
use careplane_store::TenantId;
use careplane_worker::subscription::{DeliverHandler, MatchHandler};
use careplane_worker::{Runner, RunnerSettings};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// A listener that counts connections and answers each with `response`.
async fn listener(response: String) -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = socket.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let _ = stream.write_all(response.as_bytes()).await;
        }
    });
    (addr, connections)
}

/// Stores a live Subscription to `endpoint` (straight into the store: as if it had been allowed
/// when written), then a matching Observation, and runs the worker until the delivery ended.
/// Returns the delivery's state and last error, and the Subscription's status afterwards.
async fn deliver(endpoint: &str, allow: &str) -> (String, String, serde_json::Value) {
    let (store, dir) = careplane_testkit::sqlite_store().await;
    let defs = Definitions::r4().unwrap();
    let tenant = TenantId::default_tenant();
    let rt = |name| ResourceType::parse(defs, name).unwrap();
    let mut tx = store.begin().await.unwrap();
    let subscription = json!({
        "resourceType": "Subscription", "status": "active", "reason": "r",
        "criteria": "Observation?status=final",
        "channel": {"type": "rest-hook", "endpoint": endpoint},
    });
    tx.create(&tenant, &rt("Subscription"), "s1", subscription)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    let observation =
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}});
    tx.create(&tenant, &rt("Observation"), "o1", observation)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let settings = RunnerSettings {
        poll_interval: Duration::from_millis(20),
        ..RunnerSettings::default()
    };
    let handler = DeliverHandler::new(
        defs,
        AllowList::parse(allow).unwrap(),
        Duration::from_secs(2),
    )
    .unwrap();
    let stop = CancellationToken::new();
    let runner = tokio::spawn(
        Runner::new(store.clone(), settings)
            .register(MatchHandler {
                defs,
                delivery_attempts: 1,
            })
            .register(handler)
            .run(stop.clone()),
    );
    let url = format!("sqlite://{}", dir.path().join("careplane.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let mut outcome = None;
    for _ in 0..400 {
        let row: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT state, last_error FROM jobs WHERE kind = ? AND state IN ('succeeded', 'dead')",
        )
        .bind(DELIVER_KIND)
        .fetch_optional(&pool)
        .await
        .unwrap();
        if let Some((state, error)) = row {
            outcome = Some((state, error.unwrap_or_default()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.cancel();
    runner.await.unwrap();
    pool.close().await;
    let id = careplane_fhir::Id::parse("s1").unwrap();
    let after = store
        .read(&tenant, &rt("Subscription"), &id)
        .await
        .unwrap()
        .json()
        .unwrap();
    store.close().await;
    let (state, error) = outcome.expect("the delivery never finished");
    (state, error, after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_no_longer_allowed_is_never_contacted() {
    let (addr, connections) = listener("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".into()).await;
    let endpoint = format!("http://{addr}/hooks");
    let (state, error, subscription) = deliver(&endpoint, "https://hooks.example.org/").await;
    assert_eq!(state, "dead");
    assert!(
        error.contains("CAREPLANE_SUBSCRIPTION_ALLOWED_ENDPOINTS"),
        "{error}"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 0);
    assert_eq!(
        subscription["status"], "active",
        "a refusal is not a failing endpoint"
    );

    // The same endpoint, allowed: delivered.
    let (state, error, subscription) = deliver(&endpoint, &format!("http://{addr}/hooks")).await;
    assert_eq!(state, "succeeded", "{error}");
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    assert_eq!(subscription["status"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() {
    let (elsewhere, stolen) = listener("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".into()).await;
    let redirect = format!(
        "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://{elsewhere}/stolen\r\ncontent-length: 0\r\n\r\n"
    );
    let (addr, connections) = listener(redirect).await;
    let (state, error, subscription) = deliver(
        &format!("http://{addr}/hooks"),
        &format!("http://{addr}/hooks"),
    )
    .await;
    assert_eq!(
        state, "dead",
        "one attempt allowed, and a redirect is a failure"
    );
    assert!(error.contains("307"), "{error}");
    // The last attempt failed: the Subscription says so and stops listening (R4 status error).
    assert_eq!(subscription["status"], "error", "{subscription}");
    assert!(
        subscription["error"].as_str().unwrap().contains("307"),
        "{subscription}"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    assert_eq!(
        stolen.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
}
