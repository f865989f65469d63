//! The CapabilityStatement is generated from what the server implements: every advertised
//! interaction is driven through the real router here, and unadvertised ones are refused.

use careplane_testkit::TestApp;
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test]
async fn metadata_lists_every_r4_resource_type_with_json_only() {
    let app = TestApp::spawn().await;
    let cs: Value = app.get("metadata").await.json().await.unwrap();
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    assert_eq!(
        cs["format"],
        json!(["application/fhir+json", "application/json"])
    );
    let resources = cs["rest"][0]["resource"].as_array().unwrap();
    assert_eq!(resources.len(), 147);
    assert!(cs["rest"][0]["documentation"]
        .as_str()
        .unwrap()
        .contains("XML"));
    let statement = app.state.defs.resource_types().len();
    assert_eq!(resources.len(), statement);
}

#[tokio::test]
async fn every_advertised_interaction_works_and_nothing_else_is_claimed() {
    let app = TestApp::spawn().await;
    let cs: Value = app.get("metadata").await.json().await.unwrap();
    for resource in cs["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| ["Patient", "Appointment", "Basic"].contains(&r["type"].as_str().unwrap()))
    {
        let rt = resource["type"].as_str().unwrap();
        let codes: Vec<&str> = resource["interaction"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["code"].as_str().unwrap())
            .collect();
        let body = match rt {
            "Appointment" => {
                json!({"resourceType": rt, "status": "proposed", "participant": [{"status": "needs-action", "actor": {"display": "Dr"}}]})
            }
            "Basic" => json!({"resourceType": rt, "code": {"text": "x"}}),
            _ => json!({"resourceType": rt}),
        };
        let (id, mut created) = app.create(&body).await;
        for code in &codes {
            let status = match *code {
                "create" => 201,
                "read" => app.get(&format!("{rt}/{id}")).await.status().as_u16(),
                "vread" => app
                    .get(&format!("{rt}/{id}/_history/1"))
                    .await
                    .status()
                    .as_u16(),
                "update" => {
                    created.as_object_mut().unwrap().remove("meta");
                    app.put_json(&format!("{rt}/{id}"), &created)
                        .await
                        .status()
                        .as_u16()
                }
                "patch" => app
                    .request(Method::PATCH, &format!("{rt}/{id}"))
                    .header("content-type", "application/json-patch+json")
                    .body("[]")
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16(),
                "history-instance" => app
                    .get(&format!("{rt}/{id}/_history"))
                    .await
                    .status()
                    .as_u16(),
                "history-type" => app.get(&format!("{rt}/_history")).await.status().as_u16(),
                "delete" => continue,
                "search-type" => app.get(rt).await.status().as_u16(),
                other => panic!("advertised interaction {other} has no test"),
            };
            let expected = if *code == "create" { 201 } else { 200 };
            assert_eq!(status, expected, "{rt} {code}");
        }
        assert!(codes.contains(&"delete"));
        let deleted = app
            .request(Method::DELETE, &format!("{rt}/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(deleted.status(), 204, "{rt} delete");
    }
    let system: Vec<&str> = cs["rest"][0]["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        system,
        ["transaction", "batch", "history-system", "search-system"]
    );
    assert_eq!(app.get("?_type=Patient").await.status(), 200);
    assert_eq!(app.get("_history").await.status(), 200);
    for kind in ["transaction", "batch"] {
        let bundle = json!({"resourceType": "Bundle", "type": kind, "entry": [
            {"request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient"}}]});
        let response = app.post_json("", &bundle).await;
        assert_eq!(response.status(), 200, "{kind}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["type"], format!("{kind}-response"));
    }
    for op in cs["rest"][0]["resource"][0]["operation"]
        .as_array()
        .unwrap()
    {
        assert_eq!(op["name"], "validate");
        let response = app
            .post_json("Patient/$validate", &json!({"resourceType": "Patient"}))
            .await;
        assert_eq!(response.status(), 200);
    }
    // Every advertised operation answers on its route (the async ones with 202).
    let ops_of = |rt: &str| -> Vec<String> {
        let resources = cs["rest"][0]["resource"].as_array().unwrap();
        let resource = resources.iter().find(|r| r["type"] == rt).unwrap();
        resource["operation"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ops_of("Patient"), ["validate", "export", "everything"]);
    assert_eq!(ops_of("Group"), ["validate", "export"]);
    assert_eq!(ops_of("Observation"), ["validate"]);
    assert_eq!(cs["rest"][0]["operation"][0]["name"], "export");
    let (patient, _) = app.create(&json!({"resourceType": "Patient"})).await;
    let (group, _) = app
        .create(&json!({"resourceType": "Group", "type": "person", "actual": true}))
        .await;
    assert_eq!(
        app.get(&format!("Patient/{patient}/$everything"))
            .await
            .status(),
        200
    );
    for path in [
        "$export",
        "Patient/$export",
        &format!("Group/{group}/$export"),
    ] {
        let response = app
            .request(reqwest::Method::GET, path)
            .header("prefer", "respond-async")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{path}");
    }
}

/// Behind a load balancer every replica must answer `/metadata` identically (regression: the
/// `date` was each process's start time, so the statement changed from request to request).
#[tokio::test]
async fn every_replica_serves_the_same_statement() {
    let app = TestApp::spawn().await;
    let first = app.get("metadata").await.text().await.unwrap();
    for _ in 0..2 * careplane_testkit::replicas() {
        let again = app.get("metadata").await.text().await.unwrap();
        assert!(
            again == first,
            "the CapabilityStatement differs between requests"
        );
    }
}
