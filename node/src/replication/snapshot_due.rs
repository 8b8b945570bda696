//! When to snapshot: by the log's bytes.
//!
//! Only a snapshot lets openraft purge the log before it, and a snapshot here is a full copy of
//! the state, uploaded files included. So this task asks for one once the log has grown, since
//! the last snapshot, by more than that snapshot's size, and at least by `snapshot_log_bytes`.
//! Each build then copies at most about twice what was appended since the one before (the old
//! state, no bigger than that, and the new bytes): the copying stays proportional to the
//! writes, and the log on disk under the size of the state (or the floor). A node that starts
//! with a log counts what it holds on disk as grown (RocksDB's estimate): else a node restarted
//! more often than its log reaches the mark would never snapshot, and its log would grow
//! without end.
//!
//! Every storage peer appends the same log, so they would all reach the mark together and
//! build at once, each copying the whole state while its WAL syncs wait on the same disk
//! bandwidth; with a majority of them slowed, so is every commit. So the `rank`-th member (by
//! node id) waits for `rank / (2 x members)` of the mark more: one builds at a time, and the
//! others keep the quorum quick. It costs at most half as much log again on disk.
//!
//! The same task purges the log (openraft itself never does: `max_in_snapshot_log_to_keep`
//! is `u64::MAX`), up to the snapshot but for the newest `retain_log_bytes` before it, on
//! every node (etcd keeps a tail the same way, counted in entries). A storage peer that was
//! restarted, paused or slow while its leader snapshotted then catches up from the log, not by
//! a copy of the whole state (GiBs with files), and so it does after a leader change too: the
//! new leader kept the same tail. Until 2026-12-02 every snapshot purged the log up to itself,
//! so a 3-node cluster's follower restarted across a snapshot was sent the whole state.
//!
//! openraft's own policy, a snapshot every N entries, is off unless `--snapshot-every` asks
//! for it. Until 2026-12-02 it was on at 20,000 entries: with GiBs of files in the state, plain
//! chat traffic made every storage peer rewrite all of them every 20,000 entries, all at the
//! same moment. And before 2026-12-01 it was the only policy: an entry carries up to 4 MiB of
//! file data, so 20,000 entries of uploads kept up to ~80 GB of log.

use super::Replica;
use std::time::Duration;

/// How often the log's growth is checked.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Whether a log that grew by `grown` bytes since a snapshot of `snapshot` bytes is due a new
/// one, with `floor` the least growth that is, on the `rank`-th (from 0) of `members`.
pub(super) fn due(grown: u64, snapshot: u64, floor: u64, rank: u64, members: u64) -> bool {
    let mark = snapshot.max(floor);
    grown >= mark.saturating_add(mark / (2 * members.max(1)) * rank)
}

