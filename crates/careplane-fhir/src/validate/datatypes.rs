//! Checks of data type values: JSON shape and lexical form of primitives (official regexes),
//! and the rules on complex types that cannot be expressed as element lists (Reference syntax,
//! Period order, Extension's value-or-children rule, required bindings on codings).

use serde_json::{Map, Value};

use super::{bindings, truncate, xhtml, Walker, MAX_STRING_CHARS};
use crate::definitions::{ElementDef, TypeDef};
use crate::outcome::IssueCode;
use crate::resource::{is_valid_id, VersionId};

pub(super) fn primitive(
    w: &mut Walker<'_>,
    value: &Value,
    ty: &TypeDef,
    el: &ElementDef,
    path: &str,
) {
    let name = ty.name.as_str();
    let text = match (name, value) {
        ("boolean", Value::Bool(_)) => return,
        ("boolean", _) => {
            return w.report(
                IssueCode::Value,
                path,
                "A boolean must be JSON true or false",
            )
        }
        ("integer" | "positiveInt" | "unsignedInt" | "decimal", Value::Number(n)) => n.to_string(),
        ("integer" | "positiveInt" | "unsignedInt" | "decimal", _) => {
            return w.report(
                IssueCode::Value,
                path,
                format!("A {name} must be a JSON number"),
            );
        }
        (_, Value::String(s)) => s.clone(),
        _ => {
            return w.report(
                IssueCode::Value,
                path,
                format!("A {name} must be a JSON string"),
            )
        }
    };
    if text.is_empty() {
        return w.report(
            IssueCode::Value,
            path,
            "Empty strings are not valid FHIR values",
        );
    }
    if text.chars().count() > MAX_STRING_CHARS {
        return w.report(IssueCode::TooLong, path, "Strings must be less than 1 MB");
    }
    if name == "xhtml" {
        return xhtml::check(w, &text, path);
    }
    if let Some(re) = &ty.regex {
        if !re.is_match(&text) {
            return w.report(
                IssueCode::Value,
                path,
                format!("'{}' is not a valid {name}", truncate(&text)),
            );
        }
    }
    match name {
        "integer" | "positiveInt" | "unsignedInt" => {
            let min = if name == "positiveInt" {
                1
            } else if name == "unsignedInt" {
                0
            } else {
                i32::MIN as i64
            };
            if !text
                .parse::<i64>()
                .is_ok_and(|n| n >= min && n <= i32::MAX as i64)
            {
                w.report(
                    IssueCode::Value,
                    path,
                    format!("{text} is out of range for {name}"),
                );
            }
        }
        "code" => {
            if let Some(vs) = &el.required_binding {
                bindings::code(w, &text, vs, path);
            }
        }
        "date" | "dateTime" | "instant" if !is_real_calendar_day(&text) => {
            w.report(
                IssueCode::Value,
                path,
                format!("'{}' is not a calendar date (no such day)", truncate(&text)),
            );
        }
        _ => {}
    }
}

/// The official regexes allow day 31 in every month; "dates SHALL be valid dates".
fn is_real_calendar_day(text: &str) -> bool {
    let (Some(year), Some(month), Some(day)) = (text.get(0..4), text.get(5..7), text.get(8..10))
    else {
        return true; // year or year-month precision: the regex already checked it
    };
    let parsed = (year.parse::<i32>(), month.parse::<u8>(), day.parse::<u8>());
    let (Ok(year), Ok(month), Ok(day)) = parsed else {
        return false;
    };
    time::Month::try_from(month).is_ok_and(|m| time::Date::from_calendar_date(year, m, day).is_ok())
}

pub(super) fn complex(
    w: &mut Walker<'_>,
    obj: &Map<String, Value>,
    code: &str,
    el: &ElementDef,
    path: &str,
) {
    match code {
        "Reference" => reference(w, obj, el, path),
        "Period" => period(w, obj, path),
        "Extension" => extension(w, obj, path),
        "Attachment" => attachment(w, obj, path),
        "Coding" | "CodeableConcept" => {
            if code == "Coding" {
                coding_system(w, obj, path);
            }
            if let Some(vs) = &el.required_binding {
                bindings::coded(w, obj, code, vs, path);
            }
        }
        _ => {}
    }
}

