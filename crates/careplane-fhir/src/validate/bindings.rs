//! Required bindings whose value sets the core definitions enumerate (others are not checked).

use serde_json::{Map, Value};

use super::{truncate, Walker};
use crate::outcome::IssueCode;

pub(super) fn code(w: &mut Walker<'_>, code: &str, vs_url: &str, path: &str) {
    let Some(vs) = w.defs.value_set(vs_url) else {
        return;
    };
    if !vs.values().any(|codes| codes.contains(code)) {
        w.report(
            IssueCode::CodeInvalid,
            path,
            format!(
                "'{}' is not in the required value set {vs_url}",
                truncate(code)
            ),
        );
    }
}

/// A Coding must come from the value set when its system is one of the set's systems; a
/// CodeableConcept with codings needs at least one coding from the set.
pub(super) fn coded(
    w: &mut Walker<'_>,
    obj: &Map<String, Value>,
    ty: &str,
    vs_url: &str,
    path: &str,
) {
    let Some(vs) = w.defs.value_set(vs_url) else {
        return;
    };
    let in_set = |coding: &Map<String, Value>| {
        let system = coding.get("system").and_then(Value::as_str);
        let code = coding.get("code").and_then(Value::as_str);
        match (system, code) {
            (Some(s), Some(c)) => vs.get(s).is_some_and(|codes| codes.contains(c)),
            _ => false,
        }
    };
    let ok = if ty == "Coding" {
        // A Coding from another system is outside the set; one without a system cannot be judged.
        let system = obj.get("system").and_then(Value::as_str);
        system.is_none() || in_set(obj)
    } else {
        let codings: Vec<&Map<String, Value>> = obj
            .get("coding")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
            .collect();
        codings.is_empty() || codings.into_iter().any(in_set)
    };
    if !ok {
        w.report(
            IssueCode::CodeInvalid,
            path,
            format!("No coding is from the required value set {vs_url}"),
        );
    }
}
