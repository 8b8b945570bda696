//! Files: whole-body uploads stored as content-addressed chunks, chunk-by-chunk downloads.

use super::{fresh_id, now_ms, Caller, Result, Service, ServiceError};
use crate::storage::read::Query;
use crate::storage::records::FileRec;
use bytes::Bytes;
use chorus_protocol::api::FileInfo;
use chorus_protocol::ids::{self, ValidationError};
use chorus_protocol::{Command, CommandError};
use futures::{Stream, StreamExt};

/// Bytes per stored file chunk.
pub const CHUNK_SIZE: usize = 1024 * 1024;
/// Uploads buffered at once (each up to the file size limit).
pub(super) const CONCURRENT_UPLOADS: usize = 8;

impl Service {
    /// Stores an upload. The whole body is received (up to the limit) before anything is
    /// written, so an oversized or broken upload changes nothing.
    pub async fn upload<S, E>(
        &self,
        caller: &Caller,
        name: Option<String>,
        content_type: Option<String>,
        mut body: S,
    ) -> Result<FileInfo>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use sha2::{Digest, Sha256};
        let name = name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).unwrap_or_else(|| "file".into());
        if name.len() > ids::FILE_NAME_MAX || name.chars().any(|c| c.is_control() || c == '/' || c == '\\') {
            return Err(ValidationError::new(
                "name",
                "file name must be 1-255 bytes without control characters or slashes",
            )
            .into());
        }
        let content_type = content_type
            .filter(|c| c.len() <= 255 && !c.is_empty())
            .unwrap_or_else(|| "application/octet-stream".into());
        let _permit =
            self.inner.uploads.acquire().await.map_err(|_| ServiceError::Internal("upload gate closed".into()))?;
        let limit = self.inner.config.max_file_size;
        let mut whole = Sha256::new();
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        let mut current = Vec::with_capacity(CHUNK_SIZE);
        let mut size: u64 = 0;
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(|e| {
                if e.to_string().contains("length limit") {
                    ServiceError::TooLarge(format!("file exceeds the {limit} byte limit"))
                } else {
                    ValidationError::new("body", format!("upload interrupted: {e}")).into()
                }
            })?;
            size += piece.len() as u64;
            if size > limit {
                return Err(ServiceError::TooLarge(format!("file exceeds the {limit} byte limit")));
            }
            whole.update(&piece);
            let mut rest = &piece[..];
            while !rest.is_empty() {
                let take = rest.len().min(CHUNK_SIZE - current.len());
                current.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if current.len() == CHUNK_SIZE {
                    chunks.push(std::mem::replace(&mut current, Vec::with_capacity(CHUNK_SIZE)));
                }
            }
        }
        if !current.is_empty() {
            chunks.push(current);
        }
        let mut hashes = Vec::with_capacity(chunks.len());
        for data in chunks {
            let hash = hex::encode(Sha256::digest(&data));
            hashes.push(hash.clone());
            self.submit(Command::PutFileChunk { hash, data }).await?;
        }
        let file_id = fresh_id();
        let sha256 = hex::encode(whole.finalize());
        let cmd = Command::CreateFile {
            file_id: file_id.clone(),
            uploader: caller.username.clone(),
            name: name.clone(),
            content_type: content_type.clone(),
            size,
            sha256: sha256.clone(),
            chunks: hashes,
            at: now_ms(),
        };
        self.submit(cmd).await?;
        Ok(FileInfo { file_id, size, sha256, name, content_type })
    }

    /// A file the caller may read, and a stream of its bytes (read chunk by chunk).
    pub async fn download(
        &self,
        caller: &Caller,
        file_id: &str,
    ) -> Result<(FileRec, impl Stream<Item = std::io::Result<Bytes>> + use<>)> {
        if !ids::is_file_id(file_id) {
            return Err(CommandError::FileNotFound(file_id.to_owned()).into());
        }
        let query = Query::VisibleFile { file: file_id.to_owned(), user: caller.username.clone() };
        let rec: FileRec =
            self.read::<Option<FileRec>>(query).await?.ok_or_else(|| CommandError::FileNotFound(file_id.to_owned()))?;
        let svc = self.clone();
        let chunks = futures::stream::iter(rec.chunks.clone()).then(move |hash| {
            let svc = svc.clone();
            async move {
                let data: Option<serde_bytes::ByteBuf> =
                    svc.read(Query::FileChunk(hash)).await.map_err(std::io::Error::other)?;
                data.map(|b| Bytes::from(b.into_vec())).ok_or_else(|| std::io::Error::other("file chunk missing"))
            }
        });
        Ok((rec, chunks))
    }
}
