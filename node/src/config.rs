//! Command-line and environment configuration (every flag has a `CHORUS_*` fallback).

use crate::api::limits::LimitConfig;
use crate::service::ServiceConfig;
use clap::{Args, Parser, Subcommand};
use libp2p::Multiaddr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `--snapshot-log-mib` unless given.
pub const DEFAULT_SNAPSHOT_LOG_MIB: u64 = 256;
/// `--retain-log-mib` unless given.
pub const DEFAULT_RETAIN_LOG_MIB: u64 = 256;

/// `chorus-node`: one peer of a Chorus cluster.
#[derive(Debug, Parser)]
#[command(name = "chorus-node", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: CliCommand,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Run the node.
    Run(Box<RunConfig>),
    /// Print this node's PeerId (creates the key if needed).
    Id {
        /// Data directory.
        #[arg(long, env = "CHORUS_DATA_DIR", default_value = "chorus-data")]
        data_dir: PathBuf,
    },
    /// Run a local cluster: N `chorus-node run` processes on 127.0.0.1 (HTTP on consecutive
    /// ports from --http-port, libp2p from --p2p-port), until Ctrl-C.
    Cluster {
        /// How many nodes.
        #[arg(long, env = "CHORUS_NODES", default_value_t = 3)]
        nodes: u16,
        /// Parent data directory (node i uses DIR/node-i).
        #[arg(long, env = "CHORUS_DATA_DIR", default_value = "chorus-data")]
        data_dir: PathBuf,
        /// HTTP port of node 0 (node i: +i).
        #[arg(long, default_value_t = 8080)]
        http_port: u16,
        /// libp2p port of node 0 (node i: +i); the others bootstrap from node 0.
        #[arg(long, default_value_t = 7000)]
        p2p_port: u16,
        /// Port of the gateway in front of the nodes (one address for the whole cluster);
        /// 0: none.
        #[arg(long, default_value_t = 8000)]
        gateway_port: u16,
    },
    /// Run the name server: one HTTP address for the whole cluster that forwards every request
    /// (event streams included) to a live input node.
    Gateway {
        /// HTTP listen address.
        #[arg(long, env = "CHORUS_GATEWAY_LISTEN", default_value = "127.0.0.1:8000")]
        listen: SocketAddr,
        /// HTTP address of a node to learn the cluster from (repeatable); the gateway then
        /// follows the coordinator's assignment.
        #[arg(long = "node", env = "CHORUS_GATEWAY_NODES", value_delimiter = ',', required = true)]
        nodes: Vec<SocketAddr>,
    },
    /// Print a digest of the stored data as JSON (the node must be stopped).
    Inspect {
        /// Data directory.
        #[arg(long, env = "CHORUS_DATA_DIR", default_value = "chorus-data")]
        data_dir: PathBuf,
    },
}

