//! Links behind an ingress: forwarding headers are believed only from trusted proxies.

use careplane_testkit::TestApp;
use reqwest::Method;
use serde_json::json;

async fn location(app: &TestApp, headers: &[(&str, &str)]) -> String {
    let mut request = app
        .request(Method::POST, "Patient")
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Patient"}).to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    location.split("/Patient/").next().unwrap().to_string()
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
    let app = TestApp::spawn().await;
    let forged = [
        ("forwarded", "proto=https;host=evil.example"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-prefix", "/phish"),
    ];
    assert_eq!(location(&app, &forged).await, app.base);
}

#[tokio::test]
async fn a_trusted_proxy_sets_scheme_host_and_prefix() {
    let app =
        TestApp::spawn_with(|s| s.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()]).await;
    let rfc7239 = [(
        "forwarded",
        "for=203.0.113.9;proto=https;host=fhir.example.org, for=10.0.0.2",
    )];
    assert_eq!(
        location(&app, &rfc7239).await,
        "https://fhir.example.org/fhir"
    );
    let legacy = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "clinic.example.org, internal.lb"),
        ("x-forwarded-prefix", "/careplane/"),
    ];
    assert_eq!(
        location(&app, &legacy).await,
        "https://clinic.example.org/careplane/fhir"
    );
    // Nothing forwarded: the Host header, as without a proxy.
    assert_eq!(location(&app, &[]).await, app.base);
    // A forwarded host that is not a host name is refused, not echoed into links.
    let response = app
        .request(Method::GET, "Patient")
        .header("x-forwarded-host", "a\"b<c")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
}

#[tokio::test]
async fn the_public_base_url_wins_over_everything() {
    let app = TestApp::spawn_with(|s| {
        s.public_base_url = Some("https://api.example.net/r4/".into());
        s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let headers = [("x-forwarded-host", "other.example")];
    assert_eq!(location(&app, &headers).await, "https://api.example.net/r4");
}
