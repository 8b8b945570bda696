//! Events: what users are told. Each user has a gapless event log (seq 1, 2, 3, ...); a stream
//! is "that user's log from seq N".

use crate::command::Millis;
use crate::ids::ChatId;
use serde::{Deserialize, Serialize};

/// One entry of a user's event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the user's log; also the SSE event id.
    pub seq: u64,
    /// When the causing command was issued.
    pub at: Millis,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A message in one of the user's chats (including their own, for their other devices).
    Message {
        /// The message.
        message: Message,
    },
    /// Someone asked the user for friendship.
    FriendRequest {
        /// Requester.
        from: String,
    },
    /// Two users became friends (sent to both).
    FriendAdded {
        /// The new friend.
        username: String,
    },
    /// The user's request was declined.
    FriendRequestDeclined {
        /// Who declined.
        by: String,
    },
    /// A friendship ended (sent to both).
    FriendRemoved {
        /// The former friend.
        username: String,
    },
    /// Someone joined a group the user is in (or the user joined).
    GroupMemberAdded {
        /// Group.
        group_id: String,
        /// Its chat.
        chat_id: ChatId,
        /// Group name.
        name: String,
        /// Who joined.
        username: String,
        /// Who added them.
        by: String,
    },
    /// Someone left or was removed (the removed user is told too).
    GroupMemberRemoved {
        /// Group.
        group_id: String,
        /// Its chat.
        chat_id: ChatId,
        /// Who left.
        username: String,
        /// Who removed them (themselves when leaving).
        by: String,
    },
}

impl EventKind {
    /// The SSE `event:` name.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Message { .. } => "message",
            EventKind::FriendRequest { .. } => "friend_request",
            EventKind::FriendAdded { .. } => "friend_added",
            EventKind::FriendRequestDeclined { .. } => "friend_request_declined",
            EventKind::FriendRemoved { .. } => "friend_removed",
            EventKind::GroupMemberAdded { .. } => "group_member_added",
            EventKind::GroupMemberRemoved { .. } => "group_member_removed",
        }
    }
}

/// A stored chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Chat.
    pub chat_id: ChatId,
    /// Per-chat sequence number.
    pub seq: u64,
    /// Message id.
    pub id: String,
    /// Author.
    pub sender: String,
    /// Body.
    pub text: String,
    /// Attachments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileRef>,
    /// Idempotency key, if the client gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    /// Send time.
    pub sent_at: Millis,
}

/// An attachment as shown in a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// File id (download with `GET /api/v1/files/{file_id}`).
    pub file_id: String,
    /// Original name.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// MIME type.
    pub content_type: String,
}
