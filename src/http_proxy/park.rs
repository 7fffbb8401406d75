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
    /// Closed (by the client, an error, or shutdown).
    Closed(Result<(), hyper::Error>),
    /// No request started within `client-header-timeout`.
    TimedOut,
    /// Idle and parked: its parts are free to take.
    Parked,
}

/// The connection's one timer and what it measures: parking after
/// [`PARK_AFTER`] of idleness, and `client-header-timeout`.
///
/// The header timeout is kept here rather than by hyper: hyper's
/// allocates a boxed timer and moves it in tokio's timer wheel on every
/// request, about 1,300 instructions of the 25,000 a request costs
/// (docs/benchmarks.md). This timer is armed at most once per
/// [`PARK_AFTER`] however many requests pass, and it lives for the whole
/// socket, across parking, so a client trickling a head a byte at a time
/// is cut off however often its connection parks. The price is precision:
/// the timeout ends up to [`PARK_AFTER`] late, never early.
struct Clock {
    timer: Pin<Box<tokio::time::Sleep>>,
    /// Requests started ([`Activity::started`]) when the timer was last
    /// armed, and when; `None` until then.
    armed: Option<(usize, tokio::time::Instant)>,
    /// When the quiet time began: no request started since, none in
    /// flight. Approximate (the arm time at which it was first seen).
    quiet_since: Option<tokio::time::Instant>,
    /// Set when a parked connection resumes: the timer is armed anew
    /// without forgetting the count it was armed with.
    resumed: bool,
}

/// What the clock says, polled with nothing in flight.
enum Tick {
    /// Nothing to do before the timer fires.
    Wait,
    /// No request started for a whole [`PARK_AFTER`]: park if idle.
    Quiet,
    /// No request started within the header timeout.
    Expired,
}

impl Clock {
    fn new() -> Self {
        Clock {
            timer: Box::pin(tokio::time::sleep(PARK_AFTER)),
            armed: None,
            quiet_since: None,
            resumed: false,
        }
    }

    /// Polled whenever nothing is in flight (`started` requests so far):
    /// checks the timer if it has fired, and arms it again if it is not
    /// running.
    fn poll(&mut self, cx: &mut Context<'_>, started: usize, header_timeout: Duration) -> Tick {
        let mut keep = None;
        match self.armed {
            Some(_) if self.resumed => {
                self.resumed = false;
                keep = self.armed.map(|(at, _)| at);
            }
            Some(_) if !self.timer.is_elapsed() => return Tick::Wait,
            Some((at, _)) if at != started => self.quiet_since = None,
            Some((_, since)) => {
                let quiet = *self.quiet_since.get_or_insert(since);
                if quiet.elapsed() >= header_timeout {
                    return Tick::Expired;
                }
                return Tick::Quiet;
            }
            None => {}
        }
        self.arm(cx, keep.unwrap_or(started));
        Tick::Wait
    }

    /// Arms the timer for [`PARK_AFTER`] from now, remembering `count`.
    fn arm(&mut self, cx: &mut Context<'_>, count: usize) {
        let now = tokio::time::Instant::now();
        self.timer.as_mut().reset(now + PARK_AFTER);
        self.armed = Some((count, now));
        if self.timer.as_mut().poll(cx).is_ready() {
            // Not in PARK_AFTER's time: seen as fired at the next poll.
            cx.waker().wake_by_ref();
        }
    }

    /// How long the header timeout still has to run.
    fn left(&self, header_timeout: Duration) -> Duration {
        let quiet = self.quiet_since.map_or(Duration::ZERO, |q| q.elapsed());
        header_timeout.saturating_sub(quiet)
    }
}

