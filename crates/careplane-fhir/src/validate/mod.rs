//! Validation of a resource against the official R4 StructureDefinitions: known elements (choice
//! types, primitive `_x` companions, contained resources), JSON shapes, primitive formats,
//! cardinality, enumerable required bindings, reference syntax and a few core invariants.
//! Every problem is reported with its FHIRPath, not just the first.

mod bindings;
pub use invariants::instant_bounds;
mod datatypes;
pub(crate) mod invariants;
mod xhtml;

use serde_json::{Map, Value};

use crate::definitions::{Definitions, ElementDef, TypeDef, TypeKind};
use crate::outcome::{Issue, IssueCode};
use crate::resource::is_valid_id;

/// Strings over this many characters are rejected (R4 datatypes.html: "strings SHALL be < 1MB").
pub const MAX_STRING_CHARS: usize = 1024 * 1024;

/// Validates one resource; an empty list means valid. Warnings may be present with no errors.
pub fn validate(defs: &Definitions, resource: &Value) -> Vec<Issue> {
    walk(defs, resource, 0)
}

/// Validates the resource of a transaction/batch Bundle entry, where conditional references
/// (`Patient?identifier=…`) are legal because the server resolves them before storing.
pub fn validate_bundle_entry(defs: &Definitions, resource: &Value) -> Vec<Issue> {
    walk(defs, resource, 1)
}

fn walk(defs: &Definitions, resource: &Value, bundle_depth: u32) -> Vec<Issue> {
    let mut walker = Walker {
        defs,
        issues: Vec::new(),
        bundle_depth,
    };
    walker.resource(resource, None, false);
    walker.issues
}

struct Walker<'d> {
    defs: &'d Definitions,
    issues: Vec<Issue>,
    /// Greater than zero inside a Bundle, where conditional references and `urn:` ids are legal.
    bundle_depth: u32,
}

impl<'d> Walker<'d> {
    fn report(&mut self, code: IssueCode, at: &str, diagnostics: impl Into<String>) {
        self.issues.push(Issue::error(code, diagnostics).at(at));
    }

    fn warn(&mut self, code: IssueCode, at: &str, diagnostics: impl Into<String>) {
        let mut issue = Issue::error(code, diagnostics).at(at);
        issue.severity = crate::outcome::Severity::Warning;
        self.issues.push(issue);
    }

    /// `at` is the FHIRPath of a nested resource (`Bundle.entry[0].resource`), `None` at the root.
    /// A contained resource's `#id` references resolve against its container, not itself.
    fn resource(&mut self, value: &Value, at: Option<&str>, is_contained: bool) {
        let where_ = at.unwrap_or("Resource");
        let Some(obj) = value.as_object() else {
            self.report(
                IssueCode::Structure,
                where_,
                "A resource must be a JSON object",
            );
            return;
        };
        let rt = match obj.get("resourceType") {
            Some(Value::String(rt)) => rt.as_str(),
            Some(_) => {
                self.report(
                    IssueCode::Structure,
                    where_,
                    "resourceType must be a string",
                );
                return;
            }
            None => {
                self.report(IssueCode::Required, where_, "resourceType is missing");
                return;
            }
        };
        let defs = self.defs;
        let Some(ty) = defs
            .type_def(rt)
            .filter(|t| t.kind == TypeKind::Resource && !t.is_abstract)
        else {
            self.report(
                IssueCode::Invalid,
                where_,
                format!("Unknown resource type '{rt}'"),
            );
            return;
        };
        let path = at.map_or_else(|| rt.to_string(), str::to_string);
        if let Some(Value::String(id)) = obj.get("id") {
            if !is_valid_id(id) {
                self.report(
                    IssueCode::Value,
                    &format!("{path}.id"),
                    format!(
                        "Invalid resource id '{}': 1-64 characters of A-Z a-z 0-9 - .",
                        truncate(id)
                    ),
                );
            }
        }
        let is_bundle = rt == "Bundle";
        if is_bundle {
            self.bundle_depth += 1;
        }
        self.object(obj, ty, "", &path, true);
        if is_bundle {
            invariants::bundle(self, obj, &path);
            self.bundle_depth -= 1;
        }
        if !is_contained {
            invariants::contained(self, obj, &path);
        }
    }

    fn object(
        &mut self,
        obj: &Map<String, Value>,
        ty: &'d TypeDef,
        parent: &str,
        path: &str,
        is_resource: bool,
    ) {
        if !is_resource && !obj.keys().any(|k| k != "id") {
            self.report(
                IssueCode::Invalid,
                path,
                "Elements must have a value or children (ele-1): empty object",
            );
        }
        let mut choices_seen: Vec<(*const ElementDef, &str)> = Vec::new();
        for (key, value) in obj {
            if is_resource && key == "resourceType" {
                continue;
            }
            let (name, is_companion) = match key.strip_prefix('_') {
                Some(name) => (name, true),
                None => (key.as_str(), false),
            };
            let Some((el, code)) = ty.property(parent, name) else {
                self.report(
                    IssueCode::Structure,
                    &format!("{path}.{key}"),
                    format!("Unrecognized element '{key}'"),
                );
                continue;
            };
            let child_path = format!("{path}.{name}");
            if el.is_choice() {
                let seen = choices_seen
                    .iter()
                    .find(|(e, n)| std::ptr::eq(*e, el) && *n != name);
                if let Some((_, other)) = seen {
                    let msg = format!(
                        "Only one type of {}[x] is allowed, found '{other}' and '{name}'",
                        el.name()
                    );
                    self.report(IssueCode::Structure, &child_path, msg);
                }
                choices_seen.push((el, name));
            }
            if is_companion {
                self.companion(value, el, code, obj.get(name), &child_path);
            } else {
                let companion = obj.get(&format!("_{name}"));
                self.element(value, el, code, ty, &child_path, companion);
            }
        }
        self.min_cardinality(obj, ty, parent, path);
    }

