//! `futures_timer::Delay` on tokio's timer.
//!
//! libp2p (swarm upgrades, `futures-bounded` in request-response, gossipsub) creates and drops a
//! `futures_timer::Delay` for every substream and request. futures-timer 3.0.3 keeps its timers
//! on a helper thread and wakes that thread (a futex wake and two context switches) whenever a
//! timer is added or dropped: ~8,000 times a second on a Raft leader under load. This crate,
//! patched in for futures-timer by the workspace, keeps the same API (`Delay::new`,
//! `Delay::reset`, `Future`) but registers each delay in the tokio runtime it is created in,
//! whose worker drives its timers while it polls tasks. Outside a runtime, a delay is
//! registered with one shared background runtime instead. Inside a runtime built without
//! `enable_time`, creating a delay panics, as `tokio::time::sleep` does: every Chorus runtime
//! enables it.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// A future that completes once its duration has elapsed.
pub struct Delay(Pin<Box<Sleep>>);

impl Delay {
    /// A delay that completes `dur` from now.
    pub fn new(dur: Duration) -> Delay {
        let at = deadline(dur);
        let _in_fallback = tokio::runtime::Handle::try_current().is_err().then(|| fallback().enter());
        Delay(Box::pin(tokio::time::sleep_until(at)))
    }

    /// Restarts the delay to complete `dur` from now.
    pub fn reset(&mut self, dur: Duration) {
        self.0.as_mut().reset(deadline(dur));
    }
}

/// `now + dur`, saturating far in the future (callers pass `Duration::MAX` for "never").
fn deadline(dur: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(dur).unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

/// A runtime on its own thread whose timer serves delays created outside any runtime.
fn fallback() -> &'static tokio::runtime::Handle {
    static FALLBACK: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    FALLBACK.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("timer runtime");
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name("futures-timer".into())
            .spawn(move || rt.block_on(std::future::pending::<()>()))
            .expect("timer thread");
        handle
    })
}

impl Future for Delay {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl std::fmt::Debug for Delay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delay").field("deadline", &self.0.deadline()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::Delay;
    use std::time::{Duration, Instant};

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn fires_after_its_duration_and_after_a_reset() {
        let start = tokio::time::Instant::now();
        Delay::new(Duration::from_millis(50)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(50));
        let mut d = Delay::new(Duration::from_millis(10));
        d.reset(Duration::from_millis(30));
        d.await;
        assert_eq!(start.elapsed(), Duration::from_millis(80));
    }

    #[test]
    fn works_outside_a_runtime() {
        let start = Instant::now();
        block_on_this_thread(Delay::new(Duration::from_millis(20)));
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn a_huge_duration_does_not_overflow() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            let mut d = Delay::new(Duration::MAX);
            let woke = tokio::time::timeout(Duration::from_millis(10), &mut d).await;
            assert!(woke.is_err(), "a delay of Duration::MAX never fires");
        });
    }

    /// Polls a future to completion on this thread, outside any tokio runtime; panics after 5 s.
    fn block_on_this_thread<F: std::future::Future>(f: F) -> F::Output {
        use std::sync::Arc;
        use std::task::{Context, Poll, Wake};
        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Arc::new(Unpark(std::thread::current())).into();
        let mut cx = Context::from_waker(&waker);
        let mut f = std::pin::pin!(f);
        let give_up = Instant::now() + Duration::from_secs(5);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            let left = give_up.checked_duration_since(Instant::now()).expect("the delay never fired");
            std::thread::park_timeout(left);
        }
    }
}
