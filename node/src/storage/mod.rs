//! RocksDB storage: the column-family catalog, the deterministic [`StateMachine`] (the only
//! code that writes user data) and the read queries the service answers from.
//!
//! Column families (see `docs/ARCHITECTURE.md` for key layouts):
//! users, sessions, friends, friend_requests, groups, members, chats, messages, files,
//! idempotency, events, meta (the replicated state), raft_log and raft_meta (the log).
//!
//! All calls here block: async callers go through `spawn_blocking` or the writer thread.

mod hot_rows;
mod keys;
mod log_tail;
mod queries;
pub mod raft;
pub mod read;
pub mod records;
mod snapshot;
mod state_machine;

pub use state_machine::{applied_index_row, ApplyOutput, Notice, StateMachine};

use rocksdb::{ColumnFamilyDescriptor, DBRecoveryMode, Options, DB};
use std::path::{Path, PathBuf};

/// Every column family, in catalog order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cf {
    /// username -> UserRec
    Users,
    /// token hash -> SessionRec
    Sessions,
    /// user \0 friend -> FriendRec
    Friends,
    /// i \0 to \0 from, o \0 from \0 to -> RequestRec
    FriendRequests,
    /// group_id -> GroupRec
    Groups,
    /// user \0 chat_id -> MemberRec
    Members,
    /// chat_id -> ChatRec
    Chats,
    /// chat_id \0 seq -> Message
    Messages,
    /// c \0 hash -> chunk; m \0 file_id -> FileRec; a \0 file_id \0 chat_id -> ()
    Files,
    /// sender \0 chat_id \0 client_msg_id -> Applied
    Idempotency,
    /// user \0 seq -> Event
    Events,
    /// applied -> u64 (the local log's applied index)
    Meta,
    /// Raft log: index (be u64) -> entry
    RaftLog,
    /// Raft state: vote, committed, last purged, state-machine applied id and membership,
    /// current snapshot
    RaftMeta,
}

impl Cf {
    /// Every column family: the replicated state, then the log's own.
    pub fn all() -> impl Iterator<Item = Cf> {
        Self::STATE.into_iter().chain([Cf::RaftLog, Cf::RaftMeta])
    }

    /// The CFs that hold replicated user state (what a snapshot carries).
    pub const STATE: [Cf; 12] = [
        Cf::Users,
        Cf::Sessions,
        Cf::Friends,
        Cf::FriendRequests,
        Cf::Groups,
        Cf::Members,
        Cf::Chats,
        Cf::Messages,
        Cf::Files,
        Cf::Idempotency,
        Cf::Events,
        Cf::Meta,
    ];

    /// RocksDB name.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Users => "users",
            Cf::Sessions => "sessions",
            Cf::Friends => "friends",
            Cf::FriendRequests => "friend_requests",
            Cf::Groups => "groups",
            Cf::Members => "members",
            Cf::Chats => "chats",
            Cf::Messages => "messages",
            Cf::Files => "files",
            Cf::Idempotency => "idempotency",
            Cf::Events => "events",
            Cf::Meta => "meta",
            Cf::RaftLog => "raft_log",
            Cf::RaftMeta => "raft_meta",
        }
    }
}

/// Storage failures. None of these is the user's fault.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Another process holds the database lock.
    #[error("data dir {0} is in use by another chorus-node (RocksDB lock held)")]
    InUse(PathBuf),
    /// RocksDB failed.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A stored value did not decode: corruption or a schema bug.
    #[error("corrupt record in {cf}: {err}")]
    Corrupt {
        /// Column family.
        cf: &'static str,
        /// Decoder message.
        err: String,
    },
}

/// One key-value pair read from RocksDB.
pub(crate) type Row = (Box<[u8]>, Box<[u8]>);

/// The open database.
pub struct Store {
    db: DB,
    /// The rows commands read by key, in memory (kept equal to `db` for the keys it holds).
    hot: hot_rows::HotRows,
    /// Bytes appended to the Raft log since the store was opened (see [`Store::log_appended`]).
    log_appended: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.db.path()).finish()
    }
}

