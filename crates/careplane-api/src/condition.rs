//! Conditions (`If-None-Exist`, `ifNoneExist`, conditional update/delete, conditional references
//! `Patient?identifier=…`): full search criteria over one type, parsed strictly. An unknown
//! parameter in a condition would widen it to "everything", so it is refused, never ignored.

use careplane_fhir::search::query::{self, ParseOptions};
use careplane_fhir::{Definitions, IssueCode, ResourceType};
use careplane_store::Condition;

use crate::error::{ApiError, Result};

/// Parses `[Type?]criteria` as a condition on `resource_type`.
pub fn parse_condition(
    defs: &Definitions,
    resource_type: &ResourceType,
    criteria: &str,
) -> Result<Condition> {
    let query = criteria.split_once('?').map_or(criteria, |(_, q)| q);
    let mut params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    if params.is_empty() {
        return Err(ApiError::bad_request(
            IssueCode::Invalid,
            format!("Condition '{criteria}' has no search criteria"),
        ));
    }
    if let Some((name, _)) = params.iter().find(|(name, _)| {
        query::RESULT_PARAMETERS.contains(&name.split(':').next().unwrap_or_default())
    }) {
        return Err(ApiError::bad_request(
            IssueCode::Invalid,
            format!("Condition '{criteria}': '{name}' is not a search criterion"),
        ));
    }
    let options = ParseOptions {
        strict: true,
        ..ParseOptions::default()
    };
    let search =
        query::parse(defs, &[resource_type.to_string()], &params, options).map_err(|e| {
            ApiError::bad_request(e.code, format!("Condition '{criteria}': {}", e.message))
        })?;
    // The same criteria in any order name the same lock.
    params.sort();
    let criteria = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&params)
        .finish();
    Ok(Condition { criteria, search })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(criteria: &str) -> Result<Condition> {
        let defs = Definitions::r4().unwrap();
        let rt = ResourceType::parse(defs, "Patient").unwrap();
        parse_condition(defs, &rt, criteria)
    }

    #[test]
    fn full_criteria_are_accepted_and_canonicalised() {
        let a = parse("Patient?identifier=urn:mrn|42&birthdate=1980").unwrap();
        let b = parse("birthdate=1980&identifier=urn%3Amrn%7C42").unwrap();
        assert_eq!(a.criteria, b.criteria);
        assert_eq!(a.search.filters.len(), 2);
        assert!(parse("name=smith").is_ok());
    }

    #[test]
    fn unknown_empty_or_result_parameters_are_rejected_not_ignored() {
        assert!(parse("nope=1").is_err());
        assert!(parse("").is_err());
        assert!(parse("Patient?").is_err());
        assert!(parse("name=x&_count=1").is_err());
        assert!(parse("_id=a&_sort=name").is_err());
        assert!(parse("birthdate=notadate").is_err());
    }
}
