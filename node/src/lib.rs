//! chorus-node: one peer of a Chorus cluster, as a library. The `chorus-node` binary is a thin
//! clap wrapper around [`run`].
//!
//! # Layout
//! ```text
//! api          axum HTTP facade: REST, SSE/WebSocket, web client, profile pages
//!  └─ service  chat domain: authenticate, authorize, validate, build Commands, queries
//!      ├─ replication  the command log: group commit in front of the state machine
//!      └─ storage      RocksDB column families + the deterministic StateMachine
//! overlay      libp2p swarm (one event loop owns it) and the node key
//! election     Chang-Roberts as a pure state machine + the driver (heartbeats, assignments)
//! roles        role policy (pure) and signed assignments
//! gateway      the name server: one HTTP address that forwards to live input nodes
//! config       flags and CHORUS_* environment fallbacks
//! testkit      spawn real chorus-node processes (tests, benches)
//! node         wiring: start every part, serve, shut down in order
//! ```
//! Dependencies point down only: api never skips service, only storage touches RocksDB.
#![warn(missing_docs, unreachable_pub)]

pub mod api;
pub mod config;
pub mod election;
pub mod gateway;
mod node;
pub mod overlay;
pub mod replication;
pub mod roles;
pub mod service;
pub mod storage;
pub mod testkit;

pub use node::{run, NodeError};
