//! HTTP reverse proxy to the active Livy server.
//!
//! One request's life, in the order of [`HttpProxy::forward`]:
//! 1. Wait (up to `hold-timeout`) for discovery to name a leader.
//! 2. Read a small body into memory so it can be resent ([`body`]).
//! 3. Send to the leader over a pooled keep-alive connection.
//! 4. A refused connect means nothing was sent: wait for the leader to
//!    change (or the just-elected one to finish restarting) and try again,
//!    within the hold time, like pingora's `fail_to_connect`.
//! 5. A 3xx whose `Location` names another known Livy node means "I am
//!    passive, the active one is there": the proxy reports it to discovery
//!    and waits (up to [`HINT_ANSWER_WAIT`]) for its check, then resends the
//!    original request to the leader discovery confirmed, or else to the
//!    node the redirect names (at most [`MAX_REDIRECT_HOPS`]); a redirect
//!    anywhere else goes to the client untouched (never an open proxy). A
//!    streamed body is held back from Livy until it says `100 Continue`, so
//!    a passive's 307 leaves it unsent and it still goes to the leader.
//! 6. A failure after the request may have reached Livy is retried only for
//!    GET, HEAD and OPTIONS, once per server (again only on a new leader),
//!    and only while the proxy-wide retry budget allows ([`retry`]);
//!    anything else gets a 502 — never a POST twice.
//!
//! Clients speak HTTP/1.1 (keep-alive, pipelining) or h2c with prior
//! knowledge on the same port, or, with `tls-cert`, only TLS (HTTP/2 by
//! ALPN `h2`, else HTTP/1.1: [`crate::tls`]); Livy is spoken to in HTTP/1.1.

pub mod body;
pub mod error;
pub mod framing;
mod h2c;
pub mod headers;
pub mod park;
pub mod retry;
mod send_timeout;
mod sniff;
pub mod stack;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::discovery::{Hints, LeaderRx, LeaderView};
use crate::metrics::{Listener, Metrics};
use crate::node::{LivyNode, NodeList};
use body::{BodyLimits, UpstreamBody};
use error::ProxyError;
use send_timeout::SendTimeout;
use sniff::ClientProtocol;
use upstream::{BodyNotSent, Connector, Endpoint, PooledBody, Upstream, UpstreamError};

/// How many redirects between Livy servers one request may follow.
pub const MAX_REDIRECT_HOPS: usize = 3;

/// Longest a redirected request waits for discovery to answer its hint (a
/// probe of the named node and maybe a round, or a ZooKeeper sync and read:
/// milliseconds when the servers answer, a probe timeout or two when not).
/// Then it follows the redirect itself, to a known node, as without hints.
pub const HINT_ANSWER_WAIT: Duration = Duration::from_secs(3);

/// The body of a response to the client: Livy's, streamed, or the proxy's own.
pub type ProxyBody = Either<PooledBody, Full<Bytes>>;

/// The settings the HTTP proxy reads on every request: configuration
/// section `http`, built by [`crate::config`].
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// The listener's address (`listen`).
    pub listen: std::net::SocketAddr,
    /// How long a request waits for a usable leader.
    pub hold_timeout: Duration,
    /// How long Livy may take to send response headers.
    pub upstream_timeout: Duration,
    /// How long a client may take to send a request's headers.
    pub client_header_timeout: Duration,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Largest body kept for replay.
    pub max_replay_body: u64,
    /// Whether incoming forwarding headers are trusted and extended.
    pub trust_forwarded: bool,
    /// More client-sent headers removed when they are not trusted.
    pub strip_headers: Vec<http::HeaderName>,
    /// Whether RFC 7239 `Forwarded` is sent as well as `X-Forwarded-*`.
    pub emit_forwarded: bool,
    /// The origin rewritten `Location`s name (`public-url`): scheme, host
    /// and port, no trailing slash.
    pub public_url: Option<String>,
    /// `Retry-After` on 502/503.
    pub retry_after: Duration,
    /// Most connections open to Livy at once; more requests wait.
    pub max_upstream_connections: usize,
    /// Longest silence between two pieces of a request body.
    pub client_body_timeout: Duration,
    /// Longest a write to a client that does not read may wait.
    pub client_send_timeout: Duration,
    /// Memory all buffered request bodies may take together.
    pub max_buffered_bodies: u64,
    /// Most requests streaming a body to Livy at once.
    pub max_streaming_uploads: usize,
    /// Most requests in flight on one h2c connection.
    pub h2_max_concurrent_streams: u32,
    /// Most requests inside the proxy at once; more are shed with 503.
    pub max_requests_in_flight: usize,
    /// Most client connections open on the HTTP listener; at the limit,
    /// accepting pauses.
    pub max_client_connections: usize,
    /// Largest header list of one h2c request.
    pub h2_max_header_list_size: u32,
    /// Whose PROXY protocol headers are believed, and for how long one is
    /// waited for: the client's address behind a TCP load balancer.
    pub proxy_protocol: crate::proxy_protocol::ProxyProtocol,
    /// The listener's TLS files (`tls-cert`, `tls-key`, `tls-client-ca`,
    /// `tls-client-auth`), read by the listener (`app::TlsSources`).
    pub tls: Option<crate::tls::TlsSpec>,
    /// A TLS listener beside the plain `listen` (`tls-listen`).
    pub tls_listen: Option<std::net::SocketAddr>,
    /// The header Livy gets a verified client certificate's identity in
    /// (`tls-client-identity-header`); any copy from the client is
    /// removed, on every listener.
    pub client_identity_header: Option<http::HeaderName>,
}

