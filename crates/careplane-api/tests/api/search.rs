//! Search over HTTP (issue 4): every parameter type with positive and negative controls,
//! modifiers, chains, _has, includes, sorting, paging, strict/lenient handling, compartments.

use careplane_testkit::{expect_outcome, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

async fn search(app: &TestApp, query: &str) -> Value {
    let response = app.get(query).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{query}: {body}");
    assert_eq!(body["type"], "searchset");
    body
}

/// Ids of the `match` entries, sorted.
fn ids(bundle: &Value) -> Vec<String> {
    let mut ids: Vec<String> = entries(bundle, "match")
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// Asserts the ids `query` matches.
async fn finds(app: &TestApp, query: &str, expected: &[&str]) {
    assert_eq!(ids(&search(app, query).await), expected, "{query}");
}

fn entries(bundle: &Value, mode: &str) -> Vec<Value> {
    bundle["entry"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter(|e| e["search"]["mode"] == mode)
                .map(|e| e["resource"].clone())
                .collect()
        })
        .unwrap_or_default()
}

fn link(bundle: &Value, relation: &str) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == relation)
        .map(|l| l["url"].as_str().unwrap().to_string())
}

async fn put(app: &TestApp, body: Value) {
    let path = format!(
        "{}/{}",
        body["resourceType"].as_str().unwrap(),
        body["id"].as_str().unwrap()
    );
    let response = app.put_json(&path, &body).await;
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.text().await.unwrap()
    );
}

/// A small clinic: two patients, observations, an encounter, a provenance.
async fn clinic() -> TestApp {
    let app = TestApp::spawn_with(|s| s.allow_update_create = true).await;
    put(
        &app,
        json!({"resourceType": "Organization", "id": "org1", "name": "Acme Clinic"}),
    )
    .await;
    put(
        &app,
        json!({
            "resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1980-05-17",
            "name": [{"family": "Müller", "given": ["Élodie"]}],
            "identifier": [{"system": "urn:mrn", "value": "111"}],
            "address": [{"city": "Boston", "state": "MA"}],
            "managingOrganization": {"reference": "Organization/org1"},
            "telecom": [{"system": "phone", "value": "555-0100"}]
        }),
    )
    .await;
    put(
        &app,
        json!({
            "resourceType": "Patient", "id": "p2", "gender": "male", "birthDate": "1975",
            "name": [{"family": "Smith", "given": ["John"]}],
            "identifier": [{"system": "urn:mrn", "value": "222"}],
            "address": [{"city": "Springfield"}]
        }),
    )
    .await;
    for (id, patient, code, value, date) in [
        ("o1", "p1", "29463-7", 72.5, "2015-03-01T10:00:00Z"),
        ("o2", "p1", "29463-7", 101.0, "2017-06-01T10:00:00+02:00"),
        ("o3", "p1", "8302-2", 165.0, "2016-01-01"),
        ("o4", "p2", "29463-7", 90.0, "2019-12-31T23:30:00-05:00"),
    ] {
        put(&app, json!({
            "resourceType": "Observation", "id": id, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}], "text": "Body measure"},
            "subject": {"reference": format!("Patient/{patient}")},
            "effectiveDateTime": date,
            "valueQuantity": {"value": value, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}
        })).await;
    }
    put(
        &app,
        json!({
            "resourceType": "Encounter", "id": "e1", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": "Patient/p1"},
            "period": {"start": "2019-01-10T09:00:00Z", "end": "2019-01-10T10:00:00Z"}
        }),
    )
    .await;
    put(
        &app,
        json!({
            "resourceType": "Provenance", "id": "prov1", "recorded": "2019-01-10T10:00:00Z",
            "target": [{"reference": "Patient/p1"}],
            "agent": [{"who": {"reference": "Organization/org1"}}]
        }),
    )
    .await;
    app
}

