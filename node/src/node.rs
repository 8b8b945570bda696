//! Wiring: open storage, start the overlay, the election driver and the replica (Raft), build
//! the service and the router, serve HTTP, and shut down in order (stop accepting, end
//! streams, drain requests, stop Raft, flush RocksDB).
//!
//! ```text
//! run ─┬─ overlay event loop                    ends when the last Client drops
//!      ├─ election driver                       aborted at shutdown
//!      ├─ replica: Raft + serve + membership    stopped at shutdown
//!      ├─ batcher (replication::Log)            ends when the last Log handle drops
//!      ├─ notice listener (events gossip → hub) ends with the driver
//!      ├─ HTTP server (axum, graceful)          ends on shutdown, after draining
//!      └─ limiter pruning task                  aborted at shutdown
//! ```

use crate::api::{self, limits::Limits, metrics::Metrics, AppState, ClusterInfo};
use crate::config::RunConfig;
use crate::election::driver::{self, ClusterState, DriverConfig};
use crate::overlay::identity;
use crate::overlay::{self, OverlayConfig, OverlayError};
use crate::replication::{Log, Replica, StartError};
use crate::service::{Hub, Service, SessionCache};
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
    /// Raft failed to start.
    #[error(transparent)]
    Replication(#[from] StartError),
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
    replica: Replica,
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
            storage_leader: self.replica.leader().map(|p| p.to_base58()),
            assignment: v.assignment.clone(),
            election: Some(ElectionStats {
                round: v.round,
                election_msgs: s.election_msgs.load(Ordering::Relaxed),
                elected_msgs: s.elected_msgs.load(Ordering::Relaxed),
                rejected_forged: s.rejected_forged.load(Ordering::Relaxed),
                ignored_stale: s.ignored_stale.load(Ordering::Relaxed),
            }),
            raft: Some(self.replica.cluster_status()),
        }
    }

    fn ready(&self) -> bool {
        self.state.view().assignment.is_some() && self.replica.leader().is_some()
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
    let sessions = Arc::new(SessionCache::default());
    let metrics = Arc::new(Metrics::new(&hub));
    let on_apply: crate::storage::raft::OnApply = {
        let (hub, metrics, sessions) = (hub.clone(), metrics.clone(), sessions.clone());
        Arc::new(move |out: &crate::storage::ApplyOutput| {
            hub.notify_applied(&out.notices);
            sessions.revoke(&out.revoked_sessions);
            metrics.messages.inc_by(out.messages);
            metrics.batches.inc();
        })
    };
    let limits = Arc::new(Limits::new(config.limits()));

    let listener =
        tokio::net::TcpListener::bind(config.http).await.map_err(io(format!("bind HTTP {}", config.http)))?;
    let http = listener.local_addr().map_err(io("local address"))?;
    // What other nodes, gateways and clients are told to use: a wildcard bind is no address.
    let advertised = match config.advertise_http {
        Some(a) => a.to_string(),
        None if http.ip().is_unspecified() => {
            tracing::warn!(%http, "HTTP bound to a wildcard address: give --advertise-http so that gateways can reach it");
            http.to_string()
        }
        None => http.to_string(),
    };
    let overlay_cfg = OverlayConfig {
        listen: config.listen.clone(),
        bootstrap: config.bootstrap.clone(),
        mdns: config.mdns,
        election_timeout: std::time::Duration::from_millis(config.election_timeout_ms),
    };
    let (client, events, raft_requests, event_loop) = overlay::new(key.clone(), overlay_cfg)?;
    let cluster_state = Arc::new(ClusterState::default());
    let overlay_task = tokio::spawn(event_loop.run());
    let me = key.public().to_peer_id();
    let replica = Replica::start(
        me,
        store.clone(),
        client.clone(),
        raft_requests,
        cluster_state.clone(),
        on_apply,
        crate::replication::ReplicaConfig { timings: metrics.replication.clone(), ..config.replication() },
    )
    .await?;
    let log = Log::start(replica.clone());
    let service = Service::new(log, hub.clone(), sessions.clone(), config.service());
    let (notice_tx, notice_rx) = tokio::sync::mpsc::channel(1024);
    let listener_task = tokio::spawn(apply_notices(hub.clone(), sessions, notice_rx));
    let driver_cfg = DriverConfig {
        heartbeat: std::time::Duration::from_millis(config.heartbeat_ms.max(50)),
        timeout: std::time::Duration::from_millis(config.election_timeout_ms.max(200)),
        storage_replicas: config.storage_replicas.max(1),
        http: advertised.clone(),
        no_storage: config.no_storage,
    };
    let driver_task = tokio::spawn(driver::run(key, driver_cfg, client, events, cluster_state.clone(), notice_tx));
    let cluster = Arc::new(Cluster {
        peer_id: peer_id.clone(),
        http: advertised,
        state: cluster_state,
        replica: replica.clone(),
    });
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
    // The router (and with it every Log handle) is gone; stop Raft, then the overlay.
    replica.shutdown().await;
    drop(replica);
    driver_task.abort();
    let _ = driver_task.await;
    let _ = listener_task.await;
    // Shutting Raft down dropped its overlay clients; with the driver's gone the swarm stops.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), overlay_task).await;
    let flushed = tokio::task::spawn_blocking(move || store.flush()).await;
    tracing::info!("stopped");
    result?;
    flushed.map_err(|e| NodeError::Io { context: "flush".into(), source: std::io::Error::other(e) })??;
    Ok(())
}

/// Acts on notices gossiped by the storage leader: wakes local event streams, forgets
/// revoked sessions.
async fn apply_notices(hub: Arc<Hub>, sessions: Arc<SessionCache>, mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>) {
    while let Some(data) = rx.recv().await {
        match cbor4ii::serde::from_slice::<chorus_protocol::cluster::EventNotices>(&data) {
            Ok(n) => {
                sessions.revoke(&n.revoked_sessions);
                let carried: std::collections::HashMap<&str, &[u8]> =
                    n.events.iter().map(|c| (c.user.as_str(), c.cbor.as_slice())).collect();
                for (user, seq) in &n.users {
                    // Decoded only for users with a stream open here.
                    let events = || {
                        let cbor = carried.get(user.as_str()).copied().unwrap_or_default();
                        cbor4ii::serde::from_slice(cbor).unwrap_or_default()
                    };
                    hub.notify(user, *seq, events);
                }
            }
            Err(e) => tracing::debug!(error = %e, "undecodable event notice"),
        }
    }
}
