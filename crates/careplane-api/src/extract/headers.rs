//! Conditional-request and `Prefer` headers.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use careplane_fhir::{IssueCode, VersionId};

use crate::error::ApiError;

#[derive(Debug, Default)]
pub struct Preconditions {
    /// `If-Match: W/"3"`: the version the client last saw.
    pub if_match: Option<VersionId>,
    /// `If-None-Match: W/"3"` on reads: answer 304 when unchanged.
    pub if_none_match: Option<VersionId>,
    /// `If-None-Exist: identifier=...` on create.
    pub if_none_exist: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Preconditions {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let h = &parts.headers;
        Ok(Preconditions {
            if_match: header(h, "if-match")?
                .map(|v| parse_etag("If-Match", v))
                .transpose()?,
            if_none_match: header(h, "if-none-match")?
                .map(|v| parse_etag("If-None-Match", v))
                .transpose()?,
            if_none_exist: header(h, "if-none-exist")?.map(str::to_string),
        })
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, ApiError> {
    headers
        .get(name)
        .map(|v| v.to_str().map(str::trim))
        .transpose()
        .map_err(|_| {
            ApiError::bad_request(IssueCode::Value, format!("{name} must be visible ASCII"))
        })
}

/// Accepts `W/"3"`, `"3"` and, leniently, `3`.
pub fn parse_etag(name: &str, value: &str) -> Result<VersionId, ApiError> {
    let inner = value.strip_prefix("W/").unwrap_or(value);
    let inner = inner
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(inner);
    VersionId::parse(inner).ok_or_else(|| {
        ApiError::bad_request(
            IssueCode::Value,
            format!("{name}: '{value}' is not a version ETag such as W/\"3\""),
        )
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReturnPreference {
    Minimal,
    #[default]
    Representation,
    OperationOutcome,
}

/// `Prefer: return=minimal | representation | OperationOutcome` and `handling=strict | lenient`.
#[derive(Debug, Default)]
pub struct Prefer {
    pub return_: ReturnPreference,
    /// `handling=strict`: unknown search parameters are errors.
    pub strict: bool,
    /// `respond-async`: the client accepts a 202 and a status URL (bulk export).
    pub respond_async: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for Prefer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let mut prefer = Prefer::default();
        for value in parts
            .headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            for pref in value.split([',', ';']).map(str::trim) {
                prefer.respond_async |= pref == "respond-async";
                if let Some(handling) = pref.strip_prefix("handling=") {
                    prefer.strict = match handling.trim_matches('"') {
                        "strict" => true,
                        "lenient" => false,
                        other => {
                            return Err(ApiError::bad_request(
                                IssueCode::Value,
                                format!("Prefer: handling={other} is not one of strict, lenient"),
                            ))
                        }
                    };
                }
                if let Some(ret) = pref.strip_prefix("return=") {
                    prefer.return_ = match ret.trim_matches('"') {
                        "minimal" => ReturnPreference::Minimal,
                        "representation" => ReturnPreference::Representation,
                        "OperationOutcome" => ReturnPreference::OperationOutcome,
                        other => {
                            return Err(ApiError::bad_request(
                                IssueCode::Value,
                                format!("Prefer: return={other} is not one of minimal, representation, OperationOutcome"),
                            ))
                        }
                    };
                }
            }
        }
        Ok(prefer)
    }
}