struct Shared {
    leader: LeaderRx,
    hints: Hints,
    metrics: Arc<Metrics>,
    access_log: stack::AccessLogSwitch,
    retry_budget: retry::RetryBudget,
    authority: AuthorityCache,
    nodes: NodeList,
    upstream: Arc<Upstream>,
    bodies: BodyLimits,
    /// Swapped whole by a reload; the keys read per request take effect
    /// for the next request, the others were used at start.
    settings: arc_swap::ArcSwap<HttpSettings>,
    /// `max-requests-in-flight`, across the listener's connections (live).
    in_flight: Arc<crate::limit::LiveLimit>,
    /// `max-client-connections` on the listener (live).
    connections: Arc<crate::limit::LiveLimit>,
    /// Where accepted connections are served (`shard`).
    shards: Option<Arc<crate::shard::Shards>>,
}

/// What became of one request inside the proxy, for its access-log line and
/// the metrics: handed out beside the response (not in its extensions,
/// which would cost an allocation per request).
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// The Livy server the last attempt went to.
    pub node: Option<Arc<LivyNode>>,
    /// Time spent waiting for a leader (elections, refused connects,
    /// discovery's check of a redirect).
    pub held: Duration,
    /// Redirects followed inside the proxy.
    pub redirects: u32,
    /// Times the request was sent again after it may have reached Livy.
    pub retries: u32,
    /// The failover.md `kind` when the proxy answered itself.
    pub error: Option<&'static str>,
}

/// What joins the HTTP proxy to the rest of the process.
pub struct Wiring {
    /// Where passives' redirects are reported.
    pub hints: Hints,
    /// Where request and connection metrics go.
    pub metrics: Arc<Metrics>,
    /// Whether access-log lines are written (flipped by a reload).
    pub access_log: stack::AccessLogSwitch,
    /// TLS to `https://` Livy nodes (none: they are refused).
    pub upstream_tls: Option<Arc<crate::tls::client::UpstreamTls>>,
    /// The serving threads connections are handed to (none: each is served
    /// on the runtime that accepted it).
    pub shards: Option<Arc<crate::shard::Shards>>,
}

impl Default for Wiring {
    /// Nothing joined: no discovery to hint, metrics nobody reads, access
    /// log on.
    fn default() -> Self {
        Wiring {
            hints: Hints::none(),
            metrics: Arc::new(Metrics::new("default", false)),
            access_log: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            upstream_tls: None,
            shards: None,
        }
    }
}

/// The proxy: cheap to clone (one `Arc`), one clone per connection.
#[derive(Clone)]
pub struct HttpProxy {
    shared: Arc<Shared>,
}

/// A request with what the forwarding loop needs of its connection, as
/// the service sees it. Only that: it is moved a few times per request.
/// The client's own address is the stack's business (`stack::ClientInfo`).
pub struct ClientRequest {
    /// The request as hyper parsed it.
    pub request: Request<Incoming>,
    /// The proxy's address this connection reached (the accepted socket's
    /// local address, concrete even when the listener is bound to
    /// 0.0.0.0): what a rewritten `Location` names without `public-url`.
    pub local: Option<SocketAddr>,
    /// Whether the connection is TLS (`https` in a rewritten `Location`).
    pub tls: bool,
}

impl ClientRequest {
    /// A request from a plain-text connection whose local address is
    /// unknown.
    pub fn new(request: Request<Incoming>) -> Self {
        ClientRequest {
            request,
            local: None,
            tls: false,
        }
    }
}

