//! Configuration: a TOML file, every key also a command-line flag and an
//! environment variable (`LIVY_PROXY_<KEY>`), flags and env winning over the file.
//!
//! Keys are spelled the same everywhere (`hold-timeout` in TOML is
//! `--hold-timeout` and `LIVY_PROXY_HOLD_TIMEOUT`), so docs/configuration.md
//! documents each once. Any bad file, key or value becomes a
//! [`ConfigError`] naming the key; the binary prints it on one line and exits 2.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use clap::Parser;
use http::HeaderName;
use serde::Deserialize;

use crate::discovery::DiscoveryConfig;
use crate::node::{AddressDefaults, LivyNode, Origin, Scheme};
use crate::proxy_protocol::{ProxyProtocol, TrustedNetworks};

/// A configuration problem, always naming the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config file {path}: {source}")]
    Read {
        /// The path given to `--config`.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// A key has a bad value, is unknown, or the file is not valid TOML.
    #[error("{origin}key `{key}`: {problem}")]
    Invalid {
        /// Where the value came from (`config file F, ` or empty for flags).
        origin: String,
        /// The key, spelled as in TOML and as the flag without `--`.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
}

fn invalid(key: &str, problem: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        origin: String::new(),
        key: key.to_string(),
        problem: problem.to_string(),
    }
}

/// Command-line flags; each also reads `LIVY_PROXY_<FLAG>` from the environment.
#[derive(Clone, Debug, Default, Parser)]
#[command(
    name = "livy-proxy",
    version,
    about = "Makes an Apache Livy HA set look like one stable endpoint: follows the \
             active server in ZooKeeper and forwards HTTP to it.",
    long_about = None
)]
pub struct Cli {
    /// TOML file with any of the keys below (flags and env override it).
    #[arg(long, env = "LIVY_PROXY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address the HTTP listener binds [default: 0.0.0.0:8998].
    #[arg(long, env = "LIVY_PROXY_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// ZooKeeper ensemble as Livy gives it: host:port,host:port[/chroot].
    /// Without it, the --node list is probed instead.
    #[arg(long, env = "LIVY_PROXY_ZOOKEEPER", value_name = "CONNECT")]
    pub zookeeper: Option<String>,

    /// Path of the Curator LeaderLatch the Livy servers join
    /// (Livy: /<livy.server.ha.key-prefix>/leader) [default: /livy_ha/leader].
    #[arg(long, env = "LIVY_PROXY_LEADER_PATH", value_name = "PATH")]
    pub leader_path: Option<String>,

