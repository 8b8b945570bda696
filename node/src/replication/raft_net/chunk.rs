//! One snapshot chunk on the wire.
//!
//! openraft's `InstallSnapshotRequest` serializes its `data: Vec<u8>` as a CBOR array of
//! integers: about twice the bytes, and ~30 ms to encode and decode each 3 MiB chunk on this
//! hardware. [`Chunk`] is the same message with the data as a CBOR byte string. Its fields keep
//! openraft's names, and the data decodes from either form, so a node still reads the chunks
//! of a leader that predates it (a node that predates it cannot read this form).

use crate::storage::raft::{RaftNode, TypeConfig};
use openraft::raft::InstallSnapshotRequest;
use openraft::{SnapshotMeta, Vote};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Chunk {
    vote: Vote<u64>,
    meta: SnapshotMeta<u64, RaftNode>,
    offset: u64,
    #[serde(serialize_with = "serde_bytes::serialize", deserialize_with = "bytes_or_array")]
    data: Vec<u8>,
    done: bool,
}

impl From<InstallSnapshotRequest<TypeConfig>> for Chunk {
    fn from(r: InstallSnapshotRequest<TypeConfig>) -> Self {
        Self { vote: r.vote, meta: r.meta, offset: r.offset, data: r.data, done: r.done }
    }
}

impl From<Chunk> for InstallSnapshotRequest<TypeConfig> {
    fn from(c: Chunk) -> Self {
        Self { vote: c.vote, meta: c.meta, offset: c.offset, data: c.data, done: c.done }
    }
}

/// The data as a byte string (this form) or an array of integers (openraft's).
fn bytes_or_array<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct Data;
    impl<'de> serde::de::Visitor<'de> for Data {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("snapshot bytes")
        }
        fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64 << 20));
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
    d.deserialize_any(Data)
}

#[cfg(test)]
mod tests {
    use super::super::{decode, encode, Request};
    use super::*;
    use openraft::raft::AppendEntriesRequest;

    /// The request enum as it was before `Chunk`: openraft's message as is.
    #[derive(Serialize)]
    enum Before {
        #[allow(dead_code)]
        Append(AppendEntriesRequest<TypeConfig>),
        Snapshot(InstallSnapshotRequest<TypeConfig>),
    }

    fn request(len: usize) -> InstallSnapshotRequest<TypeConfig> {
        InstallSnapshotRequest {
            vote: Vote::new_committed(3, 7),
            meta: SnapshotMeta { last_log_id: None, last_membership: Default::default(), snapshot_id: "3-9-1".into() },
            offset: 4096,
            data: (0..len).map(|i| (i * 131 % 251) as u8).collect(),
            done: true,
        }
    }

    #[test]
    fn a_chunk_carries_its_data_as_bytes_and_reads_the_old_form_too() {
        let sent = request(1 << 20);
        let bytes = encode(&Request::Snapshot(sent.clone().into())).unwrap();
        assert!(bytes.len() < sent.data.len() + 256, "{} bytes for 1 MiB", bytes.len());
        let Request::Snapshot(got) = decode(&bytes).unwrap() else { panic!("not a snapshot") };
        assert_eq!(InstallSnapshotRequest::from(got), sent);

        let old = encode(&Before::Snapshot(sent.clone())).unwrap();
        assert!(old.len() > sent.data.len() * 3 / 2, "the old form is an array");
        let Request::Snapshot(got) = decode(&old).unwrap() else { panic!("not a snapshot") };
        assert_eq!(InstallSnapshotRequest::from(got), sent);
    }
}
