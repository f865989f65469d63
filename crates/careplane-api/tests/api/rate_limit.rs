//! Per-client rate limits (issue 6; reliability-tests S8/L6): past its quota a client gets 429
//! with `Retry-After` and a `throttled` OperationOutcome, while other clients are still served;
//! behind a trusted proxy the client is the forwarded address, from anyone else forwarding
//! headers change nothing; probes on the admin port are never limited. In replica mode
//! (`CAREPLANE_TEST_REPLICAS`) the one limiter in `Settings` is shared by every replica, as the
//! Redis limiter is in production, and clients are told apart through a real proxy.

use std::sync::Arc;
use std::time::Duration;

use careplane_cache::{MemoryLimiter, Quota};
use careplane_testkit::{expect_outcome, TestApp};
use reqwest::Method;

/// 1 request per minute after a burst of 3: no refill during a test, however slow the machine.
fn strict() -> Arc<MemoryLimiter> {
    Arc::new(MemoryLimiter::new(
        Quota::new(1, Duration::from_secs(60), 3).unwrap(),
    ))
}

async fn status_as(app: &TestApp, forwarded_for: Option<&str>) -> reqwest::Response {
    let mut request = app.request(Method::GET, "metadata");
    if let Some(address) = forwarded_for {
        request = request.header("x-forwarded-for", address);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn a_client_over_its_quota_gets_429_while_another_client_is_served() {
    let app = TestApp::spawn_with(|s| {
        s.rate_limit = Some(strict());
        s.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    for _ in 0..3 {
        let admitted = status_as(&app, Some("198.51.100.7")).await;
        assert_eq!(admitted.status().as_u16(), 200, "within the burst");
    }
    let refused = status_as(&app, Some("198.51.100.7")).await;
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // The next token comes within a minute, and not at once.
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    let outcome = expect_outcome(refused, 429).await;
    assert_eq!(outcome["issue"][0]["code"], "throttled", "{outcome}");

    // Another client, and the proxy's own requests, have quotas of their own.
    assert_eq!(status_as(&app, Some("198.51.100.8")).await.status(), 200);
    assert_eq!(status_as(&app, None).await.status(), 200);
    // The nearest untrusted hop counts: a forged address in front changes nothing.
    assert_eq!(
        status_as(&app, Some("203.0.113.1, 198.51.100.7"))
            .await
            .status(),
        429
    );
}

#[tokio::test]
async fn forwarding_headers_of_an_untrusted_peer_do_not_buy_a_fresh_quota() {
    let app = TestApp::spawn_with(|s| s.rate_limit = Some(strict())).await;
    let statuses = [
        status_as(&app, Some("198.51.100.1"))
            .await
            .status()
            .as_u16(),
        status_as(&app, Some("198.51.100.2"))
            .await
            .status()
            .as_u16(),
        status_as(&app, Some("198.51.100.3"))
            .await
            .status()
            .as_u16(),
        status_as(&app, Some("198.51.100.4"))
            .await
            .status()
            .as_u16(),
    ];
    // One client (the loopback peer), whatever it claims to forward.
    assert_eq!(statuses, [200, 200, 200, 429]);
}

#[tokio::test]
async fn probes_and_metrics_on_the_admin_port_are_never_limited() {
    let app = TestApp::spawn_with(|s| s.rate_limit = Some(strict())).await;
    for _ in 0..4 {
        status_as(&app, None).await;
    }
    assert_eq!(
        status_as(&app, None).await.status(),
        429,
        "the API is limited"
    );
    for _ in 0..10 {
        for probe in ["livez", "readyz", "startupz"] {
            let response = app
                .client
                .get(format!("{}/{probe}", app.admin))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{probe}");
        }
    }
}

#[tokio::test]
async fn without_a_quota_nobody_is_throttled() {
    let app = TestApp::spawn().await;
    // More than any quota above would admit.
    for _ in 0..6 {
        assert_eq!(status_as(&app, None).await.status(), 200);
    }
}