    /// A known Livy server, [ID=]URL, repeatable: ID is its participant id in
    /// the latch (Livy's server-ids entry, default: the host name). The list
    /// maps ids to addresses, is probed without ZooKeeper, and is the only
    /// set of hosts a redirect is followed to. Env: comma-separated.
    #[arg(
        long = "node",
        env = "LIVY_PROXY_NODE",
        value_name = "[ID=]URL",
        value_delimiter = ','
    )]
    pub node: Vec<String>,

    /// How long a request waits for an active server before 503 [default: 15s].
    #[arg(long, env = "LIVY_PROXY_HOLD_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub hold_timeout: Option<Duration>,

    /// ZooKeeper session timeout the proxy asks for [default: 10s].
    #[arg(long, env = "LIVY_PROXY_ZK_SESSION_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub zk_session_timeout: Option<Duration>,

    /// How often the static node list is probed [default: 2s].
    #[arg(long, env = "LIVY_PROXY_PROBE_INTERVAL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub probe_interval: Option<Duration>,

    /// How long one probe may take [default: 1s].
    #[arg(long, env = "LIVY_PROXY_PROBE_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub probe_timeout: Option<Duration>,

    /// GET used to probe a server without /ha-status: 307 = passive, 2xx = active [default: /version].
    #[arg(long, env = "LIVY_PROXY_PROBE_PATH", value_name = "PATH")]
    pub probe_path: Option<String>,

    /// Timeout for connecting to a Livy server [default: 5s].
    #[arg(long, env = "LIVY_PROXY_CONNECT_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub connect_timeout: Option<Duration>,

    /// How long Livy may take to answer a request (session creation and
    /// large uploads are slow) [default: 600s].
    #[arg(long, env = "LIVY_PROXY_UPSTREAM_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub upstream_timeout: Option<Duration>,

    /// How long a client may take to send a request's headers, counted from
    /// the end of its previous response on a kept-alive connection; then the
    /// connection is closed [default: 30s].
    #[arg(long, env = "LIVY_PROXY_CLIENT_HEADER_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub client_header_timeout: Option<Duration>,

    /// Largest request body kept for replay after a stale 307 [default: 1MiB].
    #[arg(long, env = "LIVY_PROXY_MAX_REPLAY_BODY", value_name = "SIZE")]
    pub max_replay_body: Option<ByteSize>,

    /// Longest silence allowed between two pieces of a request body; then
    /// the client gets a 408 [default: 60s].
    #[arg(long, env = "LIVY_PROXY_CLIENT_BODY_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub client_body_timeout: Option<Duration>,

    /// Memory all request bodies held for replay may take together; past it,
    /// bodies are streamed instead [default: 64MiB].
    #[arg(long, env = "LIVY_PROXY_MAX_BUFFERED_BODIES", value_name = "SIZE")]
    pub max_buffered_bodies: Option<ByteSize>,

    /// Most requests streaming their body to Livy at once, out of
    /// max-upstream-connections [default: a quarter of it].
    #[arg(long, env = "LIVY_PROXY_MAX_STREAMING_UPLOADS", value_name = "N")]
    pub max_streaming_uploads: Option<usize>,

    /// Most requests in flight at once on one h2c client connection [default: 100].
    #[arg(long, env = "LIVY_PROXY_H2_MAX_CONCURRENT_STREAMS", value_name = "N")]
    pub h2_max_concurrent_streams: Option<u32>,

    /// Largest header list an h2c client may send with one request [default: 64KiB].
    #[arg(long, env = "LIVY_PROXY_H2_MAX_HEADER_LIST_SIZE", value_name = "SIZE")]
    pub h2_max_header_list_size: Option<ByteSize>,

    /// Append to an incoming X-Forwarded-For chain instead of replacing it
    /// (only behind a trusted load balancer) [default: false].
    #[arg(long, env = "LIVY_PROXY_TRUST_FORWARDED", value_name = "BOOL")]
    pub trust_forwarded: Option<bool>,

    /// A client-sent header to remove when trust-forwarded is false, besides
    /// Forwarded, X-Forwarded-*, X-Real-IP and X-Proxied-Https; repeatable.
    /// Env: comma-separated.
    #[arg(
        long = "strip-headers",
        env = "LIVY_PROXY_STRIP_HEADERS",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub strip_headers: Vec<String>,

    /// Send RFC 7239 Forwarded to Livy as well as X-Forwarded-* [default: false].
    #[arg(long, env = "LIVY_PROXY_EMIT_FORWARDED", value_name = "BOOL")]
    pub emit_forwarded: Option<bool>,

    /// The proxy's address as clients know it, e.g. https://livy.example.com:
    /// what a Location naming a Livy server is rewritten to [default: the
    /// address each client connection reached].
    #[arg(long, env = "LIVY_PROXY_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,

    /// A network whose PROXY protocol headers (v1 or v2) are believed, on
    /// both listeners: CIDR (10.0.0.0/8) or address; repeatable. Env:
    /// comma-separated [default: none, PROXY protocol off].
    #[arg(
        long = "proxy-protocol-from",
        env = "LIVY_PROXY_PROXY_PROTOCOL_FROM",
        value_name = "NET",
        value_delimiter = ','
    )]
    pub proxy_protocol_from: Vec<String>,

    /// How long a trusted source has to send its PROXY header; then the
    /// connection is closed [default: 5s].
    #[arg(long, env = "LIVY_PROXY_PROXY_PROTOCOL_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub proxy_protocol_timeout: Option<Duration>,

    /// PEM certificate chain (server certificate first): with --tls-key,
    /// the HTTP listener speaks TLS (HTTP/1.1 and HTTP/2 by ALPN) [default:
    /// none, plain HTTP].
    #[arg(long, env = "LIVY_PROXY_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "LIVY_PROXY_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates trusted for https:// Livy nodes, besides the
    /// system's roots [default: the system's roots only].
    #[arg(long, env = "LIVY_PROXY_UPSTREAM_CA", value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,

    /// PEM certificate chain sent to a Livy server that asks for one
    /// (mutual TLS); with --upstream-client-key [default: none].
    #[arg(long, env = "LIVY_PROXY_UPSTREAM_CLIENT_CERT", value_name = "FILE")]
    pub upstream_client_cert: Option<PathBuf>,

    /// PEM private key of --upstream-client-cert.
    #[arg(long, env = "LIVY_PROXY_UPSTREAM_CLIENT_KEY", value_name = "FILE")]
    pub upstream_client_key: Option<PathBuf>,

    /// The name every Livy server's certificate is checked against
    /// [default: each node's own host].
    #[arg(long, env = "LIVY_PROXY_UPSTREAM_SERVER_NAME", value_name = "NAME")]
    pub upstream_server_name: Option<String>,

    /// Scheme for a participant id or node given without one: http or https [default: http].
    #[arg(long, env = "LIVY_PROXY_DEFAULT_SCHEME", value_name = "SCHEME")]
    pub default_scheme: Option<String>,

    /// Port for a participant id or node given without one [default: 8998].
    #[arg(long, env = "LIVY_PROXY_DEFAULT_PORT", value_name = "PORT")]
    pub default_port: Option<u16>,

    /// Retry-After sent with a 503 [default: 5s].
    #[arg(long, env = "LIVY_PROXY_RETRY_AFTER", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub retry_after: Option<Duration>,

    /// Log filter when RUST_LOG is unset, e.g. info or livy_proxy=debug [default: info].
    #[arg(long, env = "LIVY_PROXY_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Log line format: text or json [default: text].
    #[arg(long, env = "LIVY_PROXY_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,

    /// Most HTTP connections open to Livy at once; further requests wait for
    /// a free one (within upstream-timeout) [default: 512].
    #[arg(long, env = "LIVY_PROXY_MAX_UPSTREAM_CONNECTIONS", value_name = "N")]
    pub max_upstream_connections: Option<usize>,

    /// Address of the JDBC (Livy Thrift server, binary transport) TCP
    /// listener; unset: no JDBC listener.
    #[arg(long, env = "LIVY_PROXY_THRIFT_LISTEN", value_name = "ADDR")]
    pub thrift_listen: Option<SocketAddr>,

    /// Livy servers' Thrift port (livy.server.thrift.port) [default: 10090].
    #[arg(long, env = "LIVY_PROXY_THRIFT_PORT", value_name = "PORT")]
    pub thrift_port: Option<u16>,

    /// A node's Thrift address when it is not its host with --thrift-port:
    /// ID=HOST:PORT, repeatable. Env: comma-separated.
    #[arg(
        long = "thrift-node",
        env = "LIVY_PROXY_THRIFT_NODE",
        value_name = "ID=HOST:PORT",
        value_delimiter = ','
    )]
    pub thrift_node: Vec<String>,

    /// What happens to JDBC connections to the old leader when the leader
    /// changes: close (the client sees an error at once) or keep [default: close].
    #[arg(long, env = "LIVY_PROXY_THRIFT_ON_FAILOVER", value_name = "close|keep")]
    pub thrift_on_failover: Option<String>,

    /// TCP_NODELAY on JDBC connections, both sides [default: true].
    #[arg(long, env = "LIVY_PROXY_TCP_NODELAY", value_name = "BOOL")]
    pub tcp_nodelay: Option<bool>,

    /// TCP keepalive idle time on JDBC connections, or off [default: 60s].
    #[arg(long, env = "LIVY_PROXY_TCP_KEEPALIVE", value_name = "DURATION|off")]
    pub tcp_keepalive: Option<String>,

    /// Close a JDBC connection with no bytes either way for this long, or
    /// off (JDBC sessions idle for long) [default: off].
    #[arg(long, env = "LIVY_PROXY_TCP_IDLE_TIMEOUT", value_name = "DURATION|off")]
    pub tcp_idle_timeout: Option<String>,

    /// Most JDBC connections open at once; more are closed at accept, with a
    /// log line [default: 10000].
    #[arg(long, env = "LIVY_PROXY_MAX_TCP_CONNECTIONS", value_name = "N")]
    pub max_tcp_connections: Option<usize>,

    /// Runtime worker threads [default: one per CPU core].
    #[arg(long, env = "LIVY_PROXY_WORKER_THREADS", value_name = "N")]
    pub worker_threads: Option<usize>,

    /// Address of the admin listener (/healthz, /readyz, /status, /metrics),
    /// or `off` [default: 127.0.0.1:9998].
    #[arg(long, env = "LIVY_PROXY_ADMIN_LISTEN", value_name = "ADDR|off")]
    pub admin_listen: Option<String>,

    /// /readyz also requires a fresh view (ZooKeeper connected, probes
    /// answering) [default: false].
    #[arg(long, env = "LIVY_PROXY_READY_REQUIRES_FRESH", value_name = "BOOL")]
    pub ready_requires_fresh: Option<bool>,

    /// On SIGTERM, keep accepting this long after /readyz turns 503, so load
    /// balancers deregister the proxy first [default: 0s].
    #[arg(long, env = "LIVY_PROXY_SHUTDOWN_DELAY", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub shutdown_delay: Option<Duration>,

    /// On SIGTERM, how long requests in flight may take to finish once
    /// accepting has stopped [default: 25s].
    #[arg(long, env = "LIVY_PROXY_SHUTDOWN_GRACE_PERIOD", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub shutdown_grace_period: Option<Duration>,

    /// One INFO line per HTTP request and JDBC connection, target `access`
    /// [default: true].
    #[arg(long, env = "LIVY_PROXY_ACCESS_LOG", value_name = "BOOL")]
    pub access_log: Option<bool>,

    /// Most HTTP requests inside the proxy at once; more get 503 overloaded
    /// [default: 4096].
    #[arg(long, env = "LIVY_PROXY_MAX_REQUESTS_IN_FLIGHT", value_name = "N")]
    pub max_requests_in_flight: Option<usize>,

    /// Most client connections open on the HTTP listener; at the limit,
    /// accepting pauses [default: 10000].
    #[arg(long, env = "LIVY_PROXY_MAX_CLIENT_CONNECTIONS", value_name = "N")]
    pub max_client_connections: Option<usize>,
}

