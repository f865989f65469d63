//! The production lifecycle of the real binary (issue 6): a graceful drain under load loses no
//! request, `/metrics` carries what the deploy manifests read, and the database URL can come
//! from a file without ever being printed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::BIN;
use serde_json::Value;

/// A `careplane serve` whose whole stderr is kept (the drain is judged by its logs).
struct Logged {
    child: Child,
    api: String,
    admin: String,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Logged {
    fn start(dir: &std::path::Path, env: &[(&str, &str)]) -> Logged {
        let mut child = Command::new(BIN)
            .current_dir(dir)
            .env_clear()
            .env("CAREPLANE_LISTEN_ADDR", "127.0.0.1:0")
            .env("CAREPLANE_ADMIN_ADDR", "127.0.0.1:0")
            .env("CAREPLANE_LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .arg("serve")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let kept = logs.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<Value>(&line) {
                    if event["fields"]["message"] == "careplane listening" {
                        let field = |k: &str| event["fields"][k].as_str().unwrap().to_string();
                        let _ = tx.send((field("api"), field("admin")));
                    }
                }
                kept.lock().unwrap().push(line);
            }
        });
        let Ok((api, admin)) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            panic!("careplane did not start: {:?}", logs.lock().unwrap());
        };
        Logged {
            child,
            api,
            admin,
            logs,
        }
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("careplane did not exit within {within:?}");
    }

    fn logged(&self, message: &str) -> bool {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(message))
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sigterm_under_load_drains_without_a_failed_request() {
    const CLIENTS: usize = 8;
    let delay = Duration::from_secs(1);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("drain.db").display());
    let mut server = Logged::start(
        dir.path(),
        &[
            ("CAREPLANE_DATABASE_URL", &url),
            ("CAREPLANE_SHUTDOWN_DELAY", "1s"),
            ("CAREPLANE_DRAIN_TIMEOUT", "10s"),
        ],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    // What a load balancer does: stop sending once readiness has failed for a while.
    let stop_sending = Arc::new(AtomicBool::new(false));
    let base = format!("http://{}/fhir", server.api);
    let readyz = format!("http://{}/readyz", server.admin);

    let (terminated_at, not_ready_after) = rt.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            let (ok, failed, stop, base) = (
                ok.clone(),
                failed.clone(),
                stop_sending.clone(),
                base.clone(),
            );
            clients.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                while !stop.load(Ordering::SeqCst) {
                    let created = client
                        .post(format!("{base}/Patient"))
                        .header("content-type", "application/fhir+json")
                        .body(r#"{"resourceType": "Patient", "active": true}"#)
                        .send()
                        .await;
                    let id = match created {
                        Ok(r) if r.status() == 201 => {
                            ok.fetch_add(1, Ordering::SeqCst);
                            r.json::<Value>().await.unwrap()["id"]
                                .as_str()
                                .unwrap()
                                .to_string()
                        }
                        Ok(r) => {
                            failed
                                .lock()
                                .unwrap()
                                .push(format!("create: {}", r.status()));
                            continue;
                        }
                        Err(e) => {
                            failed.lock().unwrap().push(format!("create: {e}"));
                            continue;
                        }
                    };
                    match client.get(format!("{base}/Patient/{id}")).send().await {
                        Ok(r) if r.status() == 200 => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(r) => failed.lock().unwrap().push(format!("read: {}", r.status())),
                        Err(e) => failed.lock().unwrap().push(format!("read: {e}")),
                    }
                }
            }));
        }
        let poller = reqwest::Client::new();
        assert_eq!(poller.get(&readyz).send().await.unwrap().status(), 200);
        tokio::time::sleep(Duration::from_millis(700)).await;
        let before = ok.load(Ordering::SeqCst);
        assert!(before > 0, "the load is running");

        let terminated_at = Instant::now();
        server.terminate();
        let not_ready_after = loop {
            let status = poller.get(&readyz).send().await.unwrap().status();
            if status == 503 {
                break terminated_at.elapsed();
            }
            assert!(
                terminated_at.elapsed() < Duration::from_secs(2),
                "readiness never failed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        tokio::time::sleep(delay / 2).await;
        stop_sending.store(true, Ordering::SeqCst);
        for client in clients {
            client.await.unwrap();
        }
        assert!(
            ok.load(Ordering::SeqCst) > before,
            "requests kept succeeding after SIGTERM"
        );
        (terminated_at, not_ready_after)
    });

    assert!(
        not_ready_after < Duration::from_millis(200),
        "readiness failed {not_ready_after:?} after SIGTERM"
    );
    let failed = failed.lock().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok.load(Ordering::SeqCst) + failed.len() as u64,
        &failed[..failed.len().min(5)]
    );
    assert!(ok.load(Ordering::SeqCst) >= 20, "too little load to judge");
    let status = server.wait_exit(Duration::from_secs(11));
    let stopped_after = terminated_at.elapsed();
    assert!(status.success(), "clean exit: {status:?}");
    assert!(
        stopped_after >= delay,
        "exited after {stopped_after:?}, before the shutdown delay was over"
    );
    assert!(
        server.logged("drained"),
        "{:#?}",
        server.logs.lock().unwrap()
    );
    assert!(server.logged("careplane stopped"));
}

