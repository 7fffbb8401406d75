//! The HTTP path as a tower stack: cross-cutting concerns as layers over
//! the inner [`Forward`] service, so each can be read, reordered and tested
//! alone (the linkerd2-proxy shape).
//!
//! Outermost first:
//! 1. [`Observe`]: the request id (an incoming `X-Request-Id` is kept, else
//!    one is made by [`RequestIds`]; it goes to Livy and back to the
//!    client), one access-log line (target `access`) and the request
//!    metrics, from what the response carries back ([`super::Outcome`]).
//!    The id is set here rather than by tower-http's `SetRequestId` and
//!    `PropagateRequestId`, which also store it in the request's extensions:
//!    with them the stack cost measurably more per request
//!    (docs/benchmarks.md, "The tower stack").
//! 3. [`Rescue`]: an error from the layers below (only load shedding makes one)
//!    becomes the proxy's JSON answer, 503 `overloaded` with `Retry-After`.
//! 4. `LoadShed` + `GlobalConcurrencyLimit` (tower): at most
//!    `max-requests-in-flight` requests inside, one semaphore shared by all
//!    connections; one more is refused at once rather than queued.
//! 5. [`Forward`]: hold for a leader, follow redirects, retry what is safe
//!    (state that the three share, so they stay one service).
//!
//! Every layer is a concrete type (no `BoxService`): a request pays for
//! what the layers do, not for dynamic dispatch between them. The stack is
//! built per connection ([`StackParts::for_connection`]) around that
//! connection's [`ClientInfo`], so no request carries it in its extensions
//! (an allocation and a hash insert each). Only `Forward`'s future is boxed,
//! so that an idle connection does not carry room for a request's state
//! (docs/benchmarks.md).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use tower::Service;

use super::error::ProxyError;
use super::{ClientRequest, HttpProxy, Outcome, ProxyBody, peer_ip_header};
use crate::metrics::{Direction, Listener, Metrics};

/// Who sent a request: set per connection, read by the layers and the
/// forwarding (X-Forwarded-For, the access log).
#[derive(Clone, Debug)]
pub struct ClientInfo {
    /// The client's address (after a PROXY protocol header, the real one).
    pub peer: SocketAddr,
    /// `peer`'s IP, formatted once per connection.
    pub peer_ip: HeaderValue,
    /// The listener address the connection came in on.
    pub local: Option<SocketAddr>,
}

impl ClientInfo {
    /// The client at `peer`, connected to `local`.
    pub fn new(peer: SocketAddr, local: Option<SocketAddr>) -> Self {
        ClientInfo {
            peer,
            peer_ip: peer_ip_header(peer),
            local,
        }
    }
}

/// The inner service: the proxy's forwarding loop, for one connection.
#[derive(Clone)]
pub struct Forward {
    proxy: HttpProxy,
    client: Arc<ClientInfo>,
}

impl Forward {
    /// The forwarding loop of `proxy` for requests from `client`.
    pub fn new(proxy: HttpProxy, client: Arc<ClientInfo>) -> Self {
        Forward { proxy, client }
    }
}

impl Service<Request<Incoming>> for Forward {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let proxy = self.proxy.clone();
        let req = ClientRequest {
            request,
            peer: self.client.peer,
            peer_ip: self.client.peer_ip.clone(),
            local: self.client.local,
        };
        Box::pin(async move { Ok(proxy.forward(req).await) })
    }
}

/// Request ids for requests that come without one: a random prefix per
/// process and a counter, in hex. Cheaper than a UUID per request (no
/// random number per request) and unique enough across restarts and
/// replicas.
#[derive(Clone)]
pub struct RequestIds {
    prefix: u64,
    next: Arc<AtomicU64>,
}

impl Default for RequestIds {
    fn default() -> Self {
        // The std hasher's random keys are a seed that needs no crate.
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        RequestIds {
            prefix: h.finish(),
            next: Arc::new(AtomicU64::new(1)),
        }
    }
}

impl RequestIds {
    /// The next id: `<16 hex digits of prefix>-<counter in hex>`, written
    /// into a buffer on the stack (`format!` was a tenth of the stack's
    /// cost per request).
    pub fn next(&self) -> HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 33];
        for (i, b) in buf[..16].iter_mut().enumerate() {
            *b = HEX[((self.prefix >> (60 - 4 * i)) & 0xf) as usize];
        }
        buf[16] = b'-';
        let digits = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
        for i in 0..digits {
            buf[17 + i] = HEX[((n >> (4 * (digits - 1 - i))) & 0xf) as usize];
        }
        HeaderValue::from_bytes(&buf[..17 + digits])
            .unwrap_or_else(|_| HeaderValue::from_static("-"))
    }
}

