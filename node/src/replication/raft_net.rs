//! Raft RPCs over the libp2p overlay (`/chorus/raft/1`): openraft's network traits on top of
//! the overlay [`Client`], and the server loop that answers peers' requests. No second
//! transport. Frames are CBOR; an unanswered request (timeout, closed connection) is
//! `Unreachable`, so openraft backs off and retries.
//!
//! The same protocol carries what other nodes ask of the leader: `Forward` (a batch to
//! commit), `Query` (a read, once the leader applied `min_index`) and `Status`.

// The error types are openraft's (its network traits return them by value).
#![allow(clippy::result_large_err)]

use super::snapshot_sends::SnapshotSends;
use super::{lock, Answer, Op, Replica};
use crate::overlay::{Client, RaftInbound};
use crate::storage::raft::{Batch, RaftNode, TypeConfig};
use crate::storage::read::Query;
use chorus_protocol::api::RaftView;
use chunk::Chunk;
use libp2p::PeerId;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{LogId, Vote};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Deadline of the append that carries a held commit notice (sent outside openraft).
const NOTICE_TTL: Duration = Duration::from_secs(2);
/// How long a commit notice waits for the next append to carry it.
const COMMIT_LINGER: Duration = Duration::from_millis(2);
/// A commit notice is held only for a peer whose last real answer is this recent.
const FRESH: Duration = Duration::from_millis(100);
/// Deadline of a snapshot chunk, but the last.
const CHUNK_TTL: Duration = Duration::from_secs(10);
/// The last chunk is answered once the follower has installed the whole snapshot, so its
/// deadline grows with the snapshot, at this many bytes per second. Installs ran at
/// 70 - 100 MB/s on the test VMs; at a tenth of that only a hung follower is given up on (a
/// stopped or cut-off one loses its connection to the overlay's pings within seconds).
const INSTALL_PACE: u64 = 8 << 20;

/// The deadline of a snapshot chunk at `offset` holding `len` bytes.
fn chunk_ttl(offset: u64, len: usize, last: bool) -> Duration {
    if last {
        CHUNK_TTL + Duration::from_secs((offset + len as u64) / INSTALL_PACE)
    } else {
        CHUNK_TTL
    }
}

/// Raft node id of a peer: the first 8 bytes of SHA-256 of its PeerId (stable, since the
/// PeerId comes from the persistent node key; a wiped node gets a new key, so a new id).
pub fn node_id(peer: &PeerId) -> u64 {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(peer.to_bytes());
    u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]])
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    Snapshot(Chunk),
    /// Commit this batch (sent to the leader by any node).
    Forward(Batch),
    /// Answer these reads once `min_index` is applied.
    Query {
        queries: Vec<Query>,
        min_index: u64,
    },
    /// The leader's view of the log.
    Status,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    Append(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    Snapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    /// The answer to a `Forward` or a `Query`.
    Routed(Routed<Answer>),
    Status(Box<RaftView>),
}

/// The answer to a forwarded operation.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Routed<T> {
    Done(T),
    /// Not the leader; the leader's PeerId if known.
    NotLeader(Option<String>),
    /// Refused or failed (no quorum, storage error).
    Failed(String),
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, NetworkError> {
    cbor4ii::serde::to_vec(Vec::new(), v).map_err(|e| NetworkError::new(&e))
}

pub(crate) fn decode<T: for<'a> Deserialize<'a>>(b: &[u8]) -> Result<T, NetworkError> {
    cbor4ii::serde::from_slice(b).map_err(|e| NetworkError::new(&e))
}

/// Creates connections to peers for openraft.
#[derive(Debug, Clone)]
pub struct Network {
    client: Client,
    sends: SnapshotSends,
}

impl Network {
    /// A factory sending through `client`.
    pub fn new(client: Client) -> Self {
        Self { client, sends: SnapshotSends::default() }
    }

    /// The snapshots its connections are sending.
    pub(super) fn sends(&self) -> &SnapshotSends {
        &self.sends
    }
}

