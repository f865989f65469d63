//! Format negotiation: JSON only; XML asked for by `Accept` or `_format` is 406; `_pretty`.

use careplane_testkit::{expect_outcome, TestApp};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn xml_is_refused_with_406() {
    let app = TestApp::spawn().await;
    let (id, _) = app.create(&json!({"resourceType": "Patient"})).await;
    let path = format!("Patient/{id}");
    let accept = |value: &'static str| {
        app.request(Method::GET, &path)
            .header("accept", value)
            .send()
    };
    let outcome = expect_outcome(accept("application/fhir+xml").await.unwrap(), 406).await;
    assert!(outcome["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("XML"));
    expect_outcome(accept("application/xml;q=0.9").await.unwrap(), 406).await;
    expect_outcome(app.get(&format!("{path}?_format=xml")).await, 406).await;
    expect_outcome(
        app.get(&format!("{path}?_format=application/fhir%2Bxml"))
            .await,
        406,
    )
    .await;
    expect_outcome(app.get("metadata?_format=xml").await, 406).await;
}

#[tokio::test]
async fn json_variants_and_wildcards_are_served() {
    let app = TestApp::spawn().await;
    let (id, _) = app.create(&json!({"resourceType": "Patient"})).await;
    let path = format!("Patient/{id}");
    for accept in [
        "application/fhir+json",
        "application/json",
        "*/*",
        "text/html, application/fhir+json;q=0.9",
        "application/fhir+json; fhirVersion=4.0",
    ] {
        let response = app
            .request(Method::GET, &path)
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "Accept: {accept}");
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/fhir+json"));
    }
    for format in ["json", "application/json", "application/fhir%2Bjson"] {
        assert_eq!(
            app.get(&format!("{path}?_format={format}")).await.status(),
            200,
            "_format={format}"
        );
    }
}

#[tokio::test]
async fn pretty_printing_is_on_request() {
    let app = TestApp::spawn().await;
    let (id, _) = app
        .create(&json!({"resourceType": "Patient", "active": true}))
        .await;
    let compact = app
        .get(&format!("Patient/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(!compact.contains('\n'));
    let pretty = app
        .get(&format!("Patient/{id}?_pretty=true"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        pretty.contains("\n  \"resourceType\": \"Patient\""),
        "{pretty}"
    );
    expect_outcome(app.get(&format!("Patient/{id}?_pretty=maybe")).await, 400).await;
}
