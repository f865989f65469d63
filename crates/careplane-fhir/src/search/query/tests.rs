use super::*;
use crate::search::index::{extract, IndexRow, IndexValue};

fn defs() -> &'static Definitions {
    Definitions::r4().unwrap()
}

fn pairs(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded_parse(query)
}

mod url {
    /// A tiny stand-in for form decoding: the test queries are written unencoded.
    pub fn form_urlencoded_parse(query: &str) -> Vec<(String, String)> {
        query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (p.to_string(), String::new()),
            })
            .collect()
    }
}

fn parse_for(ty: &str, query: &str) -> Result<SearchRequest> {
    parse(
        defs(),
        &[ty.to_string()],
        &pairs(query),
        ParseOptions::default(),
    )
}

fn strict(ty: &str, query: &str) -> Result<SearchRequest> {
    parse(
        defs(),
        &[ty.to_string()],
        &pairs(query),
        ParseOptions {
            strict: true,
            ..ParseOptions::default()
        },
    )
}

fn only_filter(request: &SearchRequest) -> &Filter {
    assert_eq!(request.filters.len(), 1, "{request:?}");
    &request.filters[0]
}

#[test]
fn string_values_are_normalized_prefixes_unless_exact() {
    let r = parse_for("Patient", "name=Élodie,SMITH").unwrap();
    let Filter::Match { target, values, .. } = only_filter(&r) else {
        panic!()
    };
    assert_eq!(
        target,
        &Target::Index {
            code: "name".into(),
            kind: ParamKind::String
        }
    );
    assert_eq!(
        values,
        &vec![
            Predicate::String(StringMatch::StartsWith("elodie".into())),
            Predicate::String(StringMatch::StartsWith("smith".into()))
        ]
    );
    let r = parse_for("Patient", "family:exact=Smith").unwrap();
    let Filter::Match { values, .. } = only_filter(&r) else {
        panic!()
    };
    assert_eq!(
        values,
        &vec![Predicate::String(StringMatch::Exact("Smith".into()))]
    );
}

#[test]
fn token_forms() {
    let r = parse_for("Observation", "code=http://loinc.org|8302-2,|x,sys|,plain").unwrap();
    let Filter::Match { values, negate, .. } = only_filter(&r) else {
        panic!()
    };
    assert!(!negate);
    assert_eq!(
        values,
        &vec![
            Predicate::Token {
                system: SystemMatch::Is("http://loinc.org".into()),
                code: Some("8302-2".into())
            },
            Predicate::Token {
                system: SystemMatch::None,
                code: Some("x".into())
            },
            Predicate::Token {
                system: SystemMatch::Is("sys".into()),
                code: None
            },
            Predicate::Token {
                system: SystemMatch::Any,
                code: Some("plain".into())
            },
        ]
    );
    let r = parse_for("Observation", "status:not=final").unwrap();
    assert!(matches!(
        only_filter(&r),
        Filter::Match { negate: true, .. }
    ));
}

#[test]
fn escaped_commas_and_pipes_are_literal() {
    let r = parse_for("Patient", r"family=a\,b").unwrap();
    let Filter::Match { values, .. } = only_filter(&r) else {
        panic!()
    };
    assert_eq!(values.len(), 1);
}

#[test]
fn date_prefixes_and_precision() {
    let r = parse_for("Observation", "date=ge2015-01&date=lt2016").unwrap();
    assert_eq!(r.filters.len(), 2);
    let Filter::Match { values, .. } = &r.filters[0] else {
        panic!()
    };
    let Predicate::Date { prefix, range } = &values[0] else {
        panic!()
    };
    assert_eq!(*prefix, Prefix::Ge);
    assert_eq!(range.low, 1_420_070_400_000);
    assert_eq!(range.high, 1_422_748_799_999);
}

#[test]
fn malformed_values_are_always_errors() {
    for q in [
        "date=2015-13-01",
        "date=xx2015",
        "value-quantity=abc",
        "value-quantity=gt5|a",
        "_count=-1",
        "_count=ten",
        "_total=some",
        "_summary=maybe",
        "subject=Nope/1",
        "code=",
    ] {
        let e = parse_for("Observation", q).unwrap_err();
        assert_eq!(e.code, IssueCode::Invalid, "{q}: {e}");
    }
}

