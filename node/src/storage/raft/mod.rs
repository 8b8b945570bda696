//! openraft storage (v2 traits) on RocksDB: the log in `raft_log` / `raft_meta`, the state
//! machine on the chat state CFs through [`StateMachine`].
//!
//! Durability: a log append is written to RocksDB at once (readable, as openraft requires) and
//! reported done (`LogFlushed`) only after the WAL behind it was synced. One syncer thread
//! syncs for every append that queued up meanwhile (group commit at the log level), so Raft's
//! core never waits on an fsync. The vote is written synced. State-machine writes need no sync: the
//! applied log id and membership go in the SAME WriteBatch as the applied data, so after a
//! crash the machine is at some applied id and openraft re-applies the rest from the log.
//! A follower applies at low CPU priority while it keeps up (see [`Background`]).
//!
//! Snapshots are files: see [`super::snapshot`].

mod background;
mod log;
mod state;

pub use background::Background;
pub use log::LogStore;
pub use state::StateStore;

use super::snapshot;
use super::state_machine::ApplyOutput;
use super::{Cf, StorageError as DbError, Store};
use chorus_protocol::{Applied, Command, CommandError};
use openraft::{AnyError, Entry, StorageError};
use serde::{Deserialize, Serialize};
use std::fmt::Debug;
use std::sync::Arc;

/// A group-commit batch: the commands that share one log entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch(pub Vec<Command>);

/// One result per command of a [`Batch`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResult(pub Vec<Result<Applied, CommandError>>);

/// A storage peer as Raft knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftNode {
    /// libp2p PeerId (base58).
    pub peer_id: String,
    /// libp2p addresses.
    pub addrs: Vec<String>,
}

openraft::declare_raft_types!(
    /// Chorus's Raft types: u64 node ids derived from PeerIds, batches of commands as entries.
    pub TypeConfig:
        D = Batch,
        R = BatchResult,
        NodeId = u64,
        Node = RaftNode,
        Entry = Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
);

type NodeId = u64;
type SError = StorageError<NodeId>;

/// Called with each applied batch's output (event notices, message counts).
pub type OnApply = Arc<dyn Fn(&ApplyOutput) + Send + Sync>;

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"last_purged";
const SM_APPLIED: &[u8] = b"sm_applied";
const SM_MEMBERSHIP: &[u8] = b"sm_membership";
const SNAP_META: &[u8] = b"snapshot_meta";
/// Where snapshots were kept before they were files; deleted when a snapshot is stored.
const LEGACY_SNAP_DATA: &[u8] = b"snapshot_data";
/// Set while an install replaces the state CFs (see [`super::snapshot`]).
const INSTALLING: &[u8] = b"installing_snapshot";
/// Set once this node knows the cluster has a replicated log; never cleared (see
/// [`crate::election::driver::ClusterState::log_seen`]).
const LOG_SEEN: &[u8] = b"log_seen";

fn io_err(e: impl std::fmt::Display) -> AnyError {
    AnyError::error(e.to_string())
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn unjson<T: for<'a> Deserialize<'a>>(b: &[u8]) -> Result<T, AnyError> {
    serde_json::from_slice(b).map_err(io_err)
}

/// A log entry as stored: CBOR, so a file chunk stays raw bytes (JSON wrote each byte as a
/// number, ~3.6 times the size, and a follower's append of 4 MiB of file data outlasted
/// openraft's 150 ms deadline).
fn encode_entry(e: &Entry<TypeConfig>) -> Result<Vec<u8>, AnyError> {
    cbor4ii::serde::to_vec(Vec::new(), e).map_err(io_err)
}

/// Reads [`encode_entry`]'s bytes, or the JSON that nodes wrote before 2026-12-01: a JSON
/// entry starts with `{`, which a CBOR entry (a map, `0xa2`) never does.
fn decode_entry(b: &[u8]) -> Result<Entry<TypeConfig>, AnyError> {
    match b.first() {
        Some(b'{') => unjson(b),
        _ => cbor4ii::serde::from_slice(b).map_err(io_err),
    }
}

/// Runs blocking RocksDB work off the async workers.
async fn blocking<T, F>(store: &Arc<Store>, f: F) -> Result<T, AnyError>
where
    T: Send + 'static,
    F: FnOnce(&Store) -> Result<T, AnyError> + Send + 'static,
{
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store)).await.map_err(io_err)?
}

fn write(store: &Store, wb: rocksdb::WriteBatch, sync: bool) -> Result<(), AnyError> {
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(sync);
    store.db.write_opt(wb, &wo).map_err(io_err)
}

fn get_meta<T: for<'a> Deserialize<'a>>(store: &Store, key: &[u8]) -> Result<Option<T>, AnyError> {
    store.get(Cf::RaftMeta, key).map_err(io_err)?.map(|b| unjson(&b)).transpose()
}

