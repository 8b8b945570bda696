//! On the leader: the snapshots on their way to peers, so that the log after them outlives
//! the transfer.
//!
//! A peer sent the snapshot at index S catches up, once it has installed it, from the log
//! after S. The leader purges its log up to its newest snapshot but for the last
//! `--retain-log-mib` before it (`snapshot_due`). A transfer that outlasts the time the leader
//! takes to write that much and snapshot again (a large state under steady writes) would end
//! with the peer behind the purge point: the leader would then send it a newer snapshot, from
//! the first chunk, and under steady writes that could repeat without end. So while chunks go
//! to a peer, and for [`CATCH_UP`] after the last one, the leader keeps the log after that
//! peer's progress: the snapshot's index, or the peer's match index once past it. A peer
//! that stops taking chunks holds nothing once its last chunk's deadline and [`CATCH_UP`]
//! have passed.

use super::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long after its last chunk a peer's progress still holds the log.
const CATCH_UP: Duration = Duration::from_secs(30);

/// The transfers one node's Raft sends (shared by its connections and its purge task).
#[derive(Debug, Clone, Default)]
pub(crate) struct SnapshotSends(Arc<Mutex<HashMap<u64, Send>>>);

#[derive(Debug)]
struct Send {
    /// The sent snapshot's last log index.
    index: u64,
    /// When the transfer stops holding the log.
    until: Instant,
}

impl SnapshotSends {
    /// A chunk of the snapshot at `index` goes to peer `target`, with `ttl` to be answered.
    pub(super) fn chunk(&self, target: u64, index: u64, ttl: Duration) {
        lock(&self.0).insert(target, Send { index, until: Instant::now() + ttl + CATCH_UP });
    }

    /// The last index the log may be purged up to for the transfers in progress, with
    /// `matched(peer)` each peer's match index; `None` if no transfer holds the log.
    pub(super) fn purge_cap(&self, matched: impl Fn(u64) -> Option<u64>) -> Option<u64> {
        let now = Instant::now();
        let mut sends = lock(&self.0);
        sends.retain(|_, s| s.until > now);
        sends.iter().map(|(peer, s)| matched(*peer).map_or(s.index, |m| m.max(s.index))).min()
    }
}

#[cfg(test)]
mod tests {
    use super::SnapshotSends;
    use std::time::Duration;

    #[test]
    fn the_log_after_a_sent_snapshot_is_kept_until_the_peer_is_past_it_or_gone() {
        let sends = SnapshotSends::default();
        assert_eq!(sends.purge_cap(|_| None), None, "no transfer: nothing held");
        sends.chunk(7, 131, Duration::from_secs(10));
        assert_eq!(sends.purge_cap(|_| None), Some(131), "in flight: the log after the snapshot");
        assert_eq!(sends.purge_cap(|_| Some(90)), Some(131), "an old match index is ignored");
        assert_eq!(sends.purge_cap(|_| Some(150)), Some(150), "installed: the log after its progress");
        sends.chunk(8, 120, Duration::from_secs(10));
        assert_eq!(sends.purge_cap(|_| None), Some(120), "the peer furthest behind decides");
        sends.chunk(8, 136, Duration::from_secs(10));
        assert_eq!(sends.purge_cap(|_| None), Some(131), "a newer snapshot to a peer replaces its older one");
    }

    #[test]
    fn a_transfer_past_its_deadline_and_catch_up_holds_nothing() {
        let sends = SnapshotSends::default();
        sends.chunk(7, 131, Duration::ZERO);
        assert_eq!(sends.purge_cap(|_| None), Some(131), "within the catch-up time");
        if let Some(s) = super::lock(&sends.0).get_mut(&7) {
            s.until = std::time::Instant::now();
        }
        assert_eq!(sends.purge_cap(|_| None), None, "lapsed: forgotten");
        assert!(super::lock(&sends.0).is_empty());
    }
}
