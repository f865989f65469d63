//! Building FHIR JSON responses: content type, pretty printing, version headers.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use careplane_store::StoredResource;
use serde_json::Value;

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

pub fn fhir_json_response(status: StatusCode, body: &Value, pretty: bool) -> Response {
    let text = if pretty {
        serde_json::to_string_pretty(body)
    } else {
        serde_json::to_string(body)
    };
    raw_json_response(status, text.unwrap_or_default())
}

pub fn raw_json_response(status: StatusCode, text: String) -> Response {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

pub fn empty_response(status: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}

/// `ETag: W/"n"` and `Last-Modified` for a stored version.
pub fn version_headers(headers: &mut HeaderMap, resource: &StoredResource) {
    if let Ok(etag) = HeaderValue::from_str(&format!("W/\"{}\"", resource.version)) {
        headers.insert(header::ETAG, etag);
    }
    let modified = std::time::SystemTime::from(resource.last_updated);
    if let Ok(value) = HeaderValue::from_str(&httpdate::fmt_http_date(modified)) {
        headers.insert(header::LAST_MODIFIED, value);
    }
}

pub fn set_location(headers: &mut HeaderMap, location: &str) {
    if let Ok(value) = HeaderValue::from_str(location) {
        headers.insert(header::LOCATION, value);
    }
}
