//! Serving one HTTP/2 client connection (h2c, or h2 over TLS), with the
//! idle timeout HTTP/2 lacks.
//!
//! hyper closes an HTTP/1.1 connection that sends no request within
//! `client-header-timeout`, but its HTTP/2 side has no such timer: a client
//! that sends the preface and SETTINGS and then nothing (or only PINGs)
//! keeps its connection, and its buffers, for ever. hyper's
//! `keep_alive_interval` does not help: it closes a connection whose peer
//! stopped answering PINGs, not one that answers them and asks nothing.
//!
//! So the connection's streams are counted (a request is in flight from
//! the service's call until its response body is dropped, i.e. sent or
//! reset), and once none has been in flight for the timeout the connection
//! is closed the way HTTP/2 means it to be (GOAWAY, then the streams still
//! running finish). A client that does not take part in that close (no
//! acknowledgement of the GOAWAY's PING) is dropped after one more timeout
//! with nothing in flight.
//!
//! HTTP/2's flow control also hides a client that stops reading: one that
//! grants no window leaves hyper waiting for it before it asks the
//! response body for more, so the socket never blocks and the send timeout
//! under it (`send_timeout`) never fires, while the answer's Livy
//! connection is held. So each response body tells the connection
//! ([`Window`]) when it has handed hyper a frame and not been asked for the
//! next; once some body has waited so and no body has moved for
//! `client-send-timeout`, the connection is dropped, as HAProxy's `timeout
//! client` would. A body waiting for Livy's bytes is not counted: it was
//! asked, and answered Pending.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use std::convert::Infallible;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::ProxyBody;

/// How many streams of one connection are in flight.
type InFlight = Arc<watch::Sender<usize>>;

/// Serves `io` with `service` until the client closes, the connection has
/// had nothing in flight for `idle_timeout`, or `shutdown` (after which the
/// requests in flight finish). `watcher` is held for the connection's
/// life, so that the listener's graceful shutdown waits for it.
///
/// Boxed: left to infer it, the compiler cannot prove the spawned task
/// `Send` through hyper's HTTP/2 connection (a "higher-ranked lifetime
/// error"); the box proves it here, where the bounds are written.
pub(crate) fn serve<'a, I, S>(
    builder: &'a http2::Builder<TokioExecutor>,
    io: TokioIo<I>,
    service: S,
    (idle_timeout, send_timeout): (Duration, Duration),
    shutdown: &'a CancellationToken,
    watcher: Watcher,
) -> Pin<Box<dyn Future<Output = Result<(), hyper::Error>> + Send + 'a>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<ProxyBody>, Error = Infallible>
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    Box::pin(run(
        builder,
        io,
        service,
        (idle_timeout, send_timeout),
        shutdown,
        watcher,
    ))
}

async fn run<I, S>(
    builder: &http2::Builder<TokioExecutor>,
    io: TokioIo<I>,
    service: S,
    (idle_timeout, send_timeout): (Duration, Duration),
    shutdown: &CancellationToken,
    _watcher: Watcher,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<ProxyBody>, Error = Infallible>
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let in_flight: InFlight = Arc::new(watch::channel(0).0);
    let window = Arc::new(Window::new());
    let counted = Counted {
        inner: service,
        in_flight: in_flight.clone(),
        window: window.clone(),
    };
    let conn = builder.serve_connection(io, counted);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        ended = conn.as_mut() => return ended,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            return tokio::select! {
                ended = conn.as_mut() => ended,
                _ = window.stalled(send_timeout) => window_closed(),
            };
        }
        _ = idle(&in_flight, idle_timeout) => {}
        _ = window.stalled(send_timeout) => return window_closed(),
    }
    tracing::debug!("closing an idle HTTP/2 client connection (client-header-timeout)");
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        ended = conn.as_mut() => ended,
        _ = idle(&in_flight, idle_timeout) => Ok(()),
        _ = window.stalled(send_timeout) => window_closed(),
    }
}

/// How a connection dropped for a window never granted ends: logged, and
/// not an error of the proxy's.
fn window_closed() -> Result<(), hyper::Error> {
    tracing::debug!(
        "the HTTP/2 client granted no window for client-send-timeout: connection dropped"
    );
    Ok(())
}

