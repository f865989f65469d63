//! `careplane import <files or dirs…>`: loads FHIR Bundles and NDJSON through the same
//! transaction code as `POST /` (directly on the database, or over HTTP to a running server),
//! shows progress, prints a summary and exits non-zero when anything failed.

pub mod job;
mod source;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use careplane_api::bundle::{self, ResponseOptions};
use careplane_api::extract::ReturnPreference;
use careplane_api::AppState;
use careplane_store::TenantId;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use tokio::task::JoinSet;

/// Where the Bundles go.
#[derive(Clone)]
pub enum Target {
    /// Straight into the database, through the API's transaction code.
    Database(AppState),
    /// `POST` to a running server's FHIR base URL.
    Server {
        client: reqwest::Client,
        base: String,
    },
}

#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub paths: Vec<PathBuf>,
    pub stable_ids: bool,
    /// Bundles in flight at once.
    pub jobs: usize,
}

/// What happened, for the summary and the exit code.
#[derive(Debug, Default)]
pub struct Summary {
    pub files: u64,
    pub bundles: u64,
    pub resources: BTreeMap<String, u64>,
    pub failures: Vec<(String, String)>,
    pub elapsed: Duration,
}

impl Summary {
    pub fn total_resources(&self) -> u64 {
        self.resources.values().sum()
    }

    /// Prints the summary on stdout. A reader that went away (`careplane import … | head -1`)
    /// ends the summary early; it must not turn a finished import into a panic.
    pub fn print(&self) {
        let _ = self.write_to(&mut std::io::stdout().lock());
    }

    fn write_to(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let secs = self.elapsed.as_secs_f64().max(1e-3);
        let total = self.total_resources();
        writeln!(
            out,
            "imported {total} resources from {} bundles in {} files in {:.1} s ({:.0} resources/s)",
            self.bundles,
            self.files,
            secs,
            total as f64 / secs
        )?;
        for (rt, n) in &self.resources {
            writeln!(out, "  {rt:<28} {n:>8}")?;
        }
        if !self.failures.is_empty() {
            writeln!(out, "{} failures:", self.failures.len())?;
            for (what, why) in &self.failures {
                writeln!(out, "  {what}: {why}")?;
            }
        }
        out.flush()
    }
}

/// Result of one file: its bundles' counts, or why (part of) it failed.
struct FileResult {
    path: String,
    bytes: u64,
    bundles: u64,
    resources: BTreeMap<String, u64>,
    failures: Vec<(String, String)>,
}

pub async fn import(target: Target, options: ImportOptions) -> Result<Summary, String> {
    let started = Instant::now();
    let files = source::collect_files(&options.paths).map_err(|e| e.to_string())?;
    let total_bytes: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let progress = progress_bar(total_bytes);
    let mut summary = Summary {
        files: files.len() as u64,
        ..Summary::default()
    };
    let options = Arc::new(options);
    let mut pending = files.into_iter();
    let mut running = JoinSet::new();
    loop {
        while running.len() < options.jobs.max(1) {
            let Some(path) = pending.next() else { break };
            let (target, options) = (target.clone(), options.clone());
            running.spawn(async move { import_file(&target, &options, path).await });
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        let file = done.map_err(|e| format!("import task failed: {e}"))?;
        summary.bundles += file.bundles;
        for (rt, n) in file.resources {
            *summary.resources.entry(rt).or_default() += n;
        }
        summary.failures.extend(file.failures);
        progress.inc(file.bytes);
        let rate = summary.total_resources() as f64 / started.elapsed().as_secs_f64().max(1e-3);
        progress.set_message(format!(
            "{} resources, {rate:.0}/s",
            summary.total_resources()
        ));
        if progress.is_hidden() {
            tracing::info!(
                file = %file.path,
                resources = summary.total_resources(),
                rate = rate as u64,
                "imported"
            );
        }
    }
    progress.finish_and_clear();
    summary.elapsed = started.elapsed();
    Ok(summary)
}

fn progress_bar(total_bytes: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total_bytes);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {msg} ETA {eta}")
    {
        bar.set_style(style);
    }
    bar
}

