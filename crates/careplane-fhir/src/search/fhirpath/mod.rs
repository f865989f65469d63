//! The FHIRPath subset that the official R4 SearchParameter expressions use, evaluated over
//! JSON resources with the definitions supplying each item's FHIR type (needed for choice
//! elements, `as`/`is`/`ofType` and for turning items into index values).
//!
//! Supported: paths rooted at a type name (`Observation.code`) or at the focus (`code`),
//! `%resource`/`%context`, `$this`, indexers, `|`, `=`, `!=`, `and`, `or`, `xor`, `implies`,
//! `is`/`as` (operators and functions), and `where`, `exists`, `empty`, `not`, `first`, `last`,
//! `count`, `hasValue`, `ofType`, `extension(url)` and `resolve()`. Anything else is a parse
//! error, so an unsupported expression is found when it is parsed, not silently mis-indexed.
//!
//! `resolve()` cannot load anything here: it yields a placeholder typed as the resource type the
//! literal reference names (`Patient/1`, `http://x/fhir/Patient/1`), enough for
//! `where(resolve() is Patient)`; navigating into it yields nothing.

mod parse;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::OnceLock;

use serde_json::Value;

use crate::definitions::{Definitions, ElementDef, TypeDef, TypeKind};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid FHIRPath at offset {position}: {message}")]
pub struct FhirPathError {
    pub message: String,
    /// Byte offset in the source expression.
    pub position: usize,
}

/// A parsed expression; parse once, evaluate many times.
#[derive(Debug, Clone, PartialEq)]
pub struct Expression {
    root: Node,
}

pub fn parse(src: &str) -> Result<Expression, FhirPathError> {
    parse::parse(src).map(|root| Expression { root })
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// `{}`, or union branches pruned away by [`Expression::for_resource_type`].
    Empty,
    Literal(Value),
    This,
    Env(Env),
    /// A leading identifier: a type filter if capitalised (`Patient`), else a child of the focus.
    Ident(Name),
    Child(Box<Node>, Name),
    Call(Box<Node>, Func),
    Index(Box<Node>, Box<Node>),
    Union(Box<Node>, Box<Node>),
    /// `=`, or `!=` when the flag is set.
    Eq(Box<Node>, Box<Node>, bool),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Xor(Box<Node>, Box<Node>),
    Implies(Box<Node>, Box<Node>),
    Is(Box<Node>, TypeSpec),
    As(Box<Node>, TypeSpec),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Env {
    Resource,
    Context,
}

#[derive(Debug, Clone, PartialEq)]
enum Func {
    Where(Box<Node>),
    Exists(Option<Box<Node>>),
    As(TypeSpec),
    Is(TypeSpec),
    OfType(TypeSpec),
    Extension(String),
    Resolve,
    First,
    Last,
    Empty,
    Not,
    Count,
    HasValue,
}

/// An element name, with a one-entry cache of the element it last resolved to: a given step
/// nearly always sees the same parent type, and scanning the parent's children is the
/// costliest part of navigation.
#[derive(Debug)]
struct Name {
    text: String,
    /// (owner type address, parent path address, parent path length, element index).
    memo: OnceLock<(usize, usize, usize, usize)>,
}

impl Name {
    fn new(text: String) -> Name {
        Name {
            text,
            memo: OnceLock::new(),
        }
    }
}

impl Clone for Name {
    fn clone(&self) -> Name {
        Name::new(self.text.clone())
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.text == other.text
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

/// A type name with any `FHIR.`/`System.` namespace removed; System primitive names map to the
/// FHIR primitive they stand for (`DateTime` -> `dateTime`), since items carry FHIR types.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TypeSpec(String);

impl TypeSpec {
    fn new(name: &str) -> TypeSpec {
        let fhir = match name {
            "Boolean" => "boolean",
            "String" => "string",
            "Integer" => "integer",
            "Decimal" => "decimal",
            "Date" => "date",
            "DateTime" => "dateTime",
            "Time" => "time",
            other => other,
        };
        TypeSpec(fhir.to_string())
    }
}

/// One value of an evaluation result with its FHIR type.
#[derive(Debug, Clone)]
pub struct Item<'a> {
    /// Borrowed from the resource (or expression); owned only for computed values (`exists()`).
    pub value: Cow<'a, Value>,
    ty: Ty<'a>,
}

#[derive(Debug, Clone, Copy)]
enum Ty<'a> {
    /// A resource, complex datatype or primitive.
    Def(&'a TypeDef),
    /// An element whose children are defined inline at `path` inside `owner`
    /// (`Observation.component`); `name` is its declared type (`BackboneElement`, `Element`).
    Backbone {
        owner: &'a TypeDef,
        path: &'a str,
        name: &'a str,
    },
    /// What `resolve()` yields: only the target's resource type is known.
    Resolved(&'a str),
    /// Literals and computed values: `boolean`, `string`, `integer`, `decimal`.
    System(&'static str),
}

impl<'a> Item<'a> {
    /// The resource type or data type name (`Observation`, `Quantity`, `dateTime`); for a
    /// backbone element its declared type (`BackboneElement`), see [`Item::backbone`].
    pub fn type_name(&self) -> &'a str {
        match self.ty {
            Ty::Def(d) => &d.name,
            Ty::Backbone { name, .. } => name,
            Ty::Resolved(t) => t,
            Ty::System(t) => t,
        }
    }

    /// For a backbone element: the type that defines it and its path there
    /// (`("Observation", "component")`).
    pub fn backbone(&self) -> Option<(&'a str, &'a str)> {
        match self.ty {
            Ty::Backbone { owner, path, .. } => Some((&owner.name, path)),
            _ => None,
        }
    }

    /// True for the placeholder `resolve()` returns.
    pub fn is_resolved_reference(&self) -> bool {
        matches!(self.ty, Ty::Resolved(_))
    }

    pub fn as_str(&self) -> Option<&str> {
        self.value.as_str()
    }

    /// An object member of a borrowed value, with the resource's lifetime.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        match self.value {
            Cow::Borrowed(v) => v.get(key),
            Cow::Owned(_) => None,
        }
    }

    fn boolean(b: bool) -> Item<'a> {
        Item {
            value: Cow::Owned(Value::Bool(b)),
            ty: Ty::System("boolean"),
        }
    }
}

