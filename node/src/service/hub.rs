//! Wake-ups for event streams: "user X has events up to seq N".
//!
//! One `watch` channel per user with an open stream. A notice only wakes the stream; the stream
//! then reads the user's event log from where it stopped, so a missed or coalesced notice never
//! loses an event.

use crate::storage::Notice;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::watch;

/// Per-user wake-up channels.
#[derive(Debug, Default)]
pub struct Hub {
    users: Mutex<HashMap<String, watch::Sender<u64>>>,
    closed: std::sync::atomic::AtomicBool,
}

impl Hub {
    /// A receiver that changes whenever `user` gets new events.
    pub fn subscribe(&self, user: &str) -> watch::Receiver<u64> {
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return watch::channel(0).1; // sender dropped: the stream ends at once
        }
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        users.entry(user.to_owned()).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// Wakes the streams of the users in `notices`; forgets users whose streams all closed.
    pub fn notify(&self, notices: &[Notice]) {
        if notices.is_empty() {
            return;
        }
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        for n in notices {
            if let Some(tx) = users.get(&n.user) {
                if tx.receiver_count() == 0 {
                    users.remove(&n.user);
                } else {
                    tx.send_replace(n.seq);
                }
            }
        }
    }

    /// Ends every stream (shutdown): their wake-up channels close.
    pub fn close(&self) {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        users.clear();
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
