use serde_json::json;

use super::validate;
use crate::definitions::Definitions;
use crate::outcome::{Issue, IssueCode};

fn issues(resource: serde_json::Value) -> Vec<Issue> {
    validate(Definitions::r4().unwrap(), &resource)
}

/// Paths of all issues, warnings included.
fn paths(resource: serde_json::Value) -> Vec<String> {
    issues(resource)
        .into_iter()
        .filter_map(|i| i.expression)
        .collect()
}

#[test]
fn a_well_formed_patient_is_valid() {
    let found = issues(json!({
        "resourceType": "Patient", "id": "p1", "active": true, "gender": "female", "birthDate": "1970-03-01",
        "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1970-03-01T10:00:00+01:00"}]},
        "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
        "deceasedBoolean": false, "multipleBirthInteger": 2,
        "managingOrganization": {"reference": "Organization/1"},
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Peter</p></div>"}
    }));
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn every_problem_is_reported_with_its_path_not_just_the_first() {
    let found = paths(json!({
        "resourceType": "Patient", "birthDate": "1970-13-01", "gender": "f", "nickname": "x",
        "name": {"family": "x"}, "active": "yes"
    }));
    for expected in [
        "Patient.birthDate",
        "Patient.gender",
        "Patient.nickname",
        "Patient.name",
        "Patient.active",
    ] {
        assert!(
            found.iter().any(|p| p == expected),
            "{expected} missing from {found:?}"
        );
    }
}

#[test]
fn missing_required_elements_are_named() {
    let found = paths(json!({"resourceType": "Observation"}));
    assert!(found.contains(&"Observation.status".to_string()));
    assert!(found.contains(&"Observation.code".to_string()));
    let ok =
        issues(json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}));
    assert!(ok.is_empty(), "{ok:?}");
}

#[test]
fn choice_types_accept_only_their_declared_types() {
    let base = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}});
    let mut ok = base.clone();
    ok["valueQuantity"] = json!({"value": 1.50, "unit": "mg"});
    assert!(issues(ok).is_empty());
    let mut bad = base.clone();
    bad["valueAddress"] = json!({"city": "x"});
    assert_eq!(paths(bad), ["Observation.valueAddress"]);
    let mut two = base;
    two["valueString"] = json!("a");
    two["valueBoolean"] = json!(true);
    assert!(
        issues(two).iter().any(|i| i.code == IssueCode::Structure),
        "two choices for one element"
    );
}

#[test]
fn primitives_follow_the_official_lexical_forms() {
    let found = paths(json!({
        "resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "issued": "2020-01-01", "effectiveDateTime": "2020-01-01T10:00:00",
        "valueInteger": 1.5
    }));
    assert_eq!(
        found,
        [
            "Observation.issued",
            "Observation.effectiveDateTime",
            "Observation.valueInteger"
        ]
    );
}

#[test]
fn arrays_must_be_arrays_non_empty_and_without_stray_nulls() {
    let found = paths(
        json!({"resourceType": "Patient", "name": [], "telecom": [null], "identifier": {"value": "1"}}),
    );
    assert_eq!(
        found,
        ["Patient.name", "Patient.telecom[0]", "Patient.identifier"]
    );
    let aligned = issues(
        json!({"resourceType": "Patient", "name": [{"given": ["a", null], "_given": [null, {"extension": [{"url": "http://x", "valueString": "y"}]}]}]}),
    );
    assert!(aligned.is_empty(), "{aligned:?}");
}

#[test]
fn empty_objects_and_strings_are_invalid() {
    assert_eq!(
        paths(json!({"resourceType": "Patient", "name": [{}]})),
        ["Patient.name[0]"]
    );
    assert_eq!(
        paths(json!({"resourceType": "Patient", "name": [{"family": ""}]})),
        ["Patient.name[0].family"]
    );
}

