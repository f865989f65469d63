//! The official Patient CompartmentDefinition: which reference parameters put a resource in a
//! patient's compartment (compartment search and `Patient/{id}/$everything`).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde_json::Value;

use super::query::Filter;

const PATIENT_COMPARTMENT: &str = include_str!("../../data/r4/compartmentdefinition-patient.json");

/// Resource type -> the parameters that link it to the patient (types with none are absent).
pub fn patient_compartment() -> &'static BTreeMap<String, Vec<String>> {
    static MEMBERS: OnceLock<BTreeMap<String, Vec<String>>> = OnceLock::new();
    MEMBERS.get_or_init(|| {
        let definition: Value = serde_json::from_str(PATIENT_COMPARTMENT).unwrap_or(Value::Null);
        let mut members = BTreeMap::new();
        for resource in definition["resource"].as_array().into_iter().flatten() {
            let (Some(code), Some(params)) =
                (resource["code"].as_str(), resource["param"].as_array())
            else {
                continue;
            };
            let params: Vec<String> = params
                .iter()
                .filter_map(Value::as_str)
                // `{def}` means "the patient itself", handled by `include_self`.
                .filter(|p| !p.starts_with('{'))
                .map(str::to_string)
                .collect();
            if !params.is_empty() {
                members.insert(code.to_string(), params);
            }
        }
        members
    })
}

/// Resources of `types` (every member type when empty) in Patient `id`'s compartment; with
/// `include_self`, the Patient itself too.
pub fn patient_compartment_filter(id: &str, types: &[String], include_self: bool) -> Filter {
    let members = patient_compartment()
        .iter()
        .filter(|(ty, _)| types.is_empty() || types.contains(ty))
        .map(|(ty, params)| (ty.clone(), params.clone()))
        .collect();
    Filter::Compartment {
        compartment_type: "Patient".into(),
        id: id.to_string(),
        members,
        include_self,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_official_definition_is_loaded() {
        let members = patient_compartment();
        assert_eq!(members["Observation"], vec!["subject", "performer"]);
        assert_eq!(members["Encounter"], vec!["subject"]);
        assert!(!members.contains_key("Medication"), "no link to a patient");
        assert!(members.len() > 50);
    }
}
