//! Replicated storage with real `chorus-node` processes on 127.0.0.1: five nodes, three
//! storage peers (openraft), any input node serves any user; `kill -9` of the Raft leader and
//! of a follower under load loses nothing acknowledged, and reads through another node see every
//! acknowledged message meanwhile; a storage peer that never returns is
//! replaced and the newcomer catches up by snapshot, and so does a voter behind the purged log
//! even when the snapshot takes longer than an election; a minority answers 503 fast.

mod common;

use chorus_node::testkit::{incompressible, node_bin, signal, wait_for, LocalCluster};
use chorus_protocol::api::ClusterView;
use common::Api;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SETTLE: Duration = Duration::from_secs(60);

fn storage_of(v: &ClusterView) -> BTreeSet<String> {
    let Some(a) = &v.assignment else { return BTreeSet::new() };
    a.assignment
        .members
        .iter()
        .filter(|m| m.roles.iter().any(|r| r.as_str() == "storage"))
        .map(|m| m.peer_id.clone())
        .collect()
}

/// `(leader index, views)` once every live node names the same Raft leader, the leader's
/// voters are exactly the assignment's storage peers, and every one of them is within
/// `max_lag` entries of the leader's log (0: identical; under load, a small window).
fn replicated(c: &LocalCluster, max_lag: u64) -> Option<(usize, Vec<(usize, ClusterView)>)> {
    // One coordinator and one assignment naming exactly the live nodes.
    c.settled()?;
    let views = c.views();
    if views.len() != c.live() {
        return None;
    }
    let leader = views[0].1.raft.as_ref()?.leader.clone()?;
    if !views.iter().all(|(_, v)| v.raft.as_ref().is_some_and(|r| r.leader.as_deref() == Some(leader.as_str()))) {
        return None;
    }
    let (li, lv) = views.iter().find(|(_, v)| v.this.peer_id == leader)?;
    let raft = lv.raft.as_ref()?;
    let voters: BTreeSet<String> = raft.peers.iter().filter(|p| p.voter).map(|p| p.peer_id.clone()).collect();
    let caught_up = raft.peers.iter().all(|p| p.lag.is_some_and(|l| l <= max_lag));
    // Every storage peer applied (nearly) everything the leader has.
    let applied = views
        .iter()
        .filter(|(_, v)| voters.contains(&v.this.peer_id))
        .all(|(_, v)| v.raft.as_ref().is_some_and(|r| r.applied_index + max_lag >= raft.last_log_index));
    (voters == storage_of(lv) && voters.len() == raft.peers.len() && caught_up && applied).then(|| (*li, views.clone()))
}

/// Waits until every storage peer holds exactly the leader's log (no writes in flight).
fn wait_replicated(c: &LocalCluster, timeout: Duration) -> (usize, Vec<(usize, ClusterView)>) {
    c.wait_until("replication to settle", timeout, |c| replicated(c, 0))
}

/// Under continuous writes: the storage peers are the voters and keep up within 200 entries.
fn wait_in_step(c: &LocalCluster) -> usize {
    c.wait_until("storage peers to keep up under load", SETTLE, |c| replicated(c, 200)).0
}

fn storage_indices(views: &[(usize, ClusterView)]) -> Vec<usize> {
    let storage = views.iter().find_map(|(_, v)| v.assignment.as_ref().map(|_| storage_of(v))).unwrap_or_default();
    views.iter().filter(|(_, v)| storage.contains(&v.this.peer_id)).map(|(i, _)| *i).collect()
}

fn apis(c: &LocalCluster) -> Vec<Option<Api>> {
    c.nodes.iter().map(|n| n.as_ref().map(|n| Api::new(&n.url))).collect()
}

/// Every message of a chat through one node, oldest first.
async fn history(api: &Api, token: &str, chat: &str) -> Vec<Value> {
    let (mut out, mut after) = (Vec::new(), 0);
    loop {
        let page = api.get(&format!("/api/v1/chats/{chat}/messages?after={after}&limit=500"), token).await;
        let msgs = page["messages"].as_array().unwrap().clone();
        let Some(last) = msgs.last() else { return out };
        after = last["seq"].as_u64().unwrap();
        out.extend(msgs);
    }
}

