//! The name server (`chorus-node gateway`): one stable HTTP address for the whole cluster, so
//! `http://<gateway>/<username>` (and every API route and event stream) works whichever nodes
//! are up.
//!
//! * **Who is live.** Every second the gateway asks a node it knows (the last one that
//!   answered, then the `--node` seeds, then every node it has seen) for `GET /api/v1/cluster`
//!   and takes the members of the coordinator's assignment, with their HTTP addresses, from
//!   the first answer. A dead node leaves the assignment within the election timeout.
//! * **Where a request goes.** Round robin over the members with the input role; the other
//!   members come after them (any node serves any user: it forwards to the storage leader), so
//!   a cluster whose input nodes are all gone still answers. A node that refuses the TCP
//!   connection is skipped for [`SKIP_FOR`] and the request goes to the next one: nothing was
//!   sent, so that is safe for any request (bodies up to 64 KiB are read first for this; an
//!   upload streams through, and gets a 503 "retry" instead). A request that was sent is
//!   never sent again (a POST is not idempotent): if its node dies before answering, that
//!   request gets a 502.
//! * **What it forwards.** The request as it came (method, path, query, end-to-end headers,
//!   the body streamed), with the client's address appended to `X-Forwarded-For` (nodes
//!   started with `--trusted-proxy <gateway address>` use it for per-address limits). The
//!   answer streams back as it comes, so Server-Sent Events stream; a WebSocket upgrade is
//!   joined end to end. Each answer carries `X-Chorus-Node`: the node that served it.
//!
//! Connections to the nodes are kept alive and pooled (hyper-util's client): a connection per
//! request cost the node ~100 µs of CPU per request to accept it.

use axum::body::Body;
use axum::body::HttpBody as _;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chorus_protocol::api::{ClusterView, ErrorBody, ErrorDetail};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the member list is refreshed.
pub const REFRESH: Duration = Duration::from_secs(1);
/// How long a node that refused a connection is skipped.
pub const SKIP_FOR: Duration = Duration::from_secs(2);
/// How long a stopping gateway lets open requests (event streams) finish.
const DRAIN: Duration = Duration::from_secs(5);
/// Longest wait for a TCP connection to a node (a host that is gone drops packets).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for a node's `/api/v1/cluster`.
const VIEW_TIMEOUT: Duration = Duration::from_secs(2);
/// Bodies up to this size are read before they are sent, so that another node can take them.
const REPLAYABLE_BODY: usize = 64 * 1024;
/// The answer header naming the node that served a request.
pub const NODE_HEADER: &str = "x-chorus-node";

/// What the gateway knows of the cluster.
#[derive(Debug, Default)]
struct Members {
    /// Members with the input role, from the last view.
    input: Vec<SocketAddr>,
    /// The other members (before the first view: the seeds).
    others: Vec<SocketAddr>,
    /// Where to ask for a view: the seeds, then every member ever seen.
    known: Vec<SocketAddr>,
    /// Nodes that refused a connection, until when they are skipped.
    skipped: HashMap<SocketAddr, Instant>,
    /// Round-robin cursor over `input`.
    next: usize,
}

impl Members {
    /// The nodes to try for one request, in order: input nodes from the cursor on, then the
    /// others; skipped nodes go last rather than nowhere (they may be back).
    fn order(&mut self) -> Vec<SocketAddr> {
        let now = Instant::now();
        self.skipped.retain(|_, until| *until > now);
        let start = self.next;
        self.next = self.next.wrapping_add(1);
        let n = self.input.len().max(1);
        let rotated = self.input.iter().cycle().skip(start % n).take(self.input.len());
        let all: Vec<SocketAddr> = rotated.chain(&self.others).copied().collect();
        let (live, skipped): (Vec<_>, Vec<_>) = all.into_iter().partition(|a| !self.skipped.contains_key(a));
        live.into_iter().chain(skipped).collect()
    }

    /// Takes a node's view of the assignment.
    fn update(&mut self, view: &ClusterView) {
        let (mut input, mut others) = (Vec::new(), Vec::new());
        for m in &view.members {
            let Some(addr) = m.http.as_deref().and_then(|h| h.parse::<SocketAddr>().ok()) else { continue };
            let list = if m.roles.iter().any(|r| r == "input") { &mut input } else { &mut others };
            if !list.contains(&addr) {
                list.push(addr);
            }
            if !self.known.contains(&addr) {
                self.known.push(addr);
            }
        }
        if input.is_empty() && others.is_empty() {
            return; // a node that holds no assignment yet says nothing about the others
        }
        self.input = input;
        self.others = others;
    }
}

