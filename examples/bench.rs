//! Throughput and latency benchmark against a real `chorus-node` process.
//!
//! Starts a node on a temp dir (127.0.0.1, free port), registers `--senders` users paired as
//! friends, and has each sender post DMs to its partner for `--seconds` (as fast as acks come
//! back, or paced to `--rate` msg/s in total). Then reads history. Prints one JSON document:
//! acked messages/s, send latency p50/p99/p999, history read latency, the node's peak RSS.
//! With `--gateway`, every request goes through a `chorus-node gateway` in front of the node:
//! what the extra hop costs (its CPU per message is in the JSON).
//!
//! ```text
//! cargo build --release --workspace --bins --examples
//! target/release/examples/bench --senders 64 --seconds 10 [--gateway]
//! ```

#[path = "load/mod.rs"]
mod load;

use chorus_node::testkit::NodeProc;
use load::{pct, peak_rss_kib, Load};
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(clap::Parser)]
#[command(about = "Single-node benchmark: acked messages/s and send latency; prints JSON")]
struct Args {
    /// Concurrent senders.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=4096))]
    senders: u16,
    /// Length of the run, in seconds.
    #[arg(long, default_value_t = 10.0, value_parser = load::positive)]
    seconds: f64,
    /// Pace the senders to this many messages per second (default: closed loop).
    #[arg(long, value_parser = load::positive)]
    rate: Option<f64>,
    /// Send through a gateway in front of the node.
    #[arg(long)]
    gateway: bool,
}

#[tokio::main]
async fn main() {
    let args = <Args as clap::Parser>::parse();
    let senders = usize::from(args.senders);
    load::settle_disk();
    let dir = tempfile::tempdir().expect("temp dir");
    let machine = load::machine(dir.path());
    let node = NodeProc::start(
        dir.path(),
        &["--user-rps", "0", "--logins-per-minute", "0", "--registrations-per-minute", "0"],
    );
    let gateway = args.gateway.then(|| NodeProc::gateway(&[&node.url], dir.path()));
    let base = gateway.as_ref().map_or(&node.url, |g| &g.url).clone();
    let http = reqwest::Client::builder().pool_max_idle_per_host(senders * 2).build().expect("client");

    let bases = vec![base.clone()];
    let tokens = load::users(&http, &bases, "user", senders).await;
    let cpu_before = load::cpu_time(node.pid());
    let gateway_cpu_before = gateway.as_ref().and_then(|g| load::cpu_time(g.pid()));
    let out = load::run(
        &http,
        &bases,
        "user",
        &tokens,
        Load { senders, seconds: args.seconds, rate: args.rate, receive: false },
    )
    .await;
    let node_cpu = cpu_before.zip(load::cpu_time(node.pid())).map(|(b, a)| a - b);
    let gateway_cpu =
        gateway_cpu_before.zip(gateway.as_ref().and_then(|g| load::cpu_time(g.pid()))).map(|(b, a)| a - b);

    // History reads: the newest 50 messages of a busy DM, repeatedly.
    let mut hist = Vec::new();
    let probe_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < probe_until {
        let t = Instant::now();
        let r = http
            .get(format!("{base}/api/v1/chats/dm:user0:user1/messages?limit=50"))
            .bearer_auth(&tokens[0])
            .send()
            .await
            .expect("history");
        assert!(r.status().is_success());
        let _ = r.bytes().await;
        hist.push(t.elapsed());
    }
    hist.sort();

    let metrics = http.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.unwrap_or_default();
    let counter =
        |name: &str| -> f64 { metrics.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0.0) };
    let (messages, batches) = (counter("chorus_messages_total"), counter("chorus_log_batches_total"));
    let mean_ms = |h: &str| {
        let n = counter(&format!("{h}_count"));
        if n > 0.0 {
            counter(&format!("{h}_sum")) / n * 1000.0
        } else {
            0.0
        }
    };
    let mut report = out.json();
    report["bench"] = json!("single_node");
    report["machine"] = machine;
    report["senders"] = json!(args.senders);
    report["seconds"] = json!(out.seconds);
    report["target_rate"] = json!(args.rate);
    report["history_read_ms"] = json!({"reads": hist.len(), "p50": pct(&hist, 0.5), "p99": pct(&hist, 0.99)});
    report["node_peak_rss_mib"] = json!(peak_rss_kib(node.pid()) as f64 / 1024.0);
    let per_msg = |cpu: Option<Duration>| cpu.map(|c| c.as_secs_f64() * 1e6 / out.latency.len().max(1) as f64);
    report["node_cpu_us_per_msg"] = json!(per_msg(node_cpu));
    report["gateway_cpu_us_per_msg"] = json!(per_msg(gateway_cpu));
    report["commands_per_batch"] = json!(if batches > 0.0 { messages / batches } else { 0.0 });
    report["wal_sync_mean_ms"] = json!(mean_ms("chorus_raft_wal_sync_duration_seconds"));
    report["commit_mean_ms"] = json!(mean_ms("chorus_raft_commit_duration_seconds"));
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
}
