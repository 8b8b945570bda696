//! The chat state as openraft's `RaftStateMachine`, and its snapshots (files: see
//! [`crate::storage::snapshot`]).

use super::*;
use crate::storage::snapshot;
use crate::storage::state_machine::{applied_index_row, StateMachine};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageIOError, StoredMembership,
};

/// The replicated chat state as a Raft state machine.
#[derive(Clone)]
pub struct StateStore {
    pub(super) store: Arc<Store>,
    on_apply: Option<OnApply>,
    installed: Arc<std::sync::atomic::AtomicU64>,
    /// Where a follower applies (see [`Background`]); without it, on the blocking pool.
    background: Option<Arc<Background>>,
}

impl Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore").finish_non_exhaustive()
    }
}

impl StateStore {
    /// The state machine over `store`; `on_apply` sees every applied batch's output.
    pub fn new(store: Arc<Store>, on_apply: Option<OnApply>) -> Self {
        Self { store, on_apply, installed: Default::default(), background: None }
    }

    /// Applies as a follower on `background`'s low-priority thread when it says so.
    pub fn applying_in(self, background: Background) -> Self {
        Self { background: Some(Arc::new(background)), ..self }
    }

    /// Counts the snapshots installed from a leader in `counter` (shared with clones).
    pub fn counting_installs(self, counter: Arc<std::sync::atomic::AtomicU64>) -> Self {
        Self { installed: counter, ..self }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SError> {
        let (meta, path) = blocking(&self.store, |s| {
            let snap = s.db.snapshot();
            let read = |k: &[u8]| snap.get_cf(s.cf(Cf::RaftMeta), k).map_err(io_err);
            let applied: Option<LogId<NodeId>> = read(SM_APPLIED)?.map(|b| unjson(&b)).transpose()?;
            let last_membership = read(SM_MEMBERSHIP)?.map(|b| unjson(&b)).transpose()?.unwrap_or_default();
            let (tmp, size) = snapshot::write_rows(s, &snap)?;
            let snapshot_id = match applied {
                Some(l) => format!("{}-{}-{size}", l.leader_id.term, l.index),
                None => format!("empty-{size}"),
            };
            let path = snapshot::place(s, &tmp, &snapshot_id)?;
            let meta = SnapshotMeta { last_log_id: applied, last_membership, snapshot_id };
            let mut wb = rocksdb::WriteBatch::default();
            wb.put_cf(s.cf(Cf::RaftMeta), SNAP_META, json(&meta));
            wb.delete_cf(s.cf(Cf::RaftMeta), LEGACY_SNAP_DATA);
            write(s, wb, true)?;
            snapshot::prune(s, &meta.snapshot_id)?;
            Ok((meta, path))
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, e))?;
        let file = tokio::fs::File::open(path).await.map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(Snapshot { meta, snapshot: Box::new(file) })
    }
}

impl RaftStateMachine<TypeConfig> for StateStore {
    type SnapshotBuilder = StateStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, RaftNode>), SError> {
        blocking(&self.store, |s| {
            let applied = get_meta(s, SM_APPLIED)?;
            let membership = get_meta(s, SM_MEMBERSHIP)?.unwrap_or_default();
            Ok((applied, membership))
        })
        .await
        .map_err(|e| StorageIOError::read_state_machine(e).into())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchResult>, SError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let background = match (&self.background, entries.first()) {
            (Some(b), Some(e)) if b.wanted(e.log_id.index) => Some(b.clone()),
            _ => None,
        };
        let on_apply = self.on_apply.clone();
        let apply = move |s: &Store| {
            let mut out = Vec::with_capacity(entries.len());
            for entry in entries {
                let mut extra = vec![
                    (Cf::RaftMeta, SM_APPLIED.to_vec(), json(&Some(entry.log_id))),
                    applied_index_row(entry.log_id.index),
                ];
                let commands = match entry.payload {
                    EntryPayload::Blank => Vec::new(),
                    EntryPayload::Normal(batch) => batch.0,
                    EntryPayload::Membership(m) => {
                        let stored = StoredMembership::new(Some(entry.log_id), m);
                        extra.push((Cf::RaftMeta, SM_MEMBERSHIP.to_vec(), json(&stored)));
                        Vec::new()
                    }
                };
                let applied =
                    StateMachine::new(s).apply_batch(&commands, extra, false).map_err(|e: DbError| io_err(e))?;
                if let Some(f) = &on_apply {
                    f(&applied);
                }
                out.push(BatchResult(applied.results));
            }
            Ok(out)
        };
        match background {
            Some(b) => b.run(&self.store, apply).await,
            None => blocking(&self.store, apply).await,
        }
        .map_err(|e| StorageIOError::write_state_machine(e).into())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, SError> {
        let file = blocking(&self.store, snapshot::receiving_file)
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, e))?;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, RaftNode>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), SError> {
        use tokio::io::{AsyncSeekExt, AsyncWriteExt};
        let meta = meta.clone();
        let sig = meta.signature();
        let err = |e| StorageError::from(StorageIOError::write_snapshot(Some(sig.clone()), e));
        let mut received = *snapshot;
        received.flush().await.map_err(|e| err(io_err(e)))?;
        received.seek(std::io::SeekFrom::Start(0)).await.map_err(|e| err(io_err(e)))?;
        let received = received.into_std().await;
        self.installed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        blocking(&self.store, move |s| {
            let tmp = snapshot::copy_in(s, received)?;
            snapshot::check(&tmp)?;
            let mut marker = rocksdb::WriteBatch::default();
            marker.put_cf(s.cf(Cf::RaftMeta), INSTALLING, json(&meta));
            write(s, marker, true)?;
            let mut last = rocksdb::WriteBatch::default();
            last.put_cf(s.cf(Cf::RaftMeta), SM_APPLIED, json(&meta.last_log_id));
            last.put_cf(s.cf(Cf::RaftMeta), SM_MEMBERSHIP, json(&meta.last_membership));
            last.put_cf(s.cf(Cf::RaftMeta), SNAP_META, json(&meta));
            last.delete_cf(s.cf(Cf::RaftMeta), LEGACY_SNAP_DATA);
            last.delete_cf(s.cf(Cf::RaftMeta), INSTALLING);
            let placed = snapshot::place(s, &tmp, &meta.snapshot_id)?;
            snapshot::load_rows(s, &placed, last)?;
            snapshot::prune(s, &meta.snapshot_id)
        })
        .await
        .map_err(err)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SError> {
        let found = blocking(&self.store, |s| {
            let mut last_id = None;
            loop {
                let Some(meta) = get_meta::<SnapshotMeta<NodeId, RaftNode>>(s, SNAP_META)? else { return Ok(None) };
                match std::fs::File::open(snapshot::path(s, &meta.snapshot_id)) {
                    Ok(file) => return Ok(Some((file, meta))),
                    // A newer snapshot replaced it between the two reads (a build prunes older
                    // files only after recording its meta): read the meta again.
                    Err(e)
                        if e.kind() == std::io::ErrorKind::NotFound && last_id.as_ref() != Some(&meta.snapshot_id) =>
                    {
                        last_id = Some(meta.snapshot_id);
                    }
                    // Recorded by an older version, or lost: openraft builds a new one when it
                    // needs one.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(io_err(e)),
                }
            }
        })
        .await
        .map_err(|e| StorageIOError::read_snapshot(None, e))?;
        Ok(found.map(|(file, meta)| Snapshot { meta, snapshot: Box::new(tokio::fs::File::from_std(file)) }))
    }
}