/// One `node` entry in the file: `"ID=URL"` or `{ id, url, thrift }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum NodeEntry {
    Spec(String),
    Table(NodeTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeTable {
    id: Option<String>,
    url: String,
    thrift: Option<String>,
}

/// The file's keys: the same names as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    listen: Option<String>,
    zookeeper: Option<String>,
    leader_path: Option<String>,
    #[serde(default)]
    node: Vec<NodeEntry>,
    hold_timeout: Option<String>,
    zk_session_timeout: Option<String>,
    probe_interval: Option<String>,
    probe_timeout: Option<String>,
    probe_path: Option<String>,
    connect_timeout: Option<String>,
    upstream_timeout: Option<String>,
    client_header_timeout: Option<String>,
    max_replay_body: Option<String>,
    client_body_timeout: Option<String>,
    max_buffered_bodies: Option<String>,
    max_streaming_uploads: Option<usize>,
    h2_max_concurrent_streams: Option<u32>,
    h2_max_header_list_size: Option<String>,
    trust_forwarded: Option<bool>,
    #[serde(default)]
    strip_headers: Vec<String>,
    emit_forwarded: Option<bool>,
    public_url: Option<String>,
    #[serde(default)]
    proxy_protocol_from: Vec<String>,
    proxy_protocol_timeout: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    upstream_ca: Option<PathBuf>,
    upstream_client_cert: Option<PathBuf>,
    upstream_client_key: Option<PathBuf>,
    upstream_server_name: Option<String>,
    default_scheme: Option<String>,
    default_port: Option<u16>,
    retry_after: Option<String>,
    log_level: Option<String>,
    log_format: Option<String>,
    worker_threads: Option<usize>,
    thrift_listen: Option<String>,
    thrift_port: Option<u16>,
    thrift_on_failover: Option<String>,
    tcp_nodelay: Option<bool>,
    tcp_keepalive: Option<String>,
    tcp_idle_timeout: Option<String>,
    max_tcp_connections: Option<usize>,
    max_upstream_connections: Option<usize>,
    admin_listen: Option<String>,
    ready_requires_fresh: Option<bool>,
    shutdown_delay: Option<String>,
    shutdown_grace_period: Option<String>,
    access_log: Option<bool>,
    max_requests_in_flight: Option<usize>,
    max_client_connections: Option<usize>,
}

/// The resolved configuration the proxy runs with.
#[derive(Clone, Debug)]
pub struct Config {
    /// HTTP listener address.
    pub listen: SocketAddr,
    /// ZooKeeper connect string, if any.
    pub zookeeper: Option<String>,
    /// Latch path.
    pub leader_path: String,
    /// Known Livy servers.
    pub nodes: Arc<Vec<LivyNode>>,
    /// How long a request waits for a leader.
    pub hold_timeout: Duration,
    /// ZooKeeper session timeout.
    pub zk_session_timeout: Duration,
    /// Probe period for the static list.
    pub probe_interval: Duration,
    /// Timeout of one probe.
    pub probe_timeout: Duration,
    /// Fallback probe path.
    pub probe_path: String,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Upstream response timeout.
    pub upstream_timeout: Duration,
    /// Time a client has to send a request's headers.
    pub client_header_timeout: Duration,
    /// Largest body kept for replay.
    pub max_replay_body: u64,
    /// Longest silence between two pieces of a request body.
    pub client_body_timeout: Duration,
    /// Memory all bodies kept for replay may take together.
    pub max_buffered_bodies: u64,
    /// Most requests streaming a body to Livy at once.
    pub max_streaming_uploads: usize,
    /// Most requests in flight on one h2c connection.
    pub h2_max_concurrent_streams: u32,
    /// Largest header list of one h2c request.
    pub h2_max_header_list_size: u32,
    /// Whether incoming forwarding headers are kept and appended to.
    pub trust_forwarded: bool,
    /// More client-sent headers removed when they are not trusted.
    pub strip_headers: Vec<HeaderName>,
    /// Whether RFC 7239 `Forwarded` is sent as well as `X-Forwarded-*`.
    pub emit_forwarded: bool,
    /// The origin (`scheme://host[:port]`) rewritten `Location`s name.
    pub public_url: Option<String>,
    /// Whose PROXY protocol headers are believed (`proxy-protocol-from`),
    /// and how long one may take (`proxy-protocol-timeout`).
    pub proxy_protocol: ProxyProtocol,
    /// The HTTP listener's certificate chain file (`tls-cert`).
    pub tls_cert: Option<PathBuf>,
    /// The HTTP listener's private key file (`tls-key`).
    pub tls_key: Option<PathBuf>,
    /// Both, loaded: the HTTP listener speaks TLS with it.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// CA bundle for https:// Livy nodes (`upstream-ca`).
    pub upstream_ca: Option<PathBuf>,
    /// Client certificate chain sent to Livy (`upstream-client-cert`).
    pub upstream_client_cert: Option<PathBuf>,
    /// Its key (`upstream-client-key`).
    pub upstream_client_key: Option<PathBuf>,
    /// Name Livy certificates are checked against (`upstream-server-name`).
    pub upstream_server_name: Option<String>,
    /// The four, loaded: TLS to https:// Livy nodes, for the proxy and
    /// the probes.
    pub upstream_tls: Option<Arc<crate::tls::client::UpstreamTls>>,
    /// Defaults for addresses without scheme or port.
    pub defaults: AddressDefaults,
    /// Retry-After on 503s.
    pub retry_after: Duration,
    /// Log filter.
    pub log_level: String,
    /// Log lines as JSON objects instead of text.
    pub log_json: bool,
    /// Runtime worker threads; `None` means one per core.
    pub worker_threads: Option<usize>,
    /// JDBC listener address, if any.
    pub thrift_listen: Option<SocketAddr>,
    /// Livy's Thrift port, for nodes without an explicit Thrift address.
    pub thrift_port: u16,
    /// Whether JDBC connections to an old leader are closed on failover.
    pub thrift_close_on_failover: bool,
    /// TCP_NODELAY on JDBC connections.
    pub tcp_nodelay: bool,
    /// TCP keepalive idle time on JDBC connections.
    pub tcp_keepalive: Option<Duration>,
    /// Idle timeout of JDBC connections.
    pub tcp_idle_timeout: Option<Duration>,
    /// Connection limit of the JDBC listener.
    pub max_tcp_connections: usize,
    /// Most HTTP connections to Livy at once.
    pub max_upstream_connections: usize,
    /// Admin listener address; `None` when `off`.
    pub admin_listen: Option<SocketAddr>,
    /// Readiness requires a fresh view.
    pub ready_requires_fresh: bool,
    /// Time between readiness going 503 and accepting stopping.
    pub shutdown_delay: Duration,
    /// Time requests in flight get to finish in a drain.
    pub shutdown_grace_period: Duration,
    /// Whether access-log lines are written.
    pub access_log: bool,
    /// Most HTTP requests in flight.
    pub max_requests_in_flight: usize,
    /// Most client connections on the HTTP listener.
    pub max_client_connections: usize,
}

