//! The newest Raft log entries, kept in memory. Replication to each follower and the state
//! machine read an entry right after it was appended; serving those reads from here saves a
//! blocking task and a JSON decode per read.
//!
//! The tail is always a suffix of the log on disk: appends extend it (after they are written),
//! truncates and purges cut it (before they are written), so whatever it holds is in the log,
//! and its last entry is the log's last entry.

use super::raft::TypeConfig;
use openraft::Entry;
use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

/// Most entries kept.
const MAX_ENTRIES: usize = 256;
/// Most encoded bytes kept (an entry carries up to 4 MiB of file data).
const MAX_BYTES: usize = 32 * 1024 * 1024;

/// Shared by every clone of the log store.
#[derive(Debug, Default)]
pub(super) struct Tail(Mutex<Entries>);

#[derive(Debug, Default)]
struct Entries {
    /// Consecutive indexes, with each entry's encoded size.
    entries: VecDeque<(Entry<TypeConfig>, usize)>,
    bytes: usize,
}

impl Entries {
    fn first(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn last(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index)
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
        }
    }

    fn pop_back(&mut self) {
        if let Some((_, size)) = self.entries.pop_back() {
            self.bytes -= size;
        }
    }
}

impl Tail {
    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Entries just written to the log (in index order), each with its encoded size.
    pub(super) fn append(&self, written: Vec<(Entry<TypeConfig>, usize)>) {
        let mut t = self.lock();
        for (entry, size) in written {
            let index = entry.log_id.index;
            // An entry replaces whatever the log held at its index and after.
            while t.last().is_some_and(|last| last >= index) {
                t.pop_back();
            }
            // One that does not follow on starts the tail afresh (it is still the log's end).
            if t.last().is_some_and(|last| last + 1 != index) {
                *t = Entries::default();
            }
            t.bytes += size;
            t.entries.push_back((entry, size));
            while t.entries.len() > MAX_ENTRIES || t.bytes > MAX_BYTES {
                t.pop_front();
            }
        }
    }

    /// Forgets entries from `index` on (call before deleting them from the log).
    pub(super) fn truncate(&self, index: u64) {
        let mut t = self.lock();
        while t.last().is_some_and(|last| last >= index) {
            t.pop_back();
        }
    }

    /// Forgets entries up to and including `index` (call before deleting them from the log).
    pub(super) fn purge(&self, index: u64) {
        let mut t = self.lock();
        while t.first().is_some_and(|first| first <= index) {
            t.pop_front();
        }
    }

    /// The log's entries from `start` to `end`, if the tail holds every one of them; `None`
    /// means: read the log.
    pub(super) fn get(&self, start: u64, end: Bound<u64>) -> Option<Vec<Entry<TypeConfig>>> {
        let t = self.lock();
        let (first, last) = (t.first()?, t.last()?);
        let end = match end {
            Bound::Included(e) => e,
            Bound::Excluded(e) => e.checked_sub(1)?,
            Bound::Unbounded => last,
        }
        .min(last);
        if start < first {
            return None;
        }
        if start > end {
            return Some(Vec::new());
        }
        let range = (start - first) as usize..=(end - first) as usize;
        Some(t.entries.range(range).map(|(e, _)| e.clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    fn entry(index: u64, term: u64) -> (Entry<TypeConfig>, usize) {
        let log_id = LogId::new(CommittedLeaderId::new(term, 1), index);
        (Entry { log_id, payload: EntryPayload::Blank }, 10)
    }

    fn ids(entries: Option<Vec<Entry<TypeConfig>>>) -> Option<Vec<(u64, u64)>> {
        entries.map(|v| v.iter().map(|e| (e.log_id.index, e.log_id.leader_id.term)).collect())
    }

    #[test]
    fn serves_only_what_it_holds_and_follows_truncate_and_purge() {
        let tail = Tail::default();
        assert_eq!(ids(tail.get(1, Bound::Unbounded)), None, "empty: read the log");
        tail.append((5..=9).map(|i| entry(i, 1)).collect());
        assert_eq!(ids(tail.get(6, Bound::Excluded(8))), Some(vec![(6, 1), (7, 1)]));
        assert_eq!(ids(tail.get(8, Bound::Unbounded)), Some(vec![(8, 1), (9, 1)]));
        assert_eq!(ids(tail.get(9, Bound::Included(20))), Some(vec![(9, 1)]), "nothing exists past the end");
        assert_eq!(ids(tail.get(10, Bound::Unbounded)), Some(vec![]));
        assert_eq!(ids(tail.get(4, Bound::Included(6))), None, "entry 4 is only on disk");

        // A conflicting append replaces the entries from its index on.
        tail.append(vec![entry(8, 2)]);
        assert_eq!(ids(tail.get(7, Bound::Unbounded)), Some(vec![(7, 1), (8, 2)]));
        tail.truncate(8);
        assert_eq!(ids(tail.get(7, Bound::Unbounded)), Some(vec![(7, 1)]));
        tail.purge(6);
        assert_eq!(ids(tail.get(6, Bound::Unbounded)), None);
        assert_eq!(ids(tail.get(7, Bound::Unbounded)), Some(vec![(7, 1)]));

        // An entry that does not follow on restarts the tail from itself.
        tail.append(vec![entry(20, 3)]);
        assert_eq!(ids(tail.get(7, Bound::Unbounded)), None);
        assert_eq!(ids(tail.get(20, Bound::Unbounded)), Some(vec![(20, 3)]));
    }

    #[test]
    fn keeps_at_most_its_budget() {
        let tail = Tail::default();
        tail.append((1..=1000).map(|i| entry(i, 1)).collect());
        let first_kept = 1000 - MAX_ENTRIES as u64 + 1;
        assert_eq!(ids(tail.get(first_kept - 1, Bound::Unbounded)), None);
        assert_eq!(tail.get(first_kept, Bound::Unbounded).map(|v| v.len()), Some(MAX_ENTRIES));

        let (big, _) = entry(1001, 1);
        tail.append(vec![(big, MAX_BYTES)]);
        assert_eq!(ids(tail.get(1000, Bound::Unbounded)), None, "one entry of the whole budget pushes out the rest");
        assert_eq!(ids(tail.get(1001, Bound::Unbounded)), Some(vec![(1001, 1)]));
    }
}
