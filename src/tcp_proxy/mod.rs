//! JDBC: forwarding Livy Thrift server TCP streams to the active server.
//!
//! Livy's passive servers do not redirect JDBC, they refuse it. This
//! listener makes the Thrift port one stable address: each accepted
//! connection is joined to the active server's Thrift port and bytes are
//! copied both ways, opaquely. The proxy never parses Thrift or SASL, so
//! authentication (PLAIN, LDAP, Kerberos) stays end to end.
//!
//! Choosing the upstream, per connection:
//! 1. wait (up to `hold-timeout`) for discovery to name a leader;
//! 2. connect to its Thrift address; on refusal or timeout, wait briefly for
//!    the leader to change (a new election), and if the view did not
//!    change, try it again; only if the view may be behind (the static
//!    probe's, or stale) also try the other known nodes: passives refuse
//!    Thrift, so one that accepts is the active one. A fresh latch is
//!    never second-guessed: a server that lost leadership keeps running;
//! 3. only when the hold time is over, close the client connection (a TCP
//!    proxy has no way to say why: the reason goes to the log).
//!
//! While a connection is open it is closed on both sides as soon as a view
//! names another leader (`thrift-on-failover = close`), so a JDBC client
//! fails at once and reconnects (through us, to the new leader) instead of
//! hanging on a server that no longer serves it. So does a fresh latch
//! naming no leader; the static probe's "no leader" closes nothing (one
//! missed probe, and the next round names the same node).

mod relay;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::discovery::{LeaderRx, LeaderView, Source};
use crate::metrics::{Direction, Listener, Metrics};
use crate::node::{LivyNode, NodeList};
use crate::proxy_protocol::ProxyProtocol;
use relay::Traffic;

/// The settings of the JDBC listener: configuration section `tcp`, built
/// by [`crate::config`].
#[derive(Clone, Debug)]
pub struct TcpSettings {
    /// The JDBC listener's address (`thrift-listen`); `None`: no listener.
    pub listen: Option<std::net::SocketAddr>,
    /// Its TLS files (`thrift-tls-*`), read by the listener.
    pub tls: Option<crate::tls::TlsSpec>,
    /// What it does with TLS (`thrift-tls-mode`, `thrift-upstream-*`).
    pub tls_mode: crate::tls::ThriftTlsMode,
    /// How long a connection waits for a reachable active server.
    pub hold_timeout: Duration,
    /// Timeout of one TCP connect to a Livy Thrift server.
    pub connect_timeout: Duration,
    /// Livy's Thrift port for nodes without an explicit Thrift address.
    pub thrift_port: u16,
    /// Close connections to the old leader when the leader changes.
    pub close_on_failover: bool,
    /// TCP_NODELAY on both sides.
    pub nodelay: bool,
    /// TCP keepalive idle time on both sides.
    pub keepalive: Option<Duration>,
    /// Close a connection idle (no bytes either way) this long.
    pub idle_timeout: Option<Duration>,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Whose PROXY protocol headers are believed, and for how long one is
    /// waited for: the client's address behind a TCP load balancer. The
    /// value at start; [`TcpProxy::update_settings`] replaces it.
    pub proxy_protocol: ProxyProtocol,
}

/// Why a JDBC connection could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    /// No leader became known within the hold time.
    #[error("no active Livy server is known (waited {0:?}){1}")]
    NoLeader(Duration, String),
    /// Neither the leader nor any other known node accepted a connection.
    #[error(
        "no Livy Thrift server accepted a connection within the hold time; last error from {node} ({addr}): {source}"
    )]
    Unreachable {
        /// The node tried last, as `id=url`.
        node: String,
        /// Its Thrift address.
        addr: String,
        /// The connect error.
        source: io::Error,
    },
}

