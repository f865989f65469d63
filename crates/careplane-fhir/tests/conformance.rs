//! Conformance of the validator on external material nobody on the team wrote (issue 3):
//! - every official R4 example listed in `shared/conformance/r4-examples-must-accept.txt` is valid;
//! - HL7's `fhir-test-cases` structural cases get the reference validator's verdict.
//!
//! The examples come from the npm package `hl7.fhir.r4.examples@4.0.1`, fetched and unpacked
//! into `target/conformance/package` by `make conformance-data` (the test command runs it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use careplane_fhir::{validate::validate, Definitions};
use serde_json::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn shared_conformance() -> PathBuf {
    let dir = std::env::var("CAREPLANE_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace().join("../shared"))
        .join("conformance");
    assert!(
        dir.is_dir(),
        "conformance material missing at {}",
        dir.display()
    );
    dir
}

fn examples_dir() -> PathBuf {
    let dir = std::env::var("CAREPLANE_R4_EXAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace().join("target/conformance/package"));
    assert!(
        dir.is_dir(),
        "R4 examples missing at {}: run `make conformance-data`",
        dir.display()
    );
    dir
}

fn write_report(name: &str, text: &str) {
    let out = workspace().join("target/conformance");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join(name), text).unwrap();
}

#[test]
fn every_must_accept_official_example_is_valid() {
    let defs = Definitions::r4().unwrap();
    let list =
        std::fs::read_to_string(shared_conformance().join("r4-examples-must-accept.txt")).unwrap();
    let dir = examples_dir();
    let names: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut report = String::new();
    let mut rejected = 0;
    for name in &names {
        let text = std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let resource: Value =
            serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let errors: Vec<_> = validate(defs, &resource)
            .into_iter()
            .filter(|i| i.is_error())
            .collect();
        if !errors.is_empty() {
            rejected += 1;
            for e in errors.iter().take(5) {
                let _ = writeln!(
                    report,
                    "{name}\t{}\t{}",
                    e.expression.as_deref().unwrap_or("-"),
                    e.diagnostics
                );
            }
        }
    }
    let summary = format!(
        "accepted {}/{} official R4 examples\n",
        names.len() - rejected,
        names.len()
    );
    write_report("examples-report.txt", &(summary.clone() + &report));
    eprint!("{summary}");
    assert_eq!(names.len(), 5217, "the must-accept list changed");
    assert_eq!(
        rejected,
        0,
        "{summary}first rejections:\n{}",
        report.lines().take(40).collect::<Vec<_>>().join("\n")
    );
}

const STRUCTURAL_MODULES: &[&str] = &[
    "general",
    "fmt",
    "json5",
    "invariants",
    "xhtml",
    "bundle",
    "references",
    "extensions",
];

/// Agreement with HL7's reference validator that must not regress (raise it as it improves).
const MIN_STRUCTURAL_AGREEMENT: usize = 67;

#[test]
fn fhir_test_cases_get_the_reference_verdict() {
    let defs = Definitions::r4().unwrap();
    let base = shared_conformance().join("fhir-test-cases");
    let cases = std::fs::read_to_string(base.join("cases.tsv")).unwrap();
    let (mut agree, mut total, mut other_agree, mut other_total) = (0, 0, 0, 0);
    let mut report = String::new();
    for line in cases.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let [name, file, module, expected, ..] = cols[..] else {
            continue;
        };
        let bytes = std::fs::read(base.join(file)).unwrap_or_default();
        // Strict JSON: comments, trailing commas or unquoted names fail to parse and are invalid.
        let verdict = match serde_json::from_slice::<Value>(&bytes) {
            Ok(resource) => {
                let errors: Vec<_> = validate(defs, &resource)
                    .into_iter()
                    .filter(|i| i.is_error())
                    .collect();
                if errors.is_empty() {
                    "valid".to_string()
                } else {
                    format!("invalid ({})", errors[0].diagnostics)
                }
            }
            Err(e) => format!("invalid (JSON: {e})"),
        };
        let ok = verdict.split(' ').next() == Some(expected);
        if STRUCTURAL_MODULES.contains(&module) {
            total += 1;
            agree += usize::from(ok);
        } else {
            other_total += 1;
            other_agree += usize::from(ok);
        }
        let mark = if ok { "agree" } else { "DIFFER" };
        let _ = writeln!(
            report,
            "{mark}\t{module}\t{name}\texpected {expected}\tgot {verdict}"
        );
    }
    let summary = format!(
        "structural cases agreeing: {agree}/{total}; other modules (not chased): {other_agree}/{other_total}\n"
    );
    write_report("fhir-test-cases-report.txt", &(summary.clone() + &report));
    eprint!("{summary}");
    assert!(agree >= MIN_STRUCTURAL_AGREEMENT, "{summary}");
}
