//! The chat domain: authenticate, authorize, validate, build [`Command`]s, submit them to the
//! log, and answer queries. Knows nothing of HTTP: the api and the tests call it.
//!
//! Rules that depend on state (friendship, membership, admin rights) are decided by the
//! state machine when the command applies, so concurrent requests cannot race past them; the
//! service adds what needs a clock, randomness or hashing, and the read-side checks.
//!
//! `files` holds uploads and downloads, `events` the event log streams, `auth` passwords and
//! tokens, `hub` the per-user stream wake-ups.

mod auth;
mod events;
mod files;
mod hub;

use auth::Cached;
pub use auth::SessionCache;
pub use events::EVENTS_LIMIT_MAX;
pub use files::CHUNK_SIZE;
pub use hub::{Hub, Tip};

use crate::replication::{Log, SubmitError};
use crate::storage::read::Query;
use crate::storage::records::{SessionRec, UserRec};
use crate::storage::StorageError;
use chorus_protocol::api::*;
use chorus_protocol::command::Millis;
use chorus_protocol::ids::{self, ValidationError};
use chorus_protocol::{Applied, ChatId, Command, CommandError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most messages one history page returns.
pub const HISTORY_LIMIT_MAX: usize = 500;

/// Service settings.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// How long a login lasts.
    pub session_ttl: Duration,
    /// Largest accepted upload.
    pub max_file_size: u64,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self { session_ttl: Duration::from_secs(30 * 24 * 3600), max_file_size: 50 * 1024 * 1024 }
    }
}

/// Why a request failed. Each maps to one HTTP status in the api.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Malformed input.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The state machine refused the command (nothing changed).
    #[error(transparent)]
    Refused(#[from] CommandError),
    /// No, unknown or expired token.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Wrong username or password.
    #[error("invalid username or password")]
    InvalidCredentials,
    /// Too big.
    #[error("{0}")]
    TooLarge(String),
    /// Cannot commit now.
    #[error(transparent)]
    Unavailable(#[from] SubmitError),
    /// A bug or a broken disk.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StorageError> for ServiceError {
    fn from(e: StorageError) -> Self {
        tracing::error!(error = %e, "storage read failed");
        ServiceError::Internal(e.to_string())
    }
}

type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// An authenticated user.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Username.
    pub username: String,
    token_hash: String,
}

/// The chat service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Service {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    log: Log,
    hub: Arc<Hub>,
    sessions: Arc<SessionCache>,
    config: ServiceConfig,
    uploads: tokio::sync::Semaphore,
    /// argon2 runs at most this many at once: it is CPU-bound (more gains nothing) and each run
    /// takes 19 MiB, which the allocator keeps per thread afterwards.
    argon2: tokio::sync::Semaphore,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
}

