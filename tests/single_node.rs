//! The real `chorus-node` binary, end to end over HTTP: the README walkthrough (friends, DM,
//! a group of three, a file round trip, SSE delivery), then `kill -9`, restart on the same
//! data dir, and everything acknowledged is still there.

mod common;

use chorus_node::testkit::{node_bin, wait_for, NodeProc};
use common::Api;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

fn seqs(page: &Value) -> Vec<u64> {
    page["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walkthrough_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(dir.path(), &[]);
    let api = Api::new(&node.url);
    let (alice, bob, carol) = (api.user("alice").await, api.user("bob").await, api.user("carol").await);

    // Bob listens for events from the start of his log.
    let sse = api.http.get(format!("{}/api/v1/events?after=0", node.url)).bearer_auth(&bob).send().await.unwrap();
    assert_eq!(sse.status(), StatusCode::OK);
    let mut sse = sse.bytes_stream();

    api.post("/api/v1/friend-requests", Some(&alice), json!({"to": "bob"})).await;
    let (s, _) = api.call(reqwest::Method::POST, "/api/v1/friend-requests/alice/accept", Some(&bob), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let sent =
        api.post("/api/v1/dms/bob/messages", Some(&alice), json!({"text": "hi bob", "client_msg_id": "k1"})).await;
    assert_eq!(sent["seq"], 1);

    // The log's own timings are exported: every acknowledged write waited for a WAL sync and
    // (the node leads its one-voter group) a commit.
    let metrics = api.http.get(format!("{}/metrics", node.url)).send().await.unwrap().text().await.unwrap();
    for name in ["chorus_raft_wal_sync_duration_seconds_count", "chorus_raft_commit_duration_seconds_count"] {
        let count: f64 = metrics.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0.0);
        assert!(count >= 1.0, "{name} = {count} in\n{metrics}");
    }

    // SSE delivers the friend request, the friendship and the message, in order.
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !text.contains("hi bob") {
        let chunk =
            tokio::time::timeout_at(deadline, sse.next()).await.expect("SSE delivers in time").unwrap().unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let kinds: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(kinds, ["friend_request", "friend_added", "message"]);

    // The same events over WebSocket, replayed from the start of Bob's log.
    let ws_url = format!("{}/api/v1/ws?after=0&access_token={bob}", node.url.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.expect("websocket");
    let mut ws_kinds = Vec::new();
    while ws_kinds.len() < 3 {
        let frame = tokio::time::timeout_at(deadline, ws.next()).await.expect("WS delivers in time").unwrap().unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(t) = frame {
            let ev: Value = serde_json::from_str(&t).unwrap();
            ws_kinds.push(ev["type"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(ws_kinds, ["friend_request", "friend_added", "message"]);

    // A group of three.
    let g = api.post("/api/v1/groups", Some(&alice), json!({"name": "Trio", "members": ["bob", "carol"]})).await;
    let chat = g["chat_id"].as_str().unwrap().to_owned();
    api.post(&format!("/api/v1/chats/{chat}/messages"), Some(&carol), json!({"text": "hello trio"})).await;
    api.post(&format!("/api/v1/chats/{chat}/messages"), Some(&bob), json!({"text": "hi carol"})).await;

    // A file round trip.
    let data: Vec<u8> = (0..1_500_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let up = api
        .http
        .post(format!("{}/api/v1/files?name=data.bin", node.url))
        .bearer_auth(&alice)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(up.status(), StatusCode::CREATED);
    let file: Value = up.json().await.unwrap();
    let file_id = file["file_id"].as_str().unwrap().to_owned();
    api.post("/api/v1/dms/bob/messages", Some(&alice), json!({"text": "file", "files": [file_id]})).await;
    let down = api.http.get(format!("{}/api/v1/files/{file_id}", node.url)).bearer_auth(&bob).send().await.unwrap();
    assert_eq!(down.status(), StatusCode::OK);
    assert_eq!(down.bytes().await.unwrap().as_ref(), &data[..]);

    // A second node on the same data dir fails clearly.
    let out = std::process::Command::new(node_bin())
        .args(["run", "--http", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another chorus-node"), "{err}");

    // kill -9, restart on the same data dir: everything acknowledged is there.
    let before = api.get("/api/v1/chats/dm:alice:bob/messages", &bob).await;
    node.kill9();
    let node = NodeProc::start(dir.path(), &[]);
    let api = Api::new(&node.url);
    let after = api.get("/api/v1/chats/dm:alice:bob/messages", &bob).await;
    assert_eq!(before, after);
    assert_eq!(seqs(&after), [1, 2]);
    let group = api.get(&format!("/api/v1/chats/{chat}/messages"), &alice).await;
    assert_eq!(seqs(&group), [1, 2]);
    assert_eq!(group["messages"][0]["text"], "hello trio");
    let down = api.http.get(format!("{}/api/v1/files/{file_id}", node.url)).bearer_auth(&bob).send().await.unwrap();
    assert_eq!(down.bytes().await.unwrap().as_ref(), &data[..]);
    // The retried send still answers seq 1; a new one gets seq 3.
    let again =
        api.post("/api/v1/dms/bob/messages", Some(&alice), json!({"text": "hi bob", "client_msg_id": "k1"})).await;
    assert_eq!(again, sent);
    let next = api.post("/api/v1/dms/bob/messages", Some(&alice), json!({"text": "after restart"})).await;
    assert_eq!(next["seq"], 3);
    let profile = api.http.get(format!("{}/carol", node.url)).send().await.unwrap();
    assert_eq!(profile.status(), StatusCode::OK);
    assert!(profile.text().await.unwrap().contains("@carol"));

    // A clean stop exits 0.
    assert_eq!(node.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(dir.path(), &["--user-rps", "0"]);
    let api = Api::new(&node.url);
    let (a, b) = (api.user("alice").await, api.user("bob").await);
    api.post("/api/v1/friend-requests", Some(&a), json!({"to": "bob"})).await;
    api.post("/api/v1/friend-requests", Some(&b), json!({"to": "alice"})).await;

    // Eight concurrent senders; the node is killed while they run. Every acknowledged seq
    // must be there after the restart, with the text that was acknowledged.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(u64, String)>::new()));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (http, base, token, acked) = (api.http.clone(), node.url.clone(), a.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let text = format!("w{w}-{i}");
                let r = http
                    .post(format!("{base}/api/v1/dms/bob/messages"))
                    .bearer_auth(&token)
                    .json(&json!({"text": text}))
                    .send()
                    .await;
                let Ok(r) = r else { break };
                if r.status() != StatusCode::CREATED {
                    break;
                }
                let Ok(v) = r.json::<Value>().await else { break };
                acked.lock().unwrap().push((v["seq"].as_u64().unwrap(), text));
            }
        }));
    }
    wait_for("some acknowledged sends", Duration::from_secs(30), || (acked.lock().unwrap().len() >= 200).then_some(()));
    node.kill9();
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();
    // Simulate a torn final WAL record (a write cut short by the crash): the node must still
    // start, dropping only the torn tail.
    let wal = std::fs::read_dir(dir.path().join("db"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .max()
        .expect("a WAL file");
    use std::io::Write;
    std::fs::OpenOptions::new().append(true).open(&wal).unwrap().write_all(&[0x5a; 13]).unwrap();
    let node = NodeProc::start(dir.path(), &[]);
    let api = Api::new(&node.url);
    let mut stored = Vec::new();
    let mut after = 0;
    loop {
        let page = api.get(&format!("/api/v1/chats/dm:alice:bob/messages?after={after}&limit=500"), &b).await;
        let msgs = page["messages"].as_array().unwrap().clone();
        if msgs.is_empty() {
            break;
        }
        after = msgs.last().unwrap()["seq"].as_u64().unwrap();
        stored.extend(msgs);
    }
    let got: Vec<u64> = stored.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(got, (1..=got.len() as u64).collect::<Vec<_>>(), "gapless after the crash");
    for (seq, text) in &acked {
        assert_eq!(
            stored[*seq as usize - 1]["text"].as_str(),
            Some(text.as_str()),
            "acknowledged seq {seq} lost or changed"
        );
    }
}
