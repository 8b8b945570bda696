//! Router tests: every route, success and failure, through `oneshot` on a real RocksDB in a
//! temp dir (no sockets).

use super::*;
use crate::replication::Log;
use crate::service::{Hub, ServiceConfig};
use crate::testkit::RaftPeer;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use chorus_protocol::api::{ClusterView, MemberView, NodeView};
use futures::StreamExt;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

struct Fixed;

impl ClusterInfo for Fixed {
    fn view(&self) -> ClusterView {
        let me = NodeView { peer_id: "self".into(), roles: vec!["storage".into()], http: None, addrs: vec![] };
        ClusterView {
            this: me,
            coordinator: Some("self".into()),
            epoch: 0,
            members: Vec::<MemberView>::new(),
            storage_leader: None,
            assignment: None,
            election: None,
            raft: None,
        }
    }
    fn ready(&self) -> bool {
        true
    }
}

struct App {
    router: Router,
    _peer: RaftPeer,
}

/// The router over a one-voter Raft group on a real RocksDB in a temp dir.
async fn app_with(config: ServiceConfig, limits: limits::LimitConfig) -> App {
    let hub = Arc::new(Hub::default());
    let metrics = Arc::new(metrics::Metrics::new(&hub));
    let h = hub.clone();
    let peer = RaftPeer::solo(Arc::new(move |out| h.notify_applied(&out.notices))).await;
    let sessions = Arc::new(crate::service::SessionCache::default());
    let service = Service::new(Log::start(peer.replica.clone()), hub, sessions, config);
    let state = AppState { service, limits: Arc::new(limits::Limits::new(limits)), metrics, cluster: Arc::new(Fixed) };
    App { router: router(state), _peer: peer }
}

async fn app() -> App {
    let limits = limits::LimitConfig {
        user_rps: 0,
        logins_per_minute: 1000,
        registrations_per_minute: 1000,
        ..Default::default()
    };
    app_with(ServiceConfig::default(), limits).await
}

impl App {
    async fn req(&self, method: Method, uri: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                b = b.header("content-type", "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        self.send(b.body(body).unwrap()).await
    }

    async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, v)
    }

    async fn get(&self, uri: &str, token: &str) -> (StatusCode, Value) {
        self.req(Method::GET, uri, Some(token), None).await
    }

    async fn post(&self, uri: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.req(Method::POST, uri, Some(token), Some(body)).await
    }

    /// Registers and logs in; returns the token.
    async fn user(&self, name: &str) -> String {
        let (s, _) = self
            .req(Method::POST, "/api/v1/accounts", None, Some(json!({"username": name, "password": "password123"})))
            .await;
        assert_eq!(s, StatusCode::CREATED);
        let (s, v) = self
            .req(Method::POST, "/api/v1/sessions", None, Some(json!({"username": name, "password": "password123"})))
            .await;
        assert_eq!(s, StatusCode::CREATED);
        v["token"].as_str().unwrap().to_owned()
    }

    async fn befriend(&self, a: (&str, &str), b: (&str, &str)) {
        let (s, v) = self.post("/api/v1/friend-requests", a.1, json!({"to": b.0})).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (s, _) = self.req(Method::POST, &format!("/api/v1/friend-requests/{}/accept", a.0), Some(b.1), None).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no code>")
}