fn reference(w: &mut Walker<'_>, obj: &Map<String, Value>, el: &ElementDef, path: &str) {
    let Some(Value::String(reference)) = obj.get("reference") else {
        return;
    };
    let at = format!("{path}.reference");
    if reference.starts_with('#') {
        return; // resolved against `contained` by invariants::contained
    }
    if let Some(uuid) = reference.strip_prefix("urn:uuid:") {
        if !is_uuid(uuid) {
            w.report(
                IssueCode::Value,
                &at,
                format!("'{}' is not a valid urn:uuid", truncate(reference)),
            );
        }
        return;
    }
    if reference.starts_with("urn:oid:") || reference.contains("://") {
        return; // absolute: the literal URL is the reference
    }
    let (rel, query) = match reference.split_once('?') {
        Some((rel, q)) => (rel, Some(q)),
        None => (reference.as_str(), None),
    };
    let parts: Vec<&str> = rel.split('/').collect();
    let target = parts.first().copied().unwrap_or_default();
    let shape_ok = match (&parts[..], query) {
        ([_, id], None) => is_valid_id(id),
        ([_, id, "_history", vid], None) => is_valid_id(id) && VersionId::parse(vid).is_some(),
        ([_], Some(q)) => !q.is_empty() && w.bundle_depth > 0,
        _ => false,
    };
    if !shape_ok || !w.defs.is_resource_type(target) {
        let hint = if query.is_some() && w.bundle_depth == 0 {
            " (conditional references are only allowed inside transaction bundles)"
        } else {
            ""
        };
        return w.report(
            IssueCode::Value,
            &at,
            format!("'{}' is not a valid reference: expected Type/id, Type/id/_history/vid, an absolute URL, urn:uuid or #id{hint}", truncate(reference)),
        );
    }
    let any_target = el.targets.is_empty() || el.targets.iter().any(|t| t == "Resource");
    if !any_target && !el.targets.iter().any(|t| t == target) {
        // A warning, not an error: several official R4 examples point at types outside the
        // declared targets, and both reference validators used for the must-accept list allow it.
        let msg = format!(
            "A reference to {target} is outside the declared targets: {}",
            el.targets.join(", ")
        );
        w.warn(IssueCode::Invalid, &at, msg);
    }
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Coding.system identifies a code system globally, so it must be an absolute URI.
fn coding_system(w: &mut Walker<'_>, obj: &Map<String, Value>, path: &str) {
    if let Some(Value::String(system)) = obj.get("system") {
        if !super::invariants::is_absolute_uri(system) {
            let msg = format!(
                "Coding.system must be an absolute URI, not '{}'",
                truncate(system)
            );
            w.report(IssueCode::Invalid, &format!("{path}.system"), msg);
        }
    }
}

/// The stated size of inline data must be its decoded length.
fn attachment(w: &mut Walker<'_>, obj: &Map<String, Value>, path: &str) {
    let (Some(Value::String(data)), Some(Value::Number(size))) = (obj.get("data"), obj.get("size"))
    else {
        return;
    };
    let symbols: Vec<u8> = data.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let padding = symbols.iter().rev().take_while(|b| **b == b'=').count();
    let decoded = (symbols.len() / 4 * 3).saturating_sub(padding);
    if symbols.len().is_multiple_of(4) && size.as_u64().is_some_and(|s| s != decoded as u64) {
        let msg = format!("Attachment.size is {size} but the data decodes to {decoded} bytes");
        w.report(IssueCode::Structure, &format!("{path}.size"), msg);
    }
}

fn period(w: &mut Walker<'_>, obj: &Map<String, Value>, path: &str) {
    let (Some(Value::String(start)), Some(Value::String(end))) = (obj.get("start"), obj.get("end"))
    else {
        return;
    };
    // per-1: comparing at the shorter precision keeps partial dates (2020 vs 2020-05) legal.
    let (Some(s), Some(e)) = (
        super::invariants::instant_bounds(start),
        super::invariants::instant_bounds(end),
    ) else {
        return;
    };
    if s.0 > e.1 {
        w.report(
            IssueCode::Invariant,
            path,
            "Period.start must not be after Period.end (per-1)",
        );
    }
}

fn extension(w: &mut Walker<'_>, obj: &Map<String, Value>, path: &str) {
    let has_value = obj
        .keys()
        .any(|k| k.starts_with("value") || k.starts_with("_value"));
    let has_children = obj.contains_key("extension");
    if has_value == has_children {
        w.report(
            IssueCode::Invariant,
            path,
            "An extension must have either extensions or a value[x], not both (ext-1)",
        );
    }
}
