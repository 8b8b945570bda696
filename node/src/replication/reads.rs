//! Linearizable reads on the leader: a read sees every write that was acknowledged anywhere
//! before the read began.
//!
//! An acknowledged write was applied by the leader that acknowledged it, but the leader serving
//! a read may be another one, in two ways:
//! * Just after an election the new leader holds its predecessor's last entries without
//!   knowing yet that they are committed, so it has not applied them. It learns that when its
//!   own first entry of the term commits. So a read waits until the leader has applied an
//!   entry of its current term (this costs nothing once the term is under way).
//! * A leader cut off from the others does not know that it was replaced. A follower that
//!   accepted an append refuses votes for `election_timeout_max` (1,500 ms) after it, so while
//!   a majority answered the leader less than [`LEASE_MS`] ago no other leader can exist (the
//!   lease). Past that, the read first confirms leadership with one heartbeat round to a
//!   majority (openraft's `get_read_log_id`, which also gives the index to wait for). Its
//!   heartbeats go through fresh connections, which `raft_net` never answers from a held commit
//!   notice.
//!
//! What is left: a leader process paused (SIGSTOP, a frozen VM) for more than a second may, in
//! the instant it resumes, answer a read from metrics taken before the pause (the usual caveat
//! of lease reads).

use super::Attempt;
use crate::storage::raft::TypeConfig;
use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{Raft, ServerState};
use std::time::Duration;

/// The leader's lease: a majority answered it this recently. The margin to the followers'
/// 1,500 ms covers metrics up to one tick (225 ms) old and commit notices `raft_net` answers
/// itself (they keep the last answer to within 100 ms of a real one).
pub(super) const LEASE_MS: u64 = 1000;

/// Waits until this leader has applied everything acknowledged before now, and at least
/// `min_index` (this node's own last acknowledged write). `Err` is what to answer instead.
/// The caller has already refused a leader that heard no majority for `QUORUM_LOST_MS`.
pub(super) async fn await_read_index(
    raft: &Raft<TypeConfig>,
    min_index: u64,
    remaining: Duration,
) -> Result<(), Attempt> {
    let (quorum_age, term) = {
        let m = raft.metrics();
        let m = m.borrow();
        (m.millis_since_quorum_ack, m.current_term)
    };
    let mut wanted = min_index;
    if quorum_age.is_none_or(|ms| ms > LEASE_MS) {
        wanted = wanted.max(confirm_leadership(raft, remaining).await?);
    }
    let applied = raft
        .wait(Some(remaining))
        .metrics(
            move |m| {
                m.state != ServerState::Leader
                    || m.current_term != term
                    || m.last_applied.is_some_and(|l| l.leader_id.term == term && l.index >= wanted)
            },
            "applied the read index",
        )
        .await;
    match applied {
        Ok(m) if m.state == ServerState::Leader && m.current_term == term => Ok(()),
        Ok(_) => Err(Attempt::Retry(None)),
        Err(_) => Err(Attempt::Fail("the leader has not applied up to the read index in time".into())),
    }
}

/// One heartbeat round to a majority: the read index (commit index, or the term's first entry).
async fn confirm_leadership(raft: &Raft<TypeConfig>, remaining: Duration) -> Result<u64, Attempt> {
    match tokio::time::timeout(remaining, raft.get_read_log_id()).await {
        Err(_) => Err(Attempt::Fail("no majority confirmed the leader in time (no quorum?)".into())),
        Ok(Ok((read_log_id, _applied))) => Ok(read_log_id.map_or(0, |l| l.index)),
        Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
            Err(Attempt::Retry(f.leader_node.and_then(|n| n.peer_id.parse().ok())))
        }
        // A heartbeat answered late or a vote moved on: ask again (within the deadline).
        Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => Err(Attempt::Retry(None)),
        Ok(Err(e)) => Err(Attempt::Fail(e.to_string())),
    }
}
