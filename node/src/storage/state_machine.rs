//! The deterministic state machine: `apply(state, commands) -> state', results`.
//!
//! A batch of commands (one log entry under group commit) becomes ONE RocksDB WriteBatch,
//! written with a synced WAL before anyone is answered. Inside apply there is no clock, no
//! randomness and no scan: every command reads point keys (and, for a user's newest event seq,
//! the last key of their log) through an overlay that sees the earlier commands of the same
//! batch, and a refused command leaves no trace (its staged writes are dropped).

use super::keys::{join, seq_key};
use super::records::*;
use super::{decode, encode, Cf, StorageError, Store};
use chorus_protocol::command::Millis;
use chorus_protocol::event::{FileRef, Message};
use chorus_protocol::ids::GROUP_MEMBERS_MAX;
use chorus_protocol::{Applied, ChatId, Command, CommandError, Event, EventKind};
use std::collections::BTreeMap;

/// "User X has events up to seq N, the newest being these": what streams wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// User.
    pub user: String,
    /// Their newest event seq.
    pub seq: u64,
    /// The events this batch appended for them, in seq order (ending at `seq`).
    pub events: Vec<Event>,
}

/// What one applied batch produced.
#[derive(Debug, Default)]
pub struct ApplyOutput {
    /// One result per command, in order.
    pub results: Vec<Result<Applied, CommandError>>,
    /// Newest event seq per user touched by the batch.
    pub notices: Vec<Notice>,
    /// Messages appended (for metrics).
    pub messages: u64,
    /// Sessions deleted (token hashes): caches of them must go.
    pub revoked_sessions: Vec<String>,
}

/// The `extra` row that records the local log's applied index.
pub fn applied_index_row(index: u64) -> (Cf, Vec<u8>, Vec<u8>) {
    (Cf::Meta, b"applied".to_vec(), index.to_be_bytes().to_vec())
}

/// Applies commands to a [`Store`]. The only writer of user data.
#[derive(Debug)]
pub struct StateMachine<'a> {
    store: &'a Store,
}

type Staged = BTreeMap<(Cf, Vec<u8>), Option<Vec<u8>>>;

impl<'a> StateMachine<'a> {
    /// A state machine over `store`.
    pub fn new(store: &'a Store) -> Self {
        Self { store }
    }

    /// Applies `commands` in order and writes the result as one WriteBatch, together with
    /// `extra` rows (the log position, membership) so state and position never disagree.
    /// `sync` makes the write durable before returning (needed when no other log holds the
    /// commands).
    pub fn apply_batch(
        &self,
        commands: &[Command],
        extra: Vec<(Cf, Vec<u8>, Vec<u8>)>,
        sync: bool,
    ) -> Result<ApplyOutput, StorageError> {
        let mut tx = Tx {
            store: self.store,
            batch: Staged::new(),
            cmd: Staged::new(),
            events: BTreeMap::new(),
            cmd_events: Vec::new(),
        };
        let mut out = ApplyOutput::default();
        for command in commands {
            let result = apply_one(&mut tx, command)?;
            match &result {
                Ok(applied) => {
                    if matches!(applied, Applied::MessageSent { .. }) && is_new_message(command, &tx) {
                        out.messages += 1;
                    }
                    if let Command::DeleteSession { token_hash } = command {
                        out.revoked_sessions.push(token_hash.clone());
                    }
                    let staged = std::mem::take(&mut tx.cmd);
                    tx.batch.extend(staged);
                    for (user, event) in std::mem::take(&mut tx.cmd_events) {
                        tx.events.entry(user).or_default().push(event);
                    }
                }
                Err(_) => {
                    tx.cmd.clear();
                    tx.cmd_events.clear();
                }
            }
            out.results.push(result);
        }
        for (cf, key, value) in extra {
            tx.batch.insert((cf, key), Some(value));
        }
        let mut wb = rocksdb::WriteBatch::default();
        for ((cf, key), value) in &tx.batch {
            match value {
                Some(v) => wb.put_cf(self.store.cf(*cf), key, v),
                None => wb.delete_cf(self.store.cf(*cf), key),
            }
        }
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(sync);
        self.store.db.write_opt(wb, &wo)?;
        self.store.hot.wrote(&tx.batch);
        out.notices = tx
            .events
            .into_iter()
            .filter_map(|(user, events)| Some(Notice { user, seq: events.last()?.seq, events }))
            .collect();
        self.store.hot.event_seqs(out.notices.iter().map(|n| (n.user.as_str(), n.seq)));
        Ok(out)
    }
}

