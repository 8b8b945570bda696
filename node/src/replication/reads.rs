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
//! The lease is judged from Raft's metrics, which openraft republishes on every pass of its
//! core loop (at least every tick, 225 ms), each with the age of the last majority answer
//! measured then. A leader process paused (SIGSTOP, a frozen VM) resumes holding metrics from
//! before the pause, which would make a lease long gone look fresh in the instant before Raft
//! runs again. So the age counted is that of the metrics' too: how long ago `watch_state` saw
//! them published. After a pause that is the pause, and the read confirms leadership first.
//! What is left is a pause in the moment between openraft publishing metrics and
//! `watch_state` seeing them (microseconds on an idle worker).

use super::Attempt;
use crate::storage::raft::TypeConfig;
use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{Raft, ServerState};
use std::time::Duration;

/// The leader's lease: a majority answered it this recently. The margin to the followers'
/// 1,500 ms covers a late `watch_state` and commit notices `raft_net` answers itself (they
/// keep the last answer to within 100 ms of a real one).
pub(super) const LEASE_MS: u64 = 1000;

/// Milliseconds since this process first asked: a clock for ages.
pub(super) fn now_ms() -> u64 {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
}

/// Whether the leader may answer from its lease: a majority answered it `quorum_ms` before
/// metrics that were published `stale` ago.
pub(super) fn within_lease(quorum_ms: Option<u64>, stale: Duration) -> bool {
    quorum_ms.is_some_and(|ms| ms.saturating_add(stale.as_millis() as u64) <= LEASE_MS)
}

/// Waits until this leader has applied everything acknowledged before now, and at least
/// `min_index` (this node's own last acknowledged write); `stale`: how long ago its current
/// metrics were published. `Err` is what to answer instead. The caller has already refused a
/// leader that heard no majority for `QUORUM_LOST_MS`.
pub(super) async fn await_read_index(
    raft: &Raft<TypeConfig>,
    min_index: u64,
    stale: Duration,
    remaining: Duration,
) -> Result<(), Attempt> {
    let (quorum_age, term) = {
        let m = raft.metrics();
        let m = m.borrow();
        (m.millis_since_quorum_ack, m.current_term)
    };
    let mut wanted = min_index;
    if !within_lease(quorum_age, stale) {
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

#[cfg(test)]
mod tests {
    use super::within_lease;
    use std::time::Duration;

    #[test]
    fn metrics_from_before_a_pause_do_not_keep_the_lease() {
        let ms = Duration::from_millis;
        assert!(within_lease(Some(100), ms(50)), "fresh metrics, a recent majority");
        assert!(!within_lease(None, ms(0)), "no majority heard yet");
        assert!(!within_lease(Some(1200), ms(0)), "the majority's answer is too old");
        assert!(!within_lease(Some(100), ms(3000)), "metrics published before a 3 s pause");
        assert!(within_lease(Some(600), ms(400)));
        assert!(!within_lease(Some(600), ms(401)));
    }
}