/// Whether the access log is written; live (reload flips it).
pub type AccessLogSwitch = Arc<AtomicBool>;

/// Request id, access log and request metrics around the inner service.
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    parts: Arc<Shared>,
    client: Arc<ClientInfo>,
}

/// What every connection's stack shares.
struct Shared {
    metrics: Arc<Metrics>,
    access_log: AccessLogSwitch,
    ids: RequestIds,
}

/// The shared parts of the stack, from which each connection's is built.
#[derive(Clone)]
pub struct StackParts {
    proxy: HttpProxy,
    shared: Arc<Shared>,
    retry_after: Duration,
    in_flight: Arc<tokio::sync::Semaphore>,
}

/// One connection's stack (outermost first).
pub type ConnectionStack =
    Observe<Rescue<tower::load_shed::LoadShed<tower::limit::ConcurrencyLimit<Forward>>>>;

impl StackParts {
    /// The parts for `proxy`'s listener: at most `max_in_flight` requests
    /// inside at once, across all its connections.
    pub fn new(
        proxy: HttpProxy,
        metrics: Arc<Metrics>,
        access_log: AccessLogSwitch,
        retry_after: Duration,
        max_in_flight: usize,
    ) -> Self {
        StackParts {
            proxy,
            shared: Arc::new(Shared {
                metrics,
                access_log,
                ids: RequestIds::default(),
            }),
            retry_after,
            in_flight: Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1))),
        }
    }

    /// The stack serving the connection from `client`.
    pub fn for_connection(&self, client: Arc<ClientInfo>) -> ConnectionStack {
        tower::ServiceBuilder::new()
            .layer_fn(|inner| Observe {
                inner,
                parts: self.shared.clone(),
                client: client.clone(),
            })
            .layer(RescueLayer {
                retry_after: self.retry_after,
            })
            .load_shed()
            .layer(tower::limit::GlobalConcurrencyLimitLayer::with_semaphore(
                self.in_flight.clone(),
            ))
            .service(Forward::new(self.proxy.clone(), client.clone()))
    }
}

/// What the access-log line needs from the request, taken before the
/// request moves on.
struct Seen {
    started: Instant,
    method: Method,
    /// Path without the query (queries may carry secrets); only taken
    /// when the access log is on.
    path: Option<String>,
    peer: Option<SocketAddr>,
    request_id: HeaderValue,
    bytes_in: u64,
}

impl<S> Service<Request<Incoming>> for Observe<S>
where
    S: Service<Request<Incoming>, Response = Response<ProxyBody>, Error = Infallible>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        let request_id = match req.headers().get(X_REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = self.parts.ids.next();
                req.headers_mut().insert(X_REQUEST_ID, id.clone());
                id
            }
        };
        // The line's fields are gathered only when it will be written: the
        // switch (`access-log`) and the log filter (target `access`).
        let log = self.parts.access_log.load(Ordering::Relaxed)
            && tracing::enabled!(target: "access", tracing::Level::INFO);
        let seen = Seen {
            started: Instant::now(),
            method: req.method().clone(),
            path: log.then(|| req.uri().path().to_string()),
            peer: log.then_some(self.client.peer),
            request_id,
            bytes_in: hyper::body::Body::size_hint(req.body())
                .exact()
                .unwrap_or(0),
        };
        ObserveFuture {
            inner: self.inner.call(req),
            seen: Some(seen),
            parts: self.parts.clone(),
        }
    }
}

const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

pin_project_lite::pin_project! {
    /// [`Observe`]'s future: the inner one, then the log line and metrics.
    pub struct ObserveFuture<F> {
        #[pin]
        inner: F,
        seen: Option<Seen>,
        parts: Arc<Shared>,
    }
}

impl<F> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, Infallible>>,
{
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut resp) = ready!(this.inner.poll(cx));
        if let Some(seen) = this.seen.take() {
            resp.headers_mut()
                .insert(X_REQUEST_ID, seen.request_id.clone());
            record(&this.parts.metrics, &seen, &mut resp);
        }
        Poll::Ready(Ok(resp))
    }
}