/// The shared state of the gateway's handlers.
#[derive(Debug, Clone)]
struct Gateway {
    members: Arc<Mutex<Members>>,
    client: Client,
}

impl Gateway {
    fn members(&self) -> std::sync::MutexGuard<'_, Members> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Serves the gateway on `listener` until `shutdown`, learning the cluster from `seeds`
/// (nodes' HTTP addresses).
pub async fn serve(
    listener: tokio::net::TcpListener,
    seeds: Vec<SocketAddr>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let members = Members { others: seeds.clone(), known: seeds.clone(), ..Members::default() };
    let gw = Gateway { members: Arc::new(Mutex::new(members)), client: client() };
    let refresher = tokio::spawn(refresh(gw.clone()));
    tracing::info!(http = %listener.local_addr()?, nodes = ?seeds, "chorus-node serving gateway");
    let app = axum::Router::new().fallback(forward).with_state(gw);
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    // Graceful shutdown waits for every open request, and an event stream never ends by
    // itself: past DRAIN after the signal, the streams still open are cut.
    let (stopping_tx, stopping) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = stopping_tx.send(());
    };
    let served = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(signal)
        .into_future();
    let cut = async move {
        match stopping.await {
            Ok(()) => tokio::time::sleep(DRAIN).await,
            Err(_) => std::future::pending().await,
        }
    };
    let served = tokio::select! {
        served = served => served,
        () = cut => {
            tracing::info!("stopping: cut the streams still open");
            Ok(())
        }
    };
    refresher.abort();
    served
}

/// Keeps the member list current.
async fn refresh(gw: Gateway) {
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<SocketAddr> = None;
    loop {
        tick.tick().await;
        let known = gw.members().known.clone();
        let prev = last.take();
        let asked = prev.into_iter().chain(known.into_iter().filter(|a| Some(*a) != prev));
        for addr in asked {
            if let Some(view) = fetch_view(&gw.client, addr).await {
                gw.members().update(&view);
                last = Some(addr);
                break;
            }
        }
        if last.is_none() {
            tracing::debug!("no node answered GET /api/v1/cluster");
        }
    }
}

/// A node's `/api/v1/cluster`, if it answers in time.
async fn fetch_view(client: &Client, addr: SocketAddr) -> Option<ClusterView> {
    let ask = async {
        let req = Request::get(format!("http://{addr}/api/v1/cluster")).body(Body::empty()).ok()?;
        let resp = client.request(req).await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let body = axum::body::to_bytes(Body::new(resp.into_body()), 4 << 20).await.ok()?;
        serde_json::from_slice(&body).ok()
    };
    tokio::time::timeout(VIEW_TIMEOUT, ask).await.ok().flatten()
}

/// The gateway's HTTP/1.1 client: kept-alive connections to the nodes, pooled.
type Client = hyper_util::client::legacy::Client<HttpConnector, Body>;

