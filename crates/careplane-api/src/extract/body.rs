//! Request bodies: content type, size limit and strict JSON parsing, each failing as a 4xx.

use axum::body::to_bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use careplane_fhir::IssueCode;
use serde_json::Value;

use crate::error::ApiError;
use crate::state::AppState;

/// A FHIR resource body sent as `application/fhir+json` or `application/json`.
#[derive(Debug)]
pub struct FhirBody(pub Value);

/// A transaction/batch Bundle posted to the base, under its own (larger) size limit.
#[derive(Debug)]
pub struct BundleBody(pub Value);

/// A JSON Patch document (`application/json-patch+json`).
#[derive(Debug)]
pub struct PatchBody(pub json_patch::Patch);

/// `POST [type]/_search` parameters sent as `application/x-www-form-urlencoded`.
#[derive(Debug)]
pub struct FormBody(pub Vec<(String, String)>);

impl FromRequest<AppState> for FormBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        if req.headers().get(CONTENT_LENGTH).is_some_and(|v| v == "0")
            && req.headers().get(CONTENT_TYPE).is_none()
        {
            return Ok(FormBody(Vec::new()));
        }
        check_content_type(&req, &["application/x-www-form-urlencoded"])?;
        let bytes = read_limited(req, state.settings.max_body_bytes).await?;
        Ok(FormBody(
            url::form_urlencoded::parse(&bytes).into_owned().collect(),
        ))
    }
}

impl FromRequest<AppState> for FhirBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let value = read_fhir_json(req, state.settings.max_body_bytes).await?;
        if !value.is_object() {
            return Err(ApiError::bad_request(
                IssueCode::Structure,
                "The body must be a JSON object (a FHIR resource)",
            ));
        }
        Ok(FhirBody(value))
    }
}

impl FromRequest<AppState> for BundleBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let value = read_fhir_json(req, state.settings.max_bundle_bytes).await?;
        Ok(BundleBody(value))
    }
}

impl FromRequest<AppState> for PatchBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        check_content_type(&req, &["application/json-patch+json"])?;
        let bytes = read_limited(req, state.settings.max_body_bytes).await?;
        let value: Value = serde_json::from_slice(&bytes).map_err(json_error)?;
        let patch = serde_json::from_value(value).map_err(|e| {
            ApiError::bad_request(
                IssueCode::Invalid,
                format!("Not a valid JSON Patch document: {e}"),
            )
        })?;
        Ok(PatchBody(patch))
    }
}

/// A FHIR JSON body of at most `limit` bytes, parsed.
async fn read_fhir_json(req: Request, limit: usize) -> Result<Value, ApiError> {
    check_content_type(
        &req,
        &[
            "application/fhir+json",
            "application/json",
            "application/json+fhir",
        ],
    )?;
    let bytes = read_limited(req, limit).await?;
    serde_json::from_slice(&bytes).map_err(json_error)
}

fn check_content_type(req: &Request, accepted: &[&str]) -> Result<(), ApiError> {
    let Some(raw) = req.headers().get(CONTENT_TYPE) else {
        return Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type is required: use {}",
            accepted[0]
        )));
    };
    let raw = raw.to_str().unwrap_or_default().to_ascii_lowercase();
    let mut parts = raw.split(';');
    let mime = parts.next().unwrap_or_default().trim();
    let charset_ok = parts.all(|p| {
        let p = p.trim();
        !p.starts_with("charset=")
            || matches!(
                p.trim_start_matches("charset=").trim_matches('"'),
                "utf-8" | "utf8"
            )
    });
    if accepted.contains(&mime) && charset_ok {
        return Ok(());
    }
    let reason = if mime.contains("xml") {
        "XML is not supported"
    } else {
        "unsupported content type"
    };
    Err(ApiError::UnsupportedMediaType(format!(
        "Content-Type '{raw}': {reason}; use {} (UTF-8)",
        accepted[0]
    )))
}

async fn read_limited(req: Request, limit: usize) -> Result<bytes::Bytes, ApiError> {
    let too_large = || {
        ApiError::PayloadTooLarge(format!(
            "The request body is larger than the limit of {limit} bytes"
        ))
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    to_bytes(req.into_body(), limit).await.map_err(|e| {
        let is_limit = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if is_limit {
            too_large()
        } else {
            ApiError::bad_request(IssueCode::Structure, "The request body could not be read")
        }
    })
}

fn json_error(e: serde_json::Error) -> ApiError {
    let what = if e.to_string().contains("recursion limit") {
        "The JSON is nested too deeply".to_string()
    } else {
        format!(
            "Invalid JSON at line {} column {}: {}",
            e.line(),
            e.column(),
            e
        )
    };
    ApiError::bad_request(IssueCode::Structure, what)
}
