//! Probes on the admin listener: liveness never depends on the database; readiness fails while
//! draining.

use std::sync::atomic::Ordering;

use careplane_testkit::TestApp;
use serde_json::Value;

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
    assert_eq!(ready.json::<Value>().await.unwrap()["database"], "sqlite");
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
