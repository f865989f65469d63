//! Search features whose SQL differs per backend or that need index rows of their own:
//! `_total=estimate`, `identifier:of-type`, UCUM unit conversion for quantities.

use careplane_store::{SearchOptions, SearchPage, Store, UpdateOptions};
use serde_json::{json, Value};

use super::{id, rt, search_request, tenant};

const UCUM: &str = "http://unitsofmeasure.org";
const V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";

fn options(page_size: usize) -> SearchOptions {
    SearchOptions {
        page_size,
        max_included: 100,
        count_only: false,
    }
}

async fn put(store: &dyn Store, body: Value) {
    let (ty, rid) = (
        body["resourceType"].as_str().unwrap().to_string(),
        body["id"].as_str().unwrap().to_string(),
    );
    store
        .update(
            &tenant(),
            &rt(&ty),
            &id(&rid),
            body,
            UpdateOptions {
                if_match: None,
                allow_create: true,
            },
        )
        .await
        .unwrap();
}

async fn page(store: &dyn Store, ty: &str, criteria: &str, options: &SearchOptions) -> SearchPage {
    store
        .search(&tenant(), &search_request(ty, criteria), options)
        .await
        .unwrap_or_else(|e| panic!("{ty}?{criteria}: {e}"))
}

/// Sorted ids of everything `criteria` matches (one page of 100).
async fn ids(store: &dyn Store, ty: &str, criteria: &str) -> Vec<String> {
    let mut ids: Vec<String> = page(store, ty, criteria, &options(100))
        .await
        .matches
        .into_iter()
        .map(|m| m.id)
        .collect();
    ids.sort();
    ids
}

pub async fn total_estimate_is_present_and_close_to_the_count(store: &dyn Store) {
    for n in 0..30 {
        let gender = if n < 20 { "female" } else { "male" };
        put(
            store,
            json!({"resourceType": "Patient", "id": format!("p{n}"), "gender": gender}),
        )
        .await;
    }
    store.analyze().await.unwrap();

    let none = page(store, "Patient", "gender=female&_total=none", &options(5)).await;
    assert_eq!(none.total, None, "_total=none has no total");
    let accurate = page(
        store,
        "Patient",
        "gender=female&_total=accurate",
        &options(5),
    )
    .await;
    assert_eq!(accurate.total, Some(20));

    // More matches than the page: the backend's estimate, never below what the page shows.
    let estimate = page(
        store,
        "Patient",
        "gender=female&_total=estimate",
        &options(5),
    )
    .await;
    assert_eq!(estimate.matches.len(), 5);
    let total = estimate.total.expect("_total=estimate has a total");
    assert!(total >= 6, "page of 5 with a next page, estimated {total}");
    // `_summary=count` with estimate: the bare estimate, unclamped by any page.
    let counted = page(
        store,
        "Patient",
        "gender=female&_total=estimate",
        &SearchOptions {
            count_only: true,
            ..options(5)
        },
    )
    .await
    .total
    .expect("a count has a total");
    if store.backend() == "sqlite" {
        // SQLite answers an estimate with the exact count.
        assert_eq!(total, 20);
        assert_eq!(counted, 20);
    } else {
        // The planner's estimate after ANALYZE: approximate, but of the right size.
        for estimated in [total, counted] {
            assert!(
                (5..=80).contains(&estimated),
                "PostgreSQL estimated {estimated} for 20 matches"
            );
        }
    }

    // Everything on the first page: exact on every backend, including no match at all.
    let all = page(
        store,
        "Patient",
        "gender=male&_total=estimate",
        &options(50),
    )
    .await;
    assert_eq!(all.total, Some(10));
    let nothing = page(
        store,
        "Patient",
        "gender=other&_total=estimate",
        &options(50),
    )
    .await;
    assert_eq!(nothing.total, Some(0));

    // Later pages carry an estimate that never contradicts the pages listed so far, and the
    // last page knows the exact total, even when the statistics are stale: 12 analyzed, 3 of
    // them deleted since.
    for n in 0..12 {
        put(
            store,
            json!({"resourceType": "Patient", "id": format!("u{n:02}"), "gender": "unknown"}),
        )
        .await;
    }
    store.analyze().await.unwrap();
    for n in [1, 5, 9] {
        store
            .delete(&tenant(), &rt("Patient"), &id(&format!("u{n:02}")), None)
            .await
            .unwrap();
    }
    let mut request = search_request("Patient", "gender=unknown&_total=estimate");
    let mut listed = 0;
    loop {
        let page = store
            .search(&tenant(), &request, &options(4))
            .await
            .unwrap();
        let shown = listed + page.matches.len() as u64;
        let total = page.total.expect("every page has an estimate");
        match page.next {
            Some(next) => {
                assert!(
                    total > shown,
                    "{shown} listed and more to come, estimated {total}"
                );
                request.cursor = Some(next);
                listed = shown;
            }
            None => {
                assert_eq!(shown, 9);
                assert_eq!(total, 9, "the last page's total is exact");
                break;
            }
        }
    }
}

