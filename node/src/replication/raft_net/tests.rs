//! A Raft group of real storage stacks (RocksDB in temp dirs) talking over real libp2p
//! overlays on 127.0.0.1: replication, a snapshot catch-up of a new member, leader loss.

use super::*;
use crate::replication::ReplicaConfig;
use crate::storage::raft::Batch;
use crate::testkit::RaftPeer as Peer;
use chorus_protocol::{ChatId, Command};
use openraft::ServerState;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

async fn peer(bootstrap: Vec<libp2p::Multiaddr>) -> Peer {
    Peer::start(bootstrap).await
}

fn msg(n: u64) -> Command {
    Command::SendMessage {
        chat_id: ChatId::dm("alice", "bob"),
        id: format!("{n:032x}"),
        sender: "alice".into(),
        text: format!("m{n}"),
        files: vec![],
        client_msg_id: None,
        sent_at: n,
    }
}

fn setup() -> Vec<Command> {
    let account =
        |n: &str| Command::CreateAccount { username: n.into(), display_name: None, password_hash: "x".into(), at: 1 };
    vec![
        account("alice"),
        account("bob"),
        Command::SendFriendRequest { from: "alice".into(), to: "bob".into(), at: 2 },
        Command::RespondFriendRequest { from: "alice".into(), to: "bob".into(), accept: true, at: 3 },
    ]
}

/// The peer the group elected.
async fn leader<'a>(peers: &[&'a Peer]) -> &'a Peer {
    let m = peers[0]
        .raft
        .wait(Some(Duration::from_secs(20)))
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await
        .unwrap();
    peers.iter().find(|p| Some(p.id) == m.current_leader).expect("the leader is one of the peers")
}

/// Three storage stacks over libp2p, initialized as one Raft group.
async fn group_of_three() -> [Peer; 3] {
    group_of_three_with(Peer::config()).await
}

/// The same with replication settings `cfg`.
async fn group_of_three_with(cfg: ReplicaConfig) -> [Peer; 3] {
    let start = |bootstrap| Peer::start_configured(bootstrap, Arc::new(|_| {}), cfg.clone());
    let p0 = start(vec![]).await;
    let p1 = start(vec![p0.addr.clone()]).await;
    let p2 = start(vec![p0.addr.clone()]).await;
    let members: BTreeMap<u64, RaftNode> = [&p0, &p1, &p2].iter().map(|p| (p.id, p.node.clone())).collect();
    p0.raft.initialize(members).await.unwrap();
    [p0, p1, p2]
}

