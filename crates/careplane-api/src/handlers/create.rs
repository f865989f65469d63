//! `POST /{type}`: create with a server-assigned id; `If-None-Exist` makes it conditional.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use careplane_fhir::{Id, IssueCode};
use careplane_store::{Condition, CreateOutcome, TenantId};

use super::{check_body, resource_response};
use crate::error::{ApiError, Result};
use crate::extract::{BaseUrl, FhirBody, Format, Preconditions, Prefer, Target};
use crate::state::AppState;

pub async fn create(
    State(state): State<AppState>,
    target: Target,
    format: Format,
    prefer: Prefer,
    preconditions: Preconditions,
    base: BaseUrl,
    FhirBody(body): FhirBody,
) -> Result<Response> {
    let rt = &target.resource_type;
    check_body(&state, rt, &body, None)?;
    let condition = preconditions
        .if_none_exist
        .as_deref()
        .map(parse_condition)
        .transpose()?;
    let tenant = TenantId::default_tenant();
    match state
        .store
        .create(&tenant, rt, body, condition.as_ref())
        .await?
    {
        CreateOutcome::Created(stored) => {
            resource_response(StatusCode::CREATED, &stored, format, &prefer, Some(&base))
        }
        CreateOutcome::Existing(stored) => {
            resource_response(StatusCode::OK, &stored, format, &prefer, None)
        }
    }
}

/// `If-None-Exist` criteria supported before full search: `_id=x` or `identifier=[system]|value`.
fn parse_condition(criteria: &str) -> Result<Condition> {
    let query = criteria.split_once('?').map_or(criteria, |(_, q)| q);
    let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let unsupported = || {
        ApiError::bad_request(
            IssueCode::NotSupported,
            format!("If-None-Exist '{criteria}': only a single _id=… or identifier=[system|]value is supported"),
        )
    };
    let [(name, value)] = params.as_slice() else {
        return Err(unsupported());
    };
    match name.as_str() {
        "_id" => Id::parse(value).map(Condition::Id).ok_or_else(|| {
            ApiError::bad_request(
                IssueCode::Value,
                format!("If-None-Exist: '{value}' is not a valid id"),
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
                    "If-None-Exist: the identifier value is empty",
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