    fn min_cardinality(
        &mut self,
        obj: &Map<String, Value>,
        ty: &TypeDef,
        parent: &str,
        path: &str,
    ) {
        for child in ty.children(parent).filter(|c| c.min > 0) {
            let name = child.name();
            let present = if child.is_choice() {
                obj.keys().any(|k| {
                    let k = k.strip_prefix('_').unwrap_or(k);
                    ty.property(parent, k)
                        .is_some_and(|(el, _)| std::ptr::eq(el, child))
                })
            } else {
                obj.contains_key(name) || obj.contains_key(&format!("_{name}"))
            };
            if !present {
                self.report(
                    IssueCode::Required,
                    &format!("{path}.{name}"),
                    format!(
                        "Missing required element '{name}' (minimum cardinality {})",
                        child.min
                    ),
                );
            }
        }
    }

    fn element(
        &mut self,
        value: &Value,
        el: &'d ElementDef,
        code: &str,
        owner: &'d TypeDef,
        path: &str,
        companion: Option<&Value>,
    ) {
        if !el.is_repeating() {
            match value {
                Value::Array(_) => self.report(
                    IssueCode::Structure,
                    path,
                    "This element is not repeating: use a single value, not an array",
                ),
                Value::Null if companion.is_some() => {}
                Value::Null => self.report(IssueCode::Invalid, path, "null is not a valid value"),
                _ => self.value(value, el, code, owner, path),
            }
            return;
        }
        let Value::Array(items) = value else {
            self.report(
                IssueCode::Structure,
                path,
                "This element repeats: its value must be an array",
            );
            return;
        };
        if items.is_empty() {
            self.report(IssueCode::Invalid, path, "Arrays must not be empty");
        }
        if let Some(max) = el.max.filter(|m| items.len() > *m as usize) {
            self.report(
                IssueCode::Structure,
                path,
                format!("At most {max} values are allowed, found {}", items.len()),
            );
        }
        let companions = companion.and_then(Value::as_array);
        if let Some(c) = companions.filter(|c| c.len() != items.len()) {
            self.report(
                IssueCode::Structure,
                path,
                format!(
                    "The array and its '_' companion differ in length ({} vs {})",
                    items.len(),
                    c.len()
                ),
            );
        }
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            if item.is_null() {
                let has_extension = companions
                    .and_then(|c| c.get(i))
                    .is_some_and(|c| !c.is_null());
                if !has_extension {
                    self.report(
                        IssueCode::Invalid,
                        &item_path,
                        "null is only allowed where the '_' companion has a value",
                    );
                }
                continue;
            }
            self.value(item, el, code, owner, &item_path);
        }
    }

    fn value(
        &mut self,
        value: &Value,
        el: &'d ElementDef,
        code: &str,
        owner: &'d TypeDef,
        path: &str,
    ) {
        let inline_parent = el
            .content_ref
            .as_deref()
            .or(el.has_inline_children.then_some(el.path.as_str()));
        if let Some(parent) = inline_parent {
            match value.as_object() {
                Some(obj) => self.object(obj, owner, parent, path, false),
                None => self.report(IssueCode::Structure, path, "Expected a JSON object"),
            }
            return;
        }
        if code == "Resource" {
            self.resource(value, Some(path), el.path == "contained");
            return;
        }
        let defs = self.defs;
        let Some(ty) = defs.type_def(code) else {
            self.report(
                IssueCode::Structure,
                path,
                format!("Unknown type '{code}' in the definitions"),
            );
            return;
        };
        match ty.kind {
            TypeKind::Primitive => datatypes::primitive(self, value, ty, el, path),
            TypeKind::Resource => self.resource(value, Some(path), false),
            TypeKind::Complex => {
                let Some(obj) = value.as_object() else {
                    self.report(
                        IssueCode::Structure,
                        path,
                        format!("A {code} must be a JSON object"),
                    );
                    return;
                };
                self.object(obj, ty, "", path, false);
                datatypes::complex(self, obj, code, el, path);
            }
        }
    }

    /// `_name` carries the id/extensions of primitive `name`: an object, or an array aligned with it.
    fn companion(
        &mut self,
        value: &Value,
        el: &ElementDef,
        code: &str,
        primitive: Option<&Value>,
        path: &str,
    ) {
        let defs = self.defs;
        if !defs
            .type_def(code)
            .is_some_and(|t| t.kind == TypeKind::Primitive)
        {
            self.report(
                IssueCode::Structure,
                path,
                format!("'_' properties are only for primitives, not {code}"),
            );
            return;
        }
        let Some(element) = defs.type_def("Element") else {
            return;
        };
        let check = |w: &mut Self, v: &Value, p: &str| match v.as_object() {
            Some(obj) => w.object(obj, element, "", p, false),
            None => w.report(IssueCode::Structure, p, "A '_' companion must hold objects"),
        };
        match (el.is_repeating(), value) {
            (true, Value::Array(items)) => {
                let prims = primitive.and_then(Value::as_array);
                for (i, item) in items.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    if item.is_null() {
                        if prims.and_then(|a| a.get(i)).is_none_or(Value::is_null) {
                            self.report(
                                IssueCode::Invalid,
                                &p,
                                "Both the value and its '_' companion are null",
                            );
                        }
                        continue;
                    }
                    check(self, item, &p);
                }
            }
            (true, _) => self.report(
                IssueCode::Structure,
                path,
                "The '_' companion of a repeating element must be an array",
            ),
            (false, v) => check(self, v, path),
        }
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests;
