//! `careplane backup` while the server runs, and the documented restore (docs/operations.md):
//! stop the server, put the copy in place of the database file (dropping its -wal/-shm), start.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{Server, BIN};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn create(base: &str, family: &str) -> String {
    let response = reqwest::Client::new()
        .post(format!("{base}/Patient"))
        .json(&json!({"resourceType": "Patient", "name": [{"family": family}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().to_string()
}

async fn status(base: &str, id: &str) -> StatusCode {
    reqwest::get(format!("{base}/Patient/{id}"))
        .await
        .unwrap()
        .status()
}

#[test]
fn an_online_backup_restores_to_the_moment_it_was_taken() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("careplane.db");
    let db = format!("sqlite://{}", db_path.display());
    let env = [("CAREPLANE_DATABASE_URL", db.as_str())];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let copy = dir.path().join("backup.db");

    let server = Server::start(dir.path(), &env);
    let base = format!("http://{}/fhir", server.api);
    let (kept, lost) = rt.block_on(async {
        let kept = create(&base, "Before").await;
        let out = Command::new(BIN)
            .args(["backup", copy.to_str().unwrap()])
            .env("CAREPLANE_DATABASE_URL", &db)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let lost = create(&base, "After").await;
        (kept, lost)
    });
    // A second backup to the same file is refused, and says why.
    let again = Command::new(BIN)
        .args(["backup", copy.to_str().unwrap()])
        .env("CAREPLANE_DATABASE_URL", &db)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert!(server.terminate().success());

    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db_path.display()));
    }
    std::fs::copy(&copy, &db_path).unwrap();
    let server = Server::start(dir.path(), &env);
    let base = format!("http://{}/fhir", server.api);
    rt.block_on(async {
        assert_eq!(status(&base, &kept).await, StatusCode::OK);
        assert_eq!(status(&base, &lost).await, StatusCode::NOT_FOUND);
    });
    assert!(server.terminate().success());
}
