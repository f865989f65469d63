use serde_json::{json, Value};

use super::*;

fn defs() -> &'static Definitions {
    Definitions::r4().unwrap()
}

/// Evaluates `expr` on `resource`, as `(type name, value)` pairs.
fn eval(expr: &str, resource: &Value) -> Vec<(String, Value)> {
    let expr = parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
    expr.evaluate(defs(), resource)
        .into_iter()
        .map(|i| (i.type_name().to_string(), i.value.into_owned()))
        .collect()
}

fn types(expr: &str, resource: &Value) -> Vec<String> {
    eval(expr, resource).into_iter().map(|(t, _)| t).collect()
}

fn values(expr: &str, resource: &Value) -> Vec<Value> {
    eval(expr, resource).into_iter().map(|(_, v)| v).collect()
}

#[test]
fn every_official_expression_parses() {
    let mut count = 0;
    for p in defs().search_params() {
        let exprs = p
            .expression
            .iter()
            .chain(p.components.iter().map(|c| &c.expression));
        for src in exprs {
            if let Err(e) = parse(src) {
                panic!("{} ({}): {e}\n{src}", p.url, p.code);
            }
            count += 1;
        }
    }
    assert!(count > 1400, "{count}");
}

#[test]
fn every_official_expression_keeps_a_branch_for_each_base() {
    for p in defs().search_params() {
        let Some(src) = &p.expression else { continue };
        let expr = parse(src).unwrap();
        for base in &p.base {
            assert!(
                !expr.for_resource_type(defs(), base).is_empty(),
                "{} on {base}: {src}",
                p.url
            );
        }
    }
}

#[test]
fn composite_components_resolve_to_typed_params() {
    let composites = defs()
        .search_params()
        .iter()
        .filter(|p| p.param_type == "composite");
    for p in composites {
        assert!(p.components.len() >= 2, "{}", p.url);
        for c in &p.components {
            let def = defs().search_param_by_url(&c.definition);
            assert!(def.is_some(), "{} -> {}", p.url, c.definition);
        }
    }
    let obs = defs()
        .search_param("Observation", "code-value-quantity")
        .unwrap();
    assert_eq!(obs.components[1].expression, "value.as(Quantity)");
    let subject = defs().search_param("Observation", "subject").unwrap();
    assert!(subject.targets.iter().any(|t| t == "Patient"));
}

#[test]
fn parse_errors_point_at_the_problem() {
    for bad in [
        "Observation.",
        "Observation.code.",
        "(Observation.code",
        "Observation.code.foo()",
        "Observation.code + 1",
        "Observation.where(",
        "'unterminated",
        "Observation.code #",
        "%unknown",
        "",
    ] {
        assert!(parse(bad).is_err(), "{bad:?} should not parse");
    }
    let e = parse("Patient.name.bogus()").unwrap_err();
    assert_eq!(e.position, 13, "{e}");
}

fn observation() -> Value {
    json!({
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "Heart rate"},
        "subject": {"reference": "Patient/p1"},
        "performer": [
            {"reference": "Practitioner/d1"},
            {"reference": "http://example.org/fhir/Patient/p2/_history/3"},
            {"reference": "#contained"},
            {"display": "no reference"}
        ],
        "effectiveDateTime": "2020-01-02T03:04:05Z",
        "valueQuantity": {"value": 72, "unit": "/min"},
        "component": [
            {"code": {"text": "systolic"}, "valueQuantity": {"value": 120}},
            {"code": {"text": "note"}, "valueString": "fine"},
            {"code": {"text": "when"}, "valuePeriod": {"start": "2020"}}
        ],
        "extension": [
            {"url": "http://x/a", "valueString": "A"},
            {"url": "http://x/b", "valueCode": "B"}
        ]
    })
}

#[test]
fn paths_track_fhir_types() {
    let o = observation();
    assert_eq!(types("Observation.code", &o), ["CodeableConcept"]);
    assert_eq!(types("Observation.code.coding", &o), ["Coding"]);
    assert_eq!(types("Observation.code.coding.code", &o), ["code"]);
    assert_eq!(types("Observation.status", &o), ["code"]);
    assert_eq!(types("Observation.id", &o), ["string"]);
    assert_eq!(types("Observation", &o), ["Observation"]);
    assert_eq!(types("Resource.id", &o), ["string"], "supertype root");
    assert_eq!(types("DomainResource.id", &o), ["string"]);
    assert_eq!(
        values("Observation.component.code.text", &o),
        [json!("systolic"), json!("note"), json!("when")]
    );
    let component = parse("Observation.component").unwrap();
    let items = component.evaluate(defs(), &o);
    assert_eq!(items[0].type_name(), "BackboneElement");
    assert_eq!(items[0].backbone(), Some(("Observation", "component")));
}

