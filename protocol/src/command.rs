//! Commands: every mutation of the replicated state, and what applying one yields.
//!
//! A command is fully determined before it is logged: the input node chooses ids, timestamps,
//! password hashes and token hashes, so applying it is a pure function of (state, command).

use crate::ids::ChatId;
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, chosen by the input node.
pub type Millis = u64;

/// Every mutation. Applied by `storage::StateMachine` on every storage peer, in log order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Register a user; refused if the name is taken.
    CreateAccount {
        /// Validated username.
        username: String,
        /// Optional display name.
        display_name: Option<String>,
        /// argon2id PHC string.
        password_hash: String,
        /// Creation time.
        at: Millis,
    },
    /// Start a session; only the token's SHA-256 is stored.
    CreateSession {
        /// Hex SHA-256 of the bearer token.
        token_hash: String,
        /// The session's user.
        username: String,
        /// When the token stops working.
        expires_at: Millis,
        /// Login time.
        at: Millis,
    },
    /// End a session (logout).
    DeleteSession {
        /// Hex SHA-256 of the bearer token.
        token_hash: String,
    },
    /// Ask `to` for friendship. If `to` already asked `from`, they become friends.
    SendFriendRequest {
        /// Requester.
        from: String,
        /// Recipient.
        to: String,
        /// Request time.
        at: Millis,
    },
    /// `to` accepts or declines the pending request from `from`.
    RespondFriendRequest {
        /// Who asked.
        from: String,
        /// Who answers.
        to: String,
        /// Accept (true) or decline (false).
        accept: bool,
        /// Answer time.
        at: Millis,
    },
    /// End a friendship (both directions).
    RemoveFriend {
        /// Who ends it.
        user: String,
        /// The former friend.
        friend: String,
        /// When.
        at: Millis,
    },
    /// Create a group; the creator becomes its admin.
    CreateGroup {
        /// Fresh random id chosen by the input node.
        group_id: String,
        /// Validated name.
        name: String,
        /// Creator and admin.
        creator: String,
        /// Initial members besides the creator.
        members: Vec<String>,
        /// Creation time.
        at: Millis,
    },
    /// The group admin adds `username`.
    AddGroupMember {
        /// The group.
        group_id: String,
        /// Who adds (must be admin).
        by: String,
        /// Who is added.
        username: String,
        /// When.
        at: Millis,
    },
    /// The admin removes `username`, or a member leaves (`by == username`).
    RemoveGroupMember {
        /// The group.
        group_id: String,
        /// Who removes.
        by: String,
        /// Who is removed.
        username: String,
        /// When.
        at: Millis,
    },
    /// Append a message to a chat. The state machine assigns its per-chat seq.
    SendMessage {
        /// Target chat.
        chat_id: ChatId,
        /// Fresh random message id.
        id: String,
        /// Author.
        sender: String,
        /// Body.
        text: String,
        /// Attached file ids.
        files: Vec<String>,
        /// Client idempotency key: a retry returns the first answer.
        client_msg_id: Option<String>,
        /// Send time.
        sent_at: Millis,
    },
    /// Store one content-addressed file chunk (idempotent).
    PutFileChunk {
        /// Hex SHA-256 of `data`.
        hash: String,
        /// Chunk bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Publish an uploaded file made of previously stored chunks.
    CreateFile {
        /// Fresh random id.
        file_id: String,
        /// Uploader: may always read it.
        uploader: String,
        /// Original name.
        name: String,
        /// MIME type.
        content_type: String,
        /// Total bytes.
        size: u64,
        /// Hex SHA-256 of the whole content.
        sha256: String,
        /// Chunk hashes in order.
        chunks: Vec<String>,
        /// Upload time.
        at: Millis,
    },
}

/// What a successfully applied command yields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Applied {
    /// Nothing to report beyond success.
    Done,
    /// A friend request is pending, or became a friendship at once (crossed requests).
    FriendRequest {
        /// True when the users are now friends.
        accepted: bool,
    },
    /// A group was created.
    GroupCreated {
        /// Group id.
        group_id: String,
        /// Its chat.
        chat_id: ChatId,
    },
    /// A message has its place in the chat.
    MessageSent {
        /// Chat.
        chat_id: ChatId,
        /// Per-chat sequence number (1, 2, 3, ...).
        seq: u64,
        /// Message id.
        id: String,
        /// Send time.
        sent_at: Millis,
    },
}

/// A deterministic refusal: the command changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "error", content = "detail", rename_all = "snake_case")]
pub enum CommandError {
    /// Registration with a taken name.
    #[error("username '{0}' is already taken")]
    UsernameTaken(String),
    /// A named user does not exist.
    #[error("user '{0}' not found")]
    UserNotFound(String),
    /// Friend request to oneself.
    #[error("you cannot befriend yourself")]
    SelfFriendship,
    /// Friend request between friends.
    #[error("you are already friends with '{0}'")]
    AlreadyFriends(String),
    /// Duplicate pending request.
    #[error("a friend request to '{0}' is already pending")]
    RequestPending(String),
    /// Accept/decline without a pending request.
    #[error("no pending friend request from '{0}'")]
    NoSuchRequest(String),
    /// DM or unfriend without a friendship.
    #[error("you are not friends with '{0}'")]
    NotFriends(String),
    /// Unknown group.
    #[error("group not found")]
    GroupNotFound,
    /// Unknown chat, or one the caller is not in (indistinguishable on purpose).
    #[error("chat not found")]
    ChatNotFound,
    /// Admin-only action.
    #[error("only the group admin may do that")]
    NotAdmin,
    /// Adding an existing member.
    #[error("'{0}' is already a member")]
    AlreadyMember(String),
    /// Removing a non-member.
    #[error("'{0}' is not a member")]
    NotMember(String),
    /// Group at its member cap.
    #[error("the group is full ({0} members)")]
    GroupFull(usize),
    /// Attached or published file parts missing.
    #[error("file '{0}' not found")]
    FileNotFound(String),
    /// A reused id (group, message, file) or idempotency key with different content.
    #[error("{0}")]
    Conflict(String),
}
