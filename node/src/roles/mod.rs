//! Role policy (pure) and signed assignments.
//!
//! Policy: up to `replicas` storage peers (those already storage keep the role, then nodes
//! that hold the replicated log, then the lowest PeerIds; never a node started with
//! `--no-storage`); the other nodes split between
//! input (at least half, at least one) and relay. When every node is storage, every node is
//! also input and relay: small clusters give one node several roles, a lone node all three.

pub mod sign;

use chorus_protocol::cluster::{Role, RoleAssignment};
use libp2p::PeerId;

/// A live member as the coordinator knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Its id.
    pub peer_id: PeerId,
    /// Its HTTP address, once announced.
    pub http: Option<String>,
    /// Started with `--no-storage`.
    pub no_storage: bool,
    /// Already belongs to the replicated log.
    pub raft_member: bool,
}

/// Roles for `members` (any order), as `(peer, roles)` sorted by PeerId bytes.
pub fn assign(members: &[Candidate], previous_storage: &[PeerId], replicas: usize) -> Vec<(PeerId, Vec<Role>)> {
    let mut sorted: Vec<&Candidate> = members.iter().collect();
    sorted.sort_by_key(|c| c.peer_id.to_bytes());
    sorted.dedup_by_key(|c| c.peer_id);
    let live = |p: &PeerId| sorted.iter().find(|c| c.peer_id == *p && !c.no_storage);
    let holds = |p: &PeerId| live(p).is_some_and(|c| c.raft_member);
    let previous = || previous_storage.iter().copied().filter(|p| live(p).is_some());
    let all = || sorted.iter().filter(|c| !c.no_storage).map(|c| c.peer_id);
    // As little data as possible moves: previous storage peers that hold the log, other
    // holders (a new coordinator knows no previous set; the holders are back after an outage
    // in which others were named), previous ones still catching up, then anyone.
    let order = previous()
        .filter(holds)
        .chain(all().filter(holds))
        .chain(previous().filter(|p| !holds(p)))
        .chain(all().filter(|p| !holds(p)));
    let mut storage: Vec<PeerId> = Vec::with_capacity(replicas);
    for p in order {
        if storage.len() >= replicas {
            break;
        }
        if !storage.contains(&p) {
            storage.push(p);
        }
    }
    let rest: Vec<PeerId> = sorted.iter().map(|c| c.peer_id).filter(|p| !storage.contains(p)).collect();
    let inputs = rest.len().div_ceil(2);

    sorted
        .iter()
        .map(|c| {
            let p = c.peer_id;
            let mut roles = Vec::new();
            if storage.contains(&p) {
                roles.push(Role::Storage);
                if rest.is_empty() {
                    roles.extend([Role::Input, Role::Relay]);
                }
            } else {
                let i = rest.iter().position(|r| *r == p).unwrap_or(0);
                if i < inputs {
                    roles.push(Role::Input);
                }
                if i >= inputs || rest.len() == 1 {
                    roles.push(Role::Relay);
                }
            }
            (p, roles)
        })
        .collect()
}

