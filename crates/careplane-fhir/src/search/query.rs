//! Parsing a search request (`name=value` pairs) into typed filters, against the official
//! SearchParameter definitions. Everything the server cannot apply exactly as asked is an
//! error here, so storage never has to guess: an unknown parameter is dropped only in lenient
//! mode (and reported), while a known parameter with an unsupported modifier, a chain deeper
//! than [`MAX_CHAIN_DEPTH`] or a malformed value is always refused.

use crate::definitions::{Definitions, SearchParamDef};
use crate::outcome::{Issue, IssueCode};
use crate::search::date::{parse_date_range, DateRange};
use crate::search::index::{canonical_param, of_type_code, of_type_param, takes_of_type};
use crate::search::text::normalize;
use crate::search::ucum::{ucum_unit, UCUM_SYSTEM};

/// Chains (`subject:Patient.organization.name`) and nested `_has` may go this deep.
pub const MAX_CHAIN_DEPTH: usize = 3;
/// `_include:iterate` / `_revinclude:iterate` follow references at most this many rounds.
pub const MAX_INCLUDE_ITERATIONS: usize = 3;

/// The type of a search parameter, from `SearchParameter.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    String,
    Token,
    Reference,
    Date,
    Number,
    Quantity,
    Uri,
    Composite,
    Special,
}

impl ParamKind {
    pub fn parse(s: &str) -> Option<ParamKind> {
        Some(match s {
            "string" => ParamKind::String,
            "token" => ParamKind::Token,
            "reference" => ParamKind::Reference,
            "date" => ParamKind::Date,
            "number" => ParamKind::Number,
            "quantity" => ParamKind::Quantity,
            "uri" => ParamKind::Uri,
            "composite" => ParamKind::Composite,
            "special" => ParamKind::Special,
            _ => return None,
        })
    }
}

/// A parameter as storage needs it: which index rows to look at.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// `_id`: the resource's own id column.
    Id,
    /// `_lastUpdated`: the resource's own timestamp column.
    LastUpdated,
    /// Index rows with this `param` code (see [`crate::search::index`]).
    Index { code: String, kind: ParamKind },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

