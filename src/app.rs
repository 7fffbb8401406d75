//! The whole proxy, in-process: discovery, the HTTP, JDBC and admin
//! listeners, the drain and reloads, in the mini-redis
//! `server::run(listener, shutdown)` shape, so the binary is flag parsing
//! and exit codes and tests or embedders can run exactly what it runs.
//!
//! The drain, in order (docs/operations.md has the timeline):
//! 1. `/readyz` answers 503 at once;
//! 2. the listeners keep accepting for `shutdown-delay`, so a load balancer
//!    that polls readiness deregisters the proxy before it stops serving;
//! 3. the HTTP and JDBC listeners stop accepting; HTTP requests in flight
//!    (held ones and retries included: discovery still runs) get
//!    `shutdown-grace-period` to finish, then are cut;
//! 4. JDBC streams are closed (they have no request boundary to wait for);
//! 5. discovery, then the admin listener, stop last.
//!
//! [`Control::force`] (a second signal) cuts whatever step is running.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::admin::{AdminState, Draining};
use crate::config::{Config, ConfigError};
use crate::discovery::{self, DiscoveryConfig};
use crate::http_proxy::{HttpProxy, HttpSettings, Wiring};
use crate::metrics::Metrics;
use crate::node::NodeList;
use crate::tcp_proxy::{TcpProxy, TcpSettings};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A listener could not be bound; names the key.
    #[error("binding the {what} listener on {addr} (key `{key}`): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The configuration key of its address.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The listening sockets, bound before [`run`] so that a test can bind
/// port 0 and learn the port, and so that a bind error is a start-up error.
pub struct Listeners {
    /// The HTTP listener.
    pub http: TcpListener,
    /// The JDBC listener, if configured.
    pub jdbc: Option<TcpListener>,
    /// The admin listener, unless `off`.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds every listener `config` names.
    pub async fn bind(config: &Config) -> Result<Listeners, AppError> {
        async fn bind(
            what: &'static str,
            key: &'static str,
            addr: SocketAddr,
        ) -> Result<TcpListener, AppError> {
            TcpListener::bind(addr)
                .await
                .map_err(|source| AppError::Bind {
                    what,
                    key,
                    addr,
                    source,
                })
        }
        let http = bind("HTTP", "listen", config.listen).await?;
        let jdbc = match config.thrift_listen {
            Some(a) => Some(bind("JDBC", "thrift-listen", a).await?),
            None => None,
        };
        let admin = match config.admin_listen {
            Some(a) => Some(bind("admin", "admin-listen", a).await?),
            None => None,
        };
        Ok(Listeners { http, jdbc, admin })
    }
}

/// How the outside steers a running proxy (the binary maps signals here).
#[derive(Clone, Default)]
pub struct Control {
    /// Cancelled to begin the drain (SIGTERM, SIGINT).
    pub drain: CancellationToken,
    /// Cancelled to end at once, whatever is in flight (a second signal).
    pub force: CancellationToken,
    /// Notified to reload the configuration (SIGHUP).
    pub reload: Arc<Notify>,
}

/// Loads the configuration again.
pub type LoadConfig = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;
/// Sets the log level from a `tracing` filter directive.
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Re-reads the configuration (the same flags, the file again) and applies
/// the log level: what a reload needs from the binary.
pub struct Reloader {
    /// Loads the configuration again.
    pub load: LoadConfig,
    /// Sets the log level (a `tracing` filter directive).
    pub set_log_level: SetLogLevel,
}

/// How the proxy ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Every request in flight finished within the grace period.
    Clean,
    /// The grace period (or a second signal) cut requests in flight.
    Cut,
}