#[test]
fn other_root_types_and_unknown_elements_yield_nothing() {
    let o = observation();
    assert!(eval("Patient.name", &o).is_empty());
    assert!(eval("Observation.nonsense", &o).is_empty());
    assert!(eval("Observation.code.coding.code.more", &o).is_empty());
    assert!(eval("Observation.code", &json!({"resourceType": "Nope"})).is_empty());
    assert!(eval("Observation.code", &json!([1, 2])).is_empty());
}

#[test]
fn choice_elements_carry_their_concrete_type() {
    let o = observation();
    assert_eq!(types("Observation.value", &o), ["Quantity"]);
    assert_eq!(types("Observation.effective", &o), ["dateTime"]);
    assert_eq!(
        types("Observation.component.value", &o),
        ["Quantity", "string", "Period"]
    );
    assert_eq!(values("Observation.value.value", &o), [json!(72)]);
    // The JSON name of a choice is not an element name in FHIRPath.
    assert!(eval("Observation.valueQuantity", &o).is_empty());
}

#[test]
fn as_is_and_of_type() {
    let o = observation();
    assert_eq!(types("(Observation.value as Quantity)", &o), ["Quantity"]);
    assert!(eval("(Observation.value as CodeableConcept)", &o).is_empty());
    assert_eq!(
        types("Observation.component.value.as(string)", &o),
        ["string"]
    );
    assert_eq!(
        types("Observation.component.value.ofType(Period)", &o),
        ["Period"]
    );
    assert_eq!(
        types(
            "(Observation.component.value as Quantity) | (Observation.component.value as Period)",
            &o
        ),
        ["Quantity", "Period"]
    );
    assert_eq!(values("Observation.value is Quantity", &o), [json!(true)]);
    assert_eq!(
        values("Observation.value.is(FHIR.Range)", &o),
        [json!(false)]
    );
    assert_eq!(
        values("Observation.effective.is(DateTime)", &o),
        [json!(true)]
    );
    assert_eq!(
        values("Observation.status is string", &o),
        [json!(true)],
        "code derives from string"
    );
    let cond = json!({"resourceType": "Condition", "onsetAge": {"value": 40, "unit": "a"}});
    assert_eq!(types("Condition.onset.as(Age)", &cond), ["Age"]);
    assert_eq!(
        types("Condition.onset.as(Quantity)", &cond),
        ["Age"],
        "Age is a Quantity"
    );
    assert!(eval("Condition.onset.as(Range)", &cond).is_empty());
}

#[test]
fn where_with_string_comparison() {
    let p = json!({
        "resourceType": "Patient",
        "telecom": [
            {"system": "phone", "value": "555-1"},
            {"system": "email", "value": "a@b.c"},
            {"system": "phone", "value": "555-2"}
        ]
    });
    assert_eq!(
        values("Patient.telecom.where(system='phone').value", &p),
        [json!("555-1"), json!("555-2")]
    );
    assert_eq!(
        values("Patient.telecom.where(system!='phone').value", &p),
        [json!("a@b.c")]
    );
    assert_eq!(
        values(
            "Patient.telecom.where(system='phone' and value='555-2').value",
            &p
        ),
        [json!("555-2")]
    );
    assert_eq!(
        values(
            "Patient.telecom.where(value='a@b.c' or value='555-1').system",
            &p
        ),
        [json!("phone"), json!("email")]
    );
    assert!(eval("Patient.telecom.where(system='fax')", &p).is_empty());
    let shared = "Patient.telecom.where(system='email') | Person.telecom.where(system='email')";
    assert_eq!(types(shared, &p), ["ContactPoint"]);
}

