//! A follower's applies at the lowest CPU priority. No client waits for them (the leader
//! answers writes and reads), but on a small machine they compete for the cores with the
//! appends and acknowledgements every commit waits for. So a follower applies on a thread at
//! nice 19, as long as it is at most [`MAX_BEHIND`] entries behind its log's end; further
//! behind (a machine too busy to give that thread time), or on the leader, it applies on the
//! blocking pool as before. (BENCHMARKS.md, session 14.)

use super::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;

/// How far behind its log's end a follower may apply at low priority.
pub(super) const MAX_BEHIND: u64 = 32;

type Job = Box<dyn FnOnce() + Send>;

/// The low-priority apply thread (joined on drop) and what decides its use.
#[derive(Debug)]
pub struct Background {
    queue: mpsc::Sender<Job>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Set while this node is the Raft leader.
    leading: Arc<AtomicBool>,
    /// The index of the last entry appended to the log.
    log_end: Arc<AtomicU64>,
}

impl Background {
    /// Starts the thread.
    pub fn start(leading: Arc<AtomicBool>, log_end: Arc<AtomicU64>) -> Self {
        let (queue, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("apply-background".into())
            .spawn(move || {
                lowest_cpu_priority();
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .expect("spawn the background apply thread");
        Self { queue, thread: Some(thread), leading, log_end }
    }

    /// Whether an apply starting at log index `first` goes to the low-priority thread.
    pub fn wanted(&self, first: u64) -> bool {
        !self.leading.load(Ordering::Relaxed)
            && self.log_end.load(Ordering::Relaxed).saturating_sub(first) <= MAX_BEHIND
    }

    /// Runs `f` on the low-priority thread.
    pub async fn run<T, F>(&self, store: &Arc<Store>, f: F) -> Result<T, AnyError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, AnyError> + Send + 'static,
    {
        let (done, rx) = tokio::sync::oneshot::channel();
        let store = store.clone();
        let job: Job = Box::new(move || {
            let _ = done.send(f(&store));
        });
        self.queue.send(job).map_err(|_| io_err("the background apply thread stopped"))?;
        rx.await.map_err(|_| io_err("the background apply thread stopped"))?
    }
}

impl Drop for Background {
    /// Closes the queue and waits for the thread, as the WAL syncer does: a job's handle on
    /// the database must not be the last one, dropped on a detached thread while the process
    /// exits (RocksDB aborts on that race).
    fn drop(&mut self) {
        drop(std::mem::replace(&mut self.queue, mpsc::channel().0));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(target_os = "linux")]
fn lowest_cpu_priority() {
    // On Linux, PRIO_PROCESS with a thread id sets that one thread's nice value.
    // SAFETY: plain syscalls on the calling thread; no memory is passed.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
    if r != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not lower the background apply thread's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lowest_cpu_priority() {}
