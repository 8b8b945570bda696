//! Event notices on the events topic: who may publish them, and when they are relayed.

use chorus_protocol::cluster::{Role, RoleAssignment};
use libp2p::gossipsub::MessageAcceptance;
use libp2p::PeerId;
use std::time::Duration;

/// How long an accepted event notice waits before this node relays it to its mesh peers (it is
/// handed to the local streams at once). The leader sends each notice straight to every
/// subscriber, and each subscriber tells its mesh peers on receipt that it has the notice
/// (gossipsub v1.2 IDONTWANT). Relaying at once crossed those announcements on the wire, so
/// every input node received, and checked the signature of, a second copy from each mesh peer.
/// After the hold the announcements have arrived and gossipsub skips those peers; a node the
/// leader cannot reach directly still gets the notice, this much later.
pub(super) const RELAY_HOLD: Duration = Duration::from_millis(5);

/// Event notices carry events that streams push to clients as they are, so only a storage
/// peer of the assignment in force (the Raft leader is one) may publish them. Anything else is
/// ignored: not passed on, and its forwarder not penalised (it may be an honest relay, or the
/// notice may predate an assignment change; the streams' poll covers a lost notice).
pub(super) fn notice_acceptance(assignment: Option<&RoleAssignment>, source: &PeerId) -> MessageAcceptance {
    let source = source.to_base58();
    if assignment.is_some_and(|a| a.holders(Role::Storage).any(|p| p == source)) {
        MessageAcceptance::Accept
    } else {
        MessageAcceptance::Ignore
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_protocol::cluster::Member;

    #[test]
    fn only_storage_peers_may_publish_event_notices() {
        let (storage, input) = (PeerId::random(), PeerId::random());
        let member = |p: &PeerId, roles: Vec<Role>| Member { peer_id: p.to_base58(), http: None, roles };
        let assignment = RoleAssignment {
            epoch: 1,
            round: 1,
            coordinator: storage.to_base58(),
            members: vec![member(&storage, vec![Role::Storage, Role::Input]), member(&input, vec![Role::Input])],
            ..Default::default()
        };
        assert_eq!(notice_acceptance(Some(&assignment), &storage), MessageAcceptance::Accept);
        assert_eq!(notice_acceptance(Some(&assignment), &input), MessageAcceptance::Ignore);
        assert_eq!(notice_acceptance(Some(&assignment), &PeerId::random()), MessageAcceptance::Ignore);
        assert_eq!(notice_acceptance(None, &storage), MessageAcceptance::Ignore, "no assignment yet");
    }
}
