//! Search: `GET /{type}`, `POST /{type}/_search`, `GET /?_type=`, Patient compartment search
//! and `Patient/{id}/$everything`. Parsing and validation live in `careplane_fhir::search`;
//! this module picks the scope, calls the store and renders the searchset Bundle.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use careplane_fhir::search::compartment::{patient_compartment, patient_compartment_filter};
use careplane_fhir::search::query::{self, Filter, ParseOptions, SearchRequest, Summary};
use careplane_fhir::{operation_outcome, Issue, IssueCode, ResourceType};
use careplane_store::{SearchOptions, SearchPage, StoredResource, TenantId};
use serde_json::{json, Map, Value};

use crate::error::{ApiError, Result};
use crate::extract::{BaseUrl, FormBody, Format, Prefer, QueryParams, Target};
use crate::response::fhir_json_response;
use crate::state::AppState;

/// Tag the R4 spec asks for on resources cut down by `_elements` / `_summary`.
const SUBSETTED: (&str, &str) = (
    "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "SUBSETTED",
);

/// Where a search runs: the URL path it answers for, the types, and any fixed filter
/// (compartment membership).
struct Scope {
    path: String,
    types: Vec<String>,
    fixed: Option<Filter>,
}

pub async fn type_level(
    State(state): State<AppState>,
    target: Target,
    format: Format,
    base: BaseUrl,
    query: QueryParams,
    prefer: Prefer,
) -> Result<Response> {
    let scope = Scope {
        path: target.resource_type.to_string(),
        types: vec![target.resource_type.to_string()],
        fixed: None,
    };
    search(&state, scope, &query.0, prefer.strict, format, &base).await
}

/// `POST /{type}/_search`: parameters from the form body and the URL, together.
pub async fn type_level_post(
    State(state): State<AppState>,
    target: Target,
    format: Format,
    base: BaseUrl,
    query: QueryParams,
    prefer: Prefer,
    FormBody(form): FormBody,
) -> Result<Response> {
    let mut params = query.0;
    params.extend(form);
    let scope = Scope {
        path: target.resource_type.to_string(),
        types: vec![target.resource_type.to_string()],
        fixed: None,
    };
    search(&state, scope, &params, prefer.strict, format, &base).await
}

/// `GET [base]?_type=…`: several types (every type when `_type` is absent).
pub async fn system(
    State(state): State<AppState>,
    format: Format,
    base: BaseUrl,
    query: QueryParams,
    prefer: Prefer,
) -> Result<Response> {
    let scope = Scope {
        path: String::new(),
        types: Vec::new(),
        fixed: None,
    };
    search(&state, scope, &query.0, prefer.strict, format, &base).await
}

/// `GET /Patient/{id}/{type}`: resources of `type` in the patient's compartment.
pub async fn compartment(
    State(state): State<AppState>,
    target: Target,
    Path((_, _, member)): Path<(String, String, String)>,
    format: Format,
    base: BaseUrl,
    query: QueryParams,
    prefer: Prefer,
) -> Result<Response> {
    let id = target.id()?.to_string();
    let member_type = compartment_member(&state, &target.resource_type, &member)?;
    let types = vec![member_type.clone()];
    let scope = Scope {
        path: format!("{}/{id}/{member_type}", target.resource_type),
        fixed: Some(patient_compartment_filter(&id, &types, false)),
        types,
    };
    search(&state, scope, &query.0, prefer.strict, format, &base).await
}

/// `GET /Patient/{id}/$everything`: the patient and everything in its compartment, paged.
pub async fn everything(
    State(state): State<AppState>,
    target: Target,
    format: Format,
    base: BaseUrl,
    query: QueryParams,
) -> Result<Response> {
    if target.resource_type.as_str() != "Patient" {
        return Err(ApiError::NotFound(format!(
            "$everything is defined for Patient, not {}",
            target.resource_type
        )));
    }
    let id = target.id()?.clone();
    let tenant = TenantId::default_tenant();
    // 404/410 for a patient that is not there, rather than an empty Bundle.
    state
        .store
        .read(&tenant, &target.resource_type, &id)
        .await?;
    // $everything takes _count, _since, _type; search parameters are not part of it.
    let mut params = Vec::new();
    let mut types: Vec<String> = patient_compartment().keys().cloned().collect();
    types.push("Patient".into());
    for (name, value) in &query.0 {
        match name.as_str() {
            "_count" | "_cursor" | "_format" | "_pretty" | "_total" => {
                params.push((name.clone(), value.clone()))
            }
            "_type" => {
                let wanted: Vec<&str> = value.split(',').collect();
                types.retain(|t| wanted.contains(&t.as_str()));
                params.push((name.clone(), value.clone()));
            }
            other => {
                return Err(ApiError::bad_request(
                    IssueCode::NotSupported,
                    format!("$everything does not support the parameter '{other}'"),
                ))
            }
        }
    }
    let scope = Scope {
        path: format!("Patient/{id}/$everything"),
        fixed: Some(patient_compartment_filter(id.as_str(), &types, true)),
        types,
    };
    search(&state, scope, &params, true, format, &base).await
}