/// A retried send (same client_msg_id) reports success without appending.
fn is_new_message(command: &Command, tx: &Tx<'_>) -> bool {
    match command {
        Command::SendMessage { client_msg_id: Some(_), .. } => !tx.cmd.is_empty(),
        _ => true,
    }
}

/// The batch being built: database, then earlier commands' writes, then this command's.
struct Tx<'a> {
    store: &'a Store,
    batch: Staged,
    cmd: Staged,
    /// Events of the batch's applied commands, per user, in order.
    events: BTreeMap<String, Vec<Event>>,
    /// Events of the command being applied (dropped if it is refused).
    cmd_events: Vec<(String, Event)>,
}

type Res<T> = Result<Result<T, CommandError>, StorageError>;

impl Tx<'_> {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let k = (cf, key.to_vec());
        if let Some(v) = self.cmd.get(&k).or_else(|| self.batch.get(&k)) {
            return Ok(v.clone());
        }
        if let Some(v) = self.store.hot.get(&k) {
            return Ok(v);
        }
        let v = self.store.get(cf, key)?;
        self.store.hot.put(k, v.clone());
        Ok(v)
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, cf: Cf, key: &[u8]) -> Result<Option<T>, StorageError> {
        self.get(cf, key)?.map(|v| decode(cf, &v)).transpose()
    }

    fn exists(&self, cf: Cf, key: &[u8]) -> Result<bool, StorageError> {
        Ok(self.get(cf, key)?.is_some())
    }

    fn put(&mut self, cf: Cf, key: Vec<u8>, value: Vec<u8>) {
        self.cmd.insert((cf, key), Some(value));
    }

    fn put_json<T: serde::Serialize>(&mut self, cf: Cf, key: Vec<u8>, value: &T) {
        self.put(cf, key, encode(value));
    }

    fn delete(&mut self, cf: Cf, key: Vec<u8>) {
        self.cmd.insert((cf, key), None);
    }

    /// Appends an event to `user`'s log. The row and the notice are staged like any write, so
    /// a refused command's events vanish with it.
    fn emit(&mut self, user: &str, at: Millis, kind: EventKind) -> Result<(), StorageError> {
        let seq = self.last_event_seq(user)? + 1;
        let event = Event { seq, at, kind };
        self.put_json(Cf::Events, seq_key(user.as_bytes(), seq), &event);
        self.cmd_events.push((user.to_owned(), event));
        Ok(())
    }

    /// The newest event seq of `user`: this command's or the batch's events first, then the
    /// database's (no counter row: the last key of the user's log says it).
    fn last_event_seq(&self, user: &str) -> Result<u64, StorageError> {
        let staged = self.cmd_events.iter().rev().find(|(u, _)| u == user).map(|(_, e)| e.seq);
        match staged.or_else(|| self.events.get(user).and_then(|evs| evs.last()).map(|e| e.seq)) {
            Some(seq) => Ok(seq),
            None => self.store.hot.last_event_seq(user, || self.store.last_event_seq(user)),
        }
    }

    fn user_exists(&self, user: &str) -> Result<bool, StorageError> {
        self.exists(Cf::Users, user.as_bytes())
    }

    fn are_friends(&self, a: &str, b: &str) -> Result<bool, StorageError> {
        self.exists(Cf::Friends, &join(&[a.as_bytes(), b.as_bytes()]))
    }

    fn chat(&self, chat_id: &ChatId) -> Result<Option<ChatRec>, StorageError> {
        self.get_json(Cf::Chats, chat_id.to_string().as_bytes())
    }

    fn put_chat(&mut self, chat: &ChatRec) {
        self.put_json(Cf::Chats, chat.chat_id.to_string().into_bytes(), chat);
    }

    fn add_member_index(&mut self, user: &str, chat_id: &ChatId, at: Millis) {
        let key = join(&[user.as_bytes(), chat_id.to_string().as_bytes()]);
        self.put_json(Cf::Members, key, &MemberRec { joined_at: at });
    }
}

