//! Snapshots as files, so no snapshot is ever held in memory whole (file chunks make the chat
//! state large).
//!
//! A snapshot is every row of the state CFs, read from one RocksDB snapshot (consistent), in a
//! length-prefixed framing: `cf(u8) klen(u32) key vlen(u32) value`, big-endian. The current one
//! is `<db>/snapshots/<snapshot_id>.snap`; its meta is in `raft_meta` (`SNAP_META`).
//!
//! * Build: stream the rows into a temporary file, fsync it, rename it into place, record the
//!   meta (synced), and only then delete older files: the meta in force always names a file
//!   that exists (a leader whose replication finds no snapshot file stops its Raft).
//! * Receive: the leader's chunks go into an unnamed file (created and unlinked at once, so an
//!   abandoned transfer leaves nothing behind).
//! * Install: copy the received file in, rename it into place, then replace the state CFs in
//!   bounded WriteBatches. A crash in the middle would leave a mix of old and new rows, so an
//!   `INSTALLING` marker is written (synced) first and cleared in the last batch, with the new
//!   applied id. A node that starts with the marker set forgets its copy (see
//!   [`super::raft::forget`]) and is sent a snapshot again.

use super::{Cf, Store};
use openraft::AnyError;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// A WriteBatch of an install is written once it holds this many bytes.
const BATCH_BYTES: usize = 4 << 20;

fn io_err(e: impl std::fmt::Display) -> AnyError {
    AnyError::error(e.to_string())
}

/// Where this store keeps its snapshot files.
pub(crate) fn dir(s: &Store) -> PathBuf {
    s.db.path().join("snapshots")
}

/// The file of snapshot `id`.
pub(crate) fn path(s: &Store, id: &str) -> PathBuf {
    dir(s).join(format!("{id}.snap"))
}

/// A unique name for a temporary file in the snapshot directory.
fn temp_path(s: &Store, what: &str) -> Result<PathBuf, AnyError> {
    let dir = dir(s);
    std::fs::create_dir_all(&dir).map_err(io_err)?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    Ok(dir.join(format!("{what}-{}-{nanos}.tmp", std::process::id())))
}

/// Writes every state row of `snap` to a new temporary file; returns the file's path and
/// size. The caller renames it into place with [`place`].
pub(crate) fn write_rows(s: &Store, snap: &rocksdb::Snapshot<'_>) -> Result<(PathBuf, u64), AnyError> {
    let tmp = temp_path(s, "building")?;
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp).map_err(io_err)?);
    let mut size = 0u64;
    for (i, cf) in Cf::STATE.iter().enumerate() {
        for row in snap.iterator_cf(s.cf(*cf), rocksdb::IteratorMode::Start) {
            let (k, v) = row.map_err(io_err)?;
            out.write_all(&[i as u8]).map_err(io_err)?;
            out.write_all(&(k.len() as u32).to_be_bytes()).map_err(io_err)?;
            out.write_all(&k).map_err(io_err)?;
            out.write_all(&(v.len() as u32).to_be_bytes()).map_err(io_err)?;
            out.write_all(&v).map_err(io_err)?;
            size += 9 + k.len() as u64 + v.len() as u64;
        }
    }
    let file = out.into_inner().map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    Ok((tmp, size))
}

/// Renames a finished temporary file to snapshot `id`'s; returns the new path. The caller
/// records the meta (synced) and only then [`prune`]s, so the meta in force always names a
/// file that exists.
pub(crate) fn place(s: &Store, tmp: &Path, id: &str) -> Result<PathBuf, AnyError> {
    let target = path(s, id);
    std::fs::rename(tmp, &target).map_err(io_err)?;
    Ok(target)
}

/// Deletes every snapshot file but `id`'s. Open handles of deleted files (a transfer to a
/// follower) stay readable.
pub(crate) fn prune(s: &Store, id: &str) -> Result<(), AnyError> {
    let keep = path(s, id);
    for entry in std::fs::read_dir(dir(s)).map_err(io_err)?.flatten() {
        let p = entry.path();
        if p != keep && p.extension().is_some_and(|e| e == "snap") {
            let _ = std::fs::remove_file(p);
        }
    }
    Ok(())
}

/// A new file for a snapshot being received, already unlinked: it lives as long as its handle.
pub(crate) fn receiving_file(s: &Store) -> Result<File, AnyError> {
    let tmp = temp_path(s, "receiving")?;
    let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&tmp).map_err(io_err)?;
    std::fs::remove_file(&tmp).map_err(io_err)?;
    Ok(file)
}

/// Copies a received snapshot (read from its start) into a temporary file of this store.
pub(crate) fn copy_in(s: &Store, mut received: File) -> Result<PathBuf, AnyError> {
    let tmp = temp_path(s, "installing")?;
    let mut out = File::create(&tmp).map_err(io_err)?;
    std::io::copy(&mut received, &mut out).map_err(io_err)?;
    out.sync_all().map_err(io_err)?;
    Ok(tmp)
}