#[test]
fn known_parameters_used_unsupportedly_are_refused_even_when_lenient() {
    for q in [
        "code:below=123",
        "code:in=http://vs",
        "date:exact=2015",
        "subject:above=Patient/1",
        "subject:Patient.name:phonetic=x",
        "_include=*",
        "_contained=true",
        "_text=cancer",
        "subject.organization.partof.partof.name=x",
        "_sort=code-value-quantity",
    ] {
        let e = parse_for("Observation", q).unwrap_err();
        assert!(
            matches!(e.code, IssueCode::NotSupported | IssueCode::Invalid),
            "{q}: {e:?}"
        );
    }
}

#[test]
fn unknown_parameters_are_reported_when_lenient_and_refused_when_strict() {
    let r = parse_for("Patient", "foo=bar&name=x").unwrap();
    assert_eq!(r.ignored, vec!["foo".to_string()]);
    assert_eq!(r.applied, vec![("name".to_string(), "x".to_string())]);
    let e = strict("Patient", "foo=bar&name=x").unwrap_err();
    assert!(e.message.contains("foo"), "{e}");
}

#[test]
fn chains_resolve_target_types() {
    let r = parse_for("Observation", "subject:Patient.name=peter").unwrap();
    let Filter::Chain {
        code,
        target_types,
        filter,
    } = only_filter(&r)
    else {
        panic!()
    };
    assert_eq!(code, "subject");
    assert_eq!(target_types, &vec!["Patient".to_string()]);
    assert!(matches!(**filter, Filter::Match { .. }));
    // Without a type, only the targets that have the parameter take part.
    let r = parse_for("Observation", "subject.birthdate=2000").unwrap();
    let Filter::Chain { target_types, .. } = only_filter(&r) else {
        panic!()
    };
    assert!(target_types.contains(&"Patient".to_string()));
    assert!(!target_types.contains(&"Device".to_string()));
    // Two levels.
    let r = parse_for("Observation", "subject:Patient.organization.name=acme").unwrap();
    let Filter::Chain { filter, .. } = only_filter(&r) else {
        panic!()
    };
    assert!(matches!(**filter, Filter::Chain { .. }));
    // A non-reference cannot chain.
    assert!(parse_for("Observation", "code.name=x").is_err());
}

#[test]
fn has_parses_reverse_chains() {
    let r = parse_for("Patient", "_has:Observation:patient:code=1234-5").unwrap();
    let Filter::Has {
        source_type, code, ..
    } = only_filter(&r)
    else {
        panic!()
    };
    assert_eq!(source_type, "Observation");
    assert_eq!(code, "patient");
    assert!(parse_for("Patient", "_has:Observation:code:code=1").is_err());
    assert!(parse_for("Patient", "_has:Observation").is_err());
}

#[test]
fn reference_forms() {
    let r = parse_for(
        "Observation",
        "subject=Patient/1,2,http://x.org/fhir/Patient/3",
    )
    .unwrap();
    let Filter::Match { values, .. } = only_filter(&r) else {
        panic!()
    };
    assert_eq!(
        values[0],
        Predicate::Reference {
            target_type: Some("Patient".into()),
            id: Some("1".into()),
            url: None
        }
    );
    assert_eq!(
        values[1],
        Predicate::Reference {
            target_type: None,
            id: Some("2".into()),
            url: None
        }
    );
    assert_eq!(
        values[2],
        Predicate::Reference {
            target_type: Some("Patient".into()),
            id: Some("3".into()),
            url: Some("http://x.org/fhir/Patient/3".into())
        }
    );
    let r = parse_for("Observation", "subject:identifier=urn:mrn|42").unwrap();
    let Filter::Match { target, .. } = only_filter(&r) else {
        panic!()
    };
    assert_eq!(
        target,
        &Target::Index {
            code: "subject:identifier".into(),
            kind: ParamKind::Token
        }
    );
    assert!(parse_for("Observation", "subject:Patient=Group/1").is_err());
}

