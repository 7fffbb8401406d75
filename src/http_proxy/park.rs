//! Serving one HTTP/1.1 client connection, with its buffers given back
//! while it idles.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB write buffer for the
//! whole life of an HTTP/1.1 connection, and has no setting to shrink or
//! release them: with 10,000 kept-alive clients that is most of the
//! proxy's memory (16 of the 22 KiB each such connection costs, measured
//! with massif: docs/benchmarks.md). A gateway in front of Livy holds many
//! connections that say nothing for seconds (pollers of a session's state,
//! a load balancer's pooled connections).
//!
//! So a connection that has been idle for [`PARK_AFTER`] is *parked*:
//! hyper's connection is closed the graceful way, which, when nothing is in
//! flight, only gives back the socket, the bytes it had read ahead (none,
//! or part of the next request's head) and the service; its buffers are
//! freed. The socket then waits for readiness alone (the tokio
//! registration, no buffer), within what is left of
//! `client-header-timeout`; when bytes arrive, a new hyper connection
//! starts over the same socket, with the read-ahead bytes given to it
//! first. The client sees one kept-alive connection throughout.
//!
//! Idle means all of: no request between the service's call and the drop
//! of its response body ([`Tracked`]); hyper's last read found no bytes
//! and everything it wrote is flushed ([`ParkIo`]); and no request started
//! during the whole [`PARK_AFTER`]. hyper's graceful close of a connection
//! that is idle in its own sense ends it at once; if it does not end at
//! once, hyper was not idle after all (a request body Livy did not read,
//! say), and the connection is let finish and closed, never parked, since
//! hyper may have promised the client `Connection: close`.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;

use super::ProxyBody;

/// How long a connection idles before it is parked. Long enough that a
/// client sending requests back to back never pays for a new hyper
/// connection (its buffers allocated again), short enough that memory
/// follows the clients that really idle: with 10,000 connections opened
/// in a burst, fewer of them hold buffers at the peak, which the
/// allocator keeps (1 s: 103 MiB, 100 ms: 90 MiB; docs/benchmarks.md).
pub const PARK_AFTER: Duration = Duration::from_millis(100);

/// What the connection's parts tell each other: written by [`ParkIo`] and
/// [`Tracked`], read by [`serve`]. All in one task; atomics only because
/// hyper wants its service and IO `Send`.
#[derive(Debug, Default)]
struct Activity {
    /// Requests called and whose response body hyper has not dropped.
    open: AtomicUsize,
    /// Requests ever called: a change means the connection was not idle.
    started: AtomicUsize,
    /// hyper's last read found no bytes.
    read_blocked: AtomicBool,
    /// hyper wrote since its last completed flush.
    unflushed: AtomicBool,
}

impl Activity {
    fn idle(&self) -> bool {
        self.open.load(Ordering::Relaxed) == 0
            && self.read_blocked.load(Ordering::Relaxed)
            && !self.unflushed.load(Ordering::Relaxed)
    }
}

/// A socket that can be waited on for bytes without reading them: how a
/// parked connection waits with no buffer.
pub trait Readiness {
    /// Ready when the socket has bytes (or an error or end) to read.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Readiness for tokio::net::TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }
}

/// A TLS connection's records arrive on its socket; when hyper's last read
/// found nothing, rustls holds no plaintext either.
impl Readiness for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().0.poll_read_ready(cx)
    }
}

