//! Chorus wire and storage types, shared by every crate.
//!
//! Layout:
//! - [`ids`]: usernames, chat ids, validation rules and limits.
//! - [`command`]: [`Command`], every mutation of the replicated state, and what applying one yields.
//! - [`event`]: [`Event`], what a user's event stream tells them.
//! - [`api`]: HTTP request/response bodies and the error shape.
//! - [`cluster`]: roles, signed role assignments, control-topic gossip, wire names.
//!
//! No I/O and no async here: only serde types and pure validation.
#![warn(missing_docs, unreachable_pub)]

pub mod api;
pub mod cluster;
pub mod command;
pub mod event;
pub mod ids;

pub use command::{Applied, Command, CommandError};
pub use event::{Event, EventKind};
pub use ids::{ChatId, ValidationError};