fn ok<T>(v: T) -> Res<T> {
    Ok(Ok(v))
}

fn refuse<T>(e: CommandError) -> Res<T> {
    Ok(Err(e))
}

fn apply_one(tx: &mut Tx<'_>, command: &Command) -> Res<Applied> {
    match command {
        Command::CreateAccount { username, display_name, password_hash, at } => {
            if tx.user_exists(username)? {
                return refuse(CommandError::UsernameTaken(username.clone()));
            }
            let rec = UserRec {
                username: username.clone(),
                display_name: display_name.clone(),
                password_hash: password_hash.clone(),
                created_at: *at,
            };
            tx.put_json(Cf::Users, username.as_bytes().to_vec(), &rec);
            ok(Applied::Done)
        }
        Command::CreateSession { token_hash, username, expires_at, at } => {
            if !tx.user_exists(username)? {
                return refuse(CommandError::UserNotFound(username.clone()));
            }
            let rec = SessionRec { username: username.clone(), expires_at: *expires_at, created_at: *at };
            tx.put_json(Cf::Sessions, token_hash.as_bytes().to_vec(), &rec);
            ok(Applied::Done)
        }
        Command::DeleteSession { token_hash } => {
            tx.delete(Cf::Sessions, token_hash.as_bytes().to_vec());
            ok(Applied::Done)
        }
        Command::SendFriendRequest { from, to, at } => friend_request(tx, from, to, *at),
        Command::RespondFriendRequest { from, to, accept, at } => {
            let incoming = join(&[b"i", to.as_bytes(), from.as_bytes()]);
            if !tx.exists(Cf::FriendRequests, &incoming)? {
                return refuse(CommandError::NoSuchRequest(from.clone()));
            }
            tx.delete(Cf::FriendRequests, incoming);
            tx.delete(Cf::FriendRequests, join(&[b"o", from.as_bytes(), to.as_bytes()]));
            if *accept {
                befriend(tx, from, to, *at)?;
            } else {
                tx.emit(from, *at, EventKind::FriendRequestDeclined { by: to.clone() })?;
            }
            ok(Applied::Done)
        }
        Command::RemoveFriend { user, friend, at } => {
            if !tx.are_friends(user, friend)? {
                return refuse(CommandError::NotFriends(friend.clone()));
            }
            tx.delete(Cf::Friends, join(&[user.as_bytes(), friend.as_bytes()]));
            tx.delete(Cf::Friends, join(&[friend.as_bytes(), user.as_bytes()]));
            tx.emit(user, *at, EventKind::FriendRemoved { username: friend.clone() })?;
            tx.emit(friend, *at, EventKind::FriendRemoved { username: user.clone() })?;
            ok(Applied::Done)
        }
        Command::CreateGroup { group_id, name, creator, members, at } => {
            create_group(tx, group_id, name, creator, members, *at)
        }
        Command::AddGroupMember { group_id, by, username, at } => add_member(tx, group_id, by, username, *at),
        Command::RemoveGroupMember { group_id, by, username, at } => remove_member(tx, group_id, by, username, *at),
        Command::SendMessage { chat_id, id, sender, text, files, client_msg_id, sent_at } => {
            let msg = Message {
                chat_id: chat_id.clone(),
                seq: 0,
                id: id.clone(),
                sender: sender.clone(),
                text: text.clone(),
                files: Vec::new(),
                client_msg_id: client_msg_id.clone(),
                sent_at: *sent_at,
            };
            send_message(tx, msg, files)
        }
        Command::PutFileChunk { hash, data } => {
            use sha2::{Digest, Sha256};
            if hex::encode(Sha256::digest(data)) != *hash {
                return refuse(CommandError::Conflict("file chunk does not match its hash".into()));
            }
            tx.put(Cf::Files, join(&[b"c", hash.as_bytes()]), data.clone());
            ok(Applied::Done)
        }
        Command::CreateFile { file_id, uploader, name, content_type, size, sha256, chunks, at } => {
            let meta_key = join(&[b"m", file_id.as_bytes()]);
            if tx.exists(Cf::Files, &meta_key)? {
                return refuse(CommandError::Conflict(format!("file id {file_id} already exists")));
            }
            for chunk in chunks {
                if !tx.exists(Cf::Files, &join(&[b"c", chunk.as_bytes()]))? {
                    return refuse(CommandError::FileNotFound(format!("{file_id} (chunk {chunk})")));
                }
            }
            let rec = FileRec {
                file_id: file_id.clone(),
                uploader: uploader.clone(),
                name: name.clone(),
                content_type: content_type.clone(),
                size: *size,
                sha256: sha256.clone(),
                chunks: chunks.clone(),
                created_at: *at,
            };
            tx.put_json(Cf::Files, meta_key, &rec);
            ok(Applied::Done)
        }
    }
}