fn compartment_member(
    state: &AppState,
    compartment: &ResourceType,
    member: &str,
) -> Result<String> {
    if compartment.as_str() != "Patient" {
        return Err(ApiError::bad_request(
            IssueCode::NotSupported,
            format!("Compartment search is supported for Patient, not {compartment}"),
        ));
    }
    if !state.defs.is_resource_type(member) {
        return Err(ApiError::NotFound(format!(
            "Unknown resource type '{member}'"
        )));
    }
    if !patient_compartment().contains_key(member) {
        return Err(ApiError::bad_request(
            IssueCode::NotSupported,
            format!("{member} is not part of the Patient compartment"),
        ));
    }
    Ok(member.to_string())
}

async fn search(
    state: &AppState,
    scope: Scope,
    params: &[(String, String)],
    strict: bool,
    format: Format,
    base: &BaseUrl,
) -> Result<Response> {
    let options = ParseOptions {
        strict,
        max_count: state.settings.max_page_size,
    };
    let mut request = query::parse(state.defs, &scope.types, params, options)
        .map_err(|e| ApiError::BadRequest(vec![e.issue()]))?;
    if let Some(fixed) = scope.fixed {
        request.filters.insert(0, fixed);
    }
    let store_options = search_options(state, &request);
    let tenant = TenantId::default_tenant();
    let page = state
        .store
        .search(&tenant, &request, &store_options)
        .await?;
    let bundle = searchset(state, &scope.path, &request, &page, &base.0)?;
    Ok(fhir_json_response(StatusCode::OK, &bundle, format.pretty))
}

/// Page size, include cap and count-only for `request` under the server's settings.
pub(crate) fn search_options(state: &AppState, request: &SearchRequest) -> SearchOptions {
    let page_size = request
        .count
        .unwrap_or(state.settings.default_page_size)
        .min(state.settings.max_page_size) as usize;
    SearchOptions {
        page_size,
        max_included: state.settings.max_page_size as usize,
        count_only: request.summary == Some(Summary::Count) || page_size == 0,
    }
}

/// The searchset Bundle for one page; `path` is what the links search (`Patient`; empty for
/// a system search).
pub(crate) fn searchset(
    state: &AppState,
    path: &str,
    request: &SearchRequest,
    page: &SearchPage,
    base: &str,
) -> Result<Value> {
    let link = |extra: Option<(&str, &str)>| {
        let pairs = request
            .applied
            .iter()
            .filter(|(name, _)| name != "_cursor")
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .chain(extra);
        let qs = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        let path = if path.is_empty() {
            base.to_string()
        } else {
            format!("{base}/{path}")
        };
        if qs.is_empty() {
            path
        } else {
            format!("{path}?{qs}")
        }
    };
    let mut links = vec![json!({"relation": "self", "url": link(
        request.cursor.as_deref().map(|c| ("_cursor", c))
    )})];
    if let Some(next) = &page.next {
        links.push(json!({"relation": "next", "url": link(Some(("_cursor", next)))}));
    }
    let mut entries = Vec::with_capacity(page.matches.len() + page.included.len() + 1);
    for resource in &page.matches {
        entries.push(entry(state, request, resource, "match", base)?);
    }
    for resource in &page.included {
        entries.push(entry(state, request, resource, "include", base)?);
    }
    let mut notes = Vec::new();
    if !request.ignored.is_empty() {
        notes.push(Issue::warning(
            IssueCode::NotSupported,
            format!(
                "Unknown search parameters were ignored: {} (send Prefer: handling=strict to have them rejected)",
                request.ignored.join(", ")
            ),
        ));
    }
    if page.included_truncated {
        notes.push(Issue::warning(
            IssueCode::TooCostly,
            format!(
                "_include/_revinclude results were cut at {} resources; page with a smaller _count to get all",
                state.settings.max_page_size
            ),
        ));
    }
    if !notes.is_empty() {
        entries.push(json!({
            "resource": operation_outcome(&notes),
            "search": {"mode": "outcome"},
        }));
    }
    let mut bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
    });
    if let Some(total) = page.total {
        bundle["total"] = json!(total);
    }
    if !entries.is_empty() {
        bundle["entry"] = Value::Array(entries);
    }
    Ok(bundle)
}

