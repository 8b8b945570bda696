//! Helpers for multi-process tests and benches: start real `chorus-node` processes on free
//! ports in temp dirs, wait for them on conditions with deadlines, and kill only the
//! processes we started.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Path of the `chorus-node` binary: `CHORUS_NODE_BIN`, else next to (or one level above)
/// the running executable, as cargo lays out tests, examples and binaries.
pub fn node_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CHORUS_NODE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    for _ in 0..2 {
        let candidate = dir.join("chorus-node");
        if candidate.is_file() {
            return candidate;
        }
        dir.pop();
    }
    PathBuf::from("chorus-node")
}

/// A running `chorus-node` process, killed (SIGKILL) and reaped on drop.
pub struct NodeProc {
    child: Child,
    /// Its HTTP base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// Its data dir.
    pub data_dir: PathBuf,
    log: mpsc::Receiver<String>,
}

impl NodeProc {
    /// Starts `chorus-node run` on `data_dir` with HTTP on a free port (the node binds port 0
    /// and reports the address it got, so there is no port race), plus `extra` flags.
    pub fn start(data_dir: &Path, extra: &[&str]) -> NodeProc {
        let mut child = Command::new(node_bin())
            .args(["run", "--data-dir"])
            .arg(data_dir)
            .args(["--http", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chorus-node");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        let url = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.split("http=").nth(1).filter(|_| line.contains("chorus-node serving")) {
                        let addr = addr.split_whitespace().next().unwrap_or_default();
                        break format!("http://{addr}");
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("chorus-node did not start in time; its log:\n{}", seen.join("\n"));
                }
            }
        };
        NodeProc { child, url, data_dir: data_dir.to_path_buf(), log: rx }
    }

    /// The process id (to read its resource use).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait (with a deadline) for a clean exit; returns the exit status code.
    pub fn terminate(mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "node did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lines the node logged so far (after start-up).
    pub fn log_lines(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}
