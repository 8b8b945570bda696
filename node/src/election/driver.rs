//! Wires the election machine to the overlay and to failure detection, and runs the
//! coordinator's duties (heartbeats, signed role assignments).
//!
//! ```text
//! overlay Events ──┐
//! tick (heartbeat/2)├─> Driver (one task: membership, Election machine, assignment) ─> overlay Client
//! send failures ───┘                      └─> ClusterState (read by GET /api/v1/cluster)
//! ```
//!
//! Triggers for an election: no coordinator heard for `timeout` since start-up, a coordinator
//! heartbeat missing for `timeout`, the coordinator's connection closing, or an election that
//! has not finished within `2 * timeout` (a stall after a death).

use super::notice::{notice_acceptance, RELAY_HOLD};
use super::pause::PauseWatch;
use super::{Action, Election, Input, Msg};
use crate::overlay::{Client, Event};
use crate::roles::{self, sign, Candidate};
use chorus_protocol::cluster::{ControlMsg, Member, Role, RoleAssignment, SignedAssignment, CONTROL_TOPIC};
use libp2p::gossipsub::MessageAcceptance;
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Driver settings.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Coordinator heartbeat period.
    pub heartbeat: Duration,
    /// Silence after which the coordinator counts as dead.
    pub timeout: Duration,
    /// Storage peers wanted.
    pub storage_replicas: usize,
    /// This node's HTTP address (announced in presence).
    pub http: String,
    /// Never make this node a storage peer.
    pub no_storage: bool,
}

/// The cluster as this node sees it; read by the HTTP view.
#[derive(Debug, Default)]
pub struct ClusterState {
    inner: RwLock<View>,
    /// Election messages this node sent.
    pub election_msgs: AtomicU64,
    /// Elected (announcement) messages this node sent.
    pub elected_msgs: AtomicU64,
    /// Assignments refused for a bad signature.
    pub rejected_forged: AtomicU64,
    /// Assignments ignored: an old epoch, or not signed by the coordinator this node follows.
    pub ignored_stale: AtomicU64,
    /// Set by replication: this node belongs to the replicated log (announced in presence).
    pub raft_member: std::sync::atomic::AtomicBool,
    /// This node knows the cluster has a replicated log: it belonged to it, or a peer said it
    /// belongs or knows. Never cleared (replication keeps it on disk), announced in presence,
    /// and a coordinator that knows never issues a genesis: with every log holder down, the
    /// nodes left wait for them (writes answer 503) instead of starting a second, empty log.
    pub log_seen: std::sync::atomic::AtomicBool,
    /// The last peer whose connections all closed (replication reacts if it was the leader).
    pub peer_down: tokio::sync::watch::Sender<Option<PeerId>>,
}

/// A snapshot of what this node knows.
#[derive(Debug, Default, Clone)]
pub struct View {
    /// Current coordinator.
    pub coordinator: Option<PeerId>,
    /// Election round of the current coordinator.
    pub round: u64,
    /// The assignment in force.
    pub assignment: Option<SignedAssignment>,
    /// Listen addresses.
    pub addrs: Vec<Multiaddr>,
}