pub async fn identifier_of_type_matches_type_and_value(store: &dyn Store) {
    let identifier = |code: &str, value: &str| json!({"type": {"coding": [{"system": V2_0203, "code": code}]}, "system": "urn:hospital", "value": value});
    put(
        store,
        json!({"resourceType": "Patient", "id": "mr", "identifier": [identifier("MR", "12345")]}),
    )
    .await;
    put(
        store,
        json!({"resourceType": "Patient", "id": "dl", "identifier": [identifier("DL", "12345")]}),
    )
    .await;
    put(
        store,
        json!({"resourceType": "Patient", "id": "other", "identifier": [identifier("MR", "99")]}),
    )
    .await;
    put(
        store,
        json!({"resourceType": "Patient", "id": "untyped", "identifier": [{"system": "urn:hospital", "value": "12345"}]}),
    )
    .await;
    let of_type = |rest: &str| format!("identifier:of-type={V2_0203}|{rest}");
    assert_eq!(ids(store, "Patient", &of_type("MR|12345")).await, ["mr"]);
    assert_eq!(ids(store, "Patient", &of_type("DL|12345")).await, ["dl"]);
    assert!(ids(store, "Patient", &of_type("MR|1234")).await.is_empty());
    assert!(
        ids(store, "Patient", "identifier:of-type=http://other|MR|12345")
            .await
            .is_empty()
    );
    assert_eq!(
        ids(
            store,
            "Patient",
            &format!("{},{V2_0203}|MR|99", of_type("MR|12345"))
        )
        .await,
        ["mr", "other"],
        "comma is OR"
    );
    // The plain identifier search is unchanged.
    assert_eq!(
        ids(store, "Patient", "identifier=urn:hospital|12345").await,
        ["dl", "mr", "untyped"]
    );
    // An update that changes the type moves the rows with it.
    put(
        store,
        json!({"resourceType": "Patient", "id": "mr", "identifier": [identifier("PPN", "12345")]}),
    )
    .await;
    assert!(ids(store, "Patient", &of_type("MR|12345")).await.is_empty());
    assert_eq!(ids(store, "Patient", &of_type("PPN|12345")).await, ["mr"]);
    // Reindexing (how existing data gets these rows) rebuilds the same answers.
    store.reindex().await.unwrap();
    assert_eq!(ids(store, "Patient", &of_type("PPN|12345")).await, ["mr"]);
    assert_eq!(ids(store, "Patient", &of_type("DL|12345")).await, ["dl"]);
}

