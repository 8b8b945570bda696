//! HTTP request and response bodies, and the error shape
//! `{"error":{"code":"snake_case_code","message":"human text"}}`.

use crate::command::{CommandError, Millis};
use crate::event::Message;
use crate::ids::{ChatId, ValidationError};
use serde::{Deserialize, Serialize};

/// `POST /api/v1/accounts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// 3-32 of `[a-z0-9_.-]`.
    pub username: String,
    /// At least 8 characters.
    pub password: String,
    /// Optional display name.
    #[serde(default)]
    pub display_name: Option<String>,
}

/// `POST /api/v1/sessions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Username.
    pub username: String,
    /// Password.
    pub password: String,
}

/// A new session's bearer token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionResponse {
    /// Bearer token (shown once; only its hash is stored).
    pub token: String,
    /// Expiry, ms since the epoch.
    pub expires_at: Millis,
    /// Whose session.
    pub username: String,
}

/// A user's public profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Username.
    pub username: String,
    /// Display name (the username when none was given).
    pub display_name: String,
    /// Registration time.
    pub created_at: Millis,
}

/// `POST /api/v1/friend-requests`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FriendRequestBody {
    /// Recipient's username.
    pub to: String,
}

/// Answer to a friend request: pending, or accepted at once when the requests crossed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FriendRequestResult {
    /// Recipient.
    pub to: String,
    /// "pending" or "accepted".
    pub status: String,
}

/// One pending friend request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FriendRequestInfo {
    /// Requester.
    pub from: String,
    /// Recipient.
    pub to: String,
    /// When it was sent.
    pub at: Millis,
}

/// `GET /api/v1/friend-requests`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FriendRequests {
    /// Requests to the caller.
    pub incoming: Vec<FriendRequestInfo>,
    /// Requests by the caller.
    pub outgoing: Vec<FriendRequestInfo>,
}

/// One friend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Friend {
    /// Username.
    pub username: String,
    /// Friends since.
    pub since: Millis,
}

/// `POST .../messages`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendMessageRequest {
    /// Body, up to 16 KiB.
    #[serde(default)]
    pub text: String,
    /// Idempotency key: a retry with the same key returns the first answer.
    #[serde(default)]
    pub client_msg_id: Option<String>,
    /// Attached file ids.
    #[serde(default)]
    pub files: Vec<String>,
}

/// A message's place in its chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendMessageResponse {
    /// Chat.
    pub chat_id: ChatId,
    /// Per-chat sequence number.
    pub seq: u64,
    /// Message id.
    pub id: String,
    /// Send time.
    pub sent_at: Millis,
}

/// A page of history, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessagesPage {
    /// Messages with seq > `after`, gapless.
    pub messages: Vec<Message>,
    /// The chat's last seq when read.
    pub last_seq: u64,
}

/// `POST /api/v1/groups`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGroupRequest {
    /// 1-100 characters.
    pub name: String,
    /// Initial members besides the creator.
    #[serde(default)]
    pub members: Vec<String>,
}

/// A created group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupCreated {
    /// Group id.
    pub group_id: String,
    /// Its chat.
    pub chat_id: ChatId,
}

/// `POST /api/v1/groups/{id}/members`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMemberRequest {
    /// Who to add.
    pub username: String,
}

/// A group as its members see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// Group id.
    pub group_id: String,
    /// Its chat.
    pub chat_id: ChatId,
    /// Name.
    pub name: String,
    /// The admin.
    pub admin: String,
    /// Members, in joining order.
    pub members: Vec<String>,
    /// Creation time.
    pub created_at: Millis,
}

/// One entry of `GET /api/v1/chats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatSummary {
    /// Chat id.
    pub chat_id: ChatId,
    /// "dm" or "group".
    pub kind: String,
    /// The other user (DM) or the group name.
    pub name: String,
    /// Group id (groups only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// Members.
    pub members: Vec<String>,
    /// Seq of the newest message (0: none yet).
    pub last_seq: u64,
    /// Time of the newest message (or creation).
    pub updated_at: Millis,
}

/// An uploaded file's description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// File id.
    pub file_id: String,
    /// Bytes.
    pub size: u64,
    /// Hex SHA-256 of the content.
    pub sha256: String,
    /// Name.
    pub name: String,
    /// MIME type.
    pub content_type: String,
}

/// The error body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Details.
    pub error: ErrorDetail,
}

/// Code and message of an error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable snake_case code for programs.
    pub code: String,
    /// Text for humans.
    pub message: String,
}

/// Stable error codes with their HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 400: malformed or invalid input.
    InvalidInput,
    /// 401: missing, unknown or expired token.
    Unauthorized,
    /// 401: wrong username or password.
    InvalidCredentials,
    /// 403: authenticated but not allowed.
    Forbidden,
    /// 404.
    NotFound,
    /// 409.
    Conflict,
    /// 413.
    PayloadTooLarge,
    /// 415: the body is not JSON (missing `Content-Type: application/json`).
    UnsupportedMediaType,
    /// 429.
    RateLimited,
    /// 503: no quorum / storage unavailable.
    Unavailable,
    /// 500.
    Internal,
}

