//! The Raft storage against openraft's suite, snapshots, and forgetting.

use super::*;
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{EntryPayload, LogId, StorageIOError, StoredMembership, Vote};
use prometheus_client::metrics::histogram::Histogram;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateStore, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateStore), SError> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let store = Arc::new(Store::open(dir.path()).map_err(|e| StorageIOError::write(io_err(e)))?);
        // As a follower: the suite's applies run on the low-priority thread.
        let log = LogStore::new(store.clone(), Histogram::new([]));
        let follower = Background::start(Arc::default(), log.end());
        Ok((dir, log, StateStore::new(store, None).applying_in(follower)))
    }
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_follower_applies_at_nice_19_until_it_falls_behind() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let (leading, end) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(100)));
    let background = Background::start(leading.clone(), end.clone());
    assert!(background.wanted(100 - background::MAX_BEHIND));
    assert!(!background.wanted(100 - background::MAX_BEHIND - 1), "too far behind: the blocking pool");
    leading.store(true, Ordering::Relaxed);
    assert!(!background.wanted(100), "the leader's applies answer clients: never at low priority");

    let (thread, nice) = background
        .run(&store, |_| {
            // SAFETY: plain syscalls about the calling thread.
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
            Ok((std::thread::current().name().map(String::from), nice))
        })
        .await
        .unwrap();
    assert_eq!(thread.as_deref(), Some("apply-background"));
    assert_eq!(nice, 19);
}

#[test]
fn passes_the_openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}

#[tokio::test]
async fn snapshots_carry_the_chat_state() {
    let (_d1, mut log1, mut sm1) = Builder.build().await.unwrap();
    let _ = &mut log1;
    let account =
        |n: &str| Command::CreateAccount { username: n.into(), display_name: None, password_hash: "x".into(), at: 1 };
    let mut entry = Entry::<TypeConfig> {
        log_id: LogId::new(openraft::CommittedLeaderId::new(1, 0), 1),
        payload: EntryPayload::Normal(Batch(vec![account("alice"), account("bob"), account("alice")])),
    };
    let results = sm1.apply([entry.clone()]).await.unwrap();
    assert_eq!(results[0].0.len(), 3);
    assert!(results[0].0[2].is_err(), "duplicate refused");
    entry.log_id.index = 2;
    entry.payload = EntryPayload::Normal(Batch(vec![account("carol")]));
    sm1.apply([entry]).await.unwrap();
    let snap = sm1.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(2));

    let (_d2, _log2, mut sm2) = Builder.build().await.unwrap();
    sm2.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
    assert_eq!(sm2.store.digest().unwrap(), sm1.store.digest().unwrap());
    assert_eq!(sm2.applied_state().await.unwrap().0.map(|l| l.index), Some(2));
    assert!(sm2.store.user("carol").unwrap().is_some());
    let current = sm2.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.snapshot_id, snap.meta.snapshot_id);
}

#[tokio::test]
async fn forget_keeps_only_the_vote_and_an_interrupted_install_forgets() {
    let (_dir, mut log, mut sm) = Builder.build().await.unwrap();
    let entry = Entry::<TypeConfig> {
        log_id: LogId::new(openraft::CommittedLeaderId::new(3, 7), 1),
        payload: EntryPayload::Normal(Batch(vec![Command::CreateAccount {
            username: "alice".into(),
            display_name: None,
            password_hash: "x".into(),
            at: 1,
        }])),
    };
    sm.apply([entry.clone()]).await.unwrap();
    sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let store = sm.store.clone();
    store.db.put_cf(store.cf(Cf::RaftLog), 1u64.to_be_bytes(), json(&entry)).unwrap();
    let vote = Vote::new_committed(3, 7);
    log.save_vote(&vote).await.unwrap();
    log.save_committed(Some(entry.log_id)).await.unwrap();
    assert!(!log_seen(&store).await.unwrap());
    remember_log_seen(&store).await.unwrap();
    assert!(store.user("alice").unwrap().is_some());

    assert!(snapshot::dir(&store).exists());
    assert!(!recover_interrupted_install(&store).unwrap(), "nothing to recover");
    // A crash in the middle of an install: the next start forgets the copy.
    store.db.put_cf(store.cf(Cf::RaftMeta), INSTALLING, b"{}").unwrap();
    assert!(recover_interrupted_install(&store).unwrap());
    assert!(!snapshot::dir(&store).exists(), "snapshot files deleted");
    let rows = store.row_counts().unwrap();
    assert!(rows.iter().all(|(cf, n)| *n == 0 || *cf == Cf::RaftMeta.name()), "{rows:?}");
    assert_eq!(rows[Cf::RaftMeta.name()], 2, "only the vote and that a log exists");
    assert!(log_seen(&store).await.unwrap(), "a forgotten copy still knows the cluster has a log");
    let (mut log, mut sm) = (LogStore::new(store.clone(), Histogram::new([])), StateStore::new(store, None));
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    assert_eq!(log.read_committed().await.unwrap(), None);
    assert_eq!(log.get_log_state().await.unwrap().last_log_id, None);
    assert_eq!(sm.applied_state().await.unwrap(), (None, StoredMembership::default()));
    assert!(sm.get_current_snapshot().await.unwrap().is_none());
}