#[tokio::test]
async fn string_parameters_match_prefixes_without_case_or_accents() {
    let app = clinic().await;
    finds(&app, "Patient?name=muller", &["p1"]).await;
    finds(&app, "Patient?given=elo", &["p1"]).await;
    finds(&app, "Patient?name=SMI,mül", &["p1", "p2"]).await;
    assert!(
        ids(&search(&app, "Patient?name=ller").await).is_empty(),
        "prefix, not substring"
    );
    finds(&app, "Patient?name:contains=ller", &["p1"]).await;
    finds(&app, "Patient?family:exact=Müller", &["p1"]).await;
    finds(&app, "Patient?family:exact=muller", &[]).await;
    finds(&app, "Patient?address-city=bost", &["p1"]).await;
    app.stop().await;
}

#[tokio::test]
async fn token_parameters_with_systems_not_and_text() {
    let app = clinic().await;
    finds(&app, "Patient?gender=female", &["p1"]).await;
    finds(&app, "Patient?identifier=urn:mrn|222", &["p2"]).await;
    finds(&app, "Patient?identifier=urn:other|222", &[]).await;
    finds(&app, "Patient?identifier=urn:mrn|", &["p1", "p2"]).await;
    finds(&app, "Patient?identifier=111", &["p1"]).await;
    finds(&app, "Patient?gender:not=female", &["p2"]).await;
    finds(&app, "Patient?phone=555-0100", &["p1"]).await;
    finds(&app, "Observation?code=http://loinc.org|8302-2", &["o3"]).await;
    finds(&app, "Observation?code=8302-2", &["o3"]).await;
    assert!(
        ids(&search(&app, "Observation?code=|8302-2").await).is_empty(),
        "|code means no system"
    );
    assert_eq!(
        ids(&search(&app, "Observation?code:text=body").await).len(),
        4
    );
    finds(&app, "Patient?_id=p1,p2,nope", &["p1", "p2"]).await;
    app.stop().await;
}

#[tokio::test]
async fn date_parameters_honour_precision_zones_and_prefixes() {
    let app = clinic().await;
    finds(&app, "Patient?birthdate=1980", &["p1"]).await;
    finds(&app, "Patient?birthdate=1980-05-17", &["p1"]).await;
    finds(&app, "Patient?birthdate=1980-05-18", &[]).await;
    // p2 was born "1975": the whole year, which is neither within nor after 1975-06.
    finds(&app, "Patient?birthdate=1975-06", &[]).await;
    finds(&app, "Patient?birthdate=lt1979", &["p2"]).await;
    finds(&app, "Patient?birthdate=ge1979&birthdate=le1981", &["p1"]).await;
    finds(
        &app,
        "Observation?date=ge2015-01-01&date=lt2018-01-01&subject=Patient/p1",
        &["o1", "o2", "o3"],
    )
    .await;
    // 23:30 at -05:00 is already 2020 in UTC.
    finds(&app, "Observation?date=2020-01-01", &["o4"]).await;
    finds(&app, "Observation?date=2019-12-31", &[]).await;
    finds(&app, "Observation?date=sa2017", &["o4"]).await;
    finds(&app, "Observation?date=eb2016", &["o1"]).await;
    finds(&app, "Encounter?date=2019-01-10", &["e1"]).await;
    assert_eq!(
        ids(&search(&app, "Encounter?date=2019-01-10T09:30:00Z").await).len(),
        0,
        "a period is not within an instant"
    );
    finds(&app, "Encounter?date=le2019-01-10T09:30:00Z", &["e1"]).await;
    app.stop().await;
}

