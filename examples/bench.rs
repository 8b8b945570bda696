//! Throughput and latency benchmark against a real `chorus-node` process.
//!
//! Starts a node on a temp dir (127.0.0.1, free port), registers `--senders` users paired as
//! friends, and has each sender post DMs to its partner for `--seconds` (as fast as acks come
//! back, or paced to `--rate` msg/s in total). Then reads history. Prints one JSON document:
//! acked messages/s, send latency p50/p99/p999, history read latency, the node's peak RSS.
//!
//! ```text
//! cargo build --release --workspace --bins --examples
//! target/release/examples/bench --senders 64 --seconds 10
//! ```

use chorus_node::testkit::NodeProc;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    senders: usize,
    seconds: u64,
    rate: Option<f64>,
}

fn args() -> Args {
    let mut a = Args { senders: 64, seconds: 10, rate: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--senders" => a.senders = val().parse().expect("--senders N"),
            "--seconds" => a.seconds = val().parse().expect("--seconds N"),
            "--rate" => a.rate = Some(val().parse().expect("--rate MSGS_PER_SEC")),
            other => panic!("unknown flag {other}; use --senders N --seconds N [--rate R]"),
        }
    }
    a
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

async fn post(http: &reqwest::Client, url: String, token: Option<&str>, body: Value) -> Value {
    let mut req = http.post(url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("request");
    assert!(resp.status().is_success(), "setup request failed: {}", resp.status());
    resp.json().await.unwrap_or(Value::Null)
}

#[tokio::main]
async fn main() {
    let args = args();
    let dir = tempfile::tempdir().expect("temp dir");
    let node = NodeProc::start(
        dir.path(),
        &["--user-rps", "0", "--logins-per-minute", "0", "--registrations-per-minute", "0"],
    );
    let base = node.url.clone();
    let http = reqwest::Client::builder().pool_max_idle_per_host(args.senders * 2).build().expect("client");

    // Users u0..uN, paired (u0,u1), (u2,u3), ... as friends.
    let mut tokens = Vec::new();
    for i in 0..args.senders.max(2) {
        let name = format!("user{i}");
        post(&http, format!("{base}/api/v1/accounts"), None, json!({"username": name, "password": "password123"}))
            .await;
        let s =
            post(&http, format!("{base}/api/v1/sessions"), None, json!({"username": name, "password": "password123"}))
                .await;
        tokens.push(s["token"].as_str().expect("token").to_owned());
    }
    for i in (0..tokens.len() - 1).step_by(2) {
        post(
            &http,
            format!("{base}/api/v1/friend-requests"),
            Some(&tokens[i]),
            json!({"to": format!("user{}", i + 1)}),
        )
        .await;
        post(&http, format!("{base}/api/v1/friend-requests"), Some(&tokens[i + 1]), json!({"to": format!("user{i}")}))
            .await;
    }

    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let per_sender = args.rate.map(|r| Duration::from_secs_f64(args.senders as f64 / r));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, token) in tokens.iter().take(args.senders).enumerate() {
        let (http, base, token, errors) = (http.clone(), base.clone(), token.clone(), errors.clone());
        let partner = format!("user{}", i ^ 1);
        let senders = args.senders;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            // Stagger the senders evenly over one period: an open-loop, evenly spaced load.
            let mut next = Instant::now() + per_sender.map_or(Duration::ZERO, |g| g * i as u32 / senders as u32);
            let mut n = 0u64;
            while Instant::now() < deadline {
                if let Some(gap) = per_sender {
                    tokio::time::sleep_until(next.into()).await;
                    next += gap;
                }
                n += 1;
                let t = Instant::now();
                let r = http
                    .post(format!("{base}/api/v1/dms/{partner}/messages"))
                    .bearer_auth(&token)
                    .json(&json!({"text": format!("bench message {n} from {i}"), "client_msg_id": format!("{i}-{n}")}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().as_u16() == 201 => {
                        let _ = r.bytes().await;
                        lat.push(t.elapsed());
                    }
                    _ => {
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("sender"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort();

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
    let out = json!({
        "bench": "single_node",
        "senders": args.senders,
        "seconds": elapsed,
        "target_rate": args.rate,
        "acked": lat.len(),
        "errors": errors.load(std::sync::atomic::Ordering::Relaxed),
        "acked_per_sec": lat.len() as f64 / elapsed,
        "send_latency_ms": {"p50": pct(&lat, 0.5), "p99": pct(&lat, 0.99), "p999": pct(&lat, 0.999)},
        "history_read_ms": {"reads": hist.len(), "p50": pct(&hist, 0.5), "p99": pct(&hist, 0.99)},
        "node_peak_rss_mib": peak_rss_kib(node.pid()) as f64 / 1024.0,
        "commands_per_fsync": if batches > 0.0 { messages / batches } else { 0.0 },
    });
    println!("{}", serde_json::to_string_pretty(&out).expect("json"));
}