pub async fn quantities_match_across_ucum_units(store: &dyn Store) {
    let observation = |oid: &str, quantity: Value| {
        json!({"resourceType": "Observation", "id": oid, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "dose"}]},
            "valueQuantity": quantity})
    };
    let ucum = |value: f64, code: &str| json!({"value": value, "system": UCUM, "code": code});
    put(store, observation("mg5400", ucum(5400.0, "mg"))).await;
    put(store, observation("g5-4", ucum(5.4, "g"))).await;
    put(store, observation("g6", ucum(6.0, "g"))).await;
    put(store, observation("mg9", ucum(9.0, "mg"))).await;
    put(store, observation("kg1", ucum(1.0, "kg"))).await;
    // Not UCUM (no system): compared as written only.
    put(
        store,
        observation("label", json!({"value": 5400, "unit": "mg", "code": "mg"})),
    )
    .await;
    // A compound unit: canonical `g.L-1`, which no other resource here has.
    put(store, observation("mgdl", ucum(5.4, "mg/dL"))).await;

    let q = |v: &str| format!("value-quantity={v}");
    let finds = |criteria: String, expected: &'static [&'static str]| async move {
        assert_eq!(
            ids(store, "Observation", &criteria).await,
            expected,
            "{criteria}"
        );
    };
    finds(q(&format!("5.4|{UCUM}|g")), &["g5-4", "mg5400"]).await;
    // The search value's precision converts with it: 5400 mg is [5399.5, 5400.5) mg.
    finds(q(&format!("5400|{UCUM}|mg")), &["g5-4", "mg5400"]).await;
    finds(q(&format!("5.40|{UCUM}|g")), &["g5-4", "mg5400"]).await;
    finds(q(&format!("5.41|{UCUM}|g")), &[]).await;
    finds(q(&format!("5|{UCUM}|g")), &["g5-4", "mg5400"]).await;
    finds(
        q(&format!("gt5|{UCUM}|g")),
        &["g5-4", "g6", "kg1", "mg5400"],
    )
    .await;
    finds(q(&format!("lt5|{UCUM}|g")), &["mg9"]).await;
    finds(q(&format!("1000|{UCUM}|g")), &["kg1"]).await;
    // Boundaries stay exact: 9 mg is 0.009 g, not a hair more.
    finds(
        q(&format!("gt0.009|{UCUM}|g")),
        &["g5-4", "g6", "kg1", "mg5400"],
    )
    .await;
    finds(
        q(&format!("ge0.009|{UCUM}|g")),
        &["g5-4", "g6", "kg1", "mg5400", "mg9"],
    )
    .await;
    // A code without a system, or a bare number, compares the values as written.
    finds(q("5400||mg"), &["label", "mg5400"]).await;
    finds(q("5.4"), &["g5-4", "mgdl"]).await;
    // Compound units convert exactly: 5.4 mg/dL is 0.054 g/L (`5.4 / 100` in f64 is a hair more).
    finds(q(&format!("5.4|{UCUM}|mg/dL")), &["mgdl"]).await;
    finds(q(&format!("0.054|{UCUM}|g/L")), &["mgdl"]).await;
    finds(q(&format!("54|{UCUM}|mg/L")), &["mgdl"]).await;
    finds(q(&format!("gt0.054|{UCUM}|g/L")), &[]).await;
    finds(q(&format!("ge0.054|{UCUM}|g/L")), &["mgdl"]).await;
    // Mixed units in one parameter are ORed.
    finds(q(&format!("6|{UCUM}|g,5.4||mg/dL")), &["g6", "mgdl"]).await;
    // Composite components convert too.
    finds(
        format!("code-value-quantity=http://loinc.org|dose$5400|{UCUM}|mg"),
        &["g5-4", "mg5400"],
    )
    .await;
    // `:missing` and `_sort` still see the values as written.
    finds(
        "value-quantity:missing=false".into(),
        &["g5-4", "g6", "kg1", "label", "mg5400", "mg9", "mgdl"],
    )
    .await;
    let sorted: Vec<String> = page(store, "Observation", "_sort=value-quantity", &options(100))
        .await
        .matches
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(
        sorted.first().map(String::as_str),
        Some("kg1"),
        "1 (kg) sorts first: {sorted:?}"
    );
    // Reindexing rebuilds the canonical rows.
    store.reindex().await.unwrap();
    finds(q(&format!("5.4|{UCUM}|g")), &["g5-4", "mg5400"]).await;
}

