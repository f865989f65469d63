//! The official R4 definitions, compacted at build time (`build.rs`) and indexed once per process
//! for the validator and the CapabilityStatement. Nothing here reads files or the network.

pub mod compact;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::OnceLock;

use regex::Regex;

use compact::{CompactDefinitions, CompactElement, CompactSearchParam};

static COMPACT_JSON: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/r4-definitions.json"));

/// What kind of type a StructureDefinition defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeKind {
    Primitive,
    Complex,
    Resource,
}

/// One element of a type, below the type's root (`name.given`, `value[x]`).
#[derive(Debug)]
pub struct ElementDef {
    pub path: String,
    pub min: u32,
    pub max: Option<u32>,
    pub types: Vec<String>,
    pub targets: Vec<String>,
    pub content_ref: Option<String>,
    pub required_binding: Option<String>,
    /// True when the element's children are defined inline (BackboneElement and friends).
    pub has_inline_children: bool,
    /// Marked `isSummary` in the base definition (kept by `_summary=true`).
    pub is_summary: bool,
}

impl ElementDef {
    pub fn is_repeating(&self) -> bool {
        self.max != Some(1) && self.max != Some(0)
    }

    pub fn is_choice(&self) -> bool {
        self.path.ends_with("[x]")
    }

    /// Last path segment without `[x]`: the JSON name (or name stem for a choice).
    pub fn name(&self) -> &str {
        let last = self.path.rsplit('.').next().unwrap_or(&self.path);
        last.strip_suffix("[x]").unwrap_or(last)
    }
}

/// A primitive, complex data type or resource with its elements indexed for JSON lookups.
#[derive(Debug)]
pub struct TypeDef {
    pub name: String,
    pub kind: TypeKind,
    pub is_abstract: bool,
    pub base: Option<String>,
    /// Anchored lexical regex for primitive values.
    pub regex: Option<Regex>,
    pub elements: Vec<ElementDef>,
    /// (parent path, JSON property name) -> (element index, concrete type code).
    properties: HashMap<(String, String), (usize, String)>,
    /// parent path -> indexes of its direct child elements.
    children: HashMap<String, Vec<usize>>,
}

impl TypeDef {
    /// Resolves a JSON property under `parent` (`""` for the type root), including choice names
    /// such as `valueQuantity`, to its element and the concrete type it selects.
    pub fn property(&self, parent: &str, json_name: &str) -> Option<(&ElementDef, &str)> {
        let (idx, ty) = self
            .properties
            .get(&(parent.to_string(), json_name.to_string()))?;
        Some((&self.elements[*idx], ty.as_str()))
    }

    pub fn children(&self, parent: &str) -> impl Iterator<Item = &ElementDef> {
        self.children
            .get(parent)
            .into_iter()
            .flatten()
            .map(|i| &self.elements[*i])
    }

    pub fn element(&self, path: &str) -> Option<&ElementDef> {
        self.elements.iter().find(|e| e.path == path)
    }
}

/// A standard SearchParameter (used by the CapabilityStatement and by search).
#[derive(Debug, Clone)]
pub struct SearchParamDef {
    pub code: String,
    pub param_type: String,
    pub base: Vec<String>,
    pub expression: Option<String>,
    pub url: String,
    /// Resource types a reference parameter may point to (`SearchParameter.target`).
    pub targets: Vec<String>,
    /// The components of a composite parameter, in order.
    pub components: Vec<SearchParamComponent>,
}

/// One component of a composite SearchParameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchParamComponent {
    /// Canonical URL of the SearchParameter that defines the component's type.
    pub definition: String,
    /// Evaluated relative to each item the composite's own expression yields.
    pub expression: String,
}

/// The indexed R4 definitions.
#[derive(Debug)]
pub struct Definitions {
    pub fhir_version: String,
    types: HashMap<String, TypeDef>,
    value_sets: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    search_params: Vec<SearchParamDef>,
    resource_types: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DefinitionsError {
    #[error("embedded definitions are corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("invalid regex for primitive {ty}: {source}")]
    Regex { ty: String, source: regex::Error },
}

static R4: OnceLock<Result<Definitions, String>> = OnceLock::new();

impl Definitions {
    /// The process-wide R4 definitions, parsed on first use (a few milliseconds).
    pub fn r4() -> Result<&'static Definitions, String> {
        R4.get_or_init(|| Definitions::load().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }

