//! The Raft log (`raft_log`, and vote / committed / purged in `raft_meta`) as openraft's
//! `RaftLogStorage`: appends written at once and reported durable after a WAL sync.

use super::*;
use crate::storage::log_tail::Tail;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageIOError, Vote};
use prometheus_client::metrics::histogram::Histogram;
use std::ops::{Bound, RangeBounds};

/// The Raft log on RocksDB.
#[derive(Debug, Clone)]
pub struct LogStore {
    store: Arc<Store>,
    syncer: Arc<Syncer>,
    /// The newest entries, so replication and apply read them without a blocking task.
    tail: Arc<Tail>,
    /// The index of the last entry appended (see [`LogStore::end`]).
    end: Arc<std::sync::atomic::AtomicU64>,
}

impl LogStore {
    /// The log in `store`; starts its WAL syncer thread (joined when the last clone drops),
    /// which records how long each sync takes in `wal_sync`.
    pub fn new(store: Arc<Store>, wal_sync: Histogram) -> Self {
        let (queue, rx) = std::sync::mpsc::channel();
        let db = store.clone();
        let thread = std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || sync_wal(&db, rx, &wal_sync))
            .expect("spawn the WAL syncer");
        let syncer = Arc::new(Syncer { queue, thread: Some(thread) });
        Self { store, syncer, tail: Arc::default(), end: Arc::default() }
    }

    /// The index of the last entry appended, kept up to date (0 until the first append).
    pub fn end(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.end.clone()
    }
}

