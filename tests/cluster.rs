//! Multi-process cluster tests: real `chorus-node` processes on 127.0.0.1 (free ports, temp
//! dirs) form a cluster over libp2p, elect the highest PeerId with Chang-Roberts, and hold a
//! validly signed role assignment; the coordinator's `kill -9` gives a new coordinator and a
//! new assignment on every survivor; a restarted node rejoins without taking over; forged,
//! replayed and self-appointed assignments are refused.

use chorus_node::overlay::{self, OverlayConfig};
use chorus_node::roles::sign;
use chorus_node::testkit::NodeProc;
use chorus_protocol::api::ClusterView;
use chorus_protocol::cluster::{ControlMsg, RoleAssignment, SignedAssignment, CONTROL_TOPIC};
use libp2p::identity::Keypair;
use libp2p::PeerId;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Cluster {
    dirs: Vec<tempfile::TempDir>,
    nodes: Vec<Option<NodeProc>>,
    seed: String,
    http: reqwest::Client,
}

impl Cluster {
    /// `n` nodes; the first listens on a known port and the others bootstrap from it.
    fn start(n: usize) -> Cluster {
        let seed = format!("/ip4/127.0.0.1/tcp/{}", free_port());
        let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut nodes = Vec::new();
        for (i, d) in dirs.iter().enumerate() {
            let flag = if i == 0 { "--listen" } else { "--bootstrap" };
            nodes.push(Some(NodeProc::start(d.path(), &[flag, &seed])));
        }
        Cluster { dirs, nodes, seed, http: reqwest::Client::new() }
    }

    async fn view(&self, i: usize) -> Option<ClusterView> {
        let node = self.nodes[i].as_ref()?;
        let resp =
            self.http.get(format!("{}/api/v1/cluster", node.url)).timeout(Duration::from_secs(2)).send().await.ok()?;
        resp.json().await.ok()
    }

    async fn views(&self) -> Vec<(usize, ClusterView)> {
        let mut out = Vec::new();
        for i in 0..self.nodes.len() {
            if let Some(v) = self.view(i).await {
                out.push((i, v));
            }
        }
        out
    }

    fn live(&self) -> usize {
        self.nodes.iter().flatten().count()
    }

    /// Every live node follows one coordinator at one epoch, with an assignment listing
    /// exactly the live nodes.
    async fn settled(&self) -> Option<(String, u64)> {
        let views = self.views().await;
        if views.len() != self.live() {
            return None;
        }
        let (_, first) = views.first()?;
        let coordinator = first.coordinator.clone()?;
        let epoch = first.epoch;
        let all_agree = views.iter().all(|(_, v)| {
            v.coordinator.as_deref() == Some(coordinator.as_str())
                && v.epoch == epoch
                && v.members.len() == self.live()
                && v.assignment.as_ref().is_some_and(|a| a.assignment.coordinator == coordinator)
        });
        all_agree.then_some((coordinator, epoch))
    }