async fn import_file(target: &Target, options: &ImportOptions, path: PathBuf) -> FileResult {
    let shown = path.display().to_string();
    let mut result = FileResult {
        bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
        path: shown.clone(),
        bundles: 0,
        resources: BTreeMap::new(),
        failures: Vec::new(),
    };
    // Parsing a large Bundle is CPU work: keep it off the async workers.
    let read = tokio::task::spawn_blocking(move || source::bundles(&path)).await;
    let bundles = match read {
        Ok(Ok(bundles)) => bundles,
        Ok(Err(why)) => {
            result.failures.push((shown, why));
            return result;
        }
        Err(e) => {
            result.failures.push((shown, e.to_string()));
            return result;
        }
    };
    for (n, mut bundle) in bundles.into_iter().enumerate() {
        if options.stable_ids {
            source::with_stable_ids(&mut bundle);
        }
        let label = format!("{shown} (bundle {})", n + 1);
        match send(target, &bundle).await {
            Ok(entry_failures) if entry_failures.is_empty() => {
                result.bundles += 1;
                source::count_by_type(&bundle, &mut result.resources);
            }
            Ok(entry_failures) => {
                result.bundles += 1;
                for failure in entry_failures {
                    result.failures.push((label.clone(), failure));
                }
            }
            Err(why) => result.failures.push((label, why)),
        }
    }
    result
}

/// Attempts per Bundle when the answer says "retry" (503 busy/unavailable, 409 lost race).
const ATTEMPTS: u32 = 5;

/// Sends one Bundle, again after a pause while the answer is retryable (a busy SQLite writer
/// or a lost race is not a failed import). `Ok` lists failed entries of a batch.
async fn send(target: &Target, bundle: &Value) -> Result<Vec<String>, String> {
    let mut attempt = 1;
    loop {
        match send_once(target, bundle).await {
            Err(e) if attempt < ATTEMPTS && (e.starts_with("503 ") || e.starts_with("409 ")) => {
                tracing::info!(attempt, error = %e, "bundle will be retried");
                tokio::time::sleep(std::time::Duration::from_millis(500 << attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn send_once(target: &Target, bundle: &Value) -> Result<Vec<String>, String> {
    let response = match target {
        Target::Database(state) => {
            let options = ResponseOptions {
                return_: ReturnPreference::Minimal,
                base_url: None,
            };
            let tenant = TenantId::default_tenant();
            bundle::process(state, &tenant, bundle, &options)
                .await
                .map_err(|e| {
                    let (status, issues) = e.status_and_issues();
                    let text: Vec<String> = issues.into_iter().map(|i| i.diagnostics).collect();
                    format!("{status}: {}", text.join("; "))
                })?
        }
        Target::Server { client, base } => {
            let response = client
                .post(format!("{}/", base.trim_end_matches('/')))
                .header("content-type", "application/fhir+json")
                .header("prefer", "return=minimal")
                .body(bundle.to_string())
                .send()
                .await
                .map_err(|e| format!("{base}: {e}"))?;
            let status = response.status();
            let body: Value = response.json().await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("{status}: {}", diagnostics(&body)));
            }
            body
        }
    };
    Ok(response["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(_, e)| {
            let status = e.pointer("/response/status").and_then(Value::as_str);
            !status.is_some_and(|s| s.starts_with('2'))
        })
        .map(|(i, e)| {
            let status = e.pointer("/response/status").and_then(Value::as_str);
            let outcome = e.pointer("/response/outcome").unwrap_or(&Value::Null);
            format!(
                "entry {i}: {} {}",
                status.unwrap_or("?"),
                diagnostics(outcome)
            )
        })
        .collect())
}

fn diagnostics(outcome: &Value) -> String {
    let texts: Vec<&str> = outcome["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["diagnostics"].as_str())
        .collect();
    texts.join("; ")
}