/// The client socket as hyper sees it: bytes read ahead by a previous
/// hyper connection first, then the socket; reads that find nothing and
/// writes not yet flushed recorded in [`Activity`].
struct ParkIo<I> {
    io: I,
    read_ahead: Bytes,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for ParkIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.read_ahead.is_empty() {
            let n = this.read_ahead.len().min(buf.remaining());
            buf.put_slice(&this.read_ahead[..n]);
            this.read_ahead.advance(n);
            return Poll::Ready(Ok(()));
        }
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        this.activity
            .read_blocked
            .store(polled.is_pending(), Ordering::Relaxed);
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ParkIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.activity.unflushed.store(true, Ordering::Relaxed);
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.activity.unflushed.store(true, Ordering::Relaxed);
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        this.activity.unflushed.store(false, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The proxy's service, counting the requests in flight on this
/// connection. Unboxed: it costs a counter update per request, no
/// allocation.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

/// One request in flight until dropped (with its response body).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.open.fetch_add(1, Ordering::Relaxed);
        activity.started.fetch_add(1, Ordering::Relaxed);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<ProxyBody>,
            Error = Infallible,
        >,
    S::Future: Unpin,
{
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        TrackedFuture {
            in_flight: Some(InFlight::new(&self.activity)),
            inner: self.inner.call(req),
        }
    }
}

/// [`Tracked`]'s future: the request counted until its body is dropped.
struct TrackedFuture<F> {
    in_flight: Option<InFlight>,
    inner: F,
}

impl<F> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, Infallible>> + Unpin,
{
    type Output = Result<Response<TrackedBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Ok(response) = ready!(Pin::new(&mut this.inner).poll(cx));
        let in_flight = this.in_flight.take();
        Poll::Ready(Ok(response.map(|body| TrackedBody::new(body, in_flight))))
    }
}

/// A response body that keeps its request counted until hyper drops it
/// (sent, or the connection gone).
type TrackedBody = super::body::GuardedBody<ProxyBody, Option<InFlight>>;

/// How one hyper connection over the socket ended.
enum Ended {
    /// Closed (by the client, an error, the header timeout, or shutdown).
    Closed(Result<(), hyper::Error>),
    /// Idle and parked: its parts are free to take.
    Parked,
}