    fn load() -> Result<Definitions, DefinitionsError> {
        let compact: CompactDefinitions = serde_json::from_slice(COMPACT_JSON)?;
        let mut types = HashMap::with_capacity(compact.types.len());
        for (name, ty) in compact.types {
            let regex = match &ty.regex {
                Some(r) => Some(Regex::new(&format!("^(?:{})$", java_classes(r))).map_err(
                    |source| DefinitionsError::Regex {
                        ty: name.clone(),
                        source,
                    },
                )?),
                None => None,
            };
            let kind = match ty.kind.as_str() {
                "primitive-type" => TypeKind::Primitive,
                "resource" => TypeKind::Resource,
                _ => TypeKind::Complex,
            };
            let def = index_type(
                name.clone(),
                kind,
                ty.is_abstract,
                ty.base,
                regex,
                ty.elements,
            );
            types.insert(name, def);
        }
        let mut resource_types: Vec<String> = types
            .values()
            .filter(|t| t.kind == TypeKind::Resource && !t.is_abstract)
            .map(|t| t.name.clone())
            .collect();
        resource_types.sort();
        let search_params = compact
            .search_params
            .into_iter()
            .map(search_param)
            .collect();
        Ok(Definitions {
            fhir_version: compact.fhir_version,
            types,
            value_sets: compact.value_sets,
            search_params,
            resource_types,
        })
    }

    pub fn type_def(&self, name: &str) -> Option<&TypeDef> {
        self.types.get(name)
    }

    /// Concrete (non-abstract) resource types, sorted.
    pub fn resource_types(&self) -> &[String] {
        &self.resource_types
    }

    pub fn is_resource_type(&self, name: &str) -> bool {
        self.resource_types
            .binary_search_by(|t| t.as_str().cmp(name))
            .is_ok()
    }

    /// Codes of an enumerable required value set, by system.
    pub fn value_set(&self, url: &str) -> Option<&BTreeMap<String, BTreeSet<String>>> {
        self.value_sets.get(url)
    }

    /// Search parameters that apply to a resource type (including those on `Resource`/`DomainResource`).
    pub fn search_params_for<'a>(
        &'a self,
        resource_type: &'a str,
    ) -> impl Iterator<Item = &'a SearchParamDef> + 'a {
        self.search_params.iter().filter(move |p| {
            p.base
                .iter()
                .any(|b| b == resource_type || b == "Resource" || b == "DomainResource")
        })
    }

    pub fn search_params(&self) -> &[SearchParamDef] {
        &self.search_params
    }

    /// The search parameter with this canonical URL (composite components name theirs so).
    pub fn search_param_by_url(&self, url: &str) -> Option<&SearchParamDef> {
        self.search_params.iter().find(|p| p.url == url)
    }

    /// The first parameter named `code` that applies to `resource_type`.
    pub fn search_param(&self, resource_type: &str, code: &str) -> Option<&SearchParamDef> {
        self.search_params.iter().find(|p| {
            p.code == code
                && p.base
                    .iter()
                    .any(|b| b == resource_type || b == "Resource" || b == "DomainResource")
        })
    }
}

fn search_param(p: CompactSearchParam) -> SearchParamDef {
    SearchParamDef {
        code: p.code,
        param_type: p.param_type,
        base: p.base,
        expression: p.expression,
        url: p.url,
        targets: p.targets,
        components: p
            .components
            .into_iter()
            .map(|(definition, expression)| SearchParamComponent {
                definition,
                expression,
            })
            .collect(),
    }
}

