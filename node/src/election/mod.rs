//! Chang-Roberts ring election as a pure state machine: `(state, input) -> actions`, no I/O,
//! no clock. [`driver`] wires it to the overlay and to failure detection.
//!
//! The ring is the live membership ordered by id (PeerId bytes in production); each node
//! sends to its successor. An `Election(candidate)` message travels the ring: a node forwards a
//! larger candidate, replaces a smaller one by itself if it has not yet taken part, and drops
//! it otherwise. A candidate that gets its own message back has the highest id on the ring and
//! announces itself with `Elected(leader)`, which travels the ring once.
//!
//! Every election has a round number. Messages of an older round are ignored; a newer round
//! resets the node's state, so concurrent elections converge on the newest round. A successor
//! that does not answer is removed from the ring and the message goes to the next one; a
//! candidate known to be dead counts as lower than everyone. Stalls (a message lost with a
//! dead node) end with the driver's timeout, which starts a new round.

pub mod driver;
mod notice;
mod pause;
#[cfg(test)]
mod sim;

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Messages that travel the ring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg<Id> {
    /// "`candidate` is the highest id seen so far in `round`".
    Election {
        /// Round.
        round: u64,
        /// Highest id seen.
        candidate: Id,
    },
    /// "`leader` won `round`".
    Elected {
        /// Round.
        round: u64,
        /// Winner.
        leader: Id,
    },
}

impl<Id> Msg<Id> {
    /// The message's round.
    pub fn round(&self) -> u64 {
        match self {
            Msg::Election { round, .. } | Msg::Elected { round, .. } => *round,
        }
    }
}

/// What happens to the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input<Id> {
    /// Start a new round (start-up, heartbeat timeout, coordinator left, stall).
    Start,
    /// A message from the predecessor.
    Receive(Msg<Id>),
    /// `to` did not answer `msg`: skip it.
    SendFailed {
        /// Unreachable successor.
        to: Id,
        /// The message it did not take.
        msg: Msg<Id>,
    },
    /// The live membership changed: the ring, in ring order (the driver sorts by PeerId bytes;
    /// the simulation also tries other orders). This node is added if missing.
    Membership(Vec<Id>),
    /// A round number seen elsewhere (a coordinator's heartbeat): later rounds must exceed it.
    SeenRound(u64),
}

/// What the machine asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<Id> {
    /// Send `msg` to `to` (which may be this node itself on a ring of one).
    Send {
        /// Successor.
        to: Id,
        /// Message.
        msg: Msg<Id>,
    },
    /// This node learned the winner of `round` (itself included).
    Elected {
        /// Round.
        round: u64,
        /// Winner.
        leader: Id,
    },
}

/// One node's election state.
#[derive(Debug, Clone)]
pub struct Election<Id> {
    me: Id,
    ring: Vec<Id>,
    dead: BTreeSet<Id>,
    round: u64,
    participant: bool,
    leader: Option<Id>,
}

impl<Id: Ord + Clone> Election<Id> {
    /// A node `me` on a ring containing only itself.
    pub fn new(me: Id) -> Self {
        Self { ring: vec![me.clone()], me, dead: BTreeSet::new(), round: 0, participant: false, leader: None }
    }

    /// The current round.
    pub fn round(&self) -> u64 {
        self.round
    }

    /// The winner of the current round, once known.
    pub fn leader(&self) -> Option<&Id> {
        self.leader.as_ref()
    }

    /// Whether an election of the current round is under way here.
    pub fn in_progress(&self) -> bool {
        self.participant && self.leader.is_none()
    }

    /// The ring as this node sees it.
    pub fn ring(&self) -> &[Id] {
        &self.ring
    }

    /// Applies one input.
    pub fn handle(&mut self, input: Input<Id>) -> Vec<Action<Id>> {
        match input {
            Input::Start => {
                self.enter(self.round + 1);
                self.participant = true;
                vec![self.send(Msg::Election { round: self.round, candidate: self.me.clone() })]
            }
            Input::SeenRound(r) => {
                if r > self.round {
                    self.round = r;
                    self.participant = false;
                }
                vec![]
            }
            Input::Membership(members) => {
                let mut ring: Vec<Id> = Vec::with_capacity(members.len() + 1);
                for m in members {
                    if !ring.contains(&m) {
                        ring.push(m);
                    }
                }
                if !ring.contains(&self.me) {
                    ring.push(self.me.clone());
                }
                self.dead.retain(|d| !ring.contains(d));
                self.ring = ring;
                vec![]
            }
            Input::SendFailed { to, msg } => {
                if to == self.me {
                    return vec![];
                }
                // The peer is dead to this node whatever the message's round; only a message of
                // the current round is worth re-sending.
                self.ring.retain(|p| *p != to);
                self.dead.insert(to);
                if msg.round() < self.round {
                    return vec![];
                }
                vec![self.send(msg)]
            }
            Input::Receive(msg) => self.receive(msg),
        }
    }

    fn enter(&mut self, round: u64) {
        self.round = round;
        self.participant = false;
        self.leader = None;
    }

    fn successor(&self) -> Id {
        let at = self.ring.iter().position(|p| *p == self.me).unwrap_or(0);
        self.ring.get((at + 1) % self.ring.len().max(1)).cloned().unwrap_or_else(|| self.me.clone())
    }

    fn send(&self, msg: Msg<Id>) -> Action<Id> {
        Action::Send { to: self.successor(), msg }
    }

    fn receive(&mut self, msg: Msg<Id>) -> Vec<Action<Id>> {
        if msg.round() < self.round {
            return vec![]; // stale
        }
        if msg.round() > self.round {
            self.enter(msg.round());
        }
        match msg {
            Msg::Election { round, candidate } => {
                if self.leader.is_some() {
                    return vec![]; // this round is decided (an announcement overtook this message)
                }
                if candidate == self.me {
                    self.participant = false;
                    self.leader = Some(self.me.clone());
                    let me = self.me.clone();
                    return vec![
                        Action::Elected { round, leader: me.clone() },
                        self.send(Msg::Elected { round, leader: me }),
                    ];
                }
                let alive = !self.dead.contains(&candidate);
                if alive && candidate > self.me {
                    self.participant = true;
                    vec![self.send(Msg::Election { round, candidate })]
                } else if !self.participant {
                    self.participant = true;
                    vec![self.send(Msg::Election { round, candidate: self.me.clone() })]
                } else {
                    vec![] // a smaller candidate: swallowed
                }
            }
            Msg::Elected { round, leader } => {
                self.participant = false;
                if leader == self.me {
                    // Our announcement went round the ring: done.
                    if self.leader.as_ref() != Some(&self.me) {
                        self.leader = Some(leader.clone());
                        return vec![Action::Elected { round, leader }];
                    }
                    return vec![];
                }
                if self.leader.as_ref() == Some(&leader) {
                    return vec![]; // already known and forwarded
                }
                self.leader = Some(leader.clone());
                vec![Action::Elected { round, leader: leader.clone() }, self.send(Msg::Elected { round, leader })]
            }
        }
    }
}