/// The JDBC TCP proxy: one per `thrift-listen`.
#[derive(Clone)]
pub struct TcpProxy {
    leader: LeaderRx,
    nodes: NodeList,
    /// Swapped whole by a reload: the live keys (hold-timeout, PROXY
    /// protocol) apply to the connections accepted after it; the others
    /// keep their running values (config::RESTART_ONLY).
    settings: Arc<arc_swap::ArcSwap<TcpSettings>>,
    limit: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    access_log: crate::http_proxy::stack::AccessLogSwitch,
    /// TLS terminated on the listener (`thrift-tls-*`); Livy's Thrift
    /// port is then spoken to in plain TCP.
    tls: Option<Arc<crate::tls::TlsSource>>,
    /// TLS to Livy's Thrift port (`thrift-tls-mode = reencrypt`), renewed
    /// from its files: each connection takes the configuration in force.
    upstream_tls: Option<Arc<crate::tls::client::UpstreamTls>>,
    /// The serving threads connections are handed to (none: served on the
    /// runtime that accepted them).
    shards: Option<Arc<crate::shard::Shards>>,
}

impl TcpProxy {
    /// A proxy reading discovery's channel; `nodes` are the fallbacks tried
    /// when the leader refuses and the view may be behind (probed, or
    /// stale).
    pub fn new(settings: TcpSettings, nodes: impl Into<NodeList>, leader: LeaderRx) -> Self {
        TcpProxy {
            leader,
            nodes: nodes.into(),
            limit: Arc::new(Semaphore::new(settings.max_connections)),
            settings: Arc::new(arc_swap::ArcSwap::from_pointee(settings)),
            metrics: Arc::new(Metrics::new("default", false)),
            access_log: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            tls: None,
            upstream_tls: None,
            shards: None,
        }
    }

    /// Serves each accepted connection on one of `shards` (`shard`).
    pub fn with_shards(mut self, shards: Option<Arc<crate::shard::Shards>>) -> Self {
        self.shards = shards;
        self
    }

    /// Terminates TLS on the listener with `tls` (none: the bytes are
    /// relayed as they come, TLS from the client included: passthrough),
    /// and speaks TLS to Livy's Thrift port with `upstream` (reencrypt).
    pub fn with_tls(
        mut self,
        tls: Option<Arc<crate::tls::TlsSource>>,
        upstream: Option<Arc<crate::tls::client::UpstreamTls>>,
    ) -> Self {
        self.tls = tls;
        self.upstream_tls = upstream;
        self
    }

    /// Joins the proxy to the process's metrics and access-log switch.
    pub fn with_metrics(
        mut self,
        metrics: Arc<Metrics>,
        access_log: crate::http_proxy::stack::AccessLogSwitch,
    ) -> Self {
        self.metrics = metrics;
        self.access_log = access_log;
        self
    }

    /// Replaces the settings for the connections accepted from now on (a
    /// reload; open connections keep theirs).
    pub fn update_settings(&self, settings: TcpSettings) {
        self.settings.store(Arc::new(settings));
    }

