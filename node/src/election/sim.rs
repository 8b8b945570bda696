//! Simulations of the election machine on rings of 1..1000 nodes: one winner, the highest id;
//! message counts within Chang-Roberts' bounds; convergence when nodes die mid-election.

use super::{Action, Election, Input, Msg};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};

struct Net {
    nodes: BTreeMap<u64, Election<u64>>,
    dead: BTreeSet<u64>,
    queue: Vec<(u64, Msg<u64>)>,
    election_msgs: u64,
    elected_msgs: u64,
    rng: StdRng,
    /// Deliver in random order (true) or FIFO.
    shuffle: bool,
}

impl Net {
    fn new(ring: &[u64], seed: u64, shuffle: bool) -> Self {
        let nodes = ring
            .iter()
            .map(|&id| {
                let mut e = Election::new(id);
                e.handle(Input::Membership(ring.to_vec()));
                (id, e)
            })
            .collect();
        Net {
            nodes,
            dead: BTreeSet::new(),
            queue: Vec::new(),
            election_msgs: 0,
            elected_msgs: 0,
            rng: StdRng::seed_from_u64(seed),
            shuffle,
        }
    }

    fn input(&mut self, at: u64, input: Input<u64>) {
        let actions = self.nodes.get_mut(&at).expect("node").handle(input);
        for a in actions {
            if let Action::Send { to, msg } = a {
                if self.dead.contains(&to) {
                    // The successor does not answer: the sender learns it at its deadline.
                    self.input(at, Input::SendFailed { to, msg });
                    continue;
                }
                match msg {
                    Msg::Election { .. } => self.election_msgs += 1,
                    Msg::Elected { .. } => self.elected_msgs += 1,
                }
                self.queue.push((to, msg));
            }
        }
    }

    /// Delivers one queued message; false when none is left.
    fn step(&mut self) -> bool {
        if self.queue.is_empty() {
            return false;
        }
        let i = if self.shuffle { self.rng.gen_range(0..self.queue.len()) } else { 0 };
        let (to, msg) = self.queue.remove(i);
        if !self.dead.contains(&to) {
            self.input(to, Input::Receive(msg));
        }
        true
    }

    fn run(&mut self, limit: u64) {
        let mut n = 0;
        while self.step() {
            n += 1;
            assert!(n < limit, "no quiescence after {limit} deliveries");
        }
    }

    fn live(&self) -> impl Iterator<Item = (&u64, &Election<u64>)> {
        self.nodes.iter().filter(|(id, _)| !self.dead.contains(id))
    }

    /// The leader every live node agrees on, if they do.
    fn agreed(&self) -> Option<u64> {
        let mut leaders = self.live().map(|(_, e)| e.leader().copied());
        let first = leaders.next()??;
        leaders.all(|l| l == Some(first)).then_some(first)
    }
}

fn bounds(n: u64) -> (u64, u64) {
    (2 * n - 1, n * (n + 1) / 2)
}

fn ring(n: u64, order: &str, rng: &mut StdRng) -> Vec<u64> {
    let mut ids: Vec<u64> = (0..n).map(|i| i * 7 + 3).collect();
    match order {
        "ascending" => {}
        "descending" => ids.reverse(),
        _ => ids.shuffle(rng),
    }
    ids
}

#[test]
fn all_start_at_once_elects_the_highest_within_bounds() {
    let mut rng = StdRng::seed_from_u64(7);
    for n in [1u64, 2, 3, 4, 5, 10, 33, 100, 1000] {
        for order in ["ascending", "descending", "random"] {
            for shuffle in [false, true] {
                let ids = ring(n, order, &mut rng);
                let max = *ids.iter().max().unwrap();
                let mut net = Net::new(&ids, n, shuffle);
                let mut starters = ids.clone();
                starters.shuffle(&mut rng);
                for id in starters {
                    net.input(id, Input::Start);
                }
                net.run(10 * n * n + 100);
                assert_eq!(net.agreed(), Some(max), "n={n} {order}");
                assert_eq!(net.elected_msgs, n, "the announcement visits each node once");
                let (best, worst) = bounds(n);
                assert!(
                    (best..=worst).contains(&net.election_msgs),
                    "n={n} {order}: {} not in {best}..={worst}",
                    net.election_msgs
                );
                // Ids ascending along the ring: every message but the winner's dies after one
                // hop (the best case); descending: each travels as far as possible (worst).
                if order == "ascending" {
                    assert_eq!(net.election_msgs, best, "n={n}");
                }
                if order == "descending" && !shuffle {
                    assert_eq!(net.election_msgs, worst, "n={n}");
                }
            }
        }
    }
}