fn record(metrics: &Metrics, seen: &Seen, resp: &mut Response<ProxyBody>) {
    let took = seen.started.elapsed();
    let status = resp.status();
    let outcome = resp
        .extensions_mut()
        .remove::<Outcome>()
        .unwrap_or_default();
    metrics.http_request(&seen.method, status, took);
    if outcome.held > Duration::ZERO {
        metrics.held(outcome.held);
    }
    for _ in 0..outcome.redirects {
        metrics.redirect_followed();
    }
    for _ in 0..outcome.retries {
        metrics.retried();
    }
    if let Some(kind) = outcome.error {
        metrics.upstream_error(kind);
        if kind == "overloaded" {
            metrics.shed();
        }
    }
    let bytes_out = hyper::body::Body::size_hint(resp.body())
        .exact()
        .unwrap_or(0);
    metrics.bytes(Listener::Http, Direction::Received, seen.bytes_in);
    metrics.bytes(Listener::Http, Direction::Sent, bytes_out);
    let Some(path) = &seen.path else {
        return;
    };
    let id = seen.request_id.to_str().unwrap_or("-");
    tracing::info!(
        target: "access",
        client = %seen.peer.map_or_else(|| "-".to_string(), |p| p.to_string()),
        method = %seen.method,
        path = %path,
        status = status.as_u16(),
        duration_ms = took.as_secs_f64() * 1000.0,
        held_ms = outcome.held.as_secs_f64() * 1000.0,
        upstream = %outcome.node.as_ref().map_or_else(|| "-".to_string(), |n| n.id.clone()),
        bytes_in = seen.bytes_in,
        bytes_out,
        retries = outcome.retries,
        redirects = outcome.redirects,
        error = outcome.error.unwrap_or("-"),
        request_id = id,
        "http"
    );
}

/// The rescue step: an error from the layers below (load shedding's) as
/// the proxy's own answer, so that hyper only ever sees responses.
/// Written out because tower's `MapResult` wants the new error type to be
/// made from the old one, and "no error" (`Infallible`) cannot be.
#[derive(Clone)]
pub struct Rescue<S> {
    inner: S,
    retry_after: Duration,
}

/// Layer making [`Rescue`].
#[derive(Clone)]
pub struct RescueLayer {
    /// `Retry-After` on the 503 it makes.
    pub retry_after: Duration,
}

impl<S> tower::Layer<S> for RescueLayer {
    type Service = Rescue<S>;
    fn layer(&self, inner: S) -> Rescue<S> {
        Rescue {
            inner,
            retry_after: self.retry_after,
        }
    }
}

impl<S> Service<Request<Incoming>> for Rescue<S>
where
    S: Service<Request<Incoming>, Response = Response<ProxyBody>>,
    S::Error: Into<tower::BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = RescueFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The layers below refuse in `call` (load shedding is ready at once
        // and errs there); an error here would have nowhere to go.
        let _ = ready!(self.inner.poll_ready(cx));
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        RescueFuture {
            inner: self.inner.call(req),
            retry_after: self.retry_after,
        }
    }
}

pin_project_lite::pin_project! {
    /// [`Rescue`]'s future.
    pub struct RescueFuture<F> {
        #[pin]
        inner: F,
        retry_after: Duration,
    }
}

impl<F, E> Future for RescueFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, E>>,
    E: Into<tower::BoxError>,
{
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        Poll::Ready(Ok(result.unwrap_or_else(|e| {
            let e: tower::BoxError = e.into();
            let why = if e.is::<tower::load_shed::error::Overloaded>() {
                "too many requests in flight (max-requests-in-flight)".to_string()
            } else {
                e.to_string()
            };
            let error = ProxyError::Overloaded(why);
            let kind = error.kind();
            let mut resp = error
                .into_response(*this.retry_after)
                .map(http_body_util::Either::Right);
            resp.extensions_mut().insert(Outcome {
                error: Some(kind),
                ..Outcome::default()
            });
            resp
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_request_ids_are_unique_prefix_dash_counter() {
        let ids = RequestIds {
            prefix: 0x0123_4567_89ab_cdef,
            next: Arc::new(AtomicU64::new(1)),
        };
        assert_eq!(ids.next(), "0123456789abcdef-1");
        assert_eq!(ids.next(), "0123456789abcdef-2");
        ids.next.store(0x1f0, Ordering::Relaxed);
        assert_eq!(ids.next(), "0123456789abcdef-1f0");
        let random = RequestIds::default();
        assert_ne!(random.next(), random.next());
    }
}