fn index_type(
    name: String,
    kind: TypeKind,
    is_abstract: bool,
    base: Option<String>,
    regex: Option<Regex>,
    compact: Vec<CompactElement>,
) -> TypeDef {
    let mut elements: Vec<ElementDef> = compact
        .into_iter()
        .map(|e| ElementDef {
            path: e.path,
            min: e.min,
            max: e.max,
            types: e.types,
            targets: e.targets,
            content_ref: e.content_ref,
            required_binding: e.required_binding,
            has_inline_children: false,
            is_summary: e.is_summary,
        })
        .collect();
    let mut properties = HashMap::new();
    let mut children: HashMap<String, Vec<usize>> = HashMap::new();
    for (idx, el) in elements.iter().enumerate() {
        let (parent, _) = el.path.rsplit_once('.').unwrap_or(("", &el.path));
        children.entry(parent.to_string()).or_default().push(idx);
        if el.is_choice() {
            for ty in &el.types {
                let json = format!("{}{}", el.name(), capitalize(ty));
                properties.insert((parent.to_string(), json), (idx, ty.clone()));
            }
        } else {
            let ty = el.types.first().cloned().unwrap_or_default();
            properties.insert((parent.to_string(), el.name().to_string()), (idx, ty));
        }
    }
    for el in &mut elements {
        el.has_inline_children = children.contains_key(&el.path);
    }
    TypeDef {
        name,
        kind,
        is_abstract,
        base,
        regex,
        elements,
        properties,
        children,
    }
}

/// The official regexes are written for Java, where `\s`, `\S` and `\d` are ASCII classes;
/// Rust's are Unicode-aware (a no-break space is `\s`), so spell the Java meaning out.
fn java_classes(regex: &str) -> String {
    regex
        .replace("\\S", "[^ \\t\\n\\x0B\\f\\r]")
        .replace("\\s", "[ \\t\\n\\x0B\\f\\r]")
        .replace("\\d", "[0-9]")
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_r4_resource_type_is_known() {
        let defs = Definitions::r4().unwrap();
        // 146 from R4's resource-types code system, plus SubscriptionStatus, which the vendored
        // profiles-resources.json defines as a concrete resource.
        assert_eq!(defs.resource_types().len(), 147);
        assert!(defs.is_resource_type("Patient"));
        assert!(defs.is_resource_type("Appointment"));
        assert!(
            !defs.is_resource_type("DomainResource"),
            "abstract types are not resource types"
        );
        assert!(!defs.is_resource_type("HumanName"));
    }

    #[test]
    fn choice_properties_resolve_to_their_concrete_type() {
        let obs = Definitions::r4().unwrap().type_def("Observation").unwrap();
        let (el, ty) = obs.property("", "valueQuantity").unwrap();
        assert_eq!((el.path.as_str(), ty), ("value[x]", "Quantity"));
        assert!(obs.property("", "valueFoo").is_none());
        assert!(obs.property("", "value").is_none());
    }

    #[test]
    fn primitive_regexes_come_from_the_definitions() {
        let date = Definitions::r4().unwrap().type_def("date").unwrap();
        let re = date.regex.as_ref().unwrap();
        assert!(re.is_match("2024-02-29") && re.is_match("2024"));
        assert!(!re.is_match("2024-13-01") && !re.is_match("24-01-01"));
    }

    #[test]
    fn string_regex_has_java_semantics_for_whitespace_classes() {
        let string = Definitions::r4().unwrap().type_def("string").unwrap();
        let re = string.regex.as_ref().unwrap();
        assert!(re.is_match("no-break\u{a0}space"), "U+00A0 is \\S in Java");
        assert!(re.is_match("tab\tand newline\n"));
    }

    #[test]
    fn backbone_and_content_reference_elements_are_indexed() {
        let q = Definitions::r4()
            .unwrap()
            .type_def("Questionnaire")
            .unwrap();
        assert!(q.element("item").unwrap().has_inline_children);
        assert_eq!(
            q.element("item.item").unwrap().content_ref.as_deref(),
            Some("item")
        );
    }

    #[test]
    fn required_value_sets_are_enumerated() {
        let defs = Definitions::r4().unwrap();
        let gender = defs
            .value_set("http://hl7.org/fhir/ValueSet/administrative-gender")
            .unwrap();
        let codes: Vec<_> = gender.values().flatten().map(String::as_str).collect();
        assert_eq!(codes, ["female", "male", "other", "unknown"]);
        assert_eq!(defs.search_params().len(), 1378);
    }
}
