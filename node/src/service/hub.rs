//! Wake-ups for event streams: "user X has events up to seq N, the newest being these".
//!
//! One `watch` channel per user with an open stream, holding the newest [`Tip`]. A stream that
//! is exactly where the tip's events begin takes them from there; any other stream reads the
//! user's event log from where it stopped, so a missed or coalesced notice never loses an event.

use chorus_protocol::Event;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The newest a node heard of a user's event log.
#[derive(Debug, Clone, Default)]
pub struct Tip {
    /// Newest event seq.
    pub seq: u64,
    /// Some of the newest events, consecutive, ending at `seq` (may be empty).
    pub events: Arc<[Event]>,
}

impl Tip {
    /// The carried events after `last`, if they continue exactly from it.
    pub fn after(&self, last: u64) -> Vec<Event> {
        let newer = self.events.iter().filter(|e| e.seq > last);
        (last + 1..).zip(newer).take_while(|(want, e)| e.seq == *want).map(|(_, e)| e.clone()).collect()
    }
}

/// Why an event stream read the user's log at the leader instead of taking carried events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadReason {
    /// `start` (catching up when opened), `gap` (a wake-up whose events do not continue from
    /// where the stream is) or `poll` (no wake-up for a while).
    pub why: &'static str,
}

/// Per-user wake-up channels.
#[derive(Debug, Default)]
pub struct Hub {
    users: Mutex<HashMap<String, watch::Sender<Tip>>>,
    closed: std::sync::atomic::AtomicBool,
    /// Streams' reads of the event log, by reason (`/metrics`: `chorus_event_stream_reads`).
    pub reads: Family<ReadReason, Counter>,
}

impl Hub {
    /// A receiver that changes whenever `user` gets new events.
    pub fn subscribe(&self, user: &str) -> watch::Receiver<Tip> {
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return watch::channel(Tip::default()).1; // sender dropped: the stream ends at once
        }
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        users.entry(user.to_owned()).or_insert_with(|| watch::channel(Tip::default()).0).subscribe()
    }

    /// Wakes `user`'s streams, if any: events up to `seq`, the newest of them from `events()`
    /// (only called when someone listens). Forgets users whose streams all closed; never moves
    /// a tip backwards (a follower's own apply can trail the leader's notice).
    pub fn notify(&self, user: &str, seq: u64, events: impl FnOnce() -> Vec<Event>) {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = users.get(user) else { return };
        if tx.receiver_count() == 0 {
            users.remove(user);
            return;
        }
        if seq > tx.borrow().seq {
            tx.send_replace(Tip { seq, events: events().into() });
        }
    }

    /// Wakes the streams of the users an applied batch gave events.
    pub fn notify_applied(&self, notices: &[crate::storage::Notice]) {
        for n in notices {
            self.notify(&n.user, n.seq, || n.events.clone());
        }
    }

    /// Ends every stream (shutdown): their wake-up channels close.
    pub fn close(&self) {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        users.clear();
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_protocol::EventKind;

    fn tip(seqs: &[u64]) -> Tip {
        let ev = |seq| Event { seq, at: 0, kind: EventKind::FriendRemoved { username: "x".into() } };
        Tip { seq: seqs.last().copied().unwrap_or(0), events: seqs.iter().map(|s| ev(*s)).collect() }
    }

    fn seqs(events: Vec<Event>) -> Vec<u64> {
        events.into_iter().map(|e| e.seq).collect()
    }

    #[test]
    fn carried_events_are_taken_only_where_they_continue() {
        let t = tip(&[4, 5, 6]);
        assert_eq!(seqs(t.after(3)), vec![4, 5, 6]);
        assert_eq!(seqs(t.after(5)), vec![6]);
        assert!(t.after(6).is_empty(), "nothing new");
        assert!(t.after(2).is_empty(), "seq 3 is missing: read storage instead");
        assert_eq!(seqs(tip(&[4, 6]).after(3)), vec![4], "stops at a gap");
    }

    #[test]
    fn a_tip_never_moves_back() {
        let hub = Hub::default();
        let rx = hub.subscribe("x");
        hub.notify("x", 6, || tip(&[5, 6]).events.to_vec());
        hub.notify("x", 5, || tip(&[5]).events.to_vec());
        assert_eq!(rx.borrow().seq, 6);
        hub.notify("y", 9, || panic!("nobody listens to y: nothing decoded"));
    }
}