/// Appends written but not yet synced, and the thread that syncs them.
#[derive(Debug)]
struct Syncer {
    queue: std::sync::mpsc::Sender<LogFlushed<TypeConfig>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Syncer {
    /// Closes the queue and waits for the thread: it has reported every queued append and
    /// released its handle on the database before this returns. A detached thread could be
    /// the one closing RocksDB while the process exits, and RocksDB aborts on that race.
    fn drop(&mut self) {
        drop(std::mem::replace(&mut self.queue, std::sync::mpsc::channel().0));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Syncs the WAL once for every append queued since the last sync, then reports them durable
/// in order. Each append was written before it was queued, so the sync covers it.
fn sync_wal(store: &Store, rx: std::sync::mpsc::Receiver<LogFlushed<TypeConfig>>, timing: &Histogram) {
    while let Ok(first) = rx.recv() {
        let mut done = vec![first];
        done.extend(rx.try_iter());
        let started = std::time::Instant::now();
        let synced = store.db.flush_wal(true);
        timing.observe(started.elapsed().as_secs_f64());
        match synced {
            Ok(()) => done.into_iter().for_each(|cb| cb.log_io_completed(Ok(()))),
            Err(e) => {
                tracing::error!(error = %e, "WAL sync failed; the appends are not durable");
                for cb in done {
                    cb.log_io_completed(Err(std::io::Error::other(e.to_string())));
                }
            }
        }
    }
}

fn start_index(range: &impl RangeBounds<u64>) -> u64 {
    match range.start_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SError> {
        let start = start_index(&range);
        let end: Bound<u64> = range.end_bound().cloned();
        if let Some(entries) = self.tail.get(start, end) {
            return Ok(entries);
        }
        blocking(&self.store, move |s| {
            let r = (Bound::Included(start), end);
            let from = start.to_be_bytes();
            let mode = rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward);
            let mut out = Vec::new();
            for row in s.db.iterator_cf(s.cf(Cf::RaftLog), mode) {
                let (k, v) = row.map_err(io_err)?;
                let idx = u64::from_be_bytes(k.as_ref().try_into().map_err(io_err)?);
                if !r.contains(&idx) {
                    break;
                }
                out.push(decode_entry(&v)?);
            }
            Ok(out)
        })
        .await
        .map_err(|e| StorageIOError::read_logs(e).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SError> {
        blocking(&self.store, |s| {
            let purged: Option<LogId<NodeId>> = get_meta(s, PURGED)?;
            let last =
                s.db.iterator_cf(s.cf(Cf::RaftLog), rocksdb::IteratorMode::End).next().transpose().map_err(io_err)?;
            let last = match last {
                Some((_, v)) => Some(decode_entry(&v)?.log_id),
                None => purged,
            };
            Ok(LogState { last_purged_log_id: purged, last_log_id: last })
        })
        .await
        .map_err(|e| StorageIOError::read_logs(e).into())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SError> {
        let v = json(vote);
        blocking(&self.store, move |s| {
            let mut wb = rocksdb::WriteBatch::default();
            wb.put_cf(s.cf(Cf::RaftMeta), VOTE, v);
            write(s, wb, true)
        })
        .await
        .map_err(|e| StorageIOError::write_vote(e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SError> {
        blocking(&self.store, |s| get_meta(s, VOTE)).await.map_err(|e| StorageIOError::read_vote(e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SError> {
        // A small unsynced write goes to the memtable in microseconds: no thread hop.
        let mut wb = rocksdb::WriteBatch::default();
        wb.put_cf(self.store.cf(Cf::RaftMeta), COMMITTED, json(&committed));
        write(&self.store, wb, false).map_err(|e| StorageIOError::write(e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SError> {
        blocking(&self.store, |s| Ok(get_meta::<Option<LogId<NodeId>>>(s, COMMITTED)?.flatten()))
            .await
            .map_err(|e| StorageIOError::read(e).into())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Written unsynced (a memtable insert: readable at once, no thread hop); durable, and
        // reported so, once the syncer synced the WAL behind it.
        let mut wb = rocksdb::WriteBatch::default();
        let mut written: Vec<(Entry<TypeConfig>, usize)> = Vec::new();
        for e in entries {
            let encoded = match encode_entry(&e) {
                Ok(encoded) => encoded,
                Err(err) => {
                    callback.log_io_completed(Err(std::io::Error::other(err.to_string())));
                    return Err(StorageIOError::write_logs(err).into());
                }
            };
            wb.put_cf(self.store.cf(Cf::RaftLog), e.log_id.index.to_be_bytes(), &encoded);
            written.push((e, encoded.len()));
        }
        if let Err(e) = write(&self.store, wb, false) {
            callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
            return Err(StorageIOError::write_logs(e).into());
        }
        if let Some((last, _)) = written.last() {
            self.end.store(last.log_id.index, std::sync::atomic::Ordering::Relaxed);
        }
        let bytes: usize = written.iter().map(|(_, size)| size).sum();
        self.store.log_appended.fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
        self.tail.append(written);
        if let Err(std::sync::mpsc::SendError(callback)) = self.syncer.queue.send(callback) {
            callback.log_io_completed(Err(std::io::Error::other("the WAL syncer stopped")));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SError> {
        self.tail.truncate(log_id.index);
        self.end.store(log_id.index.saturating_sub(1), std::sync::atomic::Ordering::Relaxed);
        blocking(&self.store, move |s| {
            let mut wb = rocksdb::WriteBatch::default();
            wb.delete_range_cf(s.cf(Cf::RaftLog), log_id.index.to_be_bytes(), u64::MAX.to_be_bytes());
            wb.delete_cf(s.cf(Cf::RaftLog), u64::MAX.to_be_bytes());
            write(s, wb, true)
        })
        .await
        .map_err(|e| StorageIOError::write_logs(e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SError> {
        let v = json(&log_id);
        self.tail.purge(log_id.index);
        blocking(&self.store, move |s| {
            let mut wb = rocksdb::WriteBatch::default();
            wb.put_cf(s.cf(Cf::RaftMeta), PURGED, v);
            wb.delete_range_cf(s.cf(Cf::RaftLog), 0u64.to_be_bytes(), (log_id.index + 1).to_be_bytes());
            write(s, wb, true)
        })
        .await
        .map_err(|e| StorageIOError::write_logs(e).into())
    }
}