impl Config {
    /// Builds the configuration from parsed flags (and the file they name).
    pub fn load(cli: Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let origin = cli
            .config
            .as_ref()
            .map(|p| format!("config file {}: ", p.display()))
            .unwrap_or_default();
        // Values from the file are checked with the file named in the error.
        let in_file = |e: ConfigError| match e {
            ConfigError::Invalid { key, problem, .. } => ConfigError::Invalid {
                origin: origin.clone(),
                key,
                problem,
            },
            other => other,
        };
        let dur = |key: &str, flag: Option<Duration>, file: &Option<String>, default: &str| {
            resolve_duration(key, flag, file, default).map_err(&in_file)
        };

        let default_scheme = match cli.default_scheme.as_ref().or(file.default_scheme.as_ref()) {
            None => Scheme::Http,
            Some(s) => match s.to_ascii_lowercase().as_str() {
                "http" => Scheme::Http,
                "https" => Scheme::Https,
                _ => {
                    return Err(invalid(
                        "default-scheme",
                        format!("{s:?} is neither http nor https"),
                    ));
                }
            },
        };
        let defaults = AddressDefaults {
            scheme: default_scheme,
            port: cli.default_port.or(file.default_port).unwrap_or(8998),
        };

        let listen = match (cli.listen, &file.listen) {
            (Some(a), _) => a,
            (None, Some(s)) => s
                .parse()
                .map_err(|e| in_file(invalid("listen", format!("{s:?}: {e}"))))?,
            (None, None) => SocketAddr::from(([0, 0, 0, 0], 8998)),
        };

        let zookeeper = cli.zookeeper.clone().or(file.zookeeper.clone());
        if let Some(zk) = &zookeeper {
            check_zookeeper(zk).map_err(|p| {
                if cli.zookeeper.is_some() {
                    invalid("zookeeper", p)
                } else {
                    in_file(invalid("zookeeper", p))
                }
            })?;
        }

        let leader_path = cli
            .leader_path
            .clone()
            .or(file.leader_path.clone())
            .unwrap_or_else(|| "/livy_ha/leader".to_string());
        if !leader_path.starts_with('/') || (leader_path.len() > 1 && leader_path.ends_with('/')) {
            return Err(invalid(
                "leader-path",
                format!("{leader_path:?} must be an absolute ZooKeeper path like /livy_ha/leader"),
            ));
        }

        let nodes = if !cli.node.is_empty() {
            cli.node
                .iter()
                .map(|s| LivyNode::parse(s, defaults).map_err(|e| invalid("node", e)))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            file.node
                .iter()
                .map(|e| node_from_entry(e, defaults).map_err(&in_file))
                .collect::<Result<Vec<_>, _>>()?
        };
        let mut nodes = nodes;
        for spec in &cli.thrift_node {
            let Some((id, addr)) = spec.split_once('=') else {
                return Err(invalid(
                    "thrift-node",
                    format!("{spec:?} is not ID=HOST:PORT"),
                ));
            };
            check_host_port(addr).map_err(|p| invalid("thrift-node", p))?;
            let Some(node) = nodes.iter_mut().find(|n| n.id == id) else {
                return Err(invalid(
                    "thrift-node",
                    format!("{id:?} is not the id of any node"),
                ));
            };
            node.thrift = Some(addr.to_string());
        }
        for node in &nodes {
            if let Some(addr) = &node.thrift {
                check_host_port(addr).map_err(|p| in_file(invalid("node.thrift", p)))?;
            }
        }
        check_unique(&nodes)?;
        if zookeeper.is_none() && nodes.is_empty() {
            return Err(invalid(
                "zookeeper",
                "neither zookeeper nor any node is set: nothing to discover the active Livy server from",
            ));
        }

        let size = |key: &str, flag: Option<ByteSize>, file: &Option<String>, default: u64| {
            resolve_size(key, flag, file, default).map_err(&in_file)
        };
        let max_replay_body = size(
            "max-replay-body",
            cli.max_replay_body,
            &file.max_replay_body,
            1024 * 1024,
        )?;
        let max_buffered_bodies = size(
            "max-buffered-bodies",
            cli.max_buffered_bodies,
            &file.max_buffered_bodies,
            64 * 1024 * 1024,
        )?;
        if max_replay_body > max_buffered_bodies {
            return Err(invalid(
                "max-replay-body",
                format!(
                    "{} is more than max-buffered-bodies ({}): no body that large could be buffered",
                    ByteSize(max_replay_body),
                    ByteSize(max_buffered_bodies)
                ),
            ));
        }
        let h2_max_header_list_size = size(
            "h2-max-header-list-size",
            cli.h2_max_header_list_size,
            &file.h2_max_header_list_size,
            64 * 1024,
        )?;
        let h2_max_header_list_size = u32::try_from(h2_max_header_list_size)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| invalid("h2-max-header-list-size", "must be between 1 and 4GiB"))?;

        let probe_path = cli
            .probe_path
            .clone()
            .or(file.probe_path.clone())
            .unwrap_or_else(|| "/version".to_string());
        if !probe_path.starts_with('/') {
            return Err(invalid(
                "probe-path",
                format!("{probe_path:?} must start with /"),
            ));
        }

