//! Reindex as a resumable job: batches in their own transactions, the cursor and counts kept in
//! the job's progress, so an attempt after a crash or a drain continues where the last
//! heartbeat left off instead of starting over. Progress reads `{done, total, cursor}`.

use async_trait::async_trait;
use careplane_store::ReindexCursor;
use serde_json::json;

use crate::{Finished, Handler, JobContext, JobError};

pub const KIND: &str = "reindex";

pub struct ReindexHandler {
    /// Resources per batch (and per transaction).
    pub batch_size: usize,
}

#[async_trait]
impl Handler for ReindexHandler {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn run(&self, job: &JobContext) -> Result<Finished, JobError> {
        let saved = job.job().progress.as_ref();
        let mut cursor = saved.and_then(|p| ReindexCursor::from_json(&p["cursor"]));
        let resumed_at = saved.and_then(|p| p["done"].as_u64()).unwrap_or(0);
        let mut done = if cursor.is_some() { resumed_at } else { 0 };
        let total = job.store.live_resources().await?;
        if cursor.is_some() {
            tracing::info!(job = %job.job().id, done, total, "reindex resuming");
        }
        loop {
            job.check()?;
            let batch = job
                .store
                .reindex_batch(cursor.as_ref(), self.batch_size)
                .await?;
            done += batch.done;
            let Some(next) = batch.next else { break };
            job.progress(json!({"done": done, "total": total, "cursor": next.to_json()}));
            cursor = Some(next);
        }
        job.store.analyze().await?;
        Ok(Finished::WithResult(json!({
            "reindexed": done,
            "resumedAt": if resumed_at > 0 { json!(resumed_at) } else { json!(null) },
        })))
    }
}
