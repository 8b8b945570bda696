//! The replicated command log: openraft among the storage peers, reached from any node.
//!
//! Every node runs a [`Replica`]: a Raft instance over its RocksDB store, plus routing. Only
//! the storage peers the coordinator names are in the Raft membership, so only they hold data;
//! the others stay empty learners-to-be and send every write and read to the Raft leader.
//!
//! ```text
//! service --submit--> Log (batcher) --one Batch per drained group--> Replica::write
//!    |                                                                  | leader here: client_write
//!    |                                                                  | else: Forward over /chorus/raft/1
//!    +--query--> Replica::read --(leader here: local, else Query RPC)--> Query::run on the leader
//!
//! every storage peer's apply --notices--> its hub --> streams
//! leader's apply --notices--> gossip chorus/v1/events --> hub of each node outside the log --> streams
//! ```
//!
//! * Writes are acknowledged only after a majority of storage peers hold them durably and the
//!   leader applied them. A write that cannot commit within the write timeout answers
//!   [`SubmitError::Unavailable`] (HTTP 503); one whose outcome is unknown (the leader died
//!   mid-request) is never retried here, since only sends carry an idempotency key.
//! * Reads go to the leader, which confirms it still leads and waits until it applied every
//!   committed entry (`reads`: linearizable, so a read sees every write acknowledged before
//!   it, through any node, also just after a leader change).
//! * `membership` makes the Raft membership follow the coordinator's storage set.

mod leader_loss;
mod log;
mod membership;
mod notices;
pub mod raft_net;
mod reads;
mod revive;
mod snapshot_due;
mod snapshot_hold;
mod snapshot_sends;

pub use log::Log;

use crate::election::driver::ClusterState;
use crate::overlay::{Client, OverlayError, RaftInbound};
use crate::storage::raft::{Background, Batch, BatchResult, LogStore, OnApply, StateStore, TypeConfig};
use crate::storage::read::Query;
use crate::storage::{Notice, Store};
use chorus_protocol::cluster::{Role, EVENTS_TOPIC};
use libp2p::PeerId;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{Raft, ServerState, SnapshotPolicy};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use raft_net::{Request, Response, Routed};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Why a command or read could not be served. Nothing was acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubmitError {
    /// No quorum, no reachable leader, storage failure, or shutting down.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// Why replication could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The Raft settings are inconsistent.
    #[error("raft config: {0}")]
    Config(String),
    /// Raft failed to start (storage unreadable).
    #[error("raft: {0}")]
    Raft(#[from] openraft::error::Fatal<u64>),
    /// The store could not be prepared for Raft.
    #[error("raft storage: {0}")]
    Storage(String),
}

/// openraft's default snapshot chunk, 3 MiB.
pub const DEFAULT_SNAPSHOT_CHUNK: usize = 3 << 20;

/// Replication settings.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// How long a write or read may wait for a leader and a quorum before it fails.
    pub timeout: Duration,
    /// Also build a snapshot (and purge the log before it) every this many entries; `None`:
    /// only by the log's bytes.
    pub snapshot_every: Option<u64>,
    /// Build one once the log grew by this many bytes, or by the last snapshot's size if that
    /// is more (see `snapshot_due`).
    pub snapshot_log_bytes: u64,
    /// Bytes of the newest log before the snapshot kept for peers behind it (0: none; see
    /// `snapshot_due`).
    pub retain_log_bytes: u64,
    /// Bytes per InstallSnapshot chunk (normally [`DEFAULT_SNAPSHOT_CHUNK`]).
    pub snapshot_chunk: usize,
    /// Where the log reports how long its work takes (exported at `/metrics`).
    pub timings: Timings,
}

/// Latency histograms the replicated log fills in. Cloning shares them.
#[derive(Debug, Clone)]
pub struct Timings {
    /// One WAL sync (`FlushWAL(sync)`): every log append waits for one before it counts.
    pub wal_sync: Histogram,
    /// One merged entry on the leader, from `client_write` to applied (quorum and apply).
    pub commit: Histogram,
}