        let strip_headers = if !cli.strip_headers.is_empty() {
            header_names(&cli.strip_headers).map_err(|p| invalid("strip-headers", p))?
        } else {
            header_names(&file.strip_headers).map_err(|p| in_file(invalid("strip-headers", p)))?
        };
        let public_url = match (&cli.public_url, &file.public_url) {
            (Some(u), _) => Some(public_origin(u).map_err(|p| invalid("public-url", p))?),
            (None, Some(u)) => {
                Some(public_origin(u).map_err(|p| in_file(invalid("public-url", p)))?)
            }
            (None, None) => None,
        };
        let proxy_protocol = ProxyProtocol {
            from: if !cli.proxy_protocol_from.is_empty() {
                TrustedNetworks::parse(&cli.proxy_protocol_from)
                    .map_err(|e| invalid("proxy-protocol-from", e))?
            } else {
                TrustedNetworks::parse(&file.proxy_protocol_from)
                    .map_err(|e| in_file(invalid("proxy-protocol-from", e)))?
            },
            timeout: dur(
                "proxy-protocol-timeout",
                cli.proxy_protocol_timeout,
                &file.proxy_protocol_timeout,
                "5s",
            )?,
        };
        if proxy_protocol.timeout.is_zero() {
            return Err(invalid(
                "proxy-protocol-timeout",
                "must be greater than zero",
            ));
        }

