//! Snapshot catch-up benchmark: how much memory a storage peer needs to catch up by snapshot,
//! and how long it takes, with real `chorus-node` processes on 127.0.0.1.
//!
//! A 4-node cluster (3 storage peers, the nodes' default snapshot policy unless
//! `--snapshot-every` adds one by entries) stores `--mib` MiB of files (incompressible,
//! `--file-mib` MiB each). With `--chat-seconds`, 64 senders then chat through the leader (closed
//! loop) for that long: what a large state costs plain chat traffic, counting the snapshots the
//! storage peers build meanwhile. Then a storage follower is `kill -9`ed for good: the
//! coordinator promotes the fourth node, which has nothing and must install the leader's
//! snapshot (and replay the log after it). Prints JSON: the data size, the seconds from the
//! kill until the newcomer is a caught-up voter, and peak RSS: the newcomer's is its install's
//! cost, the surviving follower's that of applying the uploads (the leader also served them
//! over HTTP).
//!
//! With `--restart`, a 3-node cluster instead: after the uploads a storage follower is
//! `kill -9`ed, the other two chat for `--chat-seconds` and snapshot past its log (give
//! `--snapshot-every`), and it is started again. It is dropped from the voters while down and
//! rejoins with its log: the JSON has how long it took to be a caught-up voter again and
//! whether it needed a snapshot (`--retain-log-mib` is passed on to the nodes).
//!
//! `--stall-install-seconds` stretches the newcomer's install (a slow disk, a huge state) past
//! the 10 s a snapshot chunk is given: `snapshot_transfers` then shows whether the leader
//! waited for the install or began the transfer again.
//!
//! ```text
//! cargo build --release --workspace --bins --examples
//! target/release/examples/snapshot_bench --mib 512 --file-mib 32
//! target/release/examples/snapshot_bench --mib 1024 --chat-seconds 180 [--snapshot-every 20000]
//! target/release/examples/snapshot_bench --restart --mib 1024 --chat-seconds 20 --snapshot-every 1000 [--retain-log-mib 0]
//! target/release/examples/snapshot_bench --mib 1024 --stall-install-seconds 20
//! target/release/examples/snapshot_bench --mib 64 --snapshot-log-mib 32 --retain-log-mib 0
//! ```
//!
//! Without `--snapshot-every`, the uploads must take the log past the nodes' snapshot trigger
//! (`--snapshot-log-mib`, 256 MiB unless given) by half, and the log the nodes keep before a
//! snapshot (`--retain-log-mib`, 256 MiB unless given) must not exceed that trigger; else the
//! bench refuses to start, instead of waiting for a snapshot (or an install) that never comes.

#[path = "load/mod.rs"]
#[allow(dead_code)] // this bench uses a few of the shared helpers
mod load;

use chorus_node::config::{DEFAULT_RETAIN_LOG_MIB, DEFAULT_SNAPSHOT_LOG_MIB};
use chorus_node::testkit::{incompressible, InstallStall, LocalCluster};
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(clap::Parser)]
#[command(about = "Snapshot catch-up benchmark: a promoted storage peer installs the leader's snapshot; prints JSON")]
struct Args {
    /// MiB of files stored before the kill.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    mib: u64,
    /// MiB per file.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1024))]
    file_mib: u64,
    /// Seconds of chat (64 senders, closed loop) after the uploads; 0: none.
    #[arg(long, default_value_t = 0)]
    chat_seconds: u64,
    // These three also read the nodes' own variables, which the nodes would inherit anyway:
    // `Args::check` must see what the nodes will use.
    /// Passed on to the nodes: also snapshot every this many entries.
    #[arg(long, env = "CHORUS_SNAPSHOT_EVERY")]
    snapshot_every: Option<u64>,
    /// Passed on to the nodes: MiB of log kept before a snapshot (theirs: 256).
    #[arg(long, env = "CHORUS_RETAIN_LOG_MIB")]
    retain_log_mib: Option<u64>,
    /// Passed on to the nodes: snapshot once the log grew by this many MiB (theirs: 256).
    #[arg(long, env = "CHORUS_SNAPSHOT_LOG_MIB", value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    snapshot_log_mib: Option<u64>,
    /// Restart a follower of a 3-node cluster across a snapshot instead of replacing one.
    #[arg(long)]
    restart: bool,
    /// Stretch the newcomer's install by this many seconds, as a slow disk would: once it
    /// begins to install, stop it 1.5 s out of every 1.6 s (SIGSTOP / SIGCONT, each stop
    /// shorter than the coordinator's 2 s and the pings' 3 s timeouts) for that long.
    #[arg(long, default_value_t = 0)]
    stall_install_seconds: u64,
}

