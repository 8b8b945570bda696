//! Group commit in front of the replicated log: commands that arrive together share one log
//! entry, so one fsync (on each storage peer) serves many writers. Several batches are in
//! flight at once; while they are, new commands pile up into the next, bigger batch.
//!
//! ```text
//! submit(Command) --> [bounded mpsc] --> batcher --(permit, drain <= MAX_BATCH)--> task: Replica::write
//!        ^                                                                           |
//!        +--------------------------- oneshot reply per command <-------------------+
//! ```

use super::{Replica, SubmitError};
use crate::storage::raft::Batch;
use chorus_protocol::{Applied, Command, CommandError};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Most commands in one batch (one log entry).
const MAX_BATCH: usize = 1024;
/// Most payload bytes in one batch (file chunks are large; entries travel in 64 MiB frames).
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Commands waiting for the batcher before `submit` pushes back.
const QUEUE: usize = 8192;
/// Batches being committed at once.
const IN_FLIGHT: usize = 4;

type Outcome = Result<Result<Applied, CommandError>, SubmitError>;

struct Pending {
    command: Command,
    reply: oneshot::Sender<Outcome>,
}

/// Handle to submit commands. Cheap to clone.
#[derive(Clone)]
pub struct Log {
    tx: mpsc::Sender<Pending>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").finish_non_exhaustive()
    }
}

impl Log {
    /// Starts the batcher task. It ends when every [`Log`] handle is dropped.
    pub fn start(replica: Replica) -> Log {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(batcher(replica, rx));
        Log { tx }
    }

    /// Submits one command and waits until a majority holds it and the leader applied it.
    ///
    /// `Ok(Err(_))` is a deterministic refusal (nothing changed); `Err(_)` means nothing was
    /// acknowledged (the command may or may not commit later).
    pub async fn submit(&self, command: Command) -> Outcome {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { command, reply })
            .await
            .map_err(|_| SubmitError::Unavailable("the log is shut down".into()))?;
        rx.await.map_err(|_| SubmitError::Unavailable("the batcher stopped".into()))?
    }
}

fn weight(c: &Command) -> usize {
    match c {
        Command::PutFileChunk { data, .. } => data.len(),
        _ => 256,
    }
}

async fn batcher(replica: Replica, mut rx: mpsc::Receiver<Pending>) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else { break };
        // Drain after getting the permit: while every permit is busy, commands accumulate.
        let (mut commands, mut replies) = (Vec::new(), Vec::new());
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(p) = next.take() {
            bytes += weight(&p.command);
            commands.push(p.command);
            replies.push(p.reply);
            if commands.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                next = rx.try_recv().ok();
            }
        }
        let replica = replica.clone();
        tokio::spawn(async move {
            match replica.write(Batch(commands)).await {
                Ok(result) => {
                    for (reply, r) in replies.into_iter().zip(result.0) {
                        let _ = reply.send(Ok(r));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, n = replies.len(), "batch not committed; nothing in it was acknowledged");
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
    tracing::debug!("batcher stopped: every log handle dropped");
}
