//! The shutdown sequence's two halves: one "stopping" token cancelled on SIGTERM (Kubernetes) or
//! SIGINT (Ctrl-C), and [`Tasks`], the long-running tasks that watch it and are awaited before
//! the database pool closes.

use std::collections::HashMap;
use std::future::Future;

use tokio::signal::unix::{signal, SignalKind};
use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::run::RunError;

/// A token cancelled on the first SIGTERM or SIGINT. The handlers are installed before this
/// returns, so a signal arriving during startup is a clean shutdown rather than the default
/// kill.
pub fn on_signal() -> std::io::Result<CancellationToken> {
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let stopping = CancellationToken::new();
    let cancel = stopping.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
        cancel.cancel();
    });
    Ok(stopping)
}

/// Named long-running tasks of one process. Each must return once `stopping` is cancelled
/// (within its drain deadline); one that ends early or fails cancels `stopping` for the rest,
/// and the log and the error say which one it was.
pub struct Tasks {
    stopping: CancellationToken,
    set: JoinSet<Result<(), RunError>>,
    names: HashMap<Id, &'static str>,
}

impl Tasks {
    pub fn new(stopping: CancellationToken) -> Self {
        Tasks {
            stopping,
            set: JoinSet::new(),
            names: HashMap::new(),
        }
    }

    pub fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = Result<(), RunError>> + Send + 'static,
    ) {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Waits for every task; returns the first failure.
    pub async fn join(mut self) -> Result<(), RunError> {
        let mut first_error = None;
        while let Some(joined) = self.set.join_next_with_id().await {
            let (id, joined) = match joined {
                Ok((id, result)) => (id, Ok(result)),
                Err(e) => (e.id(), Err(e)),
            };
            let task = self.names.get(&id).copied().unwrap_or("unnamed");
            let result = match joined {
                Err(e) => Err(RunError::Task(format!("{task}: {e}"))),
                Ok(Ok(())) if !self.stopping.is_cancelled() => {
                    Err(RunError::Task(format!("{task} exited before shutdown")))
                }
                Ok(result) => result,
            };
            match result {
                Ok(()) => tracing::info!(task, "stopped"),
                Err(e) => {
                    tracing::error!(task, error = %e, "task failed; stopping the others");
                    first_error.get_or_insert(e);
                }
            }
            self.stopping.cancel();
        }
        first_error.map_or(Ok(()), Err)
    }
}
