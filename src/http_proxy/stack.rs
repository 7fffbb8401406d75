//! The HTTP path as a tower stack: cross-cutting concerns as layers over
//! the inner [`Forward`] service, so each can be read, reordered and tested
//! alone (the linkerd2-proxy shape).
//!
//! Outermost first:
//! 1. [`Observe`]: the request id (an incoming `X-Request-Id` is kept, else
//!    one is made by [`RequestIds`]; it goes to Livy and back to the
//!    client), one access-log line (target `access`) and the request
//!    metrics, from the [`Outcome`] the inner layers hand back beside the
//!    response.
//! 2. [`Limit`]: at most `max-requests-in-flight` requests inside at once,
//!    one semaphore for all connections; one more is answered 503
//!    `overloaded` at once instead of queued.
//! 3. [`ForwardingHeaders`]: hop-by-hop fields out, forwarding headers
//!    replaced (or extended when trusted), `Via` in, a bad
//!    `Content-Length` answered 400.
//! 4. [`Forward`]: hold for a leader, follow redirects, retry what is safe
//!    (state that the three share, so they stay one service).
//!
//! Written here rather than taken from tower and tower-http, which have
//! these layers (`SetRequestId`/`PropagateRequestId`, `ConcurrencyLimit` +
//! `LoadShed`), because with them the stack cost about 6,000 instructions
//! per request, a fifth of the proxy's: tower-http stores the id in the
//! request's extensions and tower's `ConcurrencyLimit` allocates a
//! `PollSemaphore` for every request's clone of the service
//! (docs/benchmarks.md, "The tower stack"). The layers keep tower's
//! `Service`/`Layer` shape, so they compose with tower's if a deployment
//! needs more.
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

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use tower::Service;

use super::error::ProxyError;
use super::{ClientRequest, HttpProxy, Outcome, ProxyBody, peer_ip_header};
use crate::limit::{LiveLimit, Permit};
use crate::metrics::{Direction, Listener, Metrics};
use crate::tls::identity::ClientIdentity;

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
    /// Whether the connection is TLS (the listener's `tls-cert`).
    pub tls: bool,
    /// The verified client certificate's identity (mTLS), for the access
    /// log.
    pub identity: Option<Arc<ClientIdentity>>,
    /// `identity` as the identity header's value, made once per connection.
    pub identity_header: Option<HeaderValue>,
}

impl ClientInfo {
    /// The client at `peer`, connected to `local` (over TLS if `tls`).
    pub fn new(peer: SocketAddr, local: Option<SocketAddr>, tls: bool) -> Self {
        ClientInfo {
            peer,
            peer_ip: peer_ip_header(peer),
            local,
            tls,
            identity: None,
            identity_header: None,
        }
    }

    /// The same client, with the identity its verified certificate names.
    pub fn with_identity(mut self, identity: Option<Arc<ClientIdentity>>) -> Self {
        self.identity_header = identity.as_ref().and_then(|i| i.header_value());
        self.identity = identity;
        self
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
    type Response = (Response<ProxyBody>, Outcome);
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let proxy = self.proxy.clone();
        let req = ClientRequest {
            request,
            local: self.client.local,
            tls: self.client.tls,
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
    /// The prefix's 16 hex digits and the dash, formatted once.
    prefix: [u8; 17],
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
        RequestIds::with_prefix(h.finish())
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl RequestIds {
    /// Ids `<prefix in 16 hex digits>-1`, `-2`, and so on.
    fn with_prefix(prefix: u64) -> Self {
        let mut hex = [b'-'; 17];
        for (i, b) in hex[..16].iter_mut().enumerate() {
            *b = HEX[((prefix >> (60 - 4 * i)) & 0xf) as usize];
        }
        RequestIds {
            prefix: hex,
            next: Arc::new(AtomicU64::new(1)),
        }
    }

    /// The next id: `<16 hex digits of prefix>-<counter in hex>`, written
    /// into a buffer on the stack (`format!` was a tenth of the stack's
    /// cost per request).
    pub fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 33];
        buf[..17].copy_from_slice(&self.prefix);
        let digits = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
        for i in 0..digits {
            buf[17 + i] = HEX[((n >> (4 * (digits - 1 - i))) & 0xf) as usize];
        }
        // Owned by its `Bytes` (one allocation, shared by reference count):
        // the id goes into the request and then the response, and a
        // `HeaderValue::from_bytes` copy would be copied again into a
        // shared buffer by its first clone.
        let id = Bytes::from_owner(MadeId {
            buf,
            len: 17 + digits,
        });
        HeaderValue::from_maybe_shared(id).unwrap_or_else(|_| HeaderValue::from_static("-"))
    }
}

/// A made request id's bytes, on the heap once.
struct MadeId {
    buf: [u8; 33],
    len: usize,
}

impl AsRef<[u8]> for MadeId {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
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
    in_flight: Arc<LiveLimit>,
}

/// One connection's stack (outermost first).
pub type ConnectionStack = Observe<Limit<ForwardingHeaders<Forward>>>;

/// A connection's tower stack as hyper's service, which hyper calls
/// through `&self`. hyper-util's `TowerToHyperService` clones the whole
/// stack for every request and drives it through a `Oneshot` (the clone,
/// the request and the `Oneshot` state moved several times: about 1,000
/// instructions per request, docs/benchmarks.md). Here the connection's
/// one stack is called in place: it is polled ready with a no-op waker
/// first, as tower's contract asks, and only a stack that is not ready at
/// once (none of this proxy's layers ever is not) falls back to a clone
/// driven by tower's `Oneshot`, which waits for readiness properly.
///
/// The lock is never contended: hyper calls the service from the
/// connection's own task. A `Mutex` rather than a `RefCell` because the
/// HTTP/2 side wants the service `Sync`.
pub struct HyperStack<S> {
    stack: std::sync::Mutex<S>,
}

impl<S> HyperStack<S> {
    /// Serves `stack` to hyper.
    pub fn new(stack: S) -> Self {
        HyperStack {
            stack: std::sync::Mutex::new(stack),
        }
    }
}

impl<S, R> hyper::service::Service<R> for HyperStack<S>
where
    S: Service<R> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    /// The fallback boxed: inline, it would make every request's future
    /// larger by a whole stack and request, moved with it into hyper.
    type Future = futures_util::future::Either<S::Future, Pin<Box<tower::util::Oneshot<S, R>>>>;

