//! The Raft membership follows the coordinator's storage set.
//!
//! * Genesis: an assignment marked `genesis` (no member announced a log, and the coordinator
//!   never knew of one: `ClusterState::log_seen`, kept on disk here) makes each of its
//!   `genesis_voters` that has no log call `initialize` with that same set: identical first
//!   entries, so it does not matter which of them wins the first election. Coordinators keep
//!   the set while any of its peers is a member (`roles::genesis_voters`), so nodes named
//!   storage later join as learners instead of starting a second log.
//! * Afterwards only the Raft leader changes the membership, one change at a time: a new
//!   storage peer joins as a learner; once it has caught up it is promoted, and voters that
//!   lost the storage role are dropped in the same joint change, or before the newcomer
//!   joins if that keeps a majority (a change restarts a snapshot on its way to a learner).
//!   A change that would not keep a majority of the current voters is not attempted; one left
//!   half done is finished first.
//! * Every tick also refreshes the leader's status report (shown by `GET /api/v1/cluster`).

use super::raft_net::{self, Request, Response};
use super::{lock, Replica, StartError};
use crate::election::driver::ClusterState;
use crate::storage::raft::RaftNode;
use crate::storage::Store;
use chorus_protocol::api::{RaftPeerView, RaftView};
use libp2p::PeerId;
use openraft::{ChangeMembers, ServerState};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const TICK: Duration = Duration::from_millis(300);
/// A learner within this many entries of the leader's log is caught up.
const CAUGHT_UP: u64 = 64;
/// Longest wait for one membership change to commit.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// The Raft record of a peer: its PeerId only, so every node builds the same one (addresses
/// come from the overlay).
fn raft_node(peer: &PeerId) -> RaftNode {
    RaftNode { peer_id: peer.to_base58(), addrs: Vec::new() }
}

fn raft_nodes(peers: impl IntoIterator<Item = PeerId>) -> BTreeMap<u64, RaftNode> {
    peers.into_iter().map(|p| (raft_net::node_id(&p), raft_node(&p))).collect()
}

pub(super) async fn run(replica: Replica) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut log_seen_saved = replica.inner.cluster.log_seen.load(Ordering::Relaxed);
    loop {
        tick.tick().await;
        remember_log_seen(&replica, &mut log_seen_saved).await;
        let storage = raft_nodes(replica.storage_peers());
        let genesis = replica.inner.cluster.view().assignment.map(|a| a.assignment).filter(|a| a.genesis);
        // An older coordinator names no voters: its storage set starts the log, as it did then.
        let voters = match genesis {
            Some(a) if !a.genesis_voters.is_empty() => {
                raft_nodes(a.genesis_voters.iter().filter_map(|p| p.parse().ok()))
            }
            Some(_) => storage.clone(),
            None => BTreeMap::new(),
        };
        if voters.contains_key(&replica.inner.id) {
            initialize(&replica, voters).await;
        }
        if replica.raft().metrics().borrow().state == ServerState::Leader {
            if !storage.is_empty() {
                reconcile(&replica, &storage).await;
            }
            *lock(&replica.inner.leader_view) = Some(replica.status());
        } else if let Some(leader) = refresh_leader_view(&replica).await {
            forget_if_dropped(&replica, &leader).await;
        }
    }
}

/// Loads whether this node knows the cluster has a log ([`ClusterState::log_seen`]). Runs
/// before the election driver starts, so that a node restarting while every log holder is
/// down never issues a genesis.
pub(super) async fn recall_log_seen(store: &Arc<Store>, cluster: &ClusterState) -> Result<(), StartError> {
    let seen = crate::storage::raft::log_seen(store).await.map_err(|e| StartError::Storage(e.to_string()))?;
    cluster.log_seen.fetch_or(seen, Ordering::Relaxed);
    Ok(())
}

/// A member knows the cluster has a log; whoever knows keeps it on disk (once).
async fn remember_log_seen(replica: &Replica, saved: &mut bool) {
    let seen = &replica.inner.cluster.log_seen;
    if replica.is_member() {
        seen.store(true, Ordering::Relaxed);
    }
    if *saved || !seen.load(Ordering::Relaxed) {
        return;
    }
    match crate::storage::raft::remember_log_seen(&replica.inner.store).await {
        Ok(()) => *saved = true,
        Err(e) => tracing::warn!(error = %e, "cannot record that the cluster has a log"),
    }
}

