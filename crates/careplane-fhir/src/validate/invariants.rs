//! Core invariants that are not element lists: Bundle rules (bdl-*), contained references
//! (dom-3 style "#id" must resolve) and date ordering helpers.

use std::collections::HashSet;

use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{truncate, Walker};
use crate::outcome::IssueCode;

pub(super) fn bundle(w: &mut Walker<'_>, obj: &Map<String, Value>, path: &str) {
    let kind = obj.get("type").and_then(Value::as_str).unwrap_or_default();
    let entries = obj
        .get("entry")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if obj.contains_key("total") && !matches!(kind, "searchset" | "history") {
        w.report(
            IssueCode::Invariant,
            &format!("{path}.total"),
            "total only when a search or history (bdl-1)",
        );
    }
    let links = obj
        .get("link")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut relations = HashSet::new();
    for (i, link) in links.iter().enumerate() {
        let relation = link
            .get("relation")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let paging = matches!(
            relation,
            "self" | "first" | "previous" | "prev" | "next" | "last"
        );
        if paging && !relations.insert(relation) {
            let msg = format!("The link relation '{relation}' can only occur once");
            w.report(IssueCode::Invalid, &format!("{path}.link[{i}]"), msg);
        }
    }
    let mut full_urls = HashSet::new();
    for (i, entry) in entries.iter().enumerate() {
        let at = format!("{path}.entry[{i}]");
        if entry.get("search").is_some() && kind != "searchset" {
            w.report(
                IssueCode::Invariant,
                &at,
                "entry.search only when a search (bdl-2)",
            );
        }
        let needs_request = matches!(kind, "batch" | "transaction" | "history");
        if needs_request != entry.get("request").is_some() {
            w.report(IssueCode::Invariant, &at, "entry.request mandatory for batch/transaction/history, otherwise prohibited (bdl-3)");
        }
        let needs_response = matches!(kind, "batch-response" | "transaction-response" | "history");
        if entry.get("response").is_some() && !needs_response {
            w.report(
                IssueCode::Invariant,
                &at,
                "entry.response only for batch-response/transaction-response/history (bdl-4)",
            );
        }
        let resource = entry.get("resource");
        if resource.is_none() && entry.get("request").is_none() && entry.get("response").is_none() {
            w.report(
                IssueCode::Invariant,
                &at,
                "An entry must have a resource or be a request or response (bdl-5)",
            );
        }
        if kind == "searchset" && resource.is_some_and(|r| r.get("id").is_none()) {
            w.report(
                IssueCode::Invalid,
                &format!("{at}.resource"),
                "Search results must have ids",
            );
        }
        if let Some(Value::String(full_url)) = entry.get("fullUrl") {
            if !is_absolute_uri(full_url) {
                let msg = format!(
                    "fullUrl must be an absolute URL or urn:uuid/urn:oid, not '{}'",
                    truncate(full_url)
                );
                w.report(IssueCode::Invalid, &format!("{at}.fullUrl"), msg);
            }
            if full_url.contains("/_history/") {
                w.report(
                    IssueCode::Invariant,
                    &format!("{at}.fullUrl"),
                    "fullUrl cannot be a version specific reference (bdl-8)",
                );
            }
            let version = resource
                .and_then(|r| r.pointer("/meta/versionId"))
                .and_then(Value::as_str);
            if kind != "history"
                && !full_urls.insert((full_url.clone(), version.map(str::to_string)))
            {
                w.report(
                    IssueCode::Invariant,
                    &format!("{at}.fullUrl"),
                    format!("Duplicate fullUrl '{}' (bdl-7)", truncate(full_url)),
                );
            }
        }
    }
    let first = entries
        .first()
        .and_then(|e| e.get("resource"))
        .and_then(|r| r.get("resourceType"))
        .and_then(Value::as_str);
    if kind == "document" {
        if obj
            .get("identifier")
            .and_then(|i| i.get("system"))
            .is_none()
            || obj.get("identifier").and_then(|i| i.get("value")).is_none()
        {
            w.report(
                IssueCode::Invariant,
                path,
                "A document must have an identifier with a system and a value (bdl-9)",
            );
        }
        if !obj.contains_key("timestamp") {
            w.report(
                IssueCode::Invariant,
                path,
                "A document must have a date (bdl-10)",
            );
        }
        if first != Some("Composition") {
            w.report(
                IssueCode::Invariant,
                path,
                "A document must have a Composition as the first resource (bdl-11)",
            );
        }
    }
    if kind == "message" && first != Some("MessageHeader") {
        w.report(
            IssueCode::Invariant,
            path,
            "A message must have a MessageHeader as the first resource (bdl-12)",
        );
    }
}