#[test]
fn references_must_be_well_formed_and_point_at_allowed_types() {
    let found = paths(json!({"resourceType": "Patient",
        "managingOrganization": {"reference": "Patient/1"},
        "generalPractitioner": [{"reference": "Practitioner/bad id"}, {"reference": "Practitioner/1/_history/2"},
                                {"reference": "https://other.example/fhir/Practitioner/9"}, {"reference": "Nope/1"}]
    }));
    assert_eq!(
        found,
        [
            "Patient.managingOrganization.reference",
            "Patient.generalPractitioner[0].reference",
            "Patient.generalPractitioner[3].reference"
        ]
    );
    let wrong_target = issues(
        json!({"resourceType": "Patient", "managingOrganization": {"reference": "Patient/1"}}),
    );
    assert!(
        wrong_target.iter().all(|i| !i.is_error()),
        "a target outside the declared ones is a warning"
    );
}

#[test]
fn conditional_references_are_only_legal_inside_bundles() {
    let pat = json!({"resourceType": "Patient", "managingOrganization": {"reference": "Organization?identifier=x|1"}});
    assert_eq!(
        paths(pat.clone()),
        ["Patient.managingOrganization.reference"]
    );
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": pat, "request": {"method": "POST", "url": "Patient"}}]});
    assert!(issues(bundle).is_empty());
    let defs = Definitions::r4().unwrap();
    let entry = json!({"resourceType": "Patient", "managingOrganization": {"reference": "Organization?identifier=x|1"}});
    assert!(super::validate_bundle_entry(defs, &entry).is_empty());
}

#[test]
fn required_bindings_are_enforced_when_enumerable() {
    assert_eq!(
        paths(json!({"resourceType": "Patient", "gender": "F"})),
        ["Patient.gender"]
    );
    assert!(issues(json!({"resourceType": "Patient", "gender": "unknown"})).is_empty());
    // Quantity.comparator lives in a data type, bound to quantity-comparator.
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": 1, "comparator": "~"}});
    assert_eq!(paths(obs), ["Observation.valueQuantity.comparator"]);
}

#[test]
fn contained_resources_are_validated_and_local_references_must_resolve() {
    let found = paths(json!({"resourceType": "Patient",
        "contained": [{"resourceType": "Organization", "id": "org", "active": "yes"}],
        "managingOrganization": {"reference": "#org"},
        "generalPractitioner": [{"reference": "#missing"}]}));
    assert_eq!(found, ["Patient.contained[0].active", "Patient"]);
    let siblings = issues(json!({"resourceType": "Patient",
        "contained": [{"resourceType": "Organization", "id": "a", "partOf": {"reference": "#b"}},
                      {"resourceType": "Organization", "id": "b"}],
        "managingOrganization": {"reference": "#a"}}));
    assert!(
        siblings.is_empty(),
        "contained resources may reference each other: {siblings:?}"
    );
}

#[test]
fn extensions_need_a_url_and_either_a_value_or_children() {
    let found = paths(json!({"resourceType": "Patient", "extension": [
        {"valueString": "x"}, {"url": "http://x"}, {"url": "http://x", "valueString": "a", "extension": [{"url": "y", "valueInteger": 1}]}]}));
    assert_eq!(
        found,
        [
            "Patient.extension[0].url",
            "Patient.extension[1]",
            "Patient.extension[2]"
        ]
    );
}

