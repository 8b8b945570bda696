//! Multi-process cluster tests: real `chorus-node` processes on 127.0.0.1 (free ports, temp
//! dirs) form a cluster over libp2p, elect the highest PeerId with Chang-Roberts, and hold a
//! validly signed role assignment; the coordinator's `kill -9` gives a new coordinator and a
//! new assignment on every survivor; a restarted node rejoins without taking over; forged,
//! replayed and self-appointed assignments are refused.

use chorus_node::overlay::{self, OverlayConfig};
use chorus_node::roles::{self, sign, Candidate};
use chorus_node::testkit::{signal, LocalCluster};
use chorus_protocol::api::ElectionStats;
use chorus_protocol::cluster::{ControlMsg, Role, SignedAssignment, CONTROL_TOPIC};
use libp2p::identity::Keypair;
use libp2p::PeerId;
use std::time::{Duration, Instant};

fn max_peer(ids: impl IntoIterator<Item = String>) -> String {
    ids.into_iter().max_by_key(|p| p.parse::<PeerId>().unwrap().to_bytes()).unwrap()
}

/// Checks the signature and that roles follow the policy for `n` nodes.
fn check_assignment(signed: &SignedAssignment, n: usize) {
    let signer = sign::verify(signed).expect("valid signature");
    assert_eq!(signer.to_base58(), signed.assignment.coordinator);
    let count = |r: &str| signed.assignment.members.iter().filter(|m| m.roles.iter().any(|x| x.as_str() == r)).count();
    assert_eq!(signed.assignment.members.len(), n);
    assert_eq!(count("storage"), n.min(3));
    assert!(count("input") >= 1);
    assert!(signed.assignment.members.iter().all(|m| !m.roles.is_empty() && m.http.is_some()));
}

#[test]
fn five_nodes_elect_fail_over_and_rejoin() {
    let mut c = LocalCluster::start(5, &[]);
    let (coordinator, epoch) = c.wait_settled(Duration::from_secs(30));
    let ids: Vec<String> = c.views().into_iter().map(|(_, v)| v.this.peer_id).collect();
    assert_eq!(coordinator, max_peer(ids.clone()), "Chang-Roberts elects the highest PeerId");
    for (_, v) in c.views() {
        check_assignment(v.assignment.as_ref().unwrap(), 5);
        assert_eq!(v.assignment.as_ref().unwrap().assignment.epoch, epoch);
    }
    // The first assignment is exactly the policy applied to the five members.
    let first = c.views()[0].1.assignment.clone().unwrap().assignment;
    let candidates: Vec<Candidate> = first
        .members
        .iter()
        .map(|m| Candidate {
            peer_id: m.peer_id.parse().unwrap(),
            http: m.http.clone(),
            no_storage: false,
            raft_member: false,
        })
        .collect();
    let expected = roles::assign(&candidates, &[], 3);
    let got: Vec<(PeerId, Vec<Role>)> =
        first.members.iter().map(|m| (m.peer_id.parse().unwrap(), m.roles.clone())).collect();
    assert_eq!(got, expected);

    // kill -9 the coordinator: the survivors elect the next highest and re-assign.
    let dead = c.index_of(&coordinator).unwrap();
    let killed_at = Instant::now();
    c.kill9(dead);
    let (next, next_epoch) = c.wait_settled(Duration::from_secs(20));
    eprintln!("failover: new coordinator and assignment on all survivors after {:?}", killed_at.elapsed());
    let survivors: Vec<String> = ids.iter().filter(|p| **p != coordinator).cloned().collect();
    assert_eq!(next, max_peer(survivors), "the highest survivor leads");
    assert!(next_epoch > epoch);
    for (_, v) in c.views() {
        check_assignment(v.assignment.as_ref().unwrap(), 4);
    }

    // The old coordinator (still the highest PeerId) restarts and rejoins as a follower.
    c.restart(dead);
    let (after, after_epoch) = c.wait_settled(Duration::from_secs(20));
    assert_eq!(after, next, "a rejoining node does not take over a live coordinator");
    assert!(after_epoch > next_epoch, "its arrival is a membership change");
    for (_, v) in c.views() {
        check_assignment(v.assignment.as_ref().unwrap(), 5);
    }
}

/// A libp2p peer of our own in the test process, to publish what an attacker would.
async fn attacker(seed: &str) -> (Keypair, overlay::Client) {
    let key = Keypair::generate_ed25519();
    let cfg = OverlayConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap: vec![seed.parse().unwrap()],
        mdns: false,
        election_timeout: Duration::from_secs(2),
    };
    let (client, mut events, _raft, event_loop) = overlay::new(key.clone(), cfg).unwrap();
    tokio::spawn(event_loop.run());
    let c2 = client.clone();
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if let overlay::Event::Gossip { id, propagation, .. } = ev {
                c2.validate(id, propagation, libp2p::gossipsub::MessageAcceptance::Accept).await;
            }
        }
    });
    (key, client)
}

