//! The HTTP path as a tower stack: cross-cutting concerns as layers over
//! the inner [`Forward`] service, so each can be read, reordered and tested
//! alone (the linkerd2-proxy shape).
//!
//! Outermost first:
//! 1. `SetRequestId` / `PropagateRequestId` (tower-http): an incoming
//!    `X-Request-Id` is kept, else one is made ([`RequestIds`]); it goes to
//!    Livy and back to the client.
//! 2. [`Observe`]: one access-log line (target `access`) and the request
//!    metrics, from what the response carries back ([`super::Outcome`]).
//! 3. [`Rescue`]: an error from the layers below (only load shedding makes one)
//!    becomes the proxy's JSON answer, 503 `overloaded` with `Retry-After`.
//! 4. `LoadShed` + `ConcurrencyLimit` (tower): at most
//!    `max-requests-in-flight` requests inside; one more is refused at once
//!    rather than queued behind the others.
//! 5. [`Forward`]: hold for a leader, follow redirects, retry what is safe
//!    (state that the three share, so they stay one service).
//!
//! Every layer is a concrete type (no `BoxService`): a request pays for
//! what the layers do, not for dynamic dispatch between them. Only
//! `Forward`'s future is boxed, so that an idle connection does not carry
//! room for a request's state (docs/benchmarks.md).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Request, Response, header};
use hyper::body::Incoming;
use tower::Service;
use tower_http::request_id::{MakeRequestId, RequestId};

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

/// The inner service: the proxy's forwarding loop.
#[derive(Clone)]
pub struct Forward {
    proxy: HttpProxy,
}

impl Forward {
    /// The forwarding loop of `proxy` as a service.
    pub fn new(proxy: HttpProxy) -> Self {
        Forward { proxy }
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
        let client = request.extensions().get::<Arc<ClientInfo>>().cloned();
        Box::pin(async move {
            let req = match client {
                Some(c) => ClientRequest {
                    request,
                    peer: c.peer,
                    peer_ip: c.peer_ip.clone(),
                    local: c.local,
                },
                None => ClientRequest::new(request, SocketAddr::from(([0, 0, 0, 0], 0))),
            };
            Ok(proxy.forward(req).await)
        })
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

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        HeaderValue::try_from(format!("{:016x}-{n:x}", self.prefix))
            .ok()
            .map(RequestId::new)
    }
}

/// Whether the access log is written; live (reload flips it).
pub type AccessLogSwitch = Arc<AtomicBool>;

/// Access log and request metrics around the inner service.
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
    access_log: AccessLogSwitch,
}

/// Layer making [`Observe`].
#[derive(Clone)]
pub struct ObserveLayer {
    /// Where request metrics go.
    pub metrics: Arc<Metrics>,
    /// Whether to write access-log lines.
    pub access_log: AccessLogSwitch,
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            metrics: self.metrics.clone(),
            access_log: self.access_log.clone(),
        }
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
    request_id: Option<HeaderValue>,
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

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        // The line's fields are gathered only when it will be written: the
        // switch (`access-log`) and the log filter (target `access`).
        let log = self.access_log.load(Ordering::Relaxed)
            && tracing::enabled!(target: "access", tracing::Level::INFO);
        let seen = Seen {
            started: Instant::now(),
            method: req.method().clone(),
            path: log.then(|| req.uri().path().to_string()),
            peer: log
                .then(|| req.extensions().get::<Arc<ClientInfo>>().map(|c| c.peer))
                .flatten(),
            request_id: log
                .then(|| req.headers().get("x-request-id").cloned())
                .flatten(),
            bytes_in: content_length(req.headers()),
        };
        ObserveFuture {
            inner: self.inner.call(req),
            seen: Some(seen),
            metrics: self.metrics.clone(),
        }
    }
}

fn content_length(headers: &http::HeaderMap) -> u64 {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pin_project_lite::pin_project! {
    /// [`Observe`]'s future: the inner one, then the log line and metrics.
    pub struct ObserveFuture<F> {
        #[pin]
        inner: F,
        seen: Option<Seen>,
        metrics: Arc<Metrics>,
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
            record(this.metrics, &seen, &mut resp);
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
    let bytes_out = content_length(resp.headers());
    metrics.bytes(Listener::Http, Direction::Received, seen.bytes_in);
    metrics.bytes(Listener::Http, Direction::Sent, bytes_out);
    let Some(path) = &seen.path else {
        return;
    };
    let id = resp
        .headers()
        .get("x-request-id")
        .or(seen.request_id.as_ref())
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
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
    fn made_request_ids_are_unique_and_valid_header_values() {
        let mut ids = RequestIds::default();
        let req = Request::new(());
        let a = ids.make_request_id(&req).unwrap();
        let b = ids.make_request_id(&req).unwrap();
        assert_ne!(a.header_value(), b.header_value());
    }
}