impl Default for Timings {
    fn default() -> Self {
        // 50 µs .. ~3.3 s.
        let buckets = || Histogram::new(exponential_buckets(0.00005, 2.0, 17));
        Self { wal_sync: buckets(), commit: buckets() }
    }
}

/// A leader that heard no majority for this long refuses writes and reads (no quorum), once
/// [`QUORUM_RECHECK`] more brought neither a majority nor news of another leader.
const QUORUM_LOST_MS: u64 = 1500;
/// Two heartbeat rounds.
const QUORUM_RECHECK: Duration = Duration::from_millis(300);

/// This node's view of the replicated log. Cheap to clone.
#[derive(Clone)]
pub struct Replica {
    inner: Arc<Inner>,
}

struct Inner {
    /// The Raft instance in use: replaced by a blank one when this node forgets its copy.
    raft: watch::Sender<Raft<TypeConfig>>,
    me: PeerId,
    id: u64,
    store: Arc<Store>,
    client: Client,
    /// Raft's connections to peers (kept for `revive`, and for the snapshots they send).
    network: raft_net::Network,
    cluster: Arc<ClusterState>,
    cfg: ReplicaConfig,
    /// Where the leader was last said to be (for nodes outside the membership).
    hint: Mutex<Option<PeerId>>,
    /// Highest log index this node had acknowledged: reads wait for it.
    acked: AtomicU64,
    /// Rotates over storage peers while no leader is known.
    rotate: AtomicUsize,
    /// Snapshots installed from a leader since the node started.
    installed: Arc<AtomicU64>,
    /// Snapshot transfers from a leader this node began receiving (first chunks) since it
    /// started: more than `installed` means transfers were cut off and sent again.
    transfers: AtomicU64,
    /// Set while this node is the Raft leader (by `watch_state`).
    leading: Arc<AtomicBool>,
    /// When `watch_state` last saw Raft publish its metrics ([`reads::now_ms`]).
    metrics_seen: AtomicU64,
    /// What each applied batch is handed to (metrics, event notices).
    on_apply: OnApply,
    /// The leader's last status report (commit index, peers' progress).
    leader_view: Mutex<Option<chorus_protocol::api::RaftView>>,
    /// On the leader, batches committed together (its own and forwarded ones) share one entry.
    merger: log::Batcher<Batch, Attempt>,
    /// Held while `raft` is replaced (`revive`).
    swap: tokio::sync::Mutex<()>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("id", &self.inner.id).finish_non_exhaustive()
    }
}

/// An operation routed to the leader.
enum Op {
    Write(Batch),
    Read { queries: Vec<Query>, min_index: u64 },
}

/// What the leader answers: a batch's results and its log index, or a query's CBOR.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) enum Answer {
    Written(BatchResult, u64),
    /// One answer (CBOR) or error per query, in order.
    Read(Vec<Result<serde_bytes::ByteBuf, String>>),
}

/// One try at the leader.
#[derive(Clone)]
enum Attempt {
    Done(Answer),
    /// Not the leader (or none known yet): try again, at the hinted peer if any.
    Retry(Option<PeerId>),
    Fail(String),
}

