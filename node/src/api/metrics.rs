//! Prometheus metrics: requests by route and status, request latency, messages committed,
//! open event streams. Served as text at `/metrics`.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

/// The node's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Histogram,
    /// Messages committed by this node's log.
    pub messages: Counter,
    /// Log entries applied: each is one group-commit batch (messages / batches = commands per entry).
    pub batches: Counter,
    /// Open SSE/WebSocket streams.
    pub streams: Gauge,
    /// The replicated log's WAL syncs and commits.
    pub replication: crate::replication::Timings,
}

impl Metrics {
    /// The node's metrics, with the event streams' reads counted in `hub`.
    pub fn new(hub: &crate::service::Hub) -> Self {
        let mut registry = Registry::with_prefix("chorus");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        let messages = Counter::default();
        let streams = Gauge::default();
        let batches = Counter::default();
        registry.register("http_requests", "HTTP requests by method, route and status", requests.clone());
        registry.register("http_request_duration_seconds", "HTTP request latency", latency.clone());
        registry.register("messages", "Chat messages committed", messages.clone());
        registry.register("event_streams", "Open event streams (SSE and WebSocket)", streams.clone());
        registry.register(
            "log_batches",
            "Log entries applied, each one group-commit batch of commands",
            batches.clone(),
        );
        registry.register(
            "event_stream_reads",
            "Event streams' reads of a user's log at the leader (start, gap: a notice that does not continue the stream, poll)",
            hub.reads.clone(),
        );
        let replication = crate::replication::Timings::default();
        registry.register(
            "raft_wal_sync_duration_seconds",
            "One sync of the Raft log's WAL (every append waits for one)",
            replication.wal_sync.clone(),
        );
        registry.register(
            "raft_commit_duration_seconds",
            "One merged log entry on the leader, from submission to applied",
            replication.commit.clone(),
        );
        Self { registry, requests, latency, messages, batches, streams, replication }
    }
}

impl Metrics {
    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Middleware: counts and times every request by its route template (not its raw path, so
/// label cardinality stays bounded).
pub async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    metrics.latency.observe(start.elapsed().as_secs_f64());
    metrics.requests.get_or_create(&RequestLabels { method, route, status: resp.status().as_u16() }).inc();
    resp
}
