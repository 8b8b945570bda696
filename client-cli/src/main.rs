//! `chorus`: the Chorus command-line and terminal client.
//!
//! Every API action is a subcommand; output is for humans unless `--json` is given (then each
//! command prints the server's JSON answer, one document per line, for scripts).

mod client;
mod commands;

use clap::{Parser, Subcommand};

/// Chat on a Chorus cluster from the terminal.
#[derive(Debug, Parser)]
#[command(name = "chorus", version, about)]
pub struct Cli {
    /// Server (any input node or the gateway).
    #[arg(long, env = "CHORUS_SERVER", default_value = "http://127.0.0.1:8080", global = true)]
    pub server: String,
    /// Print JSON for scripts instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Create an account.
    Register {
        /// Username: 3-32 of a-z 0-9 _ . -
        username: String,
        /// Display name.
        #[arg(long)]
        display_name: Option<String>,
        /// Password (else CHORUS_PASSWORD, else asked for).
        #[arg(long, env = "CHORUS_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// Log in and remember the session.
    Login {
        /// Username.
        username: String,
        /// Password (else CHORUS_PASSWORD, else asked for).
        #[arg(long, env = "CHORUS_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// Log out (the token stops working everywhere).
    Logout,
    /// Show who you are.
    Whoami,
    /// Show a user's profile.
    Profile {
        /// Username.
        username: String,
    },
    /// Friends and friend requests.
    #[command(subcommand)]
    Friends(FriendsCmd),
    /// Send a direct message to a friend.
    Dm {
        /// Friend's username.
        username: String,
        /// Text.
        text: String,
        /// Attach an uploaded file (repeatable).
        #[arg(long = "file")]
        files: Vec<String>,
    },
    /// Groups.
    #[command(subcommand)]
    Group(GroupCmd),
    /// List your chats.
    Chats,
    /// Send a message to a chat (DM or group) by chat id.
    Send {
        /// Chat id (see `chorus chats`).
        chat: String,
        /// Text.
        text: String,
        /// Attach an uploaded file (repeatable).
        #[arg(long = "file")]
        files: Vec<String>,
    },
    /// Show a chat's history.
    History {
        /// Chat id.
        chat: String,
        /// Only messages after this seq.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Upload a file (prints its id, to attach with --file).
    Upload {
        /// Path.
        path: std::path::PathBuf,
    },
    /// Download a file you can see.
    Download {
        /// File id.
        file_id: String,
        /// Where to save (default: the file's name).
        #[arg(short, long)]
        output: Option<std::path::PathBuf>,
    },
    /// Print live events (messages, requests, membership changes).
    Watch {
        /// Replay events after this seq first (0: everything).
        #[arg(long)]
        after: Option<u64>,
    },
    /// Show the cluster: nodes, roles, coordinator, epoch.
    Cluster,
    /// Interactive chat: shows a chat live; each line you type is sent.
    Chat {
        /// Chat id, or a friend's username for your DM with them.
        chat: String,
    },
}

/// `chorus friends ...`
#[derive(Debug, Subcommand)]
pub enum FriendsCmd {
    /// Ask someone to be your friend.
    Request {
        /// Username.
        username: String,
    },
    /// Accept a request.
    Accept {
        /// Requester.
        username: String,
    },
    /// Decline a request.
    Decline {
        /// Requester.
        username: String,
    },
    /// List friends and pending requests.
    List,
    /// Unfriend.
    Remove {
        /// Username.
        username: String,
    },
}

/// `chorus group ...`
#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    /// Create a group (you become its admin).
    Create {
        /// Name.
        name: String,
        /// Initial members.
        #[arg(long = "member")]
        members: Vec<String>,
    },
    /// Add a member (admin only).
    Add {
        /// Group id.
        group: String,
        /// Username.
        username: String,
    },
    /// Remove a member (admin only).
    Remove {
        /// Group id.
        group: String,
        /// Username.
        username: String,
    },
    /// Leave a group.
    Leave {
        /// Group id.
        group: String,
    },
    /// List your groups.
    List,
    /// Show a group.
    Show {
        /// Group id.
        group: String,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = commands::run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