/// One peer, as openraft sees it.
#[derive(Debug)]
pub struct Conn {
    client: Client,
    target: u64,
    peer: Option<PeerId>,
    /// The last append this peer accepted (see [`Conn::hold_commit_notice`]).
    acked: Option<Acked>,
    /// A commit notice waiting for the next append to carry it.
    held: Arc<Mutex<Option<AppendEntriesRequest<TypeConfig>>>>,
    sends: SnapshotSends,
}

/// An append the peer answered with success: the vote it was sent under, the log prefix the
/// peer then held, the commit index it carried, and when it was sent.
#[derive(Debug)]
struct Acked {
    vote: Vote<u64>,
    matching: Option<LogId<u64>>,
    commit: Option<LogId<u64>>,
    sent: Instant,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Conn;

    async fn new_client(&mut self, target: u64, node: &RaftNode) -> Conn {
        Conn {
            client: self.client.clone(),
            target,
            peer: node.peer_id.parse().ok(),
            acked: None,
            held: Default::default(),
            sends: self.sends.clone(),
        }
    }
}

type RpcErr<E = openraft::error::Infallible> = RPCError<u64, RaftNode, RaftError<u64, E>>;

impl Conn {
    /// openraft 0.9 follows every commit with an empty append that only carries the new commit
    /// index, and sends the next entry only once that append is answered. Under load the next
    /// entry comes a moment later and carries the index anyway. So a commit notice to a peer
    /// that accepted exactly this log prefix under this vote less than [`FRESH`] ago is
    /// answered with success here and held for up to [`COMMIT_LINGER`]: the next append makes
    /// it obsolete, or it goes out on its own (its answer is dropped).
    ///
    /// The real answer could tell the leader nothing: success on an empty append moves no match
    /// index, and openraft 0.9 uses it only for `millis_since_quorum_ack`, which `FRESH` keeps
    /// honest to within 100 ms. The leadership checks of reads (`get_read_log_id`) come through
    /// fresh connections, which hold nothing. A peer that moved to a higher vote, or lost its
    /// log, is found by the next real append, at the latest one heartbeat interval later.
    fn hold_commit_notice(&self, rpc: &AppendEntriesRequest<TypeConfig>) -> bool {
        let Some(a) = &self.acked else { return false };
        let notice = rpc.entries.is_empty()
            && rpc.vote == a.vote
            && rpc.prev_log_id == a.matching
            && rpc.leader_commit > a.commit
            && a.sent.elapsed() < FRESH;
        if !notice {
            return false;
        }
        if lock(&self.held).replace(rpc.clone()).is_none() {
            let (held, client, peer) = (self.held.clone(), self.client.clone(), self.peer);
            tokio::spawn(async move {
                tokio::time::sleep(COMMIT_LINGER).await;
                let Some(rpc) = lock(&held).take() else { return };
                let (Some(peer), Ok(data)) = (peer, encode(&Request::Append(rpc))) else { return };
                let _ = tokio::time::timeout(NOTICE_TTL, client.raft_request(peer, data)).await;
            });
        }
        true
    }

