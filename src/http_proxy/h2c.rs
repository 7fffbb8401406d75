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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

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
    idle_timeout: Duration,
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
    Box::pin(run(builder, io, service, idle_timeout, shutdown, watcher))
}

async fn run<I, S>(
    builder: &http2::Builder<TokioExecutor>,
    io: TokioIo<I>,
    service: S,
    idle_timeout: Duration,
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
    let counted = Counted {
        inner: service,
        in_flight: in_flight.clone(),
    };
    let conn = builder.serve_connection(io, counted);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        ended = conn.as_mut() => return ended,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            return conn.await;
        }
        _ = idle(&in_flight, idle_timeout) => {}
    }
    tracing::debug!("closing an idle HTTP/2 client connection (client-header-timeout)");
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        ended = conn.as_mut() => ended,
        _ = idle(&in_flight, idle_timeout) => Ok(()),
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
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| CountedBody::new(body, guard)))
        })
    }
}

/// A response body that keeps its stream counted until hyper drops it.
type CountedBody<B> = super::body::GuardedBody<B, StreamGuard>;
