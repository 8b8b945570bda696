//! Replacing this node's Raft: on purpose ([`Replica::forget`]), or because its core stopped.
//!
//! openraft stops a core for good on a fatal error (a storage error it cannot tell from
//! damage, such as the "snapshot not found" fixed on 2026-12-01), and nothing started it
//! again: the node went on serving HTTP around a dead Raft, one voter short, until its process
//! was restarted. [`run`] opens a new Raft on the same store after a pause (openraft reads the
//! vote, log and state back from disk), again after every pause while it keeps failing. Both
//! replacements hold `Inner::swap`, and `Replica::shutdown` aborts `run` before it stops Raft.

use super::{open_raft, Replica, StartError};
use std::time::Duration;

/// How long a stopped core stays down before it is started again.
const PAUSE: Duration = Duration::from_secs(2);

impl Replica {
    /// Drops this node's copy of the replicated log and carries on as a blank node: stops
    /// Raft, deletes the log, state and snapshot (the vote stays), and starts a fresh Raft on
    /// the emptied store. Only for a node that no committed membership holds any more (see
    /// `membership::forget_if_dropped`): nobody needs its copy, and it keeps no user data.
    pub(crate) async fn forget(&self) -> Result<(), StartError> {
        let _swapping = self.inner.swap.lock().await;
        if let Err(e) = self.raft().shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        let store = self.inner.store.clone();
        // One WriteBatch: on failure the store is as it was, and Raft starts on it again.
        match tokio::task::spawn_blocking(move || crate::storage::raft::forget(&store)).await {
            Ok(Ok(())) => tracing::info!("dropped from the replicated log: its copy here is deleted"),
            Ok(Err(e)) => tracing::error!(error = %e, "cannot delete the copy of the log"),
            Err(e) => tracing::error!(error = %e, "cannot delete the copy of the log"),
        }
        self.reopen().await
    }

    async fn reopen(&self) -> Result<(), StartError> {
        let i = &self.inner;
        let raft = open_raft(i.id, &i.store, &i.network, &i.cfg, &i.on_apply, &i.installed, &i.leading).await?;
        i.raft.send_replace(raft);
        Ok(())
    }
}

/// Starts the Raft in use again whenever its core stops and nobody replaces it.
pub(super) async fn run(replica: Replica) {
    let mut rafts = replica.inner.raft.subscribe();
    loop {
        let mut metrics = rafts.borrow_and_update().metrics();
        tokio::select! {
            replaced = rafts.changed() => match replaced {
                Ok(()) => continue,
                Err(_) => return,
            },
            () = async { while metrics.changed().await.is_ok() {} } => {}
        }
        let _swapping = replica.inner.swap.lock().await;
        if rafts.has_changed().unwrap_or(true) {
            continue; // replaced on purpose while it stopped
        }
        tracing::error!(pause = ?PAUSE, "the Raft core stopped (the error is logged above); starting it again");
        tokio::time::sleep(PAUSE).await;
        if let Err(e) = replica.reopen().await {
            tracing::error!(error = %e, "cannot start Raft again");
        }
    }
}
