//! Compacts the vendored official R4 definitions (`data/r4/`, ~40 MB of JSON) into the small
//! index the validator needs, so that a replica never parses the full StructureDefinitions at start.
//! Reads local files only; never downloads.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

#[path = "src/definitions/compact.rs"]
mod compact;

use compact::{CompactDefinitions, CompactElement, CompactSearchParam, CompactType};

const FHIR_TYPE_EXT: &str = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type";
const REGEX_EXT: &str = "http://hl7.org/fhir/StructureDefinition/regex";

fn main() {
    let data = Path::new("data/r4");
    for file in [
        "profiles-resources.json.gz",
        "profiles-types.json.gz",
        "valuesets.json.gz",
        "v3-codesystems.json.gz",
        "search-parameters.json.gz",
        "compartmentdefinition-patient.json",
        "version.info",
    ] {
        println!("cargo:rerun-if-changed=data/r4/{file}");
    }
    println!("cargo:rerun-if-changed=src/definitions/compact.rs");

    let mut types = BTreeMap::new();
    for file in ["profiles-types.json.gz", "profiles-resources.json.gz"] {
        for sd in bundle_resources(&read_json(&data.join(file)), "StructureDefinition") {
            if let Some((name, ty)) = compact_type(sd) {
                types.insert(name, ty);
            }
        }
    }

    let mut code_systems = BTreeMap::new();
    let mut value_sets = BTreeMap::new();
    for file in ["valuesets.json.gz", "v3-codesystems.json.gz"] {
        let bundle = read_json(&data.join(file));
        for cs in bundle_resources(&bundle, "CodeSystem") {
            if let (Some(url), Some("complete")) = (str_at(cs, "url"), str_at(cs, "content")) {
                let mut codes = BTreeSet::new();
                collect_concepts(cs.get("concept"), &mut codes);
                code_systems.insert(url.to_string(), codes);
            }
        }
        for vs in bundle_resources(&bundle, "ValueSet") {
            if let Some(url) = str_at(vs, "url") {
                value_sets.insert(url.to_string(), vs.clone());
            }
        }
    }
    let mut required = BTreeSet::new();
    for ty in types.values() {
        for el in &ty.elements {
            if let Some(vs) = &el.required_binding {
                required.insert(vs.clone());
            }
        }
    }
    let mut expansions = BTreeMap::new();
    for url in required {
        if let Some(expansion) = expand(&url, &value_sets, &code_systems, 0) {
            expansions.insert(url, expansion);
        }
    }
    // Drop bindings we cannot enumerate: the validator only checks what it can check exactly.
    for ty in types.values_mut() {
        for el in &mut ty.elements {
            if el
                .required_binding
                .as_ref()
                .is_some_and(|u| !expansions.contains_key(u))
            {
                el.required_binding = None;
            }
        }
    }

    let search_params = bundle_resources(
        &read_json(&data.join("search-parameters.json.gz")),
        "SearchParameter",
    )
    .into_iter()
    .filter_map(compact_search_param)
    .collect();

    let version = std::fs::read_to_string(data.join("version.info")).unwrap_or_default();
    let version = version
        .lines()
        .find_map(|l| l.strip_prefix("version="))
        .unwrap_or("4.0.1")
        .trim()
        .to_string();

    let compact = CompactDefinitions {
        fhir_version: version,
        types,
        value_sets: expansions,
        search_params,
    };
    write_out("r4-definitions.json", &compact);
}

fn write_out<T: Serialize>(name: &str, value: &T) {
    let out = std::env::var("OUT_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_default();
    let text = serde_json::to_vec(value).unwrap_or_default();
    if let Err(e) = std::fs::write(out.join(name), text) {
        panic!("cannot write {name}: {e}");
    }
}

fn read_json(path: &Path) -> Value {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let text = if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .unwrap_or_else(|e| panic!("cannot gunzip {}: {e}", path.display()));
        out
    } else {
        bytes
    };
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("bad JSON in {}: {e}", path.display()))
}

fn bundle_resources<'a>(bundle: &'a Value, resource_type: &str) -> Vec<&'a Value> {
    bundle
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("resource"))
        .filter(|r| str_at(r, "resourceType") == Some(resource_type))
        .collect()
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn ext_value<'a>(v: &'a Value, url: &str, key: &str) -> Option<&'a str> {
    v.get("extension")?
        .as_array()?
        .iter()
        .find(|e| str_at(e, "url") == Some(url))
        .and_then(|e| str_at(e, key))
}

