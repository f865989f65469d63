//! HL7's FHIR R4 JSON schema as an independent oracle for the validator: every unmutated
//! Synthea resource in a fixed sample passes `$validate`, and no mutation the official schema
//! rejects (unknown property, wrong JSON type, malformed date, array/single mix-up, bad `code`,
//! missing required element) is accepted by Careplane (`tests/oracle/schema_oracle.py`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_careplane");

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn shared_dir() -> PathBuf {
    std::env::var("CAREPLANE_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace().join("../shared"))
}

/// The running binary on ephemeral ports; killed on drop so a failed assertion cleans up.
struct Server {
    child: Child,
    api: String,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let mut child = Command::new(BIN)
            .current_dir(dir)
            .env_clear()
            .env("CAREPLANE_LISTEN_ADDR", "127.0.0.1:0")
            .env("CAREPLANE_ADMIN_ADDR", "127.0.0.1:0")
            .env("CAREPLANE_LOG_FORMAT", "json")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        for line in stderr.lines() {
            let line = line.unwrap();
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if event["fields"]["message"] == "careplane listening" {
                let api = event["fields"]["api"].as_str().unwrap().to_string();
                return Server { child, api };
            }
        }
        panic!("careplane exited before listening: {:?}", child.wait());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_official_json_schema_rejects_nothing_careplane_accepts() {
    let python = workspace().join("target/clients-venv/bin/python");
    assert!(
        python.exists(),
        "run `make test-deps` to create the client venv"
    );
    let shared = shared_dir();
    let schema = shared.join("fhir/r4/fhir.schema.json");
    assert!(schema.exists(), "{} missing", schema.display());
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
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