/// `chorus-node run`.
#[derive(Debug, Clone, Args)]
pub struct RunConfig {
    /// Data directory (RocksDB and the node key).
    #[arg(long, env = "CHORUS_DATA_DIR", default_value = "chorus-data")]
    pub data_dir: PathBuf,
    /// HTTP listen address.
    #[arg(long, env = "CHORUS_HTTP", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// The HTTP address other nodes and gateways are told to use (default: the bound one;
    /// give it when binding 0.0.0.0).
    #[arg(long, env = "CHORUS_ADVERTISE_HTTP")]
    pub advertise_http: Option<SocketAddr>,
    /// Largest file upload in bytes.
    #[arg(long, env = "CHORUS_MAX_FILE_SIZE", default_value_t = 50 * 1024 * 1024)]
    pub max_file_size: u64,
    /// Session lifetime in hours.
    #[arg(long, env = "CHORUS_SESSION_TTL_HOURS", default_value_t = 720)]
    pub session_ttl_hours: u64,
    /// Authenticated requests per user per second (0: unlimited).
    #[arg(long, env = "CHORUS_USER_RPS", default_value_t = 200)]
    pub user_rps: u32,
    /// Login attempts per username per minute (0: unlimited).
    #[arg(long, env = "CHORUS_LOGINS_PER_MINUTE", default_value_t = 10)]
    pub logins_per_minute: u32,
    /// Registrations per client address per minute (0: unlimited).
    #[arg(long, env = "CHORUS_REGISTRATIONS_PER_MINUTE", default_value_t = 30)]
    pub registrations_per_minute: u32,
    /// Address of a proxy (a `chorus-node gateway`) whose `X-Forwarded-For` names the client
    /// for per-address limits (repeatable). Anyone else's is ignored.
    #[arg(long, env = "CHORUS_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxy: Vec<std::net::IpAddr>,
    /// libp2p listen address (repeatable).
    #[arg(long, env = "CHORUS_LISTEN", default_value = "/ip4/127.0.0.1/tcp/0", value_delimiter = ',')]
    pub listen: Vec<Multiaddr>,
    /// A peer to join through (repeatable), e.g. /ip4/10.0.0.2/tcp/7000.
    #[arg(long, env = "CHORUS_BOOTSTRAP", value_delimiter = ',')]
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the LAN with mDNS.
    #[arg(long, env = "CHORUS_MDNS")]
    pub mdns: bool,
    /// Storage peers the coordinator assigns.
    #[arg(long, env = "CHORUS_STORAGE_REPLICAS", default_value_t = 3)]
    pub storage_replicas: usize,
    /// Never make this node a storage peer.
    #[arg(long, env = "CHORUS_NO_STORAGE")]
    pub no_storage: bool,
    /// Coordinator heartbeat period in milliseconds.
    #[arg(long, env = "CHORUS_HEARTBEAT_MS", default_value_t = 500)]
    pub heartbeat_ms: u64,
    /// Coordinator silence (ms) after which an election starts.
    #[arg(long, env = "CHORUS_ELECTION_TIMEOUT_MS", default_value_t = 2000)]
    pub election_timeout_ms: u64,
    /// Longest a write or read waits for a storage leader with a quorum before answering 503.
    #[arg(long, env = "CHORUS_WRITE_TIMEOUT_MS", default_value_t = 3000)]
    pub write_timeout_ms: u64,
    /// Also snapshot the replicated state (and purge the log before it) every this many
    /// entries. By default only the log's bytes decide (`--snapshot-log-mib`): a snapshot
    /// copies the whole state, files included, so a count of small entries is a poor reason
    /// to copy a large one.
    #[arg(long, env = "CHORUS_SNAPSHOT_EVERY", value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_every: Option<u64>,
    /// Snapshot once the log grew by this many MiB since the last snapshot, or by that
    /// snapshot's size if it is larger: the copying stays proportional to what is written.
    #[arg(long, env = "CHORUS_SNAPSHOT_LOG_MIB", default_value_t = DEFAULT_SNAPSHOT_LOG_MIB, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub snapshot_log_mib: u64,
    /// MiB of the newest log before its snapshot that a storage peer keeps, so that a peer
    /// behind the snapshot (restarted, paused, slow) catches up from the log instead of by a
    /// copy of the whole state. 0: purge the log up to each snapshot.
    #[arg(long, env = "CHORUS_RETAIN_LOG_MIB", default_value_t = DEFAULT_RETAIN_LOG_MIB, value_parser = clap::value_parser!(u64).range(0..=1 << 20))]
    pub retain_log_mib: u64,
    /// KiB per snapshot chunk sent to a storage peer that needs a snapshot.
    #[arg(long, env = "CHORUS_SNAPSHOT_CHUNK_KIB", default_value_t = (crate::replication::DEFAULT_SNAPSHOT_CHUNK >> 10) as u32,
          value_parser = clap::value_parser!(u32).range(1..=8192))]
    pub snapshot_chunk_kib: u32,
    /// Async worker threads (default: one per core). Nodes that share a machine do better with
    /// a share of its cores each; `chorus-node cluster` gives each node cores / nodes.
    #[arg(long, env = "CHORUS_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
}

impl RunConfig {
    /// The service part.
    pub fn service(&self) -> ServiceConfig {
        ServiceConfig {
            session_ttl: Duration::from_secs(self.session_ttl_hours * 3600),
            max_file_size: self.max_file_size,
        }
    }

    /// The replication part.
    pub fn replication(&self) -> crate::replication::ReplicaConfig {
        crate::replication::ReplicaConfig {
            timeout: Duration::from_millis(self.write_timeout_ms.max(100)),
            snapshot_every: self.snapshot_every,
            snapshot_log_bytes: self.snapshot_log_mib << 20,
            retain_log_bytes: self.retain_log_mib << 20,
            snapshot_chunk: self.snapshot_chunk_kib as usize * 1024,
            timings: Default::default(),
        }
    }

    /// The rate-limit part.
    pub fn limits(&self) -> LimitConfig {
        LimitConfig {
            user_rps: self.user_rps,
            logins_per_minute: self.logins_per_minute,
            registrations_per_minute: self.registrations_per_minute,
            trusted_proxies: self.trusted_proxy.clone(),
        }
    }
}

/// Worker threads for each of `nodes` nodes on this machine: its cores shared out, at least one.
/// On 2 cores, five nodes with one worker each served 12 - 16% more messages per second at
/// 10 - 15% less CPU per message than with two each (three interleaved pairs of
/// `cluster_bench` runs): fewer threads, so fewer cross-thread wakeups and context switches.
pub fn shared_worker_threads(nodes: usize) -> u16 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / nodes.max(1)).clamp(1, 1024) as u16
}