/// Serves `io` in HTTP/1.1 with `service` until the client closes, an
/// error, or `shutdown` (after which a request in flight finishes), parking
/// the connection while it idles (see the module docs). `watcher` is held
/// for the connection's life, so that the listener's graceful shutdown
/// waits for it.
pub(crate) async fn serve<I, S>(
    builder: &http1::Builder,
    io: I,
    service: S,
    header_timeout: Duration,
    shutdown: &CancellationToken,
    watcher: Watcher,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Readiness + Unpin + Send + 'static,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<ProxyBody>,
            Error = Infallible,
        > + Unpin,
    S::Future: Unpin,
{
    let _watcher = watcher;
    let activity = Arc::new(Activity::default());
    let mut io = ParkIo {
        io,
        read_ahead: Bytes::new(),
        activity: activity.clone(),
    };
    let mut service = Tracked {
        inner: service,
        activity: activity.clone(),
    };
    // One timer for the connection's life, created at its first idle
    // moment and re-armed only after it fires: a busy connection pays for
    // it about once per PARK_AFTER, not once per request.
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let mut conn = builder.serve_connection(TokioIo::new(io), service);
        let mut armed: Option<usize> = None;
        let mut closing = false;
        let mut stopping = false;
        let mut cancelled = std::pin::pin!(shutdown.cancelled());
        // The waker the shutdown future last registered.
        let mut registered: Option<std::task::Waker> = None;
        let ended = poll_fn(|cx| {
            // The shutdown future and the timer are polled only to register
            // the task's waker (once each, again only if the waker
            // changes); afterwards their state is read, which costs a load
            // instead of a poll (a lock of the token's waiter list) on
            // every wake-up, three per request.
            if !stopping {
                let fresh = !registered.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
                if fresh {
                    registered = Some(cx.waker().clone());
                }
                if shutdown.is_cancelled() || (fresh && cancelled.as_mut().poll(cx).is_ready()) {
                    // Draining: hyper closes an idle connection and lets one
                    // in flight finish with `Connection: close`.
                    stopping = true;
                    Pin::new(&mut conn).graceful_shutdown();
                }
            }
            if let Poll::Ready(done) = conn.poll_without_shutdown(cx) {
                return Poll::Ready(Ended::Closed(done));
            }
            if stopping || closing || !activity.idle() {
                return Poll::Pending;
            }
            let started = activity.started.load(Ordering::Relaxed);
            let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(PARK_AFTER)));
            // Armed at most once per PARK_AFTER, not once per request: when
            // it fires, the connection parks if no request started since
            // it was armed, else it is armed again.
            let rearm = match armed {
                None => true,
                Some(_) if !t.is_elapsed() => return Poll::Pending,
                Some(at) => at != started,
            };
            if rearm {
                t.as_mut().reset(tokio::time::Instant::now() + PARK_AFTER);
                armed = Some(started);
                if t.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            // Idle for the whole PARK_AFTER.
            Pin::new(&mut conn).graceful_shutdown();
            match conn.poll_without_shutdown(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(Ended::Parked),
                Poll::Ready(Err(e)) => Poll::Ready(Ended::Closed(Err(e))),
                Poll::Pending => {
                    // Not idle in hyper's sense: it finishes and closes.
                    closing = true;
                    Poll::Pending
                }
            }
        })
        .await;
        let parts = conn.into_parts();
        io = parts.io.into_inner();
        match ended {
            Ended::Closed(done) => {
                // `poll_without_shutdown` leaves the socket open: close it
                // the way hyper would have.
                if done.is_ok() {
                    let _ = io.io.shutdown().await;
                }
                return done;
            }
            Ended::Parked => {}
        }
        // An empty read-ahead still holds hyper's whole read buffer (the
        // `Bytes` shares its allocation): let it go with the rest.
        io.read_ahead = if parts.read_buf.is_empty() {
            // Now, not when `parts` goes out of scope after the wait.
            drop(parts.read_buf);
            Bytes::new()
        } else {
            parts.read_buf
        };
        service = parts.service;
        tracing::trace!("HTTP/1.1 client connection parked while idle");
        if io.read_ahead.is_empty() {
            // What is left of the header timeout, counted from when the
            // connection became idle.
            let left = header_timeout.saturating_sub(PARK_AFTER);
            let woke = tokio::select! {
                r = poll_fn(|cx| io.io.poll_read_ready(cx)) => r.is_ok(),
                _ = tokio::time::sleep(left) => false,
                _ = shutdown.cancelled() => false,
            };
            if !woke {
                let _ = io.io.shutdown().await;
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_needs_nothing_in_flight_a_blocked_read_and_everything_flushed() {
        let a = Activity::default();
        assert!(!a.idle(), "no read has blocked yet");
        a.read_blocked.store(true, Ordering::Relaxed);
        assert!(a.idle());
        a.unflushed.store(true, Ordering::Relaxed);
        assert!(!a.idle());
        a.unflushed.store(false, Ordering::Relaxed);
        let a = Arc::new(a);
        let request = InFlight::new(&a);
        assert!(!a.idle());
        assert_eq!(a.started.load(Ordering::Relaxed), 1);
        drop(request);
        assert!(a.idle());
    }

    #[tokio::test]
    async fn read_ahead_bytes_come_first() {
        let (client, mut server) = tokio::io::duplex(64);
        let activity = Arc::new(Activity::default());
        let mut io = ParkIo {
            io: client,
            read_ahead: Bytes::from_static(b"GET / HT"),
            activity: activity.clone(),
        };
        tokio::io::AsyncWriteExt::write_all(&mut server, b"TP/1.1\r\n")
            .await
            .unwrap();
        let mut got = vec![0u8; 16];
        let mut n = 0;
        while n < 16 {
            n += tokio::io::AsyncReadExt::read(&mut io, &mut got[n..])
                .await
                .unwrap();
        }
        assert_eq!(&got, b"GET / HTTP/1.1\r\n");
        assert!(!activity.read_blocked.load(Ordering::Relaxed));
    }
}
