//! Bulk export end to end through the binary (embedded mode: API and worker in one process on
//! SQLite): kick-off validation, status polling, manifest, NDJSON files, Group scoping, `_since`,
//! cancellation, and a job enqueued while no worker ran finishing after a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Server;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

fn start(dir: &Path, worker: &str) -> Server {
    start_with_retention(dir, worker, "24h")
}

fn start_with_retention(dir: &Path, worker: &str, retention: &str) -> Server {
    let db = format!("sqlite://{}", dir.join("careplane.db").display());
    let exports = dir.join("exports");
    Server::start(
        dir,
        &[
            ("CAREPLANE_DATABASE_URL", db.as_str()),
            ("CAREPLANE_EXPORT_DIR", exports.to_str().unwrap()),
            ("CAREPLANE_WORKER", worker),
            ("CAREPLANE_WORKER_POLL_INTERVAL", "50ms"),
            ("CAREPLANE_EXPORT_RETENTION", retention),
        ],
    )
}

struct Api {
    client: Client,
    base: String,
}

impl Api {
    fn new(server: &Server) -> Api {
        Api {
            client: Client::new(),
            base: format!("http://{}/fhir", server.api),
        }
    }

    async fn create(&self, body: Value) -> String {
        let rt = body["resourceType"].as_str().unwrap().to_string();
        let response = self
            .client
            .post(format!("{}/{rt}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let created: Value = response.json().await.unwrap();
        created["id"].as_str().unwrap().to_string()
    }

    async fn kick_off(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}/{path}", self.base))
            .header("prefer", "respond-async")
            .header("accept", "application/fhir+json")
            .send()
            .await
            .unwrap()
    }

    /// Kicks off, polls the status URL until the manifest arrives, returns it.
    async fn export(&self, path: &str) -> (String, Value) {
        let response = self.kick_off(path).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{path}");
        let status_url = response.headers()["content-location"]
            .to_str()
            .unwrap()
            .to_string();
        (status_url.clone(), self.poll(&status_url).await)
    }

    async fn poll(&self, status_url: &str) -> Value {
        let started = Instant::now();
        loop {
            let response = self.client.get(status_url).send().await.unwrap();
            match response.status() {
                StatusCode::ACCEPTED => {
                    assert!(response.headers().contains_key("x-progress"));
                    assert!(response.headers().contains_key("retry-after"));
                }
                StatusCode::OK => return response.json().await.unwrap(),
                other => panic!("status {other}: {}", response.text().await.unwrap()),
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "export never finished"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The manifest's files, downloaded and parsed: type -> resources.
    async fn files(&self, manifest: &Value) -> std::collections::BTreeMap<String, Vec<Value>> {
        let mut files = std::collections::BTreeMap::new();
        for output in manifest["output"].as_array().unwrap() {
            let response = self
                .client
                .get(output["url"].as_str().unwrap())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(
                response.headers()["content-type"],
                "application/fhir+ndjson"
            );
            let text = response.text().await.unwrap();
            let resources: Vec<Value> = text
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect();
            assert_eq!(resources.len() as u64, output["count"].as_u64().unwrap());
            let t = output["type"].as_str().unwrap().to_string();
            assert!(resources.iter().all(|r| r["resourceType"] == t.as_str()));
            files.insert(t, resources);
        }
        files
    }
}

fn observation(patient: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final",
           "code": {"text": "weight"}, "subject": {"reference": format!("Patient/{patient}")}})
}

#[test]
fn bulk_export_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "auto");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let api = Api::new(&server);
        let mut patients = Vec::new();
        for family in ["Ames", "Bell", "Cole"] {
            patients.push(
                api.create(json!({"resourceType": "Patient", "name": [{"family": family}]}))
                    .await,
            );
        }
        for (patient, n) in patients.iter().zip([2, 3, 1]) {
            for _ in 0..n {
                api.create(observation(patient)).await;
            }
        }
        api.create(json!({"resourceType": "Practitioner", "name": [{"family": "Doc"}]}))
            .await;
        let group = api
            .create(
                json!({"resourceType": "Group", "type": "person", "actual": true,
                "member": [{"entity": {"reference": format!("Patient/{}", patients[0])}},
                           {"entity": {"reference": format!("Patient/{}", patients[1])}}]}),
            )
            .await;

