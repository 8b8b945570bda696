//! Notices that this process was paused (SIGSTOP, a frozen VM, a starved runtime).
//!
//! The driver's loop turns at least every half heartbeat (its tick). A turn that comes later
//! than the coordinator timeout means the process did not run meanwhile, and what it then
//! finds queued is old news: connections its own timers now declare dead, a coordinator's
//! heartbeat last heard before the pause. Acting on that, a thawed node started an election
//! while the coordinator elected in its absence was alive, and being the highest id it took
//! the role back (4 runs in 27 of the frozen-coordinator cluster test under load). So for one
//! timeout after a pause the node waits to hear the coordinator instead.

use std::time::{Duration, Instant};

/// When the driver's loop last turned, and until when its view is not trusted.
#[derive(Debug)]
pub(super) struct PauseWatch {
    limit: Duration,
    last_turn: Instant,
    quiet_until: Option<Instant>,
}

impl PauseWatch {
    /// A watch for pauses longer than `limit` (the coordinator timeout).
    pub(super) fn new(limit: Duration, now: Instant) -> Self {
        Self { limit, last_turn: now, quiet_until: None }
    }

    /// The loop turns at `now`: the pause's length if it did not turn for longer than the limit.
    pub(super) fn turn(&mut self, now: Instant) -> Option<Duration> {
        let gap = now.saturating_duration_since(self.last_turn);
        self.last_turn = now;
        (gap > self.limit).then(|| {
            self.quiet_until = Some(now + self.limit);
            gap
        })
    }

    /// Whether a pause ended less than the limit before `now`.
    pub(super) fn quiet(&self, now: Instant) -> bool {
        self.quiet_until.is_some_and(|until| now < until)
    }
}

#[cfg(test)]
mod tests {
    use super::PauseWatch;
    use std::time::{Duration, Instant};

    #[test]
    fn a_turn_later_than_the_limit_is_a_pause_and_quiets_the_next_limit() {
        let (limit, t0) = (Duration::from_secs(2), Instant::now());
        let mut w = PauseWatch::new(limit, t0);
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(w.turn(ms(250)), None, "an ordinary tick");
        assert!(!w.quiet(ms(250)));
        assert_eq!(w.turn(ms(2250)), None, "exactly the limit is no pause");
        assert_eq!(w.turn(ms(12_250)), Some(Duration::from_secs(10)), "stopped for 10 s");
        assert!(w.quiet(ms(12_300)));
        assert_eq!(w.turn(ms(12_500)), None);
        assert!(w.quiet(ms(14_249)));
        assert!(!w.quiet(ms(14_250)), "trusted again one limit after the pause");
    }
}
