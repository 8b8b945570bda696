//! The name server with real processes: a `chorus-node gateway` in front of a 4-node cluster
//! (3 storage peers, 1 input node) learns the cluster from one seed, sends requests to the
//! input node, streams events (SSE and WebSocket) through, and when the input node is
//! `kill -9`ed the very next requests are served by the others. With no node left it answers
//! 503. A gateway told to stop does not wait for open event streams forever. A node tells
//! the others (and so the gateway) the HTTP address it is given to advertise.

mod common;

use chorus_node::gateway::NODE_HEADER;
use chorus_node::testkit::{get_json, wait_for, LocalCluster, NodeProc};
use chorus_protocol::api::ClusterView;
use common::Api;
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(60);

/// `GET path` through the gateway: status, the node that served it, the body.
async fn get(gw: &str, path: &str) -> (u16, Option<String>, String) {
    let resp = reqwest::get(format!("{gw}{path}")).await.expect("the gateway answers");
    let node = resp.headers().get(NODE_HEADER).and_then(|v| v.to_str().ok()).map(|n| format!("http://{n}"));
    (resp.status().as_u16(), node, resp.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_serves_every_route_and_outlives_its_input_node() {
    let mut c = LocalCluster::start(4, &["--user-rps", "0"]);
    c.wait_settled(SETTLE);
    c.wait_until("three caught-up voters", SETTLE, |c| c.raft_ready(3));
    let view = c.view(0).unwrap();
    let input: Vec<String> = view
        .members
        .iter()
        .filter(|m| m.roles.iter().any(|r| r == "input"))
        .filter_map(|m| Some(format!("http://{}", m.http.as_ref()?)))
        .collect();
    assert_eq!(input.len(), 1, "four nodes: three storage peers and one input node: {view:#?}");
    let input = input[0].clone();
    let input_index = c.nodes.iter().position(|n| n.as_ref().is_some_and(|n| n.url == input)).unwrap();
    // The seed is a storage peer, so the gateway must learn where the input node is.
    let seed_index = (input_index + 1) % 4;

    let dir = tempfile::tempdir().unwrap();
    let seed = c.nodes[seed_index].as_ref().unwrap().url.clone();
    let gw_proc = NodeProc::gateway(&[&seed], dir.path());
    let gw = gw_proc.url.clone();
    // Until its first look at the cluster the gateway sends everything to the seed.
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let (status, node, _) = get(&gw, "/healthz").await;
        if status == 200 && node.as_deref() == Some(input.as_str()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the gateway never routed to the input node {input}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        assert_eq!(get(&gw, "/healthz").await.1.as_deref(), Some(input.as_str()), "the input node serves");
    }

    // Accounts, friendship and messages through the one address; events stream through it.
    let api = Api::new(&gw);
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    api.post("/api/v1/friend-requests", Some(&alice), json!({"to": "bob"})).await;
    let (s, v) = api.call(reqwest::Method::POST, "/api/v1/friend-requests/alice/accept", Some(&bob), None).await;
    assert_eq!(s, reqwest::StatusCode::NO_CONTENT, "{v}");
    let mut sse = api.events(&bob).await;
    for i in 1..=3 {
        let v = api
            .post(
                "/api/v1/dms/bob/messages",
                Some(&alice),
                json!({"text": format!("hi {i}"), "client_msg_id": format!("m{i}")}),
            )
            .await;
        assert_eq!(v["seq"], i);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut streamed = Vec::new();
    while streamed.len() < 3 {
        streamed.extend(sse.messages(deadline).await);
    }
    assert_eq!(streamed, ["hi 1", "hi 2", "hi 3"], "SSE through the gateway, in order");
    let ws_url = format!("{}/api/v1/ws?after=0&access_token={bob}", gw.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.expect("a WebSocket through the gateway");
    let mut over_ws = Vec::new();
    while over_ws.len() < 3 {
        let frame = tokio::time::timeout_at(deadline, ws.next()).await.expect("WS delivers in time").unwrap().unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(t) = frame {
            let ev: Value = serde_json::from_str(&t).unwrap();
            if ev["type"] == "message" {
                over_ws.push(ev["message"]["text"].as_str().unwrap().to_owned());
            }
        }
    }
    assert_eq!(over_ws, ["hi 1", "hi 2", "hi 3"], "WebSocket through the gateway, in order");
    // A gateway told to stop lets open streams run a few seconds, not forever.
    let second = NodeProc::gateway(&[&seed], dir.path());
    let mut open = Api::new(&second.url).events(&bob).await;
    while open.messages(deadline).await.is_empty() {} // until a message arrives: the stream flows
    assert_eq!(second.terminate(), Some(0), "a clean exit with a stream open");
    let (status, _, page) = get(&gw, "/alice").await;
    assert_eq!(status, 200);
    assert!(page.contains("alice"), "alice's profile page: {page}");

    // The input node dies: nothing waits for the gateway's next look at the cluster.
    c.kill9(input_index);
    for _ in 0..10 {
        let (status, node, page) = get(&gw, "/alice").await;
        assert_eq!(status, 200, "{page}");
        assert!(page.contains("alice"));
        assert!(node.is_some_and(|n| n != input), "served by a live node");
    }
    // Writes go on. The cluster itself may answer 503 for a moment when the dead node was the
    // coordinator (a node's 503, not the gateway's); a resend with the same client_msg_id is
    // stored once.
    let body = json!({"text": "after", "client_msg_id": "m4"});
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let v = loop {
        let (s, v) =
            api.call(reqwest::Method::POST, "/api/v1/dms/bob/messages", Some(&alice), Some(body.clone())).await;
        if s.is_success() {
            break v;
        }
        assert_eq!(s, reqwest::StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert!(tokio::time::Instant::now() < deadline, "writes never resumed: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(v["seq"], 4, "writes go on through the gateway, each once");

    // No node left: a clear 503, not a hang.
    drop(c);
    let (status, node, body) = get(&gw, "/api/v1/me").await;
    assert_eq!((status, node), (503, None));
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
}

#[test]
fn a_node_advertises_the_http_address_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(dir.path(), &["--advertise-http", "192.0.2.10:8080"]);
    let url = format!("{}/api/v1/cluster", node.url);
    let view: ClusterView = wait_for("the node's own assignment", SETTLE, || {
        get_json::<ClusterView>(&url).filter(|v| !v.members.is_empty())
    });
    assert_eq!(view.this.http.as_deref(), Some("192.0.2.10:8080"));
    assert_eq!(view.members[0].http.as_deref(), Some("192.0.2.10:8080"), "what a gateway reads");
}
