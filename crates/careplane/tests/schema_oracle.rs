//! HL7's FHIR R4 JSON schema as an independent oracle for the validator: every unmutated
//! Synthea resource in a fixed sample passes `$validate`, and no mutation the official schema
//! rejects (unknown property, wrong JSON type, malformed date, array/single mix-up, bad `code`,
//! missing required element) is accepted by Careplane (`tests/oracle/schema_oracle.py`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{shared_dir, venv_python, workspace, Server};

#[test]
fn the_official_json_schema_rejects_nothing_careplane_accepts() {
    let python = venv_python();
    let shared = shared_dir();
    let schema = shared.join("fhir/r4/fhir.schema.json");
    assert!(schema.exists(), "{} missing", schema.display());
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let out = Command::new(python)
        .arg(workspace().join("tests/oracle/schema_oracle.py"))
        .arg(format!("http://{}/fhir", server.api))
        .arg(shared.join("data/synthea-r4"))
        .arg(&schema)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("oracle: ") && l.contains(" 0 missed-by-careplane")),
        "{text}"
    );
}
