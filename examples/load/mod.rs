//! Load generation shared by the benches: users paired as friends, senders posting DMs (closed
//! loop, or paced open loop), optional SSE receivers that time delivery.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Command-line parser for a finite number above zero (rates, durations).
pub fn positive(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!("expected a number above 0, got {v:?}")),
    }
}

/// Milliseconds at percentile `p` of sorted durations.
pub fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Peak RSS of a process in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time (user + system) a process has used so far; `None` once it is gone.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(Duration::from_millis(ticks * 10))
}

/// Writes the machine's dirty page cache to disk before measuring. A release build leaves
/// ~1.2 GiB dirty; when the kernel writes it back mid-run, the nodes' WAL fsyncs queue behind
/// it and took 20-97 ms instead of < 5 ms (every run started right after a build, 4 of 4).
pub fn settle_disk() {
    if let Err(e) = std::process::Command::new("sync").status() {
        eprintln!("cannot run sync: {e}");
    }
}

/// What this machine's speed is today, so figures from different days can be told apart
/// (the same binaries have measured 2.5x apart on this project's VMs): one CPU-bound loop, a
/// thread woken from another and back (a cross-core wakeup on an idle machine), and an
/// append + `fdatasync` of 4 KiB in `dir` (what every WAL sync waits for).
pub fn machine(dir: &std::path::Path) -> Value {
    use std::io::Write;
    let started = Instant::now();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..50_000_000u64 {
        x = std::hint::black_box(x.rotate_left(5) ^ i).wrapping_mul(0x2545_F491_4F6C_DD1D);
    }
    std::hint::black_box(x);
    let cpu_ns = started.elapsed().as_secs_f64() * 1e9 / 50_000_000.0;

    let (to_echo, from_main) = std::sync::mpsc::sync_channel::<u32>(0);
    let (to_main, from_echo) = std::sync::mpsc::sync_channel::<u32>(0);
    let echo = std::thread::spawn(move || from_main.iter().try_for_each(|v| to_main.send(v)));
    const TRIPS: u32 = 2_000;
    let started = Instant::now();
    for i in 0..TRIPS {
        to_echo.send(i).expect("echo thread");
        from_echo.recv().expect("echo thread");
    }
    let wake_us = started.elapsed().as_secs_f64() * 1e6 / f64::from(TRIPS);
    drop(to_echo);
    let _ = echo.join();

    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path).expect("probe file");
    let mut syncs: Vec<Duration> = (0..300)
        .map(|_| {
            let t = Instant::now();
            file.write_all(&[7u8; 4096]).expect("probe write");
            file.sync_data().expect("probe fdatasync");
            t.elapsed()
        })
        .collect();
    let _ = std::fs::remove_file(&path);
    syncs.sort();
    json!({
        "cpu_loop_ns_per_iter": cpu_ns,
        "thread_wake_round_trip_us": wake_us,
        "append_fdatasync_ms": {"p50": pct(&syncs, 0.5), "p99": pct(&syncs, 0.99)},
    })
}

