//! A client that stops reading: how long a write to it may wait.
//!
//! hyper has no write timeout. A client that stops reading its answer (a
//! paused `curl`, a notebook kernel that hangs halfway through a session's
//! log) leaves hyper's write pending for ever, and with it the request's
//! Livy connection, one of `max-upstream-connections`: enough such clients
//! and every other request waits for a connection. nginx bounds this with
//! `send_timeout`, HAProxy with `timeout client`.
//!
//! So the client's socket (under TLS, the TLS stream) is wrapped: a write,
//! flush or shutdown that makes no progress for `client-send-timeout`
//! fails with `TimedOut`. hyper then ends the connection and drops the
//! response body, which closes the Livy connection mid-answer instead of
//! returning it to the pool. Progress of any size restarts the time, as
//! nginx's timer does: it bounds the silence between two writes, not the
//! transfer, so a slow reader of a large answer is not cut off.
//!
//! On HTTP/2 it sees only a client whose socket stops taking bytes. One
//! that keeps reading its socket but grants no flow-control window stalls
//! its stream above this layer (hyper waits for window before it writes):
//! `h2c` watches for that with the same timeout.
//!
//! Written here rather than taken from a crate: `tokio-io-timeout` would
//! do it, but keeps its timers (tokio's `Sleep`, inline) in every
//! connection for its life; this one allocates its timer at the first
//! write that has to wait, so that the idle connections (most of them, and
//! what `docs/benchmarks.md` counts per connection) pay for a `None`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::park::Readiness;

/// The client's socket, its writes bounded by the send timeout.
pub struct SendTimeout<I> {
    io: I,
    timeout: Duration,
    /// Made at the first write that waits, kept for the next.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether `timer` counts for the write waiting now.
    armed: bool,
}

impl<I> SendTimeout<I> {
    /// `io` with each write, flush and shutdown allowed `timeout` without
    /// progress.
    pub fn new(io: I, timeout: Duration) -> Self {
        SendTimeout {
            io,
            timeout,
            timer: None,
            armed: false,
        }
    }

    /// What a write-side poll of the socket means under the timeout:
    /// progress disarms it; a wait arms it (once per wait) and fails it
    /// once the timer has run out.
    fn bound<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.armed = false;
            return polled;
        }
        if !self.armed {
            // A timeout no instant can hold (humantime takes billions of
            // years) waits for ever rather than panicking.
            let Some(deadline) = Instant::now().checked_add(self.timeout) else {
                return Poll::Pending;
            };
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        let expired = self
            .timer
            .as_mut()
            .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
        if !expired {
            return Poll::Pending;
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client read nothing for client-send-timeout ({:?})",
                self.timeout
            ),
        )))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for SendTimeout<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for SendTimeout<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.bound(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.bound(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.bound(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_shutdown(cx);
        this.bound(cx, polled)
    }
}

impl<I: Readiness> Readiness for SendTimeout<I> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.poll_read_ready(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_write_that_waits_past_the_timeout_fails_and_progress_restarts_it() {
        // A pipe holding 16 bytes: the writer waits once it is full.
        let (mut reader, writer) = tokio::io::duplex(16);
        let mut w = SendTimeout::new(writer, Duration::from_secs(10));
        w.write_all(&[1; 16]).await.unwrap();
        // Full: the next write waits; the reader takes some after 9 s,
        // within the timeout, so the write goes on.
        let reading = async {
            tokio::time::sleep(Duration::from_secs(9)).await;
            let mut buf = [0; 8];
            tokio::io::AsyncReadExt::read_exact(&mut reader, &mut buf)
                .await
                .unwrap();
        };
        let (written, ()) = tokio::join!(w.write(&[2; 8]), reading);
        assert_eq!(written.unwrap(), 8, "progress within the timeout");
        // Full again, and nobody reads: 10 s of silence fail the write,
        // counted from this wait, not from the first one.
        let started = Instant::now();
        let e = w.write(&[3; 8]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        drop(reader);
    }

    #[tokio::test(start_paused = true)]
    async fn writes_that_never_wait_make_no_timer() {
        let (_reader, writer) = tokio::io::duplex(1024);
        let mut w = SendTimeout::new(writer, Duration::from_secs(10));
        w.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        w.flush().await.unwrap();
        assert!(w.timer.is_none(), "no allocation without a wait");
    }
}