impl ClusterState {
    /// A copy of the view.
    pub fn view(&self) -> View {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut View)) {
        f(&mut self.inner.write().unwrap_or_else(|p| p.into_inner()));
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Info {
    http: Option<String>,
    no_storage: bool,
    raft_member: bool,
}

enum Internal {
    SendFailed { to: PeerId, msg: Msg<PeerId> },
}

struct Driver {
    me: PeerId,
    key: Keypair,
    cfg: DriverConfig,
    client: Client,
    state: Arc<ClusterState>,
    machine: Election<PeerId>,
    /// Connected Chorus peers (not us).
    connected: BTreeMap<PeerId, ()>,
    /// Peers presumed dead (a coordinator that stopped heartbeating) until they speak again.
    suspects: std::collections::BTreeSet<PeerId>,
    /// What peers announced about themselves.
    info: BTreeMap<PeerId, Info>,
    coordinator: Option<PeerId>,
    coordinator_round: u64,
    last_heartbeat: Instant,
    started: Instant,
    election_started: Option<Instant>,
    assignment: Option<SignedAssignment>,
    /// Highest assignment epoch seen anywhere: a new coordinator issues above it.
    max_epoch: u64,
    /// Members and infos the current assignment was computed from (coordinator only).
    assigned_from: Option<Vec<Candidate>>,
    last_sent_heartbeat: Instant,
    last_presence: Instant,
    last_republish: Instant,
    /// Whether this process was just paused, so that what it finds queued is old news.
    pause: PauseWatch,
    internal: mpsc::Sender<Internal>,
    /// Event notices from the events topic, for the node's stream hub.
    notices: mpsc::Sender<Vec<u8>>,
}

/// Runs the driver until the overlay's event stream ends.
pub async fn run(
    key: Keypair,
    cfg: DriverConfig,
    client: Client,
    mut events: mpsc::UnboundedReceiver<Event>,
    state: Arc<ClusterState>,
    notices: mpsc::Sender<Vec<u8>>,
) {
    let me = key.public().to_peer_id();
    let (itx, mut irx) = mpsc::channel(256);
    let now = Instant::now();
    let mut d = Driver {
        me,
        key,
        machine: Election::new(me),
        client,
        state,
        connected: BTreeMap::new(),
        suspects: Default::default(),
        info: BTreeMap::new(),
        coordinator: None,
        coordinator_round: 0,
        last_heartbeat: now,
        started: now,
        election_started: None,
        assignment: None,
        max_epoch: 0,
        assigned_from: None,
        last_sent_heartbeat: now - cfg.heartbeat,
        last_presence: now - Duration::from_secs(10),
        last_republish: now,
        pause: PauseWatch::new(cfg.timeout, now),
        internal: itx,
        notices,
        cfg,
    };
    d.info.insert(me, Info { http: Some(d.cfg.http.clone()), no_storage: d.cfg.no_storage, raft_member: false });
    let mut tick = tokio::time::interval(d.cfg.heartbeat / 2);
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => {
                    d.watch_pause();
                    d.on_event(ev).await
                }
                None => break,
            },
            Some(Internal::SendFailed { to, msg }) = irx.recv() => {
                d.watch_pause();
                tracing::info!(%to, "election successor unreachable; skipping it");
                let actions = d.machine.handle(Input::SendFailed { to, msg });
                d.act(actions).await;
            }
            _ = tick.tick() => {
                d.watch_pause();
                d.on_tick().await
            }
        }
    }
}

impl Driver {
    fn is_coordinator(&self) -> bool {
        self.coordinator == Some(self.me)
    }

    /// At each turn of the loop: after a pause the coordinator gets a whole timeout to be
    /// heard again before this node acts on what it missed ([`PauseWatch`]).
    fn watch_pause(&mut self) {
        let now = Instant::now();
        if let Some(gap) = self.pause.turn(now) {
            tracing::warn!(
                paused_ms = gap.as_millis() as u64,
                "this node did not run for a while: listening for the coordinator first"
            );
            self.last_heartbeat = now;
        }
    }

    /// Live members (connected, not suspected) and this node, by PeerId bytes.
    fn ring(&self) -> Vec<PeerId> {
        let mut ring: Vec<PeerId> =
            self.connected.keys().filter(|p| !self.suspects.contains(p)).copied().chain([self.me]).collect();
        ring.sort_by_key(|p| p.to_bytes());
        ring
    }

    async fn on_event(&mut self, ev: Event) {
        match ev {
            Event::PeerUp(p) => {
                self.connected.insert(p, ());
                self.machine.handle(Input::Membership(self.ring()));
                self.publish_presence().await;
                if self.is_coordinator() {
                    // Tell the newcomer at once who leads (it must not start an election),
                    // then what its role is.
                    self.publish_heartbeat().await;
                    self.republish().await;
                }
            }
            Event::PeerDown(p) => {
                self.connected.remove(&p);
                self.state.peer_down.send_replace(Some(p));
                self.machine.handle(Input::Membership(self.ring()));
                if self.coordinator == Some(p) && self.pause.quiet(Instant::now()) {
                    // Its heartbeats may still come through other peers; if they stop, the
                    // timeout starts the election.
                    tracing::info!(coordinator = %p, "coordinator's connection closed just after a pause");
                } else if self.coordinator == Some(p) {
                    tracing::info!(coordinator = %p, "coordinator left; starting an election");
                    self.coordinator = None;
                    self.start_election(false).await;
                }
            }
            Event::Election { msg, .. } => {
                let actions = self.machine.handle(Input::Receive(msg));
                self.act(actions).await;
            }
            Event::Gossip { source, propagation, id, topic, data } if topic == CONTROL_TOPIC => {
                let verdict = self.on_control(source, &data).await;
                self.client.validate(id, propagation, verdict).await;
            }
            Event::Gossip { source, propagation, id, data, .. } => self.on_notice(source, propagation, id, data),
            Event::Listening(addr) => self.state.update(|v| v.addrs.push(addr)),
        }
    }