/// The first log index to keep, from `from` (the first not purged yet) to `snapshot + 1`:
/// the earliest whose entries, up to the snapshot, take at most `retain` bytes
/// (`bytes_from(i)`, which shrinks as `i` grows).
pub(super) fn first_kept(from: u64, snapshot: u64, retain: u64, bytes_from: impl Fn(u64) -> u64) -> u64 {
    let past = snapshot.saturating_add(1);
    let (mut lo, mut hi) = (from.min(past), past);
    if retain == 0 {
        return hi;
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if bytes_from(mid) <= retain {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// Purges this node's log up to what [`first_kept`] keeps and the snapshots on their way to
/// peers allow, if that is past what it purged.
async fn purge(replica: &Replica, raft: &openraft::Raft<crate::storage::raft::TypeConfig>) {
    let (snapshot, purged, cap) = {
        let m = raft.metrics();
        let m = m.borrow();
        let matched = |peer: u64| m.replication.as_ref()?.get(&peer)?.map(|l| l.index);
        let cap = replica.inner.network.sends().purge_cap(matched);
        (m.snapshot.map(|l| l.index), m.purged.map(|l| l.index), cap)
    };
    let Some(snapshot) = snapshot else { return };
    let from = purged.map_or(0, |p| p + 1);
    if from > snapshot {
        return; // nothing the snapshot holds is left (after an install, always)
    }
    let (store, retain) = (replica.inner.store.clone(), replica.inner.cfg.retain_log_bytes);
    let keep = tokio::task::spawn_blocking(move || {
        first_kept(from, snapshot, retain, |i| crate::storage::raft::log_bytes(&store, i, snapshot + 1))
    })
    .await;
    if let Ok(keep) = keep.map(|k| k.checked_sub(1)) {
        // Nor past a peer's progress while a snapshot goes to it (`snapshot_sends`).
        let upto = keep.map(|upto| cap.map_or(upto, |cap| upto.min(cap)));
        if let Some(upto) = upto.filter(|upto| purged.is_none_or(|p| *upto > p)) {
            if let Err(e) = raft.trigger().purge_log(upto).await {
                tracing::warn!(error = %e, "cannot purge the log");
            }
        }
    }
}

/// This node's place among the members of its log by node id, and how many there are.
fn rank(raft: &openraft::Raft<crate::storage::raft::TypeConfig>, me: u64) -> (u64, u64) {
    let m = raft.metrics();
    let m = m.borrow();
    let ids = m.membership_config.membership().nodes().map(|(id, _)| *id);
    let (before, all) = ids.fold((0, 0), |(before, all), id| (before + u64::from(id < me), all + 1));
    (before, all)
}

/// Asks this node's Raft for a snapshot whenever its log is [`due`] one (see the module doc).
pub(super) async fn run(replica: Replica) {
    let (store, floor) = (replica.inner.store.clone(), replica.inner.cfg.snapshot_log_bytes.max(1));
    // `log_appended` when the snapshot in force appeared (or a snapshot was last asked for);
    // and that snapshot's log id and file size, once read.
    let mut mark = store.log_appended();
    let mut known: Option<(Option<openraft::LogId<u64>>, u64)> = None;
    // The log this node started with, until a snapshot purges it.
    let held = store.clone();
    let mut carried = match tokio::task::spawn_blocking(move || crate::storage::raft::log_size_on_disk(&held)).await {
        Ok(Ok(bytes)) => bytes,
        _ => 0,
    };
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let raft = replica.raft();
        let current = raft.metrics().borrow().snapshot;
        if known.is_none_or(|(id, _)| id != current) {
            let s = store.clone();
            let size = tokio::task::spawn_blocking(move || crate::storage::raft::snapshot_size(&s)).await;
            let Ok(Ok(size)) = size else { continue };
            if known.is_some() {
                mark = store.log_appended(); // a new snapshot (built or installed) purged the log
                carried = 0;
            }
            known = Some((current, size.unwrap_or(0)));
        }
        let grown = store.log_appended().saturating_sub(mark) + carried;
        let (rank, members) = rank(&raft, replica.inner.id);
        if known.is_some_and(|(_, size)| due(grown, size, floor, rank, members)) {
            tracing::info!(grown, "the log outgrew the last snapshot (or the floor); building a new one");
            mark = store.log_appended(); // asked once: the next ask waits for as much growth again
            carried = 0;
            if let Err(e) = raft.trigger().snapshot().await {
                tracing::warn!(error = %e, "cannot ask for a snapshot");
            }
        }
        purge(&replica, &raft).await;
    }
}

#[cfg(test)]
mod tests {
    use super::{due, first_kept};

    #[test]
    fn a_snapshot_is_due_once_the_log_outgrew_the_last_one_and_the_floor() {
        let mib = 1 << 20;
        assert!(!due(255 * mib, 0, 256 * mib, 0, 1), "a small state: the floor decides");
        assert!(due(256 * mib, 0, 256 * mib, 0, 1));
        assert!(!due(900 * mib, 1024 * mib, 256 * mib, 0, 1), "a large state: its size decides");
        assert!(due(1024 * mib, 1024 * mib, 256 * mib, 0, 1));
    }

    #[test]
    fn the_newest_log_before_the_snapshot_is_kept_up_to_the_budget() {
        // Entries 0..=100 of 1 MiB each, the snapshot at 100.
        let bytes_from = |i: u64| (101u64.saturating_sub(i)) << 20;
        assert_eq!(first_kept(0, 100, 10 << 20, bytes_from), 91, "the ten newest: 91..=100");
        assert_eq!(first_kept(0, 100, (10 << 20) + 5, bytes_from), 91);
        assert_eq!(first_kept(0, 100, (10 << 20) - 1, bytes_from), 92);
        assert_eq!(first_kept(95, 100, 10 << 20, bytes_from), 95, "what is purged stays purged");
        assert_eq!(first_kept(0, 100, 1 << 30, bytes_from), 0, "all of it fits");
        assert_eq!(first_kept(0, 100, 0, |_| 0), 101, "no budget: everything the snapshot holds goes");
        assert_eq!(first_kept(101, 100, 10 << 20, bytes_from), 101, "installed: nothing left to purge");
    }

    #[test]
    fn members_of_one_log_come_due_one_after_another() {
        let (mib, floor) = (1 << 20, 256 << 20);
        let due_at = |grown: u64| (0..3).filter(|rank| due(grown * mib, 1200 * mib, floor, *rank, 3)).count();
        assert_eq!(due_at(1199), 0);
        assert_eq!(due_at(1200), 1, "the first by node id");
        assert_eq!(due_at(1399), 1);
        assert_eq!(due_at(1400), 2, "a sixth of the mark later, the second");
        assert_eq!(due_at(1600), 3, "at most half as much again, the last");
    }
}