#[tokio::test]
async fn accounts_and_sessions() {
    let app = app().await;
    let reg = |body: Value| app.req(Method::POST, "/api/v1/accounts", None, Some(body));
    let (s, v) = reg(json!({"username": "alice", "password": "password123", "display_name": "Alice A"})).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(v["display_name"], "Alice A");
    let (s, v) = reg(json!({"username": "alice", "password": "password123"})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "username_taken"));
    for bad in [
        json!({"username": "Al", "password": "password123"}),
        json!({"username": "bad name", "password": "password123"}),
        json!({"username": "api", "password": "password123"}),
        json!({"username": "bob", "password": "short"}),
        json!({"username": "bob", "password": "password123", "admin": true}),
        json!({"username": "bob"}),
    ] {
        let (s, v) = reg(bad.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad} -> {v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let raw = Request::post("/api/v1/accounts")
        .header("content-type", "application/json")
        .body(Body::from("{not json"))
        .unwrap();
    let (s, v) = app.send(raw).await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "malformed_json"));
    let raw = Request::post("/api/v1/accounts").body(Body::from("{}")).unwrap();
    let (s, v) = app.send(raw).await;
    assert_eq!((s, code(&v)), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_content_type"));
    let big = json!({"username": "bob", "password": "x".repeat(100_000)});
    let (s, _) = reg(big).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    // None of the refusals created "bob".
    let token = app.user("carol").await;
    let (s, v) = app.get("/api/v1/users/bob", &token).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "user_not_found"));

    let login =
        |u: &str, p: &str| app.req(Method::POST, "/api/v1/sessions", None, Some(json!({"username": u, "password": p})));
    let (s, v) = login("alice", "wrong-password").await;
    assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "invalid_credentials"));
    let (s, v) = login("nobody", "password123").await;
    assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "invalid_credentials"));
    let (s, v) = login("alice", "password123").await;
    assert_eq!(s, StatusCode::CREATED);
    let token = v["token"].as_str().unwrap().to_owned();
    assert!(v["expires_at"].as_u64().unwrap() > crate::service::now_ms());

    let (s, v) = app.get("/api/v1/me", &token).await;
    assert_eq!((s, v["username"].as_str()), (StatusCode::OK, Some("alice")));
    let (s, v) = app.req(Method::GET, "/api/v1/me", None, None).await;
    assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let (s, _) = app.get("/api/v1/me", "not-a-token").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v) = app.get("/api/v1/users/alice", &token).await;
    assert_eq!((s, v["display_name"].as_str()), (StatusCode::OK, Some("Alice A")));

    let (s, _) = app.req(Method::DELETE, "/api/v1/sessions", Some(&token), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app.get("/api/v1/me", &token).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a logged-out token stops working");
}

#[tokio::test]
async fn expired_sessions_are_refused() {
    let config = ServiceConfig { session_ttl: std::time::Duration::from_millis(1), ..Default::default() };
    let app = app_with(config, limits::LimitConfig { user_rps: 0, ..Default::default() }).await;
    let token = app.user("alice").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (s, v) = app.get("/api/v1/me", &token).await;
        if s == StatusCode::UNAUTHORIZED {
            assert_eq!(code(&v), "unauthorized");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "token never expired");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn friends() {
    let app = app().await;
    let (a, b, c) = (app.user("alice").await, app.user("bob").await, app.user("carol").await);
    let (s, v) = app.post("/api/v1/friend-requests", &a, json!({"to": "bob"})).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::CREATED, Some("pending")));
    let (s, v) = app.post("/api/v1/friend-requests", &a, json!({"to": "bob"})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "request_pending"));
    let (s, v) = app.post("/api/v1/friend-requests", &a, json!({"to": "alice"})).await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "self_friendship"));
    let (s, v) = app.post("/api/v1/friend-requests", &a, json!({"to": "nobody"})).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "user_not_found"));
    let (s, v) = app.post("/api/v1/friend-requests", &a, json!({"too": "bob"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    let (_, v) = app.get("/api/v1/friend-requests", &b).await;
    assert_eq!(v["incoming"][0]["from"], "alice");
    let (_, v) = app.get("/api/v1/friend-requests", &a).await;
    assert_eq!(v["outgoing"][0]["to"], "bob");

    let (s, v) = app.req(Method::POST, "/api/v1/friend-requests/carol/accept", Some(&b), None).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "no_such_request"));
    let (s, _) = app.req(Method::POST, "/api/v1/friend-requests/alice/accept", Some(&b), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, v) = app.get("/api/v1/friends", &a).await;
    assert_eq!(v[0]["username"], "bob");
    let (s, v) = app.post("/api/v1/friend-requests", &b, json!({"to": "alice"})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "already_friends"));

    // Decline.
    app.post("/api/v1/friend-requests", &c, json!({"to": "alice"})).await;
    let (s, _) = app.req(Method::POST, "/api/v1/friend-requests/carol/decline", Some(&a), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, v) = app.get("/api/v1/friend-requests", &a).await;
    assert_eq!(v["incoming"].as_array().unwrap().len(), 0);
    // Crossed requests become a friendship at once.
    app.post("/api/v1/friend-requests", &c, json!({"to": "bob"})).await;
    let (_, v) = app.post("/api/v1/friend-requests", &b, json!({"to": "carol"})).await;
    assert_eq!(v["status"], "accepted");

    let (s, _) = app.req(Method::DELETE, "/api/v1/friends/bob", Some(&a), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = app.req(Method::DELETE, "/api/v1/friends/bob", Some(&a), None).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "not_friends"));
    let (_, v) = app.get("/api/v1/friends", &b).await;
    assert_eq!(v.as_array().unwrap().iter().map(|f| f["username"].as_str().unwrap()).collect::<Vec<_>>(), ["carol"]);
}