async fn publish(client: &overlay::Client, msg: &ControlMsg) {
    let data = serde_json::to_vec(msg).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    // Publishing fails until a peer's subscription has been seen.
    while client.publish(CONTROL_TOPIC, data.clone()).await.is_err() {
        assert!(Instant::now() < deadline, "could not publish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn total(c: &LocalCluster, f: fn(&ElectionStats) -> u64) -> u64 {
    c.views().iter().map(|(_, v)| f(v.election.as_ref().unwrap())).sum()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn forged_replayed_and_self_appointed_assignments_are_refused() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = LocalCluster::start(3, &[]);
    let (coordinator, epoch) = c.wait_settled(Duration::from_secs(30));
    let genuine = c.views()[0].1.assignment.clone().unwrap();
    let (key, client) = rt.block_on(attacker(&c.seed));

    // 1. Forged: claims the real coordinator, signed with another key.
    let mut forged = genuine.assignment.clone();
    forged.epoch = epoch + 100;
    let forged = sign::sign(forged, &key).unwrap();
    assert!(sign::verify(&forged).is_err());
    rt.block_on(publish(&client, &ControlMsg::Assignment(forged.clone())));
    wait_until("the forgery to be rejected", || total(&c, |s| s.rejected_forged) >= 1);

    // 2. Self-appointed: validly signed by a peer that is not the coordinator.
    let mut own = forged.assignment.clone();
    own.coordinator = key.public().to_peer_id().to_base58();
    let stale_before = total(&c, |s| s.ignored_stale);
    rt.block_on(publish(&client, &ControlMsg::Assignment(sign::sign(own, &key).unwrap())));
    wait_until("the self-appointed assignment to be ignored", || total(&c, |s| s.ignored_stale) > stale_before);

    // 3. Replayed: the cluster has moved to a newer epoch (the attacker's own arrival is a
    // membership change), and the old, genuine assignment is re-sent.
    wait_until("a new epoch", || c.views().iter().all(|(_, v)| v.epoch > epoch));
    let stale_before = total(&c, |s| s.ignored_stale);
    rt.block_on(publish(&client, &ControlMsg::Assignment(genuine.clone())));
    wait_until("the replay to be ignored", || total(&c, |s| s.ignored_stale) > stale_before);

    // Nobody moved: same coordinator, an epoch from it, no attacker in charge.
    for (_, v) in c.views() {
        assert_eq!(v.coordinator.as_deref(), Some(coordinator.as_str()));
        let a = v.assignment.unwrap();
        assert_eq!(a.assignment.coordinator, coordinator);
        assert!(a.assignment.epoch > epoch && a.assignment.epoch < epoch + 100);
        sign::verify(&a).unwrap();
    }
}

#[test]
fn no_storage_nodes_never_store_and_a_frozen_coordinator_is_replaced() {
    // Two of four nodes refuse storage: the two others are the only storage peers possible.
    let mut c = LocalCluster::start(2, &[]);
    for _ in 0..2 {
        let d = tempfile::tempdir().unwrap();
        c.nodes.push(Some(chorus_node::testkit::NodeProc::start(d.path(), &["--bootstrap", &c.seed, "--no-storage"])));
        c.dirs.push(d);
    }
    let (coordinator, epoch) = c.wait_settled(Duration::from_secs(30));
    let no_storage: Vec<String> = c.views().into_iter().filter(|(i, _)| *i >= 2).map(|(_, v)| v.this.peer_id).collect();
    let a = c.views()[0].1.assignment.clone().unwrap().assignment;
    for m in &a.members {
        let is_storage = m.roles.contains(&Role::Storage);
        assert_eq!(is_storage, !no_storage.contains(&m.peer_id), "{m:?}");
    }

    // SIGSTOP the coordinator: its sockets stay open, so only the missing heartbeats (2 s)
    // reveal it. The others elect a new coordinator; after SIGCONT the old one yields.
    let victim = c.index_of(&coordinator).unwrap();
    let pid = c.nodes[victim].as_ref().unwrap().pid();
    signal("-STOP", pid);
    let others: Vec<usize> = (0..4).filter(|i| *i != victim).collect();
    wait_until("a new coordinator while the old one is frozen", || {
        let views = c.views();
        let outs: Vec<_> = views.iter().filter(|(i, _)| others.contains(i)).collect();
        outs.len() == 3
            && outs.iter().all(|(_, v)| {
                v.coordinator.as_deref().is_some_and(|x| x != coordinator)
                    && v.coordinator == outs[0].1.coordinator
                    && v.epoch > epoch
            })
    });
    let new_coordinator = c.views().iter().find(|(i, _)| *i != victim).unwrap().1.coordinator.clone().unwrap();
    signal("-CONT", pid);
    // Everyone, the thawed node included, ends up following one coordinator at one epoch.
    let (after, _) = c.wait_settled(Duration::from_secs(30));
    if after != new_coordinator {
        for (i, n) in c.nodes.iter().enumerate().filter_map(|(i, n)| Some((i, n.as_ref()?))) {
            let lines: Vec<String> = n.log_lines().into_iter().filter(|l| l.contains("election")).collect();
            eprintln!("node {i}'s election log:\n{}", lines.join("\n"));
        }
    }
    assert_eq!(after, new_coordinator, "the thawed coordinator steps down");
}
