//! Identifiers and input validation. Every limit a user can hit is a constant here.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Shortest allowed username.
pub const USERNAME_MIN: usize = 3;
/// Longest allowed username.
pub const USERNAME_MAX: usize = 32;
/// Shortest allowed password (bytes).
pub const PASSWORD_MIN: usize = 8;
/// Longest accepted password (bytes): argon2 input stays bounded.
pub const PASSWORD_MAX: usize = 1024;
/// Longest display name (characters).
pub const DISPLAY_NAME_MAX: usize = 64;
/// Longest message text (UTF-8 bytes).
pub const MESSAGE_TEXT_MAX: usize = 16 * 1024;
/// Most files one message may carry.
pub const MESSAGE_FILES_MAX: usize = 10;
/// Longest client-chosen idempotency key.
pub const CLIENT_MSG_ID_MAX: usize = 128;
/// Longest group name (characters).
pub const GROUP_NAME_MAX: usize = 100;
/// Most members a group may have: keeps event fan-out per message cheap.
pub const GROUP_MEMBERS_MAX: usize = 256;
/// Longest stored file name (bytes).
pub const FILE_NAME_MAX: usize = 255;

/// Names that would shadow a top-level route (`/{username}` is a profile page).
pub const RESERVED_USERNAMES: &[&str] = &[
    "api",
    "admin",
    "healthz",
    "readyz",
    "metrics",
    "static",
    "assets",
    "favicon.ico",
    "robots.txt",
    "login",
    "logout",
    "register",
    "index.html",
    "ws",
    "events",
    "root",
    "system",
    "chorus",
];

/// Why an input was refused. The message is meant for the end user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ValidationError {
    /// The offending field.
    pub field: &'static str,
    /// Human-readable reason.
    pub message: String,
}

impl ValidationError {
    /// A refusal of `field` for `message`.
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self { field, message: message.into() }
    }
}

/// Checks a username: 3-32 characters of `[a-z0-9_.-]`, not reserved.
pub fn validate_username(name: &str) -> Result<(), ValidationError> {
    let len = name.len();
    if !(USERNAME_MIN..=USERNAME_MAX).contains(&len) {
        return Err(ValidationError::new(
            "username",
            format!("username must be {USERNAME_MIN}-{USERNAME_MAX} characters"),
        ));
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b)) {
        return Err(ValidationError::new("username", "username may contain only a-z, 0-9, '_', '.' and '-'"));
    }
    if RESERVED_USERNAMES.contains(&name) {
        return Err(ValidationError::new("username", format!("username '{name}' is reserved")));
    }
    Ok(())
}

/// Checks a password's length (its strength beyond that is the user's business).
pub fn validate_password(password: &str) -> Result<(), ValidationError> {
    if password.len() < PASSWORD_MIN {
        return Err(ValidationError::new("password", format!("password must be at least {PASSWORD_MIN} characters")));
    }
    if password.len() > PASSWORD_MAX {
        return Err(ValidationError::new("password", format!("password must be at most {PASSWORD_MAX} bytes")));
    }
    Ok(())
}

/// Trims and checks a display name; `None` or blank means "use the username".
pub fn normalize_display_name(name: Option<&str>) -> Result<Option<String>, ValidationError> {
    let Some(name) = name.map(str::trim).filter(|n| !n.is_empty()) else { return Ok(None) };
    if name.chars().count() > DISPLAY_NAME_MAX || name.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "display_name",
            format!("display name must be at most {DISPLAY_NAME_MAX} printable characters"),
        ));
    }
    Ok(Some(name.to_owned()))
}

/// Trims and checks a group name.
pub fn normalize_group_name(name: &str) -> Result<String, ValidationError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > GROUP_NAME_MAX || name.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "name",
            format!("group name must be 1-{GROUP_NAME_MAX} printable characters"),
        ));
    }
    Ok(name.to_owned())
}

/// Checks a message body and its attachments list.
pub fn validate_message(text: &str, files: &[String]) -> Result<(), ValidationError> {
    if text.len() > MESSAGE_TEXT_MAX {
        return Err(ValidationError::new("text", format!("message text must be at most {MESSAGE_TEXT_MAX} bytes")));
    }
    if text.trim().is_empty() && files.is_empty() {
        return Err(ValidationError::new("text", "message must have text or files"));
    }
    if files.len() > MESSAGE_FILES_MAX {
        return Err(ValidationError::new("files", format!("a message may carry at most {MESSAGE_FILES_MAX} files")));
    }
    Ok(())
}