fn fresh_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Service {
    /// A service reading and writing through `log`, waking streams through `hub`,
    /// remembering sessions in `sessions` (which the node clears of revoked ones).
    pub fn new(log: Log, hub: Arc<Hub>, sessions: Arc<SessionCache>, config: ServiceConfig) -> Self {
        let uploads = tokio::sync::Semaphore::new(files::CONCURRENT_UPLOADS);
        let argon2 = tokio::sync::Semaphore::new(2);
        Self { inner: Arc::new(Inner { log, hub, sessions, config, uploads, argon2 }) }
    }

    /// The settings in force.
    pub fn config(&self) -> &ServiceConfig {
        &self.inner.config
    }

    /// Reads from the replicated state (on the storage leader, seeing this node's writes).
    /// `T` is the answer type [`Query`] documents for the variant.
    async fn read<T: serde::de::DeserializeOwned>(&self, query: Query) -> Result<T> {
        Ok(self.inner.log.read(query).await?)
    }

    async fn submit(&self, command: Command) -> Result<Applied> {
        Ok(self.inner.log.submit(command).await??)
    }

    // ---- accounts and sessions ----

    /// Registers a user.
    pub async fn register(&self, req: RegisterRequest) -> Result<Profile> {
        ids::validate_username(&req.username)?;
        ids::validate_password(&req.password)?;
        let display_name = ids::normalize_display_name(req.display_name.as_deref())?;
        if self.read::<Option<UserRec>>(Query::User(req.username.clone())).await?.is_some() {
            return Err(CommandError::UsernameTaken(req.username).into());
        }
        let password = req.password;
        let slot = self.inner.argon2.acquire().await.map_err(|e| ServiceError::Internal(e.to_string()))?;
        let password_hash = tokio::task::spawn_blocking(move || auth::hash_password(&password))
            .await
            .map_err(|e| ServiceError::Internal(e.to_string()))?
            .map_err(ServiceError::Internal)?;
        drop(slot);
        let at = now_ms();
        let username = req.username;
        let cmd = Command::CreateAccount {
            username: username.clone(),
            display_name: display_name.clone(),
            password_hash,
            at,
        };
        self.submit(cmd).await?;
        Ok(Profile { display_name: display_name.unwrap_or_else(|| username.clone()), username, created_at: at })
    }

    /// Checks a password and opens a session.
    pub async fn login(&self, req: LoginRequest) -> Result<SessionResponse> {
        if ids::validate_username(&req.username).is_err() || req.password.len() > ids::PASSWORD_MAX {
            return Err(ServiceError::InvalidCredentials);
        }
        let user: Option<UserRec> = self.read(Query::User(req.username.clone())).await?;
        let phc = user.as_ref().map(|u| u.password_hash.clone());
        let password = req.password;
        let slot = self.inner.argon2.acquire().await.map_err(|e| ServiceError::Internal(e.to_string()))?;
        let ok = tokio::task::spawn_blocking(move || {
            let matched = auth::verify_password(&password, phc.as_deref().unwrap_or_else(|| auth::dummy_hash()));
            matched && phc.is_some()
        })
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
        drop(slot);
        if !ok {
            return Err(ServiceError::InvalidCredentials);
        }
        let token = auth::new_token();
        let at = now_ms();
        let expires_at = at + self.inner.config.session_ttl.as_millis() as Millis;
        let cmd = Command::CreateSession {
            token_hash: auth::token_hash(&token),
            username: req.username.clone(),
            expires_at,
            at,
        };
        self.submit(cmd).await?;
        Ok(SessionResponse { token, expires_at, username: req.username })
    }

    /// Ends the caller's session.
    pub async fn logout(&self, caller: &Caller) -> Result<()> {
        self.submit(Command::DeleteSession { token_hash: caller.token_hash.clone() }).await?;
        self.inner.sessions.revoke(std::slice::from_ref(&caller.token_hash));
        Ok(())
    }

    /// The user behind a bearer token.
    pub async fn authenticate(&self, token: &str) -> Result<Caller> {
        if token.is_empty() || token.len() > 256 {
            return Err(ServiceError::Unauthorized("invalid or expired token"));
        }
        let token_hash = auth::token_hash(token);
        let session = match self.inner.sessions.get(&token_hash, Instant::now()) {
            Cached::Hit(s) => Some(s),
            Cached::Refresh(s) => {
                let (svc, hash, started) = (self.clone(), token_hash.clone(), Instant::now());
                tokio::spawn(async move {
                    let read = svc.read::<Option<SessionRec>>(Query::Session(hash.clone())).await.map_err(|_| ());
                    svc.inner.sessions.refreshed(&hash, read, started);
                });
                Some(s)
            }
            Cached::Miss => {
                let started = Instant::now();
                let s: Option<SessionRec> = self.read(Query::Session(token_hash.clone())).await?;
                if let Some(s) = &s {
                    self.inner.sessions.put(token_hash.clone(), s.clone(), started);
                }
                s
            }
        };
        match session {
            Some(s) if s.expires_at > now_ms() => Ok(Caller { username: s.username, token_hash }),
            _ => Err(ServiceError::Unauthorized("invalid or expired token")),
        }
    }

    /// A public profile.
    pub async fn profile(&self, username: &str) -> Result<Profile> {
        if ids::validate_username(username).is_err() {
            return Err(CommandError::UserNotFound(username.to_owned()).into());
        }
        let user: Option<UserRec> = self.read(Query::User(username.to_owned())).await?;
        let u = user.ok_or_else(|| CommandError::UserNotFound(username.to_owned()))?;
        Ok(Profile {
            display_name: u.display_name.unwrap_or_else(|| u.username.clone()),
            username: u.username,
            created_at: u.created_at,
        })
    }

    // ---- friends ----

    /// Asks `to` for friendship.
    pub async fn send_friend_request(&self, caller: &Caller, to: &str) -> Result<FriendRequestResult> {
        ids::validate_username(to)?;
        let cmd = Command::SendFriendRequest { from: caller.username.clone(), to: to.to_owned(), at: now_ms() };
        let accepted = matches!(self.submit(cmd).await?, Applied::FriendRequest { accepted: true });
        Ok(FriendRequestResult { to: to.to_owned(), status: if accepted { "accepted" } else { "pending" }.into() })
    }

    /// Pending requests to and from the caller.
    pub async fn friend_requests(&self, caller: &Caller) -> Result<FriendRequests> {
        self.read(Query::FriendRequests(caller.username.clone())).await
    }

    /// Accepts or declines the request from `from`.
    pub async fn respond_friend_request(&self, caller: &Caller, from: &str, accept: bool) -> Result<()> {
        ids::validate_username(from)?;
        let cmd =
            Command::RespondFriendRequest { from: from.to_owned(), to: caller.username.clone(), accept, at: now_ms() };
        self.submit(cmd).await?;
        Ok(())
    }

    /// The caller's friends.
    pub async fn friends(&self, caller: &Caller) -> Result<Vec<Friend>> {
        self.read(Query::Friends(caller.username.clone())).await
    }

    /// Ends a friendship.
    pub async fn unfriend(&self, caller: &Caller, friend: &str) -> Result<()> {
        ids::validate_username(friend)?;
        let cmd = Command::RemoveFriend { user: caller.username.clone(), friend: friend.to_owned(), at: now_ms() };
        self.submit(cmd).await?;
        Ok(())
    }

    // ---- chats and messages ----

    /// The chats the caller is in.
    pub async fn chats(&self, caller: &Caller) -> Result<Vec<ChatSummary>> {
        self.read(Query::ChatsOf(caller.username.clone())).await
    }

    /// Sends a DM to a friend.
    pub async fn send_dm(&self, caller: &Caller, to: &str, req: SendMessageRequest) -> Result<SendMessageResponse> {
        ids::validate_username(to)?;
        if to == caller.username {
            return Err(CommandError::SelfFriendship.into());
        }
        self.send(caller, ChatId::dm(&caller.username, to), req).await
    }

    /// Sends to a chat by id (DM or group).
    pub async fn send_to_chat(
        &self,
        caller: &Caller,
        chat_id: &str,
        req: SendMessageRequest,
    ) -> Result<SendMessageResponse> {
        let chat_id = chat_id.parse::<ChatId>().map_err(|_| CommandError::ChatNotFound)?;
        self.send(caller, chat_id, req).await
    }

    async fn send(&self, caller: &Caller, chat_id: ChatId, req: SendMessageRequest) -> Result<SendMessageResponse> {
        ids::validate_message(&req.text, &req.files)?;
        if let Some(c) = &req.client_msg_id {
            ids::validate_client_msg_id(c)?;
        }
        // Attach each file once, in the order given.
        let mut seen = std::collections::HashSet::new();
        let mut files = req.files;
        files.retain(|f| seen.insert(f.clone()));
        if !files.is_empty() {
            let query = Query::FirstInvisible { files: files.clone(), user: caller.username.clone() };
            let missing: Option<String> = self.read(query).await?;
            if let Some(f) = missing {
                return Err(CommandError::FileNotFound(f).into());
            }
        }
        let cmd = Command::SendMessage {
            chat_id,
            id: fresh_id(),
            sender: caller.username.clone(),
            text: req.text,
            files,
            client_msg_id: req.client_msg_id,
            sent_at: now_ms(),
        };
        match self.submit(cmd).await? {
            Applied::MessageSent { chat_id, seq, id, sent_at } => Ok(SendMessageResponse { chat_id, seq, id, sent_at }),
            other => Err(ServiceError::Internal(format!("unexpected outcome {other:?}"))),
        }
    }

    /// History of a chat the caller is in: seq > `after`, oldest first.
    pub async fn messages(
        &self,
        caller: &Caller,
        chat_id: &str,
        after: u64,
        limit: Option<usize>,
    ) -> Result<MessagesPage> {
        let chat_id = chat_id.parse::<ChatId>().map_err(|_| CommandError::ChatNotFound)?;
        let limit = limit.unwrap_or(100).clamp(1, HISTORY_LIMIT_MAX);
        let query = Query::Messages { chat: chat_id, user: caller.username.clone(), after, limit };
        self.read::<Option<MessagesPage>>(query).await?.ok_or_else(|| CommandError::ChatNotFound.into())
    }

    // ---- groups ----

    /// Creates a group with the caller as admin.
    pub async fn create_group(&self, caller: &Caller, req: CreateGroupRequest) -> Result<GroupCreated> {
        let name = ids::normalize_group_name(&req.name)?;
        for m in &req.members {
            ids::validate_username(m)?;
        }
        if req.members.len() >= ids::GROUP_MEMBERS_MAX {
            return Err(CommandError::GroupFull(ids::GROUP_MEMBERS_MAX).into());
        }
        let cmd = Command::CreateGroup {
            group_id: fresh_id(),
            name,
            creator: caller.username.clone(),
            members: req.members,
            at: now_ms(),
        };
        match self.submit(cmd).await? {
            Applied::GroupCreated { group_id, chat_id } => Ok(GroupCreated { group_id, chat_id }),
            other => Err(ServiceError::Internal(format!("unexpected outcome {other:?}"))),
        }
    }

    /// A group the caller is in.
    pub async fn group(&self, caller: &Caller, group_id: &str) -> Result<Group> {
        if !ids::is_group_id(group_id) {
            return Err(CommandError::GroupNotFound.into());
        }
        let query = Query::Group { group: group_id.to_owned(), user: caller.username.clone() };
        self.read::<Option<Group>>(query).await?.ok_or_else(|| CommandError::GroupNotFound.into())
    }

    /// The admin adds a member.
    pub async fn add_member(&self, caller: &Caller, group_id: &str, username: &str) -> Result<()> {
        if !ids::is_group_id(group_id) {
            return Err(CommandError::GroupNotFound.into());
        }
        ids::validate_username(username)?;
        let cmd = Command::AddGroupMember {
            group_id: group_id.into(),
            by: caller.username.clone(),
            username: username.into(),
            at: now_ms(),
        };
        self.submit(cmd).await?;
        Ok(())
    }

    /// The admin removes a member, or the caller leaves (`username` is the caller).
    pub async fn remove_member(&self, caller: &Caller, group_id: &str, username: &str) -> Result<()> {
        if !ids::is_group_id(group_id) {
            return Err(CommandError::GroupNotFound.into());
        }
        ids::validate_username(username)?;
        let cmd = Command::RemoveGroupMember {
            group_id: group_id.into(),
            by: caller.username.clone(),
            username: username.into(),
            at: now_ms(),
        };
        self.submit(cmd).await?;
        Ok(())
    }

    /// Index of the last applied log entry.
    pub async fn applied_index(&self) -> Result<u64> {
        self.read(Query::AppliedIndex).await
    }
}