/// The client's IP as a header value (an IP literal is always a valid one).
fn peer_ip_header(peer: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.ip().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

impl HttpProxy {
    /// Builds the proxy: a pool of keep-alive HTTP/1.1 connections to Livy and a
    /// receiver of discovery's leader channel, with nowhere to report hints
    /// (for a view no discovery task owns).
    pub fn new(settings: HttpSettings, nodes: impl Into<NodeList>, leader: LeaderRx) -> Self {
        Self::wired(settings, nodes, leader, Wiring::default())
    }

    /// [`HttpProxy::new`] joined to the rest of the process: hints to
    /// discovery (a stale view corrected at once), the metrics, the access
    /// log's switch.
    pub fn wired(
        settings: HttpSettings,
        nodes: impl Into<NodeList>,
        leader: LeaderRx,
        wiring: Wiring,
    ) -> Self {
        let nodes = nodes.into();
        let Wiring {
            hints,
            metrics,
            access_log,
            upstream_tls,
            shards,
        } = wiring;
        // Any connection may be kept idle: the slots already bound them
        // all, busy or idle, at max-upstream-connections. A lower cap
        // closes a connection whenever more than that many come back at
        // once, and the next request opens it again (docs/benchmarks.md:
        // with a cap of 256 and 512 requests in flight on one thread, four
        // times the connects).
        let upstream = Upstream::new(
            Connector::new(
                settings.connect_timeout,
                Duration::from_secs(60),
                upstream_tls,
            ),
            settings.max_upstream_connections,
            settings.max_upstream_connections,
        );
        HttpProxy {
            shared: Arc::new(Shared {
                leader,
                hints,
                metrics,
                access_log,
                retry_budget: retry::RetryBudget::default(),
                authority: AuthorityCache::default(),
                nodes,
                upstream,
                bodies: BodyLimits::new(
                    settings.max_replay_body,
                    settings.max_buffered_bodies,
                    settings.max_streaming_uploads,
                    settings.client_body_timeout,
                ),
                in_flight: crate::limit::LiveLimit::new(settings.max_requests_in_flight),
                connections: crate::limit::LiveLimit::new(settings.max_client_connections),
                shards,
                settings: arc_swap::ArcSwap::from_pointee(settings),
            }),
        }
    }

    /// Accepts plain HTTP (HTTP/1.1 or h2c) connections on `listener` until
    /// `shutdown`, then lets in-flight requests finish (hyper's graceful
    /// shutdown) before returning.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) {
        self.serve_tls(listener, None, shutdown).await
    }

    /// [`HttpProxy::serve`], speaking TLS with `tls` when given (HTTP/2 by
    /// ALPN `h2`, else HTTP/1.1). A plain and a TLS listener can serve side
    /// by side (`tls-listen`): they share the proxy, its limits and pool.
    pub async fn serve_tls(
        self,
        listener: TcpListener,
        tls: Option<Arc<crate::tls::TlsSource>>,
        shutdown: CancellationToken,
    ) {
        // A client has `client-header-timeout` to send a request's headers,
        // so that a slow or stuck client cannot pin a connection forever:
        // kept by `park`'s clock, since hyper's costs a timer per request
        // (docs/benchmarks.md). hyper's own is off (and, with no timer, it
        // can start none).
        // Head and body copied into one buffer and sent with one write(2):
        // for Livy's small JSON answers cheaper in the kernel than writev(2)
        // (measured: docs/benchmarks.md).
        let mut http1 = http1::Builder::new();
        http1.header_read_timeout(None).writev(false);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.shared.settings.load().h2_max_concurrent_streams)
            .max_header_list_size(self.shared.settings.load().h2_max_header_list_size);
        // Shared by every connection's task; a connection uses one of them.
        let builders = Arc::new((http1, http2));
        let graceful = GracefulShutdown::new();
        let mut connections_tasks = tokio::task::JoinSet::new();
        // The tower stack (stack.rs): its shared parts built once, each
        // connection's around its client.
        let stack = stack::StackParts::new(
            self.clone(),
            self.shared.metrics.clone(),
            self.shared.access_log.clone(),
            self.shared.in_flight.clone(),
        );
        // A permit per open client connection, taken before accepting (as
        // mini-redis does): at the limit, accepting pauses and new clients
        // wait in the kernel's backlog instead of costing memory here.
        let connections = self.shared.connections.clone();
        loop {
            let permit = match connections.try_acquire() {
                Some(p) => p,
                None => {
                    self.shared.metrics.connections_at_limit();
                    tracing::warn!(
                        limit = connections.max(),
                        "max-client-connections reached: accepting paused"
                    );
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        p = connections.acquire() => p,
                    }
                }
            };
            // And a handshake permit (`max-tls-handshakes`), given back when
            // the handshake ends.
            let handshake = match &tls {
                Some(t) => match t.handshakes().permit(&shutdown).await {
                    Some(p) => Some(p),
                    None => break,
                },
                None => None,
            };
            let Some((stream, peer)) = crate::listener::accept(&listener, &shutdown, "HTTP").await
            else {
                break;
            };
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr().ok();
            let stack = stack.clone();
            // Loaded per connection: a reload applies to the next one.
            let current = self.shared.settings.load_full();
            let open = self.shared.metrics.connection(Listener::Http);
            let builders = builders.clone();
            let watcher = graceful.watcher();
            let shutdown = shutdown.clone();
            let tls = tls.clone();
            let header_timeout = current.client_header_timeout;
            let send_timeout = current.client_send_timeout;
            // Owned by this future: if it is dropped (the drain's grace
            // period over, `app::run` aborting it), every connection's task
            // goes with it instead of running on unowned.
            while connections_tasks.try_join_next().is_some() {}
            // On the least loaded serving thread, where it stays (`shard`).
            let (arrival, on) = match crate::shard::place(self.shared.shards.as_deref(), stream) {
                Ok(placed) => placed,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "cannot hand the connection to a worker: closed");
                    continue;
                }
            };
            let task = async move {
                let (stream, load) = match arrival.into_stream() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "cannot register the connection: closed");
                        return;
                    }
                };
                // Held for the connection's life, whichever way it ends.
                let _held = (open, permit, load);
                // Behind a load balancer, the client is whom its PROXY
                // header names (`proxy_protocol`); the header is consumed,
                // the request after it is not.
                let peer = match current.proxy_protocol.resolve_peer(&stream, peer).await {
                    Ok(client) => client,
                    Err(e) => return e.log("HTTP", peer),
                };
                let service = |tls, identity| {
                    let info =
                        Arc::new(stack::ClientInfo::new(peer, local, tls).with_identity(identity));
                    stack::HyperStack::new(stack.for_connection(info))
                };
                let ended = match (&tls, handshake) {
                    (Some(tls), Some(handshake)) => {
                        // The handshake, within `tls-handshake-timeout` (a
                        // client that connects and sends nothing is
                        // dropped), with the configuration in force now,
                        // then HTTP/2 if ALPN chose `h2`, else HTTP/1.1.
                        // The TLS branch's futures are boxed: inline, they
                        // would size every connection's task, plain ones
                        // too, for the largest branch (memory per idle
                        // connection, docs/benchmarks.md).
                        let done = tokio::select! {
                            h = Box::pin(tls.handshakes().accept(tls.acceptor(), stream, handshake)) => h,
                            _ = shutdown.cancelled() => return,
                        };
                        let stream = match done {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::debug!(%peer, listener = "http", error = %e, "TLS handshake did not complete");
                                return;
                            }
                        };
                        let conn = stream.get_ref().1;
                        let h2 = conn.alpn_protocol() == Some(b"h2");
                        let identity = crate::tls::identity::of_connection(conn).map(Arc::new);
                        Box::pin(serve_client(
                            stream,
                            h2,
                            service(true, identity),
                            &builders,
                            (header_timeout, send_timeout),
                            &shutdown,
                            watcher,
                        ))
                        .await
                    }
                    _ => {
                        // HTTP/1.1 or h2c, told apart without taking a
                        // byte from the socket (`sniff`); a connection that
                        // says nothing before the header timeout, or before
                        // shutdown, is dropped.
                        let protocol = tokio::select! {
                            p = sniff::client_protocol(&stream, header_timeout) => p,
                            _ = shutdown.cancelled() => None,
                        };
                        let h2 = match protocol {
                            Some(ClientProtocol::Http1) => false,
                            Some(ClientProtocol::H2c) => true,
                            None => return,
                        };
                        serve_client(
                            stream,
                            h2,
                            service(false, None),
                            &builders,
                            (header_timeout, send_timeout),
                            &shutdown,
                            watcher,
                        )
                        .await
                    }
                };
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "client connection ended with an error");
                }
            };
            match on {
                Some(shard) => connections_tasks.spawn_on(task, &shard),
                None => connections_tasks.spawn(task),
            };
        }
        drop(listener);
        graceful.shutdown().await;
        connections_tasks.shutdown().await;
    }

    /// Applies the request-side header rules before the request is
    /// forwarded: hop-by-hop fields removed, `Content-Length` normalised,
    /// `Cookie` fields joined, `Expect` dropped (the proxy holds the body),
    /// the forwarding headers replaced or extended, `Via` added. Called by
    /// the stack's `ForwardingHeaders` layer.
    pub fn prepare_headers(
        &self,
        req: &mut Request<Incoming>,
        client_ip: &HeaderValue,
        tls: bool,
        identity: Option<&HeaderValue>,
    ) -> Result<(), ProxyError> {
        let settings = self.shared.settings.load();
        let version = req.version();
        // One pass over the names; each rule below runs only when its
        // fields are there.
        let mut found = headers::scan(req.headers(), &settings.strip_headers);
        // RFC 9112 §3.2: a server answers 400 to an HTTP/1.1 request
        // without a Host field, and to any request with more than one
        // (hyper's parser checks neither). Livy gets its own Host either
        // way, but which one the client meant is then anyone's guess, and
        // `X-Forwarded-Host` would carry the first.
        if found.hosts > 1 || (found.hosts == 0 && version == http::Version::HTTP_11) {
            return Err(ProxyError::BadRequest(format!(
                "{} Host fields: an HTTP/1.1 request carries exactly one (RFC 9112 section 3.2)",
                found.hosts
            )));
        }
        // The authority the client addressed, for X-Forwarded-Host.
        let client_host = found.host.take().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let headers = req.headers_mut();
        headers::remove_hop_by_hop(headers, &found);
        // hyper's HTTP/1 parser already refuses a bad length, but h2 passes
        // repeated identical fields on, which would reach Livy as two lines.
        if found.content_length {
            framing::normalize_content_length(headers)
                .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
        }
        if found.cookies > 1 {
            headers::join_cookies(headers);
        }
        // The client's Host stays in the request, unsent: each attempt's
        // exchange writes the Livy server's own instead (`aim_at`).
        // The proxy already holds the body (or streams it): Livy must not
        // wait for a 100-continue exchange the client started with us.
        if found.expect {
            headers.remove(header::EXPECT);
        }
        headers::add_forwarded_scanned(
            headers,
            &headers::ClientSide {
                client_ip,
                proto: if tls { "https" } else { "http" },
                host: client_host.as_ref(),
                trust_forwarded: settings.trust_forwarded,
                emit_forwarded: settings.emit_forwarded,
                strip: &settings.strip_headers,
            },
            found.forwarding,
        );
        // Only the proxy says who a client certificate named: a copy the
        // client sent is removed, whatever trust-forwarded says.
        if let Some(name) = &settings.client_identity_header {
            headers.remove(name);
            if let Some(value) = identity {
                headers.insert(name.clone(), value.clone());
            }
        }
        headers::add_via(headers, version);
        Ok(())
    }

    /// The `Retry-After` the proxy's own 502/503 answers carry now.
    pub fn retry_after(&self) -> Duration {
        self.shared.settings.load().retry_after
    }

    /// Replaces the settings for the requests that start from now on (a
    /// reload). Only the keys read per request change anything: see
    /// docs/configuration.md for which are live.
    pub fn update_settings(&self, settings: HttpSettings) {
        self.shared
            .in_flight
            .set_max(settings.max_requests_in_flight);
        self.shared
            .connections
            .set_max(settings.max_client_connections);
        self.shared.settings.store(Arc::new(settings));
    }

    /// Handles one client request end to end; never fails, errors become
    /// JSON responses.
    pub async fn forward(&self, req: ClientRequest) -> (Response<ProxyBody>, Outcome) {
        let started = Instant::now();
        let mut outcome = Outcome::default();
        // The head stays here, for the log lines: the forwarding loop takes
        // the headers out of it and borrows the rest.
        let (mut head, incoming) = req.request.into_parts();
        let response = match self
            .try_forward(
                &mut head,
                incoming,
                req.local,
                req.tls,
                started,
                &mut outcome,
            )
            .await
        {
            Ok(resp) => resp,
            Err(e) => {
                let (method, uri) = (&head.method, &head.uri);
                tracing::warn!(%method, path = uri.path(), kind = e.kind(), error = %e, "request failed");
                outcome.error = Some(e.kind());
                e.into_response(self.shared.settings.load().retry_after)
                    .map(Either::Right)
            }
        };
        let (method, uri) = (&head.method, &head.uri);
        tracing::debug!(%method, path = uri.path(), status = response.status().as_u16(), elapsed = ?started.elapsed(), "request");
        (response, outcome)
    }

    async fn try_forward(
        &self,
        parts: &mut http::request::Parts,
        incoming: Incoming,
        local: Option<SocketAddr>,
        tls: bool,
        started: Instant,
        outcome: &mut Outcome,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let s = &self.shared;
        // This request's settings: a reload in the middle does not change
        // the rules it runs under.
        let settings = s.settings.load_full();
        let deadline = started + settings.hold_timeout;
        if parts.method == Method::CONNECT {
            return Err(ProxyError::MethodNotAllowed(parts.method.to_string()));
        }
        // Hop-by-hop, framing and forwarding headers were settled by the
        // stack's `ForwardingHeaders` layer (stack.rs).
        let upstream_headers = std::mem::take(&mut parts.headers);
        let path_and_query = framing::origin_form(&parts.uri)
            .map_err(|e| ProxyError::BadRequest(format!("bad request target: {e}")))?;

        let mut body = s.bodies.prepare(incoming, deadline).await?;

        // Built once and reused by every attempt: the exchange with Livy
        // only borrows it, so a redirect or a retry changes the Host and the
        // body and nothing is copied.
        let mut upstream_req = Request::new(UpstreamBody::Buffered(Bytes::new()));
        *upstream_req.method_mut() = parts.method.clone();
        // Origin-form on the wire, as HTTP/1.1 to an origin server wants it;
        // the authority travels in Host. The path is shared with the
        // client's request, not copied.
        *upstream_req.uri_mut() = Uri::from(path_and_query);
        *upstream_req.headers_mut() = upstream_headers;
        let mut leader_rx = s.leader.clone();
        // A node named by a redirect overrides discovery for this request.
        let mut redirected_to: Option<Arc<LivyNode>> = None;
        let mut hops = 0usize;
        let mut backoff = Backoff::default();
        let mut last_connect_error: Option<(Arc<LivyNode>, String)> = None;
        let idempotent = matches!(
            *upstream_req.method(),
            Method::GET | Method::HEAD | Method::OPTIONS
        );
        if idempotent {
            s.retry_budget.deposit();
        }
        // The server an attempt failed on after it may have reached it: it
        // gets no second retry (RFC 9110 9.2.2), a new leader may.
        let mut failed_after_send: Option<Arc<LivyNode>> = None;
        // The server this request was taken from because discovery named
        // another leader while it did not answer: known not to lead, so a
        // redirect back to it is never followed.
        let mut left: Option<Arc<LivyNode>> = None;

        loop {
            // The view generation this attempt is made under: a retry waits
            // for a newer one (or a backoff), never for a change it missed.
            // Read once: the usual request finds a leader known and
            // neither waits nor reads the clock for a held time.
            let (mut generation, known) = {
                let view = leader_rx.borrow();
                let known = view.leader.as_ref().map(|l| l.node.clone());
                (view.generation, known)
            };
            let node = match redirected_to.clone().or(known) {
                Some(n) => n,
                None => match held(outcome, wait_for_leader(&mut leader_rx, deadline)).await {
                    Some((n, g)) => {
                        generation = g;
                        n
                    }
                    None => {
                        return Err(match last_connect_error {
                            Some((node, reason)) => ProxyError::LeaderUnreachable {
                                node: node.to_string(),
                                reason,
                            },
                            None => ProxyError::NoLeader {
                                waited: started.elapsed(),
                                problem: leader_rx.borrow().problem.clone(),
                            },
                        });
                    }
                },
            };
            let Some(attempt_body) = body.take() else {
                // A streamed body was already sent once: never again.
                return Err(ProxyError::UpstreamFailed {
                    node: node.to_string(),
                    reason: "the request body was already sent and is too large to resend".into(),
                });
            };
            outcome.node = Some(node.clone());
            let authority = s.authority.of(&node);
            *upstream_req.body_mut() = attempt_body;
            let mut wrote = false;
            let exchanged = exchange(
                s.upstream.send(&authority, &mut upstream_req, &mut wrote),
                settings.upstream_timeout,
                &leader_rx,
                &node,
                generation,
            )
            .await;
            let result = match exchanged {
                Exchanged::Answer(r) => r,
                Exchanged::TimedOut => {
                    return Err(ProxyError::UpstreamTimeout {
                        node: node.to_string(),
                        timeout: settings.upstream_timeout,
                    });
                }
                Exchanged::LeaderMoved => {
                    // The node stopped answering and discovery has named
                    // another leader: a lost host, a partition or a frozen
                    // JVM, which would keep the request until
                    // upstream-timeout. Its connection is dropped.
                    redirected_to = None;
                    left = Some(node.clone());
                    if !wrote {
                        body.put_back(take_body(&mut upstream_req));
                        tracing::info!(node = %node, "the leader changed before the request left: sending it to the new one");
                        continue;
                    }
                    if idempotent && body.is_replayable() && s.retry_budget.withdraw() {
                        tracing::info!(node = %node, method = %upstream_req.method(), "the leader changed while Livy had not answered: resending the idempotent request to the new one");
                        outcome.retries += 1;
                        failed_after_send = Some(node.clone());
                        continue;
                    }
                    tracing::warn!(node = %node, method = %upstream_req.method(), "the leader changed while Livy had not answered: not resent (it may have reached Livy)");
                    return Err(ProxyError::UpstreamFailed {
                        node: node.to_string(),
                        reason: "Livy had not answered when discovery named another leader; the request may have reached it".into(),
                    });
                }
            };
            match result {
                Ok(resp) => {
                    if resp.extensions().get::<BodyNotSent>().is_some() {
                        body.put_back(take_body(&mut upstream_req));
                    }
                    // A server redirecting the request to itself is taking
                    // over: its latch names it, its role has not flipped
                    // yet (a moment after a failover). Ask it again shortly,
                    // within the hold time, rather than pass that on.
                    if body.can_send()
                        && Instant::now() + SELF_REDIRECT_PAUSE < deadline
                        && redirects_to_itself(&resp, &node, upstream_req.uri())
                    {
                        tracing::debug!(node = %node, "Livy server redirected the request to itself: taking over; asking again");
                        held(outcome, tokio::time::sleep(SELF_REDIRECT_PAUSE)).await;
                        continue;
                    }
                    let Some(target) = self.redirect_target(&resp, &node) else {
                        return Ok(self.relay_response(resp, local, tls));
                    };
                    // Evidence that the view is out of date. Discovery checks
                    // it at once; the request waits (briefly) for its answer,
                    // so that it and the requests after it go to a confirmed
                    // leader rather than to a node a passive merely named.
                    let mut view_moved = false;
                    if redirected_to.is_none()
                        && let Some(seq) = s.hints.report(node.clone(), (*target).clone())
                    {
                        let until = deadline.min(Instant::now() + HINT_ANSWER_WAIT);
                        held(outcome, s.hints.answered(seq, until)).await;
                        view_moved = !still_names(&leader_rx, &node);
                    }
                    // A leader discovery still names, redirecting to the
                    // one it replaced (or that this request was taken
                    // from), is taking over: its latch names it, its role
                    // has not flipped yet. The old one is known not to lead,
                    // so the new one is asked again shortly, as for a
                    // redirect to itself; unless the view is stale
                    // (ZooKeeper out of reach), which may have missed the
                    // old leader's return.
                    let back_to_deposed = || {
                        left.as_ref().is_some_and(|l| l.origin == target.origin)
                            || (redirected_to.is_none() && {
                                let view = leader_rx.borrow();
                                !view.stale
                                    && view
                                        .deposed
                                        .as_ref()
                                        .is_some_and(|d| d.origin == target.origin)
                            })
                    };
                    if body.can_send() && !view_moved && back_to_deposed() {
                        if Instant::now() + SELF_REDIRECT_PAUSE >= deadline {
                            return Err(ProxyError::NoLeader {
                                waited: started.elapsed(),
                                problem: Some(format!(
                                    "{node} is the leader but still redirects to {target}, which no longer leads"
                                )),
                            });
                        }
                        tracing::debug!(from = %node, named = %target, "Livy server redirected to the server discovery moved away from: taking over; asking again");
                        held(outcome, tokio::time::sleep(SELF_REDIRECT_PAUSE)).await;
                        redirected_to = None;
                        continue;
                    }
                    if body.can_send() {
                        hops += 1;
                        outcome.redirects += 1;
                        if hops > MAX_REDIRECT_HOPS {
                            return Err(ProxyError::RedirectLoop { hops: hops - 1 });
                        }
                        if view_moved {
                            tracing::info!(from = %node, named = %target, "Livy server redirected and discovery moved the view: resending to the leader it names");
                            redirected_to = None;
                        } else {
                            tracing::info!(from = %node, to = %target, "Livy server redirected: following to the node it names");
                            redirected_to = Some(target);
                        }
                        continue;
                    }
                    // The body went to a passive and cannot go again. The
                    // client can resend it, but only a redirect that leads
                    // somewhere else is worth giving it: once the view has
                    // moved, the resent request reaches the new leader.
                    let moved = view_moved
                        || held(
                            outcome,
                            wait_moved_from(
                                &mut leader_rx,
                                &node,
                                deadline.min(Instant::now() + HINT_ANSWER_WAIT),
                            ),
                        )
                        .await;
                    if !moved {
                        return Err(ProxyError::LeaderChanging {
                            node: node.to_string(),
                        });
                    }
                    tracing::info!(from = %node, "a passive server took a body too large to resend: its redirect goes to the client, pointing at the proxy, whose view has moved");
                    return Ok(self.relay_response(resp, local, tls));
                }
                Err(UpstreamError::ClientBody(e)) => return Err(e.into()),
                Err(e) if e.is_tls() => {
                    let reason = error_chain(&e);
                    tracing::warn!(node = %node, error = %reason, "TLS to Livy failed: not retried");
                    return Err(ProxyError::UpstreamTls {
                        node: node.to_string(),
                        reason,
                    });
                }
                Err(e) if e.nothing_sent() => {
                    // Nothing reached Livy: safe to retry with any method,
                    // and a streamed body was never read.
                    body.put_back(take_body(&mut upstream_req));
                    let reason = error_chain(&e);
                    tracing::debug!(node = %node, error = %reason, "connect failed; retrying within the hold time");
                    redirected_to = None;
                    let pause = backoff.next(generation);
                    if !body.can_send()
                        || !held(
                            outcome,
                            wait_change_or_backoff(&mut leader_rx, generation, pause, deadline),
                        )
                        .await
                    {
                        return Err(ProxyError::LeaderUnreachable {
                            node: node.to_string(),
                            reason,
                        });
                    }
                    last_connect_error = Some((node, reason));
                }
                Err(e) => {
                    let reason = error_chain(&e);
                    let failed = || ProxyError::UpstreamFailed {
                        node: node.to_string(),
                        reason: reason.clone(),
                    };
                    let again_here = failed_after_send
                        .as_ref()
                        .is_some_and(|f| f.origin == node.origin);
                    if !idempotent
                        || !body.is_replayable()
                        || again_here
                        || Instant::now() >= deadline
                    {
                        return Err(failed());
                    }
                    if !s.retry_budget.withdraw() {
                        tracing::warn!(node = %node, error = %reason, method = %upstream_req.method(), "upstream failed; not retried: the retry budget is spent (too many failures across requests)");
                        return Err(failed());
                    }
                    tracing::info!(node = %node, error = %reason, method = %upstream_req.method(), "upstream failed; retrying idempotent request once");
                    failed_after_send = Some(node.clone());
                    outcome.retries += 1;
                    redirected_to = None;
                    let pause = backoff.next(generation);
                    if !held(
                        outcome,
                        wait_change_or_backoff(&mut leader_rx, generation, pause, deadline),
                    )
                    .await
                    {
                        return Err(failed());
                    }
                }
            }
        }
    }

    /// The known Livy node a redirect from `from` points at, if it is one:
    /// the sign of a passive server naming the active one.
    fn redirect_target<B>(&self, resp: &Response<B>, from: &LivyNode) -> Option<Arc<LivyNode>> {
        if !matches!(
            resp.status(),
            StatusCode::TEMPORARY_REDIRECT
                | StatusCode::PERMANENT_REDIRECT
                | StatusCode::FOUND
                | StatusCode::SEE_OTHER
                | StatusCode::MOVED_PERMANENTLY
        ) {
            return None;
        }
        let location = resp.headers().get(header::LOCATION)?.to_str().ok()?;
        let current = self.shared.leader.borrow().leader.clone();
        let nodes = self.shared.nodes.load();
        let candidates = nodes.iter().chain(current.as_ref().map(|l| &*l.node));
        let (node, _) = headers::known_node(location, candidates)?;
        // A redirect to itself (the UI's `/` -> `/ui`) is an ordinary one.
        (node.origin != from.origin).then(|| Arc::new(node.clone()))
    }

    /// Livy's response, with hop-by-hop headers removed and a
    /// `Location` that names a Livy server turned into the proxy's address:
    /// `public-url`, else the address the client's connection reached
    /// (`local`). Never the client's `Host`: the client chooses it, and
    /// `Host: evil.example` would make the proxy redirect there.
    fn relay_response(
        &self,
        resp: Response<PooledBody>,
        local: Option<SocketAddr>,
        tls: bool,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        // No `Via` on responses: RFC 9110 §7.6.3 requires it of a gateway
        // only on requests (Livy gets it); like HAProxy and nginx, the
        // proxy stays out of what clients see.
        if let Some(location) = parts
            .headers
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok())
        {
            let current = self.shared.leader.borrow().leader.clone();
            let nodes = self.shared.nodes.load();
            let known = headers::known_node(
                location,
                nodes.iter().chain(current.as_ref().map(|l| &*l.node)),
            )
            .is_some();
            if known {
                // Without an address at all, a path alone: the client
                // resolves it against the URL it used (RFC 9110 §10.2.2).
                let settings = self.shared.settings.load();
                let origin = match (&settings.public_url, local) {
                    (Some(url), _) => url.clone(),
                    (None, Some(addr)) if tls => format!("https://{addr}"),
                    (None, Some(addr)) => format!("http://{addr}"),
                    (None, None) => String::new(),
                };
                if let Some(rewritten) = headers::rewrite_location(location, &origin)
                    && let Ok(v) = HeaderValue::from_str(&rewritten)
                {
                    parts.headers.insert(header::LOCATION, v);
                }
            }
        }
        Response::from_parts(parts, Either::Left(body))
    }
}

