//! Wiring: open storage, start the log writer, build the service and the router, serve HTTP,
//! and shut down in order (stop accepting, end streams, drain requests, stop the writer,
//! flush RocksDB).
//!
//! ```text
//! run ─┬─ writer thread (replication::Log)      ends when the last Log handle drops
//!      ├─ HTTP server (axum, graceful)          ends on shutdown, after draining
//!      └─ limiter pruning task                  aborted at shutdown
//! ```

use crate::api::{self, limits::Limits, metrics::Metrics, AppState, ClusterInfo};
use crate::config::RunConfig;
use crate::election::driver::{self, ClusterState, DriverConfig};
use crate::overlay::identity;
use crate::overlay::{self, OverlayConfig, OverlayError};
use crate::replication::Log;
use crate::service::{Hub, Service};
use crate::storage::{StorageError, Store};
use chorus_protocol::api::{ClusterView, ElectionStats, MemberView, NodeView};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Why a node could not start or stopped uncleanly.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Storage failed to open or flush.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The node key could not be loaded.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// The libp2p overlay failed to start.
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    /// Binding or serving failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
    let context = context.into();
    move |source| NodeError::Io { context, source }
}

/// The cluster view served at `GET /api/v1/cluster`, from the election driver's state.
struct Cluster {
    peer_id: String,
    http: String,
    state: Arc<ClusterState>,
}

fn role_names(roles: &[chorus_protocol::cluster::Role]) -> Vec<String> {
    roles.iter().map(|r| r.as_str().to_owned()).collect()
}

impl ClusterInfo for Cluster {
    fn view(&self) -> ClusterView {
        let v = self.state.view();
        let members = v
            .assignment
            .as_ref()
            .map(|a| {
                a.assignment
                    .members
                    .iter()
                    .map(|m| MemberView {
                        peer_id: m.peer_id.clone(),
                        roles: role_names(&m.roles),
                        http: m.http.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let s = &self.state;
        ClusterView {
            this: NodeView {
                peer_id: self.peer_id.clone(),
                roles: v
                    .assignment
                    .as_ref()
                    .map(|a| role_names(&a.assignment.roles_of(&self.peer_id)))
                    .unwrap_or_default(),
                http: Some(self.http.clone()),
                addrs: v.addrs.iter().map(|a| a.to_string()).collect(),
            },
            coordinator: v.coordinator.map(|c| c.to_base58()),
            epoch: v.assignment.as_ref().map_or(0, |a| a.assignment.epoch),
            members,
            // Until replication lands, every node commits to its own local log.
            storage_leader: Some(self.peer_id.clone()),
            assignment: v.assignment.clone(),
            election: Some(ElectionStats {
                round: v.round,
                election_msgs: s.election_msgs.load(Ordering::Relaxed),
                elected_msgs: s.elected_msgs.load(Ordering::Relaxed),
                rejected_forged: s.rejected_forged.load(Ordering::Relaxed),
                ignored_stale: s.ignored_stale.load(Ordering::Relaxed),
            }),
        }
    }

    fn ready(&self) -> bool {
        self.state.view().assignment.is_some()
    }
}

/// Runs a node until `shutdown` resolves.
pub async fn run(config: RunConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), NodeError> {
    serve(config, shutdown).await
}

async fn serve(config: RunConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), NodeError> {
    let key = identity::load_or_create(&config.data_dir)?;
    let peer_id = key.public().to_peer_id().to_string();
    let db_dir = config.data_dir.join("db");
    let store = Arc::new(
        tokio::task::spawn_blocking(move || Store::open(&db_dir))
            .await
            .map_err(|e| NodeError::Io { context: "open storage".into(), source: std::io::Error::other(e) })??,
    );

    let hub = Arc::new(Hub::default());
    let metrics = Arc::new(Metrics::default());
    let on_commit = {
        let (hub, metrics) = (hub.clone(), metrics.clone());
        Box::new(move |notices: &[crate::storage::Notice], messages: u64| {
            hub.notify(notices);
            metrics.messages.inc_by(messages);
            metrics.batches.inc();
        })
    };
    let (log, writer) = Log::start(store.clone(), on_commit).map_err(io("start the writer thread"))?;
    let service = Service::new(store.clone(), log, hub.clone(), config.service());
    let limits = Arc::new(Limits::new(config.limits()));

    let listener =
        tokio::net::TcpListener::bind(config.http).await.map_err(io(format!("bind HTTP {}", config.http)))?;
    let http = listener.local_addr().map_err(io("local address"))?;
    let overlay_cfg = OverlayConfig {
        listen: config.listen.clone(),
        bootstrap: config.bootstrap.clone(),
        mdns: config.mdns,
        election_timeout: std::time::Duration::from_millis(config.election_timeout_ms),
    };
    // Raft requests are not served until replication is wired in (issue 4): dropping the
    // receiver makes the event loop ignore them.
    let (client, events, _raft_requests, event_loop) = overlay::new(key.clone(), overlay_cfg)?;
    let cluster_state = Arc::new(ClusterState::default());
    let driver_cfg = DriverConfig {
        heartbeat: std::time::Duration::from_millis(config.heartbeat_ms.max(50)),
        timeout: std::time::Duration::from_millis(config.election_timeout_ms.max(200)),
        storage_replicas: config.storage_replicas.max(1),
        http: http.to_string(),
        no_storage: config.no_storage,
    };
    let overlay_task = tokio::spawn(event_loop.run());
    let driver_task = tokio::spawn(driver::run(key, driver_cfg, client, events, cluster_state.clone()));
    let cluster = Arc::new(Cluster { peer_id: peer_id.clone(), http: http.to_string(), state: cluster_state });
    let state = AppState { service, limits: limits.clone(), metrics, cluster };
    let app = api::router(state).into_make_service_with_connect_info::<SocketAddr>();
    tracing::info!(%peer_id, %http, data_dir = %config.data_dir.display(), "chorus-node serving");

    let pruner = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tick.tick().await;
            limits.prune();
        }
    });
    let closing_hub = hub.clone();
    // Without TCP_NODELAY a response split over two segments waits for the client's delayed
    // ACK (up to 40 ms): a latency cliff at low load.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: ending event streams, draining requests");
            closing_hub.close();
        })
        .await
        .map_err(io("serve HTTP"));
    pruner.abort();
    // Dropping the driver drops the last overlay client: the swarm closes its connections.
    driver_task.abort();
    let _ = driver_task.await;
    let _ = overlay_task.await;
    // The router (and with it every Log handle) is gone: the writer drains and stops.
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    let flushed = tokio::task::spawn_blocking(move || store.flush()).await;
    tracing::info!("stopped");
    result?;
    flushed.map_err(|e| NodeError::Io { context: "flush".into(), source: std::io::Error::other(e) })??;
    Ok(())
}