#[test]
fn any_start_order_and_interleaving_elects_the_highest() {
    let mut rng = StdRng::seed_from_u64(11);
    for n in [2u64, 3, 5, 10, 50, 200, 1000] {
        for round in 0..5 {
            let ids = ring(n, "random", &mut rng);
            let max = *ids.iter().max().unwrap();
            let mut net = Net::new(&ids, n * 31 + round, true);
            // A random subset starts, at random moments between deliveries.
            let mut starters: Vec<u64> = ids.iter().copied().filter(|_| rng.gen_bool(0.3)).collect();
            if starters.is_empty() {
                starters.push(ids[rng.gen_range(0..ids.len())]);
            }
            for id in starters {
                for _ in 0..rng.gen_range(0..(n as usize)) {
                    net.step();
                }
                // A node wakes up either on its own or when the first message reaches it;
                // one already taking part does not start again (the driver's rule too).
                if net.nodes[&id].round() == 0 {
                    net.input(id, Input::Start);
                }
            }
            net.run(10 * n * n + 100);
            assert_eq!(net.agreed(), Some(max), "n={n}");
            assert_eq!(net.elected_msgs, n);
            assert!(net.election_msgs >= n && net.election_msgs <= bounds(n).1, "n={n}: {}", net.election_msgs);
        }
    }
}

#[test]
fn a_new_round_supersedes_an_old_one() {
    let ids = [3u64, 9, 5, 7];
    let mut net = Net::new(&ids, 1, false);
    net.input(3, Input::Start); // round 1, never delivered
    net.queue.clear();
    net.input(5, Input::SeenRound(4));
    net.input(5, Input::Start); // round 5
    net.run(1000);
    assert_eq!(net.agreed(), Some(9));
    assert!(net.nodes.values().all(|e| e.round() == 5));
    // A stale message from round 1 changes nothing.
    net.input(7, Input::Receive(Msg::Elected { round: 1, leader: 3 }));
    assert_eq!(net.agreed(), Some(9));
}

#[test]
fn ring_repair_when_nodes_die_mid_election() {
    let mut rng = StdRng::seed_from_u64(5);
    for n in [3u64, 5, 10, 40, 200] {
        for trial in 0..10 {
            let ids = ring(n, "random", &mut rng);
            let mut net = Net::new(&ids, trial, true);
            for id in &ids {
                net.input(*id, Input::Start);
            }
            // Let the election run a while, then kill up to half the nodes (the highest
            // included, sometimes).
            for _ in 0..rng.gen_range(0..(n as usize * 2)) {
                net.step();
            }
            let kills = rng.gen_range(1..=(n as usize / 2).max(1));
            let mut victims = ids.clone();
            victims.shuffle(&mut rng);
            if trial % 3 == 0 {
                victims.insert(0, *ids.iter().max().unwrap());
            }
            for v in victims.into_iter().take(kills) {
                net.dead.insert(v);
            }
            if net.dead.len() == ids.len() {
                continue;
            }
            let live_max = *ids.iter().filter(|i| !net.dead.contains(i)).max().unwrap();
            // Run to quiescence; a node without an agreed live leader times out and starts a
            // new round, as the driver does.
            let mut timeouts = 0;
            loop {
                net.run(50 * n * n + 1000);
                match net.agreed() {
                    Some(l) if !net.dead.contains(&l) => break,
                    _ => {
                        timeouts += 1;
                        assert!(timeouts <= 2 * n, "n={n}: no convergence");
                        let waiting: Vec<u64> = net.live().map(|(id, _)| *id).collect();
                        let who = waiting[rng.gen_range(0..waiting.len())];
                        net.input(who, Input::Start);
                    }
                }
            }
            assert_eq!(net.agreed(), Some(live_max), "n={n} trial={trial}");
        }
    }
}
