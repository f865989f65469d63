//! Index values extracted from a resource for every search parameter of its type.
//!
//! [`extract`] evaluates each official SearchParameter expression of the resource's type
//! (parsed once per process) and turns the items into typed rows according to the parameter
//! type and each item's FHIR type. Runs on every write, so it avoids re-parsing and keeps
//! allocation to the rows themselves.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use serde_json::Value;

use crate::definitions::Definitions;
use crate::search::date::parse_date_range;
use crate::search::fhirpath::{self, reference_target, Expression, Item};
use crate::search::text::normalize;
use crate::search::ucum::{ucum_unit, UCUM_SYSTEM};

/// The row name of a quantity parameter's values in their canonical UCUM unit (see
/// [`crate::search::ucum`]): `value-quantity:canonical`, `code-value-quantity$1:canonical`.
/// Kept apart from the values as written so that searches without a UCUM unit, `_sort` and
/// `:missing` see exactly what the resource says.
pub fn canonical_param(param: &str) -> String {
    format!("{param}:canonical")
}

/// Parameters answered from the resource's own columns (`Target::Id`, `Target::LastUpdated`
/// in [`crate::search::query`]); rows for them would only cost every write two rows. Rows
/// that earlier versions wrote are never read, and `careplane reindex` drops them.
pub const COLUMN_PARAMS: [&str; 2] = ["_id", "_lastUpdated"];

/// The row name for `identifier:of-type`: one token row per `Identifier.type.coding`, with
/// the coding's system as `system` and [`of_type_code`] as `code`, so the search is one
/// equality lookup on the token index.
pub fn of_type_param(param: &str) -> String {
    format!("{param}:of-type")
}

/// `{type code}|{identifier value}`, with `\` and `|` in the type code escaped: the first
/// unescaped `|` then always separates the two, so no code/value pair collides with another.
pub fn of_type_code(type_code: &str, value: &str) -> String {
    let mut out = String::with_capacity(type_code.len() + value.len() + 1);
    for c in type_code.chars() {
        if matches!(c, '\\' | '|') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('|');
    out.push_str(value);
    out
}

/// The parameters `:of-type` applies to (R4 search.html: "only for identifier parameters").
pub fn takes_of_type(param: &str) -> bool {
    param == "identifier"
}

/// One index row: the value of one search parameter in one resource.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexRow {
    /// The parameter code (`name`, `subject`, `code-value-quantity`...).
    pub param: String,
    /// 0 for plain parameters. For the components of a composite parameter, the rows that
    /// came from the same composite item share a group number >= 1 (and `param` is the
    /// composite's code followed by `$` and the component position, e.g. `code-value-quantity$1`).
    pub group: u32,
    pub value: IndexValue,
}

#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    /// `normalized`: see [`crate::search::text::normalize`]; `exact`: as written.
    String {
        normalized: String,
        exact: String,
    },
    /// `text`: normalized display / CodeableConcept.text / Identifier.type.text, for `:text`.
    Token {
        system: Option<String>,
        code: Option<String>,
        text: Option<String>,
    },
    /// A literal reference `Type/id` (relative, or absolute on this server's base) gives
    /// `target_type` + `target_id`; any other reference or a canonical gives `url` only.
    Reference {
        target_type: Option<String>,
        target_id: Option<String>,
        url: Option<String>,
    },
    /// Unix milliseconds (UTC), both ends inclusive; open ends are i64::MIN / i64::MAX.
    Date {
        low: i64,
        high: i64,
    },
    Number {
        value: f64,
    },
    Quantity {
        value: f64,
        system: Option<String>,
        code: Option<String>,
        unit: Option<String>,
    },
    Uri {
        value: String,
    },
}

impl IndexRow {
    fn new(param: &str, group: u32, value: IndexValue) -> IndexRow {
        IndexRow {
            param: param.to_string(),
            group,
            value,
        }
    }
}

/// `SearchParameter.type` of the parameters that index something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    String,
    Token,
    Reference,
    Date,
    Number,
    Quantity,
    Uri,
    Composite,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "string" => Kind::String,
            "token" => Kind::Token,
            "reference" => Kind::Reference,
            "date" => Kind::Date,
            "number" => Kind::Number,
            "quantity" => Kind::Quantity,
            "uri" => Kind::Uri,
            "composite" => Kind::Composite,
            _ => return None,
        })
    }
}

/// A parameter ready to evaluate on one resource type.
#[derive(Debug)]
struct Compiled {
    code: String,
    /// `{code}:identifier`, the row name for `Reference.identifier`.
    identifier_param: String,
    kind: Kind,
    /// Pruned to the branches that can match the resource type.
    expr: Expression,
    components: Vec<Component>,
    /// Where this parameter's rows are stored when they are exactly other parameters' rows
    /// together (see [`derive_sources`]); empty when they are stored under its own code.
    sources: Vec<Source>,
}

/// Where (some of) a derived parameter's rows are stored.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    /// Under another parameter's code (`combo-code` → `code`), composite components included
    /// (`combo-code-value-quantity$1` → `component-code-value-quantity$1`).
    Param(String),
    /// For a composite over the resource itself: component `i`'s values are plain parameter
    /// `[i]`'s rows (`code-value-quantity$1` → `value-quantity`), all in group 0, which pairs
    /// them within the resource just as its one group did.
    Components(Vec<String>),
}

#[derive(Debug)]
struct Component {
    /// `{code}${position}`.
    param: String,
    kind: Kind,
    expr: Expression,
}

/// Resource type -> its compiled parameters, each list built on first use. The definitions
/// exist once per process ([`Definitions::r4`]), so caching what they yield is sound.
static COMPILED: OnceLock<HashMap<String, OnceLock<Vec<Compiled>>>> = OnceLock::new();

fn compiled<'c>(defs: &Definitions, resource_type: &str) -> &'c [Compiled] {
    let by_type = COMPILED.get_or_init(|| {
        defs.resource_types()
            .iter()
            .map(|t| (t.clone(), OnceLock::new()))
            .collect()
    });
    match by_type.get(resource_type) {
        Some(cell) => cell.get_or_init(|| compile(defs, resource_type)),
        None => &[],
    }
}

fn compile(defs: &Definitions, resource_type: &str) -> Vec<Compiled> {
    let mut out = Vec::new();
    for param in defs.search_params_for(resource_type) {
        if COLUMN_PARAMS.contains(&param.code.as_str()) {
            continue;
        }
        let (Some(kind), Some(src)) = (Kind::parse(&param.param_type), &param.expression) else {
            continue;
        };
        // Every official expression parses (tested); a failure would skip the parameter.
        let Ok(expr) = fhirpath::parse(src) else {
            continue;
        };
        let expr = expr.for_resource_type(defs, resource_type);
        if expr.is_empty() {
            continue;
        }
        let mut components = Vec::new();
        for (position, c) in param.components.iter().enumerate() {
            let kind = defs
                .search_param_by_url(&c.definition)
                .and_then(|d| Kind::parse(&d.param_type));
            if let (Some(kind), Ok(expr)) = (kind, fhirpath::parse(&c.expression)) {
                components.push(Component {
                    param: format!("{}${position}", param.code),
                    kind,
                    expr,
                });
            }
        }
        if kind == Kind::Composite && components.len() != param.components.len() {
            continue;
        }
        out.push(Compiled {
            code: param.code.clone(),
            identifier_param: format!("{}:identifier", param.code),
            kind,
            expr,
            components,
            sources: Vec::new(),
        });
    }
    derive_sources(&mut out);
    out
}