    /// An event notice: handed to the local streams at once if a storage peer wrote it, and
    /// reported to gossipsub (which relays what is accepted) after [`RELAY_HOLD`].
    fn on_notice(&self, source: PeerId, propagation: PeerId, id: libp2p::gossipsub::MessageId, data: Vec<u8>) {
        let verdict = notice_acceptance(self.assignment.as_ref().map(|a| &a.assignment), &source);
        let hold = if verdict == MessageAcceptance::Accept {
            // If the node is too busy to take it, the streams' poll covers it.
            let _ = self.notices.try_send(data);
            RELAY_HOLD
        } else {
            tracing::debug!(%source, "ignored an event notice from a peer that is not a storage peer");
            Duration::ZERO
        };
        let client = self.client.clone();
        tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            client.validate(id, propagation, verdict).await;
        });
    }

    async fn on_control(&mut self, source: PeerId, data: &[u8]) -> MessageAcceptance {
        let Ok(msg) = serde_json::from_slice::<ControlMsg>(data) else { return MessageAcceptance::Reject };
        // Whoever speaks is alive: no longer suspected.
        if self.suspects.remove(&source) {
            self.machine.handle(Input::Membership(self.ring()));
        }
        match msg {
            ControlMsg::Heartbeat { coordinator, epoch, round } => {
                if coordinator != source.to_base58() {
                    return MessageAcceptance::Reject;
                }
                self.max_epoch = self.max_epoch.max(epoch);
                self.machine.handle(Input::SeenRound(round));
                self.on_heartbeat(source, round);
                MessageAcceptance::Accept
            }
            ControlMsg::Presence { peer_id, http, no_storage, epoch, raft_member, log_seen } => {
                if peer_id != source.to_base58() {
                    return MessageAcceptance::Reject;
                }
                if raft_member || log_seen {
                    self.state.log_seen.store(true, Ordering::Relaxed);
                }
                self.info.insert(source, Info { http, no_storage, raft_member });
                if epoch > self.max_epoch {
                    // A member holds a newer epoch (from a coordinator it followed before, e.g.
                    // across a healed partition): reissue above it or it would ignore ours.
                    self.max_epoch = epoch;
                    if self.is_coordinator() {
                        self.assigned_from = None;
                    }
                }
                MessageAcceptance::Accept
            }
            ControlMsg::Assignment(signed) => self.on_assignment(signed),
        }
    }

    /// Adopts `from` as coordinator if it is ours, or outranks ours (newer round, or the same
    /// round and a higher id: two coordinators after a healed partition settle on one).
    fn on_heartbeat(&mut self, from: PeerId, round: u64) {
        let outranks = match self.coordinator {
            None => true,
            Some(c) if c == from => true,
            Some(c) => (round, from.to_bytes()) > (self.coordinator_round, c.to_bytes()),
        };
        if !outranks {
            if self.is_coordinator() {
                // A lesser coordinator (a healed partition): reissue above its epochs so its
                // followers switch to ours once it steps down.
                self.assigned_from = None;
            }
            return;
        }
        if self.is_coordinator() && from != self.me {
            tracing::warn!(other = %from, "another coordinator outranks this one; stepping down");
            self.assigned_from = None;
        }
        if self.coordinator != Some(from) {
            tracing::info!(coordinator = %from, round, "following coordinator");
        }
        self.coordinator = Some(from);
        self.coordinator_round = round;
        self.last_heartbeat = Instant::now();
        self.election_started = None;
        self.state.update(|v| {
            v.coordinator = Some(from);
            v.round = round;
        });
    }

    fn on_assignment(&mut self, signed: SignedAssignment) -> MessageAcceptance {
        if let Err(e) = sign::verify(&signed) {
            tracing::warn!(error = %e, epoch = signed.assignment.epoch, "rejected a role assignment");
            self.state.rejected_forged.fetch_add(1, Ordering::Relaxed);
            return MessageAcceptance::Reject;
        }
        // Only the coordinator this node follows may assign roles (a validly self-signed
        // assignment from any other peer is not an assignment). Before any coordinator is
        // known, the first valid one is taken; heartbeats then settle who leads.
        if let Some(c) = self.coordinator {
            if signed.assignment.coordinator != c.to_base58() {
                self.state.ignored_stale.fetch_add(1, Ordering::Relaxed);
                return MessageAcceptance::Ignore;
            }
        }
        self.max_epoch = self.max_epoch.max(signed.assignment.epoch);
        let current = self.assignment.as_ref().map(|a| (a.assignment.epoch, a.assignment.coordinator.clone()));
        // Newer: a higher epoch, or the same epoch from the coordinator we follow replacing one
        // signed by another (two coordinators issued the same number across a partition).
        let newer = match &current {
            None => true,
            Some((epoch, coord)) => {
                signed.assignment.epoch > *epoch
                    || (signed.assignment.epoch == *epoch && *coord != signed.assignment.coordinator)
            }
        };
        if !newer {
            if current.as_ref().is_some_and(|(e, _)| *e > signed.assignment.epoch) {
                self.state.ignored_stale.fetch_add(1, Ordering::Relaxed);
            }
            return MessageAcceptance::Ignore;
        }
        let roles = signed.assignment.roles_of(&self.me.to_base58());
        tracing::info!(epoch = signed.assignment.epoch, coordinator = %signed.assignment.coordinator, ?roles, "new role assignment");
        self.set_assignment(signed);
        MessageAcceptance::Accept
    }

    fn set_assignment(&mut self, signed: SignedAssignment) {
        self.assignment = Some(signed.clone());
        self.state.update(|v| v.assignment = Some(signed));
    }

    async fn on_tick(&mut self) {
        let now = Instant::now();
        let member = self.state.raft_member.load(Ordering::Relaxed);
        let changed =
            self.info.get_mut(&self.me).is_some_and(|i| std::mem::replace(&mut i.raft_member, member) != member);
        if changed || now.duration_since(self.last_presence) >= Duration::from_secs(1) {
            self.publish_presence().await;
        }
        if self.is_coordinator() {
            if now.duration_since(self.last_sent_heartbeat) >= self.cfg.heartbeat {
                self.publish_heartbeat().await;
            }
            // After a pause its view of who is alive is stale (and it may have been replaced).
            if !self.pause.quiet(now) {
                self.maybe_reassign().await;
            }
            if now.duration_since(self.last_republish) >= Duration::from_secs(5) {
                self.republish().await;
            }
            return;
        }
        let silent = now.duration_since(self.last_heartbeat) > self.cfg.timeout;
        match (self.coordinator, self.election_started) {
            (_, Some(t)) if now.duration_since(t) > 2 * self.cfg.timeout => {
                tracing::info!("election stalled; starting a new round");
                self.start_election(true).await;
            }
            (_, Some(_)) => {}
            (None, None) if now.duration_since(self.started) > self.cfg.timeout => {
                tracing::info!("no coordinator heard; starting an election");
                self.start_election(false).await;
            }
            (Some(c), None) if silent => {
                tracing::info!(coordinator = %c, "coordinator heartbeat missing; starting an election");
                // Its connection may stay open (frozen, partitioned): leave it out of the ring
                // until it speaks again, or every Election sent to it waits for a timeout.
                self.suspects.insert(c);
                self.coordinator = None;
                self.start_election(false).await;
            }
            _ => {}
        }
    }

    /// Starts a new round, unless one is already under way here (then it only watches it for
    /// a stall); `force` starts a new round regardless.
    async fn start_election(&mut self, force: bool) {
        self.election_started = Some(Instant::now());
        self.machine.handle(Input::Membership(self.ring()));
        if self.machine.in_progress() && !force {
            return;
        }
        let actions = self.machine.handle(Input::Start);
        self.act(actions).await;
    }

    async fn act(&mut self, actions: Vec<Action<PeerId>>) {
        let mut queue: std::collections::VecDeque<Action<PeerId>> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Send { to, msg } => {
                    match msg {
                        Msg::Election { .. } => self.state.election_msgs.fetch_add(1, Ordering::Relaxed),
                        Msg::Elected { .. } => self.state.elected_msgs.fetch_add(1, Ordering::Relaxed),
                    };
                    if to == self.me {
                        queue.extend(self.machine.handle(Input::Receive(msg)));
                        continue;
                    }
                    let (client, internal) = (self.client.clone(), self.internal.clone());
                    tokio::spawn(async move {
                        if client.send_election(to, msg.clone()).await.is_err() {
                            let _ = internal.send(Internal::SendFailed { to, msg }).await;
                        }
                    });
                }
                Action::Elected { round, leader } => {
                    tracing::info!(%leader, round, "election finished");
                    self.election_started = None;
                    self.coordinator = Some(leader);
                    self.coordinator_round = round;
                    self.last_heartbeat = Instant::now();
                    self.state.update(|v| {
                        v.coordinator = Some(leader);
                        v.round = round;
                    });
                    if leader == self.me {
                        self.assigned_from = None;
                        self.publish_heartbeat().await;
                        self.maybe_reassign().await;
                    }
                }
            }
        }
    }

    fn candidates(&self) -> Vec<Candidate> {
        self.ring()
            .into_iter()
            .map(|p| {
                let info = self.info.get(&p).cloned().unwrap_or_default();
                Candidate { peer_id: p, http: info.http, no_storage: info.no_storage, raft_member: info.raft_member }
            })
            .collect()
    }

    /// Issues a new assignment (next epoch) when membership or announced info changed.
    async fn maybe_reassign(&mut self) {
        let members = self.candidates();
        if self.assigned_from.as_ref() == Some(&members) {
            return;
        }
        let previous_storage: Vec<PeerId> = self
            .assignment
            .as_ref()
            .map(|a| a.assignment.holders(Role::Storage).filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default();
        let roles = roles::assign(&members, &previous_storage, self.cfg.storage_replicas);
        let no_holder = members.iter().all(|c| !c.raft_member);
        let genesis = no_holder && !self.state.log_seen.load(Ordering::Relaxed);
        if no_holder && !genesis {
            tracing::warn!(
                "no live node holds the replicated log: waiting for one (writes answer 503; to start \
                 over with an empty log, stop every node and delete every data dir)"
            );
        }
        let previous = self.assignment.as_ref().map(|a| &a.assignment);
        let genesis_voters = if genesis { roles::genesis_voters(previous, &roles) } else { Vec::new() };
        let epoch = self.max_epoch.max(self.assignment.as_ref().map_or(0, |a| a.assignment.epoch)).saturating_add(1);
        self.max_epoch = epoch;
        let assignment = RoleAssignment {
            epoch,
            round: self.coordinator_round,
            coordinator: self.me.to_base58(),
            members: roles
                .into_iter()
                .map(|(p, roles)| Member {
                    http: members.iter().find(|c| c.peer_id == p).and_then(|c| c.http.clone()),
                    peer_id: p.to_base58(),
                    roles,
                })
                .collect(),
            issued_at: crate::service::now_ms(),
            genesis,
            genesis_voters,
        };
        match sign::sign(assignment, &self.key) {
            Ok(signed) => {
                tracing::info!(epoch, members = members.len(), "issuing role assignment");
                self.set_assignment(signed);
                self.assigned_from = Some(members);
                self.republish().await;
            }
            Err(e) => tracing::error!(error = %e, "cannot sign the assignment"),
        }
    }

    async fn republish(&mut self) {
        self.last_republish = Instant::now();
        if let Some(a) = self.assignment.clone() {
            self.publish(ControlMsg::Assignment(a)).await;
        }
    }

    async fn publish_heartbeat(&mut self) {
        self.last_sent_heartbeat = Instant::now();
        let epoch = self.assignment.as_ref().map_or(0, |a| a.assignment.epoch);
        self.publish(ControlMsg::Heartbeat { coordinator: self.me.to_base58(), epoch, round: self.coordinator_round })
            .await;
    }

    async fn publish_presence(&mut self) {
        self.last_presence = Instant::now();
        let epoch = self.assignment.as_ref().map_or(0, |a| a.assignment.epoch);
        let msg = ControlMsg::Presence {
            peer_id: self.me.to_base58(),
            http: Some(self.cfg.http.clone()),
            no_storage: self.cfg.no_storage,
            epoch,
            raft_member: self.state.raft_member.load(Ordering::Relaxed),
            log_seen: self.state.log_seen.load(Ordering::Relaxed),
        };
        self.publish(msg).await;
    }

    async fn publish(&self, msg: ControlMsg) {
        let Ok(data) = serde_json::to_vec(&msg) else { return };
        if let Err(e) = self.client.publish(CONTROL_TOPIC, data).await {
            // Normal while alone or before the first subscription exchange.
            tracing::trace!(error = %e, "control publish failed");
        }
    }
}
