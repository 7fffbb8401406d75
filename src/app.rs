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
use crate::config::{self, Config, ConfigError};
use crate::discovery;
use crate::http_proxy::{HttpProxy, Wiring};
use crate::metrics::{Listener, Metrics};
use crate::node::NodeList;
use crate::tcp_proxy::TcpProxy;
use crate::tls::TlsSource;

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
    /// A listener's certificate, key or client CA did not load; names the
    /// key (the binary reports it as a configuration error).
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsFileError),
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
    /// The TLS HTTP listener beside the plain one (`tls-listen`).
    pub https: Option<TcpListener>,
    /// The listeners' TLS configurations, read from their files.
    pub tls: TlsSources,
}

/// Each listener's TLS, when it has a certificate.
#[derive(Clone, Debug, Default)]
pub struct TlsSources {
    /// The HTTP listener's (`tls-*`).
    pub http: Option<Arc<TlsSource>>,
    /// The admin listener's (`admin-tls-*`).
    pub admin: Option<Arc<TlsSource>>,
    /// The JDBC listener's (`thrift-tls-*`).
    pub jdbc: Option<Arc<TlsSource>>,
    /// TLS to Livy's Thrift port (`thrift-tls-mode = reencrypt`).
    pub jdbc_upstream: Option<Arc<crate::tls::client::UpstreamTls>>,
}

impl TlsSources {
    /// Reads every listener's TLS files; one handshake limit for the
    /// traffic listeners, and one of its own for the admin listener, so
    /// that handshakes flooding the traffic ports never keep the kubelet's
    /// probes or Prometheus out.
    pub fn load(config: &Config) -> Result<TlsSources, crate::tls::TlsFileError> {
        let limit = || {
            crate::tls::Handshakes::new(
                config.runtime.max_tls_handshakes,
                config.runtime.tls_handshake_timeout,
            )
        };
        let (traffic, admin) = (limit(), limit());
        let one = |spec: &Option<crate::tls::TlsSpec>, listener, alpn, handshakes: &Arc<_>| {
            spec.clone()
                .map(|s| TlsSource::load(s, listener, alpn, Arc::clone(handshakes)))
                .transpose()
        };
        Ok(TlsSources {
            http: one(&config.http.tls, Listener::Http, crate::tls::ALPN, &traffic)?,
            admin: one(
                &config.admin.tls,
                Listener::Admin,
                crate::tls::ALPN_ADMIN,
                &admin,
            )?,
            jdbc: one(
                &config.tcp.tls,
                Listener::Jdbc,
                crate::tls::ALPN_NONE,
                &traffic,
            )?,
            jdbc_upstream: match &config.tcp.tls_mode {
                crate::tls::ThriftTlsMode::Reencrypt { upstream } => {
                    Some(Arc::new(crate::tls::client::upstream_tls(upstream)?))
                }
                _ => None,
            },
        })
    }

    fn all(&self) -> Vec<Arc<TlsSource>> {
        [&self.http, &self.admin, &self.jdbc]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// The listeners' and the TLS clients' to Livy (`upstream`), for the
    /// file watcher.
    fn renewable(
        &self,
        upstream: &Option<Arc<crate::tls::client::UpstreamTls>>,
    ) -> Vec<Arc<dyn crate::tls::source::Renewable>> {
        let mut out: Vec<Arc<dyn crate::tls::source::Renewable>> = Vec::new();
        for s in self.all() {
            out.push(s);
        }
        for c in [upstream, &self.jdbc_upstream].into_iter().flatten() {
            out.push(c.clone());
        }
        out
    }
}

impl Listeners {
    /// Binds every listener `config` names.
    pub fn bind(config: &Config) -> Result<Listeners, AppError> {
        fn bind(
            what: &'static str,
            key: &'static str,
            addr: SocketAddr,
        ) -> Result<TcpListener, AppError> {
            crate::listener::bind(addr).map_err(|source| AppError::Bind {
                what,
                key,
                addr,
                source,
            })
        }
        let tls = TlsSources::load(config)?;
        let http = bind("HTTP", "listen", config.http.listen)?;
        let https = config
            .http
            .tls_listen
            .map(|a| bind("HTTPS", "tls-listen", a))
            .transpose()?;
        let jdbc = config
            .tcp
            .listen
            .map(|a| bind("JDBC", "thrift-listen", a))
            .transpose()?;
        let admin = config
            .admin
            .listen
            .map(|a| bind("admin", "admin-listen", a))
            .transpose()?;
        Ok(Listeners {
            http,
            jdbc,
            admin,
            https,
            tls,
        })
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
    let metrics = Arc::new(Metrics::new(
        "default",
        config.discovery.zookeeper.is_some(),
    ));
    let tls = listeners.tls.clone();
    for source in tls.all() {
        source.attach(metrics.clone());
    }
    // The client TLS the proxy and the probes share (and the JDBC
    // listener's to Livy's Thrift port), renewed like the listeners'.
    let upstream_tls = config.discovery.upstream_tls.clone();
    for client in [&upstream_tls, &tls.jdbc_upstream].into_iter().flatten() {
        client.attach(metrics.clone());
    }
    // Renewed certificates are picked up from disk; SIGHUP reloads too.
    let tls_stop = CancellationToken::new();
    crate::tls::source::watch(tls.renewable(&upstream_tls), tls_stop.clone());
    let discovery_stop = CancellationToken::new();
    // One node list for discovery and both proxies: a reload replaces it.
    let nodes = config.discovery.nodes.clone();
    let found = discovery::start(config.discovery.clone(), discovery_stop.clone());
    let draining = Arc::new(Draining::default());
    let access_log = Arc::new(std::sync::atomic::AtomicBool::new(config.log.access_log));

    // The serving threads (`worker-threads`): with one, everything runs on
    // this runtime, as a single event loop.
    let shards = match serving_threads(config.runtime.worker_threads) {
        1 => None,
        n => match crate::shard::Shards::start(n) {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                tracing::warn!(error = %e, threads = n, "cannot start the serving threads: serving on one");
                None
            }
        },
    };
    let http_stop = CancellationToken::new();
    let proxy = HttpProxy::wired(
        config.http.clone(),
        nodes.clone(),
        found.leader.clone(),
        Wiring {
            hints: found.hints.clone(),
            metrics: metrics.clone(),
            access_log: access_log.clone(),
            upstream_tls: config.discovery.upstream_tls.clone(),
            shards: shards.clone(),
        },
    );
    tracing::info!(
        listen = %listeners.http.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        zookeeper = config.discovery.zookeeper.as_deref().unwrap_or("(none: probing the node list)"),
        leader_path = %config.discovery.leader_path,
        nodes = nodes.load().len(),
        "livy-proxy {} starting",
        env!("CARGO_PKG_VERSION")
    );
    // With `tls-listen`, `listen` stays plain and TLS is served there.
    let (plain_tls, https) = match listeners.https {
        Some(l) => (None, Some((l, tls.http.clone()))),
        None => (tls.http.clone(), None),
    };
    let plain = proxy
        .clone()
        .serve_tls(listeners.http, plain_tls, http_stop.clone());
    let https = https.map(|(l, t)| proxy.clone().serve_tls(l, t, http_stop.clone()));
    // One task for both: the drain waits for (or cuts) them together.
    let mut http = tokio::spawn(async move {
        match https {
            Some(https) => {
                tokio::join!(plain, https);
            }
            None => plain.await,
        }
    });