/// What the connection's response bodies tell it of the client's window.
#[derive(Debug)]
struct Window {
    start: Instant,
    /// Bodies that handed hyper a frame and have not been asked since.
    waiting: AtomicUsize,
    /// When a body was last asked for a frame, in ms since `start`.
    moved: AtomicU64,
}

impl Window {
    fn new() -> Self {
        Window {
            start: Instant::now(),
            waiting: AtomicUsize::new(0),
            moved: AtomicU64::new(0),
        }
    }

    fn moved_now(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.moved.store(ms, Ordering::Relaxed);
    }

    /// Resolves once a body has waited to be asked, and none has moved,
    /// for `timeout`. Looked at four times per timeout: a timer per
    /// HTTP/2 connection, not per frame.
    async fn stalled(&self, timeout: Duration) {
        let every = (timeout / 4).max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(every).await;
            let moved = Duration::from_millis(self.moved.load(Ordering::Relaxed));
            if self.waiting.load(Ordering::Relaxed) > 0
                && self.start.elapsed().saturating_sub(moved) >= timeout
            {
                return;
            }
        }
    }
}

/// Resolves once no stream has been in flight for `timeout`.
async fn idle(in_flight: &InFlight, timeout: Duration) {
    let mut rx = in_flight.subscribe();
    loop {
        // The sender lives as long as `in_flight`: these cannot fail.
        let _ = rx.wait_for(|n| *n == 0).await.map(|_| ());
        let busy = async { rx.wait_for(|n| *n > 0).await.map(|_| ()) };
        if tokio::time::timeout(timeout, busy).await.is_err() {
            return;
        }
    }
}

/// One stream in flight, until dropped.
struct StreamGuard(InFlight);

impl StreamGuard {
    fn new(in_flight: &InFlight) -> Self {
        in_flight.send_modify(|n| *n += 1);
        StreamGuard(in_flight.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// The proxy's service, counting the streams it serves.
struct Counted<S> {
    inner: S,
    in_flight: InFlight,
    window: Arc<Window>,
}

impl<S, B> Service<Request<Incoming>> for Counted<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<CountedBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let guard = StreamGuard::new(&self.in_flight);
        let window = self.window.clone();
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| CountedBody {
                body,
                _guard: guard,
                window,
                handed: false,
            }))
        })
    }
}

/// A response body that keeps its stream counted until hyper drops it, and
/// tells [`Window`] whether hyper has asked for its next frame.
struct CountedBody<B> {
    body: B,
    _guard: StreamGuard,
    window: Arc<Window>,
    /// A frame handed to hyper, and not asked for the next one since.
    handed: bool,
}

impl<B: Body + Unpin> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        this.window.moved_now();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        let handed = matches!(polled, Poll::Ready(Some(Ok(_))));
        if handed != this.handed {
            if handed {
                this.window.waiting.fetch_add(1, Ordering::Relaxed);
            } else {
                this.window.waiting.fetch_sub(1, Ordering::Relaxed);
            }
            this.handed = handed;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> Drop for CountedBody<B> {
    fn drop(&mut self) {
        if self.handed {
            self.window.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    fn counted(window: &Arc<Window>, body: Full<Bytes>) -> CountedBody<Full<Bytes>> {
        let in_flight: InFlight = Arc::new(watch::channel(0).0);
        CountedBody {
            body,
            _guard: StreamGuard::new(&in_flight),
            window: window.clone(),
            handed: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_body_handed_a_frame_and_not_asked_again_stalls_the_window() {
        let timeout = Duration::from_secs(60);
        let never = |w: Arc<Window>| async move {
            tokio::time::timeout(Duration::from_secs(600), w.stalled(timeout))
                .await
                .is_err()
        };
        let window = Arc::new(Window::new());
        assert!(never(window.clone()).await, "no body: nothing waits");
        let mut body = counted(&window, Full::new(Bytes::from_static(b"{}")));
        assert!(body.frame().await.is_some(), "a frame handed to hyper");
        let started = Instant::now();
        window.stalled(timeout).await;
        assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
        // Asked again (the body ends): nothing waits any more.
        assert!(body.frame().await.is_none());
        assert!(never(window.clone()).await, "the body was asked again");
        // A body dropped while waiting counts no more.
        let mut other = counted(&window, Full::new(Bytes::from_static(b"{}")));
        assert!(other.frame().await.is_some());
        drop(other);
        assert!(never(window).await, "the waiting body was dropped");
    }
}
