//! The composed libp2p behaviour and its configuration.

use super::{OverlayConfig, OverlayError};
use crate::election::Msg;
use chorus_protocol::cluster::{ELECTION_PROTOCOL, KAD_PROTOCOL, PROTOCOL_VERSION, RAFT_PROTOCOL, SNAPSHOT_PROTOCOL};
use libp2p::identity::Keypair;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{gossipsub, identify, kad, mdns, ping, relay, request_response, PeerId, StreamProtocol};
use std::time::Duration;

/// Largest Raft request or response (an append of several batches, a snapshot chunk).
pub(crate) const RAFT_FRAME_MAX: u64 = 64 * 1024 * 1024;

/// Deadline of a Raft RPC in the overlay. The replication layer sets tighter ones of its own.
const RAFT_RPC_MAX: Duration = Duration::from_secs(10);

/// Deadline of a snapshot chunk in the overlay: the last chunk is answered only after its
/// install, which grows with the state. The replication layer sets the real deadline of each
/// chunk (from its size); this only bounds what it may ask for.
pub const SNAPSHOT_RPC_MAX: Duration = Duration::from_secs(3600);

/// An opaque frame: the replication layer encodes Raft messages, the overlay only carries them.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Frame(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// Everything a Chorus peer speaks.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) kad: kad::Behaviour<kad::store::MemoryStore>,
    pub(crate) gossipsub: gossipsub::Behaviour,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(crate) election: request_response::cbor::Behaviour<Msg<PeerId>, bool>,
    pub(crate) raft: request_response::cbor::Behaviour<Frame, Frame>,
    pub(crate) snapshot: request_response::cbor::Behaviour<Frame, Frame>,
    pub(crate) relay: relay::Behaviour,
}

impl Behaviour {
    pub(crate) fn new(key: &Keypair, config: &OverlayConfig) -> Result<Self, OverlayError> {
        let me = key.public().to_peer_id();
        let build = |e: String| OverlayError::Build(e);

        let identify = identify::Behaviour::new(identify::Config::new(PROTOCOL_VERSION.into(), key.public()));
        // Frequent pings so a silent (stopped, partitioned) peer is noticed in seconds.
        let ping = ping::Behaviour::new(
            ping::Config::new().with_interval(Duration::from_secs(1)).with_timeout(Duration::from_secs(3)),
        );

        let mut kad_cfg = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
        kad_cfg.set_query_timeout(Duration::from_secs(30));
        let mut kad = kad::Behaviour::with_config(me, kad::store::MemoryStore::new(me), kad_cfg);
        // On 127.0.0.1 no external address is ever confirmed: automatic mode would stay client.
        kad.set_mode(Some(kad::Mode::Server));

        // Message ids from author + sequence number: equal payloads never collide.
        let message_id = |m: &gossipsub::Message| {
            let source = m.source.map(|p| p.to_base58()).unwrap_or_default();
            gossipsub::MessageId::from(format!("{source}/{}", m.sequence_number.unwrap_or(0)))
        };
        let gs_cfg = gossipsub::ConfigBuilder::default()
            .validation_mode(gossipsub::ValidationMode::Strict)
            .validate_messages()
            .message_id_fn(message_id)
            // Small clusters (2-10 nodes): outbound_min <= low <= n <= high, 2*outbound_min <= n.
            .mesh_n(3)
            .mesh_n_low(2)
            .mesh_n_high(6)
            .mesh_outbound_min(1)
            .heartbeat_interval(Duration::from_millis(500))
            .max_transmit_size(1024 * 1024)
            .build()
            .map_err(|e| build(e.to_string()))?;
        let gossipsub = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gs_cfg)
            .map_err(|e| build(e.to_string()))?;

        let mdns = if config.mdns {
            Some(mdns::tokio::Behaviour::new(mdns::Config::default(), me).map_err(|e| build(e.to_string()))?)
        } else {
            None
        };

        let rr_cfg = request_response::Config::default().with_request_timeout(config.election_timeout);
        let election = request_response::cbor::Behaviour::new(
            [(StreamProtocol::new(ELECTION_PROTOCOL), request_response::ProtocolSupport::Full)],
            rr_cfg,
        );
        // Raft batches and snapshot chunks are far larger than the codec's defaults.
        let frames = |protocol: &'static str, timeout: Duration| {
            let codec = request_response::cbor::codec::Codec::default()
                .set_request_size_maximum(RAFT_FRAME_MAX)
                .set_response_size_maximum(RAFT_FRAME_MAX);
            request_response::Behaviour::with_codec(
                codec,
                [(StreamProtocol::new(protocol), request_response::ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(timeout),
            )
        };
        let (raft, snapshot) = (frames(RAFT_PROTOCOL, RAFT_RPC_MAX), frames(SNAPSHOT_PROTOCOL, SNAPSHOT_RPC_MAX));
        let relay = relay::Behaviour::new(me, relay::Config::default());
        Ok(Behaviour { identify, ping, kad, gossipsub, mdns: mdns.into(), election, raft, snapshot, relay })
    }
}
