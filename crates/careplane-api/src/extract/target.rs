//! Where a request points: resource type, id and version from the path; query parameters;
//! the absolute base URL for `Location` and `fullUrl`.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Path};
use axum::http::header::HOST;
use axum::http::request::Parts;
use careplane_fhir::{Id, IssueCode, ResourceType, VersionId};

use crate::error::ApiError;
use crate::state::AppState;

/// The `{type}`, `{id}` and `{vid}` path segments, parsed.
#[derive(Debug)]
pub struct Target {
    pub resource_type: ResourceType,
    pub id: Option<Id>,
    pub version: Option<VersionId>,
}

impl Target {
    pub fn id(&self) -> Result<&Id, ApiError> {
        self.id
            .as_ref()
            .ok_or_else(|| ApiError::Internal("route without {id}".into()))
    }
}

impl FromRequestParts<AppState> for Target {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|_| {
                ApiError::bad_request(IssueCode::Value, "The URL path is not valid UTF-8")
            })?;
        let type_name = params.get("type").map(String::as_str).unwrap_or_default();
        let resource_type = ResourceType::parse(state.defs, type_name).ok_or_else(|| {
            ApiError::NotFound(format!("Unknown resource type '{}'", truncate(type_name)))
        })?;
        let id = params
            .get("id")
            .map(|id| {
                Id::parse(id).ok_or_else(|| {
                    ApiError::bad_request(
                        IssueCode::Value,
                        format!(
                            "Invalid id '{}': ids are 1-64 characters of A-Z a-z 0-9 - .",
                            truncate(id)
                        ),
                    )
                })
            })
            .transpose()?;
        let version = params
            .get("vid")
            .map(|v| {
                VersionId::parse(v)
                    .ok_or_else(|| ApiError::NotFound(format!("Unknown version '{}'", truncate(v))))
            })
            .transpose()?;
        Ok(Target {
            resource_type,
            id,
            version,
        })
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Query parameters in order, percent-decoded; parsing never fails.
#[derive(Debug, Default, Clone)]
pub struct QueryParams(pub Vec<(String, String)>);

impl QueryParams {
    pub fn from_parts(parts: &Parts) -> Result<QueryParams, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        Ok(QueryParams(
            url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect(),
        ))
    }

    /// The parameters as criteria text (conditional update/delete), minus response formatting.
    pub fn as_criteria(&self) -> String {
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(
                self.0
                    .iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "_format" | "_pretty")),
            )
            .finish()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        QueryParams::from_parts(parts)
    }
}

/// Absolute base of the FHIR API as the client sees it, e.g. `http://host:8080/fhir`.
#[derive(Debug, Clone)]
pub struct BaseUrl(pub String);

impl FromRequestParts<AppState> for BaseUrl {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(base) = &state.settings.public_base_url {
            return Ok(BaseUrl(base.trim_end_matches('/').to_string()));
        }
        let host = parts
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
            .unwrap_or("localhost");
        let proto = parts
            .headers
            .get("x-forwarded-proto")
            .and_then(|h| h.to_str().ok())
            .filter(|p| *p == "https")
            .unwrap_or("http");
        Ok(BaseUrl(format!(
            "{proto}://{host}{}",
            state.settings.base_path.trim_end_matches('/')
        )))
    }
}
