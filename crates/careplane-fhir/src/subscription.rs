//! R4 `Subscription` (subscription.html) as Careplane runs it: `rest-hook` channels whose
//! `criteria` is a search over one resource type. Pure rules shared by the API (what may be
//! stored), the store (which types have listeners) and the worker (what to deliver where).

use serde_json::Value;

use crate::search::query::{self, ParseOptions, RESULT_PARAMETERS};
use crate::{Definitions, Issue, IssueCode};

/// Job kind that finds the Subscriptions a committed change matches (enqueued by the store in
/// the transaction of the change: the outbox).
pub const MATCH_KIND: &str = "subscription-match";
/// Job kind that delivers one notification to one endpoint, with retries and dead letters.
pub const DELIVER_KIND: &str = "subscription-deliver";

/// The only payload type a rest-hook can ask for besides none (empty notifications).
pub const JSON_PAYLOAD: &str = "application/fhir+json";

/// The statuses under which a Subscription gets notifications. `requested` is turned into
/// `active` by the server when it accepts the Subscription; both count so that data stored
/// before that step (imports) is not silently ignored.
const LIVE_STATUSES: [&str; 2] = ["active", "requested"];

/// A parsed `Subscription.criteria`: `Type?name=value&…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Criteria {
    pub resource_type: String,
    pub params: Vec<(String, String)>,
}

impl Criteria {
    pub fn parse(text: &str) -> Result<Criteria, String> {
        let (resource_type, query) = text.split_once('?').unwrap_or((text, ""));
        if resource_type.is_empty() || resource_type.contains('/') {
            return Err(format!(
                "criteria '{text}' must be a search on one resource type, e.g. 'Observation?code=…'"
            ));
        }
        let params = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        Ok(Criteria {
            resource_type: resource_type.to_string(),
            params,
        })
    }

    /// The criteria as a strict search (an unknown parameter would widen the criteria to every
    /// resource of the type, so it is refused, never ignored).
    pub fn search(
        &self,
        defs: &Definitions,
        extra: &[(String, String)],
    ) -> Result<query::SearchRequest, String> {
        if !defs.is_resource_type(&self.resource_type) {
            return Err(format!("'{}' is not a resource type", self.resource_type));
        }
        if let Some((name, _)) = self.params.iter().find(|(name, _)| {
            RESULT_PARAMETERS.contains(&name.split(':').next().unwrap_or_default())
        }) {
            return Err(format!("'{name}' is not a search criterion"));
        }
        let mut params = self.params.clone();
        params.extend_from_slice(extra);
        let options = ParseOptions {
            strict: true,
            ..ParseOptions::default()
        };
        query::parse(
            defs,
            std::slice::from_ref(&self.resource_type),
            &params,
            options,
        )
        .map_err(|e| e.message)
    }
}

/// Where and how a rest-hook Subscription is notified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestHook {
    pub endpoint: String,
    /// `None`: an empty POST to the endpoint. `Some(application/fhir+json)`: the resource is
    /// PUT to `{endpoint}/{type}/{id}` (R4 subscription.html, rest-hook).
    pub payload: Option<String>,
    /// `channel.header`, split into name and value.
    pub headers: Vec<(String, String)>,
}

impl RestHook {
    pub fn of(subscription: &Value) -> Result<RestHook, String> {
        let channel = subscription.get("channel").unwrap_or(&Value::Null);
        let kind = channel.get("type").and_then(Value::as_str).unwrap_or("");
        if kind != "rest-hook" {
            return Err(format!(
                "channel.type '{kind}' is not supported: Careplane delivers rest-hook only"
            ));
        }
        let endpoint = channel
            .get("endpoint")
            .and_then(Value::as_str)
            .ok_or("a rest-hook channel needs channel.endpoint")?;
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return Err(format!(
                "channel.endpoint '{endpoint}' must be an absolute http(s) URL"
            ));
        }
        let payload = channel
            .get("payload")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(p) = payload.as_deref().filter(|p| *p != JSON_PAYLOAD) {
            return Err(format!(
                "channel.payload '{p}' is not supported (use {JSON_PAYLOAD}, or none for empty notifications)"
            ));
        }
        let mut headers = Vec::new();
        for header in channel
            .get("header")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let text = header.as_str().unwrap_or_default();
            let parsed = text
                .split_once(':')
                .map(|(n, v)| (n.trim(), v.trim()))
                .filter(|(n, v)| is_header_name(n) && is_header_value(v));
            match parsed {
                Some((name, value)) => headers.push((name.to_string(), value.to_string())),
                None => return Err(
                    "channel.header entries must read 'Name: value' (a token, then visible text)"
                        .to_string(),
                ),
            }
        }
        Ok(RestHook {
            endpoint: endpoint.to_string(),
            payload,
            headers,
        })
    }
}

