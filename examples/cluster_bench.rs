//! Replicated-storage benchmark: one single node and one local 5-node cluster (3 storage
//! peers, openraft) in the same run, real `chorus-node` processes on 127.0.0.1.
//!
//! Phases on the cluster (senders spread over the input peers' HTTP facades, where a gateway
//! sends users, or with `--through all` over every node's, storage peers included; partners
//! listening on SSE through the next facade):
//! 1. closed loop, `--senders` senders for `--seconds`: acked msg/s (also on the single node:
//!    the ratio replicated / single);
//! 2. paced to `--rate` msg/s: send latency and send-to-stream delivery latency;
//! 3. paced again, `kill -9` of the Raft leader after 2 s: the write pause (from the kill to
//!    the first acknowledged send that started after it).
//!
//! Phases 1 and 2 also report each process's CPU per acknowledged message and the messages per
//! log entry (at a paced rate entries are small, and their cost dominates).
//!
//! ```text
//! cargo build --release --workspace --bins --examples
//! target/release/examples/cluster_bench --senders 64 --seconds 10 --rate 1000 [--through all]
//! ```
//!
//! `--dump-paced <file>` also writes every acknowledged send of phase 2, to see when slow
//! sends happen: a first line with the wall-clock time of the first send (µs since the Unix
//! epoch), then one line per send, `start latency` in µs, the start relative to the first send.

#[path = "load/mod.rs"]
mod load;

use chorus_node::testkit::{get_json, LocalCluster, NodeProc};
use chorus_protocol::api::ClusterView;
use load::Load;
use serde_json::json;
use std::time::{Duration, Instant};

const FLAGS: &[&str] = &["--user-rps", "0", "--logins-per-minute", "0", "--registrations-per-minute", "0"];

/// Where the senders go: the input peers' facades, or every node's.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Through {
    Input,
    All,
}

#[derive(clap::Parser)]
#[command(about = "Replicated-storage benchmark: a single node and a local 5-node cluster; prints JSON")]
struct Args {
    /// Concurrent senders (closed loop and paced phases).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=4096))]
    senders: u16,
    /// Length of each phase, in seconds.
    #[arg(long, default_value_t = 10.0, value_parser = load::positive)]
    seconds: f64,
    /// Target rate of the paced phases, in messages per second.
    #[arg(long, default_value_t = 1000.0, value_parser = load::positive)]
    rate: f64,
    /// Which HTTP facades the senders use.
    #[arg(long, value_enum, default_value = "input")]
    through: Through,
    /// Write every acknowledged send of the paced phase to this file (see the module doc).
    #[arg(long, value_name = "FILE")]
    dump_paced: Option<std::path::PathBuf>,
}

/// HTTP URLs of the nodes the coordinator's assignment makes input peers.
fn input_facades(c: &LocalCluster) -> Vec<String> {
    c.wait_settled(Duration::from_secs(60));
    let views = c.views();
    let members = views.first().map(|(_, v)| v.members.clone()).unwrap_or_default();
    let input = |peer: &str| members.iter().any(|m| m.peer_id == peer && m.roles.iter().any(|r| r == "input"));
    let urls: Vec<String> = views
        .iter()
        .filter(|(_, v)| input(&v.this.peer_id))
        .filter_map(|(i, _)| Some(c.nodes[*i].as_ref()?.url.clone()))
        .collect();
    assert!(!urls.is_empty(), "the assignment names no input peer");
    urls
}

/// `--dump-paced`: see the module doc.
fn dump_sends(path: &std::path::Path, acks: &[(Instant, Instant)]) {
    let Some(first) = acks.iter().map(|a| a.0).min() else { return };
    let epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut out = format!("{}\n", (epoch - first.elapsed()).as_micros());
    for (start, ack) in acks {
        out.push_str(&format!("{} {}\n", (*start - first).as_micros(), (*ack - *start).as_micros()));
    }
    if let Err(e) = std::fs::write(path, out) {
        eprintln!("--dump-paced {}: {e}", path.display());
    }
}

fn wait_ready(c: &LocalCluster) -> usize {
    c.wait_until("the Raft group to be ready", Duration::from_secs(60), |c| c.raft_ready(3))
}