impl Replica {
    /// Starts Raft over `store`, serves peers' Raft requests from `inbound`, and follows the
    /// coordinator's storage set. `on_apply` sees every batch this node applies.
    pub async fn start(
        me: PeerId,
        store: Arc<Store>,
        client: Client,
        inbound: mpsc::UnboundedReceiver<RaftInbound>,
        cluster: Arc<ClusterState>,
        on_apply: OnApply,
        cfg: ReplicaConfig,
    ) -> Result<Replica, StartError> {
        let leader = Arc::new(AtomicBool::new(false));
        let (notice_tx, notice_rx) = mpsc::channel::<(Vec<Notice>, Vec<String>)>(1024);
        let is_leader = leader.clone();
        let on_apply: OnApply = Arc::new(move |out| {
            on_apply(out);
            if is_leader.load(Ordering::Relaxed) && !(out.notices.is_empty() && out.revoked_sessions.is_empty()) {
                let _ = notice_tx.try_send((out.notices.clone(), out.revoked_sessions.clone()));
            }
        });
        membership::recall_log_seen(&store, &cluster).await?;
        let (id, installed) = (raft_net::node_id(&me), Arc::new(AtomicU64::new(0)));
        let network = raft_net::Network::new(client.clone());
        let raft = open_raft(id, &store, &network, &cfg, &on_apply, &installed, &leader).await?;
        let (raft, current) = watch::channel(raft);
        let merger = {
            let (timeout, timing) = (cfg.timeout, cfg.timings.commit.clone());
            log::Batcher::start(
                log::MERGES_IN_FLIGHT,
                |b: &Batch| b.0.iter().map(log::weight).sum(),
                move |batches| {
                    let raft = current.borrow().clone();
                    let timing = timing.clone();
                    async move {
                        let started = Instant::now();
                        let attempts = commit_merged(&raft, batches, timeout).await;
                        timing.observe(started.elapsed().as_secs_f64());
                        Ok(attempts)
                    }
                },
            )
        };
        let replica = Replica {
            inner: Arc::new(Inner {
                raft,
                me,
                id,
                store,
                client: client.clone(),
                network,
                cluster,
                cfg,
                hint: Mutex::new(None),
                acked: AtomicU64::new(0),
                rotate: AtomicUsize::new(0),
                installed,
                transfers: AtomicU64::new(0),
                leading: leader,
                metrics_seen: AtomicU64::new(0),
                on_apply,
                leader_view: Mutex::new(None),
                merger,
                swap: tokio::sync::Mutex::new(()),
                tasks: Mutex::new(Vec::new()),
            }),
        };
        let tasks = vec![
            tokio::spawn(raft_net::serve(replica.clone(), inbound)),
            tokio::spawn(watch_state(replica.clone())),
            tokio::spawn(notices::publish(client, notice_rx)),
            tokio::spawn(membership::run(replica.clone())),
            tokio::spawn(leader_loss::elect_on_leader_loss(replica.clone())),
            tokio::spawn(revive::run(replica.clone())),
            tokio::spawn(snapshot_due::run(replica.clone())),
        ];
        *lock(&replica.inner.tasks) = tasks;
        Ok(replica)
    }

    /// The Raft instance in use.
    pub fn raft(&self) -> Raft<TypeConfig> {
        self.inner.raft.borrow().clone()
    }

    /// Stops Raft and the background tasks.
    pub async fn shutdown(&self) {
        for t in lock(&self.inner.tasks).drain(..) {
            t.abort();
        }
        if let Err(e) = self.raft().shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }

    /// Commits `batch` on a majority of storage peers; one result per command.
    pub async fn write(&self, batch: Batch) -> Result<BatchResult, SubmitError> {
        match self.route(Op::Write(batch)).await? {
            Answer::Written(result, index) => {
                self.inner.acked.fetch_max(index, Ordering::Relaxed);
                Ok(result)
            }
            Answer::Read(_) => Err(SubmitError::Unavailable("mismatched answer".into())),
        }
    }

    /// Runs `queries` on the leader once it applied this node's acknowledged writes; one CBOR
    /// answer (or storage error) per query.
    pub async fn read(&self, queries: Vec<Query>) -> Result<Vec<Result<Vec<u8>, String>>, SubmitError> {
        let min_index = self.inner.acked.load(Ordering::Relaxed);
        match self.route(Op::Read { queries, min_index }).await? {
            Answer::Read(answers) => Ok(answers.into_iter().map(|a| a.map(|b| b.into_vec())).collect()),
            Answer::Written(..) => Err(SubmitError::Unavailable("mismatched answer".into())),
        }
    }