/// The resource type whose changes a stored Subscription listens to, or `None` when it gets no
/// notifications (off, errored, another channel, unreadable criteria).
pub fn topic(subscription: &Value) -> Option<String> {
    let status = subscription.get("status").and_then(Value::as_str)?;
    if !LIVE_STATUSES.contains(&status) {
        return None;
    }
    RestHook::of(subscription).ok()?;
    let criteria = subscription.get("criteria").and_then(Value::as_str)?;
    Criteria::parse(criteria).ok().map(|c| c.resource_type)
}

/// What a Subscription must satisfy beyond the definitions to be stored: criteria the server can
/// evaluate and a channel it can deliver to. Only statuses that get notifications are checked,
/// so an `off` or `error` Subscription can always be stored (e.g. to switch one off).
pub fn issues(defs: &Definitions, subscription: &Value) -> Vec<Issue> {
    let status = subscription.get("status").and_then(Value::as_str);
    if !status.is_some_and(|s| LIVE_STATUSES.contains(&s)) {
        return Vec::new();
    }
    let mut issues = Vec::new();
    if let Some(text) = subscription.get("criteria").and_then(Value::as_str) {
        let checked = Criteria::parse(text).and_then(|c| c.search(defs, &[]).map(|_| ()));
        if let Err(message) = checked {
            issues.push(
                Issue::error(
                    IssueCode::Invalid,
                    format!("Subscription criteria: {message}"),
                )
                .at("Subscription.criteria"),
            );
        }
    }
    if let Err(message) = RestHook::of(subscription) {
        issues.push(Issue::error(IssueCode::NotSupported, message).at("Subscription.channel"));
    }
    issues
}

/// Endpoints notifications may go to (`CAREPLANE_SUBSCRIPTION_ALLOWED_ENDPOINTS`): absolute
/// URL prefixes. Anything else is refused when the Subscription is written and again before
/// every delivery, so a Subscription cannot make the server call internal addresses (SSRF).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    prefixes: Vec<url::Url>,
}

impl AllowList {
    /// Parses a comma-separated list of `http(s)://host[:port][/path]` prefixes.
    pub fn parse(text: &str) -> Result<AllowList, String> {
        let mut prefixes = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let url = url::Url::parse(entry).map_err(|e| format!("'{entry}': {e}"))?;
            if !matches!(url.scheme(), "http" | "https")
                || url.host_str().is_none()
                || !url.username().is_empty()
                || url.password().is_some()
                || url.query().is_some()
                || url.fragment().is_some()
            {
                return Err(format!(
                    "'{entry}' must be an http(s) URL prefix without credentials, query or fragment"
                ));
            }
            prefixes.push(url);
        }
        Ok(AllowList { prefixes })
    }

    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty()
    }

    /// Whether `endpoint` is under one of the prefixes: same scheme, host and port, and a path
    /// that continues the prefix's path at a segment boundary. Compared after URL normalisation
    /// (case of the host, default ports, `..` segments), never as raw text.
    pub fn allows(&self, endpoint: &str) -> bool {
        let Ok(url) = url::Url::parse(endpoint) else {
            return false;
        };
        if !url.username().is_empty() || url.password().is_some() {
            return false;
        }
        self.prefixes.iter().any(|prefix| {
            prefix.scheme() == url.scheme()
                && prefix.host() == url.host()
                && prefix.port_or_known_default() == url.port_or_known_default()
                && path_continues(prefix.path(), url.path())
        })
    }
}