        // Both or neither; each from the flag (or env), else the file.
        let from_file = |flag: &Option<PathBuf>, file: &Option<PathBuf>| match (flag, file) {
            (Some(p), _) => Some((p.clone(), false)),
            (None, Some(p)) => Some((p.clone(), true)),
            (None, None) => None,
        };
        let tls_cert = from_file(&cli.tls_cert, &file.tls_cert);
        let tls_key = from_file(&cli.tls_key, &file.tls_key);
        let tls = match (&tls_cert, &tls_key) {
            (None, None) => None,
            (Some((_, in_f)), None) => {
                let e = invalid("tls-cert", "set without tls-key (TLS needs both)");
                return Err(if *in_f { in_file(e) } else { e });
            }
            (None, Some((_, in_f))) => {
                let e = invalid("tls-key", "set without tls-cert (TLS needs both)");
                return Err(if *in_f { in_file(e) } else { e });
            }
            (Some((cert, cert_in_f)), Some((key, key_in_f))) => {
                match crate::tls::server_config(cert, key) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        let in_f = if e.key == "tls-cert" {
                            *cert_in_f
                        } else {
                            *key_in_f
                        };
                        let e = invalid(e.key, e.problem);
                        return Err(if in_f { in_file(e) } else { e });
                    }
                }
            }
        };
        let upstream_ca = from_file(&cli.upstream_ca, &file.upstream_ca);
        let upstream_client_cert = from_file(&cli.upstream_client_cert, &file.upstream_client_cert);
        let upstream_client_key = from_file(&cli.upstream_client_key, &file.upstream_client_key);
        let upstream_server_name = match (&cli.upstream_server_name, &file.upstream_server_name) {
            (Some(n), _) => Some((n.clone(), false)),
            (None, Some(n)) => Some((n.clone(), true)),
            (None, None) => None,
        };
        let upstream_tls =
            crate::tls::client::upstream_tls(&crate::tls::client::UpstreamTlsFiles {
                ca: upstream_ca.as_ref().map(|(p, _)| p.as_path()),
                client_cert: upstream_client_cert.as_ref().map(|(p, _)| p.as_path()),
                client_key: upstream_client_key.as_ref().map(|(p, _)| p.as_path()),
                server_name: upstream_server_name.as_ref().map(|(n, _)| n.as_str()),
            })
            .map_err(|e| {
                let in_f = match e.key {
                    "upstream-ca" => upstream_ca.as_ref().is_some_and(|(_, f)| *f),
                    "upstream-client-cert" => {
                        upstream_client_cert.as_ref().is_some_and(|(_, f)| *f)
                    }
                    "upstream-client-key" => upstream_client_key.as_ref().is_some_and(|(_, f)| *f),
                    _ => upstream_server_name.as_ref().is_some_and(|(_, f)| *f),
                };
                let e = invalid(e.key, e.problem);
                if in_f { in_file(e) } else { e }
            })?;
        let mut config = Config {
            listen,
            zookeeper,
            leader_path,
            nodes: Arc::new(nodes),
            hold_timeout: dur("hold-timeout", cli.hold_timeout, &file.hold_timeout, "15s")?,
            zk_session_timeout: dur(
                "zk-session-timeout",
                cli.zk_session_timeout,
                &file.zk_session_timeout,
                "10s",
            )?,
            probe_interval: dur(
                "probe-interval",
                cli.probe_interval,
                &file.probe_interval,
                "2s",
            )?,
            probe_timeout: dur(
                "probe-timeout",
                cli.probe_timeout,
                &file.probe_timeout,
                "1s",
            )?,
            probe_path,
            connect_timeout: dur(
                "connect-timeout",
                cli.connect_timeout,
                &file.connect_timeout,
                "5s",
            )?,
            upstream_timeout: dur(
                "upstream-timeout",
                cli.upstream_timeout,
                &file.upstream_timeout,
                "600s",
            )?,
            client_header_timeout: dur(
                "client-header-timeout",
                cli.client_header_timeout,
                &file.client_header_timeout,
                "30s",
            )?,
            max_replay_body,
            client_body_timeout: dur(
                "client-body-timeout",
                cli.client_body_timeout,
                &file.client_body_timeout,
                "60s",
            )?,
            max_buffered_bodies,
            // Resolved below: its default follows max-upstream-connections.
            max_streaming_uploads: 0,
            h2_max_concurrent_streams: cli
                .h2_max_concurrent_streams
                .or(file.h2_max_concurrent_streams)
                .unwrap_or(100),
            h2_max_header_list_size,
            trust_forwarded: cli
                .trust_forwarded
                .or(file.trust_forwarded)
                .unwrap_or(false),
            strip_headers,
            emit_forwarded: cli.emit_forwarded.or(file.emit_forwarded).unwrap_or(false),
            public_url,
            proxy_protocol,
            tls_cert: tls_cert.map(|(p, _)| p),
            tls_key: tls_key.map(|(p, _)| p),
            tls,
            upstream_ca: upstream_ca.map(|(p, _)| p),
            upstream_client_cert: upstream_client_cert.map(|(p, _)| p),
            upstream_client_key: upstream_client_key.map(|(p, _)| p),
            upstream_server_name: upstream_server_name.map(|(n, _)| n),
            upstream_tls: Some(Arc::new(upstream_tls)),
            defaults,
            retry_after: dur("retry-after", cli.retry_after, &file.retry_after, "5s")?,
            log_level: cli
                .log_level
                .clone()
                .or(file.log_level.clone())
                .unwrap_or_else(|| "info".to_string()),
            log_json: match cli
                .log_format
                .as_ref()
                .or(file.log_format.as_ref())
                .map(|s| s.as_str())
            {
                None | Some("text") => false,
                Some("json") => true,
                Some(other) => {
                    return Err(invalid(
                        "log-format",
                        format!("{other:?} is not text or json"),
                    ));
                }
            },
            worker_threads: cli.worker_threads.or(file.worker_threads),
            thrift_listen: match (cli.thrift_listen, &file.thrift_listen) {
                (Some(a), _) => Some(a),
                (None, Some(s)) => Some(
                    s.parse()
                        .map_err(|e| in_file(invalid("thrift-listen", format!("{s:?}: {e}"))))?,
                ),
                (None, None) => None,
            },
            thrift_port: cli.thrift_port.or(file.thrift_port).unwrap_or(10090),
            thrift_close_on_failover: match cli
                .thrift_on_failover
                .as_ref()
                .or(file.thrift_on_failover.as_ref())
                .map(|s| s.as_str())
            {
                None | Some("close") => true,
                Some("keep") => false,
                Some(other) => {
                    return Err(invalid(
                        "thrift-on-failover",
                        format!("{other:?} is not close or keep"),
                    ));
                }
            },
            tcp_nodelay: cli.tcp_nodelay.or(file.tcp_nodelay).unwrap_or(true),
            tcp_keepalive: optional_duration(
                "tcp-keepalive",
                cli.tcp_keepalive.as_ref().or(file.tcp_keepalive.as_ref()),
                Some(Duration::from_secs(60)),
            )?,
            tcp_idle_timeout: optional_duration(
                "tcp-idle-timeout",
                cli.tcp_idle_timeout
                    .as_ref()
                    .or(file.tcp_idle_timeout.as_ref()),
                None,
            )?,
            max_tcp_connections: cli
                .max_tcp_connections
                .or(file.max_tcp_connections)
                .unwrap_or(10_000),
            max_upstream_connections: cli
                .max_upstream_connections
                .or(file.max_upstream_connections)
                .unwrap_or(512),
            admin_listen: match cli.admin_listen.as_ref().or(file.admin_listen.as_ref()) {
                Some(off) if off == "off" => None,
                Some(a) => Some(a.parse().map_err(|e| {
                    let problem = invalid("admin-listen", format!("{a:?}: {e} (or `off`)"));
                    if cli.admin_listen.is_some() {
                        problem
                    } else {
                        in_file(problem)
                    }
                })?),
                None => Some(SocketAddr::from(([127, 0, 0, 1], 9998))),
            },
            ready_requires_fresh: cli
                .ready_requires_fresh
                .or(file.ready_requires_fresh)
                .unwrap_or(false),
            shutdown_delay: dur(
                "shutdown-delay",
                cli.shutdown_delay,
                &file.shutdown_delay,
                "0s",
            )?,
            shutdown_grace_period: dur(
                "shutdown-grace-period",
                cli.shutdown_grace_period,
                &file.shutdown_grace_period,
                "25s",
            )?,
            access_log: cli.access_log.or(file.access_log).unwrap_or(true),
            max_requests_in_flight: cli
                .max_requests_in_flight
                .or(file.max_requests_in_flight)
                .unwrap_or(4096),
            max_client_connections: cli
                .max_client_connections
                .or(file.max_client_connections)
                .unwrap_or(10_000),
        };
        if config.max_requests_in_flight == 0 {
            return Err(invalid("max-requests-in-flight", "must be at least 1"));
        }
        if config.max_client_connections == 0 {
            return Err(invalid("max-client-connections", "must be at least 1"));
        }
        if config.max_upstream_connections == 0 {
            return Err(invalid("max-upstream-connections", "must be at least 1"));
        }
        // A quarter: uploads that trickle in hold at most that share of
        // Livy's connections, the rest stay for everything else.
        config.max_streaming_uploads = cli
            .max_streaming_uploads
            .or(file.max_streaming_uploads)
            .unwrap_or((config.max_upstream_connections / 4).max(1));
        if config.max_streaming_uploads == 0 {
            return Err(invalid("max-streaming-uploads", "must be at least 1"));
        }
        if config.max_streaming_uploads > config.max_upstream_connections {
            return Err(invalid(
                "max-streaming-uploads",
                format!(
                    "{} is more than max-upstream-connections ({})",
                    config.max_streaming_uploads, config.max_upstream_connections
                ),
            ));
        }
        if config.h2_max_concurrent_streams == 0 {
            return Err(invalid("h2-max-concurrent-streams", "must be at least 1"));
        }
        if config.max_tcp_connections == 0 {
            return Err(invalid("max-tcp-connections", "must be at least 1"));
        }
        if config.worker_threads == Some(0) {
            return Err(invalid("worker-threads", "must be at least 1"));
        }
        for (key, d) in [
            ("probe-interval", config.probe_interval),
            ("probe-timeout", config.probe_timeout),
            ("connect-timeout", config.connect_timeout),
            ("upstream-timeout", config.upstream_timeout),
            ("client-header-timeout", config.client_header_timeout),
            ("client-body-timeout", config.client_body_timeout),
            ("zk-session-timeout", config.zk_session_timeout),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "must be greater than zero"));
            }
        }
        Ok(config)
    }

    /// The part of the configuration discovery needs.
    pub fn discovery(&self) -> DiscoveryConfig {
        DiscoveryConfig {
            zookeeper: self.zookeeper.clone(),
            leader_path: self.leader_path.clone(),
            zk_session_timeout: self.zk_session_timeout,
            nodes: self.nodes.clone().into(),
            defaults: self.defaults,
            probe_interval: self.probe_interval,
            probe_timeout: self.probe_timeout,
            probe_path: self.probe_path.clone(),
            upstream_tls: self.upstream_tls.clone(),
        }
    }
}

/// Reads and parses the TOML file; a parse error names the key on the line
/// it points at.
fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| {
        let key = e
            .span()
            .and_then(|span| key_at(&text, span.start))
            .unwrap_or_else(|| "?".to_string());
        ConfigError::Invalid {
            origin: format!("config file {}: ", path.display()),
            key,
            problem: e.message().trim().replace('\n', " "),
        }
    })
}

/// The key written on the line containing byte `offset` (`key = value`),
/// or the table header for a nested value.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let start = text[..offset.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let key = line.split('=').next()?.trim().trim_matches(['[', ']', '"']);
    (!key.is_empty()).then(|| key.to_string())
}