#[test]
fn where_resolve_is_type_uses_the_reference_string() {
    let o = observation();
    assert_eq!(
        values("Observation.performer.where(resolve() is Patient)", &o),
        [json!({"reference": "http://example.org/fhir/Patient/p2/_history/3"})]
    );
    assert_eq!(
        values("Observation.performer.where(resolve() is Practitioner)", &o),
        [json!({"reference": "Practitioner/d1"})]
    );
    assert_eq!(
        values("Observation.subject.where(resolve() is Patient)", &o).len(),
        1
    );
    assert!(eval("Observation.subject.where(resolve() is Group)", &o).is_empty());
    let resolved = parse("Observation.subject.resolve()").unwrap();
    let items = resolved.evaluate(defs(), &o);
    assert_eq!(items[0].type_name(), "Patient");
    assert!(items[0].is_resolved_reference());
    // Navigating into what resolve() gives cannot load the target.
    assert!(eval("Observation.subject.resolve().name", &o).is_empty());
    // Unknown types, urn:uuid and contained references resolve to nothing.
    for r in [
        "Foo/1",
        "urn:uuid:1234",
        "#x",
        "Patient",
        "Patient/",
        "Patient?x=1",
    ] {
        let o = json!({"resourceType": "Observation", "subject": {"reference": r}});
        assert!(
            eval("Observation.subject.where(resolve() is Patient)", &o).is_empty(),
            "{r}"
        );
    }
}

#[test]
fn extension_by_url() {
    let o = observation();
    assert_eq!(
        values("Observation.extension('http://x/b').value", &o),
        [json!("B")]
    );
    assert_eq!(
        types("Observation.extension('http://x/a').value", &o),
        ["string"]
    );
    assert!(eval("Observation.extension('http://x/c')", &o).is_empty());
}

#[test]
fn exists_empty_not_and_first() {
    let alive = json!({"resourceType": "Patient", "deceasedBoolean": false});
    let dead = json!({"resourceType": "Patient", "deceasedDateTime": "2020-01-01"});
    let dead_bool = json!({"resourceType": "Patient", "deceasedBoolean": true});
    let unknown = json!({"resourceType": "Patient"});
    let deceased = "Patient.deceased.exists() and Patient.deceased != false";
    assert_eq!(values(deceased, &alive), [json!(false)]);
    assert_eq!(values(deceased, &dead), [json!(true)]);
    assert_eq!(values(deceased, &dead_bool), [json!(true)]);
    assert_eq!(values(deceased, &unknown), [json!(false)]);
    assert_eq!(types(deceased, &unknown), ["boolean"]);
    assert_eq!(values("Patient.name.empty()", &unknown), [json!(true)]);
    assert_eq!(
        values("Patient.name.exists().not()", &unknown),
        [json!(true)]
    );
    assert!(eval("Patient.name.not()", &unknown).is_empty());
    let o = observation();
    assert_eq!(
        values("Observation.component.first().code.text", &o),
        [json!("systolic")]
    );
    assert_eq!(
        values("Observation.component.last().code.text", &o),
        [json!("when")]
    );
    assert_eq!(
        values("Observation.component[1].code.text", &o),
        [json!("note")]
    );
    assert_eq!(values("Observation.component.count()", &o), [json!(3)]);
    assert_eq!(
        values("Observation.component.exists(code.text = 'note')", &o),
        [json!(true)]
    );
    assert_eq!(values("Observation.status.hasValue()", &o), [json!(true)]);
}

#[test]
fn unions_deduplicate_the_same_element() {
    let o = observation();
    assert_eq!(
        types(
            "Observation.code | Observation.code | Observation.subject",
            &o
        ),
        ["CodeableConcept", "Reference"]
    );
    assert_eq!(values("'a' | 'b' | 'a'", &o), [json!("a"), json!("b")]);
    assert_eq!(values("{} | true", &o), [json!(true)]);
}

#[test]
fn content_references_and_nested_backbones() {
    let q = json!({
        "resourceType": "Questionnaire",
        "item": [{
            "linkId": "1", "type": "group",
            "item": [{"linkId": "1.1", "type": "string", "code": [{"code": "x"}],
                      "item": [{"linkId": "1.1.1", "type": "string"}]}]
        }]
    });
    assert_eq!(
        values("Questionnaire.item.item.item.linkId", &q),
        [json!("1.1.1")]
    );
    assert_eq!(types("Questionnaire.item.item.code", &q), ["Coding"]);
    let items = parse("Questionnaire.item.item").unwrap();
    let items = items.evaluate(defs(), &q);
    assert_eq!(items[0].backbone(), Some(("Questionnaire", "item")));
}