fn path_continues(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn subscription(criteria: &str, channel: Value) -> Value {
        json!({
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "test",
            "criteria": criteria,
            "channel": channel,
        })
    }

    fn hook(endpoint: &str) -> Value {
        json!({"type": "rest-hook", "endpoint": endpoint})
    }

    #[test]
    fn criteria_name_a_type_and_strict_parameters() {
        let defs = Definitions::r4().unwrap();
        let c = Criteria::parse("Observation?code=http://loinc.org|1234-5&status=final").unwrap();
        assert_eq!(c.resource_type, "Observation");
        assert_eq!(c.params.len(), 2);
        assert!(c.search(defs, &[]).is_ok());
        assert!(Criteria::parse("Observation")
            .unwrap()
            .search(defs, &[])
            .is_ok());
        let unknown = Criteria::parse("Observation?colour=red").unwrap();
        assert!(unknown.search(defs, &[]).is_err());
        let paging = Criteria::parse("Observation?_count=5").unwrap();
        assert!(paging.search(defs, &[]).is_err());
        assert!(Criteria::parse("Nope?x=1")
            .unwrap()
            .search(defs, &[])
            .is_err());
        assert!(Criteria::parse("Patient/1/Observation?code=x").is_err());
        assert!(Criteria::parse("?code=x").is_err());
    }

    #[test]
    fn topics_only_for_live_rest_hooks() {
        let live = subscription("Observation?status=final", hook("https://h.example/x"));
        assert_eq!(topic(&live).as_deref(), Some("Observation"));
        let mut off = live.clone();
        off["status"] = json!("off");
        assert_eq!(topic(&off), None);
        let email = subscription(
            "Observation?status=final",
            json!({"type": "email", "endpoint": "mailto:a@b"}),
        );
        assert_eq!(topic(&email), None);
    }

    #[test]
    fn issues_name_criteria_and_channel_problems() {
        let defs = Definitions::r4().unwrap();
        let good = subscription("Observation?status=final", hook("https://h.example/x"));
        assert!(issues(defs, &good).is_empty());
        let bad = subscription(
            "Observation?colour=red",
            json!({"type": "websocket", "endpoint": "wss://h"}),
        );
        let found = issues(defs, &bad);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(
            found[0].expression.as_deref(),
            Some("Subscription.criteria")
        );
        assert_eq!(found[1].expression.as_deref(), Some("Subscription.channel"));
        let mut off = bad.clone();
        off["status"] = json!("off");
        assert!(
            issues(defs, &off).is_empty(),
            "switching off is always allowed"
        );
    }

    #[test]
    fn rest_hook_payload_and_headers() {
        let mut channel = hook("https://h.example/x");
        channel["payload"] = json!("application/fhir+json");
        channel["header"] = json!(["Authorization: Bearer abc", "X-Tag:1"]);
        let parsed = RestHook::of(&subscription("Patient", channel.clone())).unwrap();
        assert_eq!(parsed.payload.as_deref(), Some(JSON_PAYLOAD));
        assert_eq!(
            parsed.headers,
            vec![
                ("Authorization".to_string(), "Bearer abc".to_string()),
                ("X-Tag".to_string(), "1".to_string())
            ]
        );
        channel["header"] = json!(["no colon"]);
        assert!(RestHook::of(&subscription("Patient", channel.clone())).is_err());
        channel["header"] = json!(["Bad Name: x"]);
        assert!(RestHook::of(&subscription("Patient", channel.clone())).is_err());
        channel["header"] = json!(["X: line\r\nInjected: 1"]);
        assert!(RestHook::of(&subscription("Patient", channel.clone())).is_err());
        channel["header"] = json!([]);
        channel["payload"] = json!("application/fhir+xml");
        assert!(RestHook::of(&subscription("Patient", channel)).is_err());
        assert!(RestHook::of(&subscription("Patient", hook("ftp://h/x"))).is_err());
    }

    #[test]
    fn allow_list_matches_normalised_prefixes_at_segment_boundaries() {
        let allow = AllowList::parse("https://hooks.example.org/careplane/, http://127.0.0.1:8099")
            .unwrap();
        assert!(allow.allows("https://hooks.example.org/careplane/clinic-1"));
        assert!(allow.allows("https://HOOKS.example.org:443/careplane"));
        assert!(allow.allows("http://127.0.0.1:8099/anything?x=1"));
        // Tricks that a text prefix check would let through.
        assert!(!allow.allows("https://hooks.example.org/careplane/../admin"));
        assert!(!allow.allows("https://hooks.example.org/careplane-evil/x"));
        assert!(!allow.allows("https://hooks.example.org.evil.com/careplane/x"));
        assert!(!allow.allows("https://hooks.example.org@evil.com/careplane/x"));
        assert!(!allow.allows("https://user:pw@hooks.example.org/careplane/x"));
        assert!(!allow.allows("http://hooks.example.org/careplane/x"));
        assert!(!allow.allows("http://127.0.0.1:8098/x"));
        assert!(!allow.allows("http://169.254.169.254/latest"));
        assert!(!allow.allows("not a url"));
        assert!(AllowList::default().is_empty());
        assert!(!AllowList::default().allows("https://hooks.example.org/careplane/x"));
        assert!(AllowList::parse("ftp://x/").is_err());
        assert!(AllowList::parse("https://u:p@x/").is_err());
        assert!(AllowList::parse("").unwrap().is_empty());
    }
}