/// Deletes (in `wb`) every row of `cfs` whose key `doomed` picks.
fn delete_rows(
    s: &Store,
    wb: &mut rocksdb::WriteBatch,
    cfs: impl IntoIterator<Item = Cf>,
    doomed: impl Fn(&[u8]) -> bool,
) -> Result<(), AnyError> {
    for cf in cfs {
        for row in s.db.iterator_cf(s.cf(cf), rocksdb::IteratorMode::Start) {
            let (k, _) = row.map_err(io_err)?;
            if doomed(&k) {
                wb.delete_cf(s.cf(cf), k);
            }
        }
    }
    Ok(())
}

/// Whether this node ever knew the cluster to have a replicated log.
pub async fn log_seen(store: &Arc<Store>) -> Result<bool, AnyError> {
    blocking(store, |s| Ok(s.get(Cf::RaftMeta, LOG_SEEN).map_err(io_err)?.is_some())).await
}

/// Records, durably, that the cluster has a replicated log.
pub async fn remember_log_seen(store: &Arc<Store>) -> Result<(), AnyError> {
    blocking(store, |s| {
        let mut wb = rocksdb::WriteBatch::default();
        wb.put_cf(s.cf(Cf::RaftMeta), LOG_SEEN, b"1");
        write(s, wb, true)
    })
    .await
}

/// The size of this node's current snapshot file (`None`: it has none).
pub fn snapshot_size(store: &Store) -> Result<Option<u64>, AnyError> {
    let Some(meta) = get_meta::<openraft::SnapshotMeta<NodeId, RaftNode>>(store, SNAP_META)? else { return Ok(None) };
    match std::fs::metadata(snapshot::path(store, &meta.snapshot_id)) {
        Ok(m) => Ok(Some(m.len())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(e)),
    }
}

/// About how many bytes of log since its snapshot this node holds on disk (see
/// [`log_bytes`]; right after an open that is all of it, recovery flushing the WAL). The
/// entries before the snapshot that are kept for peers behind it do not count.
pub fn log_size_on_disk(store: &Store) -> Result<u64, AnyError> {
    let purged: Option<openraft::LogId<NodeId>> = get_meta(store, PURGED)?;
    let snap: Option<openraft::SnapshotMeta<NodeId, RaftNode>> = get_meta(store, SNAP_META)?;
    let covered = purged.map(|l| l.index).max(snap.and_then(|m| m.last_log_id).map(|l| l.index));
    Ok(log_bytes(store, covered.map_or(0, |i| i + 1), u64::MAX))
}

/// RocksDB's estimate of the bytes of the log entries `from..to` (indexes, `to` excluded):
/// the size of the files that hold them, compressed, and nothing of what is still only in a
/// memtable (at most the 16 MiB write buffer, the newest entries).
pub fn log_bytes(store: &Store, from: u64, to: u64) -> u64 {
    // Log keys are 8-byte indexes: as an end, `u64::MAX` takes every key.
    let end = if to == u64::MAX { vec![0xff; 9] } else { to.to_be_bytes().to_vec() };
    let start = from.to_be_bytes();
    let sizes = store.db.get_approximate_sizes_cf(store.cf(Cf::RaftLog), &[rocksdb::Range::new(&start, &end)]);
    sizes.first().copied().unwrap_or(0)
}

/// Forgets this node's copy of the replicated log: the log, the state machine, the snapshot
/// and the commit point, in one synced write. Only the vote (a node never votes twice in a
/// term) and the mark that the cluster has a log stay. For a node the committed membership no
/// longer holds: it keeps no user data, and Raft started on the store afterwards is a blank
/// node that can be added again.
pub fn forget(store: &Store) -> Result<(), AnyError> {
    let mut wb = rocksdb::WriteBatch::default();
    delete_rows(store, &mut wb, Cf::STATE.into_iter().chain([Cf::RaftLog]), |_| true)?;
    delete_rows(store, &mut wb, [Cf::RaftMeta], |k| k != VOTE && k != LOG_SEEN)?;
    let written = write(store, wb, true);
    store.hot.clear();
    written?;
    snapshot::remove_all(store)
}

/// Run before Raft starts on `store`: deletes snapshot files a crash left half written, and if
/// a snapshot install was interrupted (a mix of old and new state), forgets this node's copy
/// so that it is sent a snapshot again. Returns whether it had to forget.
pub fn recover_interrupted_install(store: &Store) -> Result<bool, AnyError> {
    snapshot::remove_temp_files(store)?;
    if store.get(Cf::RaftMeta, INSTALLING).map_err(io_err)?.is_none() {
        return Ok(false);
    }
    tracing::warn!("a snapshot install was interrupted; dropping the partial copy");
    forget(store)?;
    Ok(true)
}

#[cfg(test)]
mod tests;