/// Finds the parameters whose rows would only repeat rows that other parameters of the type
/// store, so that searches can read those instead and writes may leave them out
/// ([`DerivedRows`]). Two rules, both from the definitions:
/// - **Unions**: the expression is a union whose branches are exactly the branches of other
///   parameters of the same kind (`combo-code` = `Observation.code | Observation.component.code`
///   = `code` and `component-code`); for composites, over the items of other composites with
///   the same components (`combo-code-value-quantity` over `Observation | Observation.component`
///   = `code-value-quantity` and `component-code-value-quantity`).
/// - **Composites over the resource itself** (`code-value-quantity` over `Observation`): its one
///   group holds every value of each component, so component `i` is plain parameter `i` when
///   their branches select the same (`code`; `value.as(Quantity)` and `value-quantity`, whose
///   other branch `value as SampledData` indexes nothing as a quantity).
///
/// Equal branches give equal rows; a test over every Synthea resource checks the result.
/// Reference parameters are left alone (chains, includes and compartments name their rows), as
/// is `identifier` (its `:of-type` rows).
fn derive_sources(params: &mut [Compiled]) {
    let branches: Vec<Vec<Expression>> = params.iter().map(|p| p.expr.union_branches()).collect();
    let mut unions: Vec<Vec<usize>> = vec![Vec::new(); params.len()];
    for (i, param) in params.iter().enumerate() {
        let own = &branches[i];
        if own.len() < 2 || param.kind == Kind::Reference || takes_of_type(&param.code) {
            continue;
        }
        let mut candidates: Vec<usize> = (0..params.len())
            .filter(|&j| {
                j != i
                    && params[j].kind == param.kind
                    && same_components(&params[j], param)
                    && branches[j].len() < own.len()
                    && branches[j].iter().all(|b| own.contains(b))
            })
            .collect();
        // Widest first, so that `combo-value-quantity` takes `value-quantity` (two branches)
        // rather than a narrower parameter covering one of them.
        candidates.sort_by_key(|&j| std::cmp::Reverse(branches[j].len()));
        let mut covered = vec![false; own.len()];
        let mut chosen = Vec::new();
        for j in candidates {
            let at: Vec<usize> = branches[j]
                .iter()
                .filter_map(|b| own.iter().position(|o| o == b))
                .collect();
            if at.iter().any(|&k| covered[k]) {
                continue;
            }
            for k in at {
                covered[k] = true;
            }
            chosen.push(j);
        }
        if covered.iter().all(|c| *c) {
            unions[i] = chosen;
        }
    }
    // Composites over the resource, by stored plain parameters.
    let mut by_components: Vec<Option<Vec<String>>> = vec![None; params.len()];
    for (i, param) in params.iter().enumerate() {
        if param.kind != Kind::Composite || !param.expr.is_this() || !unions[i].is_empty() {
            continue;
        }
        let plain = |component: &Component| {
            let wanted = indexed_branches(component.kind, &component.expr);
            params.iter().enumerate().find_map(|(j, p)| {
                let stored_plain = p.components.is_empty() && unions[j].is_empty();
                (stored_plain
                    && p.kind == component.kind
                    && p.kind != Kind::Reference
                    && !takes_of_type(&p.code)
                    && same_set(&indexed_branches(p.kind, &p.expr), &wanted))
                .then(|| p.code.clone())
            })
        };
        by_components[i] = param.components.iter().map(plain).collect();
    }
    // A union member that is derived itself stands for its own sources (it has fewer branches,
    // so this ends).
    fn flatten(
        i: usize,
        unions: &[Vec<usize>],
        by_components: &[Option<Vec<String>>],
        params: &[Compiled],
        out: &mut Vec<Source>,
    ) {
        for &j in &unions[i] {
            let source = match &by_components[j] {
                Some(codes) => Source::Components(codes.clone()),
                None if unions[j].is_empty() => Source::Param(params[j].code.clone()),
                None => {
                    flatten(j, unions, by_components, params, out);
                    continue;
                }
            };
            if !out.contains(&source) {
                out.push(source);
            }
        }
    }
    for i in 0..params.len() {
        let mut sources = Vec::new();
        match &by_components[i] {
            Some(codes) => sources.push(Source::Components(codes.clone())),
            None => flatten(i, &unions, &by_components, params, &mut sources),
        }
        params[i].sources = sources;
    }
}

/// An expression's normalized branches without those that cannot give rows of `kind` (a cast
/// to a type the kind does not index, e.g. `value as SampledData` for a quantity).
fn indexed_branches(kind: Kind, expr: &Expression) -> Vec<Expression> {
    expr.normalized_branches()
        .into_iter()
        .filter(|b| {
            !(kind == Kind::Quantity && b.cast_type().is_some_and(|t| !quantity_indexes(t)))
        })
        .collect()
}

fn same_set(a: &[Expression], b: &[Expression]) -> bool {
    a.iter().all(|x| b.contains(x)) && b.iter().all(|x| a.contains(x))
}

/// Composites with the same components (kind and expression, in order) give the same rows for
/// the same item; plain parameters have none.
fn same_components(a: &Compiled, b: &Compiled) -> bool {
    a.components.len() == b.components.len()
        && a.components
            .iter()
            .zip(&b.components)
            .all(|(x, y)| x.kind == y.kind && x.expr == y.expr)
}

/// Whether a write stores the rows of the parameters derived from others ([`derive_sources`]).
/// Searches read the sources' rows either way. Earlier releases read the derived rows by name,
/// so a database they may still be serving keeps getting them until the operator runs the
/// contract step of the upgrade (`careplane contract`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DerivedRows {
    Written,
    Omitted,
}