    /// Accepts connections until `shutdown`, then closes the open ones and
    /// returns when all are gone.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) {
        self.serve_until(listener, shutdown.clone(), shutdown).await
    }

    /// [`TcpProxy::serve`] with the two steps of a drain apart: accepting
    /// stops on `stop_accepting`, the open streams are closed on
    /// `close_streams` (which the drain cancels after the HTTP requests in
    /// flight have finished).
    pub async fn serve_until(
        self,
        listener: TcpListener,
        stop_accepting: CancellationToken,
        close_streams: CancellationToken,
    ) {
        let tracker = TaskTracker::new();
        let shutdown = close_streams;
        loop {
            // A handshake permit (`max-tls-handshakes`) before accepting.
            let handshake = match &self.tls {
                Some(t) => match t.handshakes().permit(&stop_accepting).await {
                    Some(p) => Some(p),
                    None => break,
                },
                None => None,
            };
            let Some((client, peer)) =
                crate::listener::accept(&listener, &stop_accepting, "JDBC").await
            else {
                break;
            };
            let Ok(permit) = self.limit.clone().try_acquire_owned() else {
                tracing::warn!(%peer, limit = self.settings.load().max_connections, "JDBC connection limit reached (max-tcp-connections): closing the new connection");
                drop(client);
                continue;
            };
            let proxy = self.for_connection();
            let stop = shutdown.child_token();
            // On the least loaded serving thread, where it stays (`shard`).
            let (arrival, on) = match crate::shard::place(self.shards.as_deref(), client) {
                Ok(placed) => placed,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "cannot hand the connection to a worker: closed");
                    continue;
                }
            };
            let task = async move {
                match arrival.into_stream() {
                    Ok((client, _load)) => proxy.handle(client, peer, handshake, stop).await,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "cannot register the connection: closed")
                    }
                }
                drop(permit);
            };
            match on {
                Some(shard) => tracker.spawn_on(task, &shard),
                None => tracker.spawn(task),
            };
        }
        drop(listener);
        tracker.close();
        tracker.wait().await;
    }

    /// A copy for one connection, its settings the ones in force now and
    /// fixed for its life: a reload during the connection (its retries,
    /// its relay) does not mix old and new values.
    fn for_connection(&self) -> TcpProxy {
        TcpProxy {
            settings: Arc::new(arc_swap::ArcSwap::new(self.settings.load_full())),
            ..self.clone()
        }
    }

    async fn handle(
        &self,
        client: TcpStream,
        peer: SocketAddr,
        handshake: Option<tokio::sync::OwnedSemaphorePermit>,
        shutdown: CancellationToken,
    ) {
        let _open = self.metrics.connection(Listener::Jdbc);
        self.tune(&client);
        // Behind a load balancer, the client is whom its PROXY header
        // names; the header is consumed, the Thrift bytes after it are not.
        let proxy_protocol = self.settings.load().proxy_protocol.clone();
        let peer = tokio::select! {
            _ = shutdown.cancelled() => return,
            resolved = proxy_protocol.resolve_peer(&client, peer) => match resolved {
                Ok(client) => client,
                Err(e) => return e.log("JDBC", peer),
            },
        };
        // TLS on the listener: the handshake before Livy is chosen, so a
        // client that fails it never costs an upstream connection.
        // The verified client certificate, for the access log.
        let mut identity = None;
        let client = match (&self.tls, handshake) {
            (Some(tls), Some(handshake)) => {
                let done = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    h = tls.handshakes().accept(tls.acceptor(), client, handshake) => h,
                };
                match done {
                    Ok(s) => {
                        if tls.verifies_clients() && self.access_log.load(Ordering::Relaxed) {
                            identity = crate::tls::identity::of_connection(s.get_ref().1);
                        }
                        Client::Tls(Box::new(s))
                    }
                    Err(e) => {
                        tracing::debug!(%peer, listener = "jdbc", error = %e, "TLS handshake did not complete");
                        return;
                    }
                }
            }
            _ => Client::Plain(client),
        };
        let started = Instant::now();
        let (upstream, node, generation) = tokio::select! {
            _ = shutdown.cancelled() => return,
            connected = self.connect_upstream(started + self.settings.load().hold_timeout) => match connected {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "JDBC connection closed: no upstream");
                    return;
                }
            },
        };
        self.tune(&upstream);
        let upstream = match &self.upstream_tls {
            None => Upstream::Plain(upstream),
            Some(tls) => {
                let addr = node.thrift_addr(self.settings.load().thrift_port);
                let handshake = async {
                    let name = tls
                        .server_name(thrift_host(&addr))
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                    tokio::time::timeout(
                        self.settings.load().connect_timeout,
                        tls.connector().connect(name, upstream),
                    )
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                    })?
                };
                let done = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    h = handshake => h,
                };
                match done {
                    Ok(s) => Upstream::Tls(Box::new(s)),
                    Err(e) => {
                        tracing::warn!(%peer, node = %node, %addr, error = %e, "JDBC connection closed: TLS to Livy's Thrift port failed (thrift-tls-mode reencrypt)");
                        return;
                    }
                }
            }
        };
        tracing::debug!(%peer, node = %node, "JDBC connection forwarded");
        let relayed = self.metrics.jdbc_connection();
        let (end, up, down) = self
            .pipe(client, upstream, &node, generation, shutdown)
            .await;
        drop(relayed);
        if end == "leader_changed" {
            self.metrics.jdbc_closed_on_failover();
        }
        self.metrics.bytes(Listener::Jdbc, Direction::Received, up);
        self.metrics.bytes(Listener::Jdbc, Direction::Sent, down);
        tracing::debug!(%peer, node = %node, bytes_up = up, bytes_down = down, duration = ?started.elapsed(), end, "JDBC connection ended");
        if self.access_log.load(Ordering::Relaxed) {
            tracing::info!(
                target: "access",
                client = %peer,
                client_cert = identity.as_ref().map_or("-", |c| c.subject.as_str()),
                client_san = identity.as_ref().map_or_else(|| "-".to_string(), |c| c.sans_text()).as_str(),
                upstream = %node.id,
                duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                bytes_in = up,
                bytes_out = down,
                end,
                "jdbc"
            );
        }
    }

    fn tune(&self, stream: &TcpStream) {
        // (Called on the client socket before any TLS.)
        let _ = stream.set_nodelay(self.settings.load().nodelay);
        if let Some(idle) = self.settings.load().keepalive {
            let sock = socket2::SockRef::from(stream);
            let _ = sock.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(idle));
        }
    }

    /// Finds an accepting Thrift server: the leader, the next leader, or,
    /// when the view does not move and may be behind
    /// ([`may_look_elsewhere`]), any known node that accepts.
    /// Also returns the generation of the view the choice was made under:
    /// a fallback node is not that view's leader, so "the leader moved"
    /// means a newer view naming another node.
    async fn connect_upstream(
        &self,
        deadline: Instant,
    ) -> Result<(TcpStream, LivyNode, u64), TcpError> {
        let mut rx = self.leader.clone();
        let mut backoff = Duration::from_millis(50);
        let mut last: Option<(LivyNode, String, io::Error)> = None;
        loop {
            let wait = rx.wait_for(|v: &LeaderView| v.leader.is_some());
            let chosen = match tokio::time::timeout_at(deadline.into(), wait).await {
                Ok(Ok(view)) => view
                    .leader
                    .as_ref()
                    .map(|l| (LivyNode::clone(&l.node), view.generation)),
                _ => None,
            };
            let out_of_time = Instant::now() >= deadline && last.is_some();
            let Some((leader, generation)) = chosen.filter(|_| !out_of_time) else {
                return Err(match last {
                    Some((node, addr, source)) => TcpError::Unreachable {
                        node: node.to_string(),
                        addr,
                        source,
                    },
                    None => TcpError::NoLeader(
                        self.settings.load().hold_timeout,
                        rx.borrow()
                            .problem
                            .as_ref()
                            .map(|p| format!(": {p}"))
                            .unwrap_or_default(),
                    ),
                });
            };
            let addr = leader.thrift_addr(self.settings.load().thrift_port);
            match self.try_connect(&addr).await {
                Ok(s) => return Ok((s, leader, generation)),
                Err(e) => {
                    tracing::debug!(node = %leader, %addr, error = %e, "Thrift connect to the leader failed");
                    last = Some((leader.clone(), addr, e));
                }
            }
            if Instant::now() >= deadline {
                continue; // reports `last` at the top
            }
            // A new election may be under way: give it a moment. A view
            // newer than the one this attempt used counts, even if it was
            // published while the connect was failing.
            let until = (Instant::now() + backoff).min(deadline);
            let newer = rx.wait_for(|v: &LeaderView| v.generation != generation);
            let changed = matches!(
                tokio::time::timeout_at(until.into(), newer).await,
                Ok(Ok(_))
            );
            backoff = (backoff * 2).min(Duration::from_millis(500));
            if changed || !may_look_elsewhere(&rx.borrow()) {
                continue;
            }
            // The view did not move and may be behind: passives refuse
            // Thrift, so another known node that accepts is the active one.
            if let Some((stream, node)) = self.first_accepting_other(&leader).await {
                return Ok((stream, node, generation));
            }
        }
    }

    /// The other known nodes, each tried at once; the first to accept.
    async fn first_accepting_other(&self, leader: &LivyNode) -> Option<(TcpStream, LivyNode)> {
        let nodes = self.nodes.snapshot();
        let attempts = nodes.iter().filter(|n| n.origin != leader.origin).map(|n| {
            let addr = n.thrift_addr(self.settings.load().thrift_port);
            let node = n.clone();
            Box::pin(async move {
                match self.try_connect(&addr).await {
                    Ok(s) => Ok((s, node)),
                    Err(e) => Err(e),
                }
            })
        });
        let attempts: Vec<_> = attempts.collect();
        if attempts.is_empty() {
            return None;
        }
        match futures_util::future::select_ok(attempts).await {
            Ok(((stream, node), _)) => {
                tracing::info!(node = %node, "leader's Thrift port refused; another known node accepted");
                Some((stream, node))
            }
            Err(_) => None,
        }
    }

    async fn try_connect(&self, addr: &str) -> io::Result<TcpStream> {
        match tokio::time::timeout(
            self.settings.load().connect_timeout,
            TcpStream::connect(addr),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        }
    }

    /// Relays both ways until both sides are done, a view names another
    /// leader (with `close`; or a fresh latch none, not the probe), the
    /// connection idles out, or shutdown. Returns why it ended
    /// and the bytes sent up and down.
    async fn pipe(
        &self,
        client: Client,
        upstream: Upstream,
        node: &LivyNode,
        generation: u64,
        shutdown: CancellationToken,
    ) -> (&'static str, u64, u64) {
        let traffic = Traffic::new();
        let mut rx = self.leader.clone();
        let close_on_failover = self.settings.load().close_on_failover;
        let leader_moved = async {
            if !close_on_failover {
                return std::future::pending().await;
            }
            // A view naming another server, or a fresh latch naming none
            // (ZooKeeper is the authority: this server no longer leads).
            // The static probe's "no leader" is no news about this one: it
            // says so when one probe misses, and names the same node at
            // the next round.
            let _ = rx
                .wait_for(|v: &LeaderView| {
                    v.generation != generation
                        && match &v.leader {
                            Some(l) => l.node.origin != node.origin,
                            None => v.source == Source::ZooKeeper && !v.stale,
                        }
                })
                .await;
        };
        let idle = idle_watch(self.settings.load().idle_timeout, &traffic);
        let end = tokio::select! {
            r = async {
                match (client, upstream) {
                    (Client::Plain(c), Upstream::Plain(u)) => relay::relay(&c, &u, &traffic).await,
                    (Client::Tls(c), Upstream::Plain(u)) => relay::relay_io(c, u, &traffic).await,
                    (Client::Plain(c), Upstream::Tls(u)) => relay::relay_io(c, u, &traffic).await,
                    (Client::Tls(c), Upstream::Tls(u)) => relay::relay_io(c, u, &traffic).await,
                }
            } => match r {
                Ok(()) => "closed",
                Err(_) => "error",
            },
            _ = leader_moved => {
                tracing::info!(node = %node, "leader changed: closing JDBC connection to the old leader");
                "leader_changed"
            }
            _ = idle => "idle_timeout",
            _ = shutdown.cancelled() => "shutdown",
        };
        (
            end,
            traffic.up.load(Ordering::Relaxed),
            traffic.down.load(Ordering::Relaxed),
        )
    }
}

