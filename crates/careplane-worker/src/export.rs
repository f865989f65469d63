//! FHIR Bulk Data export (`$export`) as a job: the API validates the kick-off and enqueues an
//! [`ExportRequest`]; this handler pages through the store with keyset cursors and streams each
//! resource type to an NDJSON file, so memory stays at one page whatever the data size.
//!
//! Files are named `{Type}.{fence}.ndjson` under `{dir}/{job id}/`: every attempt writes its own
//! files (a superseded worker still writing cannot corrupt the winner's), and the manifest
//! names the files of the attempt that completed. Earlier attempts' files are removed when a
//! new attempt starts.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use careplane_fhir::bulk::{job_dir, ExportLevel, ExportRequest, KIND};
use careplane_fhir::search::compartment::patient_compartment_filter;
use careplane_fhir::search::query::{self, ParseOptions};
use careplane_fhir::Definitions;
use careplane_store::{NewJob, SearchOptions, TenantId};
use serde_json::{json, Value};
use tokio::io::{AsyncWriteExt, BufWriter};

use crate::{Finished, Handler, JobContext, JobError};

pub struct ExportHandler {
    pub defs: &'static Definitions,
    /// Root directory of export files (shared with the API replicas that serve them).
    pub dir: PathBuf,
    /// Resources read per store round trip (and held in memory at once).
    pub page_size: usize,
    /// How long a finished export's files are kept before an expiry job removes them.
    pub retention: std::time::Duration,
}

#[async_trait]
impl Handler for ExportHandler {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn run(&self, job: &JobContext) -> Result<Finished, JobError> {
        let request: ExportRequest = serde_json::from_value(job.job().payload.clone())
            .map_err(|e| JobError::Fatal(format!("export payload: {e}")))?;
        let tenant = TenantId::parse(&job.job().tenant)
            .ok_or_else(|| JobError::Fatal(format!("tenant '{}'", job.job().tenant)))?;
        let fence = job.fence();
        let dir = job_dir(&self.dir, &job.job().id);
        prepare_dir(&dir).await?;
        let patients = match &request.level {
            ExportLevel::Group(group) => Some(group_members(job, &tenant, group).await?),
            _ => None,
        };
        let mut output = Vec::new();
        let mut exported = 0u64;
        for resource_type in request.resolved_types(self.defs) {
            let name = format!("{resource_type}.{fence}.ndjson");
            let mut file = NdjsonFile::new(dir.join(&name));
            match &patients {
                None => {
                    self.write_search(job, &tenant, &request, &resource_type, None, &mut file)
                        .await?
                }
                Some(ids) => {
                    for patient in ids {
                        self.write_search(
                            job,
                            &tenant,
                            &request,
                            &resource_type,
                            Some(patient),
                            &mut file,
                        )
                        .await?;
                    }
                }
            }
            let count = file.finish().await?;
            if count > 0 {
                exported += count;
                output.push(json!({
                    "type": resource_type,
                    "url": format!("{}/$export-file/{}/{name}", request.base, job.job().id),
                    "count": count,
                }));
            }
            job.progress(json!({"resources": exported, "type": resource_type}));
        }
        job.check()?;
        tracing::info!(job = %job.job().id, resources = exported, files = output.len(), "export written");
        let manifest = json!({
            "transactionTime": request.transaction_time,
            "request": request.request,
            "requiresAccessToken": true,
            "output": output,
            "error": [],
        });
        // The files' expiry is scheduled in the same transaction as the completion: every
        // finished export gets one, and a superseded attempt schedules none.
        let mut expiry = NewJob::new(tenant.clone(), EXPIRE_KIND, json!({"export": job.job().id}));
        expiry.delay = self.retention;
        let mut tx = job.store.begin().await?;
        tx.enqueue(&expiry).await?;
        job.complete_in(tx.as_mut(), &manifest).await?;
        tx.commit().await?;
        Ok(Finished::InTransaction)
    }
}

/// Job kind that deletes an export's files once its retention is over.
pub const EXPIRE_KIND: &str = "export-expire";

/// Removes an expired export: its files go and its status answers 404 from then on.
pub struct ExportExpiryHandler {
    pub dir: PathBuf,
}

#[async_trait]
impl Handler for ExportExpiryHandler {
    fn kind(&self) -> &'static str {
        EXPIRE_KIND
    }

    async fn run(&self, job: &JobContext) -> Result<Finished, JobError> {
        let export = job.job().payload["export"]
            .as_str()
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .ok_or_else(|| JobError::Fatal("expiry payload names no export".into()))?
            .to_string();
        let tenant = TenantId::parse(&job.job().tenant)
            .ok_or_else(|| JobError::Fatal(format!("tenant '{}'", job.job().tenant)))?;
        match job.store.cancel_job(&tenant, &export).await {
            Ok(_) | Err(careplane_store::StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        match tokio::fs::remove_dir_all(job_dir(&self.dir, &export)).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(JobError::Retry(format!("removing export {export}: {e}"))),
        }
        Ok(Finished::WithResult(json!({"expired": export})))
    }
}