/// The stored row names holding the rows named `row` (`combo-value-quantity:canonical`,
/// `code-value-quantity$1`) on resources of `types` (all types when empty): `row` itself, unless
/// its parameter's rows are derived from others (see [`derive_sources`]). The sources come in
/// the same order for every row name of one parameter, so a composite's components stay paired.
pub fn row_sources(defs: &Definitions, types: &[String], row: &str) -> Vec<String> {
    let (code, suffix) = row.split_at(row.find(['$', ':']).unwrap_or(row.len()));
    let types = if types.is_empty() {
        defs.resource_types()
    } else {
        types
    };
    let mut out: Vec<String> = Vec::new();
    for ty in types {
        let sources = compiled(defs, ty)
            .iter()
            .find(|p| p.code == code)
            .map(|p| p.sources.as_slice())
            .unwrap_or_default();
        let mut names = Vec::new();
        for source in sources {
            match source {
                Source::Param(other) => names.push(format!("{other}{suffix}")),
                Source::Components(codes) => {
                    // `$1:canonical` → component 1, variant `:canonical`.
                    let component = suffix.strip_prefix('$').and_then(|rest| {
                        let end = rest.find(':').unwrap_or(rest.len());
                        let position: usize = rest[..end].parse().ok()?;
                        Some((codes.get(position)?, &rest[end..]))
                    });
                    match component {
                        Some((plain, variant)) => names.push(format!("{plain}{variant}")),
                        None => names.push(row.to_string()),
                    }
                }
            }
        }
        if names.is_empty() {
            names.push(row.to_string());
        }
        for name in names {
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

/// Every (resource type, parameter code) whose rows are derived from others, over all types:
/// what the contract step of an upgrade deletes.
pub fn derived_params(defs: &Definitions) -> Vec<(String, String)> {
    defs.resource_types()
        .iter()
        .flat_map(|ty| {
            compiled(defs, ty)
                .iter()
                .filter(|p| !p.sources.is_empty())
                .map(move |p| (ty.clone(), p.code.clone()))
        })
        .collect()
}

/// The index rows of a resource: one per value of each search parameter of its type, without
/// duplicates. An unknown resource type yields nothing.
pub fn extract(defs: &Definitions, resource: &Value) -> Vec<IndexRow> {
    extract_with(defs, resource, DerivedRows::Written)
}

/// [`extract`], leaving out the rows of derived parameters when `derived` says so: what a
/// write stores.
pub fn extract_with(defs: &Definitions, resource: &Value, derived: DerivedRows) -> Vec<IndexRow> {
    let Some(rt) = resource.get("resourceType").and_then(Value::as_str) else {
        return Vec::new();
    };
    let Some(root) = fhirpath::resource_item(defs, resource) else {
        return Vec::new();
    };
    let focus = std::slice::from_ref(&root);
    let mut rows = Vec::new();
    for param in compiled(defs, rt) {
        if derived == DerivedRows::Omitted && !param.sources.is_empty() {
            continue;
        }
        let start = rows.len();
        let items = param.expr.evaluate_on(defs, &root, focus);
        if param.kind == Kind::Composite {
            composite(defs, &root, param, &items, &mut rows);
        } else {
            for item in &items {
                let out = &mut rows;
                convert(defs, param.kind, &param.code, item, 0, out);
                if param.kind == Kind::Reference {
                    reference_identifier(&param.identifier_param, item, out);
                }
            }
        }
        dedup_from(&mut rows, start);
    }
    rows
}

/// Each composite item with a value for every component becomes one group (numbered from 1);
/// a composite search needs every component, so a partial group could never match.
fn composite<'a>(
    defs: &'a Definitions,
    root: &Item<'a>,
    param: &'a Compiled,
    items: &[Item<'a>],
    rows: &mut Vec<IndexRow>,
) {
    let mut group = 0;
    let mut values = Vec::with_capacity(param.components.len());
    for item in items {
        values.clear();
        for component in &param.components {
            let found = component
                .expr
                .evaluate_on(defs, root, std::slice::from_ref(item));
            if found.is_empty() {
                break;
            }
            values.push(found);
        }
        if values.len() != param.components.len() {
            continue;
        }
        group += 1;
        let start = rows.len();
        for (component, found) in param.components.iter().zip(&values) {
            let before = rows.len();
            for value in found {
                convert(defs, component.kind, &component.param, value, group, rows);
            }
            if rows.len() == before {
                // Items of a type the component cannot index.
                rows.truncate(start);
                group -= 1;
                break;
            }
        }
    }
}

/// Appends the rows one item gives for a parameter of type `kind`.
fn convert(
    defs: &Definitions,
    kind: Kind,
    param: &str,
    item: &Item<'_>,
    group: u32,
    out: &mut Vec<IndexRow>,
) {
    let v: &Value = &item.value;
    let ty = item.type_name();
    if kind == Kind::Quantity {
        quantity_rows(param, group, ty, v, out);
        return;
    }
    let mut push = |value: IndexValue| out.push(IndexRow::new(param, group, value));
    match kind {
        Kind::String => match ty {
            "HumanName" => {
                for key in ["family", "given", "prefix", "suffix", "text"] {
                    strings(v.get(key), |s| push(string_value(s)));
                }
            }
            "Address" => {
                let keys = [
                    "line",
                    "city",
                    "district",
                    "state",
                    "postalCode",
                    "country",
                    "text",
                ];
                for key in keys {
                    strings(v.get(key), |s| push(string_value(s)));
                }
            }
            _ if is_string_primitive(ty) => {
                if let Some(s) = v.as_str() {
                    push(string_value(s));
                }
            }
            _ => {}
        },
        Kind::Token => {
            token(ty, v, push);
            if ty == "Identifier" && takes_of_type(param) {
                of_type_rows(param, group, v, out);
            }
        }
        Kind::Reference => match ty {
            "Reference" => {
                if let Some(r) = str_at(v, "reference") {
                    if let Some(value) = reference_value(defs, r) {
                        push(value);
                    }
                }
            }
            "canonical" | "uri" | "url" | "oid" | "uuid" => {
                if let Some(s) = v.as_str() {
                    push(IndexValue::Reference {
                        target_type: None,
                        target_id: None,
                        url: Some(s.to_string()),
                    });
                }
            }
            _ => {}
        },
        Kind::Date => {
            if let Some((low, high)) = date_range(ty, v) {
                push(IndexValue::Date { low, high });
            }
        }
        Kind::Number => {
            if matches!(ty, "integer" | "decimal" | "positiveInt" | "unsignedInt") {
                if let Some(value) = v.as_f64() {
                    push(IndexValue::Number { value });
                }
            }
        }
        // Handled above: quantities add canonical rows under a second name.
        Kind::Quantity => {}
        Kind::Uri => {
            if matches!(ty, "uri" | "url" | "canonical" | "oid" | "uuid") {
                if let Some(s) = v.as_str() {
                    push(IndexValue::Uri {
                        value: s.to_string(),
                    });
                }
            }
        }
        // Composites are expanded by `composite`; they do not nest in R4.
        Kind::Composite => {}
    }
}

fn token(ty: &str, v: &Value, mut push: impl FnMut(IndexValue)) {
    let token = |system: Option<&str>, code: Option<&str>, text: Option<&str>| {
        let text = text.map(normalize).filter(|t| !t.is_empty());
        (system.is_some() || code.is_some() || text.is_some()).then(|| IndexValue::Token {
            system: owned(system),
            code: owned(code),
            text,
        })
    };
    let value = match ty {
        "Coding" => token(str_at(v, "system"), str_at(v, "code"), str_at(v, "display")),
        "CodeableConcept" => {
            let text = str_at(v, "text");
            let codings = v.get("coding").and_then(Value::as_array);
            let mut any = false;
            for c in codings.into_iter().flatten() {
                let display = text.or_else(|| str_at(c, "display"));
                if let Some(t) = token(str_at(c, "system"), str_at(c, "code"), display) {
                    push(t);
                    any = true;
                }
            }
            if any {
                return;
            }
            token(None, None, text)
        }
        "Identifier" => token(
            str_at(v, "system"),
            str_at(v, "value"),
            v.get("type").and_then(|t| str_at(t, "text")),
        ),
        "ContactPoint" => token(None, str_at(v, "value"), None),
        "boolean" => v
            .as_bool()
            .and_then(|b| token(None, Some(if b { "true" } else { "false" }), None)),
        _ if is_string_primitive(ty) => token(None, v.as_str(), None),
        _ => None,
    };
    if let Some(value) = value {
        push(value);
    }
}

/// The quantity rows of one item: each value as written under `param`, plus, for values in
/// a UCUM unit the conversion covers (`mg`, `mg/dL`, …), the value in its canonical unit under
/// [`canonical_param`].
/// The types a quantity parameter indexes; any other item (`SampledData`) gives no rows, which
/// [`derive_sources`] relies on.
fn quantity_indexes(ty: &str) -> bool {
    matches!(
        ty,
        "Quantity"
            | "Age"
            | "Duration"
            | "Count"
            | "Distance"
            | "SimpleQuantity"
            | "MoneyQuantity"
            | "Money"
            | "Range"
    )
}

fn quantity_rows(param: &str, group: u32, ty: &str, v: &Value, out: &mut Vec<IndexRow>) {
    if !quantity_indexes(ty) {
        return;
    }
    let mut values = Vec::new();
    match ty {
        "Quantity" | "Age" | "Duration" | "Count" | "Distance" | "SimpleQuantity"
        | "MoneyQuantity" => values.extend(quantity(v)),
        "Money" => {
            if let Some(value) = v.get("value").and_then(Value::as_f64) {
                values.push(IndexValue::Quantity {
                    value,
                    system: Some("urn:iso:std:iso:4217".to_string()),
                    code: owned(str_at(v, "currency")),
                    unit: None,
                });
            }
        }
        "Range" => {
            for end in ["low", "high"] {
                values.extend(v.get(end).and_then(quantity));
            }
        }
        _ => {}
    }
    let mut canonical = Vec::new();
    for value in values {
        canonical.extend(canonical_quantity(&value));
        out.push(IndexRow::new(param, group, value));
    }
    if !canonical.is_empty() {
        let name = canonical_param(param);
        out.extend(
            canonical
                .into_iter()
                .map(|c| IndexRow::new(&name, group, c)),
        );
    }
}

/// `value` in its canonical UCUM unit, when the conversion covers its unit.
fn canonical_quantity(value: &IndexValue) -> Option<IndexValue> {
    let IndexValue::Quantity {
        value,
        system,
        code,
        ..
    } = value
    else {
        return None;
    };
    let unit = ucum_unit(system.as_deref(), code.as_deref())?;
    Some(IndexValue::Quantity {
        value: unit.to_canonical(*value)?,
        system: Some(UCUM_SYSTEM.to_string()),
        code: Some(unit.canonical.to_string()),
        unit: None,
    })
}

/// `identifier:of-type` rows: one per `Identifier.type.coding` with a system and a code, when
/// the identifier has a value (the modifier needs all three).
fn of_type_rows(param: &str, group: u32, identifier: &Value, out: &mut Vec<IndexRow>) {
    let Some(value) = str_at(identifier, "value") else {
        return;
    };
    let codings = identifier
        .get("type")
        .and_then(|t| t.get("coding"))
        .and_then(Value::as_array);
    let name = of_type_param(param);
    for coding in codings.into_iter().flatten() {
        if let (Some(system), Some(code)) = (str_at(coding, "system"), str_at(coding, "code")) {
            let token = IndexValue::Token {
                system: Some(system.to_string()),
                code: Some(of_type_code(code, value)),
                text: None,
            };
            out.push(IndexRow::new(&name, group, token));
        }
    }
}

/// `Reference.identifier` is searchable as `{code}:identifier`.
fn reference_identifier(param: &str, item: &Item<'_>, out: &mut Vec<IndexRow>) {
    if item.type_name() != "Reference" {
        return;
    }
    let Some(identifier) = item.value.get("identifier") else {
        return;
    };
    let (system, value) = (str_at(identifier, "system"), str_at(identifier, "value"));
    if system.is_some() || value.is_some() {
        let value = IndexValue::Token {
            system: owned(system),
            code: owned(value),
            text: None,
        };
        out.push(IndexRow::new(param, 0, value));
    }
}

fn reference_value(defs: &Definitions, reference: &str) -> Option<IndexValue> {
    if reference.starts_with('#') {
        return None;
    }
    Some(match reference_target(defs, reference) {
        Some((ty, id)) => IndexValue::Reference {
            target_type: Some(ty.to_string()),
            target_id: Some(id.to_string()),
            url: reference.contains("://").then(|| reference.to_string()),
        },
        None => IndexValue::Reference {
            target_type: None,
            target_id: None,
            url: Some(reference.to_string()),
        },
    })
}

fn date_range(ty: &str, v: &Value) -> Option<(i64, i64)> {
    match ty {
        "date" | "dateTime" | "instant" => {
            let r = parse_date_range(v.as_str()?)?;
            Some((r.low, r.high))
        }
        "Period" => {
            let (start, end) = (str_at(v, "start"), str_at(v, "end"));
            if start.is_none() && end.is_none() {
                return None;
            }
            let low = match start {
                Some(s) => parse_date_range(s)?.low,
                None => i64::MIN,
            };
            let high = match end {
                Some(e) => parse_date_range(e)?.high,
                None => i64::MAX,
            };
            Some((low, high))
        }
        "Timing" => {
            let events = v.get("event")?.as_array()?;
            let ranges = events.iter().filter_map(|e| parse_date_range(e.as_str()?));
            ranges.fold(None, |acc, r| match acc {
                None => Some((r.low, r.high)),
                Some((low, high)) => Some((r.low.min(low), r.high.max(high))),
            })
        }
        _ => None,
    }
}

fn quantity(v: &Value) -> Option<IndexValue> {
    Some(IndexValue::Quantity {
        value: v.get("value")?.as_f64()?,
        system: owned(str_at(v, "system")),
        code: owned(str_at(v, "code")),
        unit: owned(str_at(v, "unit")),
    })
}

fn string_value(s: &str) -> IndexValue {
    IndexValue::String {
        normalized: normalize(s),
        exact: s.to_string(),
    }
}

fn is_string_primitive(ty: &str) -> bool {
    matches!(
        ty,
        "string" | "markdown" | "code" | "id" | "uri" | "url" | "canonical" | "oid" | "uuid"
    )
}

/// Calls `f` for a string or each string of an array.
fn strings<'v>(v: Option<&'v Value>, mut f: impl FnMut(&'v str)) {
    match v {
        Some(Value::String(s)) => f(s),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).for_each(f),
        _ => {}
    }
}

fn str_at<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key)?.as_str()
}