fn resolve_duration(
    key: &str,
    flag: Option<Duration>,
    file: &Option<String>,
    default: &str,
) -> Result<Duration, ConfigError> {
    if let Some(d) = flag {
        return Ok(d);
    }
    let text = file.as_deref().unwrap_or(default);
    humantime::parse_duration(text).map_err(|e| {
        invalid(
            key,
            format!("{text:?} is not a duration like 15s or 500ms: {e}"),
        )
    })
}

fn resolve_size(
    key: &str,
    flag: Option<ByteSize>,
    file: &Option<String>,
    default: u64,
) -> Result<u64, ConfigError> {
    match (flag, file) {
        (Some(b), _) => Ok(b.as_u64()),
        (None, Some(s)) => s
            .parse::<ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|e| invalid(key, format!("{s:?} is not a size like 64KiB or 1MiB: {e}"))),
        (None, None) => Ok(default),
    }
}

/// A duration that may be switched off: `off` (or `0`) means `None`.
fn optional_duration(
    key: &str,
    text: Option<&String>,
    default: Option<Duration>,
) -> Result<Option<Duration>, ConfigError> {
    match text.map(|s| s.trim()) {
        None => Ok(default),
        Some("off") | Some("0") => Ok(None),
        Some(t) => humantime::parse_duration(t).map(Some).map_err(|e| {
            invalid(
                key,
                format!("{t:?} is not a duration like 60s, or off: {e}"),
            )
        }),
    }
}

/// The origin of a `public-url`: scheme, host and port (the default port
/// left out), which is all a rewritten `Location` takes from it. A path is
/// refused rather than ignored: the proxy does not move paths.
fn public_origin(text: &str) -> Result<String, String> {
    let url = url::Url::parse(text).map_err(|e| format!("{text:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!("{text:?} is not an http:// or https:// URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{text:?} must not carry credentials"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{text:?} must be scheme, host and port only, without a path"
        ));
    }
    Ok(url.origin().ascii_serialization())
}

/// Header names as written (any case), checked.
fn header_names(names: &[String]) -> Result<Vec<HeaderName>, String> {
    names
        .iter()
        .map(|n| {
            HeaderName::from_bytes(n.trim().as_bytes())
                .map_err(|_| format!("{n:?} is not a header name"))
        })
        .collect()
}

fn check_host_port(addr: &str) -> Result<(), String> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!("{addr:?} is not HOST:PORT")),
    }
}

fn node_from_entry(entry: &NodeEntry, defaults: AddressDefaults) -> Result<LivyNode, ConfigError> {
    match entry {
        NodeEntry::Spec(s) => LivyNode::parse(s, defaults).map_err(|e| invalid("node", e)),
        NodeEntry::Table(t) => {
            let origin = Origin::parse(&t.url, defaults).map_err(|e| invalid("node.url", e))?;
            Ok(LivyNode {
                id: t.id.clone().unwrap_or_else(|| origin.host.clone()),
                origin,
                thrift: t.thrift.clone(),
            })
        }
    }
}

fn check_unique(nodes: &[LivyNode]) -> Result<(), ConfigError> {
    for (i, a) in nodes.iter().enumerate() {
        for b in &nodes[..i] {
            if a.id == b.id {
                return Err(invalid("node", format!("id {:?} is given twice", a.id)));
            }
            if a.origin == b.origin {
                return Err(invalid("node", format!("{} is given twice", a.origin)));
            }
        }
    }
    Ok(())
}

