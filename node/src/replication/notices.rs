//! The leader's event notices on gossip: what streams on every node push to their clients.

use crate::overlay::Client;
use crate::storage::Notice;
use chorus_protocol::cluster::{EventNotices, EVENTS_TOPIC};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The least time between two notices. A notice after a quiet spell goes out at once; while
/// entries commit faster than this, each notice covers all the entries since the last one.
const NOTICE_GAP: Duration = Duration::from_millis(5);
/// Users per gossip message.
const NOTICE_USERS: usize = 2000;
/// A user's events are carried only up to this size (else streams read them from storage).
const CARRY_PER_USER: usize = 64 * 1024;
/// Carried event bytes per gossip message (gossip's limit is 1 MiB).
const CARRY_PER_MESSAGE: usize = 512 * 1024;

/// Publishes the leader's event notices, coalesced (at most one per [`NOTICE_GAP`]): per user
/// the newest seq and the events since the last notice, a gossip message per 2,000 users or
/// 512 KiB of events.
pub(super) async fn publish(client: Client, mut rx: mpsc::Receiver<(Vec<Notice>, Vec<String>)>) {
    let mut last = Instant::now().checked_sub(NOTICE_GAP).unwrap_or_else(Instant::now);
    while let Some(first) = rx.recv().await {
        tokio::time::sleep_until(last + NOTICE_GAP).await;
        last = Instant::now();
        let mut latest: HashMap<String, (u64, Vec<chorus_protocol::Event>)> = HashMap::new();
        let mut revoked = Vec::new();
        let mut add = |(notices, sessions): (Vec<Notice>, Vec<String>)| {
            for n in notices {
                let e = latest.entry(n.user).or_default();
                e.0 = e.0.max(n.seq);
                e.1.extend(n.events);
            }
            revoked.extend(sessions);
        };
        add(first);
        while let Ok(more) = rx.try_recv() {
            add(more);
        }
        let mut chunks = vec![EventNotices { revoked_sessions: revoked, ..Default::default() }];
        let mut carried = 0;
        for (user, (seq, events)) in latest {
            let cbor = cbor4ii::serde::to_vec(Vec::new(), &events).unwrap_or_default();
            let carry = cbor.len() <= CARRY_PER_USER;
            let full = chunks.last().is_some_and(|c| c.users.len() >= NOTICE_USERS)
                || (carry && carried + cbor.len() > CARRY_PER_MESSAGE);
            if full {
                chunks.push(EventNotices::default());
                carried = 0;
            }
            let chunk = chunks.last_mut().expect("one chunk at least");
            if carry {
                carried += cbor.len();
                chunk.events.push(chorus_protocol::cluster::CarriedEvents { user: user.clone(), cbor });
            }
            chunk.users.push((user, seq));
        }
        for notice in chunks {
            let Ok(data) = cbor4ii::serde::to_vec(Vec::new(), &notice) else { continue };
            if let Err(e) = client.publish(EVENTS_TOPIC, data).await {
                tracing::trace!(error = %e, "event notice not published (no subscribers yet?)");
            }
        }
    }
}
