//! Read queries: what the service answers from. Reads never write.

use super::keys::{join, last_part, prefix, seq_key, seq_of};
use super::records::*;
use super::{decode, Cf, StorageError, Store};
use chorus_protocol::api::{ChatSummary, Friend, FriendRequestInfo, FriendRequests, Group};
use chorus_protocol::event::Message;
use chorus_protocol::{ChatId, Event};

impl Store {
    /// A user's record.
    pub fn user(&self, username: &str) -> Result<Option<UserRec>, StorageError> {
        self.get_json(Cf::Users, username.as_bytes())
    }

    /// The session behind a token hash (expiry is the caller's check).
    pub fn session(&self, token_hash: &str) -> Result<Option<SessionRec>, StorageError> {
        self.get_json(Cf::Sessions, token_hash.as_bytes())
    }

    /// Whether `a` and `b` are friends.
    pub fn are_friends(&self, a: &str, b: &str) -> Result<bool, StorageError> {
        Ok(self.get(Cf::Friends, &join(&[a.as_bytes(), b.as_bytes()]))?.is_some())
    }

    /// `user`'s friends, by name.
    pub fn friends(&self, user: &str) -> Result<Vec<Friend>, StorageError> {
        let p = prefix(user.as_bytes());
        self.scan(Cf::Friends, &p, &p)
            .map(|row| {
                let (k, v) = row?;
                let rec: FriendRec = decode(Cf::Friends, &v)?;
                Ok(Friend { username: String::from_utf8_lossy(last_part(&k)).into_owned(), since: rec.since })
            })
            .collect()
    }

    /// Pending requests to and from `user`.
    pub fn friend_requests(&self, user: &str) -> Result<FriendRequests, StorageError> {
        let list = |dir: &[u8]| -> Result<Vec<FriendRequestInfo>, StorageError> {
            let p = prefix(&join(&[dir, user.as_bytes()]));
            self.scan(Cf::FriendRequests, &p, &p)
                .map(|row| {
                    let rec: RequestRec = decode(Cf::FriendRequests, &row?.1)?;
                    Ok(FriendRequestInfo { from: rec.from, to: rec.to, at: rec.at })
                })
                .collect()
        };
        Ok(FriendRequests { incoming: list(b"i")?, outgoing: list(b"o")? })
    }

    /// A chat's record.
    pub fn chat(&self, chat_id: &ChatId) -> Result<Option<ChatRec>, StorageError> {
        self.get_json(Cf::Chats, chat_id.to_string().as_bytes())
    }

    /// A group as `user` sees it; `None` when it does not exist or `user` is not a member.
    pub fn group_for(&self, group_id: &str, user: &str) -> Result<Option<Group>, StorageError> {
        let Some(g) = self.get_json::<GroupRec>(Cf::Groups, group_id.as_bytes())? else { return Ok(None) };
        let chat_id = ChatId::group(group_id);
        let Some(chat) = self.chat(&chat_id)? else { return Ok(None) };
        if !chat.members.iter().any(|m| m == user) {
            return Ok(None);
        }
        Ok(Some(Group {
            group_id: g.group_id,
            chat_id,
            name: g.name,
            admin: g.admin,
            members: chat.members,
            created_at: g.created_at,
        }))
    }

    /// The chats `user` is in, most recently active first.
    pub fn chats_of(&self, user: &str) -> Result<Vec<ChatSummary>, StorageError> {
        let p = prefix(user.as_bytes());
        let mut out = Vec::new();
        for row in self.scan(Cf::Members, &p, &p) {
            let (k, _) = row?;
            let Ok(chat_id) = String::from_utf8_lossy(&k[p.len()..]).parse::<ChatId>() else { continue };
            let Some(chat) = self.chat(&chat_id)? else { continue };
            let (kind, name, group_id) = match &chat_id {
                ChatId::Dm(a, b) => ("dm", if a == user { b.clone() } else { a.clone() }, None),
                ChatId::Group(g) => {
                    let rec = self.get_json::<GroupRec>(Cf::Groups, g.as_bytes())?;
                    ("group", rec.map(|r| r.name).unwrap_or_default(), Some(g.clone()))
                }
            };
            out.push(ChatSummary {
                chat_id,
                kind: kind.into(),
                name,
                group_id,
                members: chat.members,
                last_seq: chat.last_seq,
                updated_at: chat.updated_at,
            });
        }
        out.sort_by(|a, b| b.updated_at.cmp(&a.updated_at).then_with(|| a.chat_id.cmp(&b.chat_id)));
        Ok(out)
    }

    /// Messages of a chat with seq > `after`, oldest first, at most `limit`.
    pub fn messages(&self, chat_id: &ChatId, after: u64, limit: usize) -> Result<Vec<Message>, StorageError> {
        let owner = chat_id.to_string();
        let p = prefix(owner.as_bytes());
        let start = seq_key(owner.as_bytes(), after.saturating_add(1));
        self.scan(Cf::Messages, &p, &start).take(limit).map(|row| decode(Cf::Messages, &row?.1)).collect()
    }

    /// Events of `user` with seq > `after`, oldest first, at most `limit`.
    pub fn events(&self, user: &str, after: u64, limit: usize) -> Result<Vec<Event>, StorageError> {
        let p = prefix(user.as_bytes());
        let start = seq_key(user.as_bytes(), after.saturating_add(1));
        self.scan(Cf::Events, &p, &start).take(limit).map(|row| decode(Cf::Events, &row?.1)).collect()
    }

    /// Newest event seq of `user` (0: none).
    pub fn last_event_seq(&self, user: &str) -> Result<u64, StorageError> {
        let last = seq_key(user.as_bytes(), u64::MAX);
        let mode = rocksdb::IteratorMode::From(&last, rocksdb::Direction::Reverse);
        match self.db.iterator_cf(self.cf(Cf::Events), mode).next().transpose()? {
            Some((k, _)) if k.starts_with(&prefix(user.as_bytes())) => Ok(seq_of(&k).unwrap_or(0)),
            _ => Ok(0),
        }
    }

    /// A file's metadata.
    pub fn file(&self, file_id: &str) -> Result<Option<FileRec>, StorageError> {
        self.get_json(Cf::Files, &join(&[b"m", file_id.as_bytes()]))
    }

    /// One stored chunk.
    pub fn file_chunk(&self, hash: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.get(Cf::Files, &join(&[b"c", hash.as_bytes()]))
    }

    /// Whether `user` may read `file`: the uploader, or a member of a chat where a message
    /// carries it.
    pub fn file_visible_to(&self, file: &FileRec, user: &str) -> Result<bool, StorageError> {
        if file.uploader == user {
            return Ok(true);
        }
        let p = prefix(&join(&[b"a", file.file_id.as_bytes()]));
        for row in self.scan(Cf::Files, &p, &p) {
            let (k, _) = row?;
            let Ok(chat_id) = String::from_utf8_lossy(&k[p.len()..]).parse::<ChatId>() else { continue };
            if let Some(chat) = self.chat(&chat_id)? {
                if chat.members.iter().any(|m| m == user) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Index of the last applied log entry (0: none).
    pub fn applied_index(&self) -> Result<u64, StorageError> {
        Ok(self.get(Cf::Meta, b"applied")?.and_then(|v| seq_of(&v)).unwrap_or(0))
    }
}
