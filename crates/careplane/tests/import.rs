//! `careplane import` of the 25 Synthea patients on both backends: counts per type checked
//! against a count taken straight from the raw bundles, and a second run creates nothing new.
//! The imported data then answers the search known-answer cases (issue 4), whose expected
//! results come from an independent Python implementation over the raw bundles
//! (`tools/synthea_search_answers.py` → `tests/fixtures/synthea_search_answers.json`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use careplane_testdb::TestDatabase;
use sqlx::Row;

fn synthea_dir() -> std::path::PathBuf {
    common::shared_dir().join("data/synthea-r4")
}

/// Entries per resource type, read from the raw `.json.gz` bundles (independent of the server).
fn expected_counts(dir: &Path) -> BTreeMap<String, i64> {
    let mut counts = BTreeMap::new();
    for file in std::fs::read_dir(dir).unwrap() {
        let path = file.unwrap().path();
        if !path.to_string_lossy().ends_with(".json.gz") {
            continue;
        }
        let mut text = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        let bundle: serde_json::Value = serde_json::from_str(&text).unwrap();
        for entry in bundle["entry"].as_array().unwrap() {
            let rt = entry["resource"]["resourceType"].as_str().unwrap();
            *counts.entry(rt.to_string()).or_default() += 1;
        }
    }
    counts
}

fn import(database_url: &str, extra: &[&str]) -> std::process::Output {
    Command::new(common::BIN)
        .arg("import")
        .args(extra)
        .env("CAREPLANE_DATABASE_URL", database_url)
        .env("CAREPLANE_LOG", "warn")
        .output()
        .unwrap()
}

/// Live resources per type and the highest version, straight from the database.
async fn stored_counts(url: &str) -> (BTreeMap<String, i64>, i64) {
    let sql = "SELECT resource_type, COUNT(*) AS n, MAX(version) AS v FROM resources \
               WHERE NOT deleted GROUP BY resource_type";
    let rows: Vec<(String, i64, i64)> = if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let rows = sqlx::query(sql).fetch_all(&pool).await.unwrap();
        rows.iter()
            .map(|r| (r.get("resource_type"), r.get("n"), r.get("v")))
            .collect()
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let rows = sqlx::query(sql).fetch_all(&pool).await.unwrap();
        let out = rows
            .iter()
            .map(|r| (r.get("resource_type"), r.get("n"), r.get("v")))
            .collect();
        pool.close().await;
        out
    };
    let max_version = rows.iter().map(|r| r.2).max().unwrap_or(0);
    (
        rows.into_iter().map(|(rt, n, _)| (rt, n)).collect(),
        max_version,
    )
}

async fn imports_every_synthea_patient(url: &str) {
    let dir = synthea_dir();
    let expected = expected_counts(&dir);
    // Organizations, Practitioners… recur across patients under the same generator id.
    let distinct_shared = [
        "Organization",
        "Practitioner",
        "PractitionerRole",
        "Location",
    ];
    let out = import(url, &[dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("imported 66446 resources from 25 bundles in 25 files"),
        "{stdout}"
    );
    let (stored, max_version) = stored_counts(url).await;
    for (rt, n) in &expected {
        if distinct_shared.contains(&rt.as_str()) {
            assert!(
                stored[rt] <= *n && stored[rt] > 0,
                "{rt}: {} of {n}",
                stored[rt]
            );
        } else {
            assert_eq!(stored.get(rt), Some(n), "{rt}");
        }
    }
    assert_eq!(stored.len(), expected.len(), "no other types appear");
    assert_eq!(max_version, 1, "shared resources were not rewritten");

    // Resumable: a second run (as after an interruption) adds no resources and no versions.
    let again = import(url, &[dir.to_str().unwrap()]);
    assert!(again.status.success());
    assert_eq!(stored_counts(url).await, (stored, 1));

    search_known_answers(url).await;
}

/// Every case of the fixture: the same total, the same matches, the same includes.
async fn search_known_answers(url: &str) {
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/synthea_search_answers.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let server = common::Server::start(
        cwd.path(),
        &[
            ("CAREPLANE_DATABASE_URL", url),
            ("CAREPLANE_MAX_PAGE_SIZE", "5000"),
        ],
    );
    let client = reqwest::Client::new();
    let mut failures = Vec::new();
    let cases = fixture["cases"].as_array().unwrap();
    for case in cases {
        let query = case["query"].as_str().unwrap();
        let url = format!(
            "http://{}/fhir/{query}&_total=accurate&_count=5000",
            server.api
        );
        let response = client.get(&url).send().await.unwrap();
        let status = response.status();
        let bundle: serde_json::Value = response.json().await.unwrap();
        if status != 200 {
            failures.push(format!("{query}: {status} {bundle}"));
            continue;
        }
        let keys = |mode: &str| -> Vec<String> {
            let mut keys: Vec<String> = bundle["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["search"]["mode"] == mode)
                .map(|e| {
                    format!(
                        "{}/{}",
                        e["resource"]["resourceType"].as_str().unwrap(),
                        e["resource"]["id"].as_str().unwrap()
                    )
                })
                .collect();
            keys.sort();
            keys
        };
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .map(|s| s.as_str().unwrap().to_string())
                .collect()
        };
        if bundle["total"] != case["total"] {
            failures.push(format!(
                "{query}: total {} != {}",
                bundle["total"], case["total"]
            ));
        } else if keys("match") != strings(&case["ids"]) {
            failures.push(format!("{query}: different matches"));
        } else if case.get("included").is_some() && keys("include") != strings(&case["included"]) {
            failures.push(format!("{query}: different includes"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} known-answer cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthea_imports_into_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("import.db").display());
    imports_every_synthea_patient(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthea_imports_into_postgres() {
    let db = TestDatabase::from_template("import_empty", |_| async { Ok(()) })
        .await
        .unwrap();
    imports_every_synthea_patient(db.url()).await;
}

#[test]
fn failures_are_listed_and_the_exit_code_is_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bad.db").display());
    let good = dir.path().join("good.json");
    std::fs::write(
        &good,
        r#"{"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient"}}]}"#,
    )
    .unwrap();
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{ not json").unwrap();
    let invalid = dir.path().join("invalid.ndjson");
    std::fs::write(
        &invalid,
        "{\"resourceType\": \"Patient\", \"gender\": \"robot\"}\n",
    )
    .unwrap();
    let out = import(&url, &[dir.path().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.contains("imported 1 resources from 1 bundles in 3 files"),
        "{stdout}"
    );
    assert!(stdout.contains("2 failures"), "{stdout}");
    assert!(stdout.contains("broken.json: not JSON"), "{stdout}");
    assert!(
        stdout.contains("invalid.ndjson (bundle 1): 400"),
        "{stdout}"
    );
}

/// `careplane import … | head -n1` closes the pipe before the summary is written: the import's
/// own exit status must come out, not a panic (exit 101) from printing to a closed stdout.
#[test]
fn a_closed_stdout_does_not_turn_the_summary_into_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("pipe.db").display());
    let data = dir.path().join("one.ndjson");
    std::fs::write(
        &data,
        "{\"resourceType\": \"Patient\", \"id\": \"piped\"}\n",
    )
    .unwrap();
    let mut child = Command::new(common::BIN)
        .args(["import", "--database-url", &url, data.to_str().unwrap()])
        .env("CAREPLANE_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
