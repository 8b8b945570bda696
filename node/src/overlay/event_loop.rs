//! The task that owns the Swarm.

use super::behaviour::{Behaviour, BehaviourEvent, Frame};
use super::{Command, Event, Lane, OverlayConfig, OverlayError, RaftInbound};
use chorus_protocol::cluster::{CONTROL_TOPIC, EVENTS_TOPIC, PROTOCOL_VERSION, SNAPSHOT_PROTOCOL};
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, identify, kad, mdns, noise, ping, tcp, Multiaddr, PeerId, Swarm};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Where the answer to an outbound Raft frame goes.
type RaftReply = oneshot::Sender<Result<Vec<u8>, OverlayError>>;

/// Owns the Swarm; run it with [`EventLoop::run`].
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::UnboundedSender<Event>,
    bootstrap: Vec<Multiaddr>,
    /// Peers that identified as Chorus nodes (PeerUp sent, PeerDown pending).
    chorus: HashSet<PeerId>,
    pending: HashMap<OutboundRequestId, oneshot::Sender<Result<(), OverlayError>>>,
    raft_out: HashMap<(Lane, OutboundRequestId), RaftReply>,
    raft_in: HashMap<u64, (Lane, request_response::ResponseChannel<Frame>)>,
    /// Chorus peers that speak `SNAPSHOT_PROTOCOL` (from identify).
    snapshot_lane: HashSet<PeerId>,
    raft_tx: mpsc::UnboundedSender<RaftInbound>,
    next_raft_id: u64,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop").field("peer_id", self.swarm.local_peer_id()).finish()
    }
}