        // Kick-off validation: clear 4xx, never a job.
        let no_prefer = api
            .client
            .get(format!("{}/$export", api.base))
            .send()
            .await
            .unwrap();
        assert_eq!(no_prefer.status(), StatusCode::BAD_REQUEST);
        for (path, status) in [
            ("$export?_type=Bogus", StatusCode::BAD_REQUEST),
            (
                "$export?_typeFilter=Patient%3Factive%3Dtrue",
                StatusCode::BAD_REQUEST,
            ),
            ("$export?_outputFormat=text%2Fcsv", StatusCode::BAD_REQUEST),
            ("$export?_since=yesterday", StatusCode::BAD_REQUEST),
            (
                "Patient/$export?_type=Practitioner",
                StatusCode::BAD_REQUEST,
            ),
            ("Observation/$export", StatusCode::NOT_FOUND),
            ("Group/no-such-group/$export", StatusCode::NOT_FOUND),
            ("Patient/x/$export", StatusCode::NOT_FOUND),
        ] {
            let response = api.kick_off(path).await;
            assert_eq!(response.status(), status, "{path}");
            let outcome: Value = response.json().await.unwrap();
            assert_eq!(outcome["resourceType"], "OperationOutcome", "{path}");
        }

        // System level, two types.
        let (status_url, manifest) = api.export("$export?_type=Patient,Observation").await;
        assert_eq!(
            manifest["request"],
            format!("{}/$export?_type=Patient,Observation", api.base)
        );
        assert_eq!(manifest["requiresAccessToken"], true);
        let files = api.files(&manifest).await;
        assert_eq!(files.keys().collect::<Vec<_>>(), ["Observation", "Patient"]);
        assert_eq!(files["Patient"].len(), 3);
        assert_eq!(files["Observation"].len(), 6);

        // Group level: the two members and their observations only.
        let (_, manifest) = api.export(&format!("Group/{group}/$export")).await;
        let files = api.files(&manifest).await;
        let mut ids: Vec<&str> = files["Patient"]
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        ids.sort();
        let mut members = vec![patients[0].as_str(), patients[1].as_str()];
        members.sort();
        assert_eq!(ids, members);
        assert_eq!(files["Observation"].len(), 5);
        assert!(!files.contains_key("Practitioner"));

        // Patient level: compartment types, no Practitioner.
        let (_, manifest) = api.export("Patient/$export").await;
        let files = api.files(&manifest).await;
        assert_eq!(files["Patient"].len(), 3);
        assert!(!files.contains_key("Practitioner"));

        // _since after everything: an empty export.
        let (_, manifest) = api.export("$export?_since=2999-01-01T00:00:00Z").await;
        assert_eq!(manifest["output"], json!([]));

        // Only the names the export wrote are served.
        let job = status_url.rsplit('/').next().unwrap();
        for name in ["..%2F..%2Fcareplane.db", "careplane.db", "Patient.ndjson"] {
            let response = api
                .client
                .get(format!("{}/$export-file/{job}/{name}", api.base))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{name}");
        }

        // Deleting an export removes it and its files.
        let first_file = manifest_url(&api, &status_url).await;
        let deleted = api.client.delete(&status_url).send().await.unwrap();
        assert_eq!(deleted.status(), StatusCode::ACCEPTED);
        let gone = api.client.get(&status_url).send().await.unwrap();
        assert_eq!(gone.status(), StatusCode::NOT_FOUND);
        let file = api.client.get(&first_file).send().await.unwrap();
        assert_eq!(file.status(), StatusCode::NOT_FOUND);
        let unknown = api
            .client
            .get(format!("{}/$export-status/no-such-job", api.base))
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    });
    assert!(server.terminate().success());
}