    let jdbc_stop = CancellationToken::new();
    // Kept for reloads (PROXY protocol keys are live on this listener too).
    let mut jdbc_proxy = None;
    let jdbc = listeners.jdbc.map(|l| {
        tracing::info!(listen = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), thrift_port = config.tcp.thrift_port, "JDBC listener ready");
        let tcp = TcpProxy::new(
            config.tcp.clone(),
            nodes.clone(),
            found.leader.clone(),
        ).with_metrics(metrics.clone(), access_log.clone()).with_tls(tls.jdbc.clone(), tls.jdbc_upstream.clone()).with_shards(shards.clone());
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
            ready_requires_fresh: config.admin.ready_requires_fresh,
            service: "default".to_string(),
        });
        tokio::spawn(state.serve_tls(l, tls.admin.clone(), admin_stop.clone()))
    });

    // Serving: reloads until the drain begins.
    let mut current = config;
    loop {
        tokio::select! {
            _ = control.drain.cancelled() => break,
            _ = control.reload.notified() => {
                if let Some(r) = &reloader {
                    for source in tls.all() {
                        source.reload("SIGHUP");
                    }
                    for client in [&upstream_tls, &tls.jdbc_upstream].into_iter().flatten() {
                        client.reload("SIGHUP");
                    }
                    current = reload(current, r, &proxy, &nodes, &access_log, &metrics);
                    if let Some(tcp) = &jdbc_proxy {
                        tcp.update_settings(current.tcp.clone());
                    }
                }
            }
        }
    }

    // The drain.
    draining.start();
    tracing::info!(
        shutdown_delay = ?current.runtime.shutdown_delay,
        grace = ?current.runtime.shutdown_grace_period,
        "draining: readiness is 503; still accepting for shutdown-delay"
    );
    let mut ended = Ended::Clean;
    if !wait_or_forced(current.runtime.shutdown_delay, &control.force).await {
        ended = Ended::Cut;
    }
    tracing::info!("draining: no new connections; finishing requests in flight");
    http_stop.cancel();
    tokio::select! {
        _ = &mut http => {}
        _ = tokio::time::sleep(current.runtime.shutdown_grace_period) => {
            tracing::warn!(grace = ?current.runtime.shutdown_grace_period, "shutdown-grace-period over: cutting the requests still in flight");
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
    tls_stop.cancel();
    if let Some(admin) = admin {
        let _ = tokio::time::timeout(Duration::from_secs(1), admin).await;
    }
    if let Some(shards) = &shards {
        shards.stop().await;
    }
    tracing::info!(clean = ended == Ended::Clean, "stopped");
    ended
}

/// How many threads serve connections: `worker-threads`, by default one
/// per CPU this process may use.
pub fn serving_threads(configured: Option<usize>) -> usize {
    configured
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
        .max(1)
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
    let ignored = config::restart_only_changes(&current.keys, &new.keys);
    let applied = if ignored.is_empty() {
        new
    } else {
        tracing::warn!(keys = %ignored.join(", "), "reload: these keys only change on a restart; their running values are kept");
        // The new keys with the running restart-only values: checked once
        // already (each half was), so this builds.
        match Config::from_keys(&config::keep_restart_only(&current.keys, &new.keys)) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "reload failed: keeping the running configuration");
                metrics.config_reload(false);
                return current;
            }
        }
    };
    // Last of the checks: a reload that fails leaves the level as it was.
    if let Err(e) = (reloader.set_log_level)(&applied.log.level) {
        tracing::warn!(error = %e, "reload failed: keeping the running configuration");
        metrics.config_reload(false);
        return current;
    }
    proxy.update_settings(applied.http.clone());
    nodes.store(applied.discovery.nodes.snapshot());
    access_log.store(applied.log.access_log, Ordering::Relaxed);
    metrics.config_reload(true);
    tracing::info!("configuration reloaded");
    applied
}