#[test]
fn bundle_entry_resources_are_typed_by_resource_type() {
    let b = json!({
        "resourceType": "Bundle", "type": "document",
        "entry": [{"resource": {"resourceType": "Composition", "title": "t"}},
                  {"resource": {"resourceType": "Patient"}}]
    });
    assert_eq!(types("Bundle.entry[0].resource", &b), ["Composition"]);
    assert_eq!(values("Bundle.entry.resource.title", &b), [json!("t")]);
}

#[test]
fn context_and_resource_variables_for_components() {
    let seq = json!({
        "resourceType": "MolecularSequence",
        "referenceSeq": {"chromosome": {"text": "1"}},
        "variant": [{"start": 10, "end": 20}, {"start": 30, "end": 40}]
    });
    let variants = parse("MolecularSequence.variant").unwrap();
    let variants = variants.evaluate(defs(), &seq);
    assert_eq!(variants.len(), 2);
    let start = parse("start").unwrap();
    let chromosome = parse("%resource.referenceSeq.chromosome").unwrap();
    let this = parse("$this.end").unwrap();
    let focus = std::slice::from_ref(&variants[1]);
    let root = resource_item(defs(), &seq).unwrap();
    let got = start.evaluate_on(defs(), &root, focus);
    assert_eq!(
        (got[0].type_name(), &*got[0].value),
        ("integer", &json!(30))
    );
    let got = chromosome.evaluate_on(defs(), &root, focus);
    assert_eq!(got[0].type_name(), "CodeableConcept");
    let got = this.evaluate_on(defs(), &root, focus);
    assert_eq!(&*got[0].value, &json!(40));
}

#[test]
fn pruning_keeps_only_branches_for_the_type() {
    let src = "AllergyIntolerance.patient | CarePlan.subject.where(resolve() is Patient) | (Resource.id as string)";
    let expr = parse(src).unwrap();
    let care_plan = expr.for_resource_type(defs(), "CarePlan");
    assert_eq!(
        care_plan,
        parse("$this.subject.where(resolve() is Patient) | ($this.id as string)").unwrap()
    );
    assert!(parse("Patient.name")
        .unwrap()
        .for_resource_type(defs(), "Observation")
        .is_empty());
    let cp = json!({"resourceType": "CarePlan", "subject": {"reference": "Patient/1"}});
    let full: Vec<_> = expr
        .evaluate(defs(), &cp)
        .into_iter()
        .map(|i| i.value.into_owned())
        .collect();
    let pruned: Vec<_> = care_plan
        .evaluate(defs(), &cp)
        .into_iter()
        .map(|i| i.value.into_owned())
        .collect();
    assert_eq!(full, pruned);
}

#[test]
fn literals_and_escapes() {
    let o = json!({"resourceType": "Patient"});
    assert_eq!(
        values(r"'it\'s' | 'tab\t' | '\u00e9'", &o),
        [json!("it's"), json!("tab\t"), json!("é")]
    );
    assert_eq!(values("1 = 1.0", &o), [json!(true)]);
    assert_eq!(values("true != false", &o), [json!(true)]);
    assert_eq!(values("true implies {}", &o), Vec::<Value>::new());
    assert_eq!(values("false implies {}", &o), [json!(true)]);
    assert_eq!(values("true xor false", &o), [json!(true)]);
    assert_eq!(values("`Patient`.id.empty()", &o), [json!(true)]);
}

#[test]
fn evaluation_never_panics_on_odd_shapes() {
    let odd = [
        json!({"resourceType": "Observation", "code": "not an object", "valueQuantity": [1, 2]}),
        json!({"resourceType": "Observation", "component": [null, 1, "x", {"valueQuantity": null}]}),
        json!({"resourceType": "Patient", "name": {"given": [null, 5]}, "telecom": [{"system": 1}]}),
        json!({"resourceType": 5}),
        json!(null),
    ];
    for p in defs().search_params() {
        let Some(src) = &p.expression else { continue };
        let expr = parse(src).unwrap();
        for r in &odd {
            let _ = expr.evaluate(defs(), r);
        }
    }
}