#[test]
fn a_bare_id_names_the_only_type_a_parameter_can_refer_to() {
    let value = |resource: &str, query: &str| {
        let r = parse_for(resource, query).unwrap();
        let Filter::Match { values, .. } = only_filter(&r) else {
            panic!()
        };
        values[0].clone()
    };
    // Observation.patient refers to Patient only: `patient=7` is `patient=Patient/7`.
    assert_eq!(
        value("Observation", "patient=7"),
        Predicate::Reference {
            target_type: Some("Patient".into()),
            id: Some("7".into()),
            url: None
        }
    );
    // Observation.subject can refer to Patient, Group, Device or Location: no type is assumed.
    assert_eq!(
        value("Observation", "subject=7"),
        Predicate::Reference {
            target_type: None,
            id: Some("7".into()),
            url: None
        }
    );
}

#[test]
fn number_precision_ranges() {
    let r = parse_for("RiskAssessment", "probability=0.8").unwrap();
    let Filter::Match { values, .. } = only_filter(&r) else {
        panic!()
    };
    let Predicate::Number { low, high, .. } = values[0] else {
        panic!()
    };
    assert!((low - 0.75).abs() < 1e-9 && (high - 0.85).abs() < 1e-9);
}

#[test]
fn quantity_with_units() {
    // A UCUM unit outside the conversion table is compared as written.
    let r = parse_for(
        "Observation",
        "value-quantity=gt5.4|http://unitsofmeasure.org|mmol/L",
    )
    .unwrap();
    let Filter::Match { target, values, .. } = only_filter(&r) else {
        panic!()
    };
    assert_eq!(
        target,
        &Target::Index {
            code: "value-quantity".into(),
            kind: ParamKind::Quantity
        }
    );
    assert!(matches!(
        &values[0],
        Predicate::Quantity { prefix: Prefix::Gt, system: Some(s), code: Some(c), .. }
            if s == "http://unitsofmeasure.org" && c == "mmol/L"
    ));
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * b.abs().max(1.0)
}

/// The values of a one-parameter Observation `value-quantity` search, after checking that it
/// is compared on the canonical-unit rows.
fn canonical_quantity_values(query: &str) -> Vec<Predicate> {
    let r = parse_for("Observation", query).unwrap();
    let Filter::Match { target, values, .. } = only_filter(&r) else {
        panic!()
    };
    assert_eq!(
        target,
        &Target::Index {
            code: "value-quantity:canonical".into(),
            kind: ParamKind::Quantity
        }
    );
    values.clone()
}

