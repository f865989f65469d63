//! The compact form of the official definitions that `build.rs` writes and the crate embeds.
//! Shared verbatim by the build script (`#[path]`) and the library, so both agree on the format.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct CompactDefinitions {
    pub fhir_version: String,
    /// Every base and specialised type: primitives, complex data types and resources.
    pub types: BTreeMap<String, CompactType>,
    /// Required-binding value sets that the core definitions enumerate: url -> system -> codes.
    pub value_sets: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    pub search_params: Vec<CompactSearchParam>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CompactType {
    /// `primitive-type`, `complex-type` or `resource`.
    pub kind: String,
    pub is_abstract: bool,
    pub base: Option<String>,
    /// The official lexical regex of a primitive type's value.
    pub regex: Option<String>,
    pub elements: Vec<CompactElement>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CompactElement {
    /// Path below the type root, e.g. `contact.name` or `value[x]`.
    pub path: String,
    pub min: u32,
    /// `None` means unbounded (`*`).
    pub max: Option<u32>,
    pub types: Vec<String>,
    /// Reference target type names (from `targetProfile`).
    pub targets: Vec<String>,
    /// Path (below the root) whose definition this element reuses, e.g. `item` for `Questionnaire.item.item`.
    pub content_ref: Option<String>,
    /// Canonical URL of a required binding whose codes are enumerable.
    pub required_binding: Option<String>,
    /// Marked `isSummary` in the base definition: part of `_summary=true`.
    #[serde(default)]
    pub is_summary: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CompactSearchParam {
    pub code: String,
    pub param_type: String,
    pub base: Vec<String>,
    pub expression: Option<String>,
    pub url: String,
    /// Resource types a reference parameter may point to (`SearchParameter.target`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// `(definition url, expression)` of each component of a composite parameter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<(String, String)>,
}
