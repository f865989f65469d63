//! `_history` at system, type and instance level: newest first, keyset-paged (`_cursor`), with
//! `_count`, `_since` and `_at`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use careplane_fhir::validate::instant_bounds;
use careplane_fhir::IssueCode;
use careplane_store::{HistoryEntry, HistoryQuery, HistoryScope, Method, TenantId};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::error::{ApiError, Result};
use crate::extract::{BaseUrl, Format, QueryParams, Target};
use crate::response::fhir_json_response;
use crate::settings::Settings;
use crate::state::AppState;

pub async fn system(
    State(state): State<AppState>,
    format: Format,
    base: BaseUrl,
    query: QueryParams,
) -> Result<Response> {
    history(
        &state,
        HistoryScope::System,
        "_history".into(),
        format,
        &base,
        &query,
    )
    .await
}

pub async fn type_level(
    State(state): State<AppState>,
    target: Target,
    format: Format,
    base: BaseUrl,
    query: QueryParams,
) -> Result<Response> {
    let path = format!("{}/_history", target.resource_type);
    history(
        &state,
        HistoryScope::Type(target.resource_type),
        path,
        format,
        &base,
        &query,
    )
    .await
}

pub async fn instance(
    State(state): State<AppState>,
    target: Target,
    format: Format,
    base: BaseUrl,
    query: QueryParams,
) -> Result<Response> {
    let id = target.id()?.clone();
    let path = format!("{}/{id}/_history", target.resource_type);
    history(
        &state,
        HistoryScope::Instance(target.resource_type, id),
        path,
        format,
        &base,
        &query,
    )
    .await
}

async fn history(
    state: &AppState,
    scope: HistoryScope,
    path: String,
    format: Format,
    base: &BaseUrl,
    params: &QueryParams,
) -> Result<Response> {
    let (query, applied) = parse_query(params, &state.settings)?;
    let tenant = TenantId::default_tenant();
    if let HistoryScope::Instance(rt, id) = &scope {
        // 404 for an id that never existed, rather than an empty history.
        match state.store.read(&tenant, rt, id).await {
            Ok(_) | Err(careplane_store::StoreError::Gone { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let page = if query.count == 0 {
        Default::default()
    } else {
        state.store.history(&tenant, &scope, &query).await?
    };
    let link = |extra: Option<(String, String)>| {
        let mut pairs = applied.clone();
        pairs.extend(extra);
        let qs = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        if qs.is_empty() {
            format!("{}/{path}", base.0)
        } else {
            format!("{}/{path}?{qs}", base.0)
        }
    };
    let mut links = vec![json!({"relation": "self", "url": link(None)})];
    if let Some(next) = page.next {
        links.push(
            json!({"relation": "next", "url": link(Some(("_cursor".into(), next.to_string())))}),
        );
    }
    let entries = page
        .entries
        .iter()
        .map(|e| entry(e, &base.0))
        .collect::<Result<Vec<_>>>()?;
    let bundle =
        json!({"resourceType": "Bundle", "type": "history", "link": links, "entry": entries});
    Ok(fhir_json_response(StatusCode::OK, &bundle, format.pretty))
}

fn entry(e: &HistoryEntry, base: &str) -> Result<Value> {
    let (method, url, status) = match e.method {
        Method::Create => ("POST", e.resource_type.clone(), "201 Created"),
        Method::Update => ("PUT", format!("{}/{}", e.resource_type, e.id), "200 OK"),
        Method::Delete => (
            "DELETE",
            format!("{}/{}", e.resource_type, e.id),
            "204 No Content",
        ),
    };
    let mut entry = json!({
        "fullUrl": format!("{base}/{}/{}", e.resource_type, e.id),
        "request": {"method": method, "url": url},
        "response": {
            "status": status,
            "etag": format!("W/\"{}\"", e.version),
            "lastModified": careplane_store::model::format_instant(e.last_updated),
        },
    });
    if let Some(body) = &e.body {
        let resource: Value = serde_json::from_str(body)
            .map_err(|err| ApiError::Internal(format!("stored JSON unreadable: {err}")))?;
        entry["resource"] = resource;
    }
    Ok(entry)
}

/// Returns the store query and the parameters that were applied (for the `self` link).
fn parse_query(
    params: &QueryParams,
    settings: &Settings,
) -> Result<(HistoryQuery, Vec<(String, String)>)> {
    let mut query = HistoryQuery {
        count: settings.default_page_size,
        ..Default::default()
    };
    let mut applied = Vec::new();
    for (name, value) in &params.0 {
        let bad =
            |what: &str| ApiError::bad_request(IssueCode::Value, format!("{name}={value}: {what}"));
        match name.as_str() {
            "_count" => {
                let n: u32 = value
                    .parse()
                    .map_err(|_| bad("must be a non-negative integer"))?;
                query.count = n.min(settings.max_page_size);
            }
            "_since" => {
                query.since =
                    Some(instant(value, false).ok_or_else(|| bad("must be a FHIR instant"))?)
            }
            "_at" => {
                query.at = Some(
                    instant(value, true).ok_or_else(|| bad("must be a FHIR date or dateTime"))?,
                )
            }
            "_cursor" => {
                query.before = Some(
                    value
                        .parse()
                        .map_err(|_| bad("is not a cursor from a next link"))?,
                )
            }
            _ => continue,
        }
        applied.push((name.clone(), value.clone()));
    }
    Ok((query, applied))
}

/// `_since` uses the start of a partial date, `_at` its end (what was current by then).
fn instant(value: &str, upper: bool) -> Option<OffsetDateTime> {
    let (start, end) = instant_bounds(value)?;
    OffsetDateTime::from_unix_timestamp(if upper { end } else { start }).ok()
}