/// A setup request that must succeed.
pub async fn post(http: &reqwest::Client, url: String, token: Option<&str>, body: Value) -> Value {
    let mut req = http.post(url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("request");
    assert!(resp.status().is_success(), "setup request failed: {}", resp.status());
    resp.json().await.unwrap_or(Value::Null)
}

/// Registers `n` users (`{prefix}0..`), pairs (0,1), (2,3)... as friends; their tokens.
pub async fn users(http: &reqwest::Client, bases: &[String], prefix: &str, n: usize) -> Vec<String> {
    let mut tokens = Vec::new();
    for i in 0..n.max(2) {
        let base = &bases[i % bases.len()];
        let body = json!({"username": format!("{prefix}{i}"), "password": "password123"});
        post(http, format!("{base}/api/v1/accounts"), None, body.clone()).await;
        let s = post(http, format!("{base}/api/v1/sessions"), None, body).await;
        tokens.push(s["token"].as_str().expect("token").to_owned());
    }
    for i in (0..tokens.len() - 1).step_by(2) {
        let base = &bases[i % bases.len()];
        let url = format!("{base}/api/v1/friend-requests");
        post(http, url.clone(), Some(&tokens[i]), json!({"to": format!("{prefix}{}", i + 1)})).await;
        post(http, url, Some(&tokens[i + 1]), json!({"to": format!("{prefix}{i}")})).await;
    }
    tokens
}

/// One sender's own keep-alive HTTP/1.1 connection. The load generator shares the machine's two
/// cores with the nodes it measures, so a send should cost it little: reqwest's pool, retry
/// layer and per-request client clone cost about a third more CPU per message than this.
pub struct Conn {
    authority: String,
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Conn {
    /// A connection to `base` (`http://host:port`), opened on first use and again after an error.
    pub fn new(base: &str) -> Self {
        Self { authority: base.trim_start_matches("http://").to_owned(), sender: None }
    }

    /// POSTs a JSON body with a bearer token; the status and the body.
    pub async fn post(&mut self, path: &str, token: &str, body: Vec<u8>) -> Result<(u16, Bytes), String> {
        let result = self.try_post(path, token, body).await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn try_post(&mut self, path: &str, token: &str, body: Vec<u8>) -> Result<(u16, Bytes), String> {
        let sender = match &mut self.sender {
            Some(s) if !s.is_closed() => s,
            _ => {
                let tcp = tokio::net::TcpStream::connect(&self.authority).await.map_err(|e| e.to_string())?;
                tcp.set_nodelay(true).map_err(|e| e.to_string())?;
                let io = hyper_util::rt::TokioIo::new(tcp);
                let (sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                self.sender.insert(sender)
            }
        };
        sender.ready().await.map_err(|e| e.to_string())?;
        let req = hyper::Request::post(path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, body))
    }
}

/// What one load phase measured.
#[derive(Default)]
pub struct Outcome {
    /// Acknowledged send latencies, sorted.
    pub latency: Vec<Duration>,
    /// (request start, ack) of every acknowledged send.
    pub acks: Vec<(Instant, Instant)>,
    /// Failed sends.
    pub errors: u64,
    /// Wall time.
    pub seconds: f64,
    /// Send-to-stream delivery latencies, sorted (when receivers ran).
    pub delivery: Vec<Duration>,
}

impl Outcome {
    /// The JSON figures of this phase.
    pub fn json(&self) -> Value {
        let l = &self.latency;
        let mut out = json!({
            "acked": l.len(),
            "errors": self.errors,
            "acked_per_sec": l.len() as f64 / self.seconds,
            "send_latency_ms": {"p50": pct(l, 0.5), "p99": pct(l, 0.99), "p999": pct(l, 0.999)},
        });
        if !self.delivery.is_empty() {
            let d = &self.delivery;
            out["delivery_latency_ms"] = json!({"n": d.len(), "p50": pct(d, 0.5), "p99": pct(d, 0.99)});
        }
        out
    }
}

/// One load phase.
#[derive(Clone, Copy)]
pub struct Load {
    /// Concurrent senders.
    pub senders: usize,
    /// How long.
    pub seconds: f64,
    /// Total msg/s (paced), or as fast as acks come back.
    pub rate: Option<f64>,
    /// Time delivery on SSE streams.
    pub receive: bool,
}

/// Sender `i` posts to its partner `i ^ 1` through `bases[i % len]` until `until`; paced to
/// `rate` msg/s in total if given. With `receive`, each partner listens on SSE through the
/// next node and the delivery of every message to its recipient is timed.
pub async fn run(http: &reqwest::Client, bases: &[String], prefix: &str, tokens: &[String], load: Load) -> Outcome {
    let Load { senders, seconds, rate, receive } = load;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
    let delivered: Arc<Mutex<Vec<Duration>>> = Default::default();
    let mut receivers = Vec::new();
    if receive {
        for i in 0..senders {
            let base = bases[(i + 1) % bases.len()].clone();
            let (http, token, sent, delivered) = (http.clone(), tokens[i ^ 1].clone(), sent.clone(), delivered.clone());
            // A DM is an event for both members: only the recipient's stream times it.
            let me = format!("{prefix}{}", i ^ 1);
            let resp = http.get(format!("{base}/api/v1/events")).bearer_auth(&token).send().await.expect("sse");
            receivers.push(tokio::spawn(async move {
                use futures::StreamExt;
                let mut stream = resp.bytes_stream();
                let mut buf = String::new();
                while let Some(Ok(chunk)) = stream.next().await {
                    let now = Instant::now();
                    buf.push_str(&String::from_utf8_lossy(&chunk));
                    while let Some(end) = buf.find("\n\n") {
                        let frame: String = buf.drain(..end + 2).collect();
                        let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data:")) else { continue };
                        let Ok(ev) = serde_json::from_str::<Value>(data.trim()) else { continue };
                        if ev["message"]["sender"].as_str() == Some(me.as_str()) {
                            continue;
                        }
                        let Some(id) = ev["message"]["client_msg_id"].as_str() else { continue };
                        if let Some(t) = sent.lock().unwrap().remove(id) {
                            delivered.lock().unwrap().push(now - t);
                        }
                    }
                }
            }));
        }
    }
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let per_sender = rate.map(|r| Duration::from_secs_f64(senders as f64 / r));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..senders {
        let (mut conn, token, errors, sent) =
            (Conn::new(&bases[i % bases.len()]), tokens[i].clone(), errors.clone(), sent.clone());
        let path = format!("/api/v1/dms/{prefix}{}/messages", i ^ 1);
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            // Stagger the senders evenly over one period: an open-loop, evenly spaced load.
            let mut next = Instant::now() + per_sender.map_or(Duration::ZERO, |g| g * i as u32 / senders as u32);
            let mut n = 0u64;
            while Instant::now() < deadline {
                if let Some(gap) = per_sender {
                    tokio::time::sleep_until(next.into()).await;
                    next += gap;
                }
                n += 1;
                let id = format!("{i}-{n}-{}", start.elapsed().as_nanos());
                let t = Instant::now();
                sent.lock().unwrap().insert(id.clone(), t);
                let body = json!({"text": format!("bench message {n} from {i}"), "client_msg_id": id}).to_string();
                match conn.post(&path, &token, body.into_bytes()).await {
                    Ok((201, _)) => acks.push((t, Instant::now())),
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            acks
        }));
    }
    let mut out = Outcome::default();
    for t in tasks {
        out.acks.extend(t.await.expect("sender"));
    }
    out.seconds = start.elapsed().as_secs_f64();
    if receive {
        // Let the last deliveries arrive.
        let settle = Instant::now() + Duration::from_secs(2);
        while Instant::now() < settle && !sent.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for r in receivers {
            r.abort();
        }
        out.delivery = std::mem::take(&mut *delivered.lock().unwrap());
        out.delivery.sort();
    }
    out.latency = out.acks.iter().map(|(s, a)| *a - *s).collect();
    out.latency.sort();
    out.errors = errors.load(Ordering::Relaxed);
    out
}
