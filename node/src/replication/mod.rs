//! The command log in front of the state machine.
//!
//! Today the log is local: one writer thread takes every command submitted, groups the ones
//! that arrived together into one batch, applies the batch as ONE synced RocksDB WriteBatch
//! (group commit: one fsync for many writers) and answers each submitter. A one-node cluster
//! is exactly this: a one-voter group. Replicating the batch among storage peers (openraft)
//! replaces the "apply locally" step with "commit on a majority, then apply on every peer";
//! the submit interface stays.
//!
//! ```text
//! service --submit(Command)--> [bounded mpsc] --> writer thread
//!     ^                                            | drain <= MAX_BATCH, apply_batch, fsync
//!     +---------- oneshot reply <------------------+--> on_commit(notices) -> event hub
//! ```

pub mod raft_net;

use crate::storage::{applied_index_row, Notice, StateMachine, StorageError, Store};
use chorus_protocol::{Applied, Command, CommandError};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most commands in one batch (one WAL sync).
const MAX_BATCH: usize = 1024;
/// Most payload bytes in one batch (file chunks are large).
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Commands waiting for the writer before `submit` pushes back.
const QUEUE: usize = 8192;

/// Why a command could not be committed. Nothing was acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubmitError {
    /// The log cannot commit now (storage failed, no quorum, shutting down).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

type Reply = oneshot::Sender<Result<Result<Applied, CommandError>, SubmitError>>;

struct Pending {
    command: Command,
    reply: Reply,
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

/// Called after each durable batch with its notices and the count of new messages.
pub type OnCommit = Box<dyn Fn(&[Notice], u64) + Send + 'static>;

impl Log {
    /// Starts the writer thread. It ends when every [`Log`] handle is dropped.
    pub fn start(store: Arc<Store>, on_commit: OnCommit) -> std::io::Result<(Log, std::thread::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let handle =
            std::thread::Builder::new().name("chorus-writer".into()).spawn(move || writer(store, rx, on_commit))?;
        Ok((Log { tx }, handle))
    }

    /// Submits one command and waits until it is durable and applied.
    ///
    /// `Ok(Err(_))` is a deterministic refusal (nothing changed); `Err(_)` means the outcome is
    /// not known to have happened and nothing was acknowledged.
    pub async fn submit(&self, command: Command) -> Result<Result<Applied, CommandError>, SubmitError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { command, reply })
            .await
            .map_err(|_| SubmitError::Unavailable("the log is shut down".into()))?;
        rx.await.map_err(|_| SubmitError::Unavailable("the writer stopped".into()))?
    }
}

fn weight(c: &Command) -> usize {
    match c {
        Command::PutFileChunk { data, .. } => data.len(),
        _ => 256,
    }
}

fn writer(store: Arc<Store>, mut rx: mpsc::Receiver<Pending>, on_commit: OnCommit) {
    let mut index = match store.applied_index() {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the applied index; the writer refuses all commands");
            while let Some(p) = rx.blocking_recv() {
                let _ = p.reply.send(Err(SubmitError::Unavailable(e.to_string())));
            }
            return;
        }
    };
    let mut commands: Vec<Command> = Vec::with_capacity(MAX_BATCH);
    let mut replies: Vec<Reply> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
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
        match StateMachine::new(&store).apply_batch(&commands, vec![applied_index_row(index + 1)], true) {
            Ok(out) => {
                index += 1;
                on_commit(&out.notices, out.messages);
                for (reply, result) in replies.drain(..).zip(out.results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Err(e) => fail_batch(&mut replies, &e),
        }
        commands.clear();
    }
    tracing::debug!("writer stopped: every log handle dropped");
}

fn fail_batch(replies: &mut Vec<Reply>, e: &StorageError) {
    tracing::error!(error = %e, n = replies.len(), "batch failed; nothing in it was acknowledged");
    for reply in replies.drain(..) {
        let _ = reply.send(Err(SubmitError::Unavailable(e.to_string())));
    }
}
