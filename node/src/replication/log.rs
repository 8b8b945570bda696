//! Batching in front of the replicated log. Writes: commands that arrive together share one
//! log entry, so one fsync (on each storage peer) serves many writers (group commit). Reads:
//! queries that arrive together share one round trip to the leader. Only a few batches are in
//! flight at once; while they are, new items pile up into the next, bigger batch, so batches
//! grow with the load (Nagle-style: an idle log sends a lone command at once).
//!
//! ```text
//! submit(Command) --> [bounded mpsc] --> batcher --(permit, drain <= MAX_BATCH)--> task: Replica::write
//!        ^                                                                           |
//!        +--------------------------- oneshot reply per command <-------------------+
//! ```

use super::{Replica, SubmitError};
use crate::storage::raft::Batch;
use crate::storage::read::Query;
use chorus_protocol::{Applied, Command, CommandError};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Most items in one batch (one log entry, or one read round trip).
const MAX_BATCH: usize = 1024;
/// Most payload bytes in one write batch (file chunks are large; entries travel in 64 MiB frames).
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Items waiting for a batcher before `submit` pushes back.
const QUEUE: usize = 8192;
/// Write batches this node has at the leader at once. Few: while they are out, new commands
/// pile up into the next batch, so under load batches grow and the cost per command falls.
const WRITES_IN_FLIGHT: usize = 2;
/// Read batches this node has at the leader at once (reads are cheap to run side by side).
const READS_IN_FLIGHT: usize = 4;
/// Merged entries the leader commits at once. Two: the next entry is appended and synced on
/// the leader while the previous one's appends are out and while it applies, and since
/// openraft sends a follower one append at a time, whatever arrives meanwhile still piles up
/// into few, large entries (20 commands each in the bench's closed loop, 21 with one in flight;
/// paced send p50 6.1 ms against 8.0: BENCHMARKS.md, session 14).
pub(super) const MERGES_IN_FLIGHT: usize = 2;

type Outcome = Result<Result<Applied, CommandError>, SubmitError>;

struct Pending<I, O> {
    item: I,
    reply: oneshot::Sender<Result<O, SubmitError>>,
}

/// Groups items submitted together into one batch; `in_flight` batches run at once, and while
/// they do, new items pile up into the next, bigger batch.
pub(super) struct Batcher<I, O> {
    tx: mpsc::Sender<Pending<I, O>>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone() }
    }
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the task; `commit` answers a batch with one output per item, in order.
    pub(super) fn start<F, Fut>(in_flight: usize, weight: fn(&I) -> usize, commit: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<O>, SubmitError>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(rx, in_flight, weight, commit));
        Self { tx }
    }

    pub(super) async fn submit(&self, item: I) -> Result<O, SubmitError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Pending { item, reply }).await.map_err(|_| SubmitError::Unavailable("shutting down".into()))?;
        rx.await.map_err(|_| SubmitError::Unavailable("the batcher stopped".into()))?
    }
}

async fn run<I, O, F, Fut>(mut rx: mpsc::Receiver<Pending<I, O>>, in_flight: usize, weight: fn(&I) -> usize, commit: F)
where
    I: Send + 'static,
    O: Send + 'static,
    F: Fn(Vec<I>) -> Fut,
    Fut: Future<Output = Result<Vec<O>, SubmitError>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(in_flight));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else { break };
        // Drain after getting the permit: while every permit is busy, items accumulate.
        let (mut items, mut replies) = (Vec::new(), Vec::new());
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(p) = next.take() {
            bytes += weight(&p.item);
            items.push(p.item);
            replies.push(p.reply);
            if items.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                next = rx.try_recv().ok();
            }
        }
        let done = commit(items);
        tokio::spawn(async move {
            match done.await {
                Ok(outputs) => {
                    for (reply, out) in replies.into_iter().zip(outputs) {
                        let _ = reply.send(Ok(out));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, n = replies.len(), "batch failed; nothing in it was acknowledged");
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
}

/// The node's door to the replicated log: batched writes and batched reads. Cheap to clone.
#[derive(Clone)]
pub struct Log {
    writes: Batcher<Command, Result<Applied, CommandError>>,
    reads: Batcher<Query, Result<Vec<u8>, String>>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").finish_non_exhaustive()
    }
}

impl Log {
    /// Starts the write and read batchers. They end when every [`Log`] handle is dropped.
    pub fn start(replica: Replica) -> Log {
        let r = replica.clone();
        let writes = Batcher::start(WRITES_IN_FLIGHT, weight, move |commands| {
            let r = r.clone();
            async move { Ok(r.write(Batch(commands)).await?.0) }
        });
        let reads = Batcher::start(
            READS_IN_FLIGHT,
            |_| 1,
            move |queries| {
                let r = replica.clone();
                async move { r.read(queries).await }
            },
        );
        Log { writes, reads }
    }

    /// Submits one command and waits until a majority holds it and the leader applied it.
    ///
    /// `Ok(Err(_))` is a deterministic refusal (nothing changed); `Err(_)` means nothing was
    /// acknowledged (the command may or may not commit later).
    pub async fn submit(&self, command: Command) -> Outcome {
        self.writes.submit(command).await
    }

    /// Reads from the leader (after it applied this node's acknowledged writes). `T` is the
    /// answer type [`Query`] documents for the variant.
    pub async fn read<T: serde::de::DeserializeOwned>(&self, query: Query) -> Result<T, SubmitError> {
        let bytes = self.reads.submit(query).await?.map_err(SubmitError::Unavailable)?;
        cbor4ii::serde::from_slice(&bytes).map_err(|e| SubmitError::Unavailable(format!("undecodable answer: {e}")))
    }
}

/// A command's share of a batch: its file bytes, or 4 KiB (so a 4 MiB batch holds at most
/// 1024 commands, also when the leader merges batches).
pub(super) fn weight(c: &Command) -> usize {
    match c {
        Command::PutFileChunk { data, .. } => data.len(),
        _ => 4096,
    }
}
