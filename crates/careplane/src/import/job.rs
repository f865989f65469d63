//! The `import` job behind `POST /$import`: reads the staged NDJSON a chunk at a time and loads
//! each chunk as a `batch` Bundle through the same code as `POST /` and `careplane import`
//! (validation, ids, references), so one bad line fails only itself. Progress (`line`,
//! `resources`) is kept in the job; an attempt after a crash skips the lines already loaded.
//! The result lists counts per type and up to [`MAX_ERRORS`] failed lines.

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use careplane_api::bundle::{self, ResponseOptions};
use careplane_api::extract::ReturnPreference;
use careplane_api::handlers::import::{staging_dir, KIND};
use careplane_api::AppState;
use careplane_store::TenantId;
use careplane_worker::{Finished, Handler, JobContext, JobError};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::source::{transaction_of, NDJSON_CHUNK};

/// Failed lines reported in the result (the count covers all of them).
const MAX_ERRORS: usize = 100;

pub struct NdjsonImportHandler {
    pub state: AppState,
    /// The bulk-data directory (uploads are staged below it).
    pub dir: PathBuf,
}

struct Tally {
    by_type: BTreeMap<String, u64>,
    errors: Vec<Value>,
    error_count: u64,
}

impl Tally {
    fn error(&mut self, line: u64, diagnostics: String) {
        self.error_count += 1;
        if self.errors.len() < MAX_ERRORS {
            self.errors
                .push(json!({"line": line, "diagnostics": diagnostics}));
        }
    }
}

#[async_trait]
impl Handler for NdjsonImportHandler {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn run(&self, job: &JobContext) -> Result<Finished, JobError> {
        let payload = &job.job().payload;
        let file = payload["file"]
            .as_str()
            .filter(|f| !f.is_empty() && !f.contains('/'))
            .ok_or_else(|| JobError::Fatal("import payload names no staged file".into()))?;
        let path = staging_dir(&self.dir).join(file);
        let opened = tokio::fs::File::open(&path)
            .await
            .map_err(|e| JobError::Fatal(format!("staged upload {}: {e}", path.display())))?;
        let saved = job.job().progress.clone().unwrap_or(Value::Null);
        let skip = saved["line"].as_u64().unwrap_or(0);
        let mut tally = Tally {
            by_type: serde_json::from_value(saved["byType"].clone()).unwrap_or_default(),
            errors: Vec::new(),
            error_count: 0,
        };
        let mut lines = BufReader::new(opened).lines();
        let mut line_no = 0u64;
        let mut chunk: Vec<(u64, Value)> = Vec::with_capacity(NDJSON_CHUNK);
        loop {
            let line = lines
                .next_line()
                .await
                .map_err(|e| JobError::Retry(format!("reading {}: {e}", path.display())))?;
            let Some(line) = line else { break };
            line_no += 1;
            if line_no <= skip || line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(&line) {
                Ok(resource) if resource.get("resourceType").is_some() => {
                    chunk.push((line_no, resource))
                }
                Ok(_) => tally.error(line_no, "not a FHIR resource (no resourceType)".into()),
                Err(e) => tally.error(line_no, format!("not JSON: {e}")),
            }
            if chunk.len() == NDJSON_CHUNK {
                self.load(job, std::mem::take(&mut chunk), &mut tally)
                    .await?;
                report(job, line_no, &tally);
            }
        }
        if !chunk.is_empty() {
            self.load(job, chunk, &mut tally).await?;
        }
        job.check()?;
        let output: Vec<Value> = tally
            .by_type
            .iter()
            .map(|(t, n)| json!({"type": t, "count": n}))
            .collect();
        let result = json!({
            "transactionTime": payload["transactionTime"],
            "request": payload["request"],
            "output": output,
            "error": tally.errors,
            "errorCount": tally.error_count,
            "resumedAtLine": if skip > 0 { json!(skip) } else { Value::Null },
        });
        // The upload is done with; a retry after this point has nothing left to load.
        let _ = tokio::fs::remove_file(&path).await;
        Ok(Finished::WithResult(result))
    }
}

impl NdjsonImportHandler {
    /// Loads one chunk as a batch Bundle; entries that fail are reported with their lines.
    async fn load(
        &self,
        job: &JobContext,
        chunk: Vec<(u64, Value)>,
        tally: &mut Tally,
    ) -> Result<(), JobError> {
        job.check()?;
        let (line_numbers, resources): (Vec<u64>, Vec<Value>) = chunk.into_iter().unzip();
        let types: Vec<String> = resources
            .iter()
            .map(|r| r["resourceType"].as_str().unwrap_or_default().to_string())
            .collect();
        let mut bundle = transaction_of(resources);
        bundle["type"] = json!("batch");
        let options = ResponseOptions {
            return_: ReturnPreference::Minimal,
            base_url: None,
        };
        let response = bundle::process(&self.state, &TenantId::default_tenant(), &bundle, &options)
            .await
            .map_err(|e| {
                let (status, issues) = e.status_and_issues();
                let text: Vec<String> = issues.into_iter().map(|i| i.diagnostics).collect();
                // A whole-Bundle failure is the server's (unavailable database, deadline).
                JobError::Retry(format!("{status}: {}", text.join("; ")))
            })?;
        let entries = response["entry"].as_array().cloned().unwrap_or_default();
        for (i, line) in line_numbers.iter().enumerate() {
            let entry = entries.get(i).unwrap_or(&Value::Null);
            let status = entry
                .pointer("/response/status")
                .and_then(Value::as_str)
                .unwrap_or("");
            if status.starts_with('2') {
                *tally.by_type.entry(types[i].clone()).or_default() += 1;
            } else {
                let issues: Vec<&str> = entry
                    .pointer("/response/outcome/issue")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|issue| issue["diagnostics"].as_str())
                    .collect();
                tally.error(*line, format!("{status} {}", issues.join("; ")));
            }
        }
        Ok(())
    }
}

/// Progress for the status poll (`X-Progress`) and for resuming after a crash.
fn report(job: &JobContext, line: u64, tally: &Tally) {
    let resources: u64 = tally.by_type.values().sum();
    job.progress(json!({"line": line, "resources": resources, "byType": tally.by_type}));
}