    fn peer_of(&self, id: u64) -> Option<PeerId> {
        if id == self.inner.id {
            return Some(self.inner.me);
        }
        let m = self.raft().metrics();
        let m = m.borrow();
        m.membership_config.membership().get_node(&id).and_then(|n| n.peer_id.parse().ok())
    }

    /// Whether this node is in the Raft membership (holds the log).
    pub fn is_member(&self) -> bool {
        is_member(&self.raft().metrics().borrow())
    }

    /// The Raft leader as this node knows it.
    pub fn leader(&self) -> Option<PeerId> {
        let current = self.raft().metrics().borrow().current_leader;
        current.and_then(|id| self.peer_of(id)).or_else(|| *lock(&self.inner.hint))
    }

    fn storage_peers(&self) -> Vec<PeerId> {
        let view = self.inner.cluster.view();
        let Some(a) = view.assignment else { return Vec::new() };
        a.assignment.holders(Role::Storage).filter_map(|p| p.parse().ok()).collect()
    }

    /// Where to send the next try: the leader, else some storage peer (it will redirect).
    fn target(&self) -> Option<PeerId> {
        self.leader().or_else(|| {
            let peers = self.storage_peers();
            let n = self.inner.rotate.fetch_add(1, Ordering::Relaxed);
            (!peers.is_empty()).then(|| peers[n % peers.len()])
        })
    }

