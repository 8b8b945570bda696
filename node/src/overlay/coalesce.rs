//! Yamux over a socket that sends the frames of one connection poll together.
//!
//! Yamux flushes its socket after every frame it writes (rust-yamux #128). Under the noise
//! channel a flush is an encrypted record and a `sendto`, and on the other end a wakeup and a
//! `recv`. One request-response call is about seven small frames: a SYN with the protocol name,
//! the request, a FIN, and the listener's confirmation, answer and FIN. So the cluster sent
//! about three TCP segments per chat message, most under 120 bytes.
//!
//! [`Coalesced`] sits between yamux and noise. A flush that follows new writes is put off: it
//! wakes the connection task and answers `Pending`, which yamux's poll loop ignores, so the loop
//! goes on writing every frame its streams have queued. The next flush with nothing new written
//! (the first one of the next poll, which the wake guarantees) sends them all at once. Nothing
//! waits longer than one more poll of the connection task.

use futures::{AsyncRead, AsyncWrite};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p::yamux;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A socket whose flushes wait until its writer has queued everything it had.
#[derive(Debug)]
pub(crate) struct Coalesced<S> {
    inner: S,
    /// Written since the last flush call: that flush is put off.
    written: bool,
}

impl<S> Coalesced<S> {
    fn new(inner: S) -> Self {
        Self { inner, written: false }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesced<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesced<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.written = true;
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if std::mem::take(&mut self.written) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Sends whatever a put-off flush still owes (a no-op when nothing is buffered).
        self.written = false;
        std::task::ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// libp2p's yamux upgrade, run over [`Coalesced`].
#[derive(Debug, Clone, Default)]
pub(crate) struct CoalescedYamux(yamux::Config);

impl UpgradeInfo for CoalescedYamux {
    type Info = <yamux::Config as UpgradeInfo>::Info;
    type InfoIter = <yamux::Config as UpgradeInfo>::InfoIter;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.protocol_info()
    }
}

impl<C: AsyncRead + AsyncWrite + Send + Unpin + 'static> InboundConnectionUpgrade<C> for CoalescedYamux {
    type Output = yamux::Muxer<Coalesced<C>>;
    type Error = io::Error;
    type Future = <yamux::Config as InboundConnectionUpgrade<Coalesced<C>>>::Future;

    fn upgrade_inbound(self, io: C, info: Self::Info) -> Self::Future {
        self.0.upgrade_inbound(Coalesced::new(io), info)
    }
}

impl<C: AsyncRead + AsyncWrite + Send + Unpin + 'static> OutboundConnectionUpgrade<C> for CoalescedYamux {
    type Output = yamux::Muxer<Coalesced<C>>;
    type Error = io::Error;
    type Future = <yamux::Config as OutboundConnectionUpgrade<Coalesced<C>>>::Future;

    fn upgrade_outbound(self, io: C, info: Self::Info) -> Self::Future {
        self.0.upgrade_outbound(Coalesced::new(io), info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    /// The socket under test: what reached it, and how often it was flushed.
    #[derive(Default)]
    struct Wire {
        sent: Vec<u8>,
        buffered: Vec<u8>,
        flushes: usize,
        closed: bool,
    }

    impl AsyncWrite for Wire {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.buffered.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            let this = &mut *self;
            this.sent.append(&mut this.buffered);
            this.flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_close(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.closed = true;
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Yamux's pattern: write a frame, flush, write the next, flush... then a later poll.
    #[test]
    fn frames_written_in_one_poll_leave_in_one_flush() {
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut s = Coalesced::new(Wire::default());
        for frame in [&b"syn"[..], b"request", b"fin"] {
            assert!(Pin::new(&mut s).poll_write(&mut cx, frame).is_ready());
            assert!(Pin::new(&mut s).poll_flush(&mut cx).is_pending(), "a flush right after a write is put off");
        }
        assert_eq!(s.inner.flushes, 0);
        assert!(s.inner.sent.is_empty());
        assert!(wakes.0.load(Ordering::SeqCst) >= 1, "a put-off flush must wake the task, or the frames would stall");

        // The next poll: nothing new written, so the flush goes through, once, with every frame.
        assert!(matches!(Pin::new(&mut s).poll_flush(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(s.inner.flushes, 1);
        assert_eq!(s.inner.sent, b"synrequestfin");
    }

    #[test]
    fn close_sends_what_a_put_off_flush_still_owes() {
        let waker = Waker::from(Arc::new(Wakes::default()));
        let mut cx = Context::from_waker(&waker);
        let mut s = Coalesced::new(Wire::default());
        assert!(Pin::new(&mut s).poll_write(&mut cx, b"last words").is_ready());
        assert!(Pin::new(&mut s).poll_flush(&mut cx).is_pending());
        assert!(matches!(Pin::new(&mut s).poll_close(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(s.inner.sent, b"last words");
        assert!(s.inner.closed);
    }
}