    /// Sends `req` (on the snapshot lane if `chunk`) and waits up to `ttl` for the answer.
    async fn call<E: std::error::Error>(
        &self,
        req: &Request,
        ttl: Duration,
        chunk: bool,
    ) -> Result<Response, RpcErr<E>> {
        let unreachable =
            |e: &dyn std::error::Error| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e.to_string())));
        let peer = self.peer.ok_or_else(|| unreachable(&std::io::Error::other("node has no PeerId")))?;
        let data = encode(req).map_err(RPCError::Network)?;
        // A frozen peer keeps its connection open: do not wait forever. openraft 0.9 also wraps
        // every call in a deadline of its own, the TTL in its `RPCOption` (appends: the
        // heartbeat interval; votes: the shortest election timeout; snapshot chunks:
        // `install_snapshot_timeout`, an upper bound: see [`chunk_ttl`]). A large append that
        // outlasts it is not lost: the request still reaches the peer, and the next append
        // finds the entries there (CBOR log entries keep that rare).
        let send = async {
            if chunk {
                self.client.snapshot_request(peer, data).await
            } else {
                self.client.raft_request(peer, data).await
            }
        };
        let reply = tokio::time::timeout(ttl, send).await.map_err(|e| unreachable(&e))?.map_err(|e| unreachable(&e))?;
        decode(&reply).map_err(RPCError::Network)
    }

    fn remote<T, E: std::error::Error>(&self, r: Result<T, RaftError<u64, E>>) -> Result<T, RpcErr<E>> {
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn unexpected<E: std::error::Error>() -> RpcErr<E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other("mismatched raft response")))
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcErr> {
        if self.hold_commit_notice(&rpc) {
            return Ok(AppendEntriesResponse::Success);
        }
        // This append carries the newest commit index: a held notice is obsolete.
        lock(&self.held).take();
        self.acked = None;
        let (vote, commit, sent) = (rpc.vote, rpc.leader_commit, Instant::now());
        let last = rpc.entries.last().map(|e| e.log_id).or(rpc.prev_log_id);
        let answer = match self.call(&Request::Append(rpc), option.hard_ttl(), false).await? {
            Response::Append(r) => self.remote(r)?,
            _ => return Err(unexpected()),
        };
        let matching = match &answer {
            AppendEntriesResponse::Success => Some(last),
            AppendEntriesResponse::PartialSuccess(m) => Some(*m),
            AppendEntriesResponse::Conflict | AppendEntriesResponse::HigherVote(_) => None,
        };
        self.acked = matching.map(|matching| Acked { vote, matching, commit, sent });
        Ok(answer)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcErr<InstallSnapshotError>> {
        // A chunk that outlasts its deadline is sent again; the last one again means the whole
        // snapshot again (the follower's receiving session ended with the install).
        let ttl = chunk_ttl(rpc.offset, rpc.data.len(), rpc.done).min(option.hard_ttl());
        self.sends.chunk(self.target, rpc.meta.last_log_id.map_or(0, |l| l.index), ttl);
        match self.call(&Request::Snapshot(rpc.into()), ttl, true).await? {
            Response::Snapshot(r) => self.remote(r),
            _ => Err(unexpected()),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<u64>, option: RPCOption) -> Result<VoteResponse<u64>, RpcErr> {
        match self.call(&Request::Vote(rpc), option.hard_ttl(), false).await? {
            Response::Vote(r) => self.remote(r),
            _ => Err(unexpected()),
        }
    }
}

/// Answers peers' requests until the overlay's request stream ends.
pub async fn serve(replica: Replica, mut inbound: mpsc::UnboundedReceiver<RaftInbound>) {
    let hold = Arc::new(super::snapshot_hold::Hold::default());
    while let Some(req) = inbound.recv().await {
        let (replica, hold) = (replica.clone(), hold.clone());
        // Each request on its own task: a slow snapshot install must not hold up heartbeats.
        tokio::spawn(async move {
            let Ok(request) = decode::<Request>(&req.data) else {
                tracing::warn!(from = %req.from, "undecodable raft request");
                return;
            };
            let raft = replica.raft();
            let response = match request {
                Request::Append(r) => Response::Append(raft.append_entries(r).await),
                Request::Vote(r) => Response::Vote(raft.vote(r).await),
                Request::Snapshot(r) => {
                    let r: InstallSnapshotRequest<TypeConfig> = r.into();
                    if r.offset == 0 {
                        replica.inner.transfers.fetch_add(1, Ordering::Relaxed);
                    }
                    Response::Snapshot(hold.install(&raft, r).await)
                }
                Request::Forward(batch) => Response::Routed(replica.serve_op(Op::Write(batch)).await),
                Request::Query { queries, min_index } => {
                    Response::Routed(replica.serve_op(Op::Read { queries, min_index }).await)
                }
                Request::Status => Response::Status(Box::new(replica.status())),
            };
            if let Ok(data) = encode(&response) {
                replica.inner.client.raft_reply(req.id, data).await;
            }
        });
    }
}

mod chunk;
#[cfg(test)]
mod tests;