#[tokio::test]
async fn quantity_and_composite_parameters() {
    let app = clinic().await;
    finds(&app, "Observation?value-quantity=gt100", &["o2", "o3"]).await;
    finds(&app, "Observation?value-quantity=101", &["o2"]).await;
    finds(
        &app,
        "Observation?value-quantity=72.5|http://unitsofmeasure.org|kg",
        &["o1"],
    )
    .await;
    finds(
        &app,
        "Observation?value-quantity=72.5|http://unitsofmeasure.org|g",
        &[],
    )
    .await;
    finds(&app, "Observation?value-quantity=le90||kg", &["o1", "o4"]).await;
    finds(
        &app,
        "Observation?code-value-quantity=http://loinc.org|29463-7$gt95",
        &["o2"],
    )
    .await;
    finds(
        &app,
        "Observation?code-value-quantity=http://loinc.org|8302-2$lt100",
        &[],
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn quantities_in_ucum_units_compare_across_units() {
    let app = clinic().await;
    let ucum = "http://unitsofmeasure.org";
    // o1 is 72.5 kg, o2 101 kg, o3 165 kg, o4 90 kg.
    finds(
        &app,
        &format!("Observation?value-quantity=72500|{ucum}|g"),
        &["o1"],
    )
    .await;
    finds(
        &app,
        &format!("Observation?value-quantity=72.5|{ucum}|g"),
        &[],
    )
    .await;
    finds(
        &app,
        &format!("Observation?value-quantity=gt100000|{ucum}|g"),
        &["o2", "o3"],
    )
    .await;
    put(
        &app,
        json!({"resourceType": "Observation", "id": "dose", "status": "final",
               "code": {"text": "dose"}, "subject": {"reference": "Patient/p2"},
               "valueQuantity": {"value": 5400, "unit": "mg", "system": ucum, "code": "mg"}}),
    )
    .await;
    finds(
        &app,
        &format!("Observation?value-quantity=5.4|{ucum}|g"),
        &["dose"],
    )
    .await;
    finds(
        &app,
        &format!("Observation?value-quantity=gt5|{ucum}|g&subject=Patient/p2"),
        &["dose", "o4"],
    )
    .await;
    finds(
        &app,
        &format!("Observation?value-quantity=lt5|{ucum}|g"),
        &[],
    )
    .await;
    finds(&app, "Observation?value-quantity=5.4", &[]).await;
    app.stop().await;
}

#[tokio::test]
async fn identifier_of_type_matches_the_type_coding_and_value() {
    let app = clinic().await;
    let v2 = "http://terminology.hl7.org/CodeSystem/v2-0203";
    for (id, code) in [("mr", "MR"), ("dl", "DL")] {
        put(
            &app,
            json!({"resourceType": "Patient", "id": id,
                   "identifier": [{"type": {"coding": [{"system": v2, "code": code}]}, "system": "urn:x", "value": "12345"}]}),
        )
        .await;
    }
    finds(
        &app,
        &format!("Patient?identifier:of-type={v2}|MR|12345"),
        &["mr"],
    )
    .await;
    finds(
        &app,
        &format!("Patient?identifier:of-type={v2}|DL|12345"),
        &["dl"],
    )
    .await;
    finds(
        &app,
        &format!("Patient?identifier:of-type={v2}|MR|111"),
        &[],
    )
    .await;
    for bad in [
        "Patient?identifier:of-type=MR|12345",
        "Patient?identifier:of-type=12345",
        "Patient?identifier:of-type=http://s|MR|",
    ] {
        let outcome = expect_outcome(app.get(bad).await, 400).await;
        let diagnostics = outcome["issue"][0]["diagnostics"].as_str().unwrap();
        assert!(
            diagnostics.contains("[system]|[code]|[value]"),
            "{bad}: {diagnostics}"
        );
    }
    let outcome = expect_outcome(
        app.get(&format!("Patient?gender:of-type={v2}|MR|1")).await,
        400,
    )
    .await;
    assert!(outcome["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("identifier parameters"));
    app.stop().await;
}

#[tokio::test]
async fn references_chains_and_reverse_chains() {
    let app = clinic().await;
    finds(&app, "Observation?subject=Patient/p2", &["o4"]).await;
    finds(&app, "Observation?subject=p2", &["o4"]).await;
    finds(&app, "Observation?patient=p2", &["o4"]).await;
    finds(&app, "Observation?subject:Patient=p2", &["o4"]).await;
    finds(&app, "Observation?subject:Patient.name=smith", &["o4"]).await;
    finds(
        &app,
        "Observation?subject.gender=female",
        &["o1", "o2", "o3"],
    )
    .await;
    // Two levels: observations of patients managed by an organization named Acme.
    finds(
        &app,
        "Observation?subject:Patient.organization.name=acme",
        &["o1", "o2", "o3"],
    )
    .await;
    finds(
        &app,
        "Patient?_has:Observation:patient:code=8302-2",
        &["p1"],
    )
    .await;
    finds(&app, "Patient?_has:Observation:patient:code=nope", &[]).await;
    finds(&app, "Patient?organization:missing=true", &["p2"]).await;
    finds(&app, "Patient?organization:missing=false", &["p1"]).await;
    app.stop().await;
}

#[tokio::test]
async fn includes_and_revincludes_are_marked_as_includes() {
    let app = clinic().await;
    let bundle = search(&app, "Observation?code=8302-2&_include=Observation:subject").await;
    assert_eq!(ids(&bundle), ["o3"]);
    let included = entries(&bundle, "include");
    assert_eq!(included.len(), 1);
    assert_eq!(included[0]["id"], "p1");
    let bundle = search(&app, "Patient?_id=p1&_revinclude=Provenance:target").await;
    let included = entries(&bundle, "include");
    assert_eq!(included.len(), 1);
    assert_eq!(included[0]["id"], "prov1");
    // :iterate follows from included resources: Observation -> Patient -> Organization.
    let bundle = search(
        &app,
        "Observation?_id=o3&_include=Observation:subject&_include:iterate=Patient:organization",
    )
    .await;
    let mut included: Vec<String> = entries(&bundle, "include")
        .iter()
        .map(|r| {
            format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap(),
                r["id"].as_str().unwrap()
            )
        })
        .collect();
    included.sort();
    assert_eq!(included, ["Organization/org1", "Patient/p1"]);
    app.stop().await;
}

#[tokio::test]
async fn sorting_and_keyset_paging_stay_stable_while_writes_continue() {
    let app = clinic().await;
    let bundle = search(&app, "Observation?_sort=-date&_count=2").await;
    let order: Vec<&str> = entries(&bundle, "match")
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned().leak() as &str)
        .collect();
    assert_eq!(order, ["o4", "o2"]);
    // New observations before the cursor must not shift the next page.
    put(
        &app,
        json!({
            "resourceType": "Observation", "id": "o0", "status": "final",
            "code": {"text": "late"}, "effectiveDateTime": "2030-01-01"
        }),
    )
    .await;
    let next = link(&bundle, "next").expect("a next page");
    let second: Value = app
        .client
        .get(next)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let order: Vec<String> = entries(&second, "match")
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(order, ["o3", "o1"]);
    assert!(
        link(&second, "next").is_none() || {
            let next = link(&second, "next").unwrap();
            let third: Value = app
                .client
                .get(next)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            entries(&third, "match").is_empty()
        }
    );
    let bundle = search(&app, "Patient?_sort=family").await;
    let order: Vec<String> = entries(&bundle, "match")
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(order, ["p1", "p2"], "müller sorts before smith");
    let bundle = search(&app, "Patient?_sort=-family").await;
    let order: Vec<String> = entries(&bundle, "match")
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(order, ["p2", "p1"]);
    // Paging a plain search visits every resource exactly once.
    let mut seen = Vec::new();
    let mut page = search(&app, "Observation?_count=1").await;
    loop {
        seen.extend(ids(&page));
        match link(&page, "next") {
            Some(next) => {
                page = app
                    .client
                    .get(next)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap()
            }
            None => break,
        }
    }
    assert_eq!(seen, ["o0", "o1", "o2", "o3", "o4"]);
    app.stop().await;
}

#[tokio::test]
async fn totals_summary_and_elements() {
    let app = clinic().await;
    let bundle = search(&app, "Observation?subject=Patient/p1&_summary=count").await;
    assert_eq!(bundle["total"], 3);
    assert!(bundle.get("entry").is_none());
    let bundle = search(
        &app,
        "Observation?subject=Patient/p1&_total=accurate&_count=1",
    )
    .await;
    assert_eq!(bundle["total"], 3);
    assert_eq!(ids(&bundle).len(), 1);
    let bundle = search(&app, "Observation?subject=Patient/p1").await;
    assert!(bundle.get("total").is_none(), "_total defaults to none");
    let bundle = search(&app, "Observation?subject=Patient/p1&_total=none").await;
    assert!(bundle.get("total").is_none());
    // Every match on the page: the estimate is exact.
    let bundle = search(&app, "Observation?subject=Patient/p1&_total=estimate").await;
    assert_eq!(bundle["total"], 3);
    // Otherwise: exact on SQLite; on PostgreSQL (replica mode) the planner's row estimate.
    let exact = app.state.store.backend() == "sqlite";
    for query in [
        "Observation?subject=Patient/p1&_total=estimate&_count=1",
        "Observation?subject=Patient/p1&_total=estimate&_summary=count",
    ] {
        let bundle = search(&app, query).await;
        if exact {
            assert_eq!(bundle["total"], 3, "{query}");
        } else {
            assert!(bundle["total"].is_u64(), "{query}: {bundle}");
        }
    }
    let outcome = expect_outcome(app.get("Patient?_total=roughly").await, 400).await;
    assert!(outcome["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("estimate"));
    let bundle = search(&app, "Patient?_id=p1&_elements=gender").await;
    let patient = &entries(&bundle, "match")[0];
    assert_eq!(patient["gender"], "female");
    assert!(patient.get("name").is_none());
    assert_eq!(patient["meta"]["tag"][0]["code"], "SUBSETTED");

    // _summary=true: the elements R4 marks isSummary (name, gender) stay; others go.
    put(
        &app,
        json!({"resourceType": "Patient", "id": "p9", "gender": "other",
               "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
               "name": [{"family": "Summary", "given": ["Sam"]}],
               "maritalStatus": {"text": "married"},
               "contact": [{"name": {"family": "Next-of-kin"}}]}),
    )
    .await;
    let bundle = search(&app, "Patient?_id=p9&_summary=true").await;
    let patient = &entries(&bundle, "match")[0];
    assert_eq!(patient["name"][0]["given"][0], "Sam", "kept whole");
    assert_eq!(patient["gender"], "other");
    for dropped in ["text", "maritalStatus", "contact"] {
        assert!(patient.get(dropped).is_none(), "{dropped}: {patient}");
    }
    assert_eq!(patient["meta"]["tag"][0]["code"], "SUBSETTED");

    // _summary=text keeps text and the mandatory elements (regression: it kept neither
    // Observation.status nor .code, looking up top-level elements under the wrong parent).
    let bundle = search(
        &app,
        "Observation?subject=Patient/p1&_summary=text&_count=1",
    )
    .await;
    let observation = &entries(&bundle, "match")[0];
    assert!(observation.get("status").is_some(), "{observation}");
    assert!(observation.get("code").is_some(), "{observation}");
    assert!(observation.get("subject").is_none(), "{observation}");
    app.stop().await;
}

#[tokio::test]
async fn unknown_parameters_lenient_by_default_strict_on_request() {
    let app = clinic().await;
    let bundle = search(&app, "Patient?foo=bar&gender=male").await;
    assert_eq!(ids(&bundle), ["p2"]);
    let self_link = link(&bundle, "self").unwrap();
    assert!(
        self_link.contains("gender=male") && !self_link.contains("foo"),
        "{self_link}"
    );
    let outcome = entries(&bundle, "outcome");
    assert!(outcome[0]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("foo"));
    let response = app
        .request(Method::GET, "Patient?foo=bar&gender=male")
        .header("prefer", "handling=strict")
        .send()
        .await
        .unwrap();
    let outcome = expect_outcome(response, 400).await;
    assert!(outcome["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("foo"));
    app.stop().await;
}

#[tokio::test]
async fn known_parameters_that_cannot_be_applied_are_always_400() {
    let app = clinic().await;
    for query in [
        "Observation?code:below=123",
        "Observation?date=2015-02-30",
        "Observation?date=xx2015",
        "Observation?value-quantity=heavy",
        "Observation?subject:Patient.organization.partof.partof.name=x",
        "Patient?_sort=nope",
        "Patient?_count=many",
        "Patient?_cursor=zz",
        "Patient?_include=Patient:gender",
        "Patient/p1/Medication",
        "Organization/org1/Observation",
    ] {
        let response = app.get(query).await;
        let status = response.status().as_u16();
        assert_eq!(status, 400, "{query}: {}", response.text().await.unwrap());
    }
    app.stop().await;
}

#[tokio::test]
async fn post_search_takes_form_parameters() {
    let app = clinic().await;
    let response = app
        .request(Method::POST, "Patient/_search")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("gender=male")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let bundle: Value = response.json().await.unwrap();
    assert_eq!(ids(&bundle), ["p2"]);
    app.stop().await;
}

#[tokio::test]
async fn system_compartment_and_everything() {
    let app = clinic().await;
    let bundle = search(&app, "?_type=Patient,Observation&_id=p1,o4").await;
    assert_eq!(ids(&bundle), ["o4", "p1"]);
    let bundle = search(&app, "Patient/p1/Observation?code=29463-7").await;
    assert_eq!(ids(&bundle), ["o1", "o2"]);
    let bundle = search(&app, "Patient/p1/$everything").await;
    let mut found: Vec<String> = entries(&bundle, "match")
        .iter()
        .map(|r| {
            format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap(),
                r["id"].as_str().unwrap()
            )
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            "Encounter/e1",
            "Observation/o1",
            "Observation/o2",
            "Observation/o3",
            "Patient/p1",
            "Provenance/prov1"
        ]
    );
    assert_eq!(app.get("Patient/nobody/$everything").await.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn deleted_and_updated_resources_leave_the_index() {
    let app = clinic().await;
    assert_eq!(
        app.request(Method::DELETE, "Observation/o4")
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    finds(&app, "Observation?subject=Patient/p2", &[]).await;
    put(
        &app,
        json!({
            "resourceType": "Patient", "id": "p2", "gender": "other",
            "name": [{"family": "Jones"}]
        }),
    )
    .await;
    finds(&app, "Patient?name=smith", &[]).await;
    finds(&app, "Patient?name=jones", &["p2"]).await;
    finds(&app, "Patient?gender=male", &[]).await;
    app.stop().await;
}

#[tokio::test]
async fn conditional_update_and_delete_use_full_criteria() {
    let app = clinic().await;
    // One match: updated in place, the body's id may be left out.
    let response = app
        .put_json(
            "Patient?family=smith&birthdate=1975",
            &json!({"resourceType": "Patient", "gender": "male", "name": [{"family": "Smith", "given": ["Johnny"]}]}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], "p2");
    assert_eq!(body["meta"]["versionId"], "2");
    // No match: created with a server id.
    let response = app
        .put_json(
            "Patient?family=nobody",
            &json!({"resourceType": "Patient", "name": [{"family": "Nobody"}]}),
        )
        .await;
    assert_eq!(response.status(), 201);
    // Several matches: 412, nothing written.
    let response = app
        .put_json(
            "Patient?gender=male,female",
            &json!({"resourceType": "Patient"}),
        )
        .await;
    expect_outcome(response, 412).await;
    // A body id that is not the match's: 400.
    let response = app
        .put_json(
            "Patient?family=smith",
            &json!({"resourceType": "Patient", "id": "p1"}),
        )
        .await;
    expect_outcome(response, 400).await;
    // Unknown criteria are refused, never widened to "all".
    let response = app
        .put_json("Patient?nope=1", &json!({"resourceType": "Patient"}))
        .await;
    expect_outcome(response, 400).await;
    let delete = |q: &'static str| app.request(Method::DELETE, q).send();
    expect_outcome(delete("Observation?subject=Patient/p1").await.unwrap(), 412).await;
    assert_eq!(
        delete("Observation?code=8302-2").await.unwrap().status(),
        204
    );
    assert_eq!(app.get("Observation/o3").await.status(), 410);
    assert_eq!(
        delete("Observation?code=8302-2").await.unwrap().status(),
        204,
        "no match: nothing to do"
    );
    expect_outcome(delete("Observation?bogus=1").await.unwrap(), 400).await;
    app.stop().await;
}