/// Several filters over one type must all hold for the same resource (PostgreSQL joins their
/// index rows, SQLite walks one filter's list and probes the index for the others): matching each filter on a different resource
/// is not enough, repeated values and OR lists still work, and a negated filter stays apart.
pub async fn filters_over_one_type_intersect_per_resource(store: &dyn Store) {
    let obs = |oid: &str, patient: &str, code: &str, status: &str| {
        json!({
            "resourceType": "Observation", "id": oid, "status": status,
            "subject": {"reference": format!("Patient/{patient}")},
            "code": {"coding": [
                {"system": "http://loinc.org", "code": code},
                {"system": "http://example.org/local", "code": format!("local-{code}")}
            ]}
        })
    };
    put(store, obs("both", "p1", "8302-2", "final")).await;
    put(store, obs("other-code", "p1", "29463-7", "final")).await;
    put(store, obs("other-patient", "p2", "8302-2", "final")).await;
    put(store, obs("amended", "p1", "8302-2", "amended")).await;
    let found = |criteria: &'static str| ids(store, "Observation", criteria);
    assert_eq!(
        found("subject=Patient/p1&code=http://loinc.org|8302-2").await,
        ["amended", "both"]
    );
    assert_eq!(
        found("subject=Patient/p1&code=8302-2&status=final").await,
        ["both"]
    );
    assert_eq!(
        found("subject=Patient/p1&code=8302-2,29463-7&status=final").await,
        ["both", "other-code"]
    );
    assert_eq!(
        found("subject=Patient/p1&code=8302-2&status:not=final").await,
        ["amended"]
    );
    assert!(found("subject=Patient/p2&code=29463-7").await.is_empty());
    assert_eq!(
        found("code=http://loinc.org|8302-2&code=http://example.org/local|local-8302-2").await,
        ["amended", "both", "other-patient"]
    );
    let options = SearchOptions {
        page_size: 10,
        max_included: 10,
        count_only: true,
    };
    let counted = store
        .search(
            &tenant(),
            &search_request(
                "Observation",
                "subject=Patient/p1&code=8302-2&_total=accurate",
            ),
            &options,
        )
        .await
        .unwrap();
    assert_eq!(counted.total, Some(2));
}