async fn wait_applied(p: &Peer, index: u64) {
    p.raft.wait(Some(Duration::from_secs(20))).applied_index_at_least(Some(index), "caught up").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicates_over_libp2p_snapshots_new_members_and_survives_leader_loss() {
    let [p0, p1, p2] = group_of_three().await;
    let all = [&p0, &p1, &p2];
    let lead = leader(&all).await;

    // Group-committed batches through the leader; every command gets its result.
    let r = lead.raft.client_write(Batch(setup())).await.unwrap();
    assert!(r.data.0.iter().all(Result::is_ok), "{:?}", r.data);
    let mut last_id = r.log_id;
    for b in 0..20 {
        let r = lead.raft.client_write(Batch((0..10).map(|i| msg(b * 10 + i)).collect())).await.unwrap();
        assert_eq!(r.data.0.len(), 10);
        last_id = r.log_id;
    }
    let last = last_id.index;
    for p in &all {
        wait_applied(p, last).await;
    }
    let digest = lead.store.digest().unwrap();
    for p in &all {
        assert_eq!(p.store.digest().unwrap(), digest, "every storage peer holds the same state");
    }
    let msgs = p1.store.messages(&ChatId::dm("alice", "bob"), 0, 1000).unwrap();
    assert_eq!(msgs.iter().map(|m| m.seq).collect::<Vec<_>>(), (1..=200).collect::<Vec<u64>>());

    // Snapshot and purge the log, then a new member must catch up from the snapshot.
    lead.raft.trigger().snapshot().await.unwrap();
    lead.raft.wait(Some(Duration::from_secs(20))).snapshot(last_id, "snapshot").await.unwrap();
    lead.raft.trigger().purge_log(last).await.unwrap();
    lead.raft
        .wait(Some(Duration::from_secs(20)))
        .metrics(|m| m.purged.is_some_and(|p| p.index >= last), "purged")
        .await
        .unwrap();
    let p3 = peer(vec![p0.addr.clone()]).await;
    lead.raft.add_learner(p3.id, p3.node.clone(), true).await.unwrap();
    wait_applied(&p3, last).await;
    assert_eq!(p3.store.digest().unwrap(), digest, "the new member caught up by snapshot");
    let voters: BTreeSet<u64> = [p0.id, p1.id, p2.id, p3.id].into();
    lead.raft.change_membership(voters, false).await.unwrap();

    // The leader goes away: the others elect a new one and keep accepting writes. Leadership
    // can move again while they settle (two candidates at once on a loaded machine), so the
    // write goes to whichever of them says it leads, until one takes it; its client id makes
    // a second copy of it (committed after all by a leader that lost its answer) a no-op.
    lead.replica.shutdown().await;
    let rest: Vec<&Peer> = [&p0, &p1, &p2, &p3].into_iter().filter(|p| p.id != lead.id).collect();
    let mut write = msg(1000);
    if let Command::SendMessage { client_msg_id, .. } = &mut write {
        *client_msg_id = Some("after-the-leader-loss".into());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let index = loop {
        let leading = rest.iter().find(|p| p.raft.metrics().borrow().state == ServerState::Leader);
        if let Some(p) = leading {
            if let Ok(r) = p.raft.client_write(Batch(vec![write.clone()])).await {
                break r.log_id.index;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no new leader took a write");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for p in &rest {
        wait_applied(p, index).await;
        let msgs = p.store.messages(&ChatId::dm("alice", "bob"), 0, 1000).unwrap();
        assert_eq!(msgs.len(), 201);
        assert_eq!(msgs.last().unwrap().seq, 201);
    }
}

/// A core that stops on its own (openraft does so on a fatal storage error; `shutdown` of the
/// bare Raft stands in for one here) is started again on the same store and rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_core_that_stopped_on_its_own_starts_again_and_catches_up() {
    let [p0, p1, p2] = group_of_three().await;
    let all = [&p0, &p1, &p2];
    let lead = leader(&all).await;
    let r = lead.raft.client_write(Batch(setup())).await.unwrap();
    let follower = all.into_iter().find(|p| p.id != lead.id).unwrap();
    wait_applied(follower, r.log_id.index).await;
    follower.raft.shutdown().await.unwrap();
    let r = lead.raft.client_write(Batch(vec![msg(1)])).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while follower.replica.raft().metrics().borrow().last_applied.is_none_or(|l| l.index < r.log_id.index) {
        assert!(std::time::Instant::now() < deadline, "the stopped Raft was not started again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(follower.replica.raft().metrics().borrow().state, ServerState::Follower);
    assert_eq!(follower.store.digest().unwrap(), lead.store.digest().unwrap());
}

/// Uploads make entries large. A log that grew past `snapshot_log_bytes` is snapshotted and
/// purged on every storage peer (the test kit, like a node by default, sets no entry count;
/// no log is kept before the snapshot here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_of_large_entries_is_snapshotted_and_purged_by_its_bytes() {
    use sha2::{Digest, Sha256};
    let config = ReplicaConfig { snapshot_log_bytes: 4 << 20, retain_log_bytes: 0, ..Peer::config() };
    let [p0, p1, p2] = group_of_three_with(config).await;
    let all = [&p0, &p1, &p2];
    let lead = leader(&all).await;
    let r = lead.raft.client_write(Batch(setup())).await.unwrap();
    for p in &all {
        wait_applied(p, r.log_id.index).await;
        assert!(p.raft.metrics().borrow().snapshot.is_none(), "a few small entries: no snapshot");
    }
    for i in 0..6u8 {
        let data = vec![i; 1 << 20];
        let hash = hex::encode(Sha256::digest(&data));
        let r = lead.raft.client_write(Batch(vec![Command::PutFileChunk { hash, data }])).await.unwrap();
        assert!(r.data.0.iter().all(Result::is_ok), "{:?}", r.data);
    }
    for p in &all {
        p.raft
            .wait(Some(Duration::from_secs(20)))
            .metrics(|m| m.snapshot.is_some() && m.purged.is_some(), "a snapshot and a purged log")
            .await
            .unwrap();
    }
}

/// The leader holds each commit notice for the next append to carry (`hold_commit_notice`).
/// With no next append, no heartbeats and no elections, the held notice alone must tell the
/// followers, or they never apply the entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_commit_notice_reaches_followers_when_no_append_follows() {
    let [p0, p1, p2] = group_of_three().await;
    let all = [&p0, &p1, &p2];
    let lead = leader(&all).await;
    for p in &all {
        p.raft.runtime_config().heartbeat(false);
        p.raft.runtime_config().elect(false);
    }
    for (n, batch) in [setup(), vec![msg(1)], vec![msg(2)]].into_iter().enumerate() {
        let r = lead.raft.client_write(Batch(batch)).await.unwrap();
        for p in &all {
            wait_applied(p, r.log_id.index).await;
        }
        let stored = all.iter().map(|p| p.store.messages(&ChatId::dm("alice", "bob"), 0, 10).unwrap().len());
        assert!(stored.into_iter().all(|len| len == n), "write {n} applied everywhere");
    }
}

/// A read is answered within the leader's lease, past it only after a majority confirmed the
/// leader, and not at all by a leader whose followers are gone (elections are off here, so no
/// rival ever tells it that it lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_reads_within_its_lease_or_once_a_majority_confirms_it() {
    use crate::replication::reads::LEASE_MS;
    let [p0, p1, p2] = group_of_three().await;
    let all = [&p0, &p1, &p2];
    let lead = leader(&all).await;
    let r = lead.raft.client_write(Batch(setup())).await.unwrap();
    assert!(read_gate(lead, r.log_id.index).await, "within the lease");

    for p in &all {
        p.raft.runtime_config().heartbeat(false);
        p.raft.runtime_config().elect(false);
    }
    let lease_over =
        |m: &openraft::RaftMetrics<u64, RaftNode>| m.millis_since_quorum_ack.is_some_and(|ms| ms > LEASE_MS);
    lead.raft.wait(Some(Duration::from_secs(10))).metrics(lease_over, "the lease to run out").await.unwrap();
    assert!(read_gate(lead, 0).await, "confirmed by a heartbeat round");

    for p in all.iter().filter(|p| p.id != lead.id) {
        p.replica.shutdown().await;
    }
    assert!(!read_gate(lead, 0).await, "a cut-off leader answered a read");
}

/// Whether `lead` answers a read as the leader, asking again while it says "try again" (as
/// `Replica::route` does) for up to 10 s.
async fn read_gate(lead: &Peer, min_index: u64) -> bool {
    use crate::replication::{Attempt, Op};
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let read = Op::Read { queries: Vec::new(), min_index };
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        match lead.replica.local(&read, remaining).await {
            Attempt::Done(_) => return true,
            Attempt::Retry(_) if !remaining.is_zero() => tokio::time::sleep(Duration::from_millis(30)).await,
            Attempt::Retry(_) | Attempt::Fail(_) => return false,
        }
    }
}

#[test]
fn the_last_snapshot_chunk_waits_for_an_install_that_grows_with_the_snapshot() {
    let gib = 1u64 << 30;
    assert_eq!(chunk_ttl(gib, 3 << 20, false), CHUNK_TTL, "a chunk in the middle: the plain deadline");
    assert_eq!(chunk_ttl(0, 1024, true), CHUNK_TTL, "a small snapshot installs within it");
    // 2 GiB at 8 MiB/s: the ~20 - 30 s this disk needs to install it fit, where 10 s did not.
    assert_eq!(chunk_ttl(2 * gib - (3 << 20), 3 << 20, true), CHUNK_TTL + Duration::from_secs(256));
}