/// Checks `host:port,host:port[/chroot]` the way Livy and ZooKeeper take it.
fn check_zookeeper(connect: &str) -> Result<(), String> {
    let (hosts, chroot) = match connect.find('/') {
        Some(i) => (&connect[..i], Some(&connect[i..])),
        None => (connect, None),
    };
    if hosts.trim().is_empty() {
        return Err(format!(
            "{connect:?} names no host (expected host:port,host:port[/chroot])"
        ));
    }
    for hp in hosts.split(',') {
        let hp = hp.trim();
        let Some((host, port)) = hp.rsplit_once(':') else {
            return Err(format!(
                "{hp:?} in {connect:?} has no port (expected host:port)"
            ));
        };
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(format!("{hp:?} in {connect:?} is not host:port"));
        }
    }
    if let Some(c) = chroot
        && (c.len() > 1 && c.ends_with('/'))
    {
        return Err(format!("chroot {c:?} must not end with /"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load_file(text: &str) -> Result<Config, ConfigError> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        Config::load(Cli {
            config: Some(f.path().to_path_buf()),
            ..Cli::default()
        })
    }

    #[test]
    fn defaults_and_file_values() {
        let c = load_file(
            "zookeeper = \"127.0.0.1:2181/livy\"\nhold-timeout = \"3s\"\nnode = [\"livy-1=http://h1:8998\", { url = \"h2\", thrift = \"h2:10091\" }]\n",
        )
        .unwrap();
        assert_eq!(c.hold_timeout, Duration::from_secs(3));
        assert_eq!(c.leader_path, "/livy_ha/leader");
        assert_eq!(c.nodes.len(), 2);
        assert_eq!(c.nodes[1].id, "h2");
        assert_eq!(c.nodes[1].thrift.as_deref(), Some("h2:10091"));
        assert_eq!(c.max_replay_body, 1024 * 1024);
        assert_eq!(c.upstream_timeout, Duration::from_secs(600));
        assert_eq!(c.client_header_timeout, Duration::from_secs(30));
        assert_eq!(c.client_body_timeout, Duration::from_secs(60));
        assert_eq!(c.max_buffered_bodies, 64 * 1024 * 1024);
        assert_eq!(c.max_streaming_uploads, 128, "a quarter of 512");
        assert_eq!(c.h2_max_concurrent_streams, 100);
        assert_eq!(c.h2_max_header_list_size, 64 * 1024);
    }

    #[test]
    fn body_and_h2_limits_from_the_file_and_their_checks() {
        let c = load_file(
            "zookeeper = \"a:1\"\nclient-body-timeout = \"5s\"\nmax-buffered-bodies = \"8MiB\"\n\
             max-upstream-connections = 10\nh2-max-concurrent-streams = 7\nh2-max-header-list-size = \"16KiB\"\n",
        )
        .unwrap();
        assert_eq!(c.client_body_timeout, Duration::from_secs(5));
        assert_eq!(c.max_buffered_bodies, 8 * 1024 * 1024);
        assert_eq!(c.max_streaming_uploads, 2, "a quarter of 10");
        assert_eq!(c.h2_max_concurrent_streams, 7);
        assert_eq!(c.h2_max_header_list_size, 16 * 1024);
        let z = "zookeeper = \"a:1\"\n";
        assert!(
            error_of(&format!("{z}max-streaming-uploads = 600\n"))
                .contains("`max-streaming-uploads`")
        );
        assert!(
            error_of(&format!("{z}max-streaming-uploads = 0\n"))
                .contains("`max-streaming-uploads`")
        );
        assert!(
            error_of(&format!("{z}max-buffered-bodies = \"512KiB\"\n"))
                .contains("`max-replay-body`")
        );
        assert!(
            error_of(&format!("{z}client-body-timeout = \"0s\"\n"))
                .contains("`client-body-timeout`")
        );
        assert!(
            error_of(&format!("{z}h2-max-concurrent-streams = 0\n"))
                .contains("`h2-max-concurrent-streams`")
        );
        assert!(
            error_of(&format!("{z}h2-max-header-list-size = \"lots\"\n"))
                .contains("`h2-max-header-list-size`")
        );
    }

    #[test]
    fn flags_override_file() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"zookeeper = \"a:1\"\nhold-timeout = \"3s\"\n")
            .unwrap();
        let cli = Cli::parse_from([
            "livy-proxy",
            "--config",
            f.path().to_str().unwrap(),
            "--hold-timeout",
            "7s",
        ]);
        assert_eq!(
            Config::load(cli).unwrap().hold_timeout,
            Duration::from_secs(7)
        );
    }

    fn error_of(text: &str) -> String {
        load_file(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_key() {
        assert!(
            error_of("zookeeper = \"a:1\"\nhold-timeout = \"soon\"\n").contains("`hold-timeout`")
        );
        assert!(error_of("zookeeper = \"a:1\"\nhold-timout = \"1s\"\n").contains("`hold-timout`"));
        assert!(error_of("zookeeper = \"a:1\"\nhold-timeout = 5\n").contains("`hold-timeout`"));
        assert!(error_of("zookeeper = \"nohostport\"\n").contains("`zookeeper`"));
        assert!(error_of("zookeeper = \"a:1\"\nnode = [\"ftp://x\"]\n").contains("`node`"));
        assert!(error_of("zookeeper = \"a:1\"\nleader-path = \"x\"\n").contains("`leader-path`"));
        assert!(error_of("listen = \"nope\"\nzookeeper = \"a:1\"\n").contains("`listen`"));
        assert!(
            error_of("max-replay-body = \"lots\"\nzookeeper = \"a:1\"\n")
                .contains("`max-replay-body`")
        );
        assert!(error_of("").contains("`zookeeper`"));
    }

    #[test]
    fn forwarding_keys_from_file_flags_and_env_spelling() {
        let c = load_file(
            "zookeeper = \"a:1\"\nstrip-headers = [\"X-Client-IP\", \"True-Client-IP\"]\nemit-forwarded = true\n",
        )
        .unwrap();
        assert_eq!(c.strip_headers, ["x-client-ip", "true-client-ip"]);
        assert!(c.emit_forwarded);
        let c = load_file("zookeeper = \"a:1\"\n").unwrap();
        assert!(c.strip_headers.is_empty());
        assert!(!c.emit_forwarded);
        // As the environment gives it: one comma-separated value.
        let cli = Cli::parse_from([
            "livy-proxy",
            "--zookeeper",
            "a:1",
            "--strip-headers",
            "X-A, X-B",
            "--emit-forwarded",
            "true",
        ]);
        let c = Config::load(cli).unwrap();
        assert_eq!(c.strip_headers, ["x-a", "x-b"]);
        assert!(c.emit_forwarded);
        assert!(
            error_of("zookeeper = \"a:1\"\nstrip-headers = [\"bad header\"]\n")
                .contains("`strip-headers`")
        );
    }

    #[test]
    fn public_url_is_an_origin() {
        let url =
            |text: &str| load_file(&format!("zookeeper = \"a:1\"\npublic-url = \"{text}\"\n"));
        assert_eq!(
            url("https://Livy.Example.com/")
                .unwrap()
                .public_url
                .as_deref(),
            Some("https://livy.example.com")
        );
        assert_eq!(
            url("http://proxy:8998").unwrap().public_url.as_deref(),
            Some("http://proxy:8998")
        );
        assert_eq!(
            url("https://proxy:443").unwrap().public_url.as_deref(),
            Some("https://proxy"),
            "the default port is left out"
        );
        for bad in [
            "livy.example.com",
            "ftp://livy.example.com",
            "https://livy.example.com/livy",
            "https://livy.example.com/?a=b",
            "https://u:p@livy.example.com",
        ] {
            let e = url(bad).unwrap_err().to_string();
            assert!(e.contains("`public-url`"), "{bad}: {e}");
        }
        assert!(
            load_file("zookeeper = \"a:1\"\n")
                .unwrap()
                .public_url
                .is_none()
        );
    }

    #[test]
    fn proxy_protocol_keys_from_file_and_flags() {
        let c = load_file("zookeeper = \"a:1\"\n").unwrap();
        assert!(c.proxy_protocol.from.is_empty(), "off by default");
        assert_eq!(c.proxy_protocol.timeout, Duration::from_secs(5));
        let c = load_file(
            "zookeeper = \"a:1\"\nproxy-protocol-from = [\"10.0.0.0/8\", \"::1\"]\nproxy-protocol-timeout = \"2s\"\n",
        )
        .unwrap();
        assert!(c.proxy_protocol.from.contains("10.9.8.7".parse().unwrap()));
        assert!(c.proxy_protocol.from.contains("::1".parse().unwrap()));
        assert_eq!(c.proxy_protocol.timeout, Duration::from_secs(2));
        // As the environment gives it: one comma-separated value.
        let cli = Cli::parse_from([
            "livy-proxy",
            "--zookeeper",
            "a:1",
            "--proxy-protocol-from",
            "192.168.0.0/16, 10.1.2.3",
            "--proxy-protocol-timeout",
            "750ms",
        ]);
        let c = Config::load(cli).unwrap();
        assert_eq!(c.proxy_protocol.from.networks().len(), 2);
        assert_eq!(c.proxy_protocol.timeout, Duration::from_millis(750));
        let e = error_of("zookeeper = \"a:1\"\nproxy-protocol-from = [\"10.0.0.0/33\"]\n");
        assert!(
            e.contains("`proxy-protocol-from`") && e.contains("10.0.0.0/33"),
            "{e}"
        );
        assert!(
            error_of("zookeeper = \"a:1\"\nproxy-protocol-timeout = \"0s\"\n")
                .contains("`proxy-protocol-timeout`")
        );
    }

    #[test]
    fn zookeeper_connect_strings() {
        assert!(check_zookeeper("h1:2181,h2:2181/livy").is_ok());
        assert!(check_zookeeper("[::1]:2181").is_ok());
        assert!(check_zookeeper("h1").is_err());
        assert!(check_zookeeper("/chroot").is_err());
    }
}
