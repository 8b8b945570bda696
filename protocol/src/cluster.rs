//! Cluster control: roles, signed role assignments, and the gossip messages on
//! `chorus/v1/control`. Peer ids are base58 strings here (this crate has no libp2p).

use crate::command::Millis;
use serde::{Deserialize, Serialize};

/// Gossipsub topic for heartbeats, presence and assignments.
pub const CONTROL_TOPIC: &str = "chorus/v1/control";
/// Gossipsub topic for new-event notices.
pub const EVENTS_TOPIC: &str = "chorus/v1/events";
/// identify protocol version: peers announcing another version are not Chorus nodes.
pub const PROTOCOL_VERSION: &str = "/chorus/1.0.0";
/// Kademlia protocol name.
pub const KAD_PROTOCOL: &str = "/chorus/kad/1.0.0";
/// Request-response protocol for Election/Elected messages.
pub const ELECTION_PROTOCOL: &str = "/chorus/election/1";
/// Request-response protocol for Raft RPCs among storage peers (CBOR frames).
pub const RAFT_PROTOCOL: &str = "/chorus/raft/1";
/// Request-response protocol for Raft snapshot chunks: the same frames as [`RAFT_PROTOCOL`],
/// with a deadline long enough for the last chunk, which a follower answers only once it has
/// installed the whole snapshot.
pub const SNAPSHOT_PROTOCOL: &str = "/chorus/raft-snapshot/1";

/// What a node does for the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Keeps and replicates the database.
    Storage,
    /// Serves users (HTTP and event streams).
    Input,
    /// Forwards gossip and serves circuit relay.
    Relay,
}

impl Role {
    /// Lowercase name, as in the HTTP API.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Storage => "storage",
            Role::Input => "input",
            Role::Relay => "relay",
        }
    }
}

/// One member and its roles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// PeerId (base58).
    pub peer_id: String,
    /// HTTP address, if announced.
    pub http: Option<String>,
    /// Roles.
    pub roles: Vec<Role>,
}

/// The coordinator's decision for one epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleAssignment {
    /// Increases with every new assignment, across coordinators.
    pub epoch: u64,
    /// The election round that made the coordinator.
    pub round: u64,
    /// The signer.
    pub coordinator: String,
    /// Every live member, ordered by PeerId bytes.
    pub members: Vec<Member>,
    /// When it was issued (coordinator's clock, informational).
    pub issued_at: Millis,
    /// Every member announced it holds no replicated log and the coordinator never knew of
    /// one: the log starts now, exactly once.
    #[serde(default)]
    pub genesis: bool,
    /// In a genesis, the voters that start the log, each with this same set. A coordinator
    /// keeps the set of the genesis in force while any of its peers is a member, so a node
    /// named storage later (or by a new coordinator that had not yet heard that the log
    /// started) starts nothing: it joins the log as a learner. Left out of the JSON when
    /// empty, so that every other assignment signs the same bytes as before the field existed
    /// and nodes of both versions verify each other's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub genesis_voters: Vec<String>,
}

impl RoleAssignment {
    /// The bytes that are signed: the assignment's JSON (field order is fixed).
    pub fn signing_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The PeerIds that hold `role`.
    pub fn holders(&self, role: Role) -> impl Iterator<Item = &str> {
        self.members.iter().filter(move |m| m.roles.contains(&role)).map(|m| m.peer_id.as_str())
    }

    /// The roles of `peer_id` in this assignment.
    pub fn roles_of(&self, peer_id: &str) -> Vec<Role> {
        self.members.iter().find(|m| m.peer_id == peer_id).map(|m| m.roles.clone()).unwrap_or_default()
    }
}

/// An assignment with the coordinator's ed25519 signature (hex) over
/// [`RoleAssignment::signing_bytes`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedAssignment {
    /// The assignment.
    pub assignment: RoleAssignment,
    /// Hex ed25519 signature by the key behind `assignment.coordinator`.
    pub signature: String,
}

/// A message on [`EVENTS_TOPIC`] (CBOR): these users have events up to these seqs, and here
/// are those events when they are small. A stream that is exactly where the carried events
/// begin pushes them without reading storage; any other stream reads its log, so a lost or
/// partial notice delays nothing past the next poll.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventNotices {
    /// (username, newest event seq).
    pub users: Vec<(String, u64)>,
    /// Sessions just deleted (token hashes): nodes drop them from their session caches.
    #[serde(default)]
    pub revoked_sessions: Vec<String>,
    /// The newest events of some of `users`, in seq order.
    #[serde(default)]
    pub events: Vec<CarriedEvents>,
}

/// One user's newest events, CBOR-encoded (`Vec<Event>`): a node decodes them only for users
/// with a stream open there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedEvents {
    /// Whose events.
    pub user: String,
    /// CBOR of `Vec<Event>`, consecutive seqs.
    #[serde(with = "serde_bytes")]
    pub cbor: Vec<u8>,
}

/// Messages on [`CONTROL_TOPIC`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ControlMsg {
    /// The coordinator is alive.
    Heartbeat {
        /// Sender (must match the gossip source).
        coordinator: String,
        /// Its current assignment epoch.
        epoch: u64,
        /// The round that elected it.
        round: u64,
    },
    /// A node is alive, with how to reach it.
    Presence {
        /// Sender (must match the gossip source).
        peer_id: String,
        /// Its HTTP address.
        http: Option<String>,
        /// It must never be a storage peer.
        no_storage: bool,
        /// Epoch of the assignment it holds (a new coordinator issues above it).
        #[serde(default)]
        epoch: u64,
        /// It already belongs to the replicated log (has a Raft membership): no genesis.
        #[serde(default)]
        raft_member: bool,
        /// It knows the cluster has a replicated log (it belonged to it, or heard from a node
        /// that did; kept on disk): no genesis even while every log holder is down.
        #[serde(default)]
        log_seen: bool,
    },
    /// A signed role assignment.
    Assignment(SignedAssignment),
}