impl EventLoop {
    pub(super) fn new(
        key: Keypair,
        config: OverlayConfig,
        commands: mpsc::Receiver<Command>,
        events: mpsc::UnboundedSender<Event>,
        raft_tx: mpsc::UnboundedSender<RaftInbound>,
    ) -> Result<Self, OverlayError> {
        let build = |e: String| OverlayError::Build(e);
        let behaviour = Behaviour::new(&key, &config)?;
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                super::coalesce::CoalescedYamux::default,
            )
            .map_err(|e| build(e.to_string()))?
            .with_behaviour(|_| behaviour)
            .map_err(|e| build(e.to_string()))?
            // Explicit long idle timeout: the default (10 s) drops quiet cluster links.
            // V1Lazy: a dialer offering one protocol sends it with the first request bytes
            // instead of waiting a round trip for the listener's confirmation. Every node speaks
            // every protocol we dial, so the one risk (an unsupported protocol failing late,
            // taking the connection with it) does not arise inside a cluster.
            .with_swarm_config(|c| {
                c.with_idle_connection_timeout(Duration::from_secs(3600))
                    .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
            })
            .build();
        for topic in [CONTROL_TOPIC, EVENTS_TOPIC] {
            swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(&gossipsub::IdentTopic::new(topic))
                .map_err(|e| build(e.to_string()))?;
        }
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| OverlayError::Listen { addr: addr.clone(), err: e.to_string() })?;
        }
        Ok(EventLoop {
            swarm,
            commands,
            events,
            bootstrap: config.bootstrap,
            chorus: HashSet::new(),
            pending: HashMap::new(),
            raft_out: HashMap::new(),
            raft_in: HashMap::new(),
            snapshot_lane: HashSet::new(),
            raft_tx,
            next_raft_id: 0,
        })
    }

    /// Runs until every [`super::Client`] is dropped.
    pub async fn run(mut self) {
        self.dial_bootstrap();
        let mut maintenance = tokio::time::interval(Duration::from_secs(1));
        let mut rebootstrap = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm(event).await,
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                _ = maintenance.tick() => {
                    // Alone (e.g. the bootstrap peer restarted): dial the bootstrap list again.
                    if self.swarm.connected_peers().next().is_none() {
                        self.dial_bootstrap();
                    }
                    self.dial_known_peers();
                }
                _ = rebootstrap.tick() => {
                    // Refresh the routing table; fails harmlessly while it is empty.
                    let _ = self.swarm.behaviour_mut().kad.bootstrap();
                }
            }
        }
        tracing::debug!("overlay stopped");
    }

    /// Full mesh for small clusters: dial every routing-table peer we are not connected to,
    /// so losing the peer we joined through never isolates us.
    fn dial_known_peers(&mut self) {
        let me = *self.swarm.local_peer_id();
        let known: Vec<PeerId> = self
            .swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .flat_map(|b| b.iter().map(|e| *e.node.key.preimage()).collect::<Vec<_>>())
            .collect();
        for peer in known {
            if peer != me && !self.swarm.is_connected(&peer) {
                let _ = self.swarm.dial(peer);
            }
        }
    }

    fn dial_bootstrap(&mut self) {
        for addr in self.bootstrap.clone() {
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::debug!(%addr, error = %e, "bootstrap dial failed");
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Publish { topic, data, reply } => {
                let r = self.swarm.behaviour_mut().gossipsub.publish(gossipsub::IdentTopic::new(topic), data);
                let _ = reply.send(r.map(|_| ()).map_err(|e| OverlayError::Publish(e.to_string())));
            }
            Command::Validate { id, propagation, acceptance } => {
                self.swarm.behaviour_mut().gossipsub.report_message_validation_result(&id, &propagation, acceptance);
            }
            Command::Subscribe { topic, on } => {
                let topic = gossipsub::IdentTopic::new(topic);
                let gossip = &mut self.swarm.behaviour_mut().gossipsub;
                if on {
                    if let Err(e) = gossip.subscribe(&topic) {
                        tracing::warn!(%topic, error = %e, "cannot subscribe");
                    }
                } else {
                    gossip.unsubscribe(&topic);
                }
            }
            Command::SendElection { to, msg, reply } => {
                let id = self.swarm.behaviour_mut().election.send_request(&to, msg);
                self.pending.insert(id, reply);
            }
            Command::SendRaft { to, data, lane, reply } => {
                // An older peer takes its snapshot chunks as plain Raft requests.
                let lane = match lane {
                    Lane::Snapshot if !self.snapshot_lane.contains(&to) => Lane::Raft,
                    lane => lane,
                };
                let id = self.frames(lane).send_request(&to, Frame(data));
                self.raft_out.insert((lane, id), reply);
            }
            Command::RaftReply { id, data } => {
                if let Some((lane, channel)) = self.raft_in.remove(&id) {
                    let _ = self.frames(lane).send_response(channel, Frame(data));
                }
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
        }
    }

    async fn on_swarm(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, peer_id = %self.swarm.local_peer_id(), "overlay listening");
                let _ = self.events.send(Event::Listening(address));
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } if self.chorus.remove(&peer_id) => {
                self.snapshot_lane.remove(&peer_id);
                let _ = self.events.send(Event::PeerDown(peer_id));
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour(event).await,
            _ => {}
        }
    }

    async fn on_behaviour(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                if info.protocol_version != PROTOCOL_VERSION {
                    tracing::debug!(%peer_id, version = %info.protocol_version, "not a chorus peer");
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                if info.protocols.iter().any(|p| p.as_ref() == SNAPSHOT_PROTOCOL) {
                    self.snapshot_lane.insert(peer_id);
                }
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
                if self.chorus.insert(peer_id) {
                    // A new peer knows others: look ourselves up to learn (and dial) them now
                    // rather than at the next periodic bootstrap.
                    let _ = self.swarm.behaviour_mut().kad.bootstrap();
                    let _ = self.events.send(Event::PeerUp(peer_id));
                }
            }
            // Full mesh for small clusters: connect to every peer we learn of.
            BehaviourEvent::Kad(kad::Event::RoutingUpdated { peer, .. })
                if !self.swarm.is_connected(&peer) && peer != *self.swarm.local_peer_id() =>
            {
                let _ = self.swarm.dial(peer);
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
            BehaviourEvent::Ping(ping::Event { peer, result: Err(e), .. }) => {
                tracing::debug!(%peer, error = %e, "ping failed; disconnecting");
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Message { propagation_source, message_id, message }) => {
                let Some(source) = message.source else { return };
                let event = Event::Gossip {
                    source,
                    propagation: propagation_source,
                    id: message_id,
                    topic: message.topic.into_string(),
                    data: message.data,
                };
                let _ = self.events.send(event);
            }
            BehaviourEvent::Election(event) => self.on_election(event).await,
            BehaviourEvent::Raft(event) => self.on_raft(Lane::Raft, event),
            BehaviourEvent::Snapshot(event) => self.on_raft(Lane::Snapshot, event),
            _ => {}
        }
    }

    fn frames(&mut self, lane: Lane) -> &mut request_response::cbor::Behaviour<Frame, Frame> {
        match lane {
            Lane::Raft => &mut self.swarm.behaviour_mut().raft,
            Lane::Snapshot => &mut self.swarm.behaviour_mut().snapshot,
        }
    }

    fn on_raft(&mut self, lane: Lane, event: request_response::Event<Frame, Frame>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let id = self.next_raft_id;
                    self.next_raft_id += 1;
                    self.raft_in.insert(id, (lane, channel));
                    let _ = self.raft_tx.send(RaftInbound { from: peer, id, data: request.0 });
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some(reply) = self.raft_out.remove(&(lane, request_id)) {
                        let _ = reply.send(Ok(response.0));
                    }
                }
            },
            request_response::Event::OutboundFailure { request_id, error, peer, .. } => {
                if let Some(reply) = self.raft_out.remove(&(lane, request_id)) {
                    let never_sent = matches!(
                        error,
                        request_response::OutboundFailure::DialFailure
                            | request_response::OutboundFailure::UnsupportedProtocols
                    );
                    let msg = format!("{peer}: {error}");
                    let _ = reply.send(Err(if never_sent {
                        OverlayError::NotSent(msg)
                    } else {
                        OverlayError::Unreachable(msg)
                    }));
                }
            }
            request_response::Event::InboundFailure { .. } | request_response::Event::ResponseSent { .. } => {
                // A reply that can no longer be sent: forget channels whose stream is gone.
                self.raft_in.retain(|_, (_, c)| c.is_open());
            }
        }
    }

    async fn on_election(&mut self, event: request_response::Event<crate::election::Msg<PeerId>, bool>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let _ = self.swarm.behaviour_mut().election.send_response(channel, true);
                    let _ = self.events.send(Event::Election { from: peer, msg: request });
                }
                request_response::Message::Response { request_id, .. } => {
                    if let Some(reply) = self.pending.remove(&request_id) {
                        let _ = reply.send(Ok(()));
                    }
                }
            },
            request_response::Event::OutboundFailure { request_id, error, peer, .. } => {
                if let Some(reply) = self.pending.remove(&request_id) {
                    let _ = reply.send(Err(OverlayError::Unreachable(format!("{peer}: {error}"))));
                }
            }
            _ => {}
        }
    }
}