/// The voters of a genesis assignment with these `roles`: those of the genesis in force
/// (`previous`, the assignment this coordinator holds) while any of them is still a member,
/// else the storage peers of `roles`. So every node that starts the log starts it with the
/// same voters, even when nodes join or a new coordinator issues its genesis before it hears
/// that the log started: the first storage peers of a cluster that starts node by node are
/// the first node alone, and the others join its log as learners.
pub fn genesis_voters(previous: Option<&RoleAssignment>, roles: &[(PeerId, Vec<Role>)]) -> Vec<String> {
    let member = |p: &String| roles.iter().any(|(q, _)| q.to_base58() == *p);
    match previous {
        Some(a) if a.genesis && a.genesis_voters.iter().any(member) => a.genesis_voters.clone(),
        _ => roles.iter().filter(|(_, r)| r.contains(&Role::Storage)).map(|(p, _)| p.to_base58()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(n: usize) -> Vec<Candidate> {
        (0..n)
            .map(|_| Candidate { peer_id: PeerId::random(), http: None, no_storage: false, raft_member: false })
            .collect()
    }

    fn count(a: &[(PeerId, Vec<Role>)], role: Role) -> usize {
        a.iter().filter(|(_, r)| r.contains(&role)).count()
    }

    fn storage(a: &[(PeerId, Vec<Role>)]) -> Vec<PeerId> {
        a.iter().filter(|(_, r)| r.contains(&Role::Storage)).map(|(p, _)| *p).collect()
    }

    /// `n` candidates sorted by PeerId bytes; those in `holders` hold the log.
    fn sorted_peers(n: usize, holders: std::ops::Range<usize>) -> Vec<Candidate> {
        let mut m = peers(n);
        m.sort_by_key(|c| c.peer_id.to_bytes());
        for c in &mut m[holders] {
            c.raft_member = true;
        }
        m
    }

    #[test]
    fn policy_for_every_size() {
        for n in 1..=12 {
            let m = peers(n);
            let a = assign(&m, &[], 3);
            assert_eq!(a.len(), n);
            assert_eq!(count(&a, Role::Storage), n.min(3), "n={n}");
            assert!(count(&a, Role::Input) >= 1, "n={n}: at least one input");
            assert!(a.iter().all(|(_, r)| !r.is_empty()), "n={n}: everyone has a role");
            if n == 1 {
                assert_eq!(a[0].1, [Role::Storage, Role::Input, Role::Relay]);
            }
            if n > 3 {
                let rest = n - 3;
                assert_eq!(count(&a, Role::Input), rest.div_ceil(2), "n={n}");
                assert!(count(&a, Role::Relay) >= 1);
            }
            let sorted: Vec<Vec<u8>> = a.iter().map(|(p, _)| p.to_bytes()).collect();
            assert!(sorted.windows(2).all(|w| w[0] < w[1]), "ordered by PeerId bytes");
        }
    }

    #[test]
    fn no_storage_nodes_are_never_storage_and_storage_is_sticky() {
        let mut m = peers(6);
        for c in m.iter_mut().take(3) {
            c.no_storage = true;
        }
        let a = assign(&m, &[], 3);
        for (p, r) in &a {
            let c = m.iter().find(|c| c.peer_id == *p).unwrap();
            assert!(!(c.no_storage && r.contains(&Role::Storage)));
        }
        assert_eq!(count(&a, Role::Storage), 3);
        // Existing storage peers keep the role when others join.
        let previous = storage(&a);
        let mut bigger = m.clone();
        bigger.extend(peers(4));
        let b = assign(&bigger, &previous, 3);
        let now = storage(&b);
        let mut x = previous.clone();
        x.sort_by_key(|p| p.to_bytes());
        let mut y = now.clone();
        y.sort_by_key(|p| p.to_bytes());
        assert_eq!(x, y);
        // A dead storage peer is replaced.
        let survivors: Vec<Candidate> = bigger.iter().filter(|c| c.peer_id != previous[0]).cloned().collect();
        let c = assign(&survivors, &previous, 3);
        assert_eq!(count(&c, Role::Storage), 3);
    }

    #[test]
    fn without_a_previous_set_the_log_holders_stay_storage() {
        // The three highest PeerIds hold the log (a full restart after replacements).
        let mut m = sorted_peers(6, 3..6);
        let holders: Vec<PeerId> = m.iter().skip(3).map(|c| c.peer_id).collect();
        assert_eq!(storage(&assign(&m, &[], 3)), holders);
        // A holder started with --no-storage is still passed over.
        m[5].no_storage = true;
        let b = assign(&m, &[], 3);
        assert!(!b[5].1.contains(&Role::Storage) && count(&b, Role::Storage) == 3);
    }

    #[test]
    fn log_holders_back_from_an_outage_take_storage_back() {
        // The holders 0..3 were all down, so 3 and 4 were named (they hold nothing).
        let mut m = sorted_peers(5, 0..3);
        let named = [m[3].peer_id, m[4].peer_id];
        let holders: Vec<PeerId> = m.iter().take(3).map(|c| c.peer_id).collect();
        assert_eq!(storage(&assign(&m, &named, 3)), holders);
        // A previous storage peer that holds the log keeps the role over other holders.
        m[4].raft_member = true;
        let kept = storage(&assign(&m, &[m[4].peer_id, m[0].peer_id], 3));
        assert_eq!(kept, [m[0].peer_id, m[1].peer_id, m[4].peer_id]);
        // With no holder alive, the named ones stay named.
        let blank: Vec<Candidate> = m.iter().skip(3).cloned().map(|c| Candidate { raft_member: false, ..c }).collect();
        assert_eq!(storage(&assign(&blank, &named, 3)), named);
    }

    fn assignment(roles: Vec<(PeerId, Vec<Role>)>, genesis_voters: Vec<String>) -> RoleAssignment {
        let members = roles
            .into_iter()
            .map(|(p, roles)| chorus_protocol::cluster::Member { peer_id: p.to_base58(), http: None, roles })
            .collect();
        let genesis = !genesis_voters.is_empty();
        RoleAssignment {
            epoch: 1,
            round: 1,
            coordinator: String::new(),
            members,
            issued_at: 0,
            genesis,
            genesis_voters,
        }
    }

    /// Sorted base58 names (a PeerId displays as its base58).
    fn names<T: ToString>(peers: &[T]) -> Vec<String> {
        let mut v: Vec<String> = peers.iter().map(T::to_string).collect();
        v.sort();
        v
    }

    #[test]
    fn every_node_starts_the_log_with_the_same_genesis_voters() {
        let m = sorted_peers(5, 0..0);
        let first = assign(&m, &[], 3);
        let voters = genesis_voters(None, &first);
        assert_eq!(names(&voters), names(&storage(&first)));
        let first = assignment(first, voters.clone());
        // The coordinator, a storage peer, dies before anyone heard that the log started; its
        // successor names another node in its place, but keeps the voters.
        let dead: PeerId = voters[0].parse().unwrap();
        let survivors: Vec<Candidate> = m.iter().filter(|c| c.peer_id != dead).cloned().collect();
        let second = assign(&survivors, &storage(&first_roles(&first)), 3);
        assert_ne!(names(&storage(&second)), names(&voters));
        assert_eq!(genesis_voters(Some(&first), &second), voters);
        // A cluster that starts node by node: the first node alone is the genesis; nodes that
        // join before it announced its log are storage peers, not voters of the genesis.
        let alone = assign(&m[..1], &[], 3);
        let alone = assignment(alone.clone(), genesis_voters(None, &alone));
        let grown = assign(&m, &[m[0].peer_id], 3);
        assert_eq!(storage(&grown).len(), 3);
        assert_eq!(genesis_voters(Some(&alone), &grown), [m[0].peer_id.to_base58()]);
        // Once none of the voters is a member, the storage peers of the day start the log.
        let others: Vec<Candidate> = m.iter().filter(|c| !voters.contains(&c.peer_id.to_base58())).cloned().collect();
        let third = assign(&others, &[], 3);
        assert_eq!(names(&genesis_voters(Some(&first), &third)), names(&storage(&third)));
        // An assignment that was no genesis has no voters to keep.
        let plain = assignment(first_roles(&first), Vec::new());
        assert_eq!(names(&genesis_voters(Some(&plain), &second)), names(&storage(&second)));
    }

    fn first_roles(a: &RoleAssignment) -> Vec<(PeerId, Vec<Role>)> {
        a.members.iter().map(|m| (m.peer_id.parse().unwrap(), m.roles.clone())).collect()
    }
}