/// Runs the proxy until the drain `control` starts has finished.
pub async fn run(
    config: Config,
    listeners: Listeners,
    control: Control,
    reloader: Option<Reloader>,
) -> Ended {
    let metrics = Arc::new(Metrics::new("default", config.zookeeper.is_some()));
    let discovery_stop = CancellationToken::new();
    // One node list for discovery and both proxies: a reload replaces it.
    let nodes = NodeList::from(config.nodes.clone());
    let found = discovery::start(
        DiscoveryConfig {
            nodes: nodes.clone(),
            ..config.discovery()
        },
        discovery_stop.clone(),
    );
    let draining = Arc::new(Draining::default());
    let access_log = Arc::new(std::sync::atomic::AtomicBool::new(config.access_log));

    let http_stop = CancellationToken::new();
    let proxy = HttpProxy::wired(
        HttpSettings::from(&config),
        nodes.clone(),
        found.leader.clone(),
        Wiring {
            hints: found.hints.clone(),
            metrics: metrics.clone(),
            access_log: access_log.clone(),
            upstream_tls: config.upstream_tls.clone(),
        },
    );
    tracing::info!(
        listen = %listeners.http.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        zookeeper = config.zookeeper.as_deref().unwrap_or("(none: probing the node list)"),
        leader_path = %config.leader_path,
        nodes = config.nodes.len(),
        "livy-proxy {} starting",
        env!("CARGO_PKG_VERSION")
    );
    let mut http = tokio::spawn(proxy.clone().serve(listeners.http, http_stop.clone()));

    let jdbc_stop = CancellationToken::new();
    // Kept for reloads (PROXY protocol keys are live on this listener too).
    let mut jdbc_proxy = None;
    let jdbc = listeners.jdbc.map(|l| {
        tracing::info!(listen = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), thrift_port = config.thrift_port, "JDBC listener ready");
        let tcp = TcpProxy::new(
            TcpSettings::from(&config),
            nodes.clone(),
            found.leader.clone(),
        ).with_metrics(metrics.clone(), access_log.clone());
        jdbc_proxy = Some(tcp.clone());
        tokio::spawn(tcp.serve_until(l, http_stop.clone(), jdbc_stop.clone()))
    });

    let admin_stop = CancellationToken::new();
    let admin = listeners.admin.map(|l| {
        tracing::info!(listen = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "admin listener ready (/healthz /readyz /status /metrics)");
        let state = Arc::new(AdminState {
            leader: found.leader.clone(),
            discovery: found.status.clone(),
            metrics: metrics.clone(),
            draining: draining.clone(),
            ready_requires_fresh: config.ready_requires_fresh,
            service: "default".to_string(),
        });
        tokio::spawn(state.serve(l, admin_stop.clone()))
    });

    // Serving: reloads until the drain begins.
    let mut current = config;
    loop {
        tokio::select! {
            _ = control.drain.cancelled() => break,
            _ = control.reload.notified() => {
                if let Some(r) = &reloader {
                    current = reload(current, r, &proxy, &nodes, &access_log, &metrics);
                    if let Some(tcp) = &jdbc_proxy {
                        tcp.update_proxy_protocol(current.proxy_protocol.clone());
                    }
                }
            }
        }
    }

    // The drain.
    draining.start();
    tracing::info!(
        shutdown_delay = ?current.shutdown_delay,
        grace = ?current.shutdown_grace_period,
        "draining: readiness is 503; still accepting for shutdown-delay"
    );
    let mut ended = Ended::Clean;
    if !wait_or_forced(current.shutdown_delay, &control.force).await {
        ended = Ended::Cut;
    }
    tracing::info!("draining: no new connections; finishing requests in flight");
    http_stop.cancel();
    tokio::select! {
        _ = &mut http => {}
        _ = tokio::time::sleep(current.shutdown_grace_period) => {
            tracing::warn!(grace = ?current.shutdown_grace_period, "shutdown-grace-period over: cutting the requests still in flight");
            http.abort();
            ended = Ended::Cut;
        }
        _ = control.force.cancelled() => {
            tracing::warn!("second signal: cutting the requests still in flight");
            http.abort();
            ended = Ended::Cut;
        }
    }
    jdbc_stop.cancel();
    if let Some(jdbc) = jdbc {
        tokio::select! {
            _ = jdbc => {}
            _ = control.force.cancelled() => ended = Ended::Cut,
        }
    }
    discovery_stop.cancel();
    admin_stop.cancel();
    if let Some(admin) = admin {
        let _ = tokio::time::timeout(Duration::from_secs(1), admin).await;
    }
    tracing::info!(clean = ended == Ended::Clean, "stopped");
    ended
}

