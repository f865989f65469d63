//! Conditions (`If-None-Exist`, `ifNoneExist`, conditional references `Patient?identifier=…`)
//! as the store can resolve them before full search: `_id=x` or `identifier=[system|]value`.
//! Anything else is refused with 400, never ignored.

use careplane_fhir::{Id, IssueCode};
use careplane_store::Condition;

use crate::error::{ApiError, Result};

/// Parses `[Type?]_id=x` or `[Type?]identifier=[system|]value`.
pub fn parse_condition(criteria: &str) -> Result<Condition> {
    let query = criteria.split_once('?').map_or(criteria, |(_, q)| q);
    let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let unsupported = || {
        ApiError::bad_request(
            IssueCode::NotSupported,
            format!("Condition '{criteria}': only a single _id=… or identifier=[system|]value is supported"),
        )
    };
    let [(name, value)] = params.as_slice() else {
        return Err(unsupported());
    };
    match name.as_str() {
        "_id" => Id::parse(value).map(Condition::Id).ok_or_else(|| {
            ApiError::bad_request(
                IssueCode::Value,
                format!("Condition: '{value}' is not a valid id"),
            )
        }),
        "identifier" => {
            let (system, value) = match value.split_once('|') {
                Some((system, value)) => (Some(system.to_string()), value.to_string()),
                None => (None, value.clone()),
            };
            if value.is_empty() {
                return Err(ApiError::bad_request(
                    IssueCode::Value,
                    "Condition: the identifier value is empty",
                ));
            }
            Ok(Condition::Identifier { system, value })
        }
        _ => Err(unsupported()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifier_conditions_keep_an_explicitly_empty_system() {
        assert_eq!(
            parse_condition("identifier=urn:mrn|42").unwrap(),
            Condition::Identifier {
                system: Some("urn:mrn".into()),
                value: "42".into()
            }
        );
        assert_eq!(
            parse_condition("Patient?identifier=%7C42").unwrap(),
            Condition::Identifier {
                system: Some(String::new()),
                value: "42".into()
            }
        );
        assert_eq!(
            parse_condition("identifier=42").unwrap(),
            Condition::Identifier {
                system: None,
                value: "42".into()
            }
        );
    }

    #[test]
    fn unsupported_criteria_are_rejected_not_ignored() {
        assert!(parse_condition("name=smith").is_err());
        assert!(parse_condition("identifier=a&_id=b").is_err());
        assert!(parse_condition("_id=bad id").is_err());
    }
}
