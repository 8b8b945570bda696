//! Election benchmark against real `chorus-node` processes on 127.0.0.1.
//!
//! 1. Election message counts: for n = 3, 5, 10 nodes, the Election and Elected messages
//!    sent cluster-wide for the first election (all nodes start within a fraction of the
//!    2 s start-up timeout, so all take part).
//! 2. Failover: in a 5-node cluster, `kill -9` the coordinator and time until EVERY survivor
//!    reports the new coordinator and a newer signed assignment; restart the victim, let the
//!    cluster settle, repeat (`--rounds`, default 10). Prints JSON with every sample and the
//!    median.
//!
//! ```text
//! cargo build --release --workspace --bins --examples
//! target/release/examples/failover --rounds 10
//! ```

use chorus_node::testkit::LocalCluster;
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(clap::Parser)]
#[command(about = "Election benchmark: message counts and coordinator failover; prints JSON")]
struct Args {
    /// Failover rounds (kill -9 of the coordinator, restart, settle).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    rounds: u16,
}

fn main() {
    let rounds = usize::from(<Args as clap::Parser>::parse().rounds);

    let mut counts = serde_json::Map::new();
    for n in [3usize, 5, 10] {
        let c = LocalCluster::start(n, &[]);
        c.wait_settled(Duration::from_secs(60));
        let views = c.views();
        let sum = |f: fn(&chorus_protocol::api::ElectionStats) -> u64| {
            views.iter().map(|(_, v)| v.election.as_ref().map_or(0, f)).sum::<u64>()
        };
        let (election, elected) = (sum(|s| s.election_msgs), sum(|s| s.elected_msgs));
        let n64 = n as u64;
        counts.insert(
            n.to_string(),
            json!({"election": election, "elected": elected, "best_2n_minus_1": 2 * n64 - 1, "worst_n_n_plus_1_over_2": n64 * (n64 + 1) / 2}),
        );
    }

    let mut c = LocalCluster::start(5, &[]);
    let mut samples = Vec::new();
    for _ in 0..rounds {
        let (coordinator, epoch) = c.wait_settled(Duration::from_secs(60));
        let victim = c.index_of(&coordinator).expect("coordinator is ours");
        let t0 = Instant::now();
        c.kill9(victim);
        loop {
            let views = c.views();
            let done = views.len() == c.live()
                && views.iter().all(|(_, v)| {
                    v.coordinator
                        .as_deref()
                        .is_some_and(|x| x != coordinator && Some(x) == views[0].1.coordinator.as_deref())
                        && v.epoch > epoch
                        && v.assignment.as_ref().is_some_and(|a| a.assignment.coordinator != coordinator)
                });
            if done {
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                for (i, n) in c.nodes.iter().enumerate() {
                    if let Some(n) = n {
                        eprintln!("--- node {i}:\n{}", n.log_lines().join("\n"));
                    }
                }
                panic!("no failover within 30 s (old coordinator {coordinator}, epoch {epoch}): {views:#?}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
        c.restart(victim);
    }
    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    let median = if sorted.is_empty() { 0.0 } else { sorted[sorted.len() / 2] };
    let out = json!({
        "bench": "election",
        "election_messages_first_election": counts,
        "failover_ms": {"nodes": 5, "rounds": rounds, "median": median, "max": sorted.last(), "samples": samples},
    });
    println!("{}", serde_json::to_string_pretty(&out).expect("json"));
}
