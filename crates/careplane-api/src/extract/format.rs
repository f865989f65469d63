//! Response format negotiation: `_format` wins over `Accept`; JSON only, XML gets 406.

use axum::extract::FromRequestParts;
use axum::http::header::ACCEPT;
use axum::http::request::Parts;

use super::QueryParams;
use crate::error::ApiError;

/// How to render the response body.
#[derive(Debug, Clone, Copy, Default)]
pub struct Format {
    pub pretty: bool,
}

const JSON_TYPES: &[&str] = &[
    "application/fhir+json",
    "application/json",
    "application/json+fhir",
    "json",
    "*/*",
    "application/*",
];

fn is_xml(mime: &str) -> bool {
    matches!(
        mime,
        "xml"
            | "text/xml"
            | "application/xml"
            | "application/fhir+xml"
            | "application/xml+fhir"
            | "html"
            | "text/html"
    )
}

impl<S: Send + Sync> FromRequestParts<S> for Format {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = QueryParams::from_parts(parts)?;
        let pretty = match query.get("_pretty") {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(ApiError::bad_request(
                    careplane_fhir::IssueCode::Value,
                    format!("_pretty must be true or false, not '{other}'"),
                ))
            }
        };
        if let Some(format) = query.get("_format") {
            let mime = format
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            if JSON_TYPES.contains(&mime.as_str()) {
                return Ok(Format { pretty });
            }
            let reason = if is_xml(&mime) {
                "XML is not supported"
            } else {
                "unknown format"
            };
            return Err(ApiError::NotAcceptable(format!(
                "_format={format}: {reason}; use application/fhir+json"
            )));
        }
        let accept = parts
            .headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",");
        if accept.trim().is_empty() {
            return Ok(Format { pretty });
        }
        let acceptable = accept.split(',').any(|item| {
            let mut params = item.split(';');
            let mime = params
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            let refused = params.any(|p| p.trim().replace(' ', "") == "q=0");
            !refused && (JSON_TYPES.contains(&mime.as_str()) || mime.is_empty())
        });
        if acceptable {
            Ok(Format { pretty })
        } else {
            Err(ApiError::NotAcceptable(format!(
                "Accept: {accept} cannot be satisfied; this server speaks application/fhir+json only (no XML)"
            )))
        }
    }
}