    async fn route(&self, op: Op) -> Result<Answer, SubmitError> {
        let deadline = Instant::now() + self.inner.cfg.timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(SubmitError::Unavailable(format!(
                    "no storage leader with a quorum answered within {} ms",
                    self.inner.cfg.timeout.as_millis()
                )));
            }
            let attempt = match self.target() {
                Some(p) if p == self.inner.me => self.local(&op, remaining).await,
                Some(p) => self.remote(p, &op, remaining).await,
                None => Attempt::Retry(None),
            };
            match attempt {
                Attempt::Done(answer) => return Ok(answer),
                Attempt::Fail(e) => return Err(SubmitError::Unavailable(e)),
                Attempt::Retry(hint) => {
                    *lock(&self.inner.hint) = hint.filter(|p| *p != self.inner.me);
                    tokio::time::sleep(remaining.min(Duration::from_millis(30))).await;
                }
            }
        }
    }

    /// Serves `op` as the leader (or says who is).
    async fn local(&self, op: &Op, remaining: Duration) -> Attempt {
        let raft = self.raft();
        let (state, quorum_age, leader) = {
            let m = raft.metrics();
            let m = m.borrow();
            (m.state, m.millis_since_quorum_ack, m.current_leader)
        };
        if state != ServerState::Leader {
            return Attempt::Retry(leader.filter(|l| *l != self.inner.id).and_then(|l| self.peer_of(l)));
        }
        if quorum_age.is_some_and(|ms| ms > QUORUM_LOST_MS) {
            // A leader that was paused (SIGSTOP, a frozen VM) and replaced meanwhile learns it
            // from the replies to its next heartbeats: give those a moment before "no quorum".
            let recheck = raft.wait(Some(QUORUM_RECHECK));
            let heard = |m: &openraft::RaftMetrics<u64, crate::storage::raft::RaftNode>| {
                m.state != ServerState::Leader || m.millis_since_quorum_ack.is_some_and(|ms| ms <= QUORUM_LOST_MS)
            };
            match recheck.metrics(heard, "a majority again, or another leader").await {
                Ok(m) if m.state != ServerState::Leader => {
                    return Attempt::Retry(
                        m.current_leader.filter(|l| *l != self.inner.id).and_then(|l| self.peer_of(l)),
                    )
                }
                Ok(_) => {}
                Err(_) => {
                    return Attempt::Fail(format!(
                        "no quorum: a majority of storage peers is silent for {QUORUM_LOST_MS} ms"
                    ))
                }
            }
        }
        match op {
            Op::Write(batch) => match self.inner.merger.submit(batch.clone()).await {
                Ok(attempt) => attempt,
                Err(e) => Attempt::Fail(e.to_string()),
            },
            Op::Read { queries, min_index } => {
                let seen = self.inner.metrics_seen.load(Ordering::Relaxed);
                let stale = Duration::from_millis(reads::now_ms().saturating_sub(seen));
                if let Err(instead) = reads::await_read_index(&raft, *min_index, stale, remaining).await {
                    return instead;
                }
                let (store, queries) = (self.inner.store.clone(), queries.clone());
                let run = move || {
                    queries
                        .iter()
                        .map(|q| q.run(&store).map(serde_bytes::ByteBuf::from).map_err(|e| e.to_string()))
                        .collect()
                };
                match tokio::task::spawn_blocking(run).await {
                    Ok(answers) => Attempt::Done(Answer::Read(answers)),
                    Err(e) => Attempt::Fail(e.to_string()),
                }
            }
        }
    }

    /// Sends `op` to `peer`, the leader as far as this node knows.
    async fn remote(&self, peer: PeerId, op: &Op, remaining: Duration) -> Attempt {
        let (req, write) = match op {
            Op::Write(b) => (Request::Forward(b.clone()), true),
            Op::Read { queries, min_index } => {
                (Request::Query { queries: queries.clone(), min_index: *min_index }, false)
            }
        };
        let Ok(data) = raft_net::encode(&req) else { return Attempt::Fail("cannot encode the request".into()) };
        let reply = tokio::time::timeout(remaining, self.inner.client.raft_request(peer, data)).await;
        let bytes = match reply {
            Ok(Ok(bytes)) => bytes,
            // Never sent: safe to try elsewhere.
            Ok(Err(OverlayError::NotSent(e))) => {
                tracing::debug!(%peer, error = %e, "storage peer not reachable");
                return Attempt::Retry(None);
            }
            // Sent, outcome unknown: a read may be retried, a write may not.
            Ok(Err(_)) | Err(_) if !write => return Attempt::Retry(None),
            Ok(Err(e)) => {
                return Attempt::Fail(format!("the storage leader went away mid-write (outcome unknown): {e}"))
            }
            Err(_) => return Attempt::Fail("the storage leader did not confirm the write in time (no quorum?)".into()),
        };
        let Ok(Response::Routed(routed)) = raft_net::decode::<Response>(&bytes) else {
            return Attempt::Fail("unexpected answer from the storage leader".into());
        };
        match routed {
            Routed::Done(a) => Attempt::Done(a),
            Routed::NotLeader(hint) => Attempt::Retry(hint.and_then(|h| h.parse().ok())),
            Routed::Failed(e) => Attempt::Fail(e),
        }
    }

    /// Answers a peer's forwarded write or read: as the leader, or with where it is.
    async fn serve_op(&self, op: Op) -> Routed<Answer> {
        match self.local(&op, self.inner.cfg.timeout).await {
            Attempt::Done(a) => Routed::Done(a),
            Attempt::Retry(hint) => Routed::NotLeader(hint.or_else(|| self.leader()).map(|p| p.to_base58())),
            Attempt::Fail(e) => Routed::Failed(e),
        }
    }
}