#[test]
fn ucum_quantities_are_compared_in_the_canonical_unit() {
    let values = canonical_quantity_values("value-quantity=5400|http://unitsofmeasure.org|mg");
    let Predicate::Quantity {
        prefix,
        value,
        low,
        high,
        system,
        code,
    } = &values[0]
    else {
        panic!()
    };
    assert_eq!(*prefix, Prefix::Eq);
    assert_eq!(*value, 5.4);
    // The precision of "5400" (±0.5 mg) converts with the value.
    assert!(close(*low, 5.3995) && close(*high, 5.4005), "{low} {high}");
    assert_eq!(system.as_deref(), Some("http://unitsofmeasure.org"));
    assert_eq!(code.as_deref(), Some("g"));

    // Without a system the code is a label: compared as written.
    let r = parse_for("Observation", "value-quantity=5.4||g").unwrap();
    assert!(
        matches!(only_filter(&r), Filter::Match { target: Target::Index { code, .. }, .. } if code == "value-quantity")
    );

    // Mixed values: the OR of both lookups.
    let r = parse_for(
        "Observation",
        "value-quantity=5.4|http://unitsofmeasure.org|g,7||kg",
    )
    .unwrap();
    let Filter::AnyOf(parts) = only_filter(&r) else {
        panic!("{r:?}")
    };
    let codes: Vec<_> = parts
        .iter()
        .map(|f| match f {
            Filter::Match {
                target: Target::Index { code, .. },
                values,
                ..
            } => (code.as_str(), values.len()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        codes,
        [("value-quantity", 1), ("value-quantity:canonical", 1)]
    );

    // Composite quantity components too.
    let r = parse_for(
        "Observation",
        "component-code-value-quantity=http://loinc.org|8302-2$gt1.5|http://unitsofmeasure.org|m",
    )
    .unwrap();
    let Filter::Match { values, .. } = only_filter(&r) else {
        panic!()
    };
    let Predicate::Composite(parts) = &values[0] else {
        panic!()
    };
    assert_eq!(
        parts[1].0,
        Target::Index {
            code: "component-code-value-quantity$1:canonical".into(),
            kind: ParamKind::Quantity
        }
    );
    assert!(parse_for(
        "Observation",
        "value-quantity=1e307|http://unitsofmeasure.org|wk"
    )
    .is_err());
}

#[test]
fn compound_ucum_units_are_compared_in_the_canonical_unit() {
    let values = canonical_quantity_values("value-quantity=180|http://unitsofmeasure.org|mg/dL");
    let Predicate::Quantity {
        value,
        low,
        high,
        code,
        ..
    } = &values[0]
    else {
        panic!()
    };
    assert_eq!((*value, code.as_deref()), (1.8, Some("g.L-1")));
    // ±0.5 mg/dL.
    assert!(close(*low, 1.795) && close(*high, 1.805), "{low} {high}");
}

/// Whether a one-value quantity search finds a resource's index rows, compared as the stores
/// compare: `eq` within `[low, high)`, the other prefixes with the value.
fn quantity_search_finds(query: &str, rows: &[IndexRow]) -> bool {
    let r = parse_for("Observation", query).unwrap();
    let Filter::Match {
        target: Target::Index { code: param, .. },
        values,
        ..
    } = only_filter(&r)
    else {
        panic!("{r:?}")
    };
    let [Predicate::Quantity {
        prefix,
        value,
        low,
        high,
        system,
        code,
    }] = values.as_slice()
    else {
        panic!("{values:?}")
    };
    rows.iter().any(|row| {
        let IndexValue::Quantity {
            value: stored,
            system: stored_system,
            code: stored_code,
            ..
        } = &row.value
        else {
            return false;
        };
        row.param == *param
            && stored_system == system
            && stored_code == code
            && match prefix {
                Prefix::Eq => low <= stored && stored < high,
                Prefix::Gt => stored > value,
                Prefix::Ge => stored >= value,
                Prefix::Lt => stored < value,
                Prefix::Le => stored <= value,
                other => panic!("{other:?}"),
            }
    })
}

#[test]
fn compound_units_meet_between_index_and_search() {
    let rows_of = |value: f64, code: &str| {
        extract(
            defs(),
            &serde_json::json!({
                "resourceType": "Observation", "status": "final", "code": {"text": "x"},
                "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org", "code": code}
            }),
        )
    };
    let glucose = rows_of(180.0, "mg/dL");
    let creatinine = rows_of(0.9, "mg/dL");
    let leukocytes = rows_of(7.2, "10*3/uL");
    let grams_per_litre = rows_of(1.8, "g/L");
    let finds = |value: &str, rows: &[IndexRow]| {
        quantity_search_finds(
            &format!("value-quantity={value}").replace("UCUM", "http://unitsofmeasure.org"),
            rows,
        )
    };
    assert!(finds("1.8|UCUM|g/L", &glucose));
    assert!(finds("180|UCUM|mg/dL", &glucose));
    assert!(finds("0.18|UCUM|g/dL", &glucose));
    assert!(finds("180|UCUM|mg/dL", &grams_per_litre));
    assert!(!finds("1.8|UCUM|g/dL", &glucose), "another value");
    assert!(!finds("1.8|UCUM|g", &glucose), "another dimension");
    assert!(finds("7.2|UCUM|10*9/L", &leukocytes));
    assert!(finds("7200|UCUM|/uL", &leukocytes));
    assert!(!finds("7.2|UCUM|10*6/L", &leukocytes));
    // 0.9 mg/dL is exactly 0.009 g/L: not above it.
    assert!(!finds("gt0.009|UCUM|g/L", &creatinine));
    assert!(finds("ge0.009|UCUM|g/L", &creatinine));
    assert!(finds("le0.009|UCUM|g/L", &creatinine));
    assert!(finds("lt0.0091|UCUM|g/L", &creatinine));
}

#[test]
fn of_type_looks_up_type_code_and_value() {
    let r = parse_for(
        "Patient",
        "identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|12345",
    )
    .unwrap();
    let Filter::Match {
        target,
        values,
        negate,
    } = only_filter(&r)
    else {
        panic!()
    };
    assert_eq!(
        target,
        &Target::Index {
            code: "identifier:of-type".into(),
            kind: ParamKind::Token
        }
    );
    assert!(!negate);
    assert_eq!(
        values,
        &vec![Predicate::Token {
            system: SystemMatch::Is("http://terminology.hl7.org/CodeSystem/v2-0203".into()),
            code: Some("MR|12345".into()),
        }]
    );
    // An escaped `|` belongs to the value.
    let r = parse_for("Patient", "identifier:of-type=http://s|MR|a\\|b").unwrap();
    let Filter::Match { values, .. } = only_filter(&r) else {
        panic!()
    };
    assert!(matches!(&values[0], Predicate::Token { code: Some(c), .. } if c == "MR|a|b"));
    for bad in [
        "identifier:of-type=MR|12345",
        "identifier:of-type=12345",
        "identifier:of-type=|MR|12345",
        "identifier:of-type=http://s||12345",
        "identifier:of-type=http://s|MR|",
        "identifier:of-type=http://s|MR|1|2",
    ] {
        let err = parse_for("Patient", bad).unwrap_err();
        assert_eq!(err.code, IssueCode::Invalid, "{bad}");
        assert!(
            err.message.contains("system|code|value")
                || err.message.contains("[system]|[code]|[value]"),
            "{bad}: {}",
            err.message
        );
    }
    let err = parse_for("Patient", "gender:of-type=http://s|MR|1").unwrap_err();
    assert!(
        err.message.contains("identifier parameters"),
        "{}",
        err.message
    );
}

#[test]
fn composites_split_on_dollar() {
    let r = parse_for(
        "Observation",
        "code-value-quantity=http://loinc.org|8480-6$gt100",
    )
    .unwrap();
    let Filter::Match { values, .. } = only_filter(&r) else {
        panic!()
    };
    let Predicate::Composite(parts) = &values[0] else {
        panic!()
    };
    assert_eq!(parts.len(), 2);
    assert_eq!(
        parts[1].0,
        Target::Index {
            code: "code-value-quantity$1".into(),
            kind: ParamKind::Quantity
        }
    );
    assert!(parse_for("Observation", "code-value-quantity=onlyone").is_err());
}

#[test]
fn result_parameters() {
    let r = parse_for(
        "MedicationRequest",
        "_count=5000&_sort=-authoredon,_id&_include=MedicationRequest:medication&_revinclude=Provenance:target&_total=accurate&_summary=count&_elements=id,status",
    )
    .unwrap();
    assert_eq!(r.count, Some(1000), "capped at the server maximum");
    assert_eq!(r.sort.len(), 2);
    assert!(r.sort[0].descending);
    assert_eq!(r.includes[0].code, "medication");
    assert_eq!(r.revincludes[0].source_type, "Provenance");
    assert_eq!(r.total, Total::Accurate);
    assert_eq!(r.summary, Some(Summary::Count));
    assert_eq!(r.elements, Some(vec!["id".into(), "status".into()]));
    assert!(parse_for("MedicationRequest", "_include=MedicationRequest:status").is_err());
    assert!(parse_for("MedicationRequest", "_include=Nope:x").is_err());
}

#[test]
fn system_search_takes_types_from_type_param() {
    let r = parse(
        defs(),
        &[],
        &pairs("_type=Patient,Observation&_id=a"),
        ParseOptions::default(),
    )
    .unwrap();
    assert_eq!(
        r.types,
        vec!["Patient".to_string(), "Observation".to_string()]
    );
    assert!(parse(defs(), &[], &pairs("_type=Nope"), ParseOptions::default()).is_err());
}

#[test]
fn missing_modifier() {
    let r = parse_for("Patient", "birthdate:missing=true").unwrap();
    assert!(matches!(
        only_filter(&r),
        Filter::Missing { missing: true, .. }
    ));
    assert!(parse_for("Patient", "birthdate:missing=maybe").is_err());
}