/// The resource as an item typed by its `resourceType`, or `None` if that is not a known type.
pub fn resource_item<'a>(defs: &'a Definitions, resource: &'a Value) -> Option<Item<'a>> {
    let rt = resource.get("resourceType")?.as_str()?;
    let def = defs.type_def(rt).filter(|d| d.kind == TypeKind::Resource)?;
    Some(Item {
        value: Cow::Borrowed(resource),
        ty: Ty::Def(def),
    })
}

impl Expression {
    /// Evaluates on a resource, which is both the focus and `%resource`. A leading type name
    /// the resource is not (`CarePlan.subject` on a Patient) selects nothing.
    pub fn evaluate<'a>(&'a self, defs: &'a Definitions, resource: &'a Value) -> Vec<Item<'a>> {
        let Some(root) = resource_item(defs, resource) else {
            return Vec::new();
        };
        let focus = [root];
        self.evaluate_on(defs, &focus[0], &focus)
    }

    /// Evaluates with `focus` as the input and `%context` (e.g. the items of a composite
    /// parameter, for its component expressions); `resource` is `%resource`, usually from
    /// [`resource_item`] (taken as an item so that callers type it once, not per expression).
    pub fn evaluate_on<'a>(
        &'a self,
        defs: &'a Definitions,
        resource: &Item<'a>,
        focus: &[Item<'a>],
    ) -> Vec<Item<'a>> {
        let eval = Eval {
            defs,
            resource,
            context: focus,
        };
        eval.eval(&self.root, focus)
    }

    /// The branches of a top-level union (`a | (b | c)` gives a, b, c); the expression itself
    /// when it is not a union. Equal branches evaluate alike, which lets the indexer see that
    /// one parameter's values are those of others together (`combo-code` = `code` |
    /// `component-code`).
    pub fn union_branches(&self) -> Vec<Expression> {
        fn collect(node: &Node, out: &mut Vec<Expression>) {
            match node {
                Node::Union(l, r) => {
                    collect(l, out);
                    collect(r, out);
                }
                other => out.push(Expression {
                    root: other.clone(),
                }),
            }
        }
        let mut out = Vec::new();
        collect(&self.root, &mut out);
        out
    }

    /// [`Expression::union_branches`], each in one spelling of what it selects: a leading
    /// element name becomes a child of `$this`, and `.as(T)` the `as T` operator. A composite's
    /// component, written relative to its item (`value.as(Quantity)`), then compares equal to a
    /// parameter's branch pruned to its type (`Observation.value as Quantity`).
    pub fn normalized_branches(&self) -> Vec<Expression> {
        self.union_branches()
            .into_iter()
            .map(|branch| Expression {
                root: normalize(&branch.root),
            })
            .collect()
    }

    /// The type this expression ends by casting to (`value as SampledData`), if it does.
    pub fn cast_type(&self) -> Option<&str> {
        match &self.root {
            Node::As(_, ty) | Node::Call(_, Func::As(ty)) => Some(&ty.0),
            _ => None,
        }
    }

    /// True for `$this` alone: after [`Expression::for_resource_type`], an expression naming the
    /// resource itself (a composite over `Observation`).
    pub fn is_this(&self) -> bool {
        self.root == Node::This
    }

    /// True when nothing is left to evaluate (`{}`, or every branch pruned).
    pub fn is_empty(&self) -> bool {
        self.root == Node::Empty
    }

    /// A copy for evaluating on resources of type `resource_type` only: union branches rooted
    /// at a type it is not are dropped (expressions shared by many types,
    /// `AllergyIntolerance.patient | CarePlan.subject…`, keep only the part that can match) and
    /// the remaining leading type names, known to match, are not checked again.
    pub fn for_resource_type(&self, defs: &Definitions, resource_type: &str) -> Expression {
        Expression {
            root: prune(&self.root, &|t| is_subtype(defs, resource_type, t)).unwrap_or(Node::Empty),
        }
    }
}

