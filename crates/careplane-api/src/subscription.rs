//! What the server checks when a Subscription is written: criteria it can evaluate, a channel
//! it can deliver, and an endpoint on the allow-list (`CAREPLANE_SUBSCRIPTION_ALLOWED_ENDPOINTS`).
//! An accepted `requested` Subscription is stored `active` (R4 subscription.html).

use careplane_fhir::{subscription, Issue, IssueCode, ResourceType};
use serde_json::Value;

use crate::state::AppState;

const SUBSCRIPTION: &str = "Subscription";

/// Problems that keep a live Subscription from being stored; none for other types, and none
/// for a Subscription that asks for no notifications (`off`, `error`).
pub(crate) fn issues(state: &AppState, rt: &ResourceType, body: &Value) -> Vec<Issue> {
    if rt.as_str() != SUBSCRIPTION {
        return Vec::new();
    }
    let mut issues = subscription::issues(state.defs, body);
    if issues.is_empty() && subscription::topic(body).is_some() {
        let endpoint = body
            .pointer("/channel/endpoint")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !state.settings.subscription_endpoints.allows(endpoint) {
            let msg = format!(
                "channel.endpoint '{endpoint}' is not among the endpoints this server notifies \
                 (CAREPLANE_SUBSCRIPTION_ALLOWED_ENDPOINTS)"
            );
            issues.push(Issue::error(IssueCode::Security, msg).at("Subscription.channel.endpoint"));
        }
    }
    issues
}

/// Marks an accepted `requested` Subscription `active`: the server has set it up.
pub(crate) fn activate(rt: &ResourceType, body: &mut Value) {
    if rt.as_str() != SUBSCRIPTION {
        return;
    }
    if let Some(status) = body.get_mut("status") {
        if status == "requested" {
            *status = Value::String("active".into());
        }
    }
}
