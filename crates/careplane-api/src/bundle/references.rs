//! References inside Bundle entries: collecting conditional ones and rewriting `urn:uuid:`
//! fullUrls (and resolved conditions) to the `Type/id` the transaction gave them.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

/// Every `reference` string in `value` (a resource, walked through all nesting).
pub fn references(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(fields) => {
            for (name, child) in fields {
                match (name.as_str(), child) {
                    ("reference", Value::String(r)) => {
                        out.insert(r.clone());
                    }
                    _ => references(child, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| references(item, out)),
        _ => {}
    }
}

/// Replaces every `reference` found in `targets` by its new value.
pub fn rewrite(value: &mut Value, targets: &HashMap<String, String>) {
    match value {
        Value::Object(fields) => {
            for (name, child) in fields.iter_mut() {
                match (name.as_str(), child) {
                    ("reference", Value::String(r)) => {
                        if let Some(new) = targets.get(r.as_str()) {
                            *r = new.clone();
                        }
                    }
                    (_, child) => rewrite(child, targets),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| rewrite(item, targets)),
        _ => {}
    }
}

/// `Patient?identifier=…`: a reference naming its target by search criteria.
pub fn is_conditional(reference: &str) -> bool {
    match reference.split_once('?') {
        Some((rt, _)) => {
            !rt.is_empty() && !rt.contains('/') && rt.starts_with(|c: char| c.is_ascii_uppercase())
        }
        None => false,
    }
}

/// A placeholder that only has meaning inside the Bundle (`urn:uuid:`, `urn:oid:`).
pub fn is_placeholder(reference: &str) -> bool {
    reference.starts_with("urn:uuid:") || reference.starts_with("urn:oid:")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rewrites_nested_references_and_leaves_others() {
        let mut body = json!({
            "subject": {"reference": "urn:uuid:a", "display": "urn:uuid:a"},
            "performer": [{"reference": "Practitioner/7"}, {"reference": "urn:uuid:b"}],
            "contained": [{"resourceType": "Provenance", "target": [{"reference": "urn:uuid:a"}]}]
        });
        let targets = HashMap::from([
            ("urn:uuid:a".to_string(), "Patient/1".to_string()),
            ("urn:uuid:b".to_string(), "Practitioner/2".to_string()),
        ]);
        rewrite(&mut body, &targets);
        assert_eq!(body["subject"]["reference"], "Patient/1");
        assert_eq!(
            body["subject"]["display"], "urn:uuid:a",
            "only references change"
        );
        assert_eq!(body["performer"][0]["reference"], "Practitioner/7");
        assert_eq!(body["performer"][1]["reference"], "Practitioner/2");
        assert_eq!(body["contained"][0]["target"][0]["reference"], "Patient/1");
    }

    #[test]
    fn tells_conditional_references_and_placeholders_apart() {
        assert!(is_conditional("Patient?identifier=urn:mrn|1"));
        assert!(!is_conditional("Patient/1"));
        assert!(!is_conditional("http://x.org/fhir/Patient?x=1"));
        assert!(is_placeholder(
            "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"
        ));
        assert!(!is_placeholder("Patient/1"));
    }

    #[test]
    fn collects_every_reference_once() {
        let body =
            json!({"a": {"reference": "X/1"}, "b": [{"reference": "X/1"}, {"reference": "Y?z=1"}]});
        let mut found = BTreeSet::new();
        references(&body, &mut found);
        assert_eq!(found.into_iter().collect::<Vec<_>>(), ["X/1", "Y?z=1"]);
    }
}