#[test]
fn metrics_carry_what_the_deploy_manifests_read() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/m.db", dir.path().display());
    let server = Logged::start(dir.path(), &[("CAREPLANE_DATABASE_URL", &url)]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let text = rt.block_on(async {
        let metadata = reqwest::get(format!("http://{}/fhir/metadata", server.api))
            .await
            .unwrap();
        assert_eq!(metadata.status(), 200);
        let scraped = reqwest::get(format!("http://{}/metrics", server.admin))
            .await
            .unwrap();
        assert_eq!(scraped.status(), 200);
        assert!(scraped.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        scraped.text().await.unwrap()
    });
    for needle in [
        "# TYPE http_requests_total counter",
        r#"route="/fhir/metadata""#,
        "# TYPE http_request_duration_seconds histogram",
        r#"le="0.5""#,
        "\nactive_appointments_count ",
        "\nqueue_depth ",
        "\ndb_connection_pool_usage ",
        "\nprocess_resident_memory_bytes ",
        "\nprocess_cpu_seconds_total ",
        "\nprocess_open_fds ",
        "\nprocess_start_time_seconds ",
        &format!(
            "careplane_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        ),
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
}

#[test]
fn the_database_url_can_come_from_a_file_and_is_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("database-url");
    let db = dir.path().join("from-file.db");
    std::fs::write(&secret, format!("sqlite://{}\n", db.display())).unwrap();
    let out = Command::new(BIN)
        .env_clear()
        .env("CAREPLANE_DATABASE_URL_FILE", &secret)
        .arg("migrate")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        db.exists(),
        "the URL read from the file (newline trimmed) was used"
    );

    // A password in the file is never echoed, whatever fails.
    std::fs::write(&secret, "postgres://app:s3cret-pw@127.0.0.1:1/careplane\n").unwrap();
    let out = Command::new(BIN)
        .env_clear()
        .env("CAREPLANE_DATABASE_URL_FILE", &secret)
        .env("CAREPLANE_DATABASE_ACQUIRE_TIMEOUT_SECONDS", "1")
        .arg("migrate")
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "nothing listens on port 1");
    assert!(!printed.contains("s3cret-pw"), "{printed}");

    std::fs::write(&secret, "mysql://app:s3cret-pw@db/x").unwrap();
    let out = Command::new(BIN)
        .env_clear()
        .env("CAREPLANE_DATABASE_URL_FILE", &secret)
        .arg("migrate")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("CAREPLANE_DATABASE_URL_FILE"), "{stderr}");
    assert!(!stderr.contains("s3cret-pw"), "{stderr}");

    let out = Command::new(BIN)
        .env_clear()
        .env("CAREPLANE_DATABASE_URL_FILE", dir.path().join("missing"))
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CAREPLANE_DATABASE_URL_FILE"));

    let out = Command::new(BIN)
        .env_clear()
        .env("CAREPLANE_DATABASE_URL_FILE", &secret)
        .env("CAREPLANE_DATABASE_URL", "sqlite://other.db")
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "both given is ambiguous");
}
