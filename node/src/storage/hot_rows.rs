//! An in-memory copy of the rows the state machine reads for nearly every command.
//!
//! A DM makes every replica read the chat record, the friendship and both members' newest
//! event seqs. Those rows are rewritten all the time, so they sit in the memtable, and each read
//! was a skiplist search over every version written since the last flush: a sixth of a storage
//! follower's CPU. This cache answers them from a hash map instead.
//!
//! It is always equal to the database for the keys it holds (a cached `None` is a row known
//! to be absent):
//! - The state machine is the only writer of user data while Raft runs. It reads through the
//!   cache and, once its WriteBatch is written, puts the same rows in it ([`HotRows::wrote`]).
//!   Apply is serialized, so no read can race a write.
//! - Each user's newest event seq (the last key of their event log, which otherwise takes a
//!   reverse seek to find) is kept the same way ([`HotRows::event_seqs`]).
//! - The other writers of the state CFs (snapshot install, `forget`) replace everything and
//!   [`HotRows::clear`] the cache.

use super::Cf;
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::{Mutex, MutexGuard};

/// Most bytes of keys and values held (plus a fixed charge per row for the map itself).
const BUDGET_BYTES: usize = 16 * 1024 * 1024;
const ROW_OVERHEAD: usize = 64;
/// Most users whose newest event seq is held.
const SEQ_USERS: NonZeroUsize = NonZeroUsize::new(100_000).unwrap();

/// A row's column family and key.
pub(crate) type Key = (Cf, Vec<u8>);

/// See the module docs. One per [`super::Store`].
#[derive(Debug)]
pub(crate) struct HotRows(Mutex<Rows>);

#[derive(Debug)]
struct Rows {
    lru: LruCache<Key, Option<Vec<u8>>>,
    bytes: usize,
    event_seqs: LruCache<String, u64>,
}

fn charge(key: &Key, value: &Option<Vec<u8>>) -> usize {
    key.1.len() + value.as_ref().map_or(0, Vec::len) + ROW_OVERHEAD
}

impl Rows {
    fn insert(&mut self, key: Key, value: Option<Vec<u8>>) {
        self.bytes += charge(&key, &value);
        if let Some((old_key, old)) = self.lru.push(key, value) {
            self.bytes -= charge(&old_key, &old);
        }
        while self.bytes > BUDGET_BYTES {
            let Some((key, value)) = self.lru.pop_lru() else { break };
            self.bytes -= charge(&key, &value);
        }
    }
}

impl Default for HotRows {
    fn default() -> Self {
        Self(Mutex::new(Rows { lru: LruCache::unbounded(), bytes: 0, event_seqs: LruCache::new(SEQ_USERS) }))
    }
}

impl HotRows {
    /// The CFs whose rows commands read by key: accounts, friendships, groups and chats.
    /// (Idempotency keys are read once, files and requests rarely, `meta` never.)
    pub(crate) fn holds(cf: Cf) -> bool {
        matches!(cf, Cf::Users | Cf::Friends | Cf::Groups | Cf::Chats)
    }

    fn rows(&self) -> MutexGuard<'_, Rows> {
        // The map is left consistent at every step, so a panic elsewhere cannot poison it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The row if cached: `Some(None)` means known absent, `None` not cached.
    pub(crate) fn get(&self, key: &Key) -> Option<Option<Vec<u8>>> {
        if !Self::holds(key.0) {
            return None;
        }
        self.rows().lru.get(key).cloned()
    }

    /// Remembers a row just read from the database.
    pub(crate) fn put(&self, key: Key, value: Option<Vec<u8>>) {
        if Self::holds(key.0) {
            self.rows().insert(key, value);
        }
    }

    /// Records rows just written to the database (`None`: deleted).
    pub(crate) fn wrote<'a>(&self, written: impl IntoIterator<Item = (&'a Key, &'a Option<Vec<u8>>)>) {
        let mut rows = self.rows();
        for (key, value) in written {
            if Self::holds(key.0) {
                rows.insert(key.clone(), value.clone());
            }
        }
    }

    /// `user`'s newest event seq, from the cache or else from `load` (which reads the
    /// database).
    pub(crate) fn last_event_seq<E>(&self, user: &str, load: impl FnOnce() -> Result<u64, E>) -> Result<u64, E> {
        if let Some(seq) = self.rows().event_seqs.get(user) {
            return Ok(*seq);
        }
        let seq = load()?;
        self.rows().event_seqs.put(user.to_owned(), seq);
        Ok(seq)
    }

    /// Records users' newest event seqs just written to the database.
    pub(crate) fn event_seqs<'a>(&self, seqs: impl IntoIterator<Item = (&'a str, u64)>) {
        let mut rows = self.rows();
        for (user, seq) in seqs {
            rows.event_seqs.put(user.to_owned(), seq);
        }
    }

    /// Forgets everything (the state CFs were rewritten behind the state machine's back).
    pub(crate) fn clear(&self) {
        let mut rows = self.rows();
        rows.lru.clear();
        rows.bytes = 0;
        rows.event_seqs.clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.rows().lru.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cf: Cf, key: &str) -> Key {
        (cf, key.as_bytes().to_vec())
    }

    #[test]
    fn stays_within_budget_evicting_the_least_recently_used() {
        let hot = HotRows::default();
        let mib = || Some(vec![7u8; 1024 * 1024]);
        hot.put(row(Cf::Chats, "kept"), mib());
        for i in 0..40 {
            hot.put(row(Cf::Chats, &format!("row{i}")), mib());
            assert!(hot.get(&row(Cf::Chats, "kept")).is_some(), "a row read between inserts stays");
        }
        assert!(hot.rows().bytes <= BUDGET_BYTES);
        assert_eq!(hot.get(&row(Cf::Chats, "row0")), None, "the oldest unread row went first");
        assert_eq!(hot.get(&row(Cf::Chats, "row39")), Some(mib()));
        assert!(hot.len() < 41);

        hot.put(row(Cf::Idempotency, "once"), Some(vec![1]));
        assert_eq!(hot.get(&row(Cf::Idempotency, "once")), None, "only the CFs read by key are held");
        hot.put(row(Cf::Users, "absent"), None);
        assert_eq!(hot.get(&row(Cf::Users, "absent")), Some(None), "a known absence is cached too");
        hot.event_seqs([("alice", 7)]);
        assert_eq!(hot.last_event_seq("alice", || Err("read")), Ok(7));
        assert_eq!(hot.last_event_seq("bob", || Ok::<_, ()>(3)), Ok(3), "loaded once");
        assert_eq!(hot.last_event_seq("bob", || Err(())), Ok(3), "then cached");
        hot.clear();
        assert_eq!((hot.len(), hot.rows().bytes), (0, 0));
        assert_eq!(hot.last_event_seq("alice", || Ok::<_, ()>(0)), Ok(0), "seqs are cleared too");
    }
}