fn prune(node: &Node, keep: &dyn Fn(&str) -> bool) -> Option<Node> {
    if let Node::Union(l, r) = node {
        return match (prune(l, keep), prune(r, keep)) {
            (Some(l), Some(r)) => Some(Node::Union(Box::new(l), Box::new(r))),
            (one, None) | (None, one) => one,
        };
    }
    match root_type(node) {
        Some(t) if !keep(t) => None,
        Some(_) => Some(strip_root(node)),
        None => Some(node.clone()),
    }
}

/// See [`Expression::normalized_branches`].
fn normalize(node: &Node) -> Node {
    let inner = |base: &Node| Box::new(normalize(base));
    match node {
        Node::Ident(name) if !starts_upper(name) => Node::Child(Box::new(Node::This), name.clone()),
        Node::Child(base, name) => Node::Child(inner(base), name.clone()),
        Node::Call(base, Func::As(ty)) => Node::As(inner(base), ty.clone()),
        Node::Call(base, f) => Node::Call(inner(base), f.clone()),
        Node::Index(base, i) => Node::Index(inner(base), i.clone()),
        Node::Is(base, t) => Node::Is(inner(base), t.clone()),
        Node::As(base, t) => Node::As(inner(base), t.clone()),
        other => other.clone(),
    }
}

/// `node` with its leading type filter replaced by `$this`, which the filter is known to pass.
fn strip_root(node: &Node) -> Node {
    let strip = |base: &Node| Box::new(strip_root(base));
    match node {
        Node::Ident(name) if starts_upper(name) => Node::This,
        Node::Child(base, name) => Node::Child(strip(base), name.clone()),
        Node::Call(base, f) => Node::Call(strip(base), f.clone()),
        Node::Index(base, i) => Node::Index(strip(base), i.clone()),
        Node::Is(base, t) => Node::Is(strip(base), t.clone()),
        Node::As(base, t) => Node::As(strip(base), t.clone()),
        other => other.clone(),
    }
}

/// The type name a path starts from (`Observation` in `(Observation.value as Quantity)`).
fn root_type(node: &Node) -> Option<&str> {
    match node {
        Node::Ident(name) if starts_upper(name) => Some(&name.text),
        Node::Child(base, _)
        | Node::Call(base, _)
        | Node::Index(base, _)
        | Node::Is(base, _)
        | Node::As(base, _) => root_type(base),
        _ => None,
    }
}

fn starts_upper(s: &str) -> bool {
    s.as_bytes().first().is_some_and(u8::is_ascii_uppercase)
}

/// Whether type `name` is `ancestor` or derives from it (`Age` is a `Quantity`, `code` a
/// `string`, every resource a `Resource`).
fn is_subtype(defs: &Definitions, name: &str, ancestor: &str) -> bool {
    let mut current = name;
    // Bounded: the hierarchy is a few levels deep, and corrupt data must not loop forever.
    for _ in 0..16 {
        if current == ancestor {
            return true;
        }
        match defs.type_def(current).and_then(|d| d.base.as_deref()) {
            Some(base) => current = base,
            None => return false,
        }
    }
    false
}

struct Eval<'a, 'f> {
    defs: &'a Definitions,
    resource: &'f Item<'a>,
    context: &'f [Item<'a>],
}