async fn initialize(replica: &Replica, voters: BTreeMap<u64, RaftNode>) {
    let raft = replica.raft();
    if raft.is_initialized().await.unwrap_or(true) {
        return;
    }
    tracing::info!(voters = voters.len(), "genesis: starting the replicated log");
    if let Err(e) = raft.initialize(voters).await {
        tracing::warn!(error = %e, "genesis initialize refused");
    }
}

/// One step towards "voters == storage peers" (leader only).
async fn reconcile(replica: &Replica, storage: &BTreeMap<u64, RaftNode>) {
    let raft = replica.raft();
    let m = raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    if let [_, .., target] = membership.get_joint_config().as_slice() {
        // Not a change of ours in flight (`settle` awaits both steps before the next tick):
        // its leader stepped down, or our wait timed out, between the two steps. openraft
        // does not finish it by itself and no other change can start until it is finished.
        tracing::info!(?target, "finishing a membership change left half done");
        settle("finish membership change", raft.change_membership(target.clone(), false)).await;
        return;
    }
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let learners: BTreeSet<u64> = membership.learner_ids().collect();
    let last = m.last_log_index.unwrap_or(0);
    let matched = |id: &u64| m.replication.as_ref().and_then(|r| r.get(id).cloned().flatten()).map(|l| l.index);
    let promote: BTreeSet<u64> = learners
        .iter()
        .filter(|id| storage.contains_key(id) && matched(id).is_some_and(|i| i + CAUGHT_UP >= last))
        .copied()
        .collect();
    let drop_voters: BTreeSet<u64> = voters.iter().filter(|id| !storage.contains_key(id)).copied().collect();
    let stale_learners: BTreeSet<u64> = learners.iter().filter(|id| !storage.contains_key(id)).copied().collect();
    let newcomer = storage.iter().find(|(id, _)| !voters.contains(id) && !learners.contains(id));
    let next: BTreeSet<u64> = voters.union(&promote).filter(|id| !drop_voters.contains(id)).copied().collect();
    let keeps_majority = !next.is_empty() && next.intersection(&voters).count() > voters.len() / 2;
    // Each change restarts openraft's replication streams, and a snapshot on its way with
    // them (from its first chunk): so voters that lost the storage role are dropped before a
    // newcomer is added, not in the middle of its transfer.
    let voters_first = !drop_voters.is_empty() && keeps_majority;
    if let Some((&id, node)) = newcomer.filter(|_| !voters_first) {
        tracing::info!(peer = %node.peer_id, "adding storage peer as a learner");
        settle("add learner", raft.add_learner(id, node.clone(), false)).await;
    } else if !promote.is_empty() || !drop_voters.is_empty() {
        if !keeps_majority {
            tracing::warn!(?voters, ?next, "not changing voters: the change would not keep a majority");
            return;
        }
        tracing::info!(?voters, ?next, "changing voters");
        settle("change voters", raft.change_membership(next, false)).await;
    } else if !stale_learners.is_empty() {
        tracing::info!(?stale_learners, "dropping learners that are no longer storage peers");
        let change = ChangeMembers::RemoveNodes(stale_learners);
        settle("drop learners", raft.change_membership(change, false)).await;
    }
}

/// Waits (bounded) for one membership change to commit; failures are logged, and the next
/// tick tries again from the state Raft then reports.
async fn settle<T, E: std::fmt::Display>(what: &str, change: impl std::future::Future<Output = Result<T, E>>) {
    match tokio::time::timeout(CHANGE_TIMEOUT, change).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "{what} failed"),
        Err(_) => tracing::warn!("{what} did not commit in time (no quorum?)"),
    }
}

/// Asks the leader (or, while none is known, some storage peer) for its status: the report
/// shown in the cluster view, and for nodes whose Raft knows no leader, where it is. Returns the
/// report if it came from a leader.
async fn refresh_leader_view(replica: &Replica) -> Option<RaftView> {
    let Some(peer) = replica.target().filter(|p| *p != replica.inner.me) else {
        *lock(&replica.inner.leader_view) = None;
        return None;
    };
    let data = raft_net::encode(&Request::Status).ok()?;
    let reply = tokio::time::timeout(TICK, replica.inner.client.raft_request(peer, data)).await;
    let Ok(Ok(bytes)) = reply else {
        // A leader that died stays the hint of a node that sends no writes (only a failed
        // write clears it): forget it, so the next tick asks the storage peers in turn.
        lock(&replica.inner.hint).take_if(|h| *h == peer);
        return None;
    };
    let Ok(Response::Status(view)) = raft_net::decode::<Response>(&bytes) else { return None };
    // Used only while this node's Raft cannot name the leader (not a member, or forgotten).
    *lock(&replica.inner.hint) = view.leader.as_deref().and_then(|l| l.parse().ok()).filter(|l| *l != replica.inner.me);
    (view.state == "leader").then(|| {
        *lock(&replica.inner.leader_view) = Some((*view).clone());
        *view
    })
}