impl Store {
    /// Opens (or creates) the database under `dir`.
    ///
    /// WAL recovery is point-in-time: a torn tail record left by a crash is dropped rather than
    /// refusing to open. Every acknowledged write was fsync'd before its ack, so it precedes any
    /// torn tail and survives.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
        // Flushes and compactions run at nice 19. Every storage peer applies the same writes, so
        // all of them flush a memtable at the same moment; at normal priority those flushes took
        // the CPU from the Raft path for 50 - 200 ms and every send in that window waited.
        let mut env = rocksdb::Env::new()?;
        env.lower_thread_pool_cpu_priority();
        env.lower_high_priority_thread_pool_cpu_priority();
        opts.set_env(&env);
        opts.increase_parallelism(2);
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(4);
        // One memtable budget for all CFs together (the default is 64 MiB per CF). Small, so
        // each flush is short: a flush still slows the write path while it runs, and at 64 MiB
        // the send p999 at 1,000 msg/s was 11 - 24 ms against 9 - 17 ms at 16 MiB.
        opts.set_db_write_buffer_size(16 * 1024 * 1024);
        // One block cache for all CFs (the default is a cache per CF).
        let cache = rocksdb::Cache::new_lru_cache(64 * 1024 * 1024);
        let cfs = Cf::all().map(|cf| {
            let mut table = rocksdb::BlockBasedOptions::default();
            table.set_block_cache(&cache);
            table.set_bloom_filter(10.0, false);
            let mut o = Options::default();
            o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            // Room for two memtables waiting on a (low-priority) flush before writes stall.
            o.set_max_write_buffer_number(4);
            o.set_block_based_table_factory(&table);
            if cf == Cf::Idempotency {
                // Every send with a client id reads a key that is almost never there: a whole-key
                // bloom filter on the memtable answers that without a skiplist search.
                o.set_memtable_prefix_bloom_ratio(0.02);
                o.set_memtable_whole_key_filtering(true);
            }
            ColumnFamilyDescriptor::new(cf.name(), o)
        });
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|e| {
            let text = e.to_string();
            if text.contains("lock") || text.contains("Resource temporarily unavailable") {
                StorageError::InUse(dir.to_path_buf())
            } else {
                StorageError::Rocks(e)
            }
        })?;
        Ok(Self { db, hot: Default::default(), log_appended: Default::default() })
    }

    /// Bytes of entries appended to the Raft log since the store was opened (encoded size).
    pub fn log_appended(&self) -> u64 {
        self.log_appended.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        // Every CF in the catalog is created at open, so this cannot fail after `open`.
        self.db.cf_handle(cf.name()).expect("column family created at open")
    }

    pub(crate) fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.cf(cf), key)?)
    }

    pub(crate) fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        cf: Cf,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        self.get(cf, key)?.map(|v| decode(cf, &v)).transpose()
    }

    /// Rows whose key starts with `prefix`, in key order, from `start` (inclusive, >= prefix).
    pub(crate) fn scan<'a>(
        &'a self,
        cf: Cf,
        prefix: &'a [u8],
        start: &[u8],
    ) -> impl Iterator<Item = Result<Row, StorageError>> + 'a {
        let mode = rocksdb::IteratorMode::From(start, rocksdb::Direction::Forward);
        self.db.iterator_cf(self.cf(cf), mode).map(|r| r.map_err(StorageError::from)).take_while(move |r| match r {
            Ok((k, _)) => k.starts_with(prefix),
            Err(_) => true,
        })
    }

    /// Flushes memtables and the WAL (clean shutdown).
    pub fn flush(&self) -> Result<(), StorageError> {
        self.db.flush_wal(true)?;
        for cf in Cf::all() {
            self.db.flush_cf(self.cf(cf))?;
        }
        Ok(())
    }

    /// SHA-256 over every key and value of the replicated state's CFs, in order: equal
    /// digests mean equal contents. Used by the determinism tests and `chorus-node inspect`.
    pub fn digest(&self) -> Result<String, StorageError> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for cf in Cf::STATE {
            h.update(cf.name().as_bytes());
            for row in self.db.iterator_cf(self.cf(cf), rocksdb::IteratorMode::Start) {
                let (k, v) = row?;
                // The applied index is log bookkeeping (blank and membership entries move it),
                // not chat state.
                if cf == Cf::Meta && &*k == b"applied" {
                    continue;
                }
                h.update((k.len() as u64).to_be_bytes());
                h.update(&k);
                h.update((v.len() as u64).to_be_bytes());
                h.update(&v);
            }
        }
        Ok(hex::encode(h.finalize()))
    }

    /// Rows per column family (by name), the log's own included.
    pub fn row_counts(&self) -> Result<std::collections::BTreeMap<&'static str, u64>, StorageError> {
        let mut out = std::collections::BTreeMap::new();
        for cf in Cf::all() {
            let mut n = 0;
            for row in self.db.iterator_cf(self.cf(cf), rocksdb::IteratorMode::Start) {
                row?;
                n += 1;
            }
            out.insert(cf.name(), n);
        }
        Ok(out)
    }

    /// The keys of the log's own rows (vote, committed, snapshot meta, ...), for `inspect`.
    pub fn raft_meta_keys(&self) -> Result<Vec<String>, StorageError> {
        let rows = self.db.iterator_cf(self.cf(Cf::RaftMeta), rocksdb::IteratorMode::Start);
        rows.map(|row| Ok(String::from_utf8_lossy(&row?.0).into_owned())).collect()
    }

    /// SHA-256 of each chat's messages (keys and records, in seq order), by chat id.
    pub fn chat_digests(&self) -> Result<std::collections::BTreeMap<String, String>, StorageError> {
        use sha2::{Digest, Sha256};
        let mut out = std::collections::BTreeMap::new();
        let mut current: Option<(String, Sha256)> = None;
        for row in self.db.iterator_cf(self.cf(Cf::Messages), rocksdb::IteratorMode::Start) {
            let (k, v) = row?;
            let chat = String::from_utf8_lossy(k.split(|b| *b == 0).next().unwrap_or_default()).into_owned();
            if current.as_ref().is_none_or(|(c, _)| *c != chat) {
                if let Some((c, h)) = current.take() {
                    out.insert(c, hex::encode(h.finalize()));
                }
                current = Some((chat, Sha256::new()));
            }
            if let Some((_, h)) = current.as_mut() {
                h.update(&k);
                h.update(&v);
            }
        }
        if let Some((c, h)) = current {
            out.insert(c, hex::encode(h.finalize()));
        }
        Ok(out)
    }
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(cf: Cf, bytes: &[u8]) -> Result<T, StorageError> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::Corrupt { cf: cf.name(), err: e.to_string() })
}

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Our records are plain structs of strings and integers: serialization cannot fail.
    serde_json::to_vec(value).expect("records serialize")
}

#[cfg(test)]
mod tests;