impl<'a> Eval<'a, '_> {
    fn eval(&self, node: &'a Node, focus: &[Item<'a>]) -> Vec<Item<'a>> {
        match node {
            Node::Empty => Vec::new(),
            Node::Literal(v) => vec![Item {
                value: Cow::Borrowed(v),
                ty: Ty::System(literal_type(v)),
            }],
            Node::This => focus.to_vec(),
            Node::Env(Env::Resource) => vec![self.resource.clone()],
            Node::Env(Env::Context) => self.context.to_vec(),
            Node::Ident(name) if starts_upper(name) => focus
                .iter()
                .filter(|i| self.is_type(i, name))
                .cloned()
                .collect(),
            Node::Ident(name) => {
                let mut out = Vec::new();
                for item in focus {
                    self.children(item, name, &mut out);
                }
                out
            }
            Node::Child(base, name) => {
                let mut out = Vec::new();
                if **base == Node::This {
                    for item in focus {
                        self.children(item, name, &mut out);
                    }
                } else {
                    for item in &self.eval(base, focus) {
                        self.children(item, name, &mut out);
                    }
                }
                out
            }
            Node::Call(base, func) => {
                let input = self.eval(base, focus);
                self.call(func, input)
            }
            Node::Index(base, index) => {
                let input = self.eval(base, focus);
                let index = self.eval(index, focus);
                match index.first().and_then(|i| i.value.as_u64()) {
                    Some(n) if index.len() == 1 => usize::try_from(n)
                        .ok()
                        .and_then(|n| input.into_iter().nth(n))
                        .into_iter()
                        .collect(),
                    _ => Vec::new(),
                }
            }
            Node::Union(l, r) => {
                let mut out = self.eval(l, focus);
                let right = self.eval(r, focus);
                if out.len().saturating_mul(right.len()) <= 256 {
                    for item in right {
                        if !out.iter().any(|o| same_item(o, &item)) {
                            out.push(item);
                        }
                    }
                } else {
                    // Large collections: only the same element counts as a duplicate, to stay linear.
                    let mut seen: HashSet<*const Value> =
                        out.iter().map(|i| &*i.value as *const Value).collect();
                    for item in right {
                        if seen.insert(&*item.value as *const Value) {
                            out.push(item);
                        }
                    }
                }
                out
            }
            Node::Eq(l, r, negate) => {
                let (l, r) = (self.eval(l, focus), self.eval(r, focus));
                if l.is_empty() || r.is_empty() {
                    return Vec::new();
                }
                let equal = l.len() == r.len()
                    && l.iter()
                        .zip(&r)
                        .all(|(a, b)| values_equal(&a.value, &b.value));
                vec![Item::boolean(equal != *negate)]
            }
            Node::And(l, r) => {
                let (l, r) = (self.truth(l, focus), self.truth(r, focus));
                match (l, r) {
                    (Some(false), _) | (_, Some(false)) => vec![Item::boolean(false)],
                    (Some(true), Some(true)) => vec![Item::boolean(true)],
                    _ => Vec::new(),
                }
            }
            Node::Or(l, r) => {
                let (l, r) = (self.truth(l, focus), self.truth(r, focus));
                match (l, r) {
                    (Some(true), _) | (_, Some(true)) => vec![Item::boolean(true)],
                    (Some(false), Some(false)) => vec![Item::boolean(false)],
                    _ => Vec::new(),
                }
            }
            Node::Xor(l, r) => match (self.truth(l, focus), self.truth(r, focus)) {
                (Some(a), Some(b)) => vec![Item::boolean(a != b)],
                _ => Vec::new(),
            },
            Node::Implies(l, r) => match (self.truth(l, focus), self.truth(r, focus)) {
                (Some(false), _) | (_, Some(true)) => vec![Item::boolean(true)],
                (Some(true), Some(false)) => vec![Item::boolean(false)],
                _ => Vec::new(),
            },
            Node::Is(base, ty) => self.call_is(&ty.0, self.eval(base, focus)),
            Node::As(base, ty) => self.filter_type(&ty.0, self.eval(base, focus)),
        }
    }

    /// The singleton boolean value of an expression; `None` for empty (or several items).
    fn truth(&self, node: &'a Node, focus: &[Item<'a>]) -> Option<bool> {
        truthy(&self.eval(node, focus))
    }

    fn call(&self, func: &'a Func, input: Vec<Item<'a>>) -> Vec<Item<'a>> {
        match func {
            Func::Where(criteria) => input
                .into_iter()
                .filter(|item| {
                    truthy(&self.eval(criteria, std::slice::from_ref(item))) == Some(true)
                })
                .collect(),
            Func::Exists(None) => vec![Item::boolean(!input.is_empty())],
            Func::Exists(Some(criteria)) => {
                let any = input.iter().any(|item| {
                    truthy(&self.eval(criteria, std::slice::from_ref(item))) == Some(true)
                });
                vec![Item::boolean(any)]
            }
            Func::Empty => vec![Item::boolean(input.is_empty())],
            Func::Not => match truthy(&input) {
                Some(b) if input.len() == 1 && input[0].value.is_boolean() => {
                    vec![Item::boolean(!b)]
                }
                _ => Vec::new(),
            },
            Func::First => input.into_iter().take(1).collect(),
            Func::Last => input.into_iter().last().into_iter().collect(),
            Func::Count => vec![Item {
                value: Cow::Owned(Value::from(input.len())),
                ty: Ty::System("integer"),
            }],
            Func::HasValue => {
                let has = input.len() == 1
                    && matches!(input[0].ty, Ty::Def(d) if d.kind == TypeKind::Primitive)
                    && !input[0].value.is_null();
                vec![Item::boolean(has)]
            }
            Func::As(ty) | Func::OfType(ty) => self.filter_type(&ty.0, input),
            Func::Is(ty) => self.call_is(&ty.0, input),
            Func::Extension(url) => {
                let mut out = Vec::new();
                let Some(ext_def) = self.defs.type_def("Extension") else {
                    return out;
                };
                for item in &input {
                    let exts = item.get("extension").and_then(Value::as_array);
                    for ext in exts.into_iter().flatten() {
                        if ext.get("url").and_then(Value::as_str) == Some(url.as_str()) {
                            out.push(Item {
                                value: Cow::Borrowed(ext),
                                ty: Ty::Def(ext_def),
                            });
                        }
                    }
                }
                out
            }
            Func::Resolve => input
                .into_iter()
                .filter_map(|item| {
                    let reference = match item.value {
                        Cow::Borrowed(Value::String(s)) => s.as_str(),
                        Cow::Borrowed(v) => v.get("reference")?.as_str()?,
                        Cow::Owned(_) => return None,
                    };
                    let (rt, _) = reference_target(self.defs, reference)?;
                    Some(Item {
                        value: item.value,
                        ty: Ty::Resolved(rt),
                    })
                })
                .collect(),
        }
    }

    fn call_is(&self, ty: &str, input: Vec<Item<'a>>) -> Vec<Item<'a>> {
        match input.as_slice() {
            [item] => vec![Item::boolean(self.is_type(item, ty))],
            _ => Vec::new(),
        }
    }

    /// `as` and `ofType`: the items of type `ty` (or a subtype). Strict FHIRPath makes `as` on
    /// several items an error; the official expressions rely on it filtering instead.
    fn filter_type(&self, ty: &str, input: Vec<Item<'a>>) -> Vec<Item<'a>> {
        input
            .into_iter()
            .filter(|item| self.is_type(item, ty))
            .collect()
    }

    fn is_type(&self, item: &Item<'_>, ty: &str) -> bool {
        is_subtype(self.defs, item.type_name(), ty)
    }

    /// Appends the values of child element `name` of `item` (every `nameX` of a choice).
    fn children(&self, item: &Item<'a>, name: &Name, out: &mut Vec<Item<'a>>) {
        let Cow::Borrowed(Value::Object(obj)) = item.value else {
            return;
        };
        let (owner, parent) = match item.ty {
            Ty::Def(d) if d.kind != TypeKind::Primitive => (d, ""),
            Ty::Backbone { owner, path, .. } => (owner, path),
            _ => return,
        };
        // Children's paths are `parent.name` (or `name[x]`): compare the tail without splitting.
        let offset = if parent.is_empty() {
            0
        } else {
            parent.len() + 1
        };
        let is_named = |e: &ElementDef| {
            e.path.get(offset..).is_some_and(|last| {
                last == &**name
                    || (last.len() == name.len() + 3
                        && last.ends_with("[x]")
                        && last.starts_with(&**name))
            })
        };
        let key = (
            owner as *const TypeDef as usize,
            parent.as_ptr() as usize,
            parent.len(),
        );
        let cached = match name.memo.get() {
            Some(&(o, p, l, idx)) if (o, p, l) == key => owner.elements.get(idx),
            _ => None,
        };
        // A hit is re-checked (cheaply), so a stale address can never pick a wrong element.
        let el = match cached.filter(|e| is_named(e)) {
            Some(el) => el,
            None => {
                let Some(el) = owner.children(parent).find(|e| is_named(e)) else {
                    return;
                };
                if let Some(idx) = owner.elements.iter().position(|e| std::ptr::eq(e, el)) {
                    let _ = name.memo.set((key.0, key.1, key.2, idx));
                }
                el
            }
        };
        if el.is_choice() {
            for (key, value) in obj {
                let Some(suffix) = key.strip_prefix(&**name) else {
                    continue;
                };
                if let Some(code) = el.types.iter().find(|t| is_capitalized(t, suffix)) {
                    self.push_values(owner, el, code, value, out);
                }
            }
        } else if let Some(value) = obj.get(&name.text) {
            let code = el.types.first().map_or("", String::as_str);
            self.push_values(owner, el, code, value, out);
        }
    }

    fn push_values(
        &self,
        owner: &'a TypeDef,
        el: &'a ElementDef,
        code: &'a str,
        value: &'a Value,
        out: &mut Vec<Item<'a>>,
    ) {
        match value {
            Value::Array(values) => {
                for v in values {
                    self.push_value(owner, el, code, v, out);
                }
            }
            v => self.push_value(owner, el, code, v, out),
        }
    }

    fn push_value(
        &self,
        owner: &'a TypeDef,
        el: &'a ElementDef,
        code: &'a str,
        value: &'a Value,
        out: &mut Vec<Item<'a>>,
    ) {
        // A null is a primitive that only has `_name` extensions: no value to index.
        if value.is_null() {
            return;
        }
        let ty = if let Some(path) = el.content_ref.as_deref() {
            let name = owner
                .element(path)
                .and_then(|e| e.types.first())
                .map_or("BackboneElement", String::as_str);
            Ty::Backbone { owner, path, name }
        } else if el.has_inline_children {
            Ty::Backbone {
                owner,
                path: &el.path,
                name: code,
            }
        } else if code == "Resource" {
            let rt = value.get("resourceType").and_then(Value::as_str);
            match rt.and_then(|rt| self.defs.type_def(rt)) {
                Some(def) => Ty::Def(def),
                None => return,
            }
        } else {
            match self.defs.type_def(code) {
                Some(def) => Ty::Def(def),
                None => return,
            }
        };
        out.push(Item {
            value: Cow::Borrowed(value),
            ty,
        });
    }
}

fn literal_type(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "decimal",
        _ => "string",
    }
}

