//! Where a request points: resource type, id and version from the path; query parameters;
//! the absolute base URL for `Location` and `fullUrl`.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, Path};
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

/// Absolute base of the FHIR API as the client sees it, e.g. `http://host:8080/fhir`:
/// `CAREPLANE_PUBLIC_BASE_URL` when set; otherwise the `Host` header, and, only when the peer is
/// a trusted proxy (`CAREPLANE_TRUSTED_PROXIES`), what it forwards (`Forwarded`, else
/// `X-Forwarded-Proto`/`-Host`/`-Prefix`). Anyone else's forwarding headers are ignored, so a
/// client cannot make the server write links to a host of its choosing.
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
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|h| h.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
        };
        let mut host = header(HOST.as_str()).unwrap_or("localhost").to_string();
        let mut proto = "http".to_string();
        let mut prefix = String::new();
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        if peer.is_some_and(|ip| {
            state
                .settings
                .trusted_proxies
                .iter()
                .any(|n| n.contains(&ip))
        }) {
            let forwarded = parts
                .headers
                .get("forwarded")
                .and_then(|h| h.to_str().ok())
                .map(first_forwarded_element);
            if let Some(fields) = forwarded {
                if let Some(p) = fields.proto {
                    proto = p;
                }
                if let Some(h) = fields.host {
                    host = h;
                }
            } else {
                // Comma lists name every hop; the first is the one the client talked to.
                let first = |v: &str| v.split(',').next().unwrap_or_default().trim().to_string();
                if let Some(p) = header("x-forwarded-proto") {
                    proto = first(p);
                }
                if let Some(h) = header("x-forwarded-host") {
                    host = first(h);
                }
            }
            if let Some(p) = header("x-forwarded-prefix") {
                prefix = format!("/{}", p.trim_matches('/'));
                if prefix == "/" {
                    prefix.clear();
                }
            }
        }
        if proto != "https" {
            proto = "http".into();
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
        {
            return Err(ApiError::bad_request(
                IssueCode::Value,
                "The Host (or forwarded host) is not a valid host name",
            ));
        }
        Ok(BaseUrl(format!(
            "{proto}://{host}{prefix}{}",
            state.settings.base_path.trim_end_matches('/')
        )))
    }
}

/// `proto` and `host` of the first element of an RFC 7239 `Forwarded` header.
struct ForwardedFields {
    proto: Option<String>,
    host: Option<String>,
}

fn first_forwarded_element(value: &str) -> ForwardedFields {
    let mut fields = ForwardedFields {
        proto: None,
        host: None,
    };
    let first = value.split(',').next().unwrap_or_default();
    for pair in first.split(';') {
        let Some((key, v)) = pair.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"').to_string();
        match key.trim().to_ascii_lowercase().as_str() {
            "proto" => fields.proto = Some(v.to_ascii_lowercase()),
            "host" => fields.host = Some(v),
            _ => {}
        }
    }
    fields
}