#[tokio::test]
async fn direct_messages() {
    let app = app().await;
    let (a, b, c) = (app.user("alice").await, app.user("bob").await, app.user("carol").await);
    let (s, v) = app.post("/api/v1/dms/bob/messages", &a, json!({"text": "hi"})).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "not_friends"));
    app.befriend(("alice", &a), ("bob", &b)).await;
    let (s, v) = app.post("/api/v1/dms/bob/messages", &a, json!({"text": "hi bob", "client_msg_id": "m1"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["seq"], 1);
    assert_eq!(v["chat_id"], "dm:alice:bob");
    let (s, again) = app.post("/api/v1/dms/bob/messages", &a, json!({"text": "hi bob", "client_msg_id": "m1"})).await;
    assert_eq!((s, &again), (StatusCode::CREATED, &v), "a retry returns the first answer");
    let (_, v2) = app.post("/api/v1/chats/dm:alice:bob/messages", &b, json!({"text": "hello alice"})).await;
    assert_eq!(v2["seq"], 2);

    for bad in [
        json!({"text": ""}),
        json!({"text": "x".repeat(16 * 1024 + 1)}),
        json!({"text": "a", "colour": 1}),
        json!({"text": "a", "client_msg_id": ""}),
    ] {
        let (s, v) = app.post("/api/v1/dms/bob/messages", &a, bad).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    }
    let (s, v) = app.post("/api/v1/dms/alice/messages", &a, json!({"text": "me"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    let (s, v) = app.get("/api/v1/chats/dm:alice:bob/messages", &b).await;
    assert_eq!(s, StatusCode::OK);
    let seqs: Vec<u64> = v["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2], "gapless, oldest first, the retry stored once");
    assert_eq!(v["messages"][0]["text"], "hi bob");
    let (_, v) = app.get("/api/v1/chats/dm:alice:bob/messages?after=1&limit=10", &a).await;
    assert_eq!(v["messages"][0]["seq"], 2);
    let (s, _) = app.get("/api/v1/chats/dm:alice:bob/messages?after=x", &a).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = app.get("/api/v1/chats/dm:alice:bob/messages", &c).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "chat_not_found"));
    let (s, _) = app.post("/api/v1/chats/dm:alice:bob/messages", &c, json!({"text": "intrude"})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app.get("/api/v1/chats/garbage/messages", &a).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (_, v) = app.get("/api/v1/chats", &a).await;
    assert_eq!(v[0]["chat_id"], "dm:alice:bob");
    assert_eq!(v[0]["name"], "bob");
    assert_eq!(v[0]["last_seq"], 2);
    let (_, v) = app.get("/api/v1/chats", &c).await;
    assert_eq!(v.as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn history_pages_are_capped_and_gapless() {
    let app = app().await;
    let (a, b) = (app.user("alice").await, app.user("bob").await);
    app.befriend(("alice", &a), ("bob", &b)).await;
    for i in 0..620 {
        let (s, _) = app.post("/api/v1/dms/bob/messages", &a, json!({"text": format!("m{i}")})).await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let (_, v) = app.get("/api/v1/chats/dm:alice:bob/messages?limit=100000", &b).await;
    assert_eq!(v["messages"].as_array().unwrap().len(), crate::service::HISTORY_LIMIT_MAX);
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let (_, v) = app.get(&format!("/api/v1/chats/dm:alice:bob/messages?after={after}&limit=250"), &b).await;
        let page = v["messages"].as_array().unwrap();
        if page.is_empty() {
            break;
        }
        seen.extend(page.iter().map(|m| m["seq"].as_u64().unwrap()));
        after = *seen.last().unwrap();
    }
    assert_eq!(seen, (1..=620).collect::<Vec<u64>>());
}

#[tokio::test]
async fn groups() {
    let app = app().await;
    let (a, b, c, d) =
        (app.user("alice").await, app.user("bob").await, app.user("carol").await, app.user("dave").await);
    let (s, v) = app.post("/api/v1/groups", &a, json!({"name": "  ", "members": []})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = app.post("/api/v1/groups", &a, json!({"name": "g", "members": ["nobody"]})).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "user_not_found"));
    let (s, v) = app.post("/api/v1/groups", &a, json!({"name": "Trip", "members": ["bob"]})).await;
    assert_eq!(s, StatusCode::CREATED);
    let (gid, chat) = (v["group_id"].as_str().unwrap().to_owned(), v["chat_id"].as_str().unwrap().to_owned());
    let (s, v) = app.get(&format!("/api/v1/groups/{gid}"), &b).await;
    assert_eq!(
        (s, v["admin"].as_str(), v["members"].clone()),
        (StatusCode::OK, Some("alice"), json!(["alice", "bob"]))
    );
    let (s, _) = app.get(&format!("/api/v1/groups/{gid}"), &c).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "non-members cannot see the group");
    let (s, _) = app.get("/api/v1/groups/nonsense", &a).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let members = format!("/api/v1/groups/{gid}/members");
    let (s, v) = app.post(&members, &b, json!({"username": "carol"})).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "not_admin"));
    let (s, v) = app.post(&members, &a, json!({"username": "carol"})).await;
    assert_eq!((s, v["members"].clone()), (StatusCode::CREATED, json!(["alice", "bob", "carol"])));
    let (s, v) = app.post(&members, &a, json!({"username": "carol"})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "already_member"));

    let path = format!("/api/v1/chats/{chat}/messages");
    let send = |t: String, text: &'static str| {
        let (app, path) = (&app, path.clone());
        async move { app.post(&path, &t, json!({"text": text})).await }
    };
    assert_eq!(send(c.clone(), "hi all").await.1["seq"], 1);
    assert_eq!(send(b.clone(), "hey").await.1["seq"], 2);
    let (s, _) = send(d.clone(), "let me in").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The admin removes bob; bob can no longer read or write.
    let (s, _) = app.req(Method::DELETE, &format!("{members}/bob"), Some(&c), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app.req(Method::DELETE, &format!("{members}/bob"), Some(&a), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app.get(&format!("/api/v1/chats/{chat}/messages"), &b).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(send(b.clone(), "still here?").await.0, StatusCode::NOT_FOUND);
    let (s, v) = app.req(Method::DELETE, &format!("{members}/dave"), Some(&a), None).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_member"));

    // The admin leaves: carol inherits the group.
    let (s, _) = app.req(Method::DELETE, &format!("{members}/alice"), Some(&a), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, v) = app.get(&format!("/api/v1/groups/{gid}"), &c).await;
    assert_eq!((v["admin"].as_str(), v["members"].clone()), (Some("carol"), json!(["carol"])));
    let (_, v) = app.get("/api/v1/chats", &c).await;
    assert_eq!(
        (v[0]["kind"].as_str(), v[0]["name"].as_str(), v[0]["last_seq"].as_u64()),
        (Some("group"), Some("Trip"), Some(2))
    );
    let (_, v) = app.get("/api/v1/chats", &a).await;
    assert!(v.as_array().unwrap().is_empty());
}

async fn upload(app: &App, token: &str, name: &str, data: Vec<u8>) -> (StatusCode, Value) {
    let req = Request::post(format!("/api/v1/files?name={name}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "text/plain")
        .body(Body::from(data))
        .unwrap();
    app.send(req).await
}

#[tokio::test]
async fn files() {
    let config = ServiceConfig { max_file_size: 3 * 1024 * 1024, ..Default::default() };
    let app = app_with(config, limits::LimitConfig { user_rps: 0, ..Default::default() }).await;
    let (a, b, c) = (app.user("alice").await, app.user("bob").await, app.user("carol").await);
    app.befriend(("alice", &a), ("bob", &b)).await;
    let data: Vec<u8> = (0..(2 * 1024 * 1024 + 123)).map(|i| (i % 251) as u8).collect();
    let (s, v) = upload(&app, &a, "notes.txt", data.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    use sha2::Digest;
    assert_eq!(v["sha256"], hex::encode(sha2::Sha256::digest(&data)));
    assert_eq!(v["size"], data.len());
    let file_id = v["file_id"].as_str().unwrap().to_owned();

    let download = |t: String| {
        let req = Request::get(format!("/api/v1/files/{file_id}"))
            .header("authorization", format!("Bearer {t}"))
            .body(Body::empty())
            .unwrap();
        app.router.clone().oneshot(req)
    };
    let resp = download(a.clone()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    assert_eq!(resp.headers()["content-length"], data.len().to_string().as_str());
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes().as_ref(), &data[..]);
    assert_eq!(download(b.clone()).await.unwrap().status(), StatusCode::NOT_FOUND, "not shared yet");

    let (s, v) = app.post("/api/v1/dms/bob/messages", &a, json!({"text": "see file", "files": [file_id]})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let resp = download(b.clone()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "bob can see a message that carries it");
    assert_eq!(download(c.clone()).await.unwrap().status(), StatusCode::NOT_FOUND);
    let (_, v) = app.get("/api/v1/chats/dm:alice:bob/messages", &b).await;
    assert_eq!(v["messages"][0]["files"][0]["name"], "notes.txt");

    // Carol cannot attach a file she cannot see, nor an unknown one.
    let (s, v) = app.post("/api/v1/groups", &c, json!({"name": "solo"})).await;
    assert_eq!(s, StatusCode::CREATED);
    let chat = v["chat_id"].as_str().unwrap();
    let (s, v) =
        app.post(&format!("/api/v1/chats/{chat}/messages"), &c, json!({"text": "x", "files": [file_id]})).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "file_not_found"));
    let (s, _) = app
        .post(&format!("/api/v1/chats/{chat}/messages"), &c, json!({"files": ["0123456789abcdef0123456789abcdef"]}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (s, v) = upload(&app, &a, "big.bin", vec![0u8; 3 * 1024 * 1024 + 1]).await;
    assert_eq!((s, code(&v)), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"));
    let (s, _) = upload(&app, &a, "x%2Fy", vec![1]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = app.get("/api/v1/files/nothex", &a).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// Reads SSE frames until `want` events arrived (or the deadline passes).
async fn sse_events(router: &Router, token: &str, last_event_id: Option<u64>, query: &str, want: usize) -> Vec<Value> {
    let mut req = Request::get(format!("/api/v1/events{query}")).header("authorization", format!("Bearer {token}"));
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id.to_string());
    }
    let resp = router.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body().into_data_stream();
    let mut text = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while out.len() < want {
        let chunk =
            tokio::time::timeout_at(deadline, body.next()).await.expect("events arrive in time").unwrap().unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = text.find("\n\n") {
            let frame: String = text.drain(..end + 2).collect();
            if let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) {
                out.push(serde_json::from_str(data).unwrap());
            }
        }
    }
    out
}

#[tokio::test]
async fn events_stream_and_resume() {
    let app = app().await;
    let (a, b) = (app.user("alice").await, app.user("bob").await);
    // bob is told: friend request (1), friend added (2), two messages (3, 4).
    app.befriend(("alice", &a), ("bob", &b)).await;
    app.post("/api/v1/dms/bob/messages", &a, json!({"text": "one"})).await;
    app.post("/api/v1/dms/bob/messages", &a, json!({"text": "two"})).await;
    let all = sse_events(&app.router, &b, None, "?after=0", 4).await;
    let kinds: Vec<&str> = all.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["friend_request", "friend_added", "message", "message"]);
    assert_eq!(all.iter().map(|e| e["seq"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3, 4]);
    // Resume after seq 3: only what was missed.
    let rest = sse_events(&app.router, &b, Some(3), "", 1).await;
    assert_eq!((rest[0]["seq"].as_u64(), rest[0]["message"]["text"].as_str()), (Some(4), Some("two")));
    // A live stream (no position) gets only new events, pushed as they commit.
    let live = tokio::spawn({
        let (router, b) = (app.router.clone(), b.clone());
        async move { sse_events(&router, &b, None, "", 1).await }
    });
    // Keep sending until the live stream has subscribed and sees one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !live.is_finished() {
        app.post("/api/v1/dms/bob/messages", &a, json!({"text": "live"})).await;
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let got = live.await.unwrap();
    assert_eq!(got[0]["message"]["text"], "live");
    assert!(got[0]["seq"].as_u64().unwrap() >= 5);
    let req = Request::get("/api/v1/events")
        .header("authorization", format!("Bearer {b}"))
        .header("last-event-id", "abc")
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.send(req).await.0, StatusCode::BAD_REQUEST);
    let (s, _) = app.req(Method::GET, "/api/v1/events", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Each of the three streams read the log when it opened; /metrics counts them.
    let (_, v) = app.req(Method::GET, "/metrics", None, None).await;
    let text = v.as_str().unwrap();
    let starts = text.lines().find_map(|l| l.strip_prefix("chorus_event_stream_reads_total{why=\"start\"} "));
    assert!(starts.and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n >= 3), "{text}");
}

#[tokio::test]
async fn operations_and_pages() {
    let app = app().await;
    let token = app.user("alice").await;
    let (s, v) = app.req(Method::GET, "/healthz", None, None).await;
    assert_eq!((s, v.as_str()), (StatusCode::OK, Some("ok\n")));
    let (s, _) = app.req(Method::GET, "/readyz", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = app.req(Method::GET, "/metrics", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let text = v.as_str().unwrap();
    assert!(text.contains("chorus_http_requests_total"), "{text}");
    assert!(text.contains("chorus_http_request_duration_seconds_bucket"));
    assert!(text.contains("chorus_messages_total"));
    let (s, v) = app.req(Method::GET, "/api/v1/cluster", None, None).await;
    assert_eq!((s, v["self"]["peer_id"].as_str()), (StatusCode::OK, Some("self")));
    let (s, v) = app.req(Method::GET, "/alice", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v.as_str().unwrap().contains("@alice"));
    let (s, _) = app.req(Method::GET, "/nobody", None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = app.req(Method::GET, "/", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v.as_str().unwrap().contains("EventSource"));
    let (s, v) = app.get("/api/v1/nothing-here", &token).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));
    let (s, _) = app.req(Method::DELETE, "/api/v1/me", Some(&token), None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn rate_limits_answer_429() {
    let app = app_with(
        ServiceConfig::default(),
        limits::LimitConfig { user_rps: 5, logins_per_minute: 3, registrations_per_minute: 100, ..Default::default() },
    )
    .await;
    let token = app.user("alice").await; // one login used
    let login =
        || app.req(Method::POST, "/api/v1/sessions", None, Some(json!({"username": "alice", "password": "nope-nope"})));
    assert_eq!(login().await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(login().await.0, StatusCode::UNAUTHORIZED);
    let (s, v) = login().await;
    assert_eq!((s, code(&v)), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    let mut limited = false;
    for _ in 0..20 {
        if app.get("/api/v1/me", &token).await.0 == StatusCode::TOO_MANY_REQUESTS {
            limited = true;
            break;
        }
    }
    assert!(limited, "per-user request limit");
}