fn truthy(items: &[Item<'_>]) -> Option<bool> {
    match items {
        [item] => Some(item.value.as_bool().unwrap_or(true)),
        _ => None,
    }
}

/// `suffix` is `ty` with its first letter capitalised (`Quantity`/`Quantity`, `dateTime`/`DateTime`).
fn is_capitalized(ty: &str, suffix: &str) -> bool {
    let (t, s) = (ty.as_bytes(), suffix.as_bytes());
    t.len() == s.len() && !t.is_empty() && t[0].to_ascii_uppercase() == s[0] && t[1..] == s[1..]
}

/// Union deduplication: equal primitives, or the very same complex element (comparing
/// complex values deeply would cost more than the duplicates it saves).
fn same_item(a: &Item<'_>, b: &Item<'_>) -> bool {
    let (x, y): (&Value, &Value) = (&a.value, &b.value);
    std::ptr::eq(x, y) || (!x.is_object() && !x.is_array() && values_equal(x, y))
}

fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || matches!((x.as_f64(), y.as_f64()), (Some(x), Some(y)) if x == y)
        }
        _ => a == b,
    }
}

/// The resource type and id a literal reference points to: `Type/id`, `Type/id/_history/v`, or
/// an absolute URL ending so. `None` for contained (`#x`), `urn:` and other references.
pub fn reference_target<'r>(defs: &Definitions, reference: &'r str) -> Option<(&'r str, &'r str)> {
    if reference.starts_with('#') || reference.starts_with("urn:") || reference.contains('?') {
        return None;
    }
    let mut segments = reference.rsplit('/');
    let mut last = segments.next()?;
    let mut prev = segments.next()?;
    if prev == "_history" {
        last = segments.next()?;
        prev = segments.next()?;
    }
    let valid_id = crate::resource::is_valid_id(last);
    (valid_id && defs.is_resource_type(prev)).then_some((prev, last))
}