impl Args {
    /// Refuses a run that would wait minutes for a snapshot that never comes.
    fn check(&self) -> Result<(), String> {
        if self.snapshot_every.is_some() {
            return Ok(()); // snapshots by entries come whatever the bytes
        }
        if self.restart {
            // The chat writes ~200 bytes of log per message: 256 MiB is many minutes of it.
            return match self.snapshot_log_mib {
                Some(_) => Ok(()),
                None => Err("--restart needs --snapshot-every or --snapshot-log-mib, so that the chat \
                             snapshots past the stopped peer's log within minutes"
                    .into()),
            };
        }
        // The bench waits for the leader's snapshot after the uploads. The storage peers build
        // one after another (`snapshot_due`): the last of three once the log grew by 4/3 of the
        // trigger, and the leader may be any of them. The uploads' log must pass that.
        let trigger = self.snapshot_log_mib.unwrap_or(DEFAULT_SNAPSHOT_LOG_MIB);
        let needed = trigger + trigger / 2;
        if self.mib < needed {
            return Err(format!(
                "--mib {} does not reach a snapshot: the nodes snapshot once the log grows by {trigger} MiB; \
                 give --mib {needed} or more, or a lower --snapshot-log-mib, or --snapshot-every",
                self.mib
            ));
        }
        // The newcomer is sent the snapshot only if the leader purged its log: it keeps the
        // newest `--retain-log-mib` before the snapshot, which must be less than the log.
        let retain = self.retain_log_mib.unwrap_or(DEFAULT_RETAIN_LOG_MIB);
        if retain > trigger {
            return Err(format!(
                "--retain-log-mib {retain} keeps the whole log before a snapshot at {trigger} MiB, so the \
                 newcomer would catch up from the log: give --retain-log-mib {trigger} or less"
            ));
        }
        Ok(())
    }
}

