//! Helpers for snapshot tests and benches: incompressible data, and a node whose install is
//! slowed down as a slow disk would.

use super::{signal, NodeProc};
use std::time::{Duration, Instant};

/// Stretches a node's snapshot install, as a slow disk (or a far larger state) would: once
/// the node begins to install (its `installing-*` copy appears under `db/snapshots`), it is
/// stopped `stop` out of every `stop + run` for `total`, then left running. Each stop should be
/// shorter than the coordinator's 2 s and the pings' 3 s timeouts, so nothing else notices.
pub struct InstallStall {
    began: std::sync::Arc<std::sync::OnceLock<Instant>>,
    thread: std::thread::JoinHandle<()>,
}

impl InstallStall {
    /// Watches `node` (for up to `wait` for the install to begin) on a thread of its own.
    pub fn start(node: &NodeProc, wait: Duration, total: Duration, stop: Duration, run: Duration) -> InstallStall {
        let (snapshots, pid) = (node.data_dir().join("db").join("snapshots"), node.pid());
        let began = std::sync::Arc::new(std::sync::OnceLock::new());
        let at = began.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + wait;
            let installing = || {
                let entries = std::fs::read_dir(&snapshots).into_iter().flatten().flatten();
                entries.into_iter().any(|e| e.file_name().to_string_lossy().starts_with("installing-"))
            };
            while !installing() {
                if Instant::now() > deadline {
                    return;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            signal("-STOP", pid);
            let _ = at.set(Instant::now());
            while at.get().is_some_and(|t| t.elapsed() < total) {
                std::thread::sleep(stop);
                signal("-CONT", pid);
                std::thread::sleep(run);
                signal("-STOP", pid);
            }
            signal("-CONT", pid);
        });
        InstallStall { began, thread }
    }

    /// When the stall began, once it has.
    pub fn began(&self) -> Option<Instant> {
        self.began.get().copied()
    }

    /// Whether the stall is over (or never began in time).
    pub fn is_over(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the stall to end; when it began (`None`: the install never began in time).
    pub fn join(self) -> Option<Instant> {
        self.thread.join().expect("the stall thread");
        self.began.get().copied()
    }
}

/// `mib` MiB of xorshift output: incompressible, so LZ4 does not shrink what a snapshot
/// carries. `seed` moves on, so the next call gives other bytes.
pub fn incompressible(mib: u64, seed: &mut u64) -> Vec<u8> {
    (0..mib * 1024 * 128)
        .flat_map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            seed.to_le_bytes()
        })
        .collect()
}
