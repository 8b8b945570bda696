//! A voter calls an election as soon as its leader's connection closes.

use super::Replica;
use openraft::ServerState;
use std::time::Duration;

/// How long the first voter gives the others' elections before it tries again.
const FIRST_VOTER_RETRY: Duration = Duration::from_millis(600);

/// A voter whose leader's connection closed (killed, crashed, restarted) calls an election at
/// once instead of waiting out the election timeout: the write pause after a leader dies is
/// then an election round, not a timeout. A frozen or partitioned leader keeps its connection
/// and is still found by the timeout.
///
/// How the rounds go (openraft 0.9): the lowest surviving voter's election is refused, since
/// the others still hold the dead leader's lease. But it leaves that voter a candidate with an
/// uncommitted vote, and a candidate grants a vote of the same term to a higher node id. So
/// the next voter, 300 ms later, usually wins. It loses if its log is shorter than the first
/// voter's (the dead leader's last entry reached only one follower). Then nobody has won,
/// and the first voter tries again at a higher term, which no lease blocks, instead of
/// waiting out its election timeout (0.75 - 1.5 s).
pub(super) async fn elect_on_leader_loss(replica: Replica) {
    let mut down = replica.inner.cluster.peer_down.subscribe();
    while down.changed().await.is_ok() {
        let Some(peer) = *down.borrow_and_update() else { continue };
        let (leader, voters) = {
            let m = replica.raft().metrics();
            let m = m.borrow();
            (m.current_leader, m.membership_config.membership().voter_ids().collect::<Vec<u64>>())
        };
        let Some(leader) = leader.filter(|l| replica.peer_of(*l) == Some(peer) && *l != replica.inner.id) else {
            continue;
        };
        // The lowest surviving voter goes first, the others 300 ms later (see above).
        let first = voters.iter().filter(|v| **v != leader).min() == Some(&replica.inner.id);
        if !voters.contains(&replica.inner.id) {
            continue;
        }
        if !first {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if replica.raft().metrics().borrow().current_leader != Some(leader) {
                continue; // someone took over
            }
        }
        tracing::info!(%peer, "the Raft leader's connection closed; calling an election");
        call_election(&replica).await;
        if first {
            tokio::time::sleep(FIRST_VOTER_RETRY).await;
            // Still a candidate: this node granted no one its vote and heard of no leader.
            if replica.raft().metrics().borrow().state == ServerState::Candidate {
                tracing::info!("no voter won the election after the leader's loss; calling another");
                call_election(&replica).await;
            }
        }
    }
}

async fn call_election(replica: &Replica) {
    if let Err(e) = replica.raft().trigger().elect().await {
        tracing::warn!(error = %e, "cannot start an election");
    }
}