const FLAGS: &[&str] = &[
    "--user-rps",
    "0",
    "--registrations-per-minute",
    "0",
    "--logins-per-minute",
    "0",
    "--max-file-size",
    "1073741824",
];

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args: Args = clap::Parser::parse();
    if let Err(e) = args.check() {
        clap::Error::raw(clap::error::ErrorKind::ArgumentConflict, format!("{e}\n")).exit();
    }
    let Args {
        mib,
        file_mib,
        chat_seconds,
        snapshot_every,
        retain_log_mib,
        snapshot_log_mib,
        restart,
        stall_install_seconds,
    } = args;
    load::settle_disk();
    let passed = [
        ("--snapshot-every", snapshot_every),
        ("--retain-log-mib", retain_log_mib),
        ("--snapshot-log-mib", snapshot_log_mib),
    ];
    let passed: Vec<String> =
        passed.iter().filter_map(|(f, v)| Some([f.to_string(), (*v)?.to_string()])).flatten().collect();
    let flags: Vec<&str> = FLAGS.iter().copied().chain(passed.iter().map(String::as_str)).collect();
    let mut c = LocalCluster::start(if restart { 3 } else { 4 }, &flags);
    let wait = Duration::from_secs(120);
    let leader = c.wait_until("the Raft group to be ready", wait, |c| c.raft_ready(3));
    let views = c.views();
    let storage: Vec<usize> = views
        .iter()
        .filter(|(_, v)| v.raft.as_ref().is_some_and(|r| r.state == "leader" || r.state == "follower"))
        .map(|(i, _)| *i)
        .collect();
    // Uploads go through the leader, so the newcomer's memory is its install's alone.
    let url = c.nodes[leader].as_ref().expect("leader").url.clone();

    let http = reqwest::Client::new();
    let token = load::users(&http, std::slice::from_ref(&url), "snap", 2).await.remove(0);
    let started = Instant::now();
    let mut each = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for i in 0..mib.div_ceil(file_mib) {
        let body = incompressible(file_mib, &mut seed);
        let one = Instant::now();
        let resp = http
            .post(format!("{url}/api/v1/files?name=f{i}.bin"))
            .bearer_auth(&token)
            .body(body)
            .send()
            .await
            .expect("upload");
        let status = resp.status();
        assert!(status.is_success(), "upload {i}: {status} {}", resp.text().await.unwrap_or_default());
        each.push(one.elapsed());
    }
    each.sort();
    let upload_s = started.elapsed().as_secs_f64();
    let uploads = json!({
        "data_mib": mib.div_ceil(file_mib) * file_mib,
        "upload_seconds": upload_s,
        // A commit stalled by the disk shows as one slow upload among even ones.
        "upload_seconds_each": { "p50": load::pct(&each, 0.5) / 1e3, "max": load::pct(&each, 1.0) / 1e3 },
        "snapshot_every": snapshot_every,
        "retain_log_mib": retain_log_mib,
        "snapshot_log_mib": snapshot_log_mib,
    });
    if restart {
        return restart_across_a_snapshot(&mut c, &http, leader, &storage, chat_seconds, uploads).await;
    }
    let newcomer = (0..4).find(|i| !storage.contains(i)).expect("a node outside the log");
    let chat = if chat_seconds > 0 {
        let urls: Vec<String> = storage.iter().filter_map(|i| Some(c.nodes[*i].as_ref()?.url.clone())).collect();
        Some(chat_phase(&http, &url, &urls, chat_seconds).await)
    } else {
        None
    };
    // The leader has a snapshot (the uploads' bytes pass the trigger: `Args::check`).
    let stored = c.wait_until("a snapshot on the leader", wait, |c| {
        let r = c.raft_view(leader)?;
        (r.snapshot_index > 0).then_some(r.snapshot_index)
    });

    let lost = *storage.iter().find(|i| **i != leader).expect("a follower");
    let killed = Instant::now();
    c.kill9(lost);
    let stall = (stall_install_seconds > 0).then(|| {
        let (n, ms) = (c.nodes[newcomer].as_ref().expect("newcomer"), Duration::from_millis);
        InstallStall::start(n, Duration::from_secs(600), Duration::from_secs(stall_install_seconds), ms(1500), ms(100))
    });
    let installed = c.wait_until("the newcomer to catch up by snapshot", wait, |c| {
        let r = c.raft_view(newcomer)?;
        (r.snapshots_installed >= 1 && c.raft_ready(3).is_some()).then_some(r)
    });
    let catch_up_s = killed.elapsed().as_secs_f64();
    let stalled = stall.map(InstallStall::join);
    for (who, i) in [("leader", leader), ("newcomer", newcomer)] {
        let lines = c.nodes[i].as_ref().map(|n| n.log_lines()).unwrap_or_default();
        for line in lines.iter().filter(|l| l.contains("snapshot")) {
            eprintln!("{who}: {line}");
        }
    }
    let rss = |i: usize| peak_rss_mib(&c, i);
    let report = json!({
        "bench": "snapshot_catch_up",
        "uploads": uploads,
        "chat": chat,
        "leader_snapshot_index": stored,
        "catch_up_seconds": catch_up_s,
        "snapshots_installed": installed.snapshots_installed,
        // More than installed: a transfer was cut off (a chunk's deadline) and sent again.
        "snapshot_transfers": installed.snapshot_transfers,
        // Seconds after the kill the newcomer began to install, and was stalled from.
        "install_stalled_at_seconds": stalled.map(|t| t.map(|at| (at - killed).as_secs_f64())),
        "peak_rss_mib": {
            "leader": rss(leader),
            "newcomer": rss(newcomer),
            "surviving_follower": storage.iter().find(|i| **i != leader && **i != lost).map(|i| rss(*i)),
        },
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
}

/// Node `i`'s peak RSS so far, MiB (0 if it is not running).
fn peak_rss_mib(c: &LocalCluster, i: usize) -> f64 {
    c.nodes[i].as_ref().map_or(0.0, |n| load::peak_rss_kib(n.pid()) as f64 / 1024.0)
}

/// `--restart`: a follower down while the others chat past a snapshot, then back.
async fn restart_across_a_snapshot(
    c: &mut LocalCluster,
    http: &reqwest::Client,
    leader: usize,
    storage: &[usize],
    chat_seconds: u64,
    uploads: serde_json::Value,
) {
    let wait = Duration::from_secs(600);
    let lost = *storage.iter().find(|i| **i != leader).expect("a follower");
    let held = c.raft_view(lost).map_or(0, |r| r.last_log_index);
    c.kill9(lost);
    let url = c.nodes[leader].as_ref().expect("leader").url.clone();
    let others: Vec<String> = storage.iter().filter_map(|i| Some(c.nodes[*i].as_ref()?.url.clone())).collect();
    let chat = chat_phase(http, &url, &others, chat_seconds.max(1)).await;
    let past = c.wait_until("a snapshot past the dead peer's log", wait, |c| {
        c.raft_view(leader).filter(|r| r.snapshot_index > held)
    });
    let restarted = Instant::now();
    c.restart(lost);
    let back = c.wait_until("the returning peer to be a caught-up voter", wait, |c| {
        c.raft_ready(3)?;
        c.raft_view(lost)
    });
    let report = json!({
        "bench": "restart_across_a_snapshot",
        "uploads": uploads,
        "chat_while_down": chat,
        "returning_peer_held_index": held,
        "leader_snapshot_index": past.snapshot_index,
        "leader_purged_index": past.purged_index,
        "catch_up_seconds": restarted.elapsed().as_secs_f64(),
        "snapshots_installed": back.snapshots_installed,
        "snapshot_transfers": back.snapshot_transfers,
        "returning_peer_peak_rss_mib": peak_rss_mib(c, lost),
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
}

/// 64 senders chat through `url` for `seconds` (closed loop) while the storage peers at
/// `storage` are polled for their snapshot index: its figures, and the snapshots built (or
/// installed) on each peer meanwhile.
async fn chat_phase(http: &reqwest::Client, url: &str, storage: &[String], seconds: u64) -> serde_json::Value {
    let bases = [url.to_owned()];
    let tokens = load::users(http, &bases, "chat", 64).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pollers: Vec<_> = storage
        .iter()
        .map(|peer| {
            let (http, peer, stop) = (http.clone(), peer.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seen: Vec<u64> = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let view = http.get(format!("{peer}/api/v1/cluster")).send().await;
                    if let Ok(v) = view {
                        if let Ok(v) = v.json::<chorus_protocol::api::ClusterView>().await {
                            let index = v.raft.map_or(0, |r| r.snapshot_index);
                            if seen.last() != Some(&index) {
                                seen.push(index);
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                seen.len().saturating_sub(1)
            })
        })
        .collect();
    let load = load::Load { senders: 64, seconds: seconds as f64, rate: None, receive: false };
    let out = load::run(http, &bases, "chat", &tokens, load).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut built = Vec::new();
    for p in pollers {
        built.push(p.await.unwrap_or(0));
    }
    let mut figures = out.json();
    figures["send_latency_ms"]["max"] = load::pct(&out.latency, 1.0).into();
    figures["snapshots_per_storage_peer"] = built.into();
    figures
}
