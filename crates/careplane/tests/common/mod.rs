//! Shared by the binary's integration tests: the real `careplane` process on ephemeral ports.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_careplane");

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// `../shared` next to the workspace, or `CAREPLANE_SHARED_DIR`.
pub fn shared_dir() -> PathBuf {
    std::env::var("CAREPLANE_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace().join("../shared"))
}

/// The Python venv with the client libraries (`make test-deps`).
pub fn venv_python() -> PathBuf {
    let python = workspace().join("target/clients-venv/bin/python");
    assert!(
        python.exists(),
        "run `make test-deps` to create the client venv"
    );
    python
}

/// A running `careplane`; killed on drop so a failed assertion never leaks the process.
pub struct Server {
    child: Child,
    pub api: String,
    pub admin: String,
}

impl Server {
    /// Starts `careplane` on ephemeral ports in `dir` and waits for its "listening" log line.
    /// The stderr reader is dropped afterwards, so later log lines hit a closed pipe: the server
    /// must survive that (regression: tracing's eprintln! fallback used to panic on SIGTERM).
    pub fn start(dir: &Path, extra_env: &[(&str, &str)]) -> Server {
        Server::spawn(dir, "serve", "careplane listening", extra_env)
    }

    /// `careplane work` (the worker and its admin listener; `api` is empty).
    pub fn start_worker(dir: &Path, extra_env: &[(&str, &str)]) -> Server {
        Server::spawn(dir, "work", "careplane worker listening", extra_env)
    }

    fn spawn(dir: &Path, subcommand: &str, ready: &str, extra_env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(BIN)
            .arg(subcommand)
            .current_dir(dir)
            .env_clear()
            .env("CAREPLANE_LISTEN_ADDR", "127.0.0.1:0")
            .env("CAREPLANE_ADMIN_ADDR", "127.0.0.1:0")
            .env("CAREPLANE_LOG_FORMAT", "json")
            .envs(extra_env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        for line in stderr.lines() {
            let line = line.unwrap();
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if event["fields"]["message"] == ready {
                let field = |k: &str| event["fields"][k].as_str().unwrap_or_default().to_string();
                return Server {
                    api: field("api"),
                    admin: field("admin"),
                    child,
                };
            }
        }
        panic!(
            "careplane {subcommand} exited before listening: {:?}",
            child.wait()
        );
    }

    /// Process id, for the record.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited (without waiting), `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Sends SIGTERM and waits (at most 5 s) for the exit status.
    pub fn terminate(self) -> ExitStatus {
        self.signal_term();
        self.wait()
    }

    /// Sends SIGTERM without waiting (the process drains on its own).
    pub fn signal_term(&self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    /// Waits (at most 5 s) for the exit status.
    pub fn wait(mut self) -> ExitStatus {
        for _ in 0..100 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("careplane did not exit within 5 s of SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