    fn call(&self, req: R) -> Self::Future {
        let mut stack = self
            .stack
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match stack.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => futures_util::future::Either::Left(stack.call(req)),
            // Not ready (or failing): a clone waits for readiness with the
            // connection's real waker and reports the error itself.
            _ => futures_util::future::Either::Right(Box::pin(tower::ServiceExt::oneshot(
                stack.clone(),
                req,
            ))),
        }
    }
}

impl StackParts {
    /// The parts for `proxy`'s listener: at most `in_flight`'s maximum
    /// of requests inside at once, across all its connections.
    pub fn new(
        proxy: HttpProxy,
        metrics: Arc<Metrics>,
        access_log: AccessLogSwitch,
        in_flight: Arc<LiveLimit>,
    ) -> Self {
        StackParts {
            proxy,
            shared: Arc::new(Shared {
                metrics,
                access_log,
                ids: RequestIds::default(),
            }),
            in_flight,
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
            .layer_fn(|inner| Limit {
                inner,
                permits: self.in_flight.clone(),
                proxy: self.proxy.clone(),
            })
            .layer_fn(|inner| ForwardingHeaders {
                inner,
                proxy: self.proxy.clone(),
                client: client.clone(),
            })
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
    /// The client certificate's subject (mTLS), when logged.
    client_cert: Option<Arc<ClientIdentity>>,
    request_id: HeaderValue,
    bytes_in: u64,
}

impl<S> Service<Request<Incoming>> for Observe<S>
where
    S: Service<Request<Incoming>, Response = (Response<ProxyBody>, Outcome), Error = Infallible>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        // One lookup whether the client sent an id or not.
        let request_id = match req.headers_mut().entry(X_REQUEST_ID) {
            http::header::Entry::Occupied(id) => id.get().clone(),
            http::header::Entry::Vacant(slot) => {
                let id = self.parts.ids.next();
                slot.insert(id.clone());
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
            client_cert: if log {
                self.client.identity.clone()
            } else {
                None
            },
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
    F: Future<Output = Result<(Response<ProxyBody>, Outcome), Infallible>>,
{
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok((mut resp, outcome)) = ready!(this.inner.poll(cx));
        if let Some(seen) = this.seen.take() {
            record(&this.parts.metrics, &seen, &resp, outcome);
            // Moved, not cloned: a made id's bytes would be copied into a
            // shared buffer on their first clone.
            resp.headers_mut().insert(X_REQUEST_ID, seen.request_id);
        }
        Poll::Ready(Ok(resp))
    }
}

fn record(metrics: &Metrics, seen: &Seen, resp: &Response<ProxyBody>, outcome: Outcome) {
    let took = seen.started.elapsed();
    let status = resp.status();
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
        client_cert = seen.client_cert.as_ref().map_or("-", |c| c.subject.as_str()),
        client_san = seen.client_cert.as_ref().map_or_else(|| "-".to_string(), |c| c.sans_text()).as_str(),
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

/// The request-side header rules ([`HttpProxy::prepare_headers`]): what
/// Livy must not see from the client (hop-by-hop fields, forged forwarding
/// headers, `Expect`) and what it should (the proxy's `X-Forwarded-*`,
/// `Via`), before the forwarding loop sees the request. A request whose
/// headers cannot be forwarded (a bad `Content-Length`) is answered 400 here.
#[derive(Clone)]
pub struct ForwardingHeaders<S> {
    inner: S,
    proxy: HttpProxy,
    client: Arc<ClientInfo>,
}

impl<S> Service<Request<Incoming>> for ForwardingHeaders<S>
where
    S: Service<Request<Incoming>, Response = (Response<ProxyBody>, Outcome), Error = Infallible>,
{
    type Response = (Response<ProxyBody>, Outcome);
    type Error = Infallible;
    type Future = Answer<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        match self.proxy.prepare_headers(
            &mut req,
            &self.client.peer_ip,
            self.client.tls,
            self.client.identity_header.as_ref(),
        ) {
            Ok(()) => futures_util::future::Either::Left(self.inner.call(req)),
            Err(error) => {
                tracing::warn!(method = %req.method(), path = req.uri().path(), kind = error.kind(), error = %error, "request failed");
                Early::answer(error, self.proxy.retry_after())
            }
        }
    }
}

/// The inner service's answer, or a layer's own given at once.
pub type Answer<F> = futures_util::future::Either<F, Early>;

/// A layer's own answer (a 400, a 503), given at once. Boxed: it is rare,
/// and inline it would make every request's future larger by a whole
/// response, moved with it through the stack.
pub struct Early(Option<Box<(Response<ProxyBody>, Outcome)>>);

impl Early {
    /// The proxy's own answer to `error`, with the outcome naming its kind.
    fn answer<F>(error: ProxyError, retry_after: Duration) -> Answer<F> {
        let outcome = Outcome {
            error: Some(error.kind()),
            ..Outcome::default()
        };
        let resp = error
            .into_response(retry_after)
            .map(http_body_util::Either::Right);
        futures_util::future::Either::Right(Early(Some(Box::new((resp, outcome)))))
    }
}

impl Future for Early {
    type Output = Result<(Response<ProxyBody>, Outcome), Infallible>;

    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        match self.0.take() {
            Some(answer) => Poll::Ready(Ok(*answer)),
            // Polled again after it answered: as `Ready` would panic,
            // this never finishes instead.
            None => Poll::Pending,
        }
    }
}

/// The in-flight limit: a permit per request, held until its response head
/// is ready; none left means 503 `overloaded` at once.
#[derive(Clone)]
pub struct Limit<S> {
    inner: S,
    permits: Arc<LiveLimit>,
    /// For the `Retry-After` of a shed request (live).
    proxy: HttpProxy,
}

impl<S> Service<Request<Incoming>> for Limit<S>
where
    S: Service<Request<Incoming>, Response = (Response<ProxyBody>, Outcome), Error = Infallible>,
{
    type Response = (Response<ProxyBody>, Outcome);
    type Error = Infallible;
    type Future = LimitFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        match self.permits.try_acquire() {
            Some(permit) => LimitFuture {
                inner: futures_util::future::Either::Left(self.inner.call(req)),
                permit: Some(permit),
            },
            None => {
                let error = ProxyError::Overloaded(format!(
                    "{} requests are in flight (max-requests-in-flight)",
                    self.permits.max()
                ));
                LimitFuture {
                    inner: Early::answer(error, self.proxy.retry_after()),
                    permit: None,
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// [`Limit`]'s future: the inner one holding its permit, or the 503.
    pub struct LimitFuture<F> {
        #[pin]
        inner: Answer<F>,
        permit: Option<Permit>,
    }
}

impl<F> Future for LimitFuture<F>
where
    F: Future<Output = Result<(Response<ProxyBody>, Outcome), Infallible>>,
{
    type Output = Result<(Response<ProxyBody>, Outcome), Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.inner.poll(cx));
        this.permit.take();
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_request_ids_are_unique_prefix_dash_counter() {
        let ids = RequestIds::with_prefix(0x0123_4567_89ab_cdef);
        assert_eq!(ids.next(), "0123456789abcdef-1");
        assert_eq!(ids.next(), "0123456789abcdef-2");
        ids.next.store(0x1f0, Ordering::Relaxed);
        assert_eq!(ids.next(), "0123456789abcdef-1f0");
        let random = RequestIds::default();
        assert_ne!(random.next(), random.next());
    }
}