/// Deletes temporary files a crash left behind (run before Raft starts: a build or install in
/// progress owns its temporary file).
pub(crate) fn remove_temp_files(s: &Store) -> Result<(), AnyError> {
    let Ok(entries) = std::fs::read_dir(dir(s)) else { return Ok(()) };
    for entry in entries.flatten() {
        if entry.path().extension().is_some_and(|e| e == "tmp") {
            std::fs::remove_file(entry.path()).map_err(io_err)?;
        }
    }
    Ok(())
}

/// Deletes every snapshot file of this store.
pub(crate) fn remove_all(s: &Store) -> Result<(), AnyError> {
    match std::fs::remove_dir_all(dir(s)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(e)),
        _ => Ok(()),
    }
}

/// Replaces the state CFs with the rows of the snapshot file at `file`, in WriteBatches of at
/// most ~4 MiB (not synced: the caller's last batch is). `last` goes in the final batch.
pub(crate) fn load_rows(s: &Store, file: &Path, last: rocksdb::WriteBatch) -> Result<(), AnyError> {
    let loaded = replace_rows(s, file, last);
    // Whether or not it got to the end, the state CFs changed under the row cache.
    s.hot.clear();
    loaded
}

fn replace_rows(s: &Store, file: &Path, last: rocksdb::WriteBatch) -> Result<(), AnyError> {
    let write = |wb: rocksdb::WriteBatch| s.db.write(wb).map_err(io_err);
    let mut wb = rocksdb::WriteBatch::default();
    for cf in Cf::STATE {
        for row in s.db.iterator_cf(s.cf(cf), rocksdb::IteratorMode::Start) {
            let (k, _) = row.map_err(io_err)?;
            wb.delete_cf(s.cf(cf), k);
            if wb.size_in_bytes() >= BATCH_BYTES {
                write(std::mem::take(&mut wb))?;
            }
        }
    }
    let mut input = BufReader::with_capacity(1 << 20, File::open(file).map_err(io_err)?);
    while let Some((cf, k, v)) = read_row(&mut input)? {
        wb.put_cf(s.cf(cf), k, v);
        if wb.size_in_bytes() >= BATCH_BYTES {
            write(std::mem::take(&mut wb))?;
        }
    }
    write(wb)?;
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    s.db.write_opt(last, &wo).map_err(io_err)
}

/// Reads a whole snapshot file: an error if it is truncated or malformed, before any row of
/// the store is touched.
pub(crate) fn check(file: &Path) -> Result<(), AnyError> {
    let mut input = BufReader::with_capacity(1 << 20, File::open(file).map_err(io_err)?);
    while read_row(&mut input)?.is_some() {}
    Ok(())
}

/// One row of a snapshot: column family, key, value.
type Row = (Cf, Vec<u8>, Vec<u8>);

/// The next row of a snapshot file; `None` at its end.
fn read_row(input: &mut impl Read) -> Result<Option<Row>, AnyError> {
    let mut tag = [0u8; 1];
    match input.read_exact(&mut tag) {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        r => r.map_err(io_err)?,
    }
    let cf = *Cf::STATE.get(tag[0] as usize).ok_or_else(|| io_err("snapshot names an unknown column family"))?;
    let mut field = || -> Result<Vec<u8>, AnyError> {
        let mut len = [0u8; 4];
        input.read_exact(&mut len).map_err(|e| io_err(format!("truncated snapshot: {e}")))?;
        let mut buf = vec![0; u32::from_be_bytes(len) as usize];
        input.read_exact(&mut buf).map_err(|e| io_err(format!("truncated snapshot: {e}")))?;
        Ok(buf)
    };
    let k = field()?;
    let v = field()?;
    Ok(Some((cf, k, v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_through_a_file_and_truncation_is_an_error() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (Store::open(d1.path()).unwrap(), Store::open(d2.path()).unwrap());
        a.db.put_cf(a.cf(Cf::Users), b"alice", b"1").unwrap();
        a.db.put_cf(a.cf(Cf::Messages), b"dm:a:b\0\0\0\0\x01", vec![7u8; 100_000]).unwrap();
        b.db.put_cf(b.cf(Cf::Users), b"stale", b"x").unwrap();
        let (tmp, size) = write_rows(&a, &a.db.snapshot()).unwrap();
        assert_eq!(std::fs::metadata(&tmp).unwrap().len(), size);
        place(&a, &tmp, "1-2-3").unwrap();
        let copied = copy_in(&b, File::open(path(&a, "1-2-3")).unwrap()).unwrap();
        load_rows(&b, &copied, rocksdb::WriteBatch::default()).unwrap();
        assert_eq!(a.digest().unwrap(), b.digest().unwrap(), "the stale row is gone, the rest copied");

        let cut = temp_path(&b, "cut").unwrap();
        std::fs::write(&cut, &std::fs::read(path(&a, "1-2-3")).unwrap()[..size as usize - 10]).unwrap();
        assert!(check(&cut).is_err());
        assert!(check(&copied).is_ok());
    }
}