/// Serves `io` in HTTP/1.1 with `service` until the client closes, an
/// error, no request within `header_timeout`, or `shutdown` (after which a
/// request in flight finishes), parking the connection while it idles (see
/// the module docs). `watcher` is held for the connection's life, so that
/// the listener's graceful shutdown waits for it. `builder` must not have
/// hyper's own header timeout: [`Clock`] keeps it.
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
    let mut clock = Clock::new();
    loop {
        let mut conn = builder.serve_connection(TokioIo::new(io), service);
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
            if stopping || activity.open.load(Ordering::Relaxed) > 0 {
                return Poll::Pending;
            }
            let started = activity.started.load(Ordering::Relaxed);
            match clock.poll(cx, started, header_timeout) {
                Tick::Wait => return Poll::Pending,
                Tick::Expired => return Poll::Ready(Ended::TimedOut),
                Tick::Quiet if closing || !activity.idle() => {
                    // Waiting for a head (or for the client to take the
                    // last answer): only the header timeout can end it.
                    clock.arm(cx, started);
                    return Poll::Pending;
                }
                Tick::Quiet => {}
            }
            // Idle for the whole PARK_AFTER.
            Pin::new(&mut conn).graceful_shutdown();
            match conn.poll_without_shutdown(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(Ended::Parked),
                Poll::Ready(Err(e)) => Poll::Ready(Ended::Closed(Err(e))),
                Poll::Pending => {
                    // Not idle in hyper's sense (a new hyper connection
                    // before its first request, or a body Livy did not
                    // read): it finishes and closes, unless the header
                    // timeout ends it first.
                    closing = true;
                    clock.arm(cx, started);
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
            Ended::TimedOut => {
                // As hyper's own header timeout did: the socket dropped,
                // no answer (a client that sends nothing may not read
                // either, so nothing is written that could wait on it).
                tracing::debug!("no request within client-header-timeout: connection closed");
                return Ok(());
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
            let woke = tokio::select! {
                r = poll_fn(|cx| io.io.poll_read_ready(cx)) => r.is_ok(),
                _ = tokio::time::sleep(clock.left(header_timeout)) => false,
                _ = shutdown.cancelled() => false,
            };
            if !woke {
                let _ = io.io.shutdown().await;
                return Ok(());
            }
        }
        clock.resumed = true;
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

    /// One poll of `clock` with `started` requests so far.
    async fn tick(clock: &mut Clock, started: usize, header_timeout: Duration) -> Tick {
        poll_fn(|cx| Poll::Ready(clock.poll(cx, started, header_timeout))).await
    }

    fn name(t: &Tick) -> &'static str {
        match t {
            Tick::Wait => "wait",
            Tick::Quiet => "quiet",
            Tick::Expired => "expired",
        }
    }

    /// Polls `clock` every 10 ms of paused time until it says `want`,
    /// returning how long that took (at most `limit`).
    async fn until(clock: &mut Clock, started: usize, want: &str, limit: Duration) -> Duration {
        let from = tokio::time::Instant::now();
        loop {
            let t = tick(clock, started, Duration::from_secs(1)).await;
            if name(&t) == want {
                return from.elapsed();
            }
            if matches!(t, Tick::Quiet) {
                // As `serve` does when it does not park.
                poll_fn(|cx| {
                    clock.arm(cx, started);
                    Poll::Ready(())
                })
                .await;
            }
            assert!(from.elapsed() <= limit, "no {want} within {limit:?}");
            tokio::time::advance(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_says_quiet_after_park_after_and_expires_after_the_header_timeout() {
        let mut clock = Clock::new();
        let second = Duration::from_secs(1);
        assert_eq!(name(&tick(&mut clock, 0, second).await), "wait");
        let quiet = until(&mut clock, 0, "quiet", second).await;
        assert!(quiet >= PARK_AFTER && quiet <= PARK_AFTER * 2, "{quiet:?}");
        // Expiry: never before the timeout, at most PARK_AFTER after it.
        let expired = quiet + until(&mut clock, 0, "expired", 2 * second).await;
        assert!(
            expired >= second && expired <= second + PARK_AFTER * 2,
            "{expired:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_restarts_the_header_timeout() {
        let mut clock = Clock::new();
        let second = Duration::from_secs(1);
        until(&mut clock, 0, "quiet", second).await;
        tokio::time::advance(Duration::from_millis(700)).await;
        // A request started (1 so far): the quiet time starts again, so
        // the timeout is a whole second from about now.
        let from = tokio::time::Instant::now();
        assert_eq!(name(&tick(&mut clock, 1, second).await), "wait");
        until(&mut clock, 1, "expired", 3 * second).await;
        assert!(from.elapsed() >= second, "{:?}", from.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_resumed_connection_keeps_counting_unless_a_request_came() {
        let second = Duration::from_secs(1);
        // Parked after its first quiet tick, resumed 500 ms later with no
        // request: the timeout still counts from the start.
        let mut clock = Clock::new();
        tick(&mut clock, 0, second).await;
        until(&mut clock, 0, "quiet", second).await;
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(clock.left(second) <= Duration::from_millis(500));
        clock.resumed = true;
        let from = tokio::time::Instant::now();
        until(&mut clock, 0, "expired", second).await;
        assert!(
            from.elapsed() <= Duration::from_millis(700),
            "{:?}",
            from.elapsed()
        );
        // The same, with a request started while parked: counted afresh.
        let mut clock = Clock::new();
        tick(&mut clock, 0, second).await;
        until(&mut clock, 0, "quiet", second).await;
        tokio::time::advance(Duration::from_millis(500)).await;
        clock.resumed = true;
        let from = tokio::time::Instant::now();
        until(&mut clock, 1, "expired", 3 * second).await;
        assert!(from.elapsed() >= second, "{:?}", from.elapsed());
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