/// The first file URL of a finished export (read before deleting it).
async fn manifest_url(api: &Api, status_url: &str) -> String {
    let manifest: Value = api
        .client
        .get(status_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    manifest["output"][0]["url"].as_str().unwrap().to_string()
}

#[test]
fn an_export_enqueued_while_no_worker_runs_finishes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = start(dir.path(), "off");
    let status_url = rt.block_on(async {
        let api = Api::new(&server);
        api.create(json!({"resourceType": "Patient", "name": [{"family": "Durable"}]}))
            .await;
        let response = api.kick_off("$export?_type=Patient").await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let status_url = response.headers()["content-location"]
            .to_str()
            .unwrap()
            .to_string();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pending = api.client.get(&status_url).send().await.unwrap();
        assert_eq!(pending.status(), StatusCode::ACCEPTED, "no worker runs yet");
        status_url
    });
    assert!(server.terminate().success());

    let server = start(dir.path(), "on");
    rt.block_on(async {
        let api = Api::new(&server);
        // The new process listens on another port; the job id carries over.
        let job = status_url.rsplit('/').next().unwrap();
        let mut manifest = api
            .poll(&format!("{}/$export-status/{job}", api.base))
            .await;
        // File URLs name the base the kick-off came through (the first process's port).
        let old_base = status_url.split("/$export-status").next().unwrap();
        for output in manifest["output"].as_array_mut().unwrap() {
            let url = output["url"].as_str().unwrap().replace(old_base, &api.base);
            output["url"] = json!(url);
        }
        let files = api.files(&manifest).await;
        assert_eq!(files["Patient"].len(), 1);
    });
    assert!(server.terminate().success());
}

/// The production topology: an API process that runs no jobs and a separate `careplane work`
/// process on the same database; the worker serves probes and metrics on its admin port and
/// exits 0 on SIGTERM.
#[test]
fn a_separate_worker_process_runs_the_jobs_the_api_enqueues() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api_server = start(dir.path(), "off");
    let db = format!("sqlite://{}", dir.path().join("careplane.db").display());
    let exports = dir.path().join("exports");
    let worker = Server::start_worker(
        dir.path(),
        &[
            ("CAREPLANE_DATABASE_URL", db.as_str()),
            ("CAREPLANE_EXPORT_DIR", exports.to_str().unwrap()),
            ("CAREPLANE_WORKER_POLL_INTERVAL", "50ms"),
        ],
    );
    rt.block_on(async {
        let api = Api::new(&api_server);
        api.create(json!({"resourceType": "Patient", "name": [{"family": "Split"}]}))
            .await;
        let (_, manifest) = api.export("$export?_type=Patient").await;
        assert_eq!(api.files(&manifest).await["Patient"].len(), 1);

        let admin = format!("http://{}", worker.admin);
        let live = reqwest::get(format!("{admin}/livez")).await.unwrap();
        assert_eq!(live.status(), StatusCode::OK);
        let ready = reqwest::get(format!("{admin}/readyz")).await.unwrap();
        assert_eq!(ready.status(), StatusCode::OK);
        let metrics = reqwest::get(format!("{admin}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(metrics.contains("queue_depth 0"), "{metrics}");
        assert!(
            metrics.contains("careplane_jobs_total{kind=\"export\",outcome=\"succeeded\"} 1"),
            "{metrics}"
        );
    });
    assert!(worker.terminate().success());
    assert!(api_server.terminate().success());
}

/// Finished exports are kept for CAREPLANE_EXPORT_RETENTION, then their files are deleted and
/// their status answers 404.
#[test]
fn exports_expire_after_their_retention() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_retention(dir.path(), "auto", "1s");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let api = Api::new(&server);
        api.create(json!({"resourceType": "Patient", "name": [{"family": "Fleeting"}]}))
            .await;
        let (status_url, manifest) = api.export("$export?_type=Patient").await;
        let file = manifest["output"][0]["url"].as_str().unwrap().to_string();
        let job = status_url.rsplit('/').next().unwrap().to_string();
        assert!(dir.path().join("exports").join(&job).is_dir());
        let started = Instant::now();
        loop {
            let status = api.client.get(&status_url).send().await.unwrap().status();
            if status == StatusCode::NOT_FOUND {
                break;
            }
            assert_eq!(status, StatusCode::OK);
            assert!(started.elapsed() < Duration::from_secs(20), "never expired");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let gone = api.client.get(&file).send().await.unwrap();
        assert_eq!(gone.status(), StatusCode::NOT_FOUND);
        // The worker removes the directory right after withdrawing the result.
        let started = Instant::now();
        while dir.path().join("exports").join(&job).exists() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "files left behind"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert!(server.terminate().success());
}