/// Checks a client-chosen idempotency key.
pub fn validate_client_msg_id(id: &str) -> Result<(), ValidationError> {
    if id.is_empty() || id.len() > CLIENT_MSG_ID_MAX || id.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "client_msg_id",
            format!("client_msg_id must be 1-{CLIENT_MSG_ID_MAX} printable bytes"),
        ));
    }
    Ok(())
}

/// A chat: a DM between two users or a group's conversation.
///
/// The text form is stable and appears in URLs: `dm:alice:bob` (names sorted) or `g:<group_id>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ChatId {
    /// The DM between two users, stored with the smaller name first.
    Dm(String, String),
    /// A group's chat.
    Group(String),
}

impl ChatId {
    /// The DM chat of `a` and `b`, in either order.
    pub fn dm(a: &str, b: &str) -> Self {
        if a <= b {
            ChatId::Dm(a.to_owned(), b.to_owned())
        } else {
            ChatId::Dm(b.to_owned(), a.to_owned())
        }
    }

    /// The chat of group `group_id`.
    pub fn group(group_id: &str) -> Self {
        ChatId::Group(group_id.to_owned())
    }
}

impl fmt::Display for ChatId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChatId::Dm(a, b) => write!(f, "dm:{a}:{b}"),
            ChatId::Group(g) => write!(f, "g:{g}"),
        }
    }
}

impl std::str::FromStr for ChatId {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ValidationError::new("chat_id", format!("'{s}' is not a chat id"));
        if let Some(rest) = s.strip_prefix("dm:") {
            let (a, b) = rest.split_once(':').ok_or_else(bad)?;
            if a >= b || !is_name_like(a) || !is_name_like(b) {
                return Err(bad());
            }
            return Ok(ChatId::Dm(a.to_owned(), b.to_owned()));
        }
        if let Some(g) = s.strip_prefix("g:") {
            if is_group_id(g) {
                return Ok(ChatId::Group(g.to_owned()));
            }
        }
        Err(bad())
    }
}

fn is_name_like(s: &str) -> bool {
    (1..=USERNAME_MAX).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

/// Group and file ids are 32 lowercase hex digits (a random 128-bit id).
pub fn is_group_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// File ids have the same shape as group ids.
pub fn is_file_id(s: &str) -> bool {
    is_group_id(s)
}

impl TryFrom<String> for ChatId {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ChatId> for String {
    fn from(c: ChatId) -> String {
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert!(validate_username("alice").is_ok());
        assert!(validate_username("a.b-c_9").is_ok());
        assert!(validate_username("ab").is_err());
        assert!(validate_username(&"a".repeat(33)).is_err());
        assert!(validate_username("Alice").is_err());
        assert!(validate_username("al ice").is_err());
        assert!(validate_username("api").is_err());
        assert!(validate_username("healthz").is_err());
    }

    #[test]
    fn chat_ids_round_trip() {
        let dm = ChatId::dm("zed", "amy");
        assert_eq!(dm.to_string(), "dm:amy:zed");
        assert_eq!("dm:amy:zed".parse::<ChatId>().unwrap(), dm);
        assert!("dm:zed:amy".parse::<ChatId>().is_err(), "unsorted dm id");
        assert!("dm:amy".parse::<ChatId>().is_err());
        let g = ChatId::group("0123456789abcdef0123456789abcdef");
        assert_eq!(g.to_string().parse::<ChatId>().unwrap(), g);
        assert!("g:xyz".parse::<ChatId>().is_err());
        assert!("x:1".parse::<ChatId>().is_err());
    }

    #[test]
    fn messages() {
        assert!(validate_message("hi", &[]).is_ok());
        assert!(validate_message("  ", &[]).is_err());
        assert!(validate_message("", &["f".into()]).is_ok());
        assert!(validate_message(&"x".repeat(MESSAGE_TEXT_MAX + 1), &[]).is_err());
    }
}