/// Starts Raft over `store` (its log and state machine) with peers reached through `network`.
async fn open_raft(
    id: u64,
    store: &Arc<Store>,
    network: &raft_net::Network,
    cfg: &ReplicaConfig,
    on_apply: &OnApply,
    installed: &Arc<AtomicU64>,
    leading: &Arc<AtomicBool>,
) -> Result<Raft<TypeConfig>, StartError> {
    let config = openraft::Config {
        cluster_name: "chorus".into(),
        heartbeat_interval: 150,
        election_timeout_min: 750,
        election_timeout_max: 1500,
        // An upper bound only: `raft_net` gives each chunk its own deadline, the last one's
        // growing with the snapshot (it is answered once installed).
        install_snapshot_timeout: crate::overlay::SNAPSHOT_RPC_MAX.as_millis() as u64,
        // Entries are whole batches (up to 1024 commands or 4 MiB of file data): a few per
        // append keeps each RPC small and quick, far under the 64 MiB frame limit.
        max_payload_entries: 4,
        snapshot_policy: cfg.snapshot_every.map_or(SnapshotPolicy::Never, |n| SnapshotPolicy::LogsSinceLast(n.max(1))),
        snapshot_max_chunk_size: cfg.snapshot_chunk.max(1) as u64,
        // openraft never purges by itself: `snapshot_due` does, keeping what peers need.
        max_in_snapshot_log_to_keep: u64::MAX,
        ..Default::default()
    };
    let config = Arc::new(config.validate().map_err(|e| StartError::Config(e.to_string()))?);
    let recovering = store.clone();
    tokio::task::spawn_blocking(move || crate::storage::raft::recover_interrupted_install(&recovering))
        .await
        .map_err(|e| StartError::Storage(e.to_string()))?
        .map_err(|e| StartError::Storage(e.to_string()))?;
    let log_store = LogStore::new(store.clone(), cfg.timings.wal_sync.clone());
    let sm = StateStore::new(store.clone(), Some(on_apply.clone()))
        .counting_installs(installed.clone())
        .applying_in(Background::start(leading.clone(), log_store.end()));
    Ok(Raft::new(id, config, network.clone(), log_store, sm).await?)
}

/// Commits several batches as ONE log entry and hands each its own slice of the results.
async fn commit_merged(raft: &Raft<TypeConfig>, batches: Vec<Batch>, timeout: Duration) -> Vec<Attempt> {
    let sizes: Vec<usize> = batches.iter().map(|b| b.0.len()).collect();
    let merged = Batch(batches.into_iter().flat_map(|b| b.0).collect());
    let attempt = match tokio::time::timeout(timeout, raft.client_write(merged)).await {
        Err(_) => Attempt::Fail("no quorum: the write was not confirmed in time (not acknowledged)".into()),
        Ok(Ok(resp)) => {
            let (mut results, index) = (resp.data.0.into_iter(), resp.log_id.index);
            return sizes
                .iter()
                .map(|n| Attempt::Done(Answer::Written(BatchResult(results.by_ref().take(*n).collect()), index)))
                .collect();
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            Attempt::Retry(f.leader_node.and_then(|n| n.peer_id.parse().ok()))
        }
        Ok(Err(e)) => Attempt::Fail(e.to_string()),
    };
    vec![attempt; sizes.len()]
}

fn is_member(m: &openraft::RaftMetrics<u64, crate::storage::raft::RaftNode>) -> bool {
    m.membership_config.membership().nodes().next().is_some()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keeps the leader flag (who publishes event notices) and the "member of the log" flag
/// (announced in presence) in step with Raft, and with the Raft that replaces it.
///
/// Also keeps the node on the event-notice topic only while it does not apply the log: a
/// storage peer learns each batch's events from its own apply (`OnApply` feeds its hub), so
/// the leader's gossip would only cost it a signature check and a decode per notice. Others,
/// input and relay peers, need the gossip and stay subscribed.
async fn watch_state(replica: Replica) {
    let mut rafts = replica.inner.raft.subscribe();
    let mut gossip_wanted = true; // the overlay starts subscribed
    loop {
        let mut rx = rafts.borrow_and_update().metrics();
        loop {
            let applies = {
                let m = rx.borrow_and_update();
                replica.inner.metrics_seen.store(reads::now_ms(), Ordering::Relaxed);
                replica.inner.leading.store(m.state == ServerState::Leader, Ordering::Relaxed);
                replica.inner.cluster.raft_member.store(is_member(&m), Ordering::Relaxed);
                m.membership_config.membership().get_node(&replica.inner.id).is_some()
            };
            if applies == gossip_wanted {
                gossip_wanted = !applies;
                replica.inner.client.subscribe(EVENTS_TOPIC, gossip_wanted).await;
            }
            if rx.changed().await.is_err() {
                break; // this Raft stopped
            }
        }
        if rafts.changed().await.is_err() {
            return;
        }
    }
}