/// Whether a refusing leader may be passed over for another known node
/// that accepts. Only when the view may be behind the truth: the static
/// probe (a takeover between two rounds) or a stale view (ZooKeeper out of
/// reach, the last leader kept). A fresh latch names the only active
/// server, and a Livy server that lost leadership keeps running, its
/// Thrift port perhaps still accepting: the latch leader is then waited
/// for (a new leader restarts its Thrift server), never passed over.
fn may_look_elsewhere(view: &LeaderView) -> bool {
    view.source == Source::Probe || view.stale
}

/// A JDBC client connection: the socket, or TLS terminated on it.
enum Client {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// The connection to Livy's Thrift port: plain, or TLS (reencrypt).
enum Upstream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// The host of a Thrift `host:port` address, the name Livy's Thrift
/// certificate must carry unless one is configured (an IP address as such;
/// IPv6 without brackets).
fn thrift_host(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Resolves when no byte has moved for `timeout` (never when `None`).
async fn idle_watch(timeout: Option<Duration>, traffic: &Traffic) {
    let Some(timeout) = timeout else {
        return std::future::pending().await;
    };
    loop {
        let quiet_until = traffic.last_active() + timeout;
        if Instant::now() >= quiet_until {
            return;
        }
        tokio::time::sleep_until(quiet_until.into()).await;
    }
}
