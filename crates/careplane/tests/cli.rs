//! The binary as users run it (issue 3): subcommands, configuration, an SQLite file created and
//! migrated at start, probes, SIGTERM, and a real FHIR client library driving it unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{venv_python, workspace, Server, BIN};
use serde_json::Value;

fn help() -> String {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn help_lists_the_subcommands() {
    let help = help();
    for sub in [
        "serve",
        "migrate",
        "reindex",
        "contract",
        "import",
        "healthcheck",
    ] {
        assert!(help.contains(sub), "{sub} missing from --help:\n{help}");
    }
}

#[test]
fn every_configuration_variable_is_documented_and_vice_versa() {
    let help = help();
    let from_help: std::collections::BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .map(|rest| rest.split(['=', ']']).next().unwrap().to_string())
        .collect();
    assert!(
        from_help.contains("CAREPLANE_DATABASE_URL") && from_help.len() >= 10,
        "{from_help:?}"
    );
    let docs = std::fs::read_to_string(workspace().join("docs/configuration.md")).unwrap();
    let from_docs: std::collections::BTreeSet<String> = docs
        .split('`')
        .filter(|w| {
            w.starts_with("CAREPLANE_") && w.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        })
        .map(str::to_string)
        .collect();
    assert_eq!(
        from_help, from_docs,
        "docs/configuration.md and `careplane --help` disagree"
    );
}

#[test]
fn invalid_configuration_is_refused_naming_the_variable() {
    let out = Command::new(BIN)
        .env("CAREPLANE_BASE_PATH", "fhir")
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CAREPLANE_BASE_PATH"));
    let out = Command::new(BIN)
        .env("CAREPLANE_DATABASE_URL", "mysql://x")
        .arg("migrate")
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn serve_creates_and_migrates_its_sqlite_file_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    assert!(
        dir.path().join("careplane.db").exists(),
        "default sqlite://careplane.db in the working directory"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cs: Value = reqwest::get(format!("http://{}/fhir/metadata", server.api))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(cs["resourceType"], "CapabilityStatement");
    });
    let health = Command::new(BIN)
        .env("CAREPLANE_ADMIN_ADDR", &server.admin)
        .arg("healthcheck")
        .status()
        .unwrap();
    assert!(health.success(), "healthcheck against a ready server");
    let status = server.terminate();
    assert!(status.success(), "SIGTERM is a clean exit: {status:?}");
    let after = Command::new(BIN)
        .env("CAREPLANE_ADMIN_ADDR", "127.0.0.1:1")
        .arg("healthcheck")
        .status()
        .unwrap();
    assert!(!after.success(), "healthcheck fails when nothing answers");
}

/// Issue 6: "a Redis outage never fails FHIR CRUD … readiness does not depend on Redis". Redis
/// configured but unreachable from the start: the server starts, is ready, and serves CRUD.
#[test]
fn serve_with_an_unreachable_redis_starts_ready_and_serves_crud() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redis = format!("redis://:secret@127.0.0.1:{closed}");
    let server = Server::start(dir.path(), &[("CAREPLANE_REDIS_URL", &redis)]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = reqwest::Client::new();
        let ready = client
            .get(format!("http://{}/readyz", server.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200, "readiness ignores Redis");
        let base = format!("http://{}/fhir/Patient", server.api);
        let created = client
            .post(&base)
            .header("content-type", "application/fhir+json")
            .body(r#"{"resourceType": "Patient", "name": [{"family": "Cached"}]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
        let body: Value = created.json().await.unwrap();
        let url = format!("{base}/{}", body["id"].as_str().unwrap());
        for _ in 0..2 {
            let read = client.get(&url).send().await.unwrap();
            assert_eq!(read.status(), 200);
        }
        let updated = client
            .put(&url)
            .header("content-type", "application/fhir+json")
            .body(format!(
                r#"{{"resourceType": "Patient", "id": "{}", "name": [{{"family": "Again"}}]}}"#,
                body["id"].as_str().unwrap()
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(updated.status(), 200);
        let read: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
        assert_eq!(read["meta"]["versionId"], "2");
        assert!(client
            .delete(&url)
            .send()
            .await
            .unwrap()
            .status()
            .is_success());
        assert_eq!(client.get(&url).send().await.unwrap().status(), 410);
    });
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
}

#[test]
fn migrate_applies_migrations_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    for _ in 0..2 {
        let out = Command::new(BIN)
            .env("CAREPLANE_DATABASE_URL", &url)
            .arg("migrate")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(dir.path().join("m.db").exists());
}

#[test]
fn reindex_rebuilds_the_search_index_of_stored_resources() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("r.db").display());
    let bundle = dir.path().join("two.json");
    std::fs::write(
        &bundle,
        r#"{"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient"}},
            {"request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient"}}]}"#,
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .env("CAREPLANE_DATABASE_URL", &url)
            .env("CAREPLANE_LOG", "warn")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    run(&["import", bundle.to_str().unwrap()]);
    assert!(run(&["reindex"]).contains("reindexed 2 resources"));
    // A database created by this release stores no derived rows: the contract step (run after
    // every upgrade) finds nothing to delete, and running it again is harmless.
    for _ in 0..2 {
        assert!(run(&["contract"]).contains("; 0 deleted"));
    }

    // In the background: enqueued, then run by a worker, with progress and result readable.
    let id = run(&["reindex", "--background"]).trim().to_string();
    let queued: Value = serde_json::from_str(&run(&["job", &id])).unwrap();
    assert_eq!(queued["state"], "queued");
    assert_eq!(queued["kind"], "reindex");
    let worker = Server::start_worker(
        dir.path(),
        &[
            ("CAREPLANE_DATABASE_URL", url.as_str()),
            ("CAREPLANE_WORKER_POLL_INTERVAL", "50ms"),
        ],
    );
    let mut status = queued;
    for _ in 0..200 {
        status = serde_json::from_str(&run(&["job", &id])).unwrap();
        if status["state"] == "succeeded" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(status["result"]["reindexed"], 2);
    assert!(worker.terminate().success());
    let unknown = Command::new(BIN)
        .env("CAREPLANE_DATABASE_URL", &url)
        .args(["job", "no-such-job"])
        .output()
        .unwrap();
    assert!(!unknown.status.success());
}

#[test]
fn a_real_fhir_client_library_works_unchanged() {
    let python = venv_python();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let script = workspace().join("tests/clients/python_clients.py");
    let out = Command::new(python)
        .arg(script)
        .arg(format!("http://{}/fhir", server.api))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("all client steps passed"), "{text}");
    server.terminate();
}