/// openraft stops a leader's Raft when the snapshot it is about to send cannot be read, so
/// the current snapshot must stay readable while newer ones are built (before 2026-12-01 a
/// build deleted the older file before it recorded its own meta: `snapshot_bench --mib 1536`
/// lost its leader that way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_current_snapshot_stays_readable_while_newer_ones_are_built() {
    let (_dir, _log, mut sm) = Builder.build().await.unwrap();
    let account = |i: u64| Command::CreateAccount {
        username: format!("user{i}"),
        display_name: None,
        password_hash: "x".repeat(4096),
        at: 1,
    };
    let entry = |i: u64| Entry::<TypeConfig> {
        log_id: LogId::new(openraft::CommittedLeaderId::new(1, 0), i),
        payload: EntryPayload::Normal(Batch(vec![account(i)])),
    };
    sm.apply([entry(1)]).await.unwrap();
    sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut reader = sm.get_snapshot_builder().await;
    let reading = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut reads = 0u32;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let found = reader.get_current_snapshot().await.unwrap();
                assert!(found.is_some(), "the current snapshot vanished after {reads} reads");
                reads += 1;
            }
            reads
        })
    };
    for i in 2..=150 {
        sm.apply([entry(i)]).await.unwrap();
        sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reading.await.unwrap();
    assert!(reads > 100, "the reader barely ran: {reads} reads");
}

/// Log entries are CBOR now; entries an older node wrote as JSON still read, next to new ones.
#[tokio::test]
async fn log_entries_written_as_json_before_still_read() {
    let (_dir, mut log, sm) = Builder.build().await.unwrap();
    let chunk = |i: u64| Entry::<TypeConfig> {
        log_id: LogId::new(openraft::CommittedLeaderId::new(1, 0), i),
        payload: EntryPayload::Normal(Batch(vec![Command::PutFileChunk {
            hash: format!("h{i}"),
            data: vec![7; 1000],
        }])),
    };
    let store = sm.store.clone();
    let (old, new) = (json(&chunk(1)), encode_entry(&chunk(2)).unwrap());
    assert!(new.len() < 1100 && old.len() > 2000, "a chunk's bytes stay bytes: {} vs {}", new.len(), old.len());
    store.db.put_cf(store.cf(Cf::RaftLog), 1u64.to_be_bytes(), old).unwrap();
    store.db.put_cf(store.cf(Cf::RaftLog), 2u64.to_be_bytes(), new).unwrap();
    let read = log.try_get_log_entries(1..3).await.unwrap();
    assert_eq!(read, [chunk(1), chunk(2)]);
    assert_eq!(log.get_log_state().await.unwrap().last_log_id, Some(chunk(2).log_id));
    assert!(decode_entry(b"\xa2garbage").is_err(), "bad bytes are an error, not an entry");
}

/// A restarted node counts the log it already holds towards its next snapshot
/// (`replication::snapshot_due`): after a reopen, the estimate covers the entries past the
/// purged ones.
#[test]
fn the_log_held_on_disk_is_measured_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1d;
    {
        let store = Store::open(dir.path()).unwrap();
        for index in 1..=4u64 {
            let entry = crate::testkit::incompressible(1, &mut seed);
            store.db.put_cf(store.cf(Cf::RaftLog), index.to_be_bytes(), entry).unwrap();
        }
        let purged = LogId::new(openraft::CommittedLeaderId::new(1, 0), 2);
        store.db.put_cf(store.cf(Cf::RaftMeta), PURGED, json(&purged)).unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let held = log_size_on_disk(&store).unwrap();
    assert!((1_900_000..2_300_000).contains(&held), "two live entries of 1 MiB each: {held} bytes");
    let between = log_bytes(&store, 2, 4);
    assert!((1_900_000..2_300_000).contains(&between), "entries 2 and 3: {between} bytes");
    assert!(log_bytes(&store, 5, u64::MAX) < 100_000, "no entry after the fourth");

    // Entries kept before the snapshot (for peers behind it) are not growth since it.
    let meta = openraft::SnapshotMeta::<NodeId, RaftNode> {
        last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(1, 0), 3)),
        ..Default::default()
    };
    store.db.put_cf(store.cf(Cf::RaftMeta), SNAP_META, json(&meta)).unwrap();
    let since = log_size_on_disk(&store).unwrap();
    assert!((900_000..1_200_000).contains(&since), "one entry after the snapshot: {since} bytes");
}
