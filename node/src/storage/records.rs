//! Records as stored in RocksDB values (JSON). No maps with random order, so the same state
//! always serializes to the same bytes.

use chorus_protocol::command::Millis;
use chorus_protocol::ChatId;
use serde::{Deserialize, Serialize};

/// `users` CF: username -> UserRec.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRec {
    /// Username.
    pub username: String,
    /// Display name, if set.
    pub display_name: Option<String>,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Registration time.
    pub created_at: Millis,
}

/// `sessions` CF: sha256(token) hex -> SessionRec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRec {
    /// Owner.
    pub username: String,
    /// Expiry.
    pub expires_at: Millis,
    /// Login time.
    pub created_at: Millis,
}

/// `friends` CF: user \0 friend -> FriendRec (both directions stored).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FriendRec {
    /// Since.
    pub since: Millis,
}

/// `friend_requests` CF: `i \0 to \0 from` and `o \0 from \0 to` -> RequestRec.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestRec {
    /// Requester.
    pub from: String,
    /// Recipient.
    pub to: String,
    /// Sent.
    pub at: Millis,
}

/// `groups` CF: group_id -> GroupRec.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupRec {
    /// Group id.
    pub group_id: String,
    /// Name.
    pub name: String,
    /// Admin (the creator until they leave; then the longest-standing member).
    pub admin: String,
    /// Created.
    pub created_at: Millis,
}

/// `chats` CF: chat_id -> ChatRec. Members live here so apply never scans.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatRec {
    /// Chat id.
    pub chat_id: ChatId,
    /// Members in joining order.
    pub members: Vec<String>,
    /// Seq of the newest message.
    pub last_seq: u64,
    /// Created.
    pub created_at: Millis,
    /// Newest message or membership change.
    pub updated_at: Millis,
}

/// `members` CF: username \0 chat_id -> MemberRec (index of a user's chats).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberRec {
    /// Joined.
    pub joined_at: Millis,
}

/// `files` CF, `m \0 file_id` -> FileRec.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileRec {
    /// File id.
    pub file_id: String,
    /// Uploader.
    pub uploader: String,
    /// Name.
    pub name: String,
    /// MIME type.
    pub content_type: String,
    /// Bytes.
    pub size: u64,
    /// Hex SHA-256 of the content.
    pub sha256: String,
    /// Chunk hashes, in order (`c \0 hash` -> bytes).
    pub chunks: Vec<String>,
    /// Uploaded.
    pub created_at: Millis,
}
