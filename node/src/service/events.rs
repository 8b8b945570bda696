//! Events: a user's gapless event log, read from storage and followed through the hub.

use super::hub::ReadReason;
use super::{Result, Service};
use crate::storage::read::Query;
use chorus_protocol::Event;
use futures::Stream;

/// How long an idle stream waits for a wake-up before it reads its log again.
const STREAM_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Most events one catch-up read returns.
pub const EVENTS_LIMIT_MAX: usize = 1000;

impl Service {
    /// The caller's events with seq > `after`.
    pub async fn events(&self, username: &str, after: u64, limit: usize) -> Result<Vec<Event>> {
        let limit = limit.clamp(1, EVENTS_LIMIT_MAX);
        self.read(Query::Events { user: username.to_owned(), after, limit }).await
    }

    /// Newest event seq of a user.
    pub async fn last_event_seq(&self, username: &str) -> Result<u64> {
        self.read(Query::LastEventSeq(username.to_owned())).await
    }

    /// Wakes when `username` has new events.
    pub fn subscribe(&self, username: &str) -> tokio::sync::watch::Receiver<super::hub::Tip> {
        self.inner.hub.subscribe(username)
    }

    /// `username`'s event log from seq `after + 1` on, forever: catches up from storage, then
    /// follows wake-ups, taking the events they carry when those continue exactly where the
    /// stream is, and reading storage otherwise. Gapless and in order by construction; ends
    /// only on a storage error (yielded) or shutdown.
    pub fn event_stream(
        &self,
        username: &str,
        after: u64,
    ) -> impl Stream<Item = Result<Event>> + Send + 'static + use<> {
        struct St {
            svc: Service,
            user: String,
            last: u64,
            wake: tokio::sync::watch::Receiver<super::hub::Tip>,
            buf: std::collections::VecDeque<Event>,
            /// Storage may hold events this stream has not seen: why (`start`, `poll`).
            read: Option<&'static str>,
            failed: bool,
        }
        // Subscribe before the first read: a commit between the read and the wait still wakes us.
        let wake = self.subscribe(username);
        let st = St {
            svc: self.clone(),
            user: username.to_owned(),
            last: after,
            wake,
            buf: Default::default(),
            read: Some("start"),
            failed: false,
        };
        futures::stream::unfold(st, |mut st| async move {
            loop {
                if st.failed {
                    return None;
                }
                if let Some(ev) = st.buf.pop_front() {
                    st.last = ev.seq;
                    return Some((Ok(ev), st));
                }
                let (tip, carried) = {
                    let tip = st.wake.borrow_and_update();
                    (tip.seq, tip.after(st.last))
                };
                if !carried.is_empty() {
                    st.buf.extend(carried);
                    continue;
                }
                let why = st.read.or((tip > st.last).then_some("gap"));
                if let Some(why) = why {
                    st.svc.inner.hub.reads.get_or_create(&ReadReason { why }).inc();
                    match st.svc.events(&st.user, st.last, EVENTS_LIMIT_MAX).await {
                        Ok(evs) if !evs.is_empty() => {
                            st.buf.extend(evs);
                            continue; // there may be more
                        }
                        Ok(_) => st.read = None,
                        Err(e) => {
                            st.failed = true;
                            return Some((Err(e), st));
                        }
                    }
                }
                // Notices from other nodes travel by gossip, which may drop one: a stream that
                // hears nothing looks again after a while anyway.
                match tokio::time::timeout(STREAM_POLL, st.wake.changed()).await {
                    Ok(Err(_)) => return None,
                    Ok(Ok(())) => {}
                    Err(_) => st.read = Some("poll"),
                }
            }
        })
    }
}