impl ExportHandler {
    /// Streams one search (a type, optionally within one patient's compartment) into `file`,
    /// a page at a time.
    async fn write_search(
        &self,
        job: &JobContext,
        tenant: &TenantId,
        request: &ExportRequest,
        resource_type: &str,
        patient: Option<&str>,
        file: &mut NdjsonFile,
    ) -> Result<(), JobError> {
        let types = vec![resource_type.to_string()];
        let options = SearchOptions {
            page_size: self.page_size,
            max_included: 0,
            count_only: false,
        };
        let mut cursor: Option<String> = None;
        loop {
            job.check()?;
            let mut params = vec![("_count".to_string(), self.page_size.to_string())];
            if let Some(since) = &request.since {
                params.push(("_lastUpdated".into(), format!("gt{since}")));
            }
            if let Some(c) = &cursor {
                params.push(("_cursor".into(), c.clone()));
            }
            if let (Some(patient), "Patient") = (patient, resource_type) {
                params.push(("_id".into(), patient.to_string()));
            }
            let parse = ParseOptions {
                strict: true,
                max_count: self.page_size as u32,
            };
            let mut search = query::parse(self.defs, &types, &params, parse)
                .map_err(|e| JobError::Fatal(format!("export search: {e}")))?;
            if let Some(patient) = patient.filter(|_| resource_type != "Patient") {
                search
                    .filters
                    .insert(0, patient_compartment_filter(patient, &types, false));
            }
            let page = job.store.search(tenant, &search, &options).await?;
            for resource in &page.matches {
                file.write_line(&resource.body).await?;
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(()),
            }
        }
    }
}

/// Patient ids of a Group's members (`member.entity` references to Patient).
async fn group_members(
    job: &JobContext,
    tenant: &TenantId,
    group: &str,
) -> Result<Vec<String>, JobError> {
    let defs = Definitions::r4().map_err(JobError::Fatal)?;
    let group_type = careplane_fhir::ResourceType::parse(defs, "Group")
        .ok_or_else(|| JobError::Fatal("Group is not a resource type".into()))?;
    let id = careplane_fhir::Id::parse(group)
        .ok_or_else(|| JobError::Fatal(format!("Group id '{group}'")))?;
    let stored = match job.store.read(tenant, &group_type, &id).await {
        Ok(stored) => stored,
        Err(
            e @ (careplane_store::StoreError::NotFound { .. }
            | careplane_store::StoreError::Gone { .. }),
        ) => return Err(JobError::Fatal(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    let body: Value = serde_json::from_str(&stored.body)
        .map_err(|e| JobError::Fatal(format!("Group/{group}: {e}")))?;
    let mut ids: Vec<String> = body["member"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["entity"]["reference"].as_str())
        .filter_map(|r| r.strip_prefix("Patient/"))
        .map(str::to_string)
        .collect();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// Creates the job's directory and removes files of earlier attempts.
async fn prepare_dir(dir: &Path) -> Result<(), JobError> {
    let io =
        |e: std::io::Error| JobError::Retry(format!("export directory {}: {e}", dir.display()));
    tokio::fs::create_dir_all(dir).await.map_err(io)?;
    let mut entries = tokio::fs::read_dir(dir).await.map_err(io)?;
    while let Some(entry) = entries.next_entry().await.map_err(io)? {
        tokio::fs::remove_file(entry.path()).await.map_err(io)?;
    }
    Ok(())
}

/// An NDJSON file created on its first line, so empty types leave no file behind.
struct NdjsonFile {
    path: PathBuf,
    writer: Option<BufWriter<tokio::fs::File>>,
    lines: u64,
}

impl NdjsonFile {
    fn new(path: PathBuf) -> NdjsonFile {
        NdjsonFile {
            path,
            writer: None,
            lines: 0,
        }
    }

    fn io(&self, e: std::io::Error) -> JobError {
        JobError::Retry(format!("writing {}: {e}", self.path.display()))
    }

    /// Writes one stored resource (already compact JSON on one line) and a newline.
    async fn write_line(&mut self, body: &str) -> Result<(), JobError> {
        if self.writer.is_none() {
            let file = tokio::fs::File::create(&self.path)
                .await
                .map_err(|e| self.io(e))?;
            self.writer = Some(BufWriter::with_capacity(256 * 1024, file));
        }
        if let Some(writer) = self.writer.as_mut() {
            let written = async {
                writer.write_all(body.as_bytes()).await?;
                writer.write_all(b"\n").await
            }
            .await;
            written.map_err(|e| self.io(e))?;
        }
        self.lines += 1;
        Ok(())
    }

    /// Flushes to disk; returns how many lines were written.
    async fn finish(&mut self) -> Result<u64, JobError> {
        if let Some(mut writer) = self.writer.take() {
            let done = async {
                writer.flush().await?;
                writer.get_mut().sync_all().await
            }
            .await;
            done.map_err(|e| self.io(e))?;
        }
        Ok(self.lines)
    }
}
