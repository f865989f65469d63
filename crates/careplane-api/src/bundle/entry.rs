//! One Bundle entry's request, parsed and checked before any database work.

use careplane_fhir::search::query::{self, ParseOptions, SearchRequest};
use careplane_fhir::validate::validate_bundle_entry;
use careplane_fhir::{Id, Issue, IssueCode, ResourceType, VersionId};
use careplane_store::Condition;
use serde_json::Value;

use super::patch;
use crate::condition::parse_condition;
use crate::error::{ApiError, Result};
use crate::extract::parse_etag;
use crate::handlers::identity_issues;
use crate::state::AppState;

/// What an entry asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Delete,
    Create,
    Update,
    Patch,
    Read,
}

impl Action {
    /// The step of a transaction that runs it, in the R4 order: DELETE, POST, PUT and PATCH
    /// together, then GET.
    pub fn step(self) -> u8 {
        match self {
            Action::Delete => 0,
            Action::Create => 1,
            Action::Update | Action::Patch => 2,
            Action::Read => 3,
        }
    }
}

/// Which resource(s) the entry's URL names.
#[derive(Debug, Clone)]
pub enum EntryTarget {
    Type,
    Instance(Id),
    Version(Id, VersionId),
    /// `Type?criteria` of a PUT, PATCH or DELETE: resolved to 0, 1 or many matches inside
    /// the transaction.
    Conditional(Box<Condition>),
    /// `GET Type?params` (or `GET Type`): a search answered with a searchset Bundle.
    Search(Box<SearchRequest>),
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
    /// The JSON Patch of a PATCH entry (decoded from its Binary resource).
    pub patch: Option<json_patch::Patch>,
}

impl Entry {
    /// `POST Patient`, `PUT Patient/1`…: how messages name the entry.
    pub fn label(&self) -> String {
        let method = match self.action {
            Action::Delete => "DELETE",
            Action::Create => "POST",
            Action::Update => "PUT",
            Action::Patch => "PATCH",
            Action::Read => "GET",
        };
        let target = match &self.target {
            EntryTarget::Type => String::new(),
            EntryTarget::Instance(id) => format!("/{id}"),
            EntryTarget::Version(id, v) => format!("/{id}/_history/{v}"),
            EntryTarget::Conditional(_) | EntryTarget::Search(_) => "?…".into(),
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
        "PATCH" => Action::Patch,
        other => {
            return Err(bad(
                IssueCode::Value,
                ".request.method",
                format!(
                    "request.method '{other}' is not one of GET, HEAD, POST, PUT, PATCH, DELETE"
                ),
            ))
        }
    };
    let (resource_type, target) = parse_url(state, action, url).map_err(|e| {
        e.within(
            &at(".request.url"),
            &format!("entry {index} ({method} {url})"),
        )
    })?;
    let target_ok = matches!(
        (&action, &target),
        (Action::Create, EntryTarget::Type)
            | (
                Action::Read,
                EntryTarget::Instance(_) | EntryTarget::Version(..) | EntryTarget::Search(_)
            )
            | (
                Action::Update | Action::Patch | Action::Delete,
                EntryTarget::Instance(_) | EntryTarget::Conditional(_)
            )
    );
    if !target_ok {
        return Err(bad(
            IssueCode::NotSupported,
            ".request.url",
            format!("'{url}' is not a valid target for {method}"),
        ));
    }
    let mut resource = raw.get("resource").cloned();
    let patch = match action {
        Action::Patch => Some(
            patch::json_patch(resource.as_ref()).map_err(|e| bad(e.code, e.field, e.message))?,
        ),
        _ => None,
    };
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
        if !issues.iter().any(Issue::is_error) {
            issues.extend(crate::subscription::issues(state, &resource_type, body));
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
    if let (Some(body), Action::Create | Action::Update) = (resource.as_mut(), &action) {
        crate::subscription::activate(&resource_type, body);
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
        patch,
    })
}

/// `Type`, `Type/id`, `Type/id/_history/vid` or `Type?query`, relative to the base. The query
/// of a GET is a search (lenient, like `GET /Type` without `Prefer: handling=strict`); of any
/// other method a condition (strict).
fn parse_url(state: &AppState, action: Action, url: &str) -> Result<(ResourceType, EntryTarget)> {
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
        ([_], q) if action == Action::Read => {
            EntryTarget::Search(Box::new(parse_search(state, &rt, q.unwrap_or_default())?))
        }
        ([_], None) => EntryTarget::Type,
        ([_], Some(q)) => EntryTarget::Conditional(Box::new(parse_condition(state.defs, &rt, q)?)),
        ([_, i], None) => EntryTarget::Instance(id(i)?),
        ([_, i, "_history", v], None) => EntryTarget::Version(
            id(i)?,
            VersionId::parse(v).ok_or_else(|| bad(format!("'{v}' is not a version")))?,
        ),
        ([_, _, "_history"], None) => {
            return Err(ApiError::bad_request(
                IssueCode::NotSupported,
                "history entries are not supported in Bundles; use GET /{type}/{id}/_history",
            ))
        }
        _ => return Err(bad("not a supported entry URL".into())),
    };
    Ok((rt, target))
}

/// A search entry's query, parsed as `GET /{type}?query` parses it.
fn parse_search(state: &AppState, rt: &ResourceType, query: &str) -> Result<SearchRequest> {
    let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let options = ParseOptions {
        strict: false,
        max_count: state.settings.max_page_size,
    };
    query::parse(state.defs, &[rt.to_string()], &params, options)
        .map_err(|e| ApiError::BadRequest(vec![e.issue()]))
}