/// A node dropped from the replicated log forgets its copy: one that holds a log, that the
/// coordinator names, but not as a storage peer, and that a leader's COMMITTED membership (its
/// log index applied) leaves out. Every later membership descends from that one, so no
/// quorum will ever count on this copy again. A node that died as a storage peer, was
/// replaced, and came back is the usual case; without this it would keep its stale copy of
/// every user's data.
async fn forget_if_dropped(replica: &Replica, leader: &RaftView) {
    let me = replica.inner.me.to_base58();
    let committed = leader.membership_index > 0 && leader.membership_index <= leader.applied_index;
    let left_out = !leader.peers.is_empty() && !leader.peers.iter().any(|p| p.peer_id == me);
    // An assignment from before this node came back does not name it at all. The next one
    // may make it a storage peer again (a 3-node cluster has no one else to name): it then
    // rejoins with the log it holds and catches up from there, not from nothing.
    let assigned =
        replica.inner.cluster.view().assignment.is_some_and(|a| a.assignment.members.iter().any(|m| m.peer_id == me));
    if !(committed && left_out && assigned && replica.is_member())
        || replica.storage_peers().contains(&replica.inner.me)
    {
        return;
    }
    tracing::info!(membership_index = leader.membership_index, "the committed membership no longer holds this node");
    if let Err(e) = replica.forget().await {
        tracing::error!(error = %e, "cannot restart raft after dropping the log");
    }
}

impl Replica {
    /// This node's view of the log; on the leader with each peer's replication progress.
    pub fn status(&self) -> RaftView {
        let m = self.raft().metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let last = m.last_log_index.unwrap_or(0);
        let matched = |id: u64| {
            if id == self.inner.id {
                m.last_log_index
            } else {
                m.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten()).map(|l| l.index)
            }
        };
        let leader = m.state == ServerState::Leader;
        // Commit index: the highest index a majority of voters hold (leader only).
        let commit_index = if leader {
            let mut held: Vec<u64> = membership.voter_ids().map(|id| matched(id).unwrap_or(0)).collect();
            held.sort_unstable_by(|a, b| b.cmp(a));
            held.get(held.len() / 2).copied().unwrap_or(0)
        } else {
            0 // filled in from the leader's report by `cluster_status`
        };
        let peers = membership
            .nodes()
            .map(|(id, node)| {
                let matched_index = if leader { matched(*id) } else { None };
                RaftPeerView {
                    peer_id: node.peer_id.clone(),
                    voter: membership.voter_ids().any(|v| v == *id),
                    matched_index,
                    lag: matched_index.map(|i| commit_index.max(last).saturating_sub(i)),
                }
            })
            .collect();
        RaftView {
            node_id: self.inner.id,
            state: format!("{:?}", m.state).to_lowercase(),
            leader: self.leader().map(|p| p.to_base58()),
            term: m.current_term,
            commit_index,
            last_log_index: last,
            applied_index: m.last_applied.map_or(0, |l| l.index),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            purged_index: m.purged.map_or(0, |l| l.index),
            snapshots_installed: self.inner.installed.load(Ordering::Relaxed),
            snapshot_transfers: self.inner.transfers.load(Ordering::Relaxed),
            membership_index: m.membership_config.log_id().map_or(0, |l| l.index),
            log_seen: self.inner.cluster.log_seen.load(Ordering::Relaxed),
            peers,
        }
    }

    /// The status for `GET /api/v1/cluster`: this node's, with the leader's per-peer progress.
    pub fn cluster_status(&self) -> RaftView {
        let mut view = self.status();
        if view.state != "leader" {
            if let Some(l) = lock(&self.inner.leader_view).as_ref() {
                view.peers = l.peers.clone();
                view.commit_index = l.commit_index;
            }
        }
        view
    }
}