fn friend_request(tx: &mut Tx<'_>, from: &str, to: &str, at: Millis) -> Res<Applied> {
    if from == to {
        return refuse(CommandError::SelfFriendship);
    }
    if !tx.user_exists(to)? {
        return refuse(CommandError::UserNotFound(to.to_owned()));
    }
    if tx.are_friends(from, to)? {
        return refuse(CommandError::AlreadyFriends(to.to_owned()));
    }
    if tx.exists(Cf::FriendRequests, &join(&[b"o", from.as_bytes(), to.as_bytes()]))? {
        return refuse(CommandError::RequestPending(to.to_owned()));
    }
    // Crossed requests: `to` already asked `from`, so this is an acceptance.
    let reverse = join(&[b"i", from.as_bytes(), to.as_bytes()]);
    if tx.exists(Cf::FriendRequests, &reverse)? {
        tx.delete(Cf::FriendRequests, reverse);
        tx.delete(Cf::FriendRequests, join(&[b"o", to.as_bytes(), from.as_bytes()]));
        befriend(tx, to, from, at)?;
        return ok(Applied::FriendRequest { accepted: true });
    }
    let rec = RequestRec { from: from.to_owned(), to: to.to_owned(), at };
    tx.put_json(Cf::FriendRequests, join(&[b"i", to.as_bytes(), from.as_bytes()]), &rec);
    tx.put_json(Cf::FriendRequests, join(&[b"o", from.as_bytes(), to.as_bytes()]), &rec);
    tx.emit(to, at, EventKind::FriendRequest { from: from.to_owned() })?;
    ok(Applied::FriendRequest { accepted: false })
}

fn befriend(tx: &mut Tx<'_>, a: &str, b: &str, at: Millis) -> Result<(), StorageError> {
    tx.put_json(Cf::Friends, join(&[a.as_bytes(), b.as_bytes()]), &FriendRec { since: at });
    tx.put_json(Cf::Friends, join(&[b.as_bytes(), a.as_bytes()]), &FriendRec { since: at });
    tx.emit(a, at, EventKind::FriendAdded { username: b.to_owned() })?;
    tx.emit(b, at, EventKind::FriendAdded { username: a.to_owned() })
}