/// Sleeps `delay`; false if `force` came first.
async fn wait_or_forced(delay: Duration, force: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = force.cancelled() => false,
    }
}

/// Applies a reload: the live keys from the new file, the restart-only ones
/// kept (and named in one WARN line when they changed); a bad file keeps
/// everything. Returns the configuration now in force.
fn reload(
    current: Config,
    reloader: &Reloader,
    proxy: &HttpProxy,
    nodes: &NodeList,
    access_log: &std::sync::atomic::AtomicBool,
    metrics: &Metrics,
) -> Config {
    let new = match (reloader.load)() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "reload failed: keeping the running configuration");
            metrics.config_reload(false);
            return current;
        }
    };
    if let Err(e) = (reloader.set_log_level)(&new.log_level) {
        tracing::warn!(error = %e, "reload failed: keeping the running configuration");
        metrics.config_reload(false);
        return current;
    }
    let ignored = restart_only_changes(&current, &new);
    if !ignored.is_empty() {
        tracing::warn!(keys = %ignored.join(", "), "reload: these keys only change on a restart; their running values are kept");
    }
    let mut applied = keep_restart_only(&current, new);
    // The listener keeps the certificate it started with (restart-only).
    applied.tls = current.tls.clone();
    applied.upstream_tls = current.upstream_tls.clone();
    proxy.update_settings(HttpSettings::from(&applied));
    nodes.store(applied.nodes.clone());
    access_log.store(applied.access_log, Ordering::Relaxed);
    metrics.config_reload(true);
    tracing::info!("configuration reloaded");
    applied
}

/// Compares the restart-only keys; their names, as in the file, where they
/// differ.
macro_rules! restart_only {
    ($($field:ident => $key:literal),* $(,)?) => {
        /// The restart-only keys that differ between `a` and `b`.
        pub fn restart_only_changes(a: &Config, b: &Config) -> Vec<&'static str> {
            let mut out = Vec::new();
            $(if a.$field != b.$field { out.push($key); })*
            out
        }

        /// `new` with every restart-only key set back to `running`'s.
        fn keep_restart_only(running: &Config, mut new: Config) -> Config {
            $(new.$field = running.$field.clone();)*
            new
        }

        /// Every restart-only key, for the docs test.
        pub const RESTART_ONLY: &[&str] = &[$($key),*];
    };
}

restart_only! {
    listen => "listen",
    thrift_listen => "thrift-listen",
    admin_listen => "admin-listen",
    zookeeper => "zookeeper",
    leader_path => "leader-path",
    defaults => "default-scheme/default-port",
    zk_session_timeout => "zk-session-timeout",
    probe_interval => "probe-interval",
    probe_timeout => "probe-timeout",
    probe_path => "probe-path",
    connect_timeout => "connect-timeout",
    client_header_timeout => "client-header-timeout",
    client_body_timeout => "client-body-timeout",
    max_replay_body => "max-replay-body",
    max_buffered_bodies => "max-buffered-bodies",
    max_streaming_uploads => "max-streaming-uploads",
    max_upstream_connections => "max-upstream-connections",
    max_client_connections => "max-client-connections",
    max_requests_in_flight => "max-requests-in-flight",
    h2_max_concurrent_streams => "h2-max-concurrent-streams",
    h2_max_header_list_size => "h2-max-header-list-size",
    log_json => "log-format",
    worker_threads => "worker-threads",
    thrift_port => "thrift-port",
    thrift_close_on_failover => "thrift-on-failover",
    tcp_nodelay => "tcp-nodelay",
    tcp_keepalive => "tcp-keepalive",
    tcp_idle_timeout => "tcp-idle-timeout",
    max_tcp_connections => "max-tcp-connections",
    ready_requires_fresh => "ready-requires-fresh",
    tls_cert => "tls-cert",
    tls_key => "tls-key",
    upstream_ca => "upstream-ca",
    upstream_client_cert => "upstream-client-cert",
    upstream_client_key => "upstream-client-key",
    upstream_server_name => "upstream-server-name",
}
