//! Metrics on the admin port (issue 6, architecture rule 14): requests labelled by matched route,
//! never by raw path; store gauges refreshed at scrape time behind a cache; a failing gauge
//! query never fails the scrape.

use std::time::{Duration, Instant};

use careplane_store::{NewJob, TenantId};
use serde_json::{json, Value};

use crate::spawn;

/// The sample lines of one metric family (`name{…} value` or `name value`).
fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .collect()
}

fn gauge(text: &str, name: &str) -> Option<f64> {
    samples(text, name)
        .first()
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
}

#[tokio::test]
async fn requests_are_counted_by_matched_route_and_never_by_raw_path() {
    let app = spawn::with_metrics().await;
    let created: Value = app
        .client
        .post(format!("{}/Patient", app.base))
        .header("content-type", "application/fhir+json")
        .body(r#"{"resourceType": "Patient"}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let read = app
        .client
        .get(format!("{}/Patient/{id}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let missing = app
        .client
        .get(format!("{}/no/such/route/{id}x", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let text = app.scrape().await;
    let requests = samples(&text, "http_requests_total");
    let read_line = requests
        .iter()
        .find(|l| l.contains(r#"route="/fhir/{type}/{id}""#) && l.contains(r#"method="GET""#))
        .unwrap_or_else(|| panic!("no GET by id in {requests:#?}"));
    assert!(read_line.contains(r#"status="200""#), "{read_line}");
    assert!(read_line.ends_with(" 1"), "{read_line}");
    assert!(
        requests
            .iter()
            .any(|l| l.contains(r#"route="/fhir/{type}""#) && l.contains(r#"status="201""#)),
        "{requests:#?}"
    );
    assert!(
        requests
            .iter()
            .any(|l| l.contains(r#"route="unmatched""#) && l.contains(r#"status="404""#)),
        "{requests:#?}"
    );
    assert!(
        !text.contains(id),
        "a resource id leaked into a label:\n{text}"
    );
    assert!(
        !text.contains(r#"route="/metrics""#),
        "admin scrapes are not API traffic"
    );
    assert!(
        samples(&text, "http_request_duration_seconds_bucket")
            .iter()
            .any(|l| l.contains(r#"route="/fhir/{type}/{id}""#) && l.contains(r#"le="0.5""#)),
        "the SLO alert needs the 0.5 s bucket:\n{text}"
    );
    for name in [
        "active_appointments_count",
        "queue_depth",
        "db_connection_pool_usage",
    ] {
        assert!(gauge(&text, name).is_some(), "{name} missing:\n{text}");
    }
    let usage = gauge(&text, "db_connection_pool_usage").unwrap();
    assert!((0.0..=1.0).contains(&usage), "{usage}");
}

#[tokio::test]
async fn queue_depth_counts_enqueued_jobs_once_the_gauge_cache_expires() {
    let app = spawn::with_metrics().await;
    let first = Instant::now();
    assert_eq!(gauge(&app.scrape().await, "queue_depth"), Some(0.0));
    for _ in 0..3 {
        app.state
            .store
            .enqueue(&NewJob::new(TenantId::default_tenant(), "test", json!({})))
            .await
            .unwrap();
    }
    let cached = app.scrape().await;
    // Only meaningful while the first refresh is younger than the cache period.
    if first.elapsed() < Duration::from_millis(900) {
        assert_eq!(
            gauge(&cached, "queue_depth"),
            Some(0.0),
            "a scrape within a second of the last one does not query the store"
        );
    }
    tokio::time::sleep(careplane_api::metrics::GAUGE_REFRESH.saturating_sub(first.elapsed())).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(gauge(&app.scrape().await, "queue_depth"), Some(3.0));
}

#[tokio::test]
async fn a_failing_gauge_query_does_not_fail_the_scrape() {
    let options = careplane_api::ServeOptions {
        metrics: Some(spawn::renderer()),
        ..Default::default()
    };
    let app = spawn::spawn(spawn::unreachable_postgres().await, None, options).await;
    let started = Instant::now();
    let text = app.scrape().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the scrape waited {:?}",
        started.elapsed()
    );
    assert!(
        gauge(&text, "db_connection_pool_usage").is_some(),
        "in-process gauges are still exported:\n{text}"
    );
}