fn create_group(
    tx: &mut Tx<'_>,
    group_id: &str,
    name: &str,
    creator: &str,
    members: &[String],
    at: Millis,
) -> Res<Applied> {
    if tx.exists(Cf::Groups, group_id.as_bytes())? {
        return refuse(CommandError::Conflict(format!("group id {group_id} already exists")));
    }
    let mut all = vec![creator.to_owned()];
    for m in members {
        if !all.contains(m) {
            all.push(m.clone());
        }
    }
    if all.len() > GROUP_MEMBERS_MAX {
        return refuse(CommandError::GroupFull(GROUP_MEMBERS_MAX));
    }
    for m in &all {
        if !tx.user_exists(m)? {
            return refuse(CommandError::UserNotFound(m.clone()));
        }
    }
    let chat_id = ChatId::group(group_id);
    let group =
        GroupRec { group_id: group_id.to_owned(), name: name.to_owned(), admin: creator.to_owned(), created_at: at };
    tx.put_json(Cf::Groups, group_id.as_bytes().to_vec(), &group);
    tx.put_chat(&ChatRec {
        chat_id: chat_id.clone(),
        members: all.clone(),
        last_seq: 0,
        created_at: at,
        updated_at: at,
    });
    for m in &all {
        tx.add_member_index(m, &chat_id, at);
        let kind = EventKind::GroupMemberAdded {
            group_id: group_id.to_owned(),
            chat_id: chat_id.clone(),
            name: name.to_owned(),
            username: m.clone(),
            by: creator.to_owned(),
        };
        tx.emit(m, at, kind)?;
    }
    ok(Applied::GroupCreated { group_id: group_id.to_owned(), chat_id })
}

/// The group and its chat, if `by` is a member (non-members cannot tell it exists).
fn group_for_member(tx: &Tx<'_>, group_id: &str, by: &str) -> Res<(GroupRec, ChatRec)> {
    let Some(group) = tx.get_json::<GroupRec>(Cf::Groups, group_id.as_bytes())? else {
        return refuse(CommandError::GroupNotFound);
    };
    let Some(chat) = tx.chat(&ChatId::group(group_id))? else {
        return refuse(CommandError::GroupNotFound);
    };
    if !chat.members.iter().any(|m| m == by) {
        return refuse(CommandError::GroupNotFound);
    }
    ok((group, chat))
}

fn add_member(tx: &mut Tx<'_>, group_id: &str, by: &str, username: &str, at: Millis) -> Res<Applied> {
    let (group, mut chat) = match group_for_member(tx, group_id, by)? {
        Ok(v) => v,
        Err(e) => return refuse(e),
    };
    if group.admin != by {
        return refuse(CommandError::NotAdmin);
    }
    if !tx.user_exists(username)? {
        return refuse(CommandError::UserNotFound(username.to_owned()));
    }
    if chat.members.iter().any(|m| m == username) {
        return refuse(CommandError::AlreadyMember(username.to_owned()));
    }
    if chat.members.len() >= GROUP_MEMBERS_MAX {
        return refuse(CommandError::GroupFull(GROUP_MEMBERS_MAX));
    }
    chat.members.push(username.to_owned());
    chat.updated_at = at;
    tx.put_chat(&chat);
    tx.add_member_index(username, &chat.chat_id, at);
    for m in &chat.members {
        let kind = EventKind::GroupMemberAdded {
            group_id: group_id.to_owned(),
            chat_id: chat.chat_id.clone(),
            name: group.name.clone(),
            username: username.to_owned(),
            by: by.to_owned(),
        };
        tx.emit(m, at, kind)?;
    }
    ok(Applied::Done)
}