fn compact_type(sd: &Value) -> Option<(String, CompactType)> {
    // Keep specialisations and the roots (Element, Resource, which have no base); profiles that
    // only constrain a type (SimpleQuantity, vitalsigns...) and logical models are not types.
    let is_root = sd.get("baseDefinition").is_none();
    if str_at(sd, "kind") == Some("logical")
        || !(is_root || str_at(sd, "derivation") == Some("specialization"))
    {
        return None;
    }
    let name = str_at(sd, "type")?.to_string();
    let kind = str_at(sd, "kind")?.to_string();
    let is_abstract = sd.get("abstract").and_then(Value::as_bool).unwrap_or(false);
    let base = str_at(sd, "baseDefinition")
        .and_then(|b| b.rsplit('/').next())
        .map(str::to_string);
    let mut regex = None;
    let mut elements = Vec::new();
    for el in sd.get("snapshot")?.get("element")?.as_array()? {
        let path = str_at(el, "path")?;
        let Some(rel) = path.strip_prefix(&name).and_then(|p| p.strip_prefix('.')) else {
            continue;
        };
        let mut type_codes = Vec::new();
        let mut targets = Vec::new();
        for t in el
            .get("type")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let code = str_at(t, "code").unwrap_or_default();
            let code = if code.starts_with("http://hl7.org/fhirpath/System.") {
                ext_value(t, FHIR_TYPE_EXT, "valueUrl").unwrap_or("string")
            } else {
                code
            };
            if kind == "primitive-type" && rel == "value" {
                regex = ext_value(t, REGEX_EXT, "valueString").map(str::to_string);
            }
            type_codes.push(code.to_string());
            for p in t
                .get("targetProfile")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(target) = p.as_str().and_then(|p| p.rsplit('/').next()) {
                    targets.push(target.to_string());
                }
            }
        }
        let binding = el.get("binding");
        let required_binding = binding
            .filter(|b| str_at(b, "strength") == Some("required"))
            .and_then(|b| str_at(b, "valueSet"))
            .map(|vs| vs.split('|').next().unwrap_or(vs).to_string());
        elements.push(CompactElement {
            path: rel.to_string(),
            min: el.get("min").and_then(Value::as_u64).unwrap_or(0) as u32,
            max: match str_at(el, "max") {
                Some("*") | None => None,
                Some(n) => n.parse().ok(),
            },
            types: type_codes,
            targets,
            content_ref: str_at(el, "contentReference")
                .and_then(|r| r.strip_prefix('#'))
                .and_then(|r| r.strip_prefix(&name))
                .map(|r| r.trim_start_matches('.').to_string()),
            required_binding,
            is_summary: el
                .get("isSummary")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        });
    }
    Some((
        name,
        CompactType {
            kind,
            is_abstract,
            base,
            regex,
            elements,
        },
    ))
}

fn collect_concepts(concepts: Option<&Value>, into: &mut BTreeSet<String>) {
    for c in concepts.and_then(Value::as_array).into_iter().flatten() {
        if let Some(code) = str_at(c, "code") {
            into.insert(code.to_string());
        }
        collect_concepts(c.get("concept"), into);
    }
}

/// Expands a value set to `system -> codes` when it is enumerable from the core definitions alone
/// (explicit concepts, whole complete code systems, imported value sets; no filters or excludes).
fn expand(
    url: &str,
    value_sets: &BTreeMap<String, Value>,
    code_systems: &BTreeMap<String, BTreeSet<String>>,
    depth: u32,
) -> Option<BTreeMap<String, BTreeSet<String>>> {
    if depth > 8 {
        return None;
    }
    let vs = value_sets.get(url)?;
    let compose = vs.get("compose")?;
    if compose.get("exclude").is_some() {
        return None;
    }
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for inc in compose.get("include")?.as_array()? {
        if inc.get("filter").is_some() {
            return None;
        }
        for imported in inc
            .get("valueSet")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let imported = imported.as_str()?.split('|').next()?;
            for (system, codes) in expand(imported, value_sets, code_systems, depth + 1)? {
                out.entry(system).or_default().extend(codes);
            }
        }
        let Some(system) = str_at(inc, "system") else {
            continue;
        };
        let codes = out.entry(system.to_string()).or_default();
        if let Some(concepts) = inc.get("concept").and_then(Value::as_array) {
            codes.extend(
                concepts
                    .iter()
                    .filter_map(|c| str_at(c, "code"))
                    .map(str::to_string),
            );
        } else {
            codes.extend(code_systems.get(system)?.iter().cloned());
        }
    }
    (!out.is_empty()).then_some(out)
}

fn compact_search_param(sp: &Value) -> Option<CompactSearchParam> {
    Some(CompactSearchParam {
        code: str_at(sp, "code")?.to_string(),
        param_type: str_at(sp, "type")?.to_string(),
        base: sp
            .get("base")?
            .as_array()?
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        expression: str_at(sp, "expression").map(str::to_string),
        url: str_at(sp, "url")?.to_string(),
        targets: sp
            .get("target")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        components: sp
            .get("component")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| {
                Some((
                    str_at(c, "definition")?.to_string(),
                    str_at(c, "expression")?.to_string(),
                ))
            })
            .collect(),
    })
}