/// The leader's `host:port`, formatted once per leader rather than once per
/// request: it is both the pool key and the upstream `Host`. Keyed by the
/// identity of the `Arc` discovery published (kept alive here, so the
/// pointer cannot be reused by another node).
#[derive(Default)]
struct AuthorityCache {
    last: arc_swap::ArcSwapOption<(Arc<LivyNode>, Endpoint)>,
}

impl AuthorityCache {
    fn of(&self, node: &Arc<LivyNode>) -> Endpoint {
        if let Some(hit) = self.last.load().as_deref()
            && Arc::ptr_eq(&hit.0, node)
        {
            return hit.1.clone();
        }
        let authority = Endpoint::of(&node.origin);
        self.last
            .store(Some(Arc::new((node.clone(), authority.clone()))));
        authority
    }
}

/// Pauses between retries: 10 ms doubling to 500 ms, starting over with
/// every new view. A new leader is retried at once and then often: it may
/// still be restarting its server, or (seen under SIGKILL failover) still
/// redirecting to the dead leader for the few milliseconds before its own
/// latch tells it that it leads.
struct Backoff {
    next: Duration,
    generation: Option<u64>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Self::MIN,
            generation: None,
        }
    }
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_millis(500);

    fn next(&mut self, generation: u64) -> Duration {
        if self.generation != Some(generation) {
            self.generation = Some(generation);
            self.next = Self::MIN;
        }
        let pause = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        pause
    }
}

