//! One Bundle entry's request, parsed and checked before any database work.

use careplane_fhir::{Id, Issue, IssueCode, ResourceType, VersionId};
use careplane_store::Condition;
use serde_json::Value;

use crate::condition::parse_condition;
use crate::error::{ApiError, Result};
use crate::extract::parse_etag;
use careplane_fhir::validate::validate_bundle_entry;

use crate::handlers::identity_issues;
use crate::state::AppState;

/// What an entry asks for; the variant order is the R4 processing order of a transaction
/// (DELETE, POST, PUT/PATCH, GET).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Delete,
    Create,
    Update,
    Read,
}

/// Which resource(s) the entry's URL names.
#[derive(Debug, Clone)]
pub enum EntryTarget {
    Type,
    Instance(Id),
    Version(Id, VersionId),
    /// `Type?criteria`: resolved to 0, 1 or many matches inside the transaction.
    Conditional(Box<Condition>),
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub index: usize,
    pub full_url: Option<String>,
    pub action: Action,
    pub resource_type: ResourceType,
    pub target: EntryTarget,
    pub resource: Option<Value>,
    pub if_none_exist: Option<Condition>,
    pub if_match: Option<VersionId>,
}

impl Entry {
    /// `POST Patient`, `PUT Patient/1`…: how messages name the entry.
    pub fn label(&self) -> String {
        let method = match self.action {
            Action::Delete => "DELETE",
            Action::Create => "POST",
            Action::Update => "PUT",
            Action::Read => "GET",
        };
        let target = match &self.target {
            EntryTarget::Type => String::new(),
            EntryTarget::Instance(id) => format!("/{id}"),
            EntryTarget::Version(id, v) => format!("/{id}/_history/{v}"),
            EntryTarget::Conditional(_) => "?…".into(),
        };
        format!("{method} {}{target}", self.resource_type)
    }
}

impl Entry {
    /// `error` placed at this entry (`field` is e.g. `""` or `".resource"`), naming it.
    pub fn locate(&self, error: ApiError, field: &str) -> ApiError {
        error.within(
            &format!("Bundle.entry[{}]{field}", self.index),
            &format!("entry {} ({})", self.index, self.label()),
        )
    }
}

/// Parses `Bundle.entry[index]`; errors carry the entry's FHIRPath.
pub fn parse_entry(state: &AppState, index: usize, raw: &Value) -> Result<Entry> {
    let at = |field: &str| format!("Bundle.entry[{index}]{field}");
    let bad = |code, field: &str, msg: String| {
        ApiError::BadRequest(vec![Issue::error(code, msg).at(at(field))])
    };
    let request = raw
        .get("request")
        .filter(|r| r.is_object())
        .ok_or_else(|| bad(IssueCode::Required, "", "entry.request is required".into()))?;
    let text = |name: &str| request.get(name).and_then(Value::as_str);
    let method = text("method").unwrap_or_default();
    let url = text("url").filter(|u| !u.is_empty()).ok_or_else(|| {
        bad(
            IssueCode::Required,
            ".request",
            "request.url is required".into(),
        )
    })?;
    let action = match method {
        "DELETE" => Action::Delete,
        "POST" => Action::Create,
        "PUT" => Action::Update,
        "GET" | "HEAD" => Action::Read,
        "PATCH" => {
            return Err(bad(
                IssueCode::NotSupported,
                ".request.method",
                "PATCH entries are not supported in Bundles yet; use PUT or PATCH /{type}/{id}"
                    .into(),
            ))
        }
        other => {
            return Err(bad(
                IssueCode::Value,
                ".request.method",
                format!("request.method '{other}' is not one of GET, HEAD, POST, PUT, DELETE"),
            ))
        }
    };
    let (resource_type, target) = parse_url(state, url)
        .map_err(|e| e.within(&at(".request.url"), &format!("request.url '{url}'")))?;
    let target_ok = match (&action, &target) {
        (Action::Create, EntryTarget::Type) => true,
        (Action::Create, _) => false,
        (Action::Read, EntryTarget::Instance(_) | EntryTarget::Version(..)) => true,
        (
            Action::Update | Action::Delete,
            EntryTarget::Instance(_) | EntryTarget::Conditional(_),
        ) => true,
        _ => false,
    };
    if !target_ok {
        let msg = if matches!(
            (&action, &target),
            (
                Action::Read,
                EntryTarget::Conditional(_) | EntryTarget::Type
            )
        ) {
            "search entries are not supported until search is available".to_string()
        } else {
            format!("'{url}' is not a valid target for {method}")
        };
        return Err(bad(IssueCode::NotSupported, ".request.url", msg));
    }
    let resource = raw.get("resource").cloned();
    if matches!(action, Action::Create | Action::Update) {
        let Some(body) = &resource else {
            return Err(bad(
                IssueCode::Required,
                "",
                format!("{method} needs entry.resource"),
            ));
        };
        let url_id = match &target {
            EntryTarget::Instance(id) => Some(id),
            _ => None,
        };
        let mut issues = identity_issues(&resource_type, body, url_id);
        if !issues.iter().any(Issue::is_error) {
            issues.extend(validate_bundle_entry(state.defs, body));
        }
        let issues: Vec<Issue> = issues
            .into_iter()
            .map(|issue| {
                let path = issue.expression.clone().unwrap_or_default();
                issue.at(at(&format!(".resource.{path}"))
                    .trim_end_matches('.')
                    .to_string())
            })
            .collect();
        if issues.iter().any(Issue::is_error) {
            return Err(ApiError::BadRequest(issues));
        }
    }
    let if_none_exist = text("ifNoneExist")
        .map(|criteria| parse_condition(state.defs, &resource_type, criteria))
        .transpose()
        .map_err(|e| e.within(&at(".request.ifNoneExist"), "request.ifNoneExist"))?;
    let if_match = text("ifMatch")
        .map(|v| parse_etag("request.ifMatch", v))
        .transpose()
        .map_err(|e| e.within(&at(".request.ifMatch"), "request.ifMatch"))?;
    Ok(Entry {
        index,
        full_url: raw
            .get("fullUrl")
            .and_then(Value::as_str)
            .map(str::to_string),
        action,
        resource_type,
        target,
        resource,
        if_none_exist,
        if_match,
    })
}

/// `Type`, `Type/id`, `Type/id/_history/vid` or `Type?criteria`, relative to the base.
fn parse_url(state: &AppState, url: &str) -> Result<(ResourceType, EntryTarget)> {
    let bad = |msg: String| ApiError::bad_request(IssueCode::Value, msg);
    if url.contains("://") {
        return Err(bad(
            "entry URLs must be relative to the server base, e.g. Patient/123".into(),
        ));
    }
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rt = ResourceType::parse(state.defs, segments[0])
        .ok_or_else(|| bad(format!("'{}' is not a resource type", segments[0])))?;
    let id = |s: &str| Id::parse(s).ok_or_else(|| bad(format!("'{s}' is not a valid id")));
    let target = match (segments.as_slice(), query) {
        ([_], None) => EntryTarget::Type,
        ([_], Some(q)) => EntryTarget::Conditional(Box::new(parse_condition(state.defs, &rt, q)?)),
        ([_, i], None) => EntryTarget::Instance(id(i)?),
        ([_, i, "_history", v], None) => EntryTarget::Version(
            id(i)?,
            VersionId::parse(v).ok_or_else(|| bad(format!("'{v}' is not a version")))?,
        ),
        _ => return Err(bad("not a supported entry URL".into())),
    };
    Ok((rt, target))
}