/// Pages in id order (no `_sort`) list every match exactly once, in order, however the rows are
/// found: PostgreSQL drives such pages from the filters' index rows and bounds them by the
/// cursor. Controls: another patient's and a deleted Observation never appear, and one that
/// matches two values of an OR list appears once.
pub async fn pages_in_id_order_list_each_match_once(store: &dyn Store) {
    let obs = |oid: String, patient: &str, codes: &[&str]| {
        let coding: Vec<Value> = codes
            .iter()
            .map(|c| json!({"system": "http://loinc.org", "code": c}))
            .collect();
        json!({
            "resourceType": "Observation", "id": oid, "status": "final",
            "subject": {"reference": format!("Patient/{patient}")},
            "code": {"coding": coding}
        })
    };
    // Written out of id order, so insertion order cannot pass for id order.
    let mut expected = Vec::new();
    for n in [7, 3, 11, 0, 9, 5, 1, 10, 2, 8, 6, 4] {
        let oid = format!("obs-{n:02}");
        let codes: &[&str] = if n % 3 == 0 { &["a", "b"] } else { &["a"] };
        put(store, obs(oid.clone(), "p1", codes)).await;
        expected.push(oid);
    }
    expected.sort();
    put(store, obs("obs-05x".into(), "p2", &["a", "b"])).await;
    put(store, obs("obs-06x".into(), "p1", &["a"])).await;
    store
        .delete(&tenant(), &rt("Observation"), &id("obs-06x"), None)
        .await
        .unwrap();

    for criteria in [
        "patient=p1",
        "subject=Patient/p1&code=a,b",
        "patient=p1&code=a,b",
    ] {
        let mut request = search_request("Observation", criteria);
        let mut seen = Vec::new();
        for _ in 0..10 {
            let page = store
                .search(&tenant(), &request, &options(5))
                .await
                .unwrap_or_else(|e| panic!("{criteria}: {e}"));
            assert!(page.matches.len() <= 5, "{criteria}: page too long");
            seen.extend(page.matches.into_iter().map(|m| m.id));
            match page.next {
                Some(next) => request.cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, expected, "{criteria}");
    }
    // The type a bare id implies is the only one `patient` can refer to.
    assert_eq!(ids(store, "Observation", "patient=p2").await, ["obs-05x"]);
}

/// An update replaces a resource's index rows in every index table and a delete removes them:
/// old values stop matching, new ones match. (PostgreSQL clears all tables in one statement.)
pub async fn updates_and_deletes_replace_every_index_row(store: &dyn Store) {
    let patient = |family: &str, gender: &str, born: &str, gp: &str, profile: &str| {
        json!({
            "resourceType": "Patient", "id": "replaced", "meta": {"profile": [profile]},
            "name": [{"family": family}], "gender": gender, "birthDate": born,
            "generalPractitioner": [{"reference": format!("Practitioner/{gp}")}]
        })
    };
    let observation = |value: f64| {
        json!({
            "resourceType": "Observation", "id": "measured", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
            "valueQuantity": {"value": value, "system": UCUM, "code": "cm"}
        })
    };
    let first = [
        "family=Before",
        "gender=female",
        "birthdate=1980-01-01",
        "general-practitioner=Practitioner/gp1",
        "_profile=http://example.org/old",
    ];
    let second = [
        "family=After",
        "gender=male",
        "birthdate=1990-02-02",
        "general-practitioner=Practitioner/gp2",
        "_profile=http://example.org/new",
    ];
    put(
        store,
        patient(
            "Before",
            "female",
            "1980-01-01",
            "gp1",
            "http://example.org/old",
        ),
    )
    .await;
    put(store, observation(150.0)).await;
    for criteria in first {
        assert_eq!(
            ids(store, "Patient", criteria).await,
            ["replaced"],
            "{criteria}"
        );
    }
    assert_eq!(
        ids(store, "Observation", "value-quantity=150||cm").await,
        ["measured"]
    );

    put(
        store,
        patient(
            "After",
            "male",
            "1990-02-02",
            "gp2",
            "http://example.org/new",
        ),
    )
    .await;
    put(store, observation(160.0)).await;
    for criteria in first {
        assert!(
            ids(store, "Patient", criteria).await.is_empty(),
            "{criteria} still matches"
        );
    }
    for criteria in second {
        assert_eq!(
            ids(store, "Patient", criteria).await,
            ["replaced"],
            "{criteria}"
        );
    }
    assert!(ids(store, "Observation", "value-quantity=150||cm")
        .await
        .is_empty());
    assert_eq!(
        ids(store, "Observation", "value-quantity=160||cm").await,
        ["measured"]
    );

    store
        .delete(&tenant(), &rt("Patient"), &id("replaced"), None)
        .await
        .unwrap();
    for criteria in second {
        assert!(
            ids(store, "Patient", criteria).await.is_empty(),
            "{criteria} after delete"
        );
    }
}

/// `_id` and `_lastUpdated` are answered from the resource's own columns (no index rows are
/// written for them): filters, `:not`, the prefixes and `_sort` in both directions.
pub async fn id_and_last_updated_are_answered_from_the_resource_columns(store: &dyn Store) {
    let mut stamps = Vec::new();
    for name in ["first", "second", "third"] {
        let body = json!({"resourceType": "Patient", "id": name, "name": [{"family": name}]});
        let (ty, rid) = (rt("Patient"), id(name));
        let options = UpdateOptions {
            if_match: None,
            allow_create: true,
        };
        let outcome = store
            .update(&tenant(), &ty, &rid, body, options)
            .await
            .unwrap();
        let format = time::format_description::well_known::Rfc3339;
        stamps.push(outcome.resource.last_updated.format(&format).unwrap());
        // Distinct timestamps, so that `gt`/`lt` split the three.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let second = &stamps[1];
    assert_eq!(
        ids(store, "Patient", &format!("_lastUpdated=ge{second}")).await,
        ["second", "third"]
    );
    assert_eq!(
        ids(store, "Patient", &format!("_lastUpdated=lt{second}")).await,
        ["first"]
    );
    assert_eq!(
        ids(store, "Patient", "_id=third,first,absent").await,
        ["first", "third"]
    );
    assert_eq!(
        ids(store, "Patient", "_id:not=second").await,
        ["first", "third"]
    );
    let sorted = |criteria: &'static str| async move {
        page(store, "Patient", criteria, &options(10))
            .await
            .matches
            .into_iter()
            .map(|m| m.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        sorted("_sort=-_lastUpdated").await,
        ["third", "second", "first"]
    );
    assert_eq!(
        sorted("_sort=_lastUpdated").await,
        ["first", "second", "third"]
    );
}

/// Observations for the parameters derived from others (`combo-*`, `code-value-*`): `a` has a root value and
/// one component, `b` only a root value, `c` a coded value, `d` neither code nor quantity.
pub async fn put_combo_observations(store: &dyn Store) {
    let coding = |code: &str| json!({"coding": [{"system": "http://loinc.org", "code": code}]});
    let quantity = |value: f64, unit: &str| json!({"value": value, "system": UCUM, "code": unit});
    for body in [
        json!({"resourceType": "Observation", "id": "a", "status": "final",
            "code": coding("8302-2"), "valueQuantity": quantity(56.4, "cm"),
            "component": [{"code": coding("8480-6"), "valueQuantity": quantity(120.0, "mm[Hg]")}]}),
        json!({"resourceType": "Observation", "id": "b", "status": "final",
            "code": coding("8480-6"), "valueQuantity": quantity(130.0, "mm[Hg]")}),
        json!({"resourceType": "Observation", "id": "c", "status": "final",
            "code": coding("8302-2"), "valueCodeableConcept": coding("LA-1")}),
        json!({"resourceType": "Observation", "id": "d", "status": "final",
            "valueString": "no code"}),
    ] {
        put(store, body).await;
    }
}

/// What searches on the derived parameters find in [`put_combo_observations`]'s data, however
/// the rows are stored.
pub async fn combo_searches_find_root_and_component_values(store: &dyn Store) {
    let expect = [
        ("combo-code=8480-6", vec!["a", "b"]),
        ("combo-code=http://loinc.org|8302-2", vec!["a", "c"]),
        ("combo-code:not=8480-6", vec!["c", "d"]),
        ("combo-code:missing=true", vec!["d"]),
        ("combo-value-quantity=120", vec!["a"]),
        ("combo-value-quantity=56.4", vec!["a"]),
        ("combo-value-quantity=gt125", vec!["b"]),
        // Through the canonical UCUM rows: 56.4 cm = 0.564 m.
        (
            "combo-value-quantity=0.564|http://unitsofmeasure.org|m",
            vec!["a"],
        ),
        ("combo-value-quantity:missing=true", vec!["c", "d"]),
        ("combo-value-concept=LA-1", vec!["c"]),
        // Root group, component group, root only.
        ("combo-code-value-quantity=8302-2$56.4", vec!["a"]),
        ("combo-code-value-quantity=8480-6$120", vec!["a"]),
        ("combo-code-value-quantity=8480-6$gt100", vec!["a", "b"]),
        // A code and a value from different groups are not a pair.
        ("combo-code-value-quantity=8302-2$120", vec![]),
        ("combo-code-value-quantity=8480-6$56.4", vec![]),
        ("combo-code-value-quantity:missing=false", vec!["a", "b"]),
        ("combo-code-value-concept=8302-2$LA-1", vec!["c"]),
        // The sources themselves are unchanged.
        ("code=8480-6", vec!["b"]),
        ("component-code=8480-6", vec!["a"]),
        ("code-value-quantity=8480-6$120", vec![]),
        // Composites over the resource itself read `code` with `value-*` (derived too).
        ("code-value-quantity=8302-2$56.4", vec!["a"]),
        ("code-value-quantity=8480-6$130", vec!["b"]),
        ("code-value-quantity=8480-6$56.4", vec![]),
        (
            "code-value-quantity=http://loinc.org|8302-2$0.564|http://unitsofmeasure.org|m",
            vec!["a"],
        ),
        ("code-value-concept=8302-2$LA-1", vec!["c"]),
        ("code-value-concept=8480-6$LA-1", vec![]),
        // Present only with a complete group: `c` has a code but no quantity.
        ("code-value-quantity:missing=true", vec!["c", "d"]),
        ("code-value-quantity:missing=false", vec!["a", "b"]),
    ];
    for (criteria, want) in expect {
        assert_eq!(
            ids(store, "Observation", criteria).await,
            want,
            "{criteria}"
        );
    }
    // Largest value first: b (130) before a (120 in its component).
    let sorted: Vec<String> = page(
        store,
        "Observation",
        "combo-value-quantity:missing=false&_sort=-combo-value-quantity",
        &options(10),
    )
    .await
    .matches
    .into_iter()
    .map(|m| m.id)
    .collect();
    assert_eq!(sorted, ["b", "a"]);
}

/// A new database stores no derived rows from the start, its searches find everything, and
/// the contract step has nothing to delete.
pub async fn derived_parameters_are_searched_through_their_sources(store: &dyn Store) {
    put_combo_observations(store).await;
    combo_searches_find_root_and_component_values(store).await;
    assert_eq!(store.contract().await.unwrap(), 0);
    combo_searches_find_root_and_component_values(store).await;
}

/// Counts the stored rows of the `combo-*` and `code-value-*` parameters (SQL for both
/// backends).
pub const COUNT_DERIVED_ROWS: &str = "SELECT \
     (SELECT COUNT(*) FROM search_token WHERE param LIKE 'combo-%' OR param LIKE 'code-value-%') \
     + (SELECT COUNT(*) FROM search_quantity WHERE param LIKE 'combo-%' OR param LIKE 'code-value-%')";

/// A database that was in use when this release's migrations ran (`derived_index_rows` =
/// `written`) keeps getting derived rows, for the previous release's searches, until the
/// contract step deletes them; this release's searches find the same throughout, and writes
/// after the contract store none. `derived_rows` runs [`COUNT_DERIVED_ROWS`].
pub async fn derived_rows_are_written_until_contract<F, Fut>(store: &dyn Store, derived_rows: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = i64>,
{
    put_combo_observations(store).await;
    let stored = derived_rows().await;
    assert!(stored > 0, "no derived rows were written");
    combo_searches_find_root_and_component_values(store).await;
    assert_eq!(store.contract().await.unwrap(), stored as u64);
    assert_eq!(derived_rows().await, 0);
    combo_searches_find_root_and_component_values(store).await;
    put_combo_observations(store).await;
    put(
        store,
        json!({"resourceType": "Observation", "id": "e", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
            "valueQuantity": {"value": 37.2, "system": UCUM, "code": "Cel"}}),
    )
    .await;
    assert_eq!(derived_rows().await, 0);
    assert_eq!(ids(store, "Observation", "combo-code=8310-5").await, ["e"]);
}