/// Runs `wait`, adding the time it took to the request's held time.
async fn held<T>(outcome: &mut Outcome, wait: impl Future<Output = T>) -> T {
    let from = Instant::now();
    let out = wait.await;
    outcome.held += from.elapsed();
    out
}

/// Pause before asking a server that redirected a request to itself again.
pub const SELF_REDIRECT_PAUSE: Duration = Duration::from_millis(50);

/// Whether `resp` is a redirect of the request for `target` to the same
/// URL on `node` itself (not the UI's `/` -> `/ui`, which changes the path).
fn redirects_to_itself<B>(resp: &Response<B>, node: &LivyNode, target: &http::Uri) -> bool {
    if !matches!(
        resp.status(),
        StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT
    ) {
        return false;
    }
    let Some(location) = resp
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((named, _)) = headers::known_node(location, std::iter::once(node)) else {
        return false;
    };
    let Ok(url) = url::Url::parse(location) else {
        return false;
    };
    let path_and_query = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    named.origin == node.origin
        && target.path_and_query().map_or("/", |pq| pq.as_str()) == path_and_query
}

/// Whether the view still names `node` as the leader.
fn still_names(rx: &LeaderRx, node: &LivyNode) -> bool {
    rx.borrow()
        .leader
        .as_ref()
        .is_some_and(|l| l.node.origin == node.origin)
}