// One worker: the load generator leaves the cores to the nodes it measures.
#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args = <Args as clap::Parser>::parse();
    let (senders, seconds, rate) = (usize::from(args.senders), args.seconds, args.rate);
    load::settle_disk();
    let machine = load::machine(tempfile::tempdir().expect("temp dir").path());
    let http = reqwest::Client::builder().pool_max_idle_per_host(senders * 4).build().expect("client");

    // The single node, same load, same run.
    let dir = tempfile::tempdir().expect("temp dir");
    let node = NodeProc::start(dir.path(), FLAGS);
    wait_for_ready(&node.url).await;
    let bases = vec![node.url.clone()];
    let tokens = load::users(&http, &bases, "solo", senders).await;
    let closed = Load { senders, seconds, rate: None, receive: false };
    let pids = [std::process::id(), node.pid()];
    eprintln!("single node closed loop: node pid {}", node.pid());
    let before = pids.map(load::cpu_time);
    let single = load::run(&http, &bases, "solo", &tokens, closed).await;
    let single_cpu: Vec<f64> =
        (0..2).map(|k| us_per_msg(before[k], load::cpu_time(pids[k]), single.latency.len())).collect();
    node.terminate();

    let mut c = LocalCluster::start(5, FLAGS);
    let leader = wait_ready(&c);
    let bases: Vec<String> = match args.through {
        Through::All => c.nodes.iter().flatten().map(|n| n.url.clone()).collect(),
        Through::Input => input_facades(&c),
    };
    let tokens = load::users(&http, &bases, "user", senders).await;
    let pids: Vec<u32> = c.nodes.iter().flatten().map(|n| n.pid()).collect();
    eprintln!("cluster closed loop: node pids {pids:?}, Raft leader node {leader}, senders through {bases:?}");
    let before = cpu_times(&c);
    let throughput = load::run(&http, &bases, "user", &tokens, closed).await;
    let (cpu, per_entry) = cpu_per_message(&c, before, throughput.latency.len());
    eprintln!("cluster paced to {rate} msg/s");
    let before = cpu_times(&c);
    let paced = load::run(&http, &bases, "user", &tokens, Load { rate: Some(rate), receive: true, ..closed }).await;
    let (paced_cpu, paced_per_entry) = cpu_per_message(&c, before, paced.latency.len());
    if let Some(path) = &args.dump_paced {
        dump_sends(path, &paced.acks);
    }

    // Failover: load through the facades other than the leader's, kill -9 the leader after 2 s.
    let leader_url = c.nodes[leader].as_ref().map(|n| n.url.clone());
    let survivors: Vec<String> = bases.iter().filter(|u| Some(*u) != leader_url.as_ref()).cloned().collect();
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let at = Instant::now();
        c.kill9(leader);
        (at, c)
    });
    let failover =
        load::run(&http, &survivors, "user", &tokens, Load { seconds: 8.0, rate: Some(rate), ..closed }).await;
    let (killed_at, c) = killer.await.expect("killer");
    let resumed = failover.acks.iter().filter(|(start, _)| *start >= killed_at).map(|(_, ack)| *ack).min();
    let pause_ms = resumed.map(|t| (t - killed_at).as_secs_f64() * 1000.0);
    let new_leader = wait_ready(&c);
    let rss_mib: Vec<f64> = c.nodes.iter().flatten().map(|n| load::peak_rss_kib(n.pid()) as f64 / 1024.0).collect();

    let report = json!({
        "bench": "replicated_cluster",
        "machine": machine,
        "nodes": 5,
        "storage_peers": 3,
        "senders": senders,
        "senders_through": { "facades": clap::ValueEnum::to_possible_value(&args.through).map(|v| v.get_name().to_owned()), "nodes": bases.len() },
        "single_node": single.json(),
        "cluster_closed_loop": throughput.json(),
        "cluster_paced": { "target_rate": rate, "result": paced.json() },
        "leader_kill": {
            "result": failover.json(),
            "write_pause_ms": pause_ms,
            "new_leader_node": new_leader,
            "old_leader_node": leader,
        },
        "node_peak_rss_mib": rss_mib,
        "single_node_cpu_us_per_msg": {"load_generator": single_cpu[0], "node": single_cpu[1]},
        "cluster_closed_loop_cpu_us_per_msg": cpu,
        "cluster_closed_loop_messages_per_log_entry": per_entry,
        "cluster_paced_cpu_us_per_msg": paced_cpu,
        "cluster_paced_messages_per_log_entry": paced_per_entry,
        "ratio_replicated_over_single": throughput.json()["acked_per_sec"].as_f64().unwrap_or(0.0)
            / single.json()["acked_per_sec"].as_f64().unwrap_or(1.0),
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
}

/// CPU time so far of this process (the load generator) and of every node, and the highest
/// last log index any node reports.
fn cpu_times(c: &LocalCluster) -> (Vec<Option<Duration>>, u64) {
    let mut pids = vec![std::process::id()];
    pids.extend(c.nodes.iter().flatten().map(|n| n.pid()));
    let index = c.views().iter().filter_map(|(_, v)| Some(v.raft.as_ref()?.last_log_index)).max().unwrap_or(0);
    (pids.into_iter().map(load::cpu_time).collect(), index)
}

/// CPU microseconds per message between two readings of one process (0 if it is gone).
fn us_per_msg(before: Option<Duration>, after: Option<Duration>, acked: usize) -> f64 {
    match (before, after) {
        (Some(b), Some(a)) => (a - b).as_secs_f64() * 1e6 / acked.max(1) as f64,
        _ => 0.0,
    }
}

/// CPU microseconds per acknowledged message since `before`, per process, labelled with the
/// node's Raft state (`leader`, `follower`; `input` outside the membership); and messages per
/// log entry.
fn cpu_per_message(c: &LocalCluster, before: (Vec<Option<Duration>>, u64), acked: usize) -> (serde_json::Value, f64) {
    let ((before, first_index), (after, last_index)) = (before, cpu_times(c));
    let per_msg = |b, a| us_per_msg(b, a, acked);
    let views: std::collections::HashMap<usize, ClusterView> = c.views().into_iter().collect();
    let mut out = serde_json::Map::new();
    let mut total = per_msg(before[0], after[0]);
    out.insert("load_generator".into(), json!(total));
    for (k, (i, _)) in c.nodes.iter().enumerate().filter(|(_, n)| n.is_some()).enumerate() {
        let role = views.get(&i).and_then(|v| v.raft.as_ref()).map_or("unknown", |r| match r.state.as_str() {
            "leader" | "follower" => r.state.as_str(),
            _ => "input",
        });
        let us = per_msg(before[k + 1], after[k + 1]);
        total += us;
        out.insert(format!("node{i}_{role}"), json!(us));
    }
    out.insert("total".into(), json!(total));
    (out.into(), acked as f64 / (last_index - first_index).max(1) as f64)
}

async fn wait_for_ready(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = || get_json::<ClusterView>(&format!("{url}/api/v1/cluster"))?.raft?.leader;
    while leader().is_none() {
        assert!(Instant::now() < deadline, "node not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