/// `scheme:rest` with an RFC 3986 scheme (`https://…`, `urn:uuid:…`).
pub(super) fn is_absolute_uri(uri: &str) -> bool {
    uri.split_once(':').is_some_and(|(scheme, rest)| {
        !rest.is_empty()
            && scheme
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

/// Local references (`#id`) must point at a contained resource; contained resources need an id
/// and may not themselves contain resources (dom-2).
pub(super) fn contained(w: &mut Walker<'_>, obj: &Map<String, Value>, path: &str) {
    let contained = obj
        .get("contained")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut ids = HashSet::new();
    for (i, c) in contained.iter().enumerate() {
        let at = format!("{path}.contained[{i}]");
        if c.get("contained").is_some() {
            w.report(
                IssueCode::Invariant,
                &at,
                "A contained resource shall not contain resources (dom-2)",
            );
        }
        match c.get("id").and_then(Value::as_str) {
            Some(id) => {
                if !ids.insert(id) {
                    w.report(
                        IssueCode::Invariant,
                        &format!("{at}.id"),
                        format!("Duplicate contained id '{}'", truncate(id)),
                    );
                }
            }
            None => w.report(
                IssueCode::Required,
                &at,
                "A contained resource must have an id",
            ),
        }
    }
    let mut local_refs = Vec::new();
    for (k, v) in obj {
        if k != "contained" {
            collect_local_refs(v, &mut local_refs);
        }
    }
    // Contained resources may reference each other (and the container, `#`) by local id.
    for c in contained.iter().filter_map(Value::as_object) {
        c.values()
            .for_each(|v| collect_local_refs(v, &mut local_refs));
    }
    for r in local_refs {
        if !r.is_empty() && !ids.contains(r) {
            w.report(
                IssueCode::Invalid,
                path,
                format!(
                    "The local reference '#{}' does not match a contained resource",
                    truncate(r)
                ),
            );
        }
    }
}

fn collect_local_refs<'v>(value: &'v Value, into: &mut Vec<&'v str>) {
    match value {
        Value::Object(map) => {
            // Nested resources (Bundle entries, Parameters) resolve their own local references.
            if map.contains_key("resourceType") {
                return;
            }
            if let Some(Value::String(r)) = map.get("reference") {
                if let Some(id) = r.strip_prefix('#') {
                    into.push(id);
                }
            }
            map.values().for_each(|v| collect_local_refs(v, into));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_local_refs(v, into)),
        _ => {}
    }
}

/// The earliest and latest instant a FHIR date/dateTime/instant can denote, in Unix seconds
/// (UTC). Partial dates denote ranges; a dateTime without a timezone is read as UTC.
pub fn instant_bounds(value: &str) -> Option<(i64, i64)> {
    if value.len() > 10 {
        let parsed = OffsetDateTime::parse(value, &Rfc3339).ok()?;
        let t = parsed.unix_timestamp();
        return Some((t, t));
    }
    let mut parts = value.split('-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: Option<u8> = parts.next().map(str::parse).transpose().ok()?;
    let day: Option<u8> = parts.next().map(str::parse).transpose().ok()?;
    let start_month = time::Month::try_from(month.unwrap_or(1)).ok()?;
    let start = time::Date::from_calendar_date(year, start_month, day.unwrap_or(1)).ok()?;
    let end = match (month, day) {
        (_, Some(_)) => start,
        (Some(_), None) => {
            time::Date::from_calendar_date(year, start_month, start_month.length(year)).ok()?
        }
        (None, None) => time::Date::from_calendar_date(year, time::Month::December, 31).ok()?,
    };
    let start = start.midnight().assume_utc().unix_timestamp();
    let end = end.midnight().assume_utc().unix_timestamp() + 86_399;
    Some((start, end))
}