/// The request's body, taken out so that an unsent stream can be given back
/// to [`PreparedBody`]; what is left behind is never sent.
fn take_body(req: &mut Request<UpstreamBody>) -> UpstreamBody {
    std::mem::replace(req.body_mut(), UpstreamBody::Buffered(Bytes::new()))
}

/// How long an exchange with Livy runs before it also watches the view:
/// most are answered well within it and pay for no watch; one still
/// waiting then learns when discovery names another leader.
const WATCH_VIEW_AFTER: Duration = Duration::from_secs(1);

/// How an exchange with Livy ended.
enum Exchanged<T> {
    /// Livy answered, or the exchange failed on its own.
    Answer(T),
    /// `upstream-timeout` passed without an answer.
    TimedOut,
    /// Discovery named another leader while Livy had not answered.
    LeaderMoved,
}

/// Runs `send` within `timeout`, and from [`WATCH_VIEW_AFTER`] on until a
/// view newer than `generation` names a leader other than `node` (a view
/// with no leader does not count: one missed probe is not a failover).
/// The same one timer as a plain timeout for an exchange answered in time.
async fn exchange<F: Future>(
    send: F,
    timeout: Duration,
    rx: &LeaderRx,
    node: &LivyNode,
    generation: u64,
) -> Exchanged<F::Output> {
    let now = tokio::time::Instant::now();
    // A timeout no Instant can hold waits for ever.
    let end = now.checked_add(timeout);
    let watch_from = now + WATCH_VIEW_AFTER;
    let first = end.map_or(watch_from, |e| e.min(watch_from));
    let mut send = std::pin::pin!(send);
    let timer = tokio::time::sleep_until(first);
    let mut timer = std::pin::pin!(timer);
    tokio::select! {
        biased;
        r = &mut send => return Exchanged::Answer(r),
        () = &mut timer => {}
    }
    match end {
        Some(e) if e <= first => return Exchanged::TimedOut,
        Some(e) => timer.as_mut().reset(e),
        None => {}
    }
    let mut rx = rx.clone();
    let moved = async {
        let elsewhere = rx.wait_for(|v: &LeaderView| {
            v.generation != generation
                && v.leader
                    .as_ref()
                    .is_some_and(|l| l.node.origin != node.origin)
        });
        if elsewhere.await.is_err() {
            // Discovery has stopped: nothing more to learn.
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        biased;
        r = &mut send => Exchanged::Answer(r),
        () = &mut timer, if end.is_some() => Exchanged::TimedOut,
        () = moved => Exchanged::LeaderMoved,
    }
}

/// Waits until discovery names a leader other than `from` (a node that just
/// redirected), or `deadline` passes; true if it did.
async fn wait_moved_from(rx: &mut LeaderRx, from: &LivyNode, deadline: Instant) -> bool {
    let moved = rx.wait_for(|v: &LeaderView| {
        v.leader
            .as_ref()
            .is_some_and(|l| l.node.origin != from.origin)
    });
    matches!(
        tokio::time::timeout_at(deadline.into(), moved).await,
        Ok(Ok(_))
    )
}

/// Waits until discovery names a leader or `deadline` passes; returns it
/// with the generation of the view that named it.
async fn wait_for_leader(rx: &mut LeaderRx, deadline: Instant) -> Option<(Arc<LivyNode>, u64)> {
    let wait = rx.wait_for(|v: &LeaderView| v.leader.is_some());
    match tokio::time::timeout_at(deadline.into(), wait).await {
        Ok(Ok(view)) => view
            .leader
            .as_ref()
            .map(|l| (l.node.clone(), view.generation)),
        _ => None,
    }
}

/// After a failed attempt: returns as soon as the leader changes or
/// `backoff` passes (a just-elected Livy restarts its server and refuses
/// connections briefly), false if the hold deadline has passed.
/// A change is a view newer than `seen`, even one published while the
/// failed attempt was still under way.
async fn wait_change_or_backoff(
    rx: &mut LeaderRx,
    seen: u64,
    backoff: Duration,
    deadline: Instant,
) -> bool {
    let now = Instant::now();
    if now >= deadline {
        return false;
    }
    let until = (now + backoff).min(deadline);
    let newer = rx.wait_for(|v: &LeaderView| v.generation != seen);
    let _ = tokio::time::timeout_at(until.into(), newer).await;
    Instant::now() < deadline
}

/// An error and its sources on one line: hyper-util's top-level message
/// alone ("client error (Connect)") hides the useful part.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The HTTP/1.1 and HTTP/2 connection builders every connection shares.
type Builders = (http1::Builder, http2::Builder<TokioExecutor>);

/// Serves one client connection (plain or TLS) in HTTP/2 if `h2`, else in
/// HTTP/1.1 (parked while it idles: `park`), until it ends or, after
/// `shutdown`, its requests finish, within `client-header-timeout` and
/// `client-send-timeout` (the pair of durations).
async fn serve_client<I>(
    io: I,
    h2: bool,
    service: stack::HyperStack<stack::ConnectionStack>,
    builders: &Builders,
    (header_timeout, send_timeout): (Duration, Duration),
    shutdown: &CancellationToken,
    watcher: hyper_util::server::graceful::Watcher,
) -> Result<(), hyper::Error>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + park::Readiness + Unpin + Send + 'static,
{
    let (http1, http2) = builders;
    let io = SendTimeout::new(io, send_timeout);
    if h2 {
        h2c::serve(
            http2,
            TokioIo::new(io),
            service,
            (header_timeout, send_timeout),
            shutdown,
            watcher,
        )
        .await
    } else {
        park::serve(http1, io, service, header_timeout, shutdown, watcher).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_and_restarts_with_each_new_view() {
        let mut b = Backoff::default();
        let ms = |d: Duration| d.as_millis();
        assert_eq!(
            [1, 1, 1, 1, 1, 1].map(|g| ms(b.next(g))),
            [10, 20, 40, 80, 160, 320]
        );
        assert_eq!(ms(b.next(2)), 10, "a new leader is retried soon");
        assert_eq!(ms(b.next(2)), 20);
    }

    #[test]
    fn a_redirect_of_the_same_url_to_the_same_server_is_a_takeover() {
        let node = LivyNode::parse(
            "livy-2=http://127.0.0.12:8998",
            crate::node::AddressDefaults::default(),
        )
        .unwrap();
        let redirect = |status: u16, location: &str| {
            Response::builder()
                .status(status)
                .header(header::LOCATION, location)
                .body(())
                .unwrap()
        };
        let target: http::Uri = "/sessions?from=0".parse().unwrap();
        let to =
            |status, location| redirects_to_itself(&redirect(status, location), &node, &target);
        assert!(to(307, "http://127.0.0.12:8998/sessions?from=0"));
        assert!(
            !to(307, "http://127.0.0.11:8998/sessions?from=0"),
            "another node"
        );
        assert!(!to(307, "http://127.0.0.12:8998/ui"), "the UI's redirect");
        assert!(
            !to(302, "http://127.0.0.12:8998/sessions?from=0"),
            "not Livy's 307"
        );
        assert!(
            !to(307, "/sessions?from=0"),
            "relative: not Livy's HA redirect"
        );
    }
}
