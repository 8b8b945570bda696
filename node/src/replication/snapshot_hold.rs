//! A voter receiving a snapshot from its leader holds off elections while the chunks come.
//!
//! openraft 0.9 sends no heartbeat to a peer while a snapshot to it is in flight, and the
//! chunks do not renew the receiver's leader lease. So a voter whose snapshot takes longer
//! than an election timeout (a store of a few hundred MiB on this hardware) started an
//! election, the leader stepped down and won again, and the transfer began over from the first
//! chunk: forever, with the group unable to commit if that voter was needed for a majority.
//! A chunk from the current leader proves the leader alive (the Raft paper resets the
//! election timer on InstallSnapshot as on AppendEntries), so while chunks keep coming, and
//! while the last one installs, this node does not start elections. When they stop for
//! [`QUIET`], elections resume; the node still grants votes to other candidates throughout.

use super::lock;
use crate::storage::raft::TypeConfig;
use openraft::raft::{InstallSnapshotRequest, InstallSnapshotResponse};
use openraft::Raft;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long after the last chunk (or its install) elections stay held off.
const QUIET: Duration = Duration::from_secs(3);

type InstallResult =
    Result<InstallSnapshotResponse<u64>, openraft::error::RaftError<u64, openraft::error::InstallSnapshotError>>;

/// Shared by every inbound request task of one node.
#[derive(Default)]
pub(super) struct Hold {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Chunks being received or installed right now.
    in_flight: usize,
    /// When the last chunk arrived or finished.
    last: Option<Instant>,
    /// A watcher is running, so elections are off.
    held: bool,
}

impl Hold {
    /// Hands one InstallSnapshot chunk to Raft, holding elections off if it comes from the
    /// leader this node follows (or a newer one).
    pub(super) async fn install(
        self: &Arc<Self>,
        raft: &Raft<TypeConfig>,
        req: InstallSnapshotRequest<TypeConfig>,
    ) -> InstallResult {
        let from_leader = req.vote.is_committed() && req.vote >= raft.metrics().borrow().vote;
        if !from_leader {
            return raft.install_snapshot(req).await;
        }
        self.begin(raft);
        let result = raft.install_snapshot(req).await;
        let mut s = lock(&self.state);
        s.in_flight -= 1;
        s.last = Some(Instant::now());
        result
    }

    fn begin(self: &Arc<Self>, raft: &Raft<TypeConfig>) {
        let mut s = lock(&self.state);
        s.in_flight += 1;
        s.last = Some(Instant::now());
        if !s.held {
            s.held = true;
            raft.runtime_config().elect(false);
            tracing::info!("receiving a snapshot from the leader: elections held off");
            tokio::spawn(self.clone().release_when_quiet(raft.clone()));
        }
    }

    async fn release_when_quiet(self: Arc<Self>, raft: Raft<TypeConfig>) {
        loop {
            tokio::time::sleep(QUIET / 4).await;
            let mut s = lock(&self.state);
            if s.in_flight == 0 && s.last.is_none_or(|t| t.elapsed() >= QUIET) {
                s.held = false;
                raft.runtime_config().elect(true);
                tracing::info!("no snapshot chunk for {QUIET:?}: elections resume");
                return;
            }
        }
    }
}