fn client() -> Client {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    hyper_util::client::legacy::Builder::new(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// Every request: to a live node, and its answer back.
async fn forward(
    State(gw): State<Gateway>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    mut req: Request,
) -> Response {
    let client_upgrade = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>();
    let upgrading = client_upgrade.is_some() && req.headers().contains_key(header::UPGRADE);
    strip_hop_by_hop(req.headers_mut(), upgrading);
    append_forwarded_for(req.headers_mut(), client);
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let (parts, body) = req.into_parts();
    // A small body is read first so that it can go to another node if the first one refuses
    // the connection; a large one (an upload) streams through and goes to one node only.
    let small = body.size_hint().upper().is_some_and(|n| n <= REPLAYABLE_BODY as u64);
    let (replayable, mut streamed) = if small {
        match axum::body::to_bytes(body, REPLAYABLE_BODY).await {
            Ok(bytes) => (Some(bytes), None),
            Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_input", format!("reading the body: {e}")),
        }
    } else {
        (None, Some(body))
    };
    let order = gw.members().order();
    for addr in order {
        let Some(body) = replayable.clone().map(Body::from).or_else(|| streamed.take()) else { break };
        let mut out = Request::new(body);
        *out.method_mut() = parts.method.clone();
        *out.headers_mut() = parts.headers.clone();
        *out.uri_mut() = match format!("http://{addr}{path}").parse() {
            Ok(uri) => uri,
            Err(_) => return error(StatusCode::BAD_REQUEST, "invalid_input", "unusable request path".into()),
        };
        match gw.client.request(out).await {
            Ok(resp) => return answer(addr, resp, client_upgrade),
            Err(e) if e.is_connect() => {
                gw.members().skipped.insert(addr, Instant::now() + SKIP_FOR);
                tracing::debug!(%addr, error = %e, "node refused the connection; trying the next");
            }
            Err(e) => {
                tracing::debug!(%addr, error = %e, "node failed mid-request");
                return error(
                    StatusCode::BAD_GATEWAY,
                    "node_failed",
                    format!("node {addr} failed before answering; the request may or may not have taken effect"),
                );
            }
        }
    }
    let message = if replayable.is_none() && streamed.is_none() {
        "the node refused the connection; nothing was sent, retry"
    } else {
        "no node of the cluster answered"
    };
    error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message.into())
}

/// The node's answer, as the client gets it; an upgrade is joined end to end.
fn answer(
    addr: SocketAddr,
    mut resp: Response<hyper::body::Incoming>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_side) = client_upgrade else {
            return error(StatusCode::BAD_GATEWAY, "node_failed", "the node switched protocols unasked".into());
        };
        let node_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (Ok(client), Ok(node)) = tokio::join!(client_side, node_side) else { return };
            let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(node)).await;
        });
    } else {
        strip_hop_by_hop(resp.headers_mut(), false);
    }
    if let Ok(v) = HeaderValue::from_str(&addr.to_string()) {
        resp.headers_mut().insert(NODE_HEADER, v);
    }
    resp.map(Body::new)
}

/// Headers that belong to one connection, not to the request (RFC 9110 §7.6.1); an upgrade
/// keeps `Connection` and `Upgrade`, which ask the node for it.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !(upgrading && *name == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [header::TE, header::TRAILER, header::TRANSFER_ENCODING, header::PROXY_AUTHORIZATION] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if !upgrading {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// Appends the client's address to `X-Forwarded-For`.
fn append_forwarded_for(headers: &mut HeaderMap, client: SocketAddr) {
    let ip = client.ip().to_string();
    let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(before) => format!("{before}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert("x-forwarded-for", v);
    }
}

/// An error in the API's shape: `{"error":{"code":...,"message":...}}`.
fn error(status: StatusCode, code: &str, message: String) -> Response {
    (status, axum::Json(ErrorBody { error: ErrorDetail { code: code.into(), message } })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn input_nodes_take_turns_and_refusing_nodes_go_last() {
        let mut m = Members { input: vec![addr(1), addr(2)], others: vec![addr(3)], ..Members::default() };
        assert_eq!(m.order(), [addr(1), addr(2), addr(3)]);
        assert_eq!(m.order(), [addr(2), addr(1), addr(3)]);
        m.skipped.insert(addr(1), Instant::now() + SKIP_FOR);
        assert_eq!(m.order(), [addr(2), addr(3), addr(1)]);
        m.skipped.insert(addr(1), Instant::now() - Duration::from_millis(1));
        assert_eq!(m.order(), [addr(2), addr(1), addr(3)], "the skip expired");
    }

    #[test]
    fn hop_by_hop_headers_stay_behind_unless_they_ask_for_an_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-private, upgrade"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        let mut plain = h.clone();
        strip_hop_by_hop(&mut plain, false);
        assert_eq!(plain.keys().collect::<Vec<_>>(), [header::AUTHORIZATION]);
        strip_hop_by_hop(&mut h, true);
        assert!(h.contains_key(header::UPGRADE) && h.contains_key(header::CONNECTION) && !h.contains_key("x-private"));
        append_forwarded_for(&mut h, "10.0.0.9:5000".parse().unwrap());
        append_forwarded_for(&mut h, "10.0.0.7:5000".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "10.0.0.9, 10.0.0.7");
    }
}