impl ErrorCode {
    /// HTTP status.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::InvalidInput => 400,
            ErrorCode::Unauthorized | ErrorCode::InvalidCredentials => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }

    /// Default snake_case code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::InvalidCredentials => "invalid_credentials",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_content_type",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl From<&ValidationError> for ErrorCode {
    fn from(_: &ValidationError) -> Self {
        ErrorCode::InvalidInput
    }
}

impl CommandError {
    /// The specific snake_case code and its class.
    pub fn code(&self) -> (&'static str, ErrorCode) {
        use CommandError::*;
        match self {
            UsernameTaken(_) => ("username_taken", ErrorCode::Conflict),
            UserNotFound(_) => ("user_not_found", ErrorCode::NotFound),
            SelfFriendship => ("self_friendship", ErrorCode::InvalidInput),
            AlreadyFriends(_) => ("already_friends", ErrorCode::Conflict),
            RequestPending(_) => ("request_pending", ErrorCode::Conflict),
            NoSuchRequest(_) => ("no_such_request", ErrorCode::NotFound),
            NotFriends(_) => ("not_friends", ErrorCode::Forbidden),
            GroupNotFound => ("group_not_found", ErrorCode::NotFound),
            ChatNotFound => ("chat_not_found", ErrorCode::NotFound),
            NotAdmin => ("not_admin", ErrorCode::Forbidden),
            AlreadyMember(_) => ("already_member", ErrorCode::Conflict),
            NotMember(_) => ("not_member", ErrorCode::NotFound),
            GroupFull(_) => ("group_full", ErrorCode::Conflict),
            FileNotFound(_) => ("file_not_found", ErrorCode::NotFound),
            Conflict(_) => ("conflict", ErrorCode::Conflict),
        }
    }
}

/// `GET /api/v1/cluster`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterView {
    /// This node.
    #[serde(rename = "self")]
    pub this: NodeView,
    /// Coordinator's PeerId.
    pub coordinator: Option<String>,
    /// Assignment epoch.
    pub epoch: u64,
    /// Every known live member.
    pub members: Vec<MemberView>,
    /// PeerId of the storage log leader.
    pub storage_leader: Option<String>,
    /// The signed assignment this node holds (verify it against `coordinator`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment: Option<crate::cluster::SignedAssignment>,
    /// This node's election counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub election: Option<ElectionStats>,
    /// The replicated log as this node sees it (leader, term, commit, per-peer progress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft: Option<RaftView>,
}

/// The replicated log, as one node sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RaftView {
    /// This node's Raft id (derived from its PeerId).
    pub node_id: u64,
    /// `leader`, `follower`, `candidate` or `learner`.
    pub state: String,
    /// PeerId of the Raft leader, if known.
    pub leader: Option<String>,
    /// Current term.
    pub term: u64,
    /// Highest index known committed (a majority of voters hold it): exact on the leader, the
    /// leader's last report elsewhere.
    pub commit_index: u64,
    /// Last index appended to this node's log.
    pub last_log_index: u64,
    /// Last index applied to this node's state.
    pub applied_index: u64,
    /// Last index covered by this node's snapshot.
    pub snapshot_index: u64,
    /// Last index purged from this node's log (0: none). A leader keeps the entries between
    /// it and `snapshot_index` for members behind its snapshot.
    #[serde(default)]
    pub purged_index: u64,
    /// Snapshots this node installed from a leader since it started.
    pub snapshots_installed: u64,
    /// Snapshot transfers from a leader this node began receiving since it started. More than
    /// `snapshots_installed` means a transfer was cut off and begun again.
    #[serde(default)]
    pub snapshot_transfers: u64,
    /// Log index of the membership in force here (0: none). On the leader, at most
    /// `applied_index` means that membership is committed.
    #[serde(default)]
    pub membership_index: u64,
    /// This node knows the cluster has a replicated log (it belonged to it, or heard from a
    /// node that did). With no leader known, every holder of the log is down: writes and reads
    /// answer 503 until one returns, and no new log is started.
    #[serde(default)]
    pub log_seen: bool,
    /// Voters and learners (PeerIds) with their replication progress (leader only).
    pub peers: Vec<RaftPeerView>,
}

/// One storage peer in the Raft membership.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RaftPeerView {
    /// PeerId.
    pub peer_id: String,
    /// Voter (true) or learner.
    pub voter: bool,
    /// Highest index the leader knows this peer holds (None: not known / not leader).
    pub matched_index: Option<u64>,
    /// `commit_index - matched_index`: how far behind it is.
    pub lag: Option<u64>,
}

/// Election counters of one node (what it sent and refused).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ElectionStats {
    /// Round of the current coordinator.
    pub round: u64,
    /// Election messages sent.
    pub election_msgs: u64,
    /// Elected (announcement) messages sent.
    pub elected_msgs: u64,
    /// Assignments refused for a bad signature.
    pub rejected_forged: u64,
    /// Assignments ignored for an old epoch.
    pub ignored_stale: u64,
}

/// This node in the cluster view.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    /// PeerId.
    pub peer_id: String,
    /// "storage", "input", "relay".
    pub roles: Vec<String>,
    /// HTTP address.
    pub http: Option<String>,
    /// libp2p listen addresses.
    pub addrs: Vec<String>,
}

/// A member in the cluster view.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberView {
    /// PeerId.
    pub peer_id: String,
    /// Roles.
    pub roles: Vec<String>,
    /// HTTP address.
    pub http: Option<String>,
}
