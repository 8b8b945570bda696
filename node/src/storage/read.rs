//! Reads as values: every read the service makes is a [`Query`], so it can run here or travel
//! to the storage peer that answers it (an input node keeps no user data). The answer is the
//! CBOR of the query's result type; [`Query::run`] and the caller agree on that type per
//! variant (see the service).

use super::{StorageError, Store};
use chorus_protocol::api::MessagesPage;
use chorus_protocol::ChatId;
use serde::{Deserialize, Serialize};

/// One read. The comment on each variant names the type its answer decodes to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Query {
    /// `Option<UserRec>`.
    User(String),
    /// `Option<SessionRec>`.
    Session(String),
    /// `FriendRequests`.
    FriendRequests(String),
    /// `Vec<Friend>`.
    Friends(String),
    /// `Vec<ChatSummary>`.
    ChatsOf(String),
    /// `Option<MessagesPage>`: None unless `user` is a member.
    Messages {
        /// Chat.
        chat: ChatId,
        /// Who asks.
        user: String,
        /// Seq to start after.
        after: u64,
        /// Page size.
        limit: usize,
    },
    /// `Option<Group>`: None unless `user` is a member.
    Group {
        /// Group id.
        group: String,
        /// Who asks.
        user: String,
    },
    /// `Vec<Event>`.
    Events {
        /// Whose log.
        user: String,
        /// Seq to start after.
        after: u64,
        /// Page size.
        limit: usize,
    },
    /// `u64`.
    LastEventSeq(String),
    /// `Option<FileRec>`: None unless `user` may read it.
    VisibleFile {
        /// File id.
        file: String,
        /// Who asks.
        user: String,
    },
    /// `Option<String>`: the first of `files` that `user` may not attach.
    FirstInvisible {
        /// File ids.
        files: Vec<String>,
        /// Who asks.
        user: String,
    },
    /// `Option<serde_bytes::ByteBuf>`.
    FileChunk(String),
    /// `u64`.
    AppliedIndex,
}

fn cbor<T: Serialize>(v: &T) -> Result<Vec<u8>, StorageError> {
    cbor4ii::serde::to_vec(Vec::new(), v).map_err(|e| StorageError::Corrupt { cf: "query answer", err: e.to_string() })
}

impl Query {
    /// Runs the read on `store`; the answer is CBOR.
    pub fn run(&self, s: &Store) -> Result<Vec<u8>, StorageError> {
        match self {
            Query::User(name) => cbor(&s.user(name)?),
            Query::Session(hash) => cbor(&s.session(hash)?),
            Query::FriendRequests(user) => cbor(&s.friend_requests(user)?),
            Query::Friends(user) => cbor(&s.friends(user)?),
            Query::ChatsOf(user) => cbor(&s.chats_of(user)?),
            Query::Messages { chat, user, after, limit } => {
                let page = match s.chat(chat)?.filter(|c| c.members.contains(user)) {
                    Some(c) => Some(MessagesPage { messages: s.messages(chat, *after, *limit)?, last_seq: c.last_seq }),
                    None => None,
                };
                cbor(&page)
            }
            Query::Group { group, user } => cbor(&s.group_for(group, user)?),
            Query::Events { user, after, limit } => cbor(&s.events(user, *after, *limit)?),
            Query::LastEventSeq(user) => cbor(&s.last_event_seq(user)?),
            Query::VisibleFile { file, user } => {
                let rec = match s.file(file)? {
                    Some(rec) if s.file_visible_to(&rec, user)? => Some(rec),
                    _ => None,
                };
                cbor(&rec)
            }
            Query::FirstInvisible { files, user } => {
                for f in files {
                    let visible = match s.file(f)? {
                        Some(rec) => s.file_visible_to(&rec, user)?,
                        None => false,
                    };
                    if !visible {
                        return cbor(&Some(f));
                    }
                }
                cbor(&None::<String>)
            }
            Query::FileChunk(hash) => cbor(&s.file_chunk(hash)?.map(serde_bytes::ByteBuf::from)),
            Query::AppliedIndex => cbor(&s.applied_index()?),
        }
    }
}