fn owned(s: Option<&str>) -> Option<String> {
    s.map(str::to_string)
}

/// Removes rows equal to an earlier row from `start` on. Rows of different parameters never
/// compare equal, so only the current parameter's rows need checking; hashing keeps this
/// linear for the few resources with thousands (Provenance.target).
fn dedup_from(rows: &mut Vec<IndexRow>, start: usize) {
    let n = rows.len().saturating_sub(start);
    if n < 2 {
        return;
    }
    if n <= 16 {
        let mut i = start + 1;
        while i < rows.len() {
            if rows[start..i].contains(&rows[i]) {
                rows.remove(i);
            } else {
                i += 1;
            }
        }
        return;
    }
    let tail = rows.split_off(start);
    let mut seen: HashSet<u64> = HashSet::with_capacity(tail.len());
    for row in tail {
        // Equal hashes are nearly always true duplicates; confirm before dropping.
        if !seen.insert(row_hash(&row)) && rows[start..].contains(&row) {
            continue;
        }
        rows.push(row);
    }
}

/// Consistent with `PartialEq` except that `0.0` and `-0.0` hash apart (a kept duplicate at worst).
fn row_hash(row: &IndexRow) -> u64 {
    let mut h = DefaultHasher::new();
    row.param.hash(&mut h);
    row.group.hash(&mut h);
    match &row.value {
        IndexValue::String { normalized, exact } => (0u8, normalized, exact).hash(&mut h),
        IndexValue::Token { system, code, text } => (1u8, system, code, text).hash(&mut h),
        IndexValue::Reference {
            target_type,
            target_id,
            url,
        } => (2u8, target_type, target_id, url).hash(&mut h),
        IndexValue::Date { low, high } => (3u8, low, high).hash(&mut h),
        IndexValue::Number { value } => (4u8, value.to_bits()).hash(&mut h),
        IndexValue::Quantity {
            value,
            system,
            code,
            unit,
        } => (5u8, value.to_bits(), system, code, unit).hash(&mut h),
        IndexValue::Uri { value } => (6u8, value).hash(&mut h),
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::io::Read;
    use std::time::{Duration, Instant};

    use serde_json::{json, Value};

    use super::*;
    use crate::search::date::DateRange;

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    #[test]
    fn parameters_derived_from_others_are_read_from_their_rows() {
        let obs = ["Observation".to_string()];
        let sources = |row: &str| sorted(row_sources(defs(), &obs, row));
        // Unions of other parameters.
        assert_eq!(sources("combo-code"), ["code", "component-code"]);
        assert_eq!(
            sources("combo-value-quantity:canonical"),
            [
                "component-value-quantity:canonical",
                "value-quantity:canonical"
            ]
        );
        assert_eq!(
            sources("combo-value-concept"),
            ["component-value-concept", "value-concept"]
        );
        // Composites over the resource: each component is a plain parameter.
        assert_eq!(sources("code-value-quantity$0"), ["code"]);
        assert_eq!(
            sources("code-value-quantity$1:canonical"),
            ["value-quantity:canonical"]
        );
        assert_eq!(sources("code-value-concept$1"), ["value-concept"]);
        assert_eq!(sources("code-value-date$1"), ["value-date"]);
        // Both at once: the resource's own group and the components' groups.
        assert_eq!(
            sources("combo-code-value-quantity$1"),
            ["component-code-value-quantity$1", "value-quantity"]
        );
        // Stored under their own code: single-branch expressions, unions no other parameters
        // make up, references, composites over other items, and a composite whose component
        // selects less than the plain parameter (`value-string` also takes
        // `CodeableConcept.text`).
        for row in [
            "code",
            "value-quantity",
            "value-string",
            "subject",
            "patient",
            "component-code-value-quantity$1",
            "code-value-string$1",
            "unknown-param",
        ] {
            assert_eq!(sources(row), [row], "{row}");
        }
        let patient = ["Patient".to_string()];
        assert_eq!(
            row_sources(defs(), &patient, "identifier:of-type"),
            ["identifier:of-type"]
        );
    }

    #[test]
    fn writes_may_leave_out_the_rows_of_derived_parameters() {
        let o = json!({
            "resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
            "valueQuantity": {"value": 56.4, "system": UCUM_SYSTEM, "code": "cm"},
            "component": [{
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "valueQuantity": {"value": 120, "system": UCUM_SYSTEM, "code": "mm[Hg]"}
            }]
        });
        let all = extract(defs(), &o);
        let stored = extract_with(defs(), &o, DerivedRows::Omitted);
        let derived = |row: &IndexRow| {
            row.param.starts_with("combo-") || row.param.starts_with("code-value-")
        };
        assert!(all.iter().any(derived));
        assert!(!stored.iter().any(derived));
        // Everything else is stored as before.
        let kept: Vec<&IndexRow> = all.iter().filter(|r| !derived(r)).collect();
        assert_eq!(kept, stored.iter().collect::<Vec<_>>());
    }

    fn defs() -> &'static Definitions {
        Definitions::r4().unwrap()
    }

    fn values<'r>(rows: &'r [IndexRow], param: &str) -> Vec<&'r IndexValue> {
        rows.iter()
            .filter(|r| r.param == param)
            .map(|r| &r.value)
            .collect()
    }

    fn s(normalized: &str, exact: &str) -> IndexValue {
        IndexValue::String {
            normalized: normalized.into(),
            exact: exact.into(),
        }
    }

    fn tok(system: Option<&str>, code: Option<&str>, text: Option<&str>) -> IndexValue {
        IndexValue::Token {
            system: system.map(Into::into),
            code: code.map(Into::into),
            text: text.map(Into::into),
        }
    }

    fn code(c: &str) -> IndexValue {
        tok(None, Some(c), None)
    }

    fn reference(ty: &str, id: &str) -> IndexValue {
        IndexValue::Reference {
            target_type: Some(ty.into()),
            target_id: Some(id.into()),
            url: None,
        }
    }

    fn url(u: &str) -> IndexValue {
        IndexValue::Reference {
            target_type: None,
            target_id: None,
            url: Some(u.into()),
        }
    }

    fn date(s: &str) -> IndexValue {
        let DateRange { low, high } = parse_date_range(s).unwrap();
        IndexValue::Date { low, high }
    }

    fn qty(value: f64, system: Option<&str>, code: Option<&str>, unit: Option<&str>) -> IndexValue {
        IndexValue::Quantity {
            value,
            system: system.map(Into::into),
            code: code.map(Into::into),
            unit: unit.map(Into::into),
        }
    }

    fn patient() -> Value {
        json!({
            "resourceType": "Patient",
            "id": "p1",
            "meta": {"lastUpdated": "2024-05-01T10:00:00Z", "tag": [{"system": "http://t", "code": "x"}]},
            "active": true,
            "identifier": [
                {"system": "http://hospital/mrn", "value": "M-1", "type": {"text": "Medical Record"}},
                {"value": "no-system"}
            ],
            "name": [
                {"use": "official", "family": "Müller", "given": ["José", "Maria"], "prefix": ["Dr."]},
                {"text": "Joe  Mueller"}
            ],
            "telecom": [
                {"system": "phone", "value": "555-0100"},
                {"system": "email", "value": "jose@example.org"}
            ],
            "gender": "male",
            "birthDate": "1970-03-04",
            "deceasedDateTime": "2020-02-03T04:05:06+01:00",
            "address": [{"line": ["1 Main St", "Apt 2"], "city": "Zürich", "postalCode": "8000", "country": "CH"}],
            "generalPractitioner": [
                {"reference": "Practitioner/d1"},
                {"reference": "https://other.example/fhir/Organization/o9/_history/2"},
                {"identifier": {"system": "http://npi", "value": "123"}, "display": "Dr. X"}
            ]
        })
    }

    #[test]
    fn patient_parameters() {
        let rows = extract(defs(), &patient());
        // Served from the resource's own columns, never from rows.
        assert!(values(&rows, "_id").is_empty());
        assert!(values(&rows, "_lastUpdated").is_empty());
        assert_eq!(
            values(&rows, "_tag"),
            [&tok(Some("http://t"), Some("x"), None)]
        );
        assert_eq!(
            values(&rows, "family"),
            [&s("muller", "Müller")],
            "HumanName.family only"
        );
        assert_eq!(
            values(&rows, "given"),
            [&s("jose", "José"), &s("maria", "Maria")]
        );
        assert_eq!(
            values(&rows, "name"),
            [
                &s("muller", "Müller"),
                &s("jose", "José"),
                &s("maria", "Maria"),
                &s("dr.", "Dr."),
                &s("joe mueller", "Joe  Mueller"),
            ]
        );
        assert_eq!(values(&rows, "birthdate"), [&date("1970-03-04")]);
        assert_eq!(values(&rows, "gender"), [&code("male")]);
        assert_eq!(values(&rows, "active"), [&code("true")]);
        assert_eq!(values(&rows, "address-city"), [&s("zurich", "Zürich")]);
        assert_eq!(values(&rows, "address-postalcode"), [&s("8000", "8000")]);
        assert_eq!(
            values(&rows, "address"),
            [
                &s("1 main st", "1 Main St"),
                &s("apt 2", "Apt 2"),
                &s("zurich", "Zürich"),
                &s("8000", "8000"),
                &s("ch", "CH"),
            ]
        );
        assert_eq!(
            values(&rows, "identifier"),
            [
                &tok(
                    Some("http://hospital/mrn"),
                    Some("M-1"),
                    Some("medical record")
                ),
                &code("no-system"),
            ]
        );
        assert_eq!(values(&rows, "phone"), [&code("555-0100")]);
        assert_eq!(values(&rows, "email"), [&code("jose@example.org")]);
        assert_eq!(
            values(&rows, "telecom"),
            [&code("555-0100"), &code("jose@example.org")]
        );
        assert_eq!(
            values(&rows, "general-practitioner"),
            [
                &reference("Practitioner", "d1"),
                &IndexValue::Reference {
                    target_type: Some("Organization".into()),
                    target_id: Some("o9".into()),
                    url: Some("https://other.example/fhir/Organization/o9/_history/2".into()),
                },
            ]
        );
        assert_eq!(
            values(&rows, "general-practitioner:identifier"),
            [&tok(Some("http://npi"), Some("123"), None)]
        );
        assert_eq!(values(&rows, "deceased"), [&code("true")]);
        assert_eq!(
            values(&rows, "death-date"),
            [&date("2020-02-03T04:05:06+01:00")]
        );
        assert!(rows.iter().all(|r| r.group == 0));
    }

    #[test]
    fn patient_deceased_false_and_absent() {
        let alive = json!({"resourceType": "Patient", "deceasedBoolean": false});
        assert_eq!(
            values(&extract(defs(), &alive), "deceased"),
            [&code("false")]
        );
        let unknown = json!({"resourceType": "Patient", "id": "x"});
        assert_eq!(
            values(&extract(defs(), &unknown), "deceased"),
            [&code("false")]
        );
    }

    fn observation() -> Value {
        json!({
            "resourceType": "Observation",
            "id": "o1",
            "status": "final",
            "category": [{"coding": [{"system": "http://cat", "code": "vital-signs", "display": "Vital Signs"}]}],
            "code": {
                "coding": [
                    {"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel"},
                    {"system": "http://snomed.info/sct", "code": "75367002"}
                ],
                "text": "Blood Pressure"
            },
            "subject": {"reference": "Patient/p1"},
            "encounter": {"reference": "Encounter/e1"},
            "effectiveDateTime": "2021-06-01T12:30:00Z",
            "valueQuantity": {"value": 1.5, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
            "component": [
                {
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                    "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}
                },
                {
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                    "valueQuantity": {"value": 80, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}
                },
                {
                    "code": {"text": "no value"}
                }
            ]
        })
    }

    #[test]
    fn observation_parameters() {
        let rows = extract(defs(), &observation());
        let loinc = tok(
            Some("http://loinc.org"),
            Some("85354-9"),
            Some("blood pressure"),
        );
        let snomed = tok(
            Some("http://snomed.info/sct"),
            Some("75367002"),
            Some("blood pressure"),
        );
        assert_eq!(values(&rows, "code"), [&loinc, &snomed]);
        assert_eq!(
            values(&rows, "category"),
            [&tok(
                Some("http://cat"),
                Some("vital-signs"),
                Some("vital signs")
            )]
        );
        let ucum = Some("http://unitsofmeasure.org");
        assert_eq!(
            values(&rows, "value-quantity"),
            [&qty(1.5, ucum, Some("mmol/L"), Some("mmol/L"))]
        );
        assert_eq!(
            values(&rows, "component-value-quantity"),
            [
                &qty(120.0, ucum, Some("mm[Hg]"), Some("mmHg")),
                &qty(80.0, ucum, Some("mm[Hg]"), Some("mmHg")),
            ]
        );
        assert_eq!(values(&rows, "date"), [&date("2021-06-01T12:30:00Z")]);
        assert_eq!(values(&rows, "subject"), [&reference("Patient", "p1")]);
        assert_eq!(values(&rows, "patient"), [&reference("Patient", "p1")]);
        assert_eq!(values(&rows, "encounter"), [&reference("Encounter", "e1")]);
        assert_eq!(values(&rows, "status"), [&code("final")]);

        // code-value-quantity: one group, the resource itself.
        let cvq: Vec<_> = rows
            .iter()
            .filter(|r| r.param.starts_with("code-value-quantity$"))
            .map(|r| (r.param.as_str(), r.group, &r.value))
            .collect();
        let v = qty(1.5, ucum, Some("mmol/L"), Some("mmol/L"));
        assert_eq!(
            cvq,
            [
                ("code-value-quantity$0", 1, &loinc),
                ("code-value-quantity$0", 1, &snomed),
                ("code-value-quantity$1", 1, &v),
            ]
        );

        // component-code-value-quantity: a group per component that has both parts.
        let ccvq: Vec<_> = rows
            .iter()
            .filter(|r| r.param.starts_with("component-code-value-quantity$"))
            .map(|r| (r.param.as_str(), r.group, &r.value))
            .collect();
        let (sys, dia) = (
            tok(Some("http://loinc.org"), Some("8480-6"), None),
            tok(Some("http://loinc.org"), Some("8462-4"), None),
        );
        let (q120, q80) = (
            qty(120.0, ucum, Some("mm[Hg]"), Some("mmHg")),
            qty(80.0, ucum, Some("mm[Hg]"), Some("mmHg")),
        );
        assert_eq!(
            ccvq,
            [
                ("component-code-value-quantity$0", 1, &sys),
                ("component-code-value-quantity$1", 1, &q120),
                ("component-code-value-quantity$0", 2, &dia),
                ("component-code-value-quantity$1", 2, &q80),
            ]
        );
        // combo-code-value-quantity: the resource and each component.
        let combo_groups: Vec<u32> = rows
            .iter()
            .filter(|r| r.param == "combo-code-value-quantity$1")
            .map(|r| r.group)
            .collect();
        assert_eq!(combo_groups, [1, 2, 3]);
        assert!(values(&rows, "code-value-concept$0").is_empty());
    }

    #[test]
    fn observation_period_and_codeable_concept_text_only() {
        let o = json!({
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "Free  Text Code"},
            "effectivePeriod": {"start": "2021-01-01", "end": "2021-01-31T10:00:00Z"},
            "valueCodeableConcept": {"coding": [{"system": "http://s", "code": "pos"}]}
        });
        let rows = extract(defs(), &o);
        assert_eq!(
            values(&rows, "code"),
            [&tok(None, None, Some("free text code"))]
        );
        let (low, high) = (
            parse_date_range("2021-01-01").unwrap().low,
            parse_date_range("2021-01-31T10:00:00Z").unwrap().high,
        );
        assert_eq!(values(&rows, "date"), [&IndexValue::Date { low, high }]);
        assert_eq!(
            values(&rows, "value-concept"),
            [&tok(Some("http://s"), Some("pos"), None)]
        );
        assert!(values(&rows, "value-quantity").is_empty());
        let open = json!({"resourceType": "Observation", "effectivePeriod": {"start": "2021"}});
        let low = parse_date_range("2021").unwrap().low;
        assert_eq!(
            values(&extract(defs(), &open), "date"),
            [&IndexValue::Date {
                low,
                high: i64::MAX
            }]
        );
    }

    #[test]
    fn encounter_date_from_period() {
        let e = json!({
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": "Patient/p1"},
            "period": {"end": "2020-05-05T10:00:00-05:00"},
            "length": {"value": 30, "unit": "min"}
        });
        let rows = extract(defs(), &e);
        let high = parse_date_range("2020-05-05T10:00:00-05:00").unwrap().high;
        assert_eq!(
            values(&rows, "date"),
            [&IndexValue::Date {
                low: i64::MIN,
                high
            }]
        );
        assert_eq!(
            values(&rows, "class"),
            [&tok(
                Some("http://terminology.hl7.org/CodeSystem/v3-ActCode"),
                Some("AMB"),
                None
            )]
        );
        assert_eq!(values(&rows, "patient"), [&reference("Patient", "p1")]);
        assert_eq!(
            values(&rows, "length"),
            [&qty(30.0, None, None, Some("min"))]
        );
    }

    #[test]
    fn medication_request_medication_reference_and_code() {
        let with_ref = json!({
            "resourceType": "MedicationRequest",
            "status": "active", "intent": "order",
            "medicationReference": {"reference": "Medication/m1"},
            "subject": {"reference": "urn:uuid:0b8a1c4e-0000-4000-8000-000000000001"},
            "authoredOn": "2019"
        });
        let rows = extract(defs(), &with_ref);
        assert_eq!(
            values(&rows, "medication"),
            [&reference("Medication", "m1")]
        );
        assert!(values(&rows, "code").is_empty());
        assert_eq!(
            values(&rows, "subject"),
            [&url("urn:uuid:0b8a1c4e-0000-4000-8000-000000000001")]
        );
        assert!(
            values(&rows, "patient").is_empty(),
            "urn:uuid is no Patient"
        );
        assert_eq!(values(&rows, "authoredon"), [&date("2019")]);
        let with_code = json!({
            "resourceType": "MedicationRequest",
            "status": "active", "intent": "order",
            "medicationCodeableConcept": {"coding": [{"system": "http://rxnorm", "code": "123", "display": "Aspirin"}]},
            "subject": {"reference": "#contained"}
        });
        let rows = extract(defs(), &with_code);
        assert!(values(&rows, "medication").is_empty());
        assert_eq!(
            values(&rows, "code"),
            [&tok(Some("http://rxnorm"), Some("123"), Some("aspirin"))]
        );
        assert!(
            values(&rows, "subject").is_empty(),
            "contained references are skipped"
        );
    }

    #[test]
    fn provenance_target_and_patient() {
        let p = json!({
            "resourceType": "Provenance",
            "target": [{"reference": "Patient/p1"}, {"reference": "Observation/o1/_history/2"}],
            "recorded": "2020-01-01T00:00:00Z",
            "agent": [{"who": {"reference": "Practitioner/d1"}}]
        });
        let rows = extract(defs(), &p);
        assert_eq!(
            values(&rows, "target"),
            [&reference("Patient", "p1"), &reference("Observation", "o1")]
        );
        assert_eq!(values(&rows, "patient"), [&reference("Patient", "p1")]);
        assert_eq!(values(&rows, "agent"), [&reference("Practitioner", "d1")]);
        assert_eq!(values(&rows, "recorded"), [&date("2020-01-01T00:00:00Z")]);
    }

    #[test]
    fn canonicals_as_uri_and_reference() {
        let q = json!({
            "resourceType": "Questionnaire",
            "url": "http://example.org/Questionnaire/phq9",
            "status": "active",
            "name": "PHQ9",
            "useContext": [{
                "code": {"system": "http://terminology.hl7.org/CodeSystem/usage-context-type", "code": "age"},
                "valueRange": {"low": {"value": 18, "unit": "a"}, "high": {"value": 65, "unit": "a"}}
            }]
        });
        let rows = extract(defs(), &q);
        assert_eq!(
            values(&rows, "url"),
            [&IndexValue::Uri {
                value: "http://example.org/Questionnaire/phq9".into()
            }]
        );
        assert_eq!(values(&rows, "name"), [&s("phq9", "PHQ9")]);
        assert_eq!(
            values(&rows, "context-quantity"),
            [
                &qty(18.0, None, None, Some("a")),
                &qty(65.0, None, None, Some("a"))
            ]
        );
        let groups: Vec<_> = rows
            .iter()
            .filter(|r| r.param.starts_with("context-type-quantity$"))
            .map(|r| (r.param.as_str(), r.group))
            .collect();
        assert_eq!(
            groups,
            [
                ("context-type-quantity$0", 1),
                ("context-type-quantity$1", 1),
                ("context-type-quantity$1", 1)
            ]
        );

        let qr = json!({
            "resourceType": "QuestionnaireResponse",
            "status": "completed",
            "questionnaire": "http://example.org/Questionnaire/phq9",
            "subject": {"reference": "Patient/p1"}
        });
        let rows = extract(defs(), &qr);
        assert_eq!(
            values(&rows, "questionnaire"),
            [&url("http://example.org/Questionnaire/phq9")]
        );
        assert_eq!(values(&rows, "patient"), [&reference("Patient", "p1")]);
    }

    #[test]
    fn money_timing_and_numbers() {
        // ChargeItem has money, number and Timing-typed date parameters in one resource.
        let item = json!({
            "resourceType": "ChargeItem",
            "priceOverride": {"value": 9.99, "currency": "EUR"},
            "factorOverride": 0.5,
            "occurrenceTiming": {"event": ["2020-03-01", "2020-01-15T10:00:00Z"]}
        });
        let rows = extract(defs(), &item);
        assert_eq!(
            values(&rows, "price-override"),
            [&qty(9.99, Some("urn:iso:std:iso:4217"), Some("EUR"), None)]
        );
        assert_eq!(
            values(&rows, "factor-override"),
            [&IndexValue::Number { value: 0.5 }]
        );
        let (low, high) = (
            parse_date_range("2020-01-15T10:00:00Z").unwrap().low,
            parse_date_range("2020-03-01").unwrap().high,
        );
        assert_eq!(
            values(&rows, "occurrence"),
            [&IndexValue::Date { low, high }]
        );
    }

    #[test]
    fn identifier_type_codings_give_of_type_rows() {
        let v2 = "http://terminology.hl7.org/CodeSystem/v2-0203";
        let p = json!({
            "resourceType": "Patient",
            "identifier": [
                {"type": {"coding": [{"system": v2, "code": "MR"}, {"system": "http://local", "code": "A|B"}],
                          "text": "Medical record"},
                 "system": "urn:mrn", "value": "12345"},
                {"type": {"coding": [{"code": "no-system"}]}, "value": "1"},
                {"type": {"coding": [{"system": v2, "code": "DL"}]}},
                {"system": "urn:plain", "value": "9"}
            ]
        });
        let rows = extract(defs(), &p);
        assert_eq!(
            values(&rows, "identifier:of-type"),
            [
                &tok(Some(v2), Some("MR|12345"), None),
                &tok(Some("http://local"), Some("A\\|B|12345"), None),
            ],
            "a coding needs a system and the identifier a value; `|` in a code is escaped"
        );
        assert_eq!(values(&rows, "identifier").len(), 3, "plain rows unchanged");
        // Only identifier parameters: Observation.identifier has them, other tokens do not.
        let o = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "identifier": [{"type": {"coding": [{"system": v2, "code": "FILL"}]}, "value": "7"}]});
        let rows = extract(defs(), &o);
        assert_eq!(
            values(&rows, "identifier:of-type"),
            [&tok(Some(v2), Some("FILL|7"), None)]
        );
        assert!(rows
            .iter()
            .all(|r| !r.param.ends_with(":of-type") || r.param == "identifier:of-type"));
    }

    #[test]
    fn of_type_codes_cannot_collide() {
        assert_eq!(of_type_code("MR", "12345"), "MR|12345");
        assert_ne!(of_type_code("A|B", "C"), of_type_code("A", "B|C"));
        assert_eq!(of_type_code("A\\", "x"), "A\\\\|x");
    }

    #[test]
    fn ucum_quantities_also_get_canonical_rows() {
        let ucum = Some("http://unitsofmeasure.org");
        let o = json!({
            "resourceType": "Observation", "status": "final", "code": {"text": "dose"},
            "valueQuantity": {"value": 5400, "unit": "milligram", "system": "http://unitsofmeasure.org", "code": "mg"},
            "component": [
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
                 "valueQuantity": {"value": 172, "system": "http://unitsofmeasure.org", "code": "cm"}},
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                 "valueQuantity": {"value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
            ]
        });
        let rows = extract(defs(), &o);
        assert_eq!(
            values(&rows, "value-quantity"),
            [&qty(5400.0, ucum, Some("mg"), Some("milligram"))],
            "the value as written stays"
        );
        assert_eq!(
            values(&rows, "value-quantity:canonical"),
            [&qty(5.4, ucum, Some("g"), None)]
        );
        assert_eq!(
            values(&rows, "component-value-quantity:canonical"),
            [&qty(1.72, ucum, Some("m"), None)],
            "mm[Hg] is not in the table"
        );
        // Composite components get canonical rows in the same group.
        let ccvq: Vec<_> = rows
            .iter()
            .filter(|r| r.param.starts_with("component-code-value-quantity$"))
            .map(|r| (r.param.as_str(), r.group))
            .collect();
        assert_eq!(
            ccvq,
            [
                ("component-code-value-quantity$0", 1),
                ("component-code-value-quantity$1", 1),
                ("component-code-value-quantity$1:canonical", 1),
                ("component-code-value-quantity$0", 2),
                ("component-code-value-quantity$1", 2),
            ]
        );
        // No system, or another system: a label, not converted.
        let labelled = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "valueQuantity": {"value": 5, "code": "mg"}});
        assert!(values(&extract(defs(), &labelled), "value-quantity:canonical").is_empty());
    }

    #[test]
    fn compound_ucum_units_get_canonical_rows() {
        let ucum = Some("http://unitsofmeasure.org");
        let quantity =
            |value: f64, code: &str| json!({"value": value, "system": UCUM_SYSTEM, "code": code});
        let o = json!({
            "resourceType": "Observation", "status": "final", "code": {"text": "panel"},
            "valueQuantity": quantity(180.0, "mg/dL"),
            "component": [
                {"code": {"text": "rate"}, "valueQuantity": quantity(90.0, "/min")},
                {"code": {"text": "wbc"}, "valueQuantity": quantity(7.2, "10*3/uL")},
                {"code": {"text": "dose"}, "valueQuantity": quantity(2.0, "mg/kg")}
            ]
        });
        let rows = extract(defs(), &o);
        assert_eq!(
            values(&rows, "value-quantity:canonical"),
            [&qty(1.8, ucum, Some("g.L-1"), None)]
        );
        assert_eq!(
            values(&rows, "component-value-quantity:canonical"),
            [
                &qty(1.5, ucum, Some("s-1"), None),
                &qty(7.2e9, ucum, Some("L-1"), None)
            ],
            "mg/kg cancels to a dimensionless ratio: not converted"
        );
    }

    #[test]
    fn duplicates_are_removed() {
        let p = json!({
            "resourceType": "Patient",
            "name": [{"family": "Smith", "given": ["Ann"]}, {"family": "Smith", "given": ["Ann"]}],
            "identifier": [{"system": "s", "value": "1"}, {"system": "s", "value": "1"}]
        });
        let rows = extract(defs(), &p);
        assert_eq!(values(&rows, "family"), [&s("smith", "Smith")]);
        assert_eq!(values(&rows, "name").len(), 2);
        assert_eq!(values(&rows, "identifier").len(), 1);
    }

    #[test]
    fn unknown_or_malformed_resources_give_no_rows_and_no_panic() {
        assert!(extract(defs(), &json!({"resourceType": "Nope"})).is_empty());
        assert!(extract(defs(), &json!({})).is_empty());
        assert!(extract(defs(), &json!("Patient")).is_empty());
        let odd = json!({
            "resourceType": "Observation",
            "code": {"coding": "x"},
            "valueQuantity": {"value": "high"},
            "effectiveDateTime": "yesterday",
            "effectivePeriod": {"start": 5},
            "component": [null, {"valueQuantity": {"value": 1}}],
            "subject": {"reference": 7}
        });
        let _ = extract(defs(), &odd);
    }

    fn shared_dir() -> std::path::PathBuf {
        std::env::var_os("CAREPLANE_SHARED_DIR").map_or_else(
            || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
            Into::into,
        )
    }

    /// The rows of `code` in `rows` as comparable sets: for a plain parameter every (row-name
    /// suffix, value); for a composite every group, as its sorted (suffix, value) pairs (the
    /// group numbers themselves differ between a composite and its sources).
    fn row_set(rows: &[IndexRow], code: &str) -> BTreeSet<Vec<(String, String)>> {
        let mut groups: BTreeMap<u32, Vec<(String, String)>> = BTreeMap::new();
        let mut plain = BTreeSet::new();
        for row in rows {
            let Some(suffix) = row.param.strip_prefix(code) else {
                continue;
            };
            if !(suffix.is_empty() || suffix.starts_with(['$', ':'])) {
                continue;
            }
            let pair = (suffix.to_string(), format!("{:?}", row.value));
            if row.group == 0 {
                plain.insert(vec![pair]);
            } else {
                groups.entry(row.group).or_default().push(pair);
            }
        }
        plain.extend(groups.into_values().map(|mut g| {
            g.sort();
            g
        }));
        plain
    }

    /// The Synthea bundles in the shared data (sorted), or why there are none.
    fn synthea_bundle_paths() -> Result<Vec<std::path::PathBuf>, String> {
        let dir = shared_dir().join("data/synthea-r4");
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| format!("no Synthea bundles at {}: {e}", dir.display()))?;
        let mut paths: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(".json.gz"))
            .collect();
        paths.sort();
        Ok(paths)
    }

    fn read_bundle(path: &std::path::Path) -> Value {
        let mut text = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// [`row_set`] of what a source stores: another parameter's rows, or the one group that
    /// plain parameters make up as a composite's components (when each has a value).
    fn source_set(rows: &[IndexRow], source: &Source) -> BTreeSet<Vec<(String, String)>> {
        let codes = match source {
            Source::Param(code) => return row_set(rows, code),
            Source::Components(codes) => codes,
        };
        let mut group = Vec::new();
        for (position, code) in codes.iter().enumerate() {
            let values = row_set(rows, code);
            if values.is_empty() {
                return BTreeSet::new();
            }
            for (suffix, value) in values.into_iter().flatten() {
                group.push((format!("${position}{suffix}"), value));
            }
        }
        group.sort();
        BTreeSet::from([group])
    }

    /// The derivation holds on real data: over every Synthea resource, each derived
    /// parameter's rows (or groups) are exactly its sources' rows (or groups) together.
    #[test]
    fn derived_parameters_have_exactly_their_sources_rows_on_synthea() {
        let mut compared = 0;
        for path in &synthea_bundle_paths().unwrap() {
            let bundle = read_bundle(path);
            for entry in bundle["entry"].as_array().unwrap() {
                let resource = &entry["resource"];
                let rt = resource["resourceType"].as_str().unwrap();
                let rows = extract(defs(), resource);
                for param in compiled(defs(), rt)
                    .iter()
                    .filter(|p| !p.sources.is_empty())
                {
                    let own = row_set(&rows, &param.code);
                    let from_sources: BTreeSet<_> = param
                        .sources
                        .iter()
                        .flat_map(|source| source_set(&rows, source))
                        .collect();
                    assert_eq!(
                        own,
                        from_sources,
                        "{rt}.{} in {}",
                        param.code,
                        path.display()
                    );
                    compared += usize::from(!own.is_empty());
                }
            }
        }
        assert!(compared > 10_000, "only {compared} derived values compared");
    }

    #[test]
    fn synthea_resources_all_yield_rows() {
        let paths = match synthea_bundle_paths() {
            Ok(paths) => paths,
            Err(why) => {
                println!("skipped: {why}");
                return;
            }
        };
        let (mut resources, mut rows, mut elapsed) = (0usize, 0usize, Duration::ZERO);
        let mut per_type: HashMap<String, (usize, Duration)> = HashMap::new();
        // Warm the caches so the timing below is steady-state extraction only.
        for rt in defs().resource_types() {
            let _ = extract(defs(), &json!({ "resourceType": rt }));
        }
        for path in &paths {
            let bundle = read_bundle(path);
            for entry in bundle["entry"].as_array().unwrap() {
                let resource = &entry["resource"];
                let rt = resource["resourceType"].as_str().unwrap().to_string();
                let t = Instant::now();
                let extracted = extract(defs(), resource);
                let took = t.elapsed();
                assert!(!extracted.is_empty(), "{rt} in {}", path.display());
                resources += 1;
                rows += extracted.len();
                elapsed += took;
                let e = per_type.entry(rt).or_default();
                e.0 += 1;
                e.1 += took;
            }
        }
        if resources == 0 {
            println!("skipped: no resources in the Synthea bundles");
            return;
        }
        println!(
            "{resources} resources, {rows} rows, {:?} per resource on average",
            elapsed / u32::try_from(resources).unwrap()
        );
        let mut per_type: Vec<_> = per_type.into_iter().collect();
        per_type.sort_by_key(|(_, (n, _))| std::cmp::Reverse(*n));
        for (rt, (n, d)) in per_type {
            println!("  {rt}: {n} x {:?}", d / u32::try_from(n).unwrap());
        }
    }
}