fn entry(
    state: &AppState,
    request: &SearchRequest,
    resource: &StoredResource,
    mode: &str,
    base: &str,
) -> Result<Value> {
    let mut body: Value = serde_json::from_str(&resource.body)
        .map_err(|e| ApiError::Internal(format!("stored JSON unreadable: {e}")))?;
    if let Some(elements) = &request.elements {
        keep_elements(&mut body, |name| {
            elements.iter().any(|e| element_matches(e, name))
        });
    } else if request.summary == Some(Summary::True) {
        // Top-level elements the base definition marks isSummary (and mandatory ones); what
        // they contain is kept whole.
        let summary = top_level_elements(state, &resource.resource_type, |e| {
            e.is_summary || e.min >= 1
        });
        keep_elements(&mut body, |name| {
            summary.iter().any(|m| element_matches(m, name))
        });
    } else if request.summary == Some(Summary::Text) {
        let mandatory = top_level_elements(state, &resource.resource_type, |e| e.min >= 1);
        keep_elements(&mut body, |name| {
            name == "text" || mandatory.iter().any(|m| element_matches(m, name))
        });
    } else if request.summary == Some(Summary::Data) {
        if let Some(fields) = body.as_object_mut() {
            if fields.remove("text").is_some() {
                tag_subsetted(fields);
            }
        }
    }
    Ok(json!({
        "fullUrl": format!("{base}/{}/{}", resource.resource_type, resource.id),
        "resource": body,
        "search": {"mode": mode},
    }))
}

/// Whether JSON property `name` is the element `element` (choice elements: `value` matches
/// `valueQuantity`).
fn element_matches(element: &str, name: &str) -> bool {
    name == element
        || name
            .strip_prefix(element)
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
}

/// Keeps `resourceType`, `id`, `meta` and the elements `keep` accepts; tags the result as
/// SUBSETTED when something was removed.
fn keep_elements(body: &mut Value, keep: impl Fn(&str) -> bool) {
    let Some(fields) = body.as_object_mut() else {
        return;
    };
    let before = fields.len();
    fields.retain(|name, _| {
        let name = name.strip_prefix('_').unwrap_or(name);
        matches!(name, "resourceType" | "id" | "meta") || keep(name)
    });
    if fields.len() != before {
        tag_subsetted(fields);
    }
}

fn tag_subsetted(fields: &mut Map<String, Value>) {
    let meta = fields
        .entry("meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(meta) = meta.as_object_mut() {
        let tags = meta
            .entry("tag")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(tags) = tags.as_array_mut() {
            tags.push(json!({"system": SUBSETTED.0, "code": SUBSETTED.1}));
        }
    }
}

/// Names of the top-level elements of a resource type that `wanted` accepts.
fn top_level_elements(
    state: &AppState,
    resource_type: &str,
    wanted: impl Fn(&careplane_fhir::definitions::ElementDef) -> bool,
) -> Vec<String> {
    state
        .defs
        .type_def(resource_type)
        .map(|t| {
            // Top-level elements are the children of the root path "".
            t.children("")
                .filter(|e| wanted(e))
                .map(|e| e.name().trim_end_matches("[x]").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_elements_match_their_typed_names() {
        assert!(element_matches("value", "valueQuantity"));
        assert!(element_matches("status", "status"));
        assert!(!element_matches("value", "valueset"));
        assert!(!element_matches("code", "codeable"));
    }

    #[test]
    fn keeping_elements_tags_the_resource() {
        let mut body = json!({"resourceType": "Patient", "id": "1", "name": [], "gender": "male"});
        keep_elements(&mut body, |n| n == "gender");
        assert_eq!(body["gender"], "male");
        assert!(body.get("name").is_none());
        assert_eq!(body["meta"]["tag"][0]["code"], "SUBSETTED");
    }
}