/// Stops every node, then `chorus-node inspect` on each of `dirs`: (digest, per-chat digests,
/// applied index, the whole `inspect` output).
fn inspect_after_stop(c: &mut LocalCluster, dirs: &[usize]) -> Vec<(String, Value, u64, Value)> {
    for n in c.nodes.iter_mut() {
        if let Some(n) = n.take() {
            n.terminate();
        }
    }
    dirs.iter()
        .map(|&i| {
            let out = std::process::Command::new(node_bin())
                .args(["inspect", "--data-dir"])
                .arg(c.dirs[i].path())
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            let applied = v["applied_index"].as_u64().unwrap();
            (v["digest"].as_str().unwrap().to_owned(), v["chats"].clone(), applied, v)
        })
        .collect()
}

async fn befriend(a: &Api, a_token: &str, b: &Api, b_token: &str, b_name: &str, a_name: &str) {
    a.post("/api/v1/friend-requests", Some(a_token), json!({"to": b_name})).await;
    let path = format!("/api/v1/friend-requests/{a_name}/accept");
    let (s, v) = b.call(reqwest::Method::POST, &path, Some(b_token), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_three_storage_serve_any_user_from_any_node() {
    let c = LocalCluster::start(5, &["--user-rps", "0"]);
    c.wait_settled(SETTLE);
    let (_, views) = wait_replicated(&c, SETTLE);
    let storage = storage_indices(&views);
    assert_eq!(storage.len(), 3, "three storage peers");
    let api = apis(&c);
    let node = |i: usize| api[i].as_ref().unwrap();

    // Accounts made on different nodes; a token works on every node.
    let alice = node(0).user("alice").await;
    let bob = node(1).user("bob").await;
    let carol = node(2).user("carol").await;
    for i in 0..5 {
        assert_eq!(node(i).get("/api/v1/me", &alice).await["username"], "alice");
    }
    befriend(node(3), &alice, node(4), &bob, "bob", "alice").await;

    // Bob listens on node 2 while the messages go in through every node.
    let mut stream = node(2).events(&bob).await;
    let n = 30;
    for i in 0..n {
        let (who, token, path) = if i % 2 == 0 {
            ("alice", &alice, "/api/v1/dms/bob/messages")
        } else {
            ("bob", &bob, "/api/v1/dms/alice/messages")
        };
        let v = node(i % 5)
            .post(path, Some(token), json!({"text": format!("{who} {i}"), "client_msg_id": format!("m{i}")}))
            .await;
        assert_eq!(v["seq"], i as u64 + 1, "seqs follow the order of acknowledged sends");
    }
    // Every node answers the same history: each message once, gapless, same order.
    let reference = history(node(0), &alice, "dm:alice:bob").await;
    let texts: Vec<String> = reference.iter().map(|m| m["text"].as_str().unwrap().to_owned()).collect();
    let expected: Vec<String> = (0..n).map(|i| format!("{} {i}", if i % 2 == 0 { "alice" } else { "bob" })).collect();
    assert_eq!(texts, expected);
    for i in 1..5 {
        assert_eq!(history(node(i), if i % 2 == 0 { &alice } else { &bob }, "dm:alice:bob").await, reference);
    }

    // Bob's stream on node 2 delivered every message once, in order.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while seen.len() < n {
        seen.extend(stream.messages(deadline).await);
    }
    assert_eq!(seen, expected, "stream on another node: exactly once, in order");

    // Streams on every node are pushed each new message: storage peers from their own apply
    // (they leave the notice topic), the others from the leader's gossip. Each message must
    // arrive well inside the streams' 2 s fallback poll, twice in a row: a stream served only
    // by its poll would miss the second deadline, its poll timer having just restarted.
    for i in 0..5 {
        let mut stream = node(i).events(&bob).await;
        for k in 0..2 {
            let text = format!("push {i}.{k}");
            node((i + 1) % 5).post("/api/v1/dms/bob/messages", Some(&alice), json!({ "text": text })).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
            while !stream.messages(deadline).await.contains(&text) {}
        }
    }

    // A group of three made on one node, used from the others.
    let g = node(4).post("/api/v1/groups", Some(&alice), json!({"name": "trio", "members": ["bob"]})).await;
    let (gid, chat) = (g["group_id"].as_str().unwrap().to_owned(), g["chat_id"].as_str().unwrap().to_owned());
    node(1).post(&format!("/api/v1/groups/{gid}/members"), Some(&alice), json!({"username": "carol"})).await;
    node(0).post(&format!("/api/v1/chats/{chat}/messages"), Some(&carol), json!({"text": "hi all"})).await;
    let h = history(node(3), &bob, &chat).await;
    assert_eq!(h.last().unwrap()["text"], "hi all");

    // Logging out on one node ends the session on every node, well before the other nodes'
    // session caches (which have just served this token) would expire it.
    for i in 0..5 {
        assert_eq!(node(i).get("/api/v1/me", &carol).await["username"], "carol");
    }
    let (s, _) = node(0).call(reqwest::Method::DELETE, "/api/v1/sessions", Some(&carol), None).await;
    assert!(s.is_success(), "logout: {s}");
    let revoked_at = Instant::now();
    for i in 0..5 {
        loop {
            let (s, _) = node(i).call(reqwest::Method::GET, "/api/v1/me", Some(&carol), None).await;
            if s == StatusCode::UNAUTHORIZED {
                break;
            }
            assert!(revoked_at.elapsed() < Duration::from_secs(3), "node {i} still accepts a revoked token");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // Input-only nodes keep no user data.
    let (_, views) = wait_replicated(&c, SETTLE);
    for (i, v) in &views {
        if !storage.contains(i) {
            assert_eq!(v.raft.as_ref().unwrap().applied_index, 0, "node {i} is not storage but applied entries");
        }
    }
}

/// Acknowledged sends: (client_msg_id, seq).
type Acked = Arc<Mutex<Vec<(String, u64)>>>;

/// Senders on each of `urls`, each retrying a send with the same `client_msg_id` until it is
/// acknowledged; returns (acknowledged sends, stop flag).
fn start_senders(urls: Vec<String>, token: String, per_node: usize) -> (Acked, Arc<std::sync::atomic::AtomicBool>) {
    let acked: Acked = Default::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for (n, url) in urls.into_iter().enumerate() {
        for w in 0..per_node {
            let (acked, stop, token, url) = (acked.clone(), stop.clone(), token.clone(), url.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
                for i in 0.. {
                    let cmid = format!("n{n}w{w}i{i}");
                    loop {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            return;
                        }
                        let r = http
                            .post(format!("{url}/api/v1/dms/bob/messages"))
                            .bearer_auth(&token)
                            .json(&json!({"text": cmid, "client_msg_id": cmid}))
                            .send()
                            .await;
                        if let Ok(r) = r {
                            if r.status() == StatusCode::CREATED {
                                let v: Value = r.json().await.unwrap();
                                acked.lock().unwrap().push((cmid.clone(), v["seq"].as_u64().unwrap()));
                                break;
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            });
        }
    }
    (acked, stop)
}

/// Reads the chat through `url` until `stop`, each time the newest message acknowledged so far
/// (through any node): a read that answers must hold it (linearizable reads, also while the
/// leader changes). Returns (reads answered, stale reads: (wanted seq, answer)).
fn start_reader(url: String, token: String, acked: Acked, stop: Arc<std::sync::atomic::AtomicBool>) -> Reads {
    tokio::spawn(async move {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        let (mut answered, mut stale) = (0, Vec::new());
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let newest = acked.lock().unwrap().iter().map(|(_, seq)| *seq).max();
            let Some(seq) = newest else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let path = format!("{url}/api/v1/chats/dm:alice:bob/messages?after={}&limit=1", seq - 1);
            let r = http.get(path).bearer_auth(&token).send().await;
            if let Some(r) = r.ok().filter(|r| r.status() == StatusCode::OK) {
                let v: Value = r.json().await.unwrap();
                answered += 1;
                if v["messages"][0]["seq"].as_u64() != Some(seq) {
                    stale.push((seq, v));
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (answered, stale)
    })
}

type Reads = tokio::task::JoinHandle<(usize, Vec<(u64, Value)>)>;

fn wait_more_acks(acked: &Acked, more: usize, what: &str) {
    let start = acked.lock().unwrap().len();
    wait_for(what, SETTLE, || (acked.lock().unwrap().len() >= start + more).then_some(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_leader_then_follower_under_load_loses_nothing() {
    // Nodes 3 and 4 never store: the three storage peers are 0..3, so a restarted one must come
    // back as a storage peer and catch up.
    let mut c = LocalCluster::start_each(&[&[], &[], &[], &["--no-storage"], &["--no-storage"]], &["--user-rps", "0"]);
    c.wait_settled(SETTLE);
    wait_replicated(&c, SETTLE);
    let api = apis(&c);
    let (alice, bob) = (api[3].as_ref().unwrap().user("alice").await, api[4].as_ref().unwrap().user("bob").await);
    befriend(api[3].as_ref().unwrap(), &alice, api[4].as_ref().unwrap(), &bob, "bob", "alice").await;
    let urls = vec![c.nodes[3].as_ref().unwrap().url.clone(), c.nodes[4].as_ref().unwrap().url.clone()];
    let (acked, stop) = start_senders(urls.clone(), alice.clone(), 4);
    // Node 3 reads what the senders on both input nodes had acknowledged.
    let reads = start_reader(urls[0].clone(), bob.clone(), acked.clone(), stop.clone());
    wait_more_acks(&acked, 200, "acks before any kill");

    // kill -9 the Raft leader; writes resume through the survivors; restart it.
    let leader = wait_in_step(&c);
    c.kill9(leader);
    wait_more_acks(&acked, 200, "acks after the leader's death");
    c.restart(leader);
    wait_in_step(&c);
    wait_more_acks(&acked, 100, "acks after the leader's restart");

    // Now a follower.
    let leader = wait_in_step(&c);
    let follower = (0..3).find(|i| *i != leader).unwrap();
    c.kill9(follower);
    wait_more_acks(&acked, 200, "acks after a follower's death");
    c.restart(follower);
    wait_more_acks(&acked, 100, "acks after the follower's restart");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await; // let the senders see the flag
    let (answered, stale) = reads.await.unwrap();
    assert!(stale.is_empty(), "reads missed acknowledged messages: {stale:?}");
    assert!(answered >= 50, "only {answered} reads answered");
    let (_, views) = wait_replicated(&c, SETTLE);
    assert_eq!(storage_indices(&views), vec![0, 1, 2], "the restarted peers are storage peers again");

    // Every acknowledged message exactly once, gapless, in the same order through both input nodes.
    let acked = acked.lock().unwrap().clone();
    let api = apis(&c);
    let h3 = history(api[3].as_ref().unwrap(), &alice, "dm:alice:bob").await;
    let h4 = history(api[4].as_ref().unwrap(), &bob, "dm:alice:bob").await;
    assert_eq!(h3, h4);
    let seqs: Vec<u64> = h3.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=h3.len() as u64).collect::<Vec<_>>(), "gapless");
    let by_text: BTreeMap<&str, u64> =
        h3.iter().map(|m| (m["text"].as_str().unwrap(), m["seq"].as_u64().unwrap())).collect();
    assert_eq!(by_text.len(), h3.len(), "no message twice");
    for (cmid, seq) in &acked {
        assert_eq!(by_text.get(cmid.as_str()), Some(seq), "acknowledged {cmid} at seq {seq}");
    }
    eprintln!("{} acknowledged, {} stored, {answered} reads answered", acked.len(), h3.len());

    // The storage peers hold identical state.
    let inspected = inspect_after_stop(&mut c, &[0, 1, 2]);
    assert!(inspected.iter().all(|x| x.0 == inspected[0].0 && x.1 == inspected[0].1), "{inspected:#?}");
    assert!(inspected[0].1.get("dm:alice:bob").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_storage_peer_is_replaced_and_the_newcomer_catches_up_by_snapshot() {
    // No log kept before a snapshot: this small a log would all be kept, and replayed.
    let mut c = LocalCluster::start(4, &["--user-rps", "0", "--snapshot-every", "20", "--retain-log-mib", "0"]);
    c.wait_settled(SETTLE);
    let (leader, views) = wait_replicated(&c, SETTLE);
    let storage = storage_indices(&views);
    let api = apis(&c);
    let input = (0..4).find(|i| !storage.contains(i)).unwrap();
    let node = api[input].as_ref().unwrap();
    let (alice, bob) = (node.user("alice").await, node.user("bob").await);
    befriend(node, &alice, node, &bob, "bob", "alice").await;
    for i in 0..100 {
        node.post("/api/v1/dms/bob/messages", Some(&alice), json!({"text": format!("m{i}")})).await;
    }
    // The leader purged its log (a second after its snapshot), so a newcomer needs the snapshot.
    c.wait_until("the leader to purge its log", SETTLE, |c| c.raft_view(leader).filter(|r| r.purged_index >= 20));
    // A follower dies for good; the coordinator promotes the input-only node.
    let lost = *storage.iter().find(|i| **i != leader).unwrap();
    c.kill9(lost);
    let (_, views) = wait_replicated(&c, SETTLE);
    let now: Vec<usize> = storage_indices(&views);
    assert!(now.contains(&input) && !now.contains(&lost), "storage now {now:?}: {views:#?}");
    let newcomer = views.iter().find(|(i, _)| *i == input).unwrap().1.raft.clone().unwrap();
    assert!(newcomer.snapshots_installed >= 1, "caught up by snapshot: {newcomer:?}");
    // It serves the full history.
    node.post("/api/v1/dms/bob/messages", Some(&alice), json!({"text": "after"})).await;
    let h = history(node, &bob, "dm:alice:bob").await;
    assert_eq!(h.len(), 101);

    // The lost peer comes back: it is no storage peer now, so it forgets its stale copy.
    c.restart(lost);
    let forgotten = |c: &LocalCluster| {
        let raft = c.raft_view(lost)?;
        (raft.applied_index == 0 && raft.last_log_index == 0 && raft.leader.is_some()).then_some(())
    };
    c.wait_until("the returning peer to drop its copy", SETTLE, |c| c.settled().and(forgotten(c)));
    let (_, views) = wait_replicated(&c, SETTLE);
    assert_eq!(storage_indices(&views), now, "the storage set is unchanged");
    // It still serves users, through the leader.
    let back = Api::new(&c.nodes[lost].as_ref().unwrap().url);
    assert_eq!(history(&back, &alice, "dm:alice:bob").await.len(), 101);
    wait_replicated(&c, SETTLE);
    // Stop the returning peer first: while the others shut down, the coordinator would rightly
    // promote it to replace them, and a snapshot could start arriving before it stops.
    if let Some(n) = c.nodes[lost].take() {
        n.terminate();
    }
    let mut dirs = now.clone();
    dirs.push(lost);
    let inspected = inspect_after_stop(&mut c, &dirs);
    let (stored, gone) = inspected.split_at(now.len());
    assert!(stored.iter().all(|x| x.0 == stored[0].0), "{inspected:#?}");
    let rows = &gone[0].3["rows"];
    let keys = &gone[0].3["raft_meta_keys"];
    let user_rows: u64 =
        rows.as_object().unwrap().iter().filter(|(cf, _)| *cf != "raft_meta").map(|(_, n)| n.as_u64().unwrap()).sum();
    assert_eq!(user_rows, 0, "the returning peer keeps no user data: {rows}");
    let kept: Vec<&str> = keys.as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
    assert!(kept.iter().all(|k| ["vote", "log_seen"].contains(k)), "at most its vote and that a log exists: {keys}");
}

/// A voter that fell behind the purged log catches up by a snapshot whose transfer outlasts
/// the election timeout (small chunks make it so on any machine). openraft sends it no
/// heartbeat meanwhile; without the election hold it started an election mid-transfer, the
/// leader stepped down, and the transfer began again from the first chunk, forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_behind_the_purged_log_catches_up_by_a_snapshot_slower_than_an_election() {
    let flags = [
        ["--user-rps", "0", "--snapshot-every", "4", "--retain-log-mib", "0"].as_slice(),
        &["--snapshot-chunk-kib", "2", "--max-file-size", "16777216"],
    ]
    .concat();
    let c = LocalCluster::start(3, &flags);
    c.wait_settled(SETTLE);
    let (leader, views) = wait_replicated(&c, SETTLE);
    let follower = (0..3).find(|i| *i != leader).unwrap();
    let behind = views.iter().find(|(i, _)| *i == follower).unwrap().1.raft.clone().unwrap().last_log_index;
    let url = c.nodes[leader].as_ref().unwrap().url.clone();
    let alice = Api::new(&url).user("alice").await;

    signal("-STOP", c.nodes[follower].as_ref().unwrap().pid());
    // 16 MiB of incompressible files: 8,192 chunks of 2 KiB, seconds on any machine.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for i in 0..2 {
        let body = incompressible(8, &mut seed);
        let resp = reqwest::Client::new()
            .post(format!("{url}/api/v1/files?name=f{i}.bin"))
            .bearer_auth(&alice)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "upload {i}: {}", resp.status());
    }
    // The leader's snapshot passes the stopped voter's log, and the log before it is purged.
    let leader_raft = |c: &LocalCluster| c.raft_view(leader);
    let term = c.wait_until("a snapshot past the stopped voter", SETTLE, |c| {
        leader_raft(c).filter(|r| r.snapshot_index > behind + 4).map(|r| r.term)
    });

    signal("-CONT", c.nodes[follower].as_ref().unwrap().pid());
    let woke = Instant::now();
    let (_, views) = wait_replicated(&c, Duration::from_secs(120));
    eprintln!("caught up {:?} after waking", woke.elapsed());
    let caught_up = views.iter().find(|(i, _)| *i == follower).unwrap().1.raft.clone().unwrap();
    assert!(caught_up.snapshots_installed >= 1, "caught up by snapshot: {caught_up:?}");
    // One election at most when the stopped voter wakes up, not one per transfer attempt.
    assert!(caught_up.term <= term + 4, "terms churned: {term} -> {}", caught_up.term);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_answers_503_fast_and_loses_nothing() {
    let c = LocalCluster::start_each(&[&[], &[], &[], &["--no-storage"]], &["--user-rps", "0"]);
    c.wait_settled(SETTLE);
    let (leader, _) = wait_replicated(&c, SETTLE);
    let api = apis(&c);
    let node = api[3].as_ref().unwrap();
    let (alice, bob) = (node.user("alice").await, node.user("bob").await);
    befriend(node, &alice, node, &bob, "bob", "alice").await;
    for i in 0..20 {
        node.post(
            "/api/v1/dms/bob/messages",
            Some(&alice),
            json!({"text": format!("m{i}"), "client_msg_id": format!("m{i}")}),
        )
        .await;
    }
    // Freeze the leader and one follower: one storage peer of three is left.
    let follower = (0..3).find(|i| *i != leader).unwrap();
    let frozen = [leader, follower];
    for &i in &frozen {
        signal("-STOP", c.nodes[i].as_ref().unwrap().pid());
    }
    let survivor = (0..3).find(|i| !frozen.contains(i)).unwrap();
    for via in [3, survivor] {
        let started = Instant::now();
        let body = json!({"text": "in the dark", "client_msg_id": "dark"});
        let (s, v) = api[via]
            .as_ref()
            .unwrap()
            .call(reqwest::Method::POST, "/api/v1/dms/bob/messages", Some(&alice), Some(body))
            .await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(started.elapsed() < Duration::from_secs(5), "503 took {:?}", started.elapsed());
    }
    for &i in &frozen {
        signal("-CONT", c.nodes[i].as_ref().unwrap().pid());
    }
    // Writes resume; the unacknowledged send, retried with its key, lands exactly once.
    let sent = send_until_acked(node, &alice, json!({"text": "in the dark", "client_msg_id": "dark"})).await;
    assert_eq!(sent["seq"], 21);
    let h = history(node, &bob, "dm:alice:bob").await;
    let texts: Vec<&str> = h.iter().map(|m| m["text"].as_str().unwrap()).collect();
    let mut expected: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    expected.push("in the dark".into());
    assert_eq!(texts, expected);

    // Now the leader is the one cut off (both followers frozen): past its lease it answers
    // neither writes nor reads, though no rival can be elected to tell it so.
    let (leader, _) = wait_replicated(&c, SETTLE);
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    for &i in &followers {
        signal("-STOP", c.nodes[i].as_ref().unwrap().pid());
    }
    let alone = || json!({"text": "alone", "client_msg_id": "alone"});
    let started = Instant::now();
    let (s, v) = node.call(reqwest::Method::POST, "/api/v1/dms/bob/messages", Some(&alice), Some(alone())).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    let path = "/api/v1/chats/dm:alice:bob/messages?after=0&limit=500";
    let (s, v) = node.call(reqwest::Method::GET, path, Some(&bob), None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "a leader without a majority answered a read: {v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(started.elapsed() < Duration::from_secs(8), "503s took {:?}", started.elapsed());
    for &i in &followers {
        signal("-CONT", c.nodes[i].as_ref().unwrap().pid());
    }
    send_until_acked(node, &alice, alone()).await;
    expected.push("alone".into());
    let h = history(node, &bob, "dm:alice:bob").await;
    assert_eq!(h.iter().map(|m| m["text"].as_str().unwrap()).collect::<Vec<_>>(), expected);
}

/// Sends `body` (which carries a `client_msg_id`) to bob until it is acknowledged; the answer.
async fn send_until_acked(node: &Api, token: &str, body: Value) -> Value {
    let deadline = Instant::now() + SETTLE;
    loop {
        let (s, v) =
            node.call(reqwest::Method::POST, "/api/v1/dms/bob/messages", Some(token), Some(body.clone())).await;
        if s == StatusCode::CREATED {
            return v;
        }
        assert!(Instant::now() < deadline, "writes did not resume: {s} {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Nodes outside the log that send nothing still learn the new Raft leader after the old one
/// dies: they must not keep asking the dead one where the leader is.
#[test]
fn idle_nodes_outside_the_log_find_the_new_leader() {
    let mut c = LocalCluster::start_each(&[&[], &[], &[], &["--no-storage"], &["--no-storage"]], &["--user-rps", "0"]);
    c.wait_settled(SETTLE);
    let (leader, views) = wait_replicated(&c, SETTLE);
    let dead = views.iter().find(|(i, _)| *i == leader).unwrap().1.this.peer_id.clone();
    c.kill9(leader);
    c.wait_until("every survivor to name one live Raft leader", SETTLE, |c| {
        let views = c.views();
        let named: BTreeSet<Option<String>> =
            views.iter().map(|(_, v)| v.raft.as_ref().and_then(|r| r.leader.clone())).collect();
        (views.len() == 4 && named.len() == 1 && !named.contains(&None) && !named.contains(&Some(dead.clone())))
            .then_some(())
    });
}