    async fn wait_settled(&self, timeout: Duration) -> (String, u64) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.settled().await {
                return s;
            }
            if Instant::now() > deadline {
                for (i, n) in self.nodes.iter().enumerate() {
                    if let Some(n) = n {
                        eprintln!("--- node {i} log:\n{}", n.log_lines().join("\n"));
                    }
                }
                panic!("cluster did not settle: {:#?}", self.views().await);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn index_of(&self, peer: &str) -> usize {
        let id = |d: &tempfile::TempDir| chorus_node::overlay::identity::peer_id(d.path()).unwrap().to_base58();
        self.dirs.iter().position(|d| id(d) == peer).expect("a node of ours")
    }
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_elect_fail_over_and_rejoin() {
    let mut c = Cluster::start(5);
    let (coordinator, epoch) = c.wait_settled(Duration::from_secs(30)).await;
    let ids: Vec<String> = c.views().await.into_iter().map(|(_, v)| v.this.peer_id).collect();
    assert_eq!(coordinator, max_peer(ids.clone()), "Chang-Roberts elects the highest PeerId");
    for (_, v) in c.views().await {
        check_assignment(v.assignment.as_ref().unwrap(), 5);
        assert_eq!(v.assignment.as_ref().unwrap().assignment.epoch, epoch);
    }

    // kill -9 the coordinator: the survivors elect the next highest and re-assign.
    let dead = c.index_of(&coordinator);
    let killed_at = Instant::now();
    c.nodes[dead].take().unwrap().kill9();
    let (next, next_epoch) = c.wait_settled(Duration::from_secs(20)).await;
    let failover = killed_at.elapsed();
    let survivors: Vec<String> = ids.iter().filter(|p| **p != coordinator).cloned().collect();
    assert_eq!(next, max_peer(survivors), "the highest survivor leads");
    assert!(next_epoch > epoch);
    for (_, v) in c.views().await {
        check_assignment(v.assignment.as_ref().unwrap(), 4);
    }
    eprintln!("failover: new coordinator and assignment on all survivors after {failover:?}");

    // The old coordinator (still the highest PeerId) restarts and rejoins as a follower,
    // through a survivor (the dead node may have been the seed).
    let survivor = c.views().await.into_iter().next().unwrap().1;
    let via = survivor.this.addrs[0].clone();
    c.nodes[dead] = Some(NodeProc::start(c.dirs[dead].path(), &["--bootstrap", &via]));
    let (after, after_epoch) = c.wait_settled(Duration::from_secs(20)).await;
    assert_eq!(after, next, "a rejoining node does not take over a live coordinator");
    assert!(after_epoch > next_epoch, "its arrival is a membership change");
    for (_, v) in c.views().await {
        check_assignment(v.assignment.as_ref().unwrap(), 5);
    }
}

/// A libp2p peer of our own in the test process, to publish what an attacker would.
async fn attacker(seed: &str) -> (Keypair, overlay::Client, tokio::task::JoinHandle<()>) {
    let key = Keypair::generate_ed25519();
    let cfg = OverlayConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap: vec![seed.parse().unwrap()],
        mdns: false,
        election_timeout: Duration::from_secs(2),
    };
    let (client, mut events, event_loop) = overlay::new(key.clone(), cfg).unwrap();
    tokio::spawn(event_loop.run());
    let c2 = client.clone();
    let drain = tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if let overlay::Event::Gossip { id, propagation, .. } = ev {
                c2.validate(id, propagation, libp2p::gossipsub::MessageAcceptance::Accept).await;
            }
        }
    });
    (key, client, drain)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_self_appointed_assignments_are_refused() {
    let c = Cluster::start(3);
    let (coordinator, epoch) = c.wait_settled(Duration::from_secs(30)).await;
    let genuine = c.views().await[0].1.assignment.clone().unwrap();
    let (key, client, _drain) = attacker(&c.seed).await;

    // 1. Forged: claims the real coordinator, signed with another key.
    let mut forged_a: RoleAssignment = genuine.assignment.clone();
    forged_a.epoch = epoch + 100;
    let forged = sign::sign(forged_a.clone(), &key).unwrap();
    assert!(sign::verify(&forged).is_err());
    publish(&client, &ControlMsg::Assignment(forged)).await;

    // 2. Self-appointed: validly signed by a peer that is not the coordinator.
    let mut own = forged_a.clone();
    own.coordinator = key.public().to_peer_id().to_base58();
    publish(&client, &ControlMsg::Assignment(sign::sign(own, &key).unwrap())).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let views = c.views().await;
        let stats = |f: fn(&chorus_protocol::api::ElectionStats) -> u64| {
            views.iter().map(|(_, v)| f(v.election.as_ref().unwrap())).sum::<u64>()
        };
        if stats(|s| s.rejected_forged) >= 1 && stats(|s| s.ignored_stale) >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the forgeries never arrived: {views:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 3. Replayed: the cluster has moved to a newer epoch (the attacker's own arrival is a
    // membership change), and the old, genuine assignment is re-sent.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.views().await.iter().all(|(_, v)| v.epoch > epoch) {
        assert!(Instant::now() < deadline, "no new epoch");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stale_before: u64 = c.views().await.iter().map(|(_, v)| v.election.as_ref().unwrap().ignored_stale).sum();
    publish(&client, &ControlMsg::Assignment(genuine.clone())).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stale: u64 = c.views().await.iter().map(|(_, v)| v.election.as_ref().unwrap().ignored_stale).sum();
        if stale > stale_before {
            break;
        }
        assert!(Instant::now() < deadline, "the replay never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Nobody moved: same coordinator, an epoch from it, no attacker in charge.
    for (_, v) in c.views().await {
        assert_eq!(v.coordinator.as_deref(), Some(coordinator.as_str()));
        let a = v.assignment.unwrap();
        assert_eq!(a.assignment.coordinator, coordinator);
        assert!(a.assignment.epoch > epoch && a.assignment.epoch < epoch + 100);
        sign::verify(&a).unwrap();
    }
}
