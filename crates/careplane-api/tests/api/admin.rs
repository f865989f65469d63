//! Probes on the admin listener (issues 3 and 6): startup passes once serving; liveness never
//! depends on the database; readiness fails while draining, while the database is unreachable
//! and while migrations are behind; the shutdown delay keeps serving after readiness fails.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use careplane_api::ServeOptions;
use careplane_testkit::TestApp;
use serde_json::Value;

use crate::spawn;

#[tokio::test]
async fn liveness_and_readiness_answer_on_the_admin_port() {
    let app = TestApp::spawn().await;
    let live = app
        .client
        .get(format!("{}/livez", app.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let ready = app
        .client
        .get(format!("{}/readyz", app.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.json::<Value>().await.unwrap()["database"],
        app.state.store.backend()
    );
    app.state.draining.store(true, Ordering::SeqCst);
    let draining = app
        .client
        .get(format!("{}/readyz", app.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(draining.status(), 503);
    let still_live = app
        .client
        .get(format!("{}/livez", app.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(still_live.status(), 200);
}

#[tokio::test]
async fn the_fhir_port_does_not_expose_probes() {
    let app = TestApp::spawn().await;
    let root = app.base.trim_end_matches("/fhir").to_string();
    assert_eq!(
        app.client
            .get(format!("{root}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn stopping_drains_and_finishes_cleanly() {
    let app = TestApp::spawn().await;
    let (id, _) = app
        .create(&serde_json::json!({"resourceType": "Patient"}))
        .await;
    let client = app.client.clone();
    let url = app.url(&format!("Patient/{id}"));
    app.stop().await;
    assert!(
        client.get(url).send().await.is_err(),
        "the listener is closed after shutdown"
    );
}

#[tokio::test]
async fn startup_passes_once_the_listeners_serve() {
    let app = TestApp::spawn().await;
    let started = app
        .client
        .get(format!("{}/startupz", app.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 200);
    // The same router before `serve` has marked the state as serving.
    app.state.serving.store(false, Ordering::SeqCst);
    let starting = app
        .client
        .get(format!("{}/startupz", app.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(starting.status(), 503);
}

#[tokio::test]
async fn readiness_fails_while_the_database_is_unreachable_and_liveness_does_not() {
    let app = spawn::spawn(
        spawn::unreachable_postgres().await,
        None,
        ServeOptions::default(),
    )
    .await;
    let started = Instant::now();
    let ready = app.get_admin("/readyz").await;
    assert_eq!(ready.status(), 503);
    assert_eq!(ready.json::<Value>().await.unwrap()["reason"], "database");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(app.get_admin("/livez").await.status(), 200);
    assert_eq!(app.get_admin("/startupz").await.status(), 200);
}

#[tokio::test]
async fn readiness_fails_until_the_migrations_are_applied() {
    let (store, dir) = spawn::sqlite(false).await;
    let app = spawn::spawn(store.clone(), Some(dir), ServeOptions::default()).await;
    let first = Instant::now();
    let behind = app.get_admin("/readyz").await;
    assert_eq!(behind.status(), 503);
    assert_eq!(
        behind.json::<Value>().await.unwrap()["reason"],
        "migrations"
    );
    store.migrate().await.unwrap();
    let again = app.get_admin("/readyz").await;
    if first.elapsed() < Duration::from_millis(900) {
        assert_eq!(again.status(), 503, "the check is cached for a second");
    }
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(first.elapsed())).await;
    let ready = app.get_admin("/readyz").await;
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    let expected = store.schema_version().await.unwrap().expected;
    assert_eq!(body["schema"], expected, "{body}");
}

#[tokio::test]
async fn the_shutdown_delay_fails_readiness_at_once_but_keeps_serving() {
    let (store, dir) = spawn::sqlite(true).await;
    let options = ServeOptions {
        shutdown_delay: Duration::from_millis(800),
        drain_timeout: Duration::from_secs(5),
        metrics: None,
    };
    let mut app = spawn::spawn(store, Some(dir), options).await;
    assert_eq!(app.get_admin("/readyz").await.status(), 200);
    let metadata = format!("{}/metadata", app.base);
    let signalled = Instant::now();
    app.signal_shutdown();
    // The flag is set by the server task; give it a moment to run.
    let mut ready = 200;
    while ready == 200 && signalled.elapsed() < Duration::from_millis(200) {
        ready = app.get_admin("/readyz").await.status().as_u16();
    }
    assert_eq!(ready, 503, "readiness fails within 200 ms of the signal");
    let during = app.client.get(&metadata).send().await.unwrap();
    assert_eq!(during.status(), 200, "still serving during the delay");
    assert!(signalled.elapsed() < Duration::from_millis(800));
    let client = app.client.clone();
    app.finished().await.unwrap();
    assert!(
        signalled.elapsed() >= Duration::from_millis(800),
        "the listener stayed open for the whole delay"
    );
    assert!(
        client.get(&metadata).send().await.is_err(),
        "closed after the drain"
    );
}
