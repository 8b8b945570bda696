//! The libp2p overlay: one event loop owns the Swarm; the rest of the node talks to it through
//! a [`Client`] (commands with oneshot replies) and receives [`Event`]s. Same split as
//! rust-libp2p's file-sharing example.
//!
//! ```text
//! Client --Command--> [bounded mpsc] --> EventLoop (owns Swarm) --Event--> [unbounded mpsc] --> driver
//! ```
//!
//! Behaviours: identify (`/chorus/1.0.0`), ping, Kademlia in server mode
//! (`/chorus/kad/1.0.0`), gossipsub (signed, strict, validated by the application), mDNS when
//! enabled, request-response for election messages (`/chorus/election/1`), and a circuit
//! relay v2 server. Connections are TCP, noise and yamux; yamux writes through `coalesce`, so
//! the frames of one connection poll leave in one TCP segment.

mod behaviour;
mod coalesce;
mod event_loop;
pub mod identity;

pub use behaviour::{Frame, SNAPSHOT_RPC_MAX};
pub use event_loop::EventLoop;

use crate::election::Msg;
use libp2p::gossipsub::{MessageAcceptance, MessageId};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Overlay settings.
#[derive(Debug, Clone)]
pub struct OverlayConfig {
    /// Listen addresses.
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start (and again while alone).
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the LAN with mDNS.
    pub mdns: bool,
    /// How long an election message may go unanswered before its target counts as dead.
    pub election_timeout: Duration,
}

/// Overlay failures.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// Building the swarm failed.
    #[error("libp2p: {0}")]
    Build(String),
    /// A listen address was refused.
    #[error("listen on {addr}: {err}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        err: String,
    },
    /// The event loop is gone (shutting down).
    #[error("overlay stopped")]
    Stopped,
    /// The peer did not answer (the request may have arrived).
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The request never left (no connection, protocol unsupported): safe to send elsewhere.
    #[error("not sent: {0}")]
    NotSent(String),
    /// Publishing failed (e.g. no peers subscribed yet).
    #[error("publish: {0}")]
    Publish(String),
}

/// What the overlay tells the node.
#[derive(Debug)]
pub enum Event {
    /// A peer identified itself as a Chorus node.
    PeerUp(PeerId),
    /// The last connection to a peer closed.
    PeerDown(PeerId),
    /// A gossip message awaiting validation ([`Client::validate`]).
    Gossip {
        /// Authenticated author.
        source: PeerId,
        /// Who forwarded it to us.
        propagation: PeerId,
        /// Id to validate.
        id: MessageId,
        /// Topic name.
        topic: String,
        /// Payload.
        data: Vec<u8>,
    },
    /// An election message from our ring predecessor (already acknowledged).
    Election {
        /// Sender.
        from: PeerId,
        /// Message.
        msg: Msg<PeerId>,
    },
    /// A new listen address.
    Listening(Multiaddr),
}

/// A Raft RPC from a peer, to be answered with [`Client::raft_reply`].
#[derive(Debug)]
pub struct RaftInbound {
    /// Sender.
    pub from: PeerId,
    /// Correlates the reply.
    pub id: u64,
    /// Encoded request.
    pub data: Vec<u8>,
}

/// Which request-response protocol carries a Raft frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Lane {
    /// `RAFT_PROTOCOL`: every Raft RPC, answered within seconds.
    Raft,
    /// `SNAPSHOT_PROTOCOL`: snapshot chunks, the last of which waits for an install.
    Snapshot,
}

pub(crate) enum Command {
    SendRaft { to: PeerId, data: Vec<u8>, lane: Lane, reply: oneshot::Sender<Result<Vec<u8>, OverlayError>> },
    RaftReply { id: u64, data: Vec<u8> },
    Publish { topic: &'static str, data: Vec<u8>, reply: oneshot::Sender<Result<(), OverlayError>> },
    Validate { id: MessageId, propagation: PeerId, acceptance: MessageAcceptance },
    Subscribe { topic: &'static str, on: bool },
    SendElection { to: PeerId, msg: Msg<PeerId>, reply: oneshot::Sender<Result<(), OverlayError>> },
    ListenAddrs { reply: oneshot::Sender<Vec<Multiaddr>> },
}

/// Handle to the overlay. Cheap to clone; the event loop ends when every clone is dropped.
#[derive(Clone, Debug)]
pub struct Client {
    tx: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("overlay::Command")
    }
}

impl Client {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, OverlayError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| OverlayError::Stopped)?;
        rx.await.map_err(|_| OverlayError::Stopped)
    }

    /// Publishes on a gossipsub topic.
    pub async fn publish(&self, topic: &'static str, data: Vec<u8>) -> Result<(), OverlayError> {
        self.ask(|reply| Command::Publish { topic, data, reply }).await?
    }

    /// Reports the verdict on a received gossip message (forward it, or not).
    pub async fn validate(&self, id: MessageId, propagation: PeerId, acceptance: MessageAcceptance) {
        let _ = self.tx.send(Command::Validate { id, propagation, acceptance }).await;
    }

    /// Joins (`on`) or leaves a gossipsub topic. Leaving stops receiving it, and forwarding it.
    pub async fn subscribe(&self, topic: &'static str, on: bool) {
        let _ = self.tx.send(Command::Subscribe { topic, on }).await;
    }

    /// Sends an election message and waits for the acknowledgement.
    pub async fn send_election(&self, to: PeerId, msg: Msg<PeerId>) -> Result<(), OverlayError> {
        self.ask(|reply| Command::SendElection { to, msg, reply }).await?
    }

    /// Sends an encoded Raft request and waits for the encoded response.
    pub async fn raft_request(&self, to: PeerId, data: Vec<u8>) -> Result<Vec<u8>, OverlayError> {
        self.ask(|reply| Command::SendRaft { to, data, lane: Lane::Raft, reply }).await?
    }

    /// Sends an encoded snapshot chunk and waits for the encoded response, up to
    /// [`SNAPSHOT_RPC_MAX`] (the caller sets its own, shorter deadline). A peer that does not
    /// speak `SNAPSHOT_PROTOCOL` (an older node) is sent it as a plain Raft request.
    pub async fn snapshot_request(&self, to: PeerId, data: Vec<u8>) -> Result<Vec<u8>, OverlayError> {
        self.ask(|reply| Command::SendRaft { to, data, lane: Lane::Snapshot, reply }).await?
    }

    /// Answers the inbound Raft request `id`.
    pub async fn raft_reply(&self, id: u64, data: Vec<u8>) {
        let _ = self.tx.send(Command::RaftReply { id, data }).await;
    }

    /// Current listen addresses.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.ask(|reply| Command::ListenAddrs { reply }).await.unwrap_or_default()
    }
}

/// What [`new`] returns: the client, the event stream, the Raft request stream, the loop.
pub type Parts = (Client, mpsc::UnboundedReceiver<Event>, mpsc::UnboundedReceiver<RaftInbound>, EventLoop);

/// Builds the swarm and returns the client, the event streams and the loop to spawn.
pub fn new(key: Keypair, config: OverlayConfig) -> Result<Parts, OverlayError> {
    let (cmd_tx, cmd_rx) = mpsc::channel(256);
    // The loop never waits on its consumers: they wait on it (publish, validate, replies), so a
    // bounded channel here could deadlock a busy node. The consumers keep up by design.
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let (raft_tx, raft_rx) = mpsc::unbounded_channel();
    let event_loop = EventLoop::new(key, config, cmd_rx, ev_tx, raft_tx)?;
    Ok((Client { tx: cmd_tx }, ev_rx, raft_rx, event_loop))
}