#[test]
fn recursive_backbone_elements_follow_content_references() {
    let q = json!({"resourceType": "Questionnaire", "status": "active", "item": [
        {"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "string", "bogus": 1}]}]});
    assert_eq!(paths(q), ["Questionnaire.item[0].item[0].bogus"]);
}

#[test]
fn narrative_with_active_content_is_rejected() {
    let bad = |div: &str| {
        paths(json!({"resourceType": "Patient", "text": {"status": "generated", "div": div}}))
    };
    assert_eq!(
        bad("<div xmlns=\"http://www.w3.org/1999/xhtml\"><script>x()</script></div>"),
        ["Patient.text.div"]
    );
    assert_eq!(
        bad("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p onclick=\"x()\">a</p></div>"),
        ["Patient.text.div"]
    );
    assert_eq!(bad("<p>a</p>"), ["Patient.text.div"]);
    assert!(bad(
        "<div xmlns=\"http://www.w3.org/1999/xhtml\"><table><tr><td>a</td></tr></table></div>"
    )
    .is_empty());
}

#[test]
fn period_start_after_end_violates_per_1() {
    let enc = |start: &str, end: &str| {
        paths(
            json!({"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"}, "period": {"start": start, "end": end}}),
        )
    };
    assert_eq!(enc("2020-02-01", "2020-01-01"), ["Encounter.period"]);
    assert!(
        enc("2020-01", "2020-01-15").is_empty(),
        "partial dates overlap"
    );
}

#[test]
fn unknown_and_abstract_resource_types_are_rejected() {
    assert_eq!(
        issues(json!({"resourceType": "Patients"}))[0].code,
        IssueCode::Invalid
    );
    assert_eq!(
        issues(json!({"resourceType": "DomainResource"}))[0].code,
        IssueCode::Invalid
    );
    assert_eq!(issues(json!({"id": "x"}))[0].code, IssueCode::Required);
    assert_eq!(issues(json!([1]))[0].code, IssueCode::Structure);
}

#[test]
fn bundles_reject_duplicate_full_urls() {
    let e = |u: &str| json!({"fullUrl": u, "resource": {"resourceType": "Patient"}});
    let b = json!({"resourceType": "Bundle", "type": "collection", "entry": [e("urn:uuid:5b0c8f36-55c8-4a4b-93a6-2b5bb0a1f0a1"), e("urn:uuid:5b0c8f36-55c8-4a4b-93a6-2b5bb0a1f0a1")]});
    assert_eq!(paths(b), ["Bundle.entry[1].fullUrl"]);
}

#[test]
fn bundle_full_urls_must_be_absolute_and_search_results_need_ids() {
    let b = json!({"resourceType": "Bundle", "type": "searchset", "entry": [
        {"fullUrl": "Patient/1", "resource": {"resourceType": "Patient", "id": "1"}, "search": {"mode": "match"}},
        {"fullUrl": "http://x/fhir/Patient/2", "resource": {"resourceType": "Patient"}, "search": {"mode": "match"}}],
        "link": [{"relation": "self", "url": "http://x"}, {"relation": "self", "url": "http://y"}]});
    assert_eq!(
        paths(b),
        [
            "Bundle.link[1]",
            "Bundle.entry[0].fullUrl",
            "Bundle.entry[1].resource"
        ]
    );
}

#[test]
fn attachment_size_must_match_the_data() {
    let media = |size: u64| {
        json!({"resourceType": "Media", "status": "completed",
        "content": {"contentType": "text/plain", "data": "aGVscCBpJ20gYSBidWc=", "size": size}})
    };
    assert!(issues(media(14)).is_empty(), "14 bytes decoded");
    assert_eq!(paths(media(100)), ["Media.content.size"]);
}

#[test]
fn coding_systems_must_be_absolute() {
    let obs = |system: &str| {
        json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": system, "code": "x"}]}})
    };
    assert!(issues(obs("http://loinc.org")).is_empty());
    assert!(issues(obs("urn:oid:2.16.840.1.113883.6.1")).is_empty());
    assert_eq!(paths(obs("loinc")), ["Observation.code.coding[0].system"]);
}

#[test]
fn dates_must_be_real_calendar_days() {
    let pat = |d: &str| paths(json!({"resourceType": "Patient", "birthDate": d}));
    assert_eq!(pat("2020-02-30"), ["Patient.birthDate"]);
    assert_eq!(pat("2019-02-29"), ["Patient.birthDate"]);
    assert!(pat("2020-02-29").is_empty(), "leap day");
    assert!(
        pat("2020-02").is_empty() && pat("2020").is_empty(),
        "partial dates"
    );
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "effectiveDateTime": "2021-04-31T10:00:00Z", "issued": "2021-06-31T10:00:00.000Z"});
    assert_eq!(
        paths(obs),
        ["Observation.effectiveDateTime", "Observation.issued"]
    );
}
