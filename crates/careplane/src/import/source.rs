//! What the importer reads: files and directories of FHIR Bundles (`.json`, `.json.gz`) and
//! NDJSON (`.ndjson`, `.ndjson.gz`), turned into transaction/batch Bundles for the same code
//! path the API uses.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// Resources per transaction when loading NDJSON.
pub const NDJSON_CHUNK: usize = 500;

/// Every importable file under `paths`, in a stable (sorted) order.
pub fn collect_files(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut stack = vec![path.clone()];
            while let Some(dir) = stack.pop() {
                for entry in std::fs::read_dir(&dir)? {
                    let entry = entry?.path();
                    if entry.is_dir() {
                        stack.push(entry);
                    } else if format_of(&entry).is_some() {
                        files.push(entry);
                    }
                }
            }
        } else if path.exists() {
            files.push(path.clone());
        } else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} does not exist", path.display()),
            ));
        }
    }
    files.sort();
    Ok(files)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Ndjson,
}

pub fn format_of(path: &Path) -> Option<Format> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    if name.ends_with(".ndjson") {
        Some(Format::Ndjson)
    } else if name.ends_with(".json") {
        Some(Format::Json)
    } else {
        None
    }
}

fn open(path: &Path) -> std::io::Result<Box<dyn Read>> {
    let file = std::fs::File::open(path)?;
    let gz = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    Ok(if gz {
        Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file)))
    } else {
        Box::new(BufReader::new(file))
    })
}

/// The Bundles a file yields: a Bundle file as is, NDJSON in chunks of [`NDJSON_CHUNK`].
pub fn bundles(path: &Path) -> Result<Vec<Value>, String> {
    let format = format_of(path).ok_or("not a .json/.ndjson file")?;
    let reader = open(path).map_err(|e| e.to_string())?;
    match format {
        Format::Json => {
            // Whole file first: serde_json parses a slice many times faster than a reader
            // (which it consumes a byte at a time).
            let mut text = Vec::new();
            let mut reader = reader;
            reader.read_to_end(&mut text).map_err(|e| e.to_string())?;
            let value: Value =
                serde_json::from_slice(&text).map_err(|e| format!("not JSON: {e}"))?;
            match value.get("resourceType").and_then(Value::as_str) {
                Some("Bundle") => Ok(vec![value]),
                Some(_) => Ok(vec![transaction_of(vec![value])]),
                None => Err("not a FHIR resource (no resourceType)".into()),
            }
        }
        Format::Ndjson => {
            let mut chunks = Vec::new();
            let mut chunk = Vec::with_capacity(NDJSON_CHUNK);
            for (n, line) in BufReader::new(reader).lines().enumerate() {
                let line = line.map_err(|e| e.to_string())?;
                if line.trim().is_empty() {
                    continue;
                }
                let resource: Value = serde_json::from_str(&line)
                    .map_err(|e| format!("line {}: not JSON: {e}", n + 1))?;
                chunk.push(resource);
                if chunk.len() == NDJSON_CHUNK {
                    chunks.push(transaction_of(std::mem::take(&mut chunk)));
                }
            }
            if !chunk.is_empty() {
                chunks.push(transaction_of(chunk));
            }
            Ok(chunks)
        }
    }
}

/// A transaction that stores each resource under its own id (PUT), or creates it (POST) when
/// it has none.
pub fn transaction_of(resources: Vec<Value>) -> Value {
    let entries: Vec<Value> = resources
        .into_iter()
        .map(|resource| {
            let rt = resource["resourceType"].as_str().unwrap_or_default().to_string();
            match resource.get("id").and_then(Value::as_str).map(str::to_string) {
                Some(id) => json!({"resource": resource, "request": {"method": "PUT", "url": format!("{rt}/{id}")}}),
                None => json!({"resource": resource, "request": {"method": "POST", "url": rt}}),
            }
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// Makes re-running an import create no duplicates: a `POST` whose `fullUrl` is
/// `urn:uuid:<uuid>` becomes `PUT Type/<uuid>`, so the resource keeps the generator's id, and
/// references to the placeholder still resolve through the fullUrl. Unchanged re-imports
/// write nothing (the store skips no-op updates).
pub fn with_stable_ids(bundle: &mut Value) {
    let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) else {
        return;
    };
    for entry in entries {
        let method = entry.pointer("/request/method").and_then(Value::as_str);
        let has_condition = entry.pointer("/request/ifNoneExist").is_some();
        let uuid = entry
            .get("fullUrl")
            .and_then(Value::as_str)
            .and_then(|u| u.strip_prefix("urn:uuid:"))
            .filter(|id| careplane_fhir::Id::parse(id).is_some())
            .map(str::to_string);
        let (Some("POST"), false, Some(id)) = (method, has_condition, uuid) else {
            continue;
        };
        let rt = entry
            .pointer("/request/url")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        entry["request"] = json!({"method": "PUT", "url": format!("{rt}/{id}")});
        if let Some(resource) = entry.get_mut("resource").and_then(Value::as_object_mut) {
            resource.insert("id".into(), Value::String(id));
        }
    }
}

/// Resource counts by type of a Bundle's entries.
pub fn count_by_type(bundle: &Value, counts: &mut std::collections::BTreeMap<String, u64>) {
    for entry in bundle["entry"].as_array().into_iter().flatten() {
        if let Some(rt) = entry
            .pointer("/resource/resourceType")
            .and_then(Value::as_str)
        {
            *counts.entry(rt.to_string()).or_default() += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn placeholder_posts_become_puts_under_the_uuid() {
        let mut b = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a", "resource": {"resourceType": "Patient", "id": "x"},
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:71ebe359-bfdc-4613-8bf2-c5e300945f0a", "resource": {"resourceType": "Patient"},
             "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=a|b"}},
            {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}
        ]});
        with_stable_ids(&mut b);
        assert_eq!(b["entry"][0]["request"]["method"], "PUT");
        assert_eq!(
            b["entry"][0]["request"]["url"],
            "Patient/61ebe359-bfdc-4613-8bf2-c5e300945f0a"
        );
        assert_eq!(
            b["entry"][0]["resource"]["id"],
            "61ebe359-bfdc-4613-8bf2-c5e300945f0a"
        );
        assert_eq!(
            b["entry"][1]["request"]["method"], "POST",
            "conditional creates stay"
        );
        assert_eq!(
            b["entry"][2]["request"]["method"], "POST",
            "no placeholder, no id"
        );
    }

    #[test]
    fn ndjson_is_chunked_into_transactions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Patient.ndjson");
        let lines: Vec<String> = (0..NDJSON_CHUNK + 3)
            .map(|i| json!({"resourceType": "Patient", "id": format!("p{i}")}).to_string())
            .collect();
        std::fs::write(&path, lines.join("\n")).unwrap();
        let bundles = bundles(&path).unwrap();
        assert_eq!(bundles.len(), 2);
        assert_eq!(bundles[1]["entry"].as_array().unwrap().len(), 3);
        assert_eq!(bundles[0]["entry"][0]["request"]["url"], "Patient/p0");
    }

    #[test]
    fn only_fhir_file_names_are_collected() {
        assert_eq!(format_of(Path::new("a/b.json.gz")), Some(Format::Json));
        assert_eq!(format_of(Path::new("Obs.NDJSON")), Some(Format::Ndjson));
        assert_eq!(format_of(Path::new("notes.txt")), None);
    }
}
