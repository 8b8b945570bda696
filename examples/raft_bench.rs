//! Raw replication throughput of the Raft layer (issue 4 groundwork): a group of 1 or 3
//! storage peers in this process, each with RocksDB in a temp dir and a real libp2p overlay on
//! 127.0.0.1. `--writers` tasks call `client_write` on the leader, one entry per write carrying
//! `--batch` commands, for `--seconds`. Prints JSON: committed commands/s and write latency.
//! No HTTP, no forwarding: this is the ceiling the wired-in path will sit under.
//!
//! ```text
//! cargo build --release --workspace --examples
//! target/release/examples/raft_bench --writers 64 --batch 1 --seconds 5
//! ```

use chorus_node::storage::raft::Batch;
use chorus_node::testkit::RaftPeer;
use chorus_protocol::{ChatId, Command};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(clap::Parser)]
#[command(about = "Raft layer throughput: 1 and 3 storage peers in one process; prints JSON")]
struct Args {
    /// Concurrent `client_write` callers on the leader.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    writers: u64,
    /// Commands per log entry.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    batch: u64,
    /// Length of each run, in seconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted.get(((sorted.len().max(1) - 1) as f64 * p) as usize).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

async fn run(nodes: usize, writers: u64, batch: u64, seconds: u64) -> serde_json::Value {
    let first = RaftPeer::start(vec![]).await;
    let mut peers = vec![first];
    for _ in 1..nodes {
        let p = RaftPeer::start(vec![peers[0].addr.clone()]).await;
        peers.push(p);
    }
    let members: BTreeMap<u64, _> = peers.iter().map(|p| (p.id, p.node.clone())).collect();
    peers[0].raft.initialize(members).await.expect("initialize");
    let m = peers[0]
        .raft
        .wait(Some(Duration::from_secs(20)))
        .metrics(|m| m.current_leader.is_some(), "leader")
        .await
        .expect("leader");
    let leader = peers.iter().find(|p| Some(p.id) == m.current_leader).expect("leader is ours").raft.clone();
    let account =
        |n: &str| Command::CreateAccount { username: n.into(), display_name: None, password_hash: "x".into(), at: 1 };
    let setup = vec![
        account("alice"),
        account("bob"),
        Command::SendFriendRequest { from: "alice".into(), to: "bob".into(), at: 2 },
        Command::SendFriendRequest { from: "bob".into(), to: "alice".into(), at: 3 },
    ];
    leader.client_write(Batch(setup)).await.expect("setup");

    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let raft = leader.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let cmds = (0..batch)
                    .map(|_| {
                        n += 1;
                        Command::SendMessage {
                            chat_id: ChatId::dm("alice", "bob"),
                            id: format!("{w:016x}{n:016x}"),
                            sender: "alice".into(),
                            text: format!("bench {w} {n}"),
                            files: vec![],
                            client_msg_id: None,
                            sent_at: n,
                        }
                    })
                    .collect();
                let t = Instant::now();
                if raft.client_write(Batch(cmds)).await.is_ok() {
                    lat.push(t.elapsed());
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("writer"));
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    for p in &peers {
        p.replica.shutdown().await;
    }
    json!({
        "nodes": nodes,
        "writers": writers,
        "commands_per_entry": batch,
        "entries_per_sec": lat.len() as f64 / secs,
        "commands_per_sec": (lat.len() as u64 * batch) as f64 / secs,
        "write_latency_ms": {"p50": pct(&lat, 0.5), "p99": pct(&lat, 0.99)},
    })
}

#[tokio::main]
async fn main() {
    let Args { writers, batch, seconds } = clap::Parser::parse();
    let one = run(1, writers, batch, seconds).await;
    let three = run(3, writers, batch, seconds).await;
    let ratio = three["commands_per_sec"].as_f64().unwrap_or(0.0) / one["commands_per_sec"].as_f64().unwrap_or(1.0);
    let out = json!({"bench": "raft", "one_node": one, "three_nodes": three, "ratio_three_to_one": ratio});
    println!("{}", serde_json::to_string_pretty(&out).expect("json"));
}