impl Prefix {
    /// Splits a leading two-letter prefix off a date/number/quantity value.
    fn split(value: &str) -> (Prefix, &str) {
        let prefixes = [
            ("eq", Prefix::Eq),
            ("ne", Prefix::Ne),
            ("gt", Prefix::Gt),
            ("lt", Prefix::Lt),
            ("ge", Prefix::Ge),
            ("le", Prefix::Le),
            ("sa", Prefix::Sa),
            ("eb", Prefix::Eb),
            ("ap", Prefix::Ap),
        ];
        for (text, prefix) in prefixes {
            if let Some(rest) = value.strip_prefix(text) {
                return (prefix, rest);
            }
        }
        (Prefix::Eq, value)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum StringMatch {
    /// Default: the normalized value starts with this (normalized) text.
    StartsWith(String),
    /// `:exact`: equal, case and accents included.
    Exact(String),
    /// `:contains`: the normalized value contains this (normalized) text.
    Contains(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum SystemMatch {
    /// `code`: any system.
    Any,
    /// `|code`: no system.
    None,
    /// `system|code` or `system|`.
    Is(String),
}

/// One value of a parameter; the values of one parameter are ORed.
#[derive(Debug, Clone, PartialEq)]
pub enum Predicate {
    String(StringMatch),
    Token {
        system: SystemMatch,
        code: Option<String>,
    },
    /// `:text`: normalized display/text starts with this.
    TokenText(String),
    Reference {
        target_type: Option<String>,
        id: Option<String>,
        /// An absolute or canonical reference, matched on the stored url.
        url: Option<String>,
    },
    Date {
        prefix: Prefix,
        range: DateRange,
    },
    /// `low..high` is the range the value's precision implies (`100` = `[99.5, 100.5)`).
    Number {
        prefix: Prefix,
        value: f64,
        low: f64,
        high: f64,
    },
    Quantity {
        prefix: Prefix,
        value: f64,
        low: f64,
        high: f64,
        system: Option<String>,
        code: Option<String>,
    },
    Uri {
        value: String,
        mode: UriMatch,
    },
    /// Composite components, in order; each with its component's index code.
    Composite(Vec<(Target, Predicate)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriMatch {
    Exact,
    /// `:below`: stored uri starts with the value.
    Below,
    /// `:above`: the value starts with the stored uri.
    Above,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Matches when any value matches; `negate` (`:not`) inverts the whole set.
    Match {
        target: Target,
        values: Vec<Predicate>,
        negate: bool,
    },
    /// `:missing=true|false`.
    Missing { target: Target, missing: bool },
    /// `param[:Type].rest`: the referenced resource (of one of `target_types`) matches `filter`.
    Chain {
        code: String,
        target_types: Vec<String>,
        filter: Box<Filter>,
    },
    /// `_has:Type:param:rest`: some `source_type` resource referencing this one through
    /// `code` matches `filter`.
    Has {
        source_type: String,
        code: String,
        filter: Box<Filter>,
    },
    /// Any of these.
    AnyOf(Vec<Filter>),
    /// In the compartment of `compartment_type/id`: referring to it through one of the
    /// listed parameters of its type (and, with `include_self`, being it).
    Compartment {
        compartment_type: String,
        id: String,
        members: Vec<(String, Vec<String>)>,
        include_self: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    /// The resource type holding the reference (`MedicationRequest` in `MedicationRequest:medication`).
    pub source_type: String,
    pub code: String,
    pub target_type: Option<String>,
    pub iterate: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SortKey {
    pub target: Target,
    pub descending: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    True,
    Text,
    Data,
    Count,
    False,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Total {
    #[default]
    None,
    Estimate,
    Accurate,
}

/// A parsed search.
#[derive(Debug, Clone, Default)]
pub struct SearchRequest {
    /// The types searched: one for `GET /Type`, the `_type` list (or every type, empty) for a
    /// system search.
    pub types: Vec<String>,
    /// ANDed.
    pub filters: Vec<Filter>,
    pub includes: Vec<Include>,
    pub revincludes: Vec<Include>,
    pub sort: Vec<SortKey>,
    pub count: Option<u32>,
    pub summary: Option<Summary>,
    pub elements: Option<Vec<String>>,
    pub total: Total,
    /// The opaque paging cursor (`_cursor`) from a `next` link.
    pub cursor: Option<String>,
    /// The parameters applied, in order, as they should appear in the `self` link.
    pub applied: Vec<(String, String)>,
    /// Unknown parameters that were ignored (lenient handling only).
    pub ignored: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct ParseOptions {
    /// `Prefer: handling=strict`: unknown parameters are errors instead of being ignored.
    pub strict: bool,
    /// `_count` above this is capped to it.
    pub max_count: u32,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            strict: false,
            max_count: 1000,
        }
    }
}

/// Why a search was refused: always the client's fault (400).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct SearchError {
    pub code: IssueCode,
    pub message: String,
}

impl SearchError {
    fn invalid(message: impl Into<String>) -> Self {
        SearchError {
            code: IssueCode::Invalid,
            message: message.into(),
        }
    }

    fn unsupported(message: impl Into<String>) -> Self {
        SearchError {
            code: IssueCode::NotSupported,
            message: message.into(),
        }
    }

    pub fn issue(&self) -> Issue {
        Issue::error(self.code, self.message.clone())
    }
}

type Result<T> = std::result::Result<T, SearchError>;

/// Parameters that steer the result rather than filter it.
pub const RESULT_PARAMETERS: &[&str] = &[
    "_sort",
    "_count",
    "_include",
    "_revinclude",
    "_summary",
    "_elements",
    "_total",
    "_contained",
    "_containedType",
    "_format",
    "_pretty",
    "_cursor",
    "_type",
];

/// Parses `params` for a search over `types` (one type, or several/none for a system search).
pub fn parse(
    defs: &Definitions,
    types: &[String],
    params: &[(String, String)],
    options: ParseOptions,
) -> Result<SearchRequest> {
    let mut request = SearchRequest {
        types: types.to_vec(),
        ..SearchRequest::default()
    };
    // `_type` narrows a system search; read it first since it decides which parameters exist.
    for (name, value) in params {
        if name == "_type" {
            if !types.is_empty() && request.applied.iter().all(|(n, _)| n != "_type") {
                // A type-level search ignores nothing silently: `_type` there is a contradiction
                // only if it names another type.
                if value.split(',').any(|t| !types.iter().any(|ty| ty == t)) {
                    return Err(SearchError::invalid(format!(
                        "_type={value} conflicts with the searched type {}",
                        types.join(",")
                    )));
                }
            }
            if types.is_empty() {
                for ty in value.split(',') {
                    if !defs.is_resource_type(ty) {
                        return Err(SearchError::invalid(format!(
                            "_type: '{ty}' is not a resource type"
                        )));
                    }
                    if !request.types.iter().any(|t| t == ty) {
                        request.types.push(ty.to_string());
                    }
                }
            }
            request.applied.push((name.clone(), value.clone()));
        }
    }
    for (name, value) in params {
        if name == "_type" {
            continue;
        }
        let (base, modifier) = match name.split_once(':') {
            Some((b, m)) => (b, Some(m)),
            None => (name.as_str(), None),
        };
        if RESULT_PARAMETERS.contains(&base) {
            parse_result_parameter(defs, &mut request, base, modifier, value, options)?;
            request.applied.push((name.clone(), value.clone()));
            continue;
        }
        match parse_filter(defs, &request.types, name, value, 0)? {
            Some(filter) => {
                request.filters.push(filter);
                request.applied.push((name.clone(), value.clone()));
            }
            None if options.strict => {
                return Err(SearchError::invalid(format!(
                    "Unknown search parameter '{name}' for {}",
                    describe_types(&request.types)
                )));
            }
            None => request.ignored.push(name.clone()),
        }
    }
    Ok(request)
}

fn describe_types(types: &[String]) -> String {
    if types.is_empty() {
        "all resource types".to_string()
    } else {
        types.join(", ")
    }
}

fn parse_result_parameter(
    defs: &Definitions,
    request: &mut SearchRequest,
    base: &str,
    modifier: Option<&str>,
    value: &str,
    options: ParseOptions,
) -> Result<()> {
    let no_modifier = |what: &str| -> Result<()> {
        match modifier {
            None => Ok(()),
            Some(m) => Err(SearchError::unsupported(format!(
                "{what} does not take a modifier (':{m}')"
            ))),
        }
    };
    match base {
        "_count" => {
            no_modifier("_count")?;
            let count: u32 = value.parse().map_err(|_| {
                SearchError::invalid(format!(
                    "_count must be a non-negative integer, got '{value}'"
                ))
            })?;
            request.count = Some(count.min(options.max_count));
        }
        "_cursor" => {
            no_modifier("_cursor")?;
            request.cursor = Some(value.to_string());
        }
        "_total" => {
            no_modifier("_total")?;
            request.total = match value {
                "none" => Total::None,
                "estimate" => Total::Estimate,
                "accurate" => Total::Accurate,
                _ => {
                    return Err(SearchError::invalid(format!(
                        "_total must be none, estimate or accurate, got '{value}'"
                    )))
                }
            };
        }
        "_summary" => {
            no_modifier("_summary")?;
            request.summary = Some(match value {
                "true" => Summary::True,
                "text" => Summary::Text,
                "data" => Summary::Data,
                "count" => Summary::Count,
                "false" => Summary::False,
                _ => {
                    return Err(SearchError::invalid(format!(
                        "_summary must be true, text, data, count or false, got '{value}'"
                    )))
                }
            });
        }
        "_elements" => {
            no_modifier("_elements")?;
            let elements: Vec<String> = value
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_string)
                .collect();
            if let Some(bad) = elements
                .iter()
                .find(|e| !e.chars().all(|c| c.is_ascii_alphanumeric() || c == '.'))
            {
                return Err(SearchError::invalid(format!(
                    "_elements: '{bad}' is not an element name"
                )));
            }
            request.elements = Some(elements);
        }
        "_sort" => {
            no_modifier("_sort")?;
            for key in value.split(',') {
                let (descending, code) = match key.strip_prefix('-') {
                    Some(code) => (true, code),
                    None => (false, key),
                };
                let target = sort_target(defs, &request.types, code)?;
                request.sort.push(SortKey { target, descending });
            }
        }
        "_include" | "_revinclude" => {
            let iterate = match modifier {
                None => false,
                Some("iterate" | "recurse") => true,
                Some(m) => {
                    return Err(SearchError::unsupported(format!(
                        "{base}:{m} is not supported (only :iterate)"
                    )))
                }
            };
            let include = parse_include(defs, base, value, iterate)?;
            if base == "_include" {
                request.includes.push(include);
            } else {
                request.revincludes.push(include);
            }
        }
        "_contained" | "_containedType" => {
            return Err(SearchError::unsupported(format!(
                "{base} is not supported: contained resources are not searched"
            )))
        }
        // Content negotiation is decided by the HTTP layer.
        _ => {}
    }
    Ok(())
}

fn parse_include(defs: &Definitions, base: &str, value: &str, iterate: bool) -> Result<Include> {
    if value == "*" {
        return Err(SearchError::unsupported(format!(
            "{base}=* is not supported; name the reference parameter"
        )));
    }
    let mut parts = value.split(':');
    let (Some(source_type), Some(code)) = (parts.next(), parts.next()) else {
        return Err(SearchError::invalid(format!(
            "{base}={value}: expected SourceType:parameter[:TargetType]"
        )));
    };
    let target_type = parts.next().map(str::to_string);
    if parts.next().is_some() {
        return Err(SearchError::invalid(format!(
            "{base}={value}: expected SourceType:parameter[:TargetType]"
        )));
    }
    if !defs.is_resource_type(source_type) {
        return Err(SearchError::invalid(format!(
            "{base}={value}: '{source_type}' is not a resource type"
        )));
    }
    let param = defs
        .search_param(source_type, code)
        .filter(|p| p.param_type == "reference")
        .ok_or_else(|| {
            SearchError::invalid(format!(
                "{base}={value}: {source_type} has no reference parameter '{code}'"
            ))
        })?;
    if let Some(target) = &target_type {
        if !param.targets.iter().any(|t| t == target) {
            return Err(SearchError::invalid(format!(
                "{base}={value}: {source_type}:{code} cannot refer to {target}"
            )));
        }
    }
    Ok(Include {
        source_type: source_type.to_string(),
        code: code.to_string(),
        target_type,
        iterate,
    })
}

fn sort_target(defs: &Definitions, types: &[String], code: &str) -> Result<Target> {
    match code {
        "_id" => return Ok(Target::Id),
        "_lastUpdated" => return Ok(Target::LastUpdated),
        _ => {}
    }
    let param = common_param(defs, types, code)
        .ok_or_else(|| SearchError::invalid(format!("_sort: unknown parameter '{code}'")))?;
    let kind = kind_of(param)?;
    match kind {
        ParamKind::String
        | ParamKind::Token
        | ParamKind::Date
        | ParamKind::Number
        | ParamKind::Quantity
        | ParamKind::Uri
        | ParamKind::Reference => Ok(Target::Index {
            code: code.to_string(),
            kind,
        }),
        ParamKind::Composite | ParamKind::Special => Err(SearchError::unsupported(format!(
            "_sort by the {} parameter '{code}' is not supported",
            param.param_type
        ))),
    }
}

/// The definition of `code` shared by every searched type (system searches may only use
/// parameters that mean the same on all of them).
fn common_param<'a>(
    defs: &'a Definitions,
    types: &[String],
    code: &str,
) -> Option<&'a SearchParamDef> {
    if types.is_empty() {
        return defs.search_param("Resource", code);
    }
    let first = defs.search_param(&types[0], code)?;
    types[1..]
        .iter()
        .all(|t| {
            defs.search_param(t, code)
                .is_some_and(|p| p.param_type == first.param_type)
        })
        .then_some(first)
}

fn kind_of(param: &SearchParamDef) -> Result<ParamKind> {
    ParamKind::parse(&param.param_type).ok_or_else(|| {
        SearchError::unsupported(format!(
            "parameter '{}' has unknown type '{}'",
            param.code, param.param_type
        ))
    })
}

/// Parses one `name=value` filter. `Ok(None)` means the parameter is unknown.
fn parse_filter(
    defs: &Definitions,
    types: &[String],
    name: &str,
    value: &str,
    depth: usize,
) -> Result<Option<Filter>> {
    if depth > MAX_CHAIN_DEPTH {
        return Err(SearchError::unsupported(format!(
            "'{name}': chains and _has may be at most {MAX_CHAIN_DEPTH} levels deep"
        )));
    }
    if let Some(rest) = name.strip_prefix("_has:") {
        return parse_has(defs, types, rest, value, depth).map(Some);
    }
    // A chain: the first '.' outside a `:Type` modifier splits the reference from the rest.
    if let Some((head, rest)) = name.split_once('.') {
        return parse_chain(defs, types, head, rest, value, depth);
    }
    let (code, modifier) = match name.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (name, None),
    };
    if value.is_empty() {
        return Err(SearchError::invalid(format!("'{name}' has an empty value")));
    }
    if modifier == Some("missing") {
        let missing = match value {
            "true" => true,
            "false" => false,
            _ => {
                return Err(SearchError::invalid(format!(
                    "{name} must be true or false, got '{value}'"
                )))
            }
        };
        let target = match code {
            "_id" | "_lastUpdated" => {
                return Err(SearchError::unsupported(format!(
                    "{code}:missing is meaningless: every resource has one"
                )))
            }
            _ => match common_param(defs, types, code) {
                Some(param) => Target::Index {
                    code: code.to_string(),
                    kind: kind_of(param)?,
                },
                None => return Ok(None),
            },
        };
        return Ok(Some(Filter::Missing { target, missing }));
    }
    match code {
        "_id" => {
            let negate = match modifier {
                None => false,
                Some("not") => true,
                Some(m) => {
                    return Err(SearchError::unsupported(format!(
                        "_id does not support ':{m}'"
                    )))
                }
            };
            let values = split_or(value)
                .into_iter()
                .map(|id| Predicate::Token {
                    system: SystemMatch::Any,
                    code: Some(unescape(id)),
                })
                .collect();
            return Ok(Some(Filter::Match {
                target: Target::Id,
                values,
                negate,
            }));
        }
        "_lastUpdated" => {
            reject_modifier(name, modifier)?;
            let values = split_or(value)
                .into_iter()
                .map(|v| parse_date(name, v))
                .collect::<Result<_>>()?;
            return Ok(Some(Filter::Match {
                target: Target::LastUpdated,
                values,
                negate: false,
            }));
        }
        "_text" | "_content" | "_list" | "_query" | "_filter" => {
            return Err(SearchError::unsupported(format!(
                "{code} is not supported by this server"
            )))
        }
        _ => {}
    }
    let Some(param) = common_param(defs, types, code) else {
        return Ok(None);
    };
    let mut kind = kind_of(param)?;
    let mut index_code = code.to_string();
    // `subject:identifier` matches Reference.identifier, indexed as a token of its own.
    if kind == ParamKind::Reference && modifier == Some("identifier") {
        kind = ParamKind::Token;
        index_code = format!("{code}:identifier");
    }
    // `identifier:of-type` has rows of its own too (see `index::of_type_rows`).
    if kind == ParamKind::Token && modifier == Some("of-type") {
        if !takes_of_type(code) {
            return Err(SearchError::unsupported(format!(
                "'{name}': :of-type applies only to identifier parameters"
            )));
        }
        index_code = of_type_param(code);
    }
    let mut negate = false;
    let mut values = Vec::new();
    for raw in split_or(value) {
        let predicate = match kind {
            ParamKind::String => {
                let text = unescape(raw);
                Predicate::String(match modifier {
                    None => StringMatch::StartsWith(normalize(&text)),
                    Some("exact") => StringMatch::Exact(text),
                    Some("contains") => StringMatch::Contains(normalize(&text)),
                    Some(m) => return Err(bad_modifier(name, m, "string")),
                })
            }
            ParamKind::Token => match modifier {
                None | Some("identifier") => parse_token(raw),
                Some("not") => {
                    negate = true;
                    parse_token(raw)
                }
                Some("text") => Predicate::TokenText(normalize(&unescape(raw))),
                Some("of-type") => parse_of_type(name, raw)?,
                Some(m @ ("above" | "below" | "in" | "not-in")) => {
                    return Err(SearchError::unsupported(format!(
                        "'{name}': token :{m} needs terminology services, which this server does not have"
                    )))
                }
                Some(m) => return Err(bad_modifier(name, m, "token")),
            },
            ParamKind::Reference => parse_reference(defs, param, name, modifier, raw)?,
            ParamKind::Date => {
                reject_modifier(name, modifier)?;
                parse_date(name, raw)?
            }
            ParamKind::Number => {
                reject_modifier(name, modifier)?;
                let (prefix, number) = Prefix::split(raw);
                let (value, low, high) = parse_number(name, number)?;
                Predicate::Number {
                    prefix,
                    value,
                    low,
                    high,
                }
            }
            ParamKind::Quantity => {
                reject_modifier(name, modifier)?;
                parse_quantity(name, raw)?
            }
            ParamKind::Uri => {
                let mode = match modifier {
                    None => UriMatch::Exact,
                    Some("below") => UriMatch::Below,
                    Some("above") => UriMatch::Above,
                    Some(m) => return Err(bad_modifier(name, m, "uri")),
                };
                Predicate::Uri {
                    value: unescape(raw),
                    mode,
                }
            }
            ParamKind::Composite => {
                reject_modifier(name, modifier)?;
                parse_composite(defs, param, name, raw)?
            }
            ParamKind::Special => {
                return Err(SearchError::unsupported(format!(
                    "'{code}' is a special parameter this server does not support"
                )))
            }
        };
        values.push(predicate);
    }
    if kind == ParamKind::Quantity {
        return quantity_filter(name, &index_code, values).map(Some);
    }
    Ok(Some(Filter::Match {
        target: Target::Index {
            code: index_code,
            kind,
        },
        values,
        negate,
    }))
}

/// Values in a UCUM unit the conversion covers are compared, converted, with the
/// canonical rows ([`canonical_param`]); the others with the values as written. A parameter
/// with both kinds of values (`5|…|g,7||kg`) becomes the OR of the two.
fn quantity_filter(name: &str, code: &str, values: Vec<Predicate>) -> Result<Filter> {
    let (mut canonical, mut plain) = (Vec::new(), Vec::new());
    for value in values {
        match canonical_predicate(name, &value)? {
            Some(converted) => canonical.push(converted),
            None => plain.push(value),
        }
    }
    let filter = |code: String, values: Vec<Predicate>| Filter::Match {
        target: Target::Index {
            code,
            kind: ParamKind::Quantity,
        },
        values,
        negate: false,
    };
    Ok(match (canonical.is_empty(), plain.is_empty()) {
        (true, _) => filter(code.to_string(), plain),
        (false, true) => filter(canonical_param(code), canonical),
        (false, false) => Filter::AnyOf(vec![
            filter(code.to_string(), plain),
            filter(canonical_param(code), canonical),
        ]),
    })
}

/// A quantity value in a UCUM unit the conversion covers, converted to the canonical unit;
/// the range its precision implies is converted with it (`5400|…|mg` = `[5.3995, 5.4005)` g),
/// so `eq` keeps meaning "within the precision written". `None` for any other value.
fn canonical_predicate(name: &str, predicate: &Predicate) -> Result<Option<Predicate>> {
    let Predicate::Quantity {
        prefix,
        value,
        low,
        high,
        system,
        code,
    } = predicate
    else {
        return Ok(None);
    };
    let Some(unit) = ucum_unit(system.as_deref(), code.as_deref()) else {
        return Ok(None);
    };
    let convert = |v: f64| {
        unit.to_canonical(v).ok_or_else(|| {
            SearchError::invalid(format!(
                "'{name}': {value} {} is too large to compare",
                code.as_deref().unwrap_or_default()
            ))
        })
    };
    Ok(Some(Predicate::Quantity {
        prefix: *prefix,
        value: convert(*value)?,
        low: convert(*low)?,
        high: convert(*high)?,
        system: Some(UCUM_SYSTEM.to_string()),
        code: Some(unit.canonical.to_string()),
    }))
}

fn parse_chain(
    defs: &Definitions,
    types: &[String],
    head: &str,
    rest: &str,
    value: &str,
    depth: usize,
) -> Result<Option<Filter>> {
    let (code, type_modifier) = match head.split_once(':') {
        Some((c, t)) => (c, Some(t)),
        None => (head, None),
    };
    let Some(param) = common_param(defs, types, code) else {
        return Ok(None);
    };
    if param.param_type != "reference" {
        return Err(SearchError::invalid(format!(
            "'{head}.{rest}': '{code}' is a {} parameter and cannot be chained",
            param.param_type
        )));
    }
    let mut target_types: Vec<String> = match type_modifier {
        Some(t) => {
            if !param.targets.iter().any(|x| x == t) {
                return Err(SearchError::invalid(format!(
                    "'{head}.{rest}': '{code}' cannot refer to {t}"
                )));
            }
            vec![t.to_string()]
        }
        None => param.targets.clone(),
    };
    // Only the targets where the rest of the chain means something take part.
    let next = rest
        .split(['.', ':'])
        .next()
        .unwrap_or_default()
        .to_string();
    target_types.retain(|t| {
        next == "_id"
            || next == "_lastUpdated"
            || next == "_has"
            || defs.search_param(t, &next).is_some()
    });
    if target_types.is_empty() {
        return Err(SearchError::invalid(format!(
            "'{head}.{rest}': no resource type '{code}' refers to has a parameter '{next}'"
        )));
    }
    let inner = parse_filter(defs, &target_types, rest, value, depth + 1)?.ok_or_else(|| {
        SearchError::invalid(format!(
            "'{head}.{rest}': '{next}' is not a parameter of {}",
            target_types.join(", ")
        ))
    })?;
    Ok(Some(Filter::Chain {
        code: code.to_string(),
        target_types,
        filter: Box::new(inner),
    }))
}

fn parse_has(
    defs: &Definitions,
    types: &[String],
    rest: &str,
    value: &str,
    depth: usize,
) -> Result<Filter> {
    let malformed = || {
        SearchError::invalid(format!(
            "'_has:{rest}': expected _has:Type:reference-parameter:parameter"
        ))
    };
    let (source_type, rest2) = rest.split_once(':').ok_or_else(malformed)?;
    let (code, inner_name) = rest2.split_once(':').ok_or_else(malformed)?;
    if !defs.is_resource_type(source_type) {
        return Err(SearchError::invalid(format!(
            "'_has:{rest}': '{source_type}' is not a resource type"
        )));
    }
    let param = defs
        .search_param(source_type, code)
        .filter(|p| p.param_type == "reference")
        .ok_or_else(|| {
            SearchError::invalid(format!(
                "'_has:{rest}': {source_type} has no reference parameter '{code}'"
            ))
        })?;
    if !types.is_empty() && !types.iter().any(|t| param.targets.contains(t)) {
        return Err(SearchError::invalid(format!(
            "'_has:{rest}': {source_type}:{code} never refers to {}",
            types.join(", ")
        )));
    }
    let source = [source_type.to_string()];
    let inner = parse_filter(defs, &source, inner_name, value, depth + 1)?.ok_or_else(|| {
        SearchError::invalid(format!(
            "'_has:{rest}': '{inner_name}' is not a parameter of {source_type}"
        ))
    })?;
    Ok(Filter::Has {
        source_type: source_type.to_string(),
        code: code.to_string(),
        filter: Box::new(inner),
    })
}

fn bad_modifier(name: &str, modifier: &str, kind: &str) -> SearchError {
    SearchError::unsupported(format!(
        "'{name}': the modifier ':{modifier}' is not supported on {kind} parameters"
    ))
}

fn reject_modifier(name: &str, modifier: Option<&str>) -> Result<()> {
    match modifier {
        None => Ok(()),
        Some(m) => Err(SearchError::unsupported(format!(
            "'{name}': the modifier ':{m}' is not supported on this parameter"
        ))),
    }
}

/// Splits on commas not escaped with `\`.
fn split_or(value: &str) -> Vec<&str> {
    split_unescaped(value, ',')
}

/// Splits on `separator` where it is not escaped with `\` (escapes are kept for [`unescape`]).
fn split_unescaped(value: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in value.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            c if c == separator && !escaped => {
                parts.push(&value[start..i]);
                start = i + c.len_utf8();
            }
            _ => escaped = false,
        }
    }
    parts.push(&value[start..]);
    parts
}

/// Undoes `\,` `\|` `\$` `\\` escapes.
fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Splits on the first `|` not escaped with `\`.
fn split_pipe(value: &str) -> Option<(&str, &str)> {
    let mut escaped = false;
    for (i, c) in value.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '|' if !escaped => return Some((&value[..i], &value[i + 1..])),
            _ => escaped = false,
        }
    }
    None
}

fn parse_token(raw: &str) -> Predicate {
    match split_pipe(raw) {
        None => Predicate::Token {
            system: SystemMatch::Any,
            code: Some(unescape(raw)),
        },
        Some(("", code)) => Predicate::Token {
            system: SystemMatch::None,
            code: Some(unescape(code)),
        },
        Some((system, "")) => Predicate::Token {
            system: SystemMatch::Is(unescape(system)),
            code: None,
        },
        Some((system, code)) => Predicate::Token {
            system: SystemMatch::Is(unescape(system)),
            code: Some(unescape(code)),
        },
    }
}

/// `system|code|value` (all three required, R4 search.html) as a lookup of the
/// `identifier:of-type` rows: the type coding's system, and its code joined to the value as
/// the index writes it ([`of_type_code`]).
fn parse_of_type(name: &str, raw: &str) -> Result<Predicate> {
    match split_unescaped(raw, '|').as_slice() {
        [system, code, value] if !system.is_empty() && !code.is_empty() && !value.is_empty() => {
            Ok(Predicate::Token {
                system: SystemMatch::Is(unescape(system)),
                code: Some(of_type_code(&unescape(code), &unescape(value))),
            })
        }
        _ => Err(SearchError::invalid(format!(
            "'{name}': :of-type takes [system]|[code]|[value], all three non-empty \
             (e.g. http://terminology.hl7.org/CodeSystem/v2-0203|MR|12345), got '{raw}'"
        ))),
    }
}

fn parse_reference(
    defs: &Definitions,
    param: &SearchParamDef,
    name: &str,
    modifier: Option<&str>,
    raw: &str,
) -> Result<Predicate> {
    let raw = unescape(raw);
    match modifier {
        Some(m @ ("above" | "below")) => {
            return Err(SearchError::unsupported(format!(
                "'{name}': reference :{m} is not supported"
            )))
        }
        Some(ty) if !defs.is_resource_type(ty) => return Err(bad_modifier(name, ty, "reference")),
        _ => {}
    }
    let type_modifier = modifier;
    if let Some(ty) = type_modifier {
        if !param.targets.iter().any(|t| t == ty) {
            return Err(SearchError::invalid(format!(
                "'{name}': '{}' cannot refer to {ty}",
                param.code
            )));
        }
    }
    // `Type/id`, an id alone, or an absolute URL / canonical.
    if raw.contains("://") || raw.starts_with("urn:") {
        let segments: Vec<&str> = raw.trim_end_matches('/').rsplitn(3, '/').collect();
        let literal = match segments.as_slice() {
            [id, ty, _] if defs.is_resource_type(ty) => Some((ty.to_string(), id.to_string())),
            _ => None,
        };
        return Ok(Predicate::Reference {
            target_type: literal.as_ref().map(|(t, _)| t.clone()),
            id: literal.map(|(_, id)| id),
            url: Some(raw),
        });
    }
    let (ty, id) = match raw.split_once('/') {
        Some((ty, id)) => {
            if !defs.is_resource_type(ty) {
                return Err(SearchError::invalid(format!(
                    "'{name}': '{ty}' is not a resource type"
                )));
            }
            if let Some(wanted) = type_modifier {
                if wanted != ty {
                    return Err(SearchError::invalid(format!(
                        "'{name}={raw}': the value names {ty}, the modifier {wanted}"
                    )));
                }
            }
            (Some(ty.to_string()), id.to_string())
        }
        // A parameter that can refer to one type only names it implicitly (`patient=123` is
        // `patient=Patient/123`); with the type known, the index lists the matches in id order.
        None => {
            let only_target = match param.targets.as_slice() {
                [only] => Some(only.clone()),
                _ => None,
            };
            (
                type_modifier.map(str::to_string).or(only_target),
                raw.clone(),
            )
        }
    };
    let id = id
        .split("/_history/")
        .next()
        .unwrap_or_default()
        .to_string();
    if id.is_empty() {
        return Err(SearchError::invalid(format!(
            "'{name}': empty reference id"
        )));
    }
    Ok(Predicate::Reference {
        target_type: ty,
        id: Some(id),
        url: None,
    })
}

fn parse_date(name: &str, raw: &str) -> Result<Predicate> {
    let (prefix, date) = Prefix::split(raw);
    let range = parse_date_range(date).ok_or_else(|| {
        SearchError::invalid(format!(
            "'{name}': '{raw}' is not a valid date (expected [prefix]YYYY[-MM[-DD[Thh:mm[:ss[.fff]][Z|±hh:mm]]]])"
        ))
    })?;
    Ok(Predicate::Date { prefix, range })
}

/// The value and the half-open range its written precision implies.
fn parse_number(name: &str, text: &str) -> Result<(f64, f64, f64)> {
    let valid = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'));
    let value: f64 = match text.parse() {
        Ok(v) if valid => v,
        _ => {
            return Err(SearchError::invalid(format!(
                "'{name}': '{text}' is not a number"
            )))
        }
    };
    if !value.is_finite() {
        return Err(SearchError::invalid(format!(
            "'{name}': '{text}' is not a finite number"
        )));
    }
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (text, 0),
    };
    let decimals = mantissa
        .split_once('.')
        .map_or(0, |(_, fraction)| fraction.len() as i32);
    let half = 0.5 * 10f64.powi(exponent - decimals);
    Ok((value, value - half, value + half))
}

fn parse_quantity(name: &str, raw: &str) -> Result<Predicate> {
    let (prefix, rest) = Prefix::split(raw);
    let parts: Vec<&str> = rest.splitn(3, '|').collect();
    let (number, system, code) = match parts.as_slice() {
        [n] => (*n, None, None),
        [n, s, c] => (
            *n,
            (!s.is_empty()).then(|| unescape(s)),
            (!c.is_empty()).then(|| unescape(c)),
        ),
        _ => {
            return Err(SearchError::invalid(format!(
                "'{name}': expected [prefix]number[|system|code], got '{raw}'"
            )))
        }
    };
    let (value, low, high) = parse_number(name, number)?;
    Ok(Predicate::Quantity {
        prefix,
        value,
        low,
        high,
        system,
        code,
    })
}

fn parse_composite(
    defs: &Definitions,
    param: &SearchParamDef,
    name: &str,
    raw: &str,
) -> Result<Predicate> {
    let parts = split_unescaped(raw, '$');
    if parts.len() != param.components.len() {
        return Err(SearchError::invalid(format!(
            "'{name}': expected {} '$'-separated values, got '{raw}'",
            param.components.len()
        )));
    }
    let mut out = Vec::with_capacity(parts.len());
    for (position, (component, part)) in param.components.iter().zip(parts).enumerate() {
        let component_param = defs
            .search_param_by_url(&component.definition)
            .ok_or_else(|| {
                SearchError::unsupported(format!(
                    "'{name}': component {} is not defined",
                    component.definition
                ))
            })?;
        let kind = kind_of(component_param)?;
        let predicate = match kind {
            ParamKind::Token => parse_token(part),
            ParamKind::String => {
                Predicate::String(StringMatch::StartsWith(normalize(&unescape(part))))
            }
            ParamKind::Date => parse_date(name, part)?,
            ParamKind::Quantity => parse_quantity(name, part)?,
            ParamKind::Number => {
                let (prefix, number) = Prefix::split(part);
                let (value, low, high) = parse_number(name, number)?;
                Predicate::Number {
                    prefix,
                    value,
                    low,
                    high,
                }
            }
            ParamKind::Uri => Predicate::Uri {
                value: unescape(part),
                mode: UriMatch::Exact,
            },
            ParamKind::Reference => parse_reference(defs, component_param, name, None, part)?,
            ParamKind::Composite | ParamKind::Special => {
                return Err(SearchError::unsupported(format!(
                    "'{name}': nested composite components are not supported"
                )))
            }
        };
        let mut code = format!("{}${position}", param.code);
        // A quantity component in a convertible unit is compared in the canonical unit.
        let predicate = match canonical_predicate(name, &predicate)? {
            Some(converted) => {
                code = canonical_param(&code);
                converted
            }
            None => predicate,
        };
        out.push((Target::Index { code, kind }, predicate));
    }
    Ok(Predicate::Composite(out))
}

#[cfg(test)]
mod tests;