fn remove_member(tx: &mut Tx<'_>, group_id: &str, by: &str, username: &str, at: Millis) -> Res<Applied> {
    let (mut group, mut chat) = match group_for_member(tx, group_id, by)? {
        Ok(v) => v,
        Err(e) => return refuse(e),
    };
    if by != username && group.admin != by {
        return refuse(CommandError::NotAdmin);
    }
    let Some(pos) = chat.members.iter().position(|m| m == username) else {
        return refuse(CommandError::NotMember(username.to_owned()));
    };
    let told = chat.members.clone();
    chat.members.remove(pos);
    chat.updated_at = at;
    if group.admin == username {
        // The longest-standing remaining member inherits the group (none left: it stays empty).
        if let Some(next) = chat.members.first() {
            group.admin = next.clone();
            tx.put_json(Cf::Groups, group_id.as_bytes().to_vec(), &group);
        }
    }
    tx.put_chat(&chat);
    tx.delete(Cf::Members, join(&[username.as_bytes(), chat.chat_id.to_string().as_bytes()]));
    for m in &told {
        let kind = EventKind::GroupMemberRemoved {
            group_id: group_id.to_owned(),
            chat_id: chat.chat_id.clone(),
            username: username.to_owned(),
            by: by.to_owned(),
        };
        tx.emit(m, at, kind)?;
    }
    ok(Applied::Done)
}

fn send_message(tx: &mut Tx<'_>, mut msg: Message, files: &[String]) -> Res<Applied> {
    let chat_key = msg.chat_id.to_string();
    let idem_key =
        msg.client_msg_id.as_ref().map(|c| join(&[msg.sender.as_bytes(), chat_key.as_bytes(), c.as_bytes()]));
    if let Some(key) = &idem_key {
        if let Some(first) = tx.get_json::<Applied>(Cf::Idempotency, key)? {
            return ok(first);
        }
    }
    let mut chat = match (&msg.chat_id, tx.chat(&msg.chat_id)?) {
        (ChatId::Dm(a, b), existing) => {
            let other = if *a == msg.sender {
                b
            } else if *b == msg.sender {
                a
            } else {
                return refuse(CommandError::ChatNotFound);
            };
            if !tx.are_friends(&msg.sender, other)? {
                return refuse(CommandError::NotFriends(other.clone()));
            }
            match existing {
                Some(chat) => chat,
                None => {
                    for user in [a, b] {
                        tx.add_member_index(user, &msg.chat_id, msg.sent_at);
                    }
                    let members = vec![a.clone(), b.clone()];
                    ChatRec {
                        chat_id: msg.chat_id.clone(),
                        members,
                        last_seq: 0,
                        created_at: msg.sent_at,
                        updated_at: msg.sent_at,
                    }
                }
            }
        }
        (ChatId::Group(_), Some(chat)) if chat.members.contains(&msg.sender) => chat,
        (ChatId::Group(_), _) => return refuse(CommandError::ChatNotFound),
    };
    for file_id in files {
        let Some(file) = tx.get_json::<FileRec>(Cf::Files, &join(&[b"m", file_id.as_bytes()]))? else {
            return refuse(CommandError::FileNotFound(file_id.clone()));
        };
        tx.put(Cf::Files, join(&[b"a", file_id.as_bytes(), chat_key.as_bytes()]), Vec::new());
        msg.files.push(FileRef {
            file_id: file.file_id,
            name: file.name,
            size: file.size,
            content_type: file.content_type,
        });
    }
    chat.last_seq += 1;
    chat.updated_at = msg.sent_at;
    msg.seq = chat.last_seq;
    tx.put_chat(&chat);
    tx.put_json(Cf::Messages, seq_key(chat_key.as_bytes(), msg.seq), &msg);
    let applied =
        Applied::MessageSent { chat_id: msg.chat_id.clone(), seq: msg.seq, id: msg.id.clone(), sent_at: msg.sent_at };
    if let Some(key) = idem_key {
        tx.put_json(Cf::Idempotency, key, &applied);
    }
    for m in &chat.members {
        tx.emit(m, msg.sent_at, EventKind::Message { message: msg.clone() })?;
    }
    ok(applied)
}
