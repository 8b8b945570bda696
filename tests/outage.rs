//! Every storage peer down at once (a rack loses power; a full restart in which the storage
//! peers come up last), with real `chorus-node` processes on 127.0.0.1. The nodes left must not
//! start a second, empty log: writes and reads answer 503 until the nodes holding the log
//! return, and then everything acknowledged before is there.

mod common;

use chorus_node::testkit::LocalCluster;
use common::Api;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const SETTLE: Duration = Duration::from_secs(60);

fn storage_of(c: &LocalCluster) -> BTreeSet<usize> {
    let views = c.views();
    let Some(a) = views.iter().find_map(|(_, v)| v.assignment.clone()) else { return BTreeSet::new() };
    a.assignment
        .members
        .iter()
        .filter(|m| m.roles.iter().any(|r| r.as_str() == "storage"))
        .filter_map(|m| c.index_of(&m.peer_id))
        .collect()
}

/// Once the live nodes agree on an assignment of just themselves: it must not be a genesis,
/// and none of them may have started a log (they never held one).
fn assert_no_second_log(c: &LocalCluster) {
    c.wait_settled(SETTLE);
    for (i, v) in c.views() {
        let a = v.assignment.as_ref().expect("settled");
        assert!(!a.assignment.genesis, "node {i} holds a genesis assignment: a second log would start: {v:#?}");
        let r = v.raft.as_ref().expect("raft view");
        assert!(r.state != "leader" && r.last_log_index == 0, "node {i} started a log: {v:#?}");
        assert!(r.log_seen, "node {i} does not say it waits for the log's holders: {v:#?}");
    }
}

/// A write and a read through `api` both answer 503 with a reason, quickly.
async fn assert_unavailable(api: &Api, token: &str) {
    let started = Instant::now();
    let body = json!({"username": "carol", "password": "password123"});
    let (s, v) = api.call(Method::POST, "/api/v1/accounts", None, Some(body)).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "a write without any storage peer: {v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    let (s, v) = api.call(Method::GET, "/api/v1/chats/dm:alice:bob/messages?after=0", Some(token), None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "a read without any storage peer: {v}");
    assert!(started.elapsed() < Duration::from_secs(10), "503s took {:?}", started.elapsed());
}

fn texts(page: &Value) -> Vec<String> {
    page["messages"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_storage_peer_down_no_second_log_starts_and_nothing_is_lost() {
    let mut c = LocalCluster::start(5, &["--user-rps", "0"]);
    c.wait_settled(SETTLE);
    c.wait_until("three voters holding the whole log", SETTLE, |c| c.raft_ready(3));
    let storage = storage_of(&c);
    assert_eq!(storage.len(), 3);
    let others: Vec<usize> = (0..5).filter(|i| !storage.contains(i)).collect();
    let url = |c: &LocalCluster, i: usize| c.nodes[i].as_ref().unwrap().url.clone();
    let api = Api::new(&url(&c, others[0]));
    let (alice, bob) = (api.user("alice").await, api.user("bob").await);
    api.post("/api/v1/friend-requests", Some(&alice), json!({"to": "bob"})).await;
    let (s, v) = api.call(Method::POST, "/api/v1/friend-requests/alice/accept", Some(&bob), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let sent: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    for t in &sent {
        api.post("/api/v1/dms/bob/messages", Some(&alice), json!({"text": t})).await;
    }

    // Every storage peer dies at once; the two left assign roles among themselves.
    for &i in &storage {
        c.kill9(i);
    }
    assert_no_second_log(&c);
    assert_unavailable(&api, &bob).await;
    assert_no_second_log(&c);

    // The two restart too, alone: they remember that a log exists.
    for &i in &others {
        c.kill9(i);
    }
    for &i in &others {
        c.restart(i);
    }
    assert_no_second_log(&c);
    let api = Api::new(&url(&c, others[0]));
    assert_unavailable(&api, &bob).await;
    assert_no_second_log(&c);

    // The storage peers return, one by one: once two are back the log goes on (the storage
    // set may by then include a node named during the outage, which catches up), and nothing
    // was lost.
    for &i in &storage {
        c.restart(i);
    }
    c.wait_until("three voters holding the whole log again", SETTLE, |c| {
        c.settled()?;
        c.raft_ready(3).filter(|_| storage_of(c).len() == 3)
    });
    for &i in &others {
        let api = Api::new(&url(&c, i));
        let page = api.get("/api/v1/chats/dm:alice:bob/messages?after=0&limit=100", &bob).await;
        assert_eq!(texts(&page), sent, "history through node {i}");
    }
    let body = json!({"username": "alice", "password": "password123"});
    let (s, v) = api.call(Method::POST, "/api/v1/accounts", None, Some(body)).await;
    assert_eq!(s, StatusCode::CONFLICT, "alice's account survived: {v}");
    let m = api.post("/api/v1/dms/bob/messages", Some(&alice), json!({"text": "back"})).await;
    assert_eq!(m["seq"], 11, "{m}");
}
